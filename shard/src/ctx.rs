//! What an app may do from inside a callback.

use crate::conn::{Phase, INSTALL_IN_FLIGHT, RECV_ARMED, STREAMING};
use crate::reactor::{ExportError, Reactor};
use crate::stats::ShardStats;
use crate::ConnId;
use bytes::Bytes;
use std::os::fd::OwnedFd;

/// Why bytes were not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The connection is gone or closing.
    Closed,
    /// Queuing would exceed `send_queue_bytes_max`: the peer is not reading
    /// fast enough. Nothing was queued.
    QueueFull,
}

/// The app's handle on its shard during a callback.
pub struct Ctx<'a, M> {
    pub(crate) r: &'a mut Reactor<M>,
}

impl<M: Send + 'static> Ctx<'_, M> {
    pub fn shard_id(&self) -> usize {
        self.r.shard_id()
    }

    pub fn shard_count(&self) -> usize {
        self.r.shard_count()
    }

    /// Milliseconds on the runtime's monotonic clock (same for all shards).
    pub fn now_ms(&self) -> u64 {
        self.r.now_ms()
    }

    pub fn connection_count(&self) -> usize {
        self.r.connection_count()
    }

    /// The most connections this shard can hold (its fixed-file table).
    /// `ConnId::index()` is always below it.
    pub fn connection_capacity(&self) -> usize {
        self.r.connection_capacity()
    }

    pub fn is_stopping(&self) -> bool {
        self.r.is_stopping()
    }

    pub fn stats(&self) -> &ShardStats {
        self.r.stats()
    }

    /// Every shard's counters, indexed by shard (read with relaxed loads).
    pub fn all_stats(&self) -> &[std::sync::Arc<ShardStats>] {
        self.r.all_stats()
    }

    /// Stops accepting on listener `listener` on this shard (a drain stops
    /// taking clients but keeps its push and admin sockets).
    pub fn close_listener(&mut self, listener: usize) {
        self.r.close_listener(listener);
    }

    /// Submitted io_uring operations not yet completed.
    pub fn ops_in_flight(&self) -> usize {
        self.r.ops_in_flight()
    }

    /// True while the connection exists and the app owns it.
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.r.is_open(conn)
    }

    /// Queues `parts` to go out back to back (one sendmsg gathers them).
    /// All or nothing: if bytes are already queued and these would pass
    /// `send_queue_bytes_max`, nothing is queued.
    pub fn send(&mut self, conn: ConnId, parts: &[Bytes]) -> Result<(), SendError> {
        let max = self.r.send_queue_bytes_max();
        let Some(c) = self.r.conn(conn) else {
            return Err(SendError::Closed);
        };
        // Once its descriptor is being installed for another process, a
        // connection takes no more bytes: they would stay behind.
        if c.phase != Phase::Open || c.has(INSTALL_IN_FLIGHT) {
            return Err(SendError::Closed);
        }
        let adding: usize = parts.iter().map(Bytes::len).sum();
        // The bound applies once something is queued: one message always
        // fits, so a message larger than the bound cannot wedge a
        // connection (the queue never exceeds max + one message).
        let queued = c.queued_bytes();
        if queued > 0 && queued + adding > max {
            return Err(SendError::QueueFull);
        }
        self.r.enqueue(conn, parts);
        Ok(())
    }

    /// Bytes queued and not yet accepted by the kernel.
    pub fn queued_bytes(&self, conn: ConnId) -> usize {
        self.r.conn(conn).map_or(0, |c| c.queued_bytes())
    }

    /// Asks for one `on_drained` call when the send queue is next empty.
    pub fn notify_when_drained(&mut self, conn: ConnId) {
        self.r.want_drained(conn);
    }

    /// Closes gracefully after sending what is queued plus `last` (which may
    /// exceed the send bound: it is the goodbye, e.g. a close frame). The
    /// app gets no further calls for this connection.
    pub fn close(&mut self, conn: ConnId, last: Option<Bytes>) {
        self.r.start_close(conn, last);
    }

    /// Closes now, dropping unsent bytes. No further calls for it.
    pub fn abort(&mut self, conn: ConnId) {
        self.r.final_close(conn);
    }

    /// From now on the connection receives with a multishot recv (it stays
    /// on this shard). Until then it receives one read at a time so it can
    /// still be handed off.
    pub fn stream(&mut self, conn: ConnId) {
        self.r.set_streaming(conn);
    }

    /// While the shard is saturated, this connection's new bytes may wait
    /// up to the coalescing window (`send_coalesce_ms_max`) for more. For
    /// connections that only receive pushes; a connection whose peer waits
    /// for each answer should send at once.
    pub fn coalesce_sends(&mut self, conn: ConnId) {
        self.r.set_coalesced(conn);
    }

    /// Calls `on_timer` at or after `at_ms` (rounded up to the timer tick).
    /// One deadline per connection: a new one replaces the old.
    pub fn set_deadline(&mut self, conn: ConnId, at_ms: u64) {
        self.r.set_deadline(conn, Some(at_ms));
    }

    pub fn clear_deadline(&mut self, conn: ConnId) {
        self.r.set_deadline(conn, None);
    }

    /// Moves a live connection, with `msg` as its state, to `to_shard`,
    /// where `App::on_handoff` receives it. Bytes already queued are sent
    /// first. Only valid while no read is pending, i.e. from `on_data` of a
    /// connection that is not streaming; otherwise, or if the other shard's
    /// queue is full, `msg` comes back and nothing changed.
    pub fn hand_off(&mut self, conn: ConnId, to_shard: usize, msg: M) -> Result<(), M> {
        let Some(c) = self.r.conn(conn) else {
            return Err(msg);
        };
        if c.phase != Phase::Open
            || c.has(RECV_ARMED | STREAMING)
            || to_shard == self.r.shard_id()
            || to_shard >= self.shard_count()
        {
            return Err(msg);
        }
        self.r.start_handoff(conn, to_shard, msg)
    }

    /// Moves the connection out of the process (a live upgrade): at a
    /// quiescent point — its recv cancelled and every byte it had handed
    /// to `on_data`, its send queue flushed — its descriptor becomes a
    /// regular one, given to `App::on_exported`, and the connection leaves
    /// the shard. Until then the app owns it as usual (sends, close);
    /// no byte is read from it any more. A failed install calls
    /// `App::on_export_failed` and it receives again.
    pub fn export(&mut self, conn: ConnId) -> Result<(), ExportError> {
        self.r.start_export(conn)
    }

    /// Takes in a connected socket from another process, with `msg` as its
    /// state: `App::on_adopted` receives it (streaming), or
    /// `App::on_adopt_failed` gets both back.
    pub fn adopt(&mut self, fd: OwnedFd, msg: M) -> Result<(), (OwnedFd, M)> {
        self.r.start_adopt(fd, msg)
    }

    /// Sends a message to a shard's `on_message` (this shard included:
    /// delivered after the current round). Never blocks: a full queue
    /// returns the message.
    pub fn send_msg(&mut self, to_shard: usize, msg: M) -> Result<(), M> {
        self.r.send_msg(to_shard, msg)
    }
}
