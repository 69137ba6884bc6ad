//! pushgate: a push-notification gateway on per-core io_uring shards.
//!
//! Where a byte enters: `shard` (the per-core runtime) hands received bytes to
//! [`gateway`], which runs the WebSocket protocol in [`ws`] and the session
//! rules. Everything under `src/` is pure logic: no syscalls, time passed in.

pub mod admin_http;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod control;
pub mod gateway;
pub mod liveness;
pub mod metrics;
pub mod push;
/// User → home shard; lives in `pushgate-client`, which backends link.
pub use pushgate_client::route;
pub mod server;
pub mod sse;
pub mod takeover;
pub mod tls;
pub mod upgrade;
pub mod ws;
