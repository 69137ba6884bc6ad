//! Pushing: the wire format of the per-shard Unix sockets and the client
//! library backends use.

pub mod client;
pub mod wire;
