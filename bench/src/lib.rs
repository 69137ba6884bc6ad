//! pushgate-bench: load generation and measurement for pushgate and its
//! peers (bench/peers/).
//!
//! Scenarios: `idle` (RSS per idle connection; `--max` for the most one
//! server holds), `upgrade` (handshakes/s), `broadcast` (time to the last
//! client), `homing` (pushes to 300 random users, as fast as possible) and
//! `latency` (the same at a fixed rate). The clients live in worker
//! processes on plain epoll ([`worker::Worker`], a library type so tests
//! drive it in-process); `report` turns the results into a summary and
//! charts.

pub mod fleet;
pub mod idle;
pub mod machine;
pub mod payload;
pub mod procfs;
pub mod proto;
pub mod publish;
pub mod push;
pub mod report;
pub mod sources;
pub mod sys;
pub mod token;
pub mod upgrade;
pub mod worker;
pub mod wsclient;
