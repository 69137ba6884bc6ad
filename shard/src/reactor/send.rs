//! The send path: the app's bytes into a connection's send queue, the
//! round's ready list or the coalescing hold, and one sendmsg per
//! connection when they go.

use super::Reactor;
use crate::conn::*;
use crate::op::{self, Tag};
use crate::stats::ShardStats;
use crate::ConnId;
use bytes::Bytes;
use io_uring::{opcode, types};

impl<M> Reactor<M> {
    /// Queues the app's chunks; they leave at the end of this round of
    /// completions. A TLS connection's are sealed into records now.
    pub(crate) fn enqueue(&mut self, id: ConnId, parts: &[Bytes]) {
        if !self.conn(id).is_some_and(|c| c.has(TLS)) {
            return self.enqueue_raw(id, parts);
        }
        let plain: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        match self.tls.seal(id, &plain) {
            Some(Ok(sealed)) => self.enqueue_raw(id, &[Bytes::from(sealed)]),
            Some(Err(e)) => {
                tracing::warn!(shard = self.shard_id, error = %e, "TLS: cannot seal; closing");
                self.final_close(id);
            }
            None => tracing::debug!(
                shard = self.shard_id,
                bytes = plain.iter().map(|p| p.len()).sum::<usize>(),
                "TLS: app bytes before the handshake ended dropped"
            ),
        }
    }

    /// Queues bytes as they are (a TLS connection's handshake records).
    pub(super) fn enqueue_raw(&mut self, id: ConnId, parts: &[Bytes]) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let queue = conn.send.get_or_insert_with(SendQueue::new);
        let mut added = 0;
        for part in parts {
            added += part.len();
            queue.push(part.clone());
        }
        let newly_ready = !conn.has(SEND_READY | SEND_IN_FLIGHT);
        if newly_ready {
            conn.set(SEND_READY);
        }
        ShardStats::add(&self.stats.send_queue_bytes, added as u64);
        if newly_ready {
            self.ready_or_held(id);
        }
    }

    /// A connection has bytes to send and none in flight: it sends at the
    /// end of this round, or — while the shard is saturated — waits up to
    /// the coalescing window for more. Its SEND_READY flag is set.
    pub(crate) fn ready_or_held(&mut self, id: ConnId) {
        let coalesced = self.conn(id).is_some_and(|c| c.has(COALESCED));
        match self.coalescer.window_ms() {
            window_ms if window_ms > 0 && coalesced => {
                self.held.push_back((self.now_ms + window_ms, id))
            }
            _ => self.send_ready.push(id),
        }
    }

    /// Milliseconds until the oldest held send is due, if any is held.
    pub(crate) fn held_due_in_ms(&self) -> Option<u64> {
        self.held
            .front()
            .map(|&(due, _)| due.saturating_sub(self.now_ms))
    }

    /// The loop was blocked this long waiting for completions; once a
    /// period, the coalescing window follows how busy the shard was.
    pub(crate) fn account_wait(&mut self, waited_us: u64) {
        self.coalescer.waited(waited_us);
        self.coalescer.update(self.now_ms);
        ShardStats::set(&self.stats.send_coalesce_ms, self.coalescer.window_ms());
        ShardStats::set(
            &self.stats.loop_busy_permille,
            self.coalescer.busy_permille(),
        );
    }

    pub(super) fn submit_send(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.has(SEND_IN_FLIGHT) {
            return;
        }
        let Some(queue) = conn.send.as_mut() else {
            return;
        };
        if queue.is_empty() {
            return;
        }
        let msghdr = queue.prepare();
        conn.set(SEND_IN_FLIGHT);
        let entry = opcode::SendMsg::new(types::Fixed(conn.slot), msghdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(op::encode_conn(Tag::Send, id));
        self.ring.push(entry);
        ShardStats::add(&self.stats.sends_total, 1);
    }

    /// Sends what the app queued during this round.
    pub(super) fn flush_send_ready(&mut self) {
        let ready = std::mem::take(&mut self.send_ready);
        for &id in &ready {
            self.send_now(id);
        }
        self.send_ready = ready;
        self.send_ready.clear();
        // Held sends go when due: at most one window after their first
        // byte, whatever the window is now.
        while let Some(&(due, id)) = self.held.front() {
            if due > self.now_ms {
                break;
            }
            self.held.pop_front();
            self.send_now(id);
        }
    }

    /// A ready or held connection's turn: its queue goes out unless it is
    /// closing for good (or gone).
    fn send_now(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            conn.clear(SEND_READY);
            if matches!(
                conn.phase,
                Phase::Open | Phase::Flushing | Phase::HandingOff
            ) {
                self.submit_send(id);
            }
        }
    }
}
