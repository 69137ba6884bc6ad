//! Pushing through a pushgate gateway from a backend on the same host.
//!
//! Everything a backend needs to push, and nothing of the server: no
//! io_uring, no JWT, no config parsing. The dependencies are `rkyv` (the
//! wire format), `serde_json` (checking that a payload is one JSON value)
//! and `serde_core` (serde's traits, implemented by hand; already part of
//! `serde_json`'s tree). The server links this crate too, so the two cannot
//! disagree on the format.
//!
//! - [`route`]: user → home shard, a fixed hash that every process, version
//!   and language computes alike ([`home_shard`], [`user_hash`]).
//! - [`wire`]: the push sockets' frames, a 4-byte length and an `rkyv`
//!   archive of a [`Request`](wire::Request) or a [`Reply`](wire::Reply).
//! - [`client`]: the blocking [`Client`], which speaks them over the shards'
//!   Unix sockets (`<run_dir>/shard-<i>.sock`) and sends each user straight
//!   to its home shard.
//!
//! ```no_run
//! use pushgate_client::{Client, ClientError};
//! use std::path::Path;
//! use std::time::Duration;
//!
//! fn main() -> Result<(), ClientError> {
//!     // Learns the shard count from shard 0; every read and write then
//!     // fails with ClientError::Timeout after 2 s instead of hanging.
//!     let run_dir = Path::new("/run/pushgate");
//!     let mut client = Client::connect_with_io_timeout(run_dir, Duration::from_secs(2))?;
//!     let outcome = client.push(&["alice", "bob"], r#"{"hi":1}"#)?;
//!     println!("{} delivered, {} stored", outcome.delivered, outcome.stored);
//!     let pushes = (0..100).map(|i| (vec![format!("user-{i}")], i.to_string()));
//!     client.push_many(pushes)?; // pipelined, 256 in flight per shard
//!     client.broadcast(r#""maintenance at 03:00""#)?;
//!     let alice = client.presence("alice")?;
//!     println!("alice online: {} ({} devices)", alice.online, alice.devices);
//!     let connections: u64 = client.status()?.iter().map(|s| s.connections).sum();
//!     println!("{connections} connections");
//!     Ok(())
//! }
//! ```
//!
//! Timeouts: every read and write has one ([`client::IO_TIMEOUT_DEFAULT`],
//! 10 s, unless [`Client::connect_with_io_timeout`] says otherwise). After
//! any error the client drops its sockets and reopens them on the next
//! call. A socket the server closes cleanly (a drain, `pushgate upgrade`)
//! is reopened at once and the requests it left unanswered are sent again,
//! exactly those, in order ([`client`], "Reconnecting"). Data that is not one JSON value, or a frame over the server's
//! limit, is refused before anything is sent.
//!
//! Other languages can push without this crate: [`home_shard`] is specified
//! step by step with test vectors, and the [`wire`] format is rkyv 0.8's
//! layout of the types there. `client/README.md` says more, including when
//! the admin HTTP API is the simpler way.

pub mod client;
pub mod route;
pub mod wire;

pub use client::{Client, ClientError, Presence, PushOutcome};
pub use route::{home_shard, user_hash};
pub use wire::ShardStatus;
