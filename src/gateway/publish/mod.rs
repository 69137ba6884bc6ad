//! Backends and operators: push-socket connections ([`publishers`]), admin
//! HTTP connections ([`admins`]) and the requests of either that wait for
//! other shards ([`tickets`]).

pub mod admins;
pub mod publishers;
pub mod tickets;
