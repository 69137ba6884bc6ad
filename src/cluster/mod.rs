//! Several hosts, one gateway (issue 11): what hosts share through Redis.
//!
//! Without `redis_url` / `redis_nodes` nothing here runs and a host is the
//! single-host gateway it always was. With them, one thread per process
//! ([`thread`]) holds a maintained async Redis client and the shards never
//! wait for it.
//!
//! Built so far: the settings ([`settings`]), the connection
//! ([`connect`]), the host's claim on its `host_id` with a heartbeat
//! ([`host_claim`]: a duplicate is refused at start), Redis health in
//! `/readyz` (reason `redis`) and the `redis_*` metrics, the shards' queue
//! to the Redis thread ([`link`]) and cluster-wide presence ([`presence`],
//! fed by each shard's [`presence_outbox`], what dead hosts left removed by
//! the [`sweeper`]); seq, epoch and history in
//! Redis ([`history`]); pushes to named users through any host: stored by
//! [`history::add`], handed to this host's shards and rung on the others'
//! as doorbells ([`fanout`], [`doorbell`], [`pubsub`]), counted delivered
//! or stored across hosts; the shards deliver each rung as [`gap`]
//! decides (send, skip, repair from the history, or make the device
//! resume), and a device's welcome and replay come from
//! [`history::resume`] on whichever host it joins (the shard's side is
//! `gateway/bells.rs` and `gateway/positions.rs`); a periodic check per
//! shard ([`history::check`], `gateway/history_check.rs`) catches a lost
//! doorbell no later push reveals; broadcasts stored once per partition
//! and rung once per host ([`broadcast`], [`history::broadcast`]).
//! Failures while pushes flow (a host or a Redis master killed, Redis
//! unreachable, a host cut off from Redis) are tested end to end in
//! `tests/cluster_failure.rs`; see the README, "Running several hosts".

pub mod broadcast;
pub mod connect;
pub mod doorbell;
pub mod fanout;
pub mod gap;
pub mod history;
pub mod host_claim;
pub mod keys;
pub mod link;
pub mod partitions;
pub mod presence;
pub mod presence_outbox;
pub mod pubsub;
pub mod settings;
pub mod sweeper;
mod thread;

pub use link::{RedisLink, ToRedis};
pub use presence_outbox::PresenceOutbox;
pub use settings::{ClusterSettings, RedisTarget};
pub use thread::{start, ClusterHandle, StartError};
