//! What the gateway asks of its shard. `shard::Ctx` is the real one (a
//! ring, sockets); the in-memory driver (`sim`) records instead. The
//! wiring is written against this trait only, so every flow of the gateway
//! runs in a unit test without a ring.

use super::Msg;
use bytes::Bytes;
use shard::{ConnId, Ctx, ExportError, SendError, StatsSnapshot};
use std::os::fd::OwnedFd;

pub trait Io {
    fn shard_id(&self) -> usize;
    fn shard_count(&self) -> usize;
    /// Milliseconds on the runtime's monotonic clock (same for all shards).
    fn now_ms(&self) -> u64;
    /// The most connections this shard can hold; every `ConnId::index()`
    /// is below it.
    fn connection_capacity(&self) -> usize;
    /// Queues `parts` back to back, all or nothing (see `shard::Ctx::send`).
    fn send(&mut self, conn: ConnId, parts: &[Bytes]) -> Result<(), SendError>;
    /// One `on_drained` when the send queue is next empty.
    fn notify_when_drained(&mut self, conn: ConnId);
    /// Closes after sending what is queued plus `last`.
    fn close(&mut self, conn: ConnId, last: Option<Bytes>);
    /// Closes now, dropping unsent bytes.
    fn abort(&mut self, conn: ConnId);
    /// The connection stays on this shard: receive with multishot recv.
    fn stream(&mut self, conn: ConnId);
    /// Its bytes may wait for the coalescing window while the shard is
    /// saturated (devices only).
    fn coalesce_sends(&mut self, _conn: ConnId) {}
    fn set_deadline(&mut self, conn: ConnId, at_ms: u64);
    fn clear_deadline(&mut self, conn: ConnId);
    /// Moves a live connection, with `msg` as its state, to `to_shard`.
    fn hand_off(&mut self, conn: ConnId, to_shard: usize, msg: Msg) -> Result<(), Msg>;
    /// A message to a shard's `on_message` (this one included); a full
    /// queue returns it.
    fn send_msg(&mut self, to_shard: usize, msg: Msg) -> Result<(), Msg>;
    /// Stops accepting on `listener` (on this shard).
    fn close_listener(&mut self, listener: usize);
    /// Every shard's runtime counters, for metrics.
    fn runtime_stats(&self) -> Vec<StatsSnapshot>;
    /// Moves the connection out of the process (see `shard::Ctx::export`).
    fn export(&mut self, conn: ConnId) -> Result<(), ExportError>;
    /// Takes in a socket from another process (see `shard::Ctx::adopt`).
    fn adopt(&mut self, fd: OwnedFd, msg: Msg) -> Result<(), (OwnedFd, Msg)>;
}

impl Io for Ctx<'_, Msg> {
    fn shard_id(&self) -> usize {
        Ctx::shard_id(self)
    }
    fn shard_count(&self) -> usize {
        Ctx::shard_count(self)
    }
    fn now_ms(&self) -> u64 {
        Ctx::now_ms(self)
    }
    fn connection_capacity(&self) -> usize {
        Ctx::connection_capacity(self)
    }
    fn send(&mut self, conn: ConnId, parts: &[Bytes]) -> Result<(), SendError> {
        Ctx::send(self, conn, parts)
    }
    fn notify_when_drained(&mut self, conn: ConnId) {
        Ctx::notify_when_drained(self, conn)
    }
    fn close(&mut self, conn: ConnId, last: Option<Bytes>) {
        Ctx::close(self, conn, last)
    }
    fn abort(&mut self, conn: ConnId) {
        Ctx::abort(self, conn)
    }
    fn stream(&mut self, conn: ConnId) {
        Ctx::stream(self, conn)
    }
    fn coalesce_sends(&mut self, conn: ConnId) {
        Ctx::coalesce_sends(self, conn)
    }
    fn set_deadline(&mut self, conn: ConnId, at_ms: u64) {
        Ctx::set_deadline(self, conn, at_ms)
    }
    fn clear_deadline(&mut self, conn: ConnId) {
        Ctx::clear_deadline(self, conn)
    }
    fn hand_off(&mut self, conn: ConnId, to_shard: usize, msg: Msg) -> Result<(), Msg> {
        Ctx::hand_off(self, conn, to_shard, msg)
    }
    fn send_msg(&mut self, to_shard: usize, msg: Msg) -> Result<(), Msg> {
        Ctx::send_msg(self, to_shard, msg)
    }
    fn close_listener(&mut self, listener: usize) {
        Ctx::close_listener(self, listener)
    }
    fn runtime_stats(&self) -> Vec<StatsSnapshot> {
        self.all_stats().iter().map(|s| s.snapshot()).collect()
    }
    fn export(&mut self, conn: ConnId) -> Result<(), ExportError> {
        Ctx::export(self, conn)
    }
    fn adopt(&mut self, fd: OwnedFd, msg: Msg) -> Result<(), (OwnedFd, Msg)> {
        Ctx::adopt(self, fd, msg)
    }
}
