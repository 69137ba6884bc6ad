//! The shard's loop: submit, wait, collect completions, run each through
//! the connection state machine and the app, then timers and the inbox.

use crate::buf_ring::BufRing;
use crate::conn::*;
use crate::ctx::Ctx;
use crate::mesh::Envelope;
use crate::op::{self, Tag};
use crate::reactor::{PendingHandoff, Reactor};
use crate::stats::ShardStats;
use crate::{App, CloseReason, ConnId};
use io_uring::{cqueue, opcode, types};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Inbox messages handled per round, so a flood from other shards cannot
/// starve this shard's own sockets.
const MESH_BATCH_MAX: usize = 4096;
/// The longest the loop sleeps without a timer tick.
const WAIT_MAX_MS: u64 = 1000;
/// After the stop grace period, how long to wait for cancelled ops.
const STOP_DRAIN_MS: u64 = 2000;

pub(crate) struct Shard<A: App> {
    // Field order is drop order: the ring (inside `r`) must go before the
    // memory it may write into (`bufs`, `wake_buf`).
    pub(crate) r: Reactor<A::Msg>,
    pub(crate) bufs: BufRing,
    pub(crate) app: A,
    wake_buf: Box<[u8; 8]>,
    cqes: Vec<(u64, i32, u32)>,
    fired: Vec<u32>,
    stop: Arc<AtomicBool>,
    mesh_pending: bool,
    stop_deadline_ms: Option<u64>,
    aborted_all: bool,
}

impl<A: App> Shard<A> {
    pub(crate) fn new(r: Reactor<A::Msg>, bufs: BufRing, app: A, stop: Arc<AtomicBool>) -> Self {
        Shard {
            r,
            bufs,
            app,
            wake_buf: Box::new([0; 8]),
            cqes: Vec::new(),
            fired: Vec::new(),
            stop,
            mesh_pending: true,
            stop_deadline_ms: None,
            aborted_all: false,
        }
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.r.mesh.waker.fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(op::encode(Tag::Wake, 0));
        self.r.ring.push(entry);
    }

    pub(crate) fn run(mut self) -> std::io::Result<()> {
        for i in 0..self.r.listeners.len() {
            self.r.arm_accept(i);
        }
        self.arm_wake();
        let result = self.run_loop();
        self.drain_ring();
        result
    }

    fn run_loop(&mut self) -> std::io::Result<()> {
        loop {
            ShardStats::add(&self.r.stats.loop_iterations_total, 1);
            if !self.r.stopping && self.stop.load(Ordering::Acquire) {
                self.begin_stop();
            }
            if let Some(deadline) = self.stop_deadline_ms {
                if self.r.conns.is_empty() {
                    return Ok(());
                }
                if self.r.now_ms >= deadline && !self.aborted_all {
                    self.abort_all();
                }
                if self.r.now_ms >= deadline + STOP_DRAIN_MS {
                    tracing::warn!(
                        shard = self.r.shard_id,
                        left = self.r.conns.len(),
                        "connections still closing at exit"
                    );
                    return Ok(());
                }
            }
            self.r.flush_send_ready();
            self.r.ring.flush_backlog();
            let wait = if self.mesh_pending || self.r.ring.has_backlog() {
                Duration::ZERO
            } else {
                let until_tick = self
                    .r
                    .timers
                    .next_tick_at_ms()
                    .saturating_sub(self.r.now_ms)
                    .clamp(1, WAIT_MAX_MS);
                Duration::from_millis(until_tick)
            };
            self.r.ring.submit_and_wait(wait)?;
            self.r.refresh_clock();

            // Completions are collected before any handler runs, so handlers
            // may submit freely without the CQ changing under us.
            self.cqes.clear();
            {
                let mut cq = self.r.ring.uring.completion();
                cq.sync();
                self.cqes
                    .extend(cq.map(|c| (c.user_data(), c.result(), c.flags())));
            }
            let cqes = std::mem::take(&mut self.cqes);
            for &(user_data, res, flags) in &cqes {
                self.dispatch(user_data, res, flags);
            }
            self.cqes = cqes;

            self.rearm_starved();
            if self.mesh_pending {
                self.mesh_pending = self.drain_inbox();
            }
            if self.r.now_ms >= self.r.timers.next_tick_at_ms() {
                self.run_timers();
            }
            let backlog = self.r.ring.backlog_max as u64;
            if backlog > self.r.stats.sq_backlog_max.load(Ordering::Relaxed) {
                self.r
                    .stats
                    .sq_backlog_max
                    .store(backlog, Ordering::Relaxed);
            }
        }
    }

    fn dispatch(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some((tag, payload)) = op::decode(user_data) else {
            tracing::error!(user_data, "completion with unknown tag");
            return;
        };
        // HandoffIn completions are posted by another ring: not our op.
        if tag != Tag::HandoffIn && !cqueue::more(flags) {
            self.r.ring.in_flight -= 1;
        }
        match tag {
            Tag::Accept => self.on_accept(payload as usize, res, flags),
            Tag::Recv => self.on_recv(op::decode_conn(payload), res, flags),
            Tag::Send => self.on_send(op::decode_conn(payload), res),
            Tag::Shutdown => {
                let id = op::decode_conn(payload);
                if let Some(conn) = self.r.conn_mut(id) {
                    conn.clear(SHUTDOWN_IN_FLIGHT);
                }
                self.r.maybe_free(id);
            }
            Tag::Close => {
                let id = op::decode_conn(payload);
                if let Some(conn) = self.r.conn_mut(id) {
                    conn.clear(CLOSE_IN_FLIGHT);
                }
                self.r.maybe_free(id);
            }
            Tag::Ignore => {}
            Tag::Wake => {
                self.r.mesh.waker.reset();
                self.mesh_pending = true;
                self.arm_wake();
            }
            Tag::HandoffOut => self.on_handoff_out(op::decode_conn(payload), res),
            Tag::HandoffIn => self.on_handoff_in(payload, res),
        }
    }

    fn on_accept(&mut self, listener: usize, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.r.listeners[listener].accept_armed = false;
        }
        if res >= 0 {
            let slot = res as u32;
            ShardStats::add(&self.r.stats.accepted_total, 1);
            if self.r.stopping {
                self.r.close_slot(slot);
                return;
            }
            let id = self.r.insert(slot, 0);
            self.app
                .on_accept(&mut Ctx { r: &mut self.r }, id, listener);
            if self.r.conn(id).is_some_and(|c| c.phase == Phase::Open) {
                self.r.arm_recv(id);
            }
        } else {
            match -res {
                libc::ENFILE | libc::EMFILE => {
                    if !self.r.accept_paused {
                        tracing::warn!(
                            shard = self.r.shard_id,
                            connections = self.r.conns.len(),
                            "fixed-file table full: accepting paused until a connection closes \
                             (raise connections_per_shard_max and the open-file limit)"
                        );
                    }
                    ShardStats::add(&self.r.stats.accept_table_full_total, 1);
                    self.r.accept_paused = true;
                }
                libc::ECANCELED => {}
                errno => tracing::debug!(errno, "accept failed"),
            }
        }
        if !self.r.listeners[listener].accept_armed && !self.r.stopping && !self.r.accept_paused {
            self.r.arm_accept(listener);
        }
    }

    fn on_recv(&mut self, id: ConnId, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let Some(conn) = self.r.conn_mut(id) else {
            if let Some(bid) = bid {
                self.bufs.recycle(bid);
            }
            return;
        };
        if !cqueue::more(flags) {
            conn.clear(RECV_ARMED);
        }
        let phase = conn.phase;
        if res > 0 {
            let bid = bid.expect("recv with buffer select returned no buffer");
            ShardStats::add(&self.r.stats.bytes_received_total, res as u64);
            if phase == Phase::Open {
                let data = self.bufs.buffer_mut(bid, res as usize);
                self.app.on_data(&mut Ctx { r: &mut self.r }, id, data);
            }
            self.bufs.recycle(bid);
        } else if res == 0 && phase == Phase::Flushing {
            // A half-close does not stop us sending: the goodbye still goes.
            conn.set(PEER_EOF);
        } else if res == -libc::ENOBUFS {
            conn.set(STARVED);
            self.r.starved.push(id);
            ShardStats::add(&self.r.stats.recv_buffer_starved_total, 1);
        } else if res != -libc::ECANCELED {
            // EOF (0) or an error: the connection is over.
            if phase == Phase::Open {
                let reason = if res == 0 {
                    CloseReason::PeerClosed
                } else {
                    CloseReason::Error(-res)
                };
                self.app.on_close(&mut Ctx { r: &mut self.r }, id, reason);
            }
            self.r.final_close(id);
        }
        self.after_recv(id);
    }

    fn after_recv(&mut self, id: ConnId) {
        let Some(conn) = self.r.conn(id) else { return };
        let wants_recv = matches!(conn.phase, Phase::Open | Phase::Lingering);
        if wants_recv && !conn.has(RECV_ARMED | STARVED) {
            self.r.arm_recv(id);
        }
        self.r.maybe_free(id);
    }

    fn rearm_starved(&mut self) {
        if self.r.starved.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.r.starved) {
            if let Some(conn) = self.r.conn_mut(id) {
                if conn.has(STARVED) {
                    conn.clear(STARVED);
                    self.after_recv(id);
                }
            }
        }
    }

    fn on_send(&mut self, id: ConnId, res: i32) {
        let Some(conn) = self.r.conn_mut(id) else {
            return;
        };
        conn.clear(SEND_IN_FLIGHT);
        let phase = conn.phase;
        if res >= 0 {
            if let Some(queue) = conn.send.as_mut() {
                queue.advance(res as usize);
            }
            ShardStats::add(&self.r.stats.bytes_sent_total, res as u64);
            let q = &self.r.stats.send_queue_bytes;
            q.store(
                q.load(Ordering::Relaxed).saturating_sub(res as u64),
                Ordering::Relaxed,
            );
        } else if res != -libc::ECANCELED {
            if phase == Phase::Open {
                self.app
                    .on_close(&mut Ctx { r: &mut self.r }, id, CloseReason::Error(-res));
            } else if phase == Phase::HandingOff {
                self.fail_handoff(id, -res);
                return;
            }
            self.r.final_close(id);
        }
        self.after_send(id);
    }

    fn after_send(&mut self, id: ConnId) {
        let Some(conn) = self.r.conn_mut(id) else {
            return;
        };
        if conn.has(SEND_IN_FLIGHT) {
            return;
        }
        if conn.queued_bytes() > 0 {
            if matches!(
                conn.phase,
                Phase::Open | Phase::Flushing | Phase::HandingOff
            ) {
                self.r.submit_send(id);
            } else {
                self.r.maybe_free(id);
            }
            return;
        }
        conn.send = None; // an idle connection keeps no send queue
        match conn.phase {
            Phase::Flushing => self.r.start_linger(id),
            Phase::HandingOff => self.r.submit_handoff(id),
            Phase::Open if conn.has(WANT_DRAINED) => {
                conn.clear(WANT_DRAINED);
                self.app.on_drained(&mut Ctx { r: &mut self.r }, id);
            }
            Phase::Closed => self.r.maybe_free(id),
            _ => {}
        }
    }

    fn on_handoff_out(&mut self, id: ConnId, res: i32) {
        let Some(conn) = self.r.conn_mut(id) else {
            return;
        };
        conn.clear(HANDOFF_IN_FLIGHT);
        if res >= 0 {
            // The other ring holds its own reference now; drop ours.
            conn.phase = Phase::Closed;
            conn.set(CLOSE_IN_FLIGHT);
            let slot = conn.slot;
            self.r.handoffs_out.remove(&id);
            ShardStats::add(&self.r.stats.handoffs_out_total, 1);
            let entry = opcode::Close::new(types::Fixed(slot))
                .build()
                .user_data(op::encode_conn(Tag::Close, id));
            self.r.ring.push(entry);
        } else {
            self.fail_handoff(id, -res);
        }
    }

    fn fail_handoff(&mut self, id: ConnId, errno: i32) {
        ShardStats::add(&self.r.stats.handoff_failures_total, 1);
        tracing::warn!(
            shard = self.r.shard_id,
            errno,
            "handing a connection to its home shard failed; closing it"
        );
        if let Some((to, token)) = self.r.handoffs_out.remove(&id) {
            let _ = self.r.mesh.send(to, Envelope::HandoffCancel { token });
        }
        if let Some(conn) = self.r.conn_mut(id) {
            conn.phase = Phase::Open; // so final_close runs its full path
        }
        self.app.on_close(
            &mut Ctx { r: &mut self.r },
            id,
            CloseReason::HandoffFailed(errno),
        );
        self.r.final_close(id);
        self.r.maybe_free(id);
    }

    fn on_handoff_in(&mut self, token: u64, res: i32) {
        if res < 0 {
            tracing::error!(
                token,
                res,
                "handoff completion with an error in the target ring"
            );
            return;
        }
        let slot = res as u32;
        let now = self.r.now_ms;
        let pending = self.r.handoffs_in.entry(token).or_insert(PendingHandoff {
            slot: None,
            msg: None,
            since_ms: now,
        });
        pending.slot = Some(slot);
        self.complete_handoff_in(token);
        // The state usually arrived first and waits in the inbox.
        self.mesh_pending = true;
    }

    fn complete_handoff_in(&mut self, token: u64) {
        let ready = self
            .r
            .handoffs_in
            .get(&token)
            .is_some_and(|p| p.slot.is_some() && p.msg.is_some());
        if !ready {
            return;
        }
        let p = self.r.handoffs_in.remove(&token).expect("checked above");
        let (slot, msg) = (p.slot.unwrap(), p.msg.unwrap());
        if self.r.stopping {
            self.r.close_slot(slot);
            return;
        }
        ShardStats::add(&self.r.stats.handoffs_in_total, 1);
        let id = self.r.insert(slot, STREAMING);
        self.app.on_handoff(&mut Ctx { r: &mut self.r }, id, msg);
        if self.r.conn(id).is_some_and(|c| c.phase == Phase::Open) {
            self.r.arm_recv(id);
        }
    }

    /// Handles up to MESH_BATCH_MAX messages; true if more are waiting.
    fn drain_inbox(&mut self) -> bool {
        for _ in 0..MESH_BATCH_MAX {
            if let Some(msg) = self.r.local_msgs.pop_front() {
                let from = self.r.shard_id;
                self.app.on_message(&mut Ctx { r: &mut self.r }, from, msg);
                continue;
            }
            let Ok(envelope) = self.r.mesh.inbox.try_recv() else {
                return false;
            };
            ShardStats::add(&self.r.stats.mesh_messages_in_total, 1);
            match envelope {
                Envelope::App { from, msg } => {
                    self.app
                        .on_message(&mut Ctx { r: &mut self.r }, from as usize, msg)
                }
                Envelope::Handoff { token, msg } => {
                    let now = self.r.now_ms;
                    let pending = self.r.handoffs_in.entry(token).or_insert(PendingHandoff {
                        slot: None,
                        msg: None,
                        since_ms: now,
                    });
                    pending.msg = Some(msg);
                    self.complete_handoff_in(token);
                }
                Envelope::HandoffCancel { token } => {
                    if let Some(p) = self.r.handoffs_in.remove(&token) {
                        if let Some(slot) = p.slot {
                            self.r.close_slot(slot);
                        }
                    }
                }
            }
        }
        true
    }

    fn run_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        let conns = &mut self.r.conns;
        self.r.timers.advance(
            self.r.now_ms,
            |index| {
                conns
                    .get_mut(index as usize)
                    .map(|c| &mut c.timer as *mut _)
            },
            |index| fired.push(index),
        );
        for index in fired.drain(..) {
            let Some(conn) = self.r.conns.get(index as usize) else {
                continue;
            };
            let id = ConnId::new(index, conn.gen);
            match conn.phase {
                Phase::Open => self.app.on_timer(&mut Ctx { r: &mut self.r }, id),
                Phase::Flushing | Phase::Lingering => {
                    // The peer did not take our bytes or close in time.
                    self.r.final_close(id);
                    self.r.maybe_free(id);
                }
                _ => {}
            }
        }
        self.fired = fired;
        self.app.on_tick(&mut Ctx { r: &mut self.r });
        if !self.r.handoffs_in.is_empty() {
            self.r.sweep_stale_handoffs();
        }
    }

    fn begin_stop(&mut self) {
        self.r.stopping = true;
        self.r.close_listeners();
        self.stop_deadline_ms = Some(self.r.now_ms + self.r.cfg.stop_grace_ms);
        tracing::debug!(
            shard = self.r.shard_id,
            conns = self.r.conns.len(),
            "stopping"
        );
        self.app.on_stop(&mut Ctx { r: &mut self.r });
    }

    fn abort_all(&mut self) {
        self.aborted_all = true;
        let ids: Vec<ConnId> = self
            .r
            .conns
            .iter()
            .map(|(index, c)| ConnId::new(index as u32, c.gen))
            .collect();
        for id in ids {
            if self.r.conn(id).is_some_and(|c| c.phase == Phase::Open) {
                self.app
                    .on_close(&mut Ctx { r: &mut self.r }, id, CloseReason::Stopped);
            }
            self.r.final_close(id);
            self.r.maybe_free(id);
        }
    }

    /// Cancels everything still in flight and reaps it, so no op writes
    /// into our buffers after they are unmapped.
    fn drain_ring(&mut self) {
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(op::encode(Tag::Ignore, 0));
        self.r.ring.push(entry);
        let give_up_at = self.r.now_ms + STOP_DRAIN_MS;
        while self.r.ring.in_flight > 0 && self.r.now_ms < give_up_at {
            self.r.ring.flush_backlog();
            if self
                .r
                .ring
                .submit_and_wait(Duration::from_millis(50))
                .is_err()
            {
                break;
            }
            self.r.refresh_clock();
            let mut cq = self.r.ring.uring.completion();
            cq.sync();
            for cqe in cq {
                let mine = op::decode(cqe.user_data()).is_some_and(|(t, _)| t != Tag::HandoffIn);
                if mine && !cqueue::more(cqe.flags()) {
                    self.r.ring.in_flight -= 1;
                }
                if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                    self.bufs.recycle(bid);
                }
            }
        }
    }
}
