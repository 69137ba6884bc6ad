//! Pushing to a pushgate gateway from a backend.
//!
//! Everything a backend needs to push, and nothing of the server: no
//! io_uring, no JWT, no config parsing. The dependencies are `rkyv` (the
//! wire format), `serde_json` (checking that a payload is one JSON value)
//! and `serde_core` (serde's traits, implemented by hand; already part of
//! `serde_json`'s tree).
//!
//! - [`route`]: user → home shard, a fixed hash that every process, version
//!   and language computes alike.
//! - [`wire`]: the push sockets' frames (a length prefix and an `rkyv`
//!   archive of a [`Request`](wire::Request) or [`Reply`](wire::Reply)).
//! - [`client`]: the blocking [`Client`] that speaks them over the shards'
//!   Unix sockets, sending each user straight to its home shard.
//!
//! ```no_run
//! use pushgate_client::Client;
//! use std::path::Path;
//!
//! # fn main() -> Result<(), pushgate_client::ClientError> {
//! // The server's run directory, where its shard-<i>.sock sockets are.
//! let mut client = Client::connect(Path::new("/run/pushgate"))?;
//! let outcome = client.push(&["alice", "bob"], r#"{"hi":1}"#)?;
//! println!("{} delivered, {} stored", outcome.delivered, outcome.stored);
//! # Ok(())
//! # }
//! ```
//!
//! Other languages can push without this crate: [`route::home_shard`] and
//! the [`wire`] format are specified in their docs, with test vectors.

pub mod client;
pub mod route;
pub mod wire;

pub use client::{Client, ClientError, Presence, PushOutcome};
pub use route::{home_shard, user_hash};
pub use wire::ShardStatus;
