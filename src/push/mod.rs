//! Pushing: the wire format of the per-shard Unix sockets and the client
//! library backends use. Both live in the `pushgate-client` crate, which
//! backends link without the server; they are re-exported here so the
//! server's paths (`pushgate::push::wire`, `pushgate::push::client`) stay.

pub use pushgate_client::{client, wire};
