//! pushgate-bench: load generation and measurement for pushgate.
//!
//! `idle` opens many authenticated WebSocket connections from worker
//! processes and measures the server's user-space memory per idle
//! connection. The worker logic ([`worker::Worker`]) is a library type so
//! tests drive it in-process against a stand-in server.

pub mod idle;
pub mod procfs;
pub mod sources;
pub mod sys;
pub mod token;
pub mod worker;
pub mod wsclient;
