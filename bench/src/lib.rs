//! pushgate-bench: load generation and measurement for pushgate and its
//! peers (bench/peers/).
//!
//! Scenarios: `idle` (user-space and kernel memory per idle connection;
//! `--max` for the most one server holds), `upgrade` (handshakes/s),
//! `broadcast` (time to the last client), `homing` (pushes to 300 random
//! users, as fast as possible), `latency` (the same at fixed rates, from
//! low to saturation) and `million` (a million connections held, then one
//! push to each). The clients live in worker
//! processes on plain epoll ([`worker::Worker`], a library type so tests
//! drive it in-process); `report` turns the results into a summary and
//! charts.

pub mod cluster;
pub mod environment;
pub mod fleet;
pub mod idle;
pub mod kmem;
pub mod machine;
pub mod million;
pub mod paced;
pub mod payload;
pub mod procfs;
pub mod proto;
pub mod publish;
pub mod push;
pub mod report;
pub mod report_chart;
pub mod server_info;
pub mod sources;
pub mod sys;
pub mod takeover;
pub mod tls;
pub mod token;
pub mod upgrade;
pub mod worker;
pub mod wsclient;
