//! What each completion does to the shard's state, apart from the app: the
//! loop's round (submit, wait, collect), then accept, recv, send, close and
//! handoff completions, the inbox, timers and stopping. Each method says
//! what the app should hear; `event_loop` tells it.

use super::Reactor;
use crate::conn::*;
use crate::mesh::Envelope;
use crate::op::{self, Tag};
use crate::stats::ShardStats;
use crate::{CloseReason, ConnId};
use io_uring::{cqueue, opcode, types};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The longest the loop sleeps without a timer tick.
const WAIT_MAX_MS: u64 = 1000;

/// What a receive completion means for the app.
pub(crate) enum Received {
    /// The connection is gone (a stale completion): recycle the buffer.
    Gone,
    /// Bytes arrived in the completion's buffer; `deliver` if the app owns
    /// the connection (a closing one discards its input).
    Data { deliver: bool },
    /// The connection is over: tell the app `Some(reason)`, then close it.
    Ended(Option<CloseReason>),
    /// Nothing for the app (a half-close while flushing, no buffers, a cancel).
    Nothing,
}

/// What a send completion means for the app.
pub(crate) enum Sent {
    /// The connection is gone (a stale completion).
    Gone,
    /// Bytes left (or the send was cancelled): carry on with `after_send`.
    Progress,
    /// The send failed with `errno`: tell the app if `app_owned`, then close.
    Failed { errno: i32, app_owned: bool },
    /// The send failed with `errno` while flushing before a handoff.
    HandoffFailed(i32),
}

/// Something from the inbox (or this shard's own messages) for the app.
pub(crate) enum Inbound<M> {
    Message {
        from: usize,
        msg: M,
    },
    /// Both halves of a handed-in connection are here; it is now `id`.
    Handoff {
        id: ConnId,
        msg: M,
    },
    /// Handoff bookkeeping that needed no app call.
    Handled,
}

impl<M> Reactor<M> {
    // --- The loop's round: submit, wait, collect ---

    /// Arms what every shard starts with: accepts on its listeners and the
    /// read of its eventfd.
    pub(crate) fn arm_initial(&mut self) {
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        self.arm_wake();
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.mesh.waker.fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(op::encode(Tag::Wake, 0));
        self.ring.push(entry);
    }

    /// The eventfd read completed: another thread queued messages. Re-arms
    /// the read; the caller drains the inbox.
    pub(crate) fn woken(&mut self) {
        self.mesh.waker.reset();
        self.arm_wake();
    }

    pub(crate) fn count_loop_iteration(&self) {
        ShardStats::add(&self.stats.loop_iterations_total, 1);
    }

    /// Sends what the app queued, submits, and waits for a completion, the
    /// next timer tick (at most `WAIT_MAX_MS`), or not at all when `busy`
    /// (inbox messages left over) or the SQ backlog needs another round.
    /// Then reads the clock.
    pub(crate) fn submit_and_wait(&mut self, busy: bool) -> std::io::Result<()> {
        self.flush_send_ready();
        self.ring.flush_backlog();
        let wait = if busy || self.ring.has_backlog() {
            Duration::ZERO
        } else {
            let until_tick = self
                .timers
                .next_tick_at_ms()
                .saturating_sub(self.now_ms)
                .clamp(1, WAIT_MAX_MS);
            // Wake for the oldest held send too.
            let until = self
                .held_due_in_ms()
                .map_or(until_tick, |due| until_tick.min(due.max(1)));
            Duration::from_millis(until)
        };
        let blocked_from = (!wait.is_zero()).then(Instant::now);
        self.ring.submit_and_wait(wait)?;
        self.refresh_clock();
        let waited_us = blocked_from.map_or(0, |t| t.elapsed().as_micros() as u64);
        self.account_wait(waited_us);
        Ok(())
    }

    fn refresh_clock(&mut self) {
        self.now_ms = self.clock_base.elapsed().as_millis() as u64;
    }

    /// Appends the completions now in the CQ to `out`.
    pub(crate) fn collect_completions(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        self.ring.collect_completions(out);
    }

    /// Accounts for a completion about to be handled.
    pub(crate) fn completion_arrived(&mut self, tag: Tag, flags: u32) {
        // HandoffIn completions are posted by another ring: not our op.
        if tag != Tag::HandoffIn && !cqueue::more(flags) {
            self.ring.op_completed();
        }
    }

    /// Publishes the SQ backlog's high-water mark.
    pub(crate) fn record_sq_backlog(&self) {
        let backlog = self.ring.backlog_max() as u64;
        if backlog > self.stats.sq_backlog_max.load(Ordering::Relaxed) {
            self.stats.sq_backlog_max.store(backlog, Ordering::Relaxed);
        }
    }

    // --- Completions: the part of each that needs no app ---

    /// An accept completed on the socket at `listener` (a position in
    /// `listeners`): the new connection, if the app should hear of it. Counts it; closes it again while stopping; pauses
    /// accepting when the fixed-file table is full. Call `rearm_accept`
    /// after the app has seen the connection.
    pub(crate) fn accept_completed(
        &mut self,
        listener: usize,
        res: i32,
        more: bool,
    ) -> Option<ConnId> {
        if !more {
            self.listeners[listener].accept_armed = false;
        }
        if res >= 0 {
            let slot = res as u32;
            ShardStats::add(&self.stats.accepted_total, 1);
            self.listeners[listener].watch.accepted();
            if self.stopping {
                self.close_slot(slot);
                return None;
            }
            if !self.tls.is_tls_listener(listener) {
                return Some(self.insert(slot, 0));
            }
            let id = self.insert(slot, TLS);
            self.tls.start(id);
            return Some(id);
        }
        match -res {
            libc::ENFILE | libc::EMFILE => {
                if !self.accept_paused {
                    tracing::warn!(
                        shard = self.shard_id,
                        connections = self.conns.len(),
                        "fixed-file table full: accepting paused until a connection closes \
                         (raise connections_per_shard_max and the open-file limit)"
                    );
                }
                ShardStats::add(&self.stats.accept_table_full_total, 1);
                self.accept_paused = true;
            }
            libc::ECANCELED => {}
            errno => tracing::debug!(errno, "accept failed"),
        }
        None
    }

    /// Re-arms a multishot accept that ended, unless stopping or paused
    /// (the table is full, or the accept gate says so).
    pub(crate) fn rearm_accept(&mut self, listener: usize) {
        if !self.listeners[listener].accept_armed && !self.stopping && !self.accept_paused {
            self.arm_accept(listener);
        }
    }

    /// A recv completed with `res`; `more` = the multishot recv stays armed.
    pub(crate) fn recv_completed(&mut self, id: ConnId, res: i32, more: bool) -> Received {
        let Some(conn) = self.conn_mut(id) else {
            return Received::Gone;
        };
        if !more {
            conn.clear(RECV_ARMED);
        }
        let phase = conn.phase;
        if res > 0 {
            ShardStats::add(&self.stats.bytes_received_total, res as u64);
            Received::Data {
                deliver: phase == Phase::Open,
            }
        } else if res == 0 && phase == Phase::Flushing {
            // A half-close does not stop us sending: the goodbye still goes.
            conn.set(PEER_EOF);
            Received::Nothing
        } else if res == -libc::ENOBUFS {
            conn.set(STARVED);
            self.starved.push(id);
            ShardStats::add(&self.stats.recv_buffer_starved_total, 1);
            Received::Nothing
        } else if res != -libc::ECANCELED {
            // EOF (0) or an error: the connection is over.
            let reason = if res == 0 {
                CloseReason::PeerClosed
            } else {
                CloseReason::Error(-res)
            };
            Received::Ended((phase == Phase::Open).then_some(reason))
        } else {
            Received::Nothing
        }
    }

    /// After a recv completion was handled: re-arms the recv if the
    /// connection still reads, or frees it if it is done.
    pub(crate) fn after_recv(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else { return };
        let wants_recv = matches!(conn.phase, Phase::Open | Phase::Lingering);
        if wants_recv && !conn.has(RECV_ARMED | STARVED) {
            self.arm_recv(id);
        }
        self.maybe_free(id);
    }

    /// Re-arms the recvs that ran out of provided buffers this round (the
    /// buffers they wait for were recycled meanwhile).
    pub(crate) fn rearm_starved(&mut self) {
        if self.starved.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.starved) {
            if let Some(conn) = self.conn_mut(id) {
                if conn.has(STARVED) {
                    conn.clear(STARVED);
                    self.after_recv(id);
                }
            }
        }
    }

    /// A sendmsg completed with `res`.
    pub(crate) fn send_completed(&mut self, id: ConnId, res: i32) -> Sent {
        let Some(conn) = self.conn_mut(id) else {
            return Sent::Gone;
        };
        conn.clear(SEND_IN_FLIGHT);
        let phase = conn.phase;
        if res >= 0 {
            if let Some(queue) = conn.send.as_mut() {
                queue.advance(res as usize);
            }
            ShardStats::add(&self.stats.bytes_sent_total, res as u64);
            let q = &self.stats.send_queue_bytes;
            q.store(
                q.load(Ordering::Relaxed).saturating_sub(res as u64),
                Ordering::Relaxed,
            );
            Sent::Progress
        } else if res == -libc::ECANCELED {
            Sent::Progress
        } else if phase == Phase::HandingOff {
            Sent::HandoffFailed(-res)
        } else {
            Sent::Failed {
                errno: -res,
                app_owned: phase == Phase::Open,
            }
        }
    }

    /// After a send completion was handled: sends the rest, or moves a
    /// connection whose queue emptied on (linger, handoff, free). True if
    /// the app asked to hear that the queue drained (`on_drained`).
    pub(crate) fn after_send(&mut self, id: ConnId) -> bool {
        let Some(conn) = self.conn_mut(id) else {
            return false;
        };
        if conn.has(SEND_IN_FLIGHT) {
            return false;
        }
        if conn.queued_bytes() > 0 {
            if conn.phase == Phase::Open && !conn.has(SEND_READY) {
                // What arrived while the send was in flight waits like new
                // bytes do; sending it at once would cost one sendmsg per
                // loop round again whenever the shard is saturated.
                conn.set(SEND_READY);
                self.ready_or_held(id);
            } else if matches!(
                conn.phase,
                Phase::Open | Phase::Flushing | Phase::HandingOff
            ) {
                self.submit_send(id);
            } else {
                self.maybe_free(id);
            }
            return false;
        }
        conn.send = None; // an idle connection keeps no send queue
        match conn.phase {
            Phase::Flushing => self.start_linger(id),
            Phase::HandingOff => self.submit_handoff(id),
            Phase::Open if conn.has(WANT_DRAINED) => {
                conn.clear(WANT_DRAINED);
                return true;
            }
            Phase::Closed => self.maybe_free(id),
            _ => {}
        }
        false
    }

    /// A shutdown(SHUT_WR) completed.
    pub(crate) fn shutdown_completed(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            conn.clear(SHUTDOWN_IN_FLIGHT);
            if conn.has(CLOSE_DEFERRED) {
                conn.clear(CLOSE_DEFERRED);
                conn.set(CLOSE_IN_FLIGHT);
                let slot = conn.slot;
                self.push_close(id, slot);
            }
        }
        self.maybe_free(id);
    }

    /// The close of a connection's fixed slot completed.
    pub(crate) fn close_completed(&mut self, id: ConnId) {
        if let Some(conn) = self.conn_mut(id) {
            conn.clear(CLOSE_IN_FLIGHT);
        }
        self.maybe_free(id);
    }

    /// Our MsgRingSendFd completed. On success the other ring holds the fd
    /// and ours is closed; on failure the errno (see `abandon_handoff`).
    pub(crate) fn handoff_out_completed(&mut self, id: ConnId, res: i32) -> Result<(), i32> {
        let Some(conn) = self.conn_mut(id) else {
            return Ok(());
        };
        conn.clear(HANDOFF_IN_FLIGHT);
        if res < 0 {
            return Err(-res);
        }
        // The other ring holds its own reference now; drop ours.
        conn.phase = Phase::Closed;
        conn.set(CLOSE_IN_FLIGHT);
        let slot = conn.slot;
        self.handoffs.end_out(id);
        ShardStats::add(&self.stats.handoffs_out_total, 1);
        let entry = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(op::encode_conn(Tag::Close, id));
        self.ring.push(entry);
        Ok(())
    }

    /// A handoff of `id` failed with `errno`: counts and logs it, tells
    /// the other shard to drop its half, and gives the connection back to
    /// the app's ownership so that the caller can report `on_close` and
    /// then `final_close` it.
    pub(crate) fn abandon_handoff(&mut self, id: ConnId, errno: i32) {
        ShardStats::add(&self.stats.handoff_failures_total, 1);
        tracing::warn!(
            shard = self.shard_id,
            errno,
            "handing a connection to its home shard failed; closing it"
        );
        if let Some((to, token)) = self.handoffs.end_out(id) {
            let _ = self.mesh.send(to, Envelope::HandoffCancel { token });
        }
        if let Some(conn) = self.conn_mut(id) {
            conn.phase = Phase::Open; // so final_close runs its full path
        }
    }

    /// Another shard's MsgRingSendFd put a connection's fd into our table
    /// (`res` = the slot). False if it failed (logged); then nothing waits.
    pub(crate) fn handoff_fd_arrived(&mut self, token: u64, res: i32) -> bool {
        if res < 0 {
            tracing::error!(
                token,
                res,
                "handoff completion with an error in the target ring"
            );
            return false;
        }
        self.handoffs.fd_arrived(token, res as u32, self.now_ms);
        true
    }

    /// The handed-in connection `token`, once its fd and its state are both
    /// here: inserted (streaming) and returned with its state for
    /// `App::on_handoff`. While stopping, its fd is closed instead.
    pub(crate) fn take_ready_handoff(&mut self, token: u64) -> Option<(ConnId, M)> {
        let (slot, (msg, tls)) = self.handoffs.take_ready(token)?;
        if self.stopping {
            self.close_slot(slot);
            return None;
        }
        ShardStats::add(&self.stats.handoffs_in_total, 1);
        let id = self.insert(
            slot,
            if tls.is_some() {
                STREAMING | TLS
            } else {
                STREAMING
            },
        );
        if let Some(moved) = tls {
            self.tls.adopt(id, moved);
        }
        Some((id, msg))
    }

    /// The next message for the app: this shard's own first, then the
    /// inbox. None when both are empty.
    pub(crate) fn next_inbound(&mut self) -> Option<Inbound<M>> {
        if let Some(msg) = self.local_msgs.pop_front() {
            let from = self.shard_id;
            return Some(Inbound::Message { from, msg });
        }
        let envelope = self.mesh.inbox.try_recv().ok()?;
        ShardStats::add(&self.stats.mesh_messages_in_total, 1);
        Some(match envelope {
            Envelope::App { from, msg } => Inbound::Message {
                from: from as usize,
                msg,
            },
            Envelope::Handoff { token, msg, tls } => {
                self.handoffs.state_arrived(token, (msg, tls), self.now_ms);
                match self.take_ready_handoff(token) {
                    Some((id, msg)) => Inbound::Handoff { id, msg },
                    None => Inbound::Handled,
                }
            }
            Envelope::HandoffCancel { token } => {
                if let Some(slot) = self.handoffs.cancel_in(token) {
                    self.close_slot(slot);
                }
                Inbound::Handled
            }
        })
    }

    // --- Timers and stopping ---

    /// True when the timer wheel's next tick is due.
    pub(crate) fn timer_tick_due(&self) -> bool {
        self.now_ms >= self.timers.next_tick_at_ms()
    }

    /// Advances the timer wheel to now; appends the slab index of every
    /// connection whose deadline passed to `fired`.
    pub(crate) fn advance_timers(&mut self, fired: &mut Vec<u32>) {
        let conns = &mut self.conns;
        self.timers.advance(
            self.now_ms,
            |index| {
                conns
                    .get_mut(index as usize)
                    .map(|c| &mut c.timer as *mut _)
            },
            |index| fired.push(index),
        );
        // Once per tick: give back what a flood of connections left behind.
        self.conns.shrink_if_sparse();
    }

    /// The deadline of the connection at `index` passed: the connection if
    /// the app should hear of it (`on_timer`). A closing connection that
    /// did not finish in time is closed now.
    pub(crate) fn timer_fired(&mut self, index: u32) -> Option<ConnId> {
        let conn = self.conns.get(index as usize)?;
        let id = ConnId::new(index, conn.gen);
        match conn.phase {
            Phase::Open => Some(id),
            Phase::Flushing | Phase::Lingering => {
                // The peer did not take our bytes or close in time.
                self.final_close(id);
                self.maybe_free(id);
                None
            }
            _ => None,
        }
    }

    /// Stops accepting (listeners closed, handed-in fds closed from now
    /// on). Returns when the stop grace period ends.
    pub(crate) fn begin_stop(&mut self) -> u64 {
        self.stopping = true;
        self.close_listeners();
        tracing::debug!(shard = self.shard_id, conns = self.conns.len(), "stopping");
        self.now_ms + self.cfg.stop_grace_ms
    }

    /// Cancels everything still in flight and reaps it for up to `wait_ms`,
    /// so no op writes into our buffers after they are unmapped. Each
    /// provided buffer a completion carries goes to `recycle`.
    pub(crate) fn cancel_all_and_reap(&mut self, wait_ms: u64, mut recycle: impl FnMut(u16)) {
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(op::encode(Tag::Ignore, 0));
        self.ring.push(entry);
        let give_up_at = self.now_ms + wait_ms;
        let mut cqes = Vec::new();
        while self.ring.in_flight() > 0 && self.now_ms < give_up_at {
            self.ring.flush_backlog();
            if self
                .ring
                .submit_and_wait(Duration::from_millis(50))
                .is_err()
            {
                break;
            }
            self.refresh_clock();
            cqes.clear();
            self.ring.collect_completions(&mut cqes);
            for &(user_data, _, flags) in &cqes {
                if let Some((tag, _)) = op::decode(user_data) {
                    self.completion_arrived(tag, flags);
                }
                if let Some(bid) = cqueue::buffer_select(flags) {
                    recycle(bid);
                }
            }
        }
    }
}
