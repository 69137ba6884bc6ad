//! The shard's state apart from the app: ring, connection slab, timers, mesh.
//! Its methods are the connection operations that need no app callback;
//! `event_loop` runs completions through them and calls the app.

use crate::conn::*;
use crate::conn_table::ConnTable;
use crate::mesh::{Envelope, Mesh};
use crate::op::{self, Tag};
use crate::ring::Ring;
use crate::runtime::RuntimeConfig;
use crate::stats::ShardStats;
use crate::timer::TimerWheel;
use crate::ConnId;
use bytes::Bytes;
use io_uring::{opcode, types};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

pub(crate) struct ListenerState {
    pub(crate) fd: Option<OwnedFd>,
    pub(crate) accept_armed: bool,
}

/// A handed-in connection waits for both halves: its fd (a HandoffIn
/// completion) and its app state (an Envelope::Handoff), in either order.
pub(crate) struct PendingHandoff<M> {
    pub(crate) slot: Option<u32>,
    pub(crate) msg: Option<M>,
    pub(crate) since_ms: u64,
}

pub(crate) struct Reactor<M> {
    pub(crate) ring: Ring,
    pub(crate) conns: ConnTable,
    pub(crate) timers: TimerWheel,
    pub(crate) mesh: Mesh<M>,
    /// Messages this shard sent to itself, delivered with the inbox.
    pub(crate) local_msgs: VecDeque<M>,
    pub(crate) shard_id: usize,
    pub(crate) cfg: Arc<RuntimeConfig>,
    pub(crate) stats: Arc<ShardStats>,
    /// Every shard's counters (for metrics served from any shard).
    pub(crate) all_stats: Arc<[Arc<ShardStats>]>,
    pub(crate) listeners: Vec<ListenerState>,
    pub(crate) buf_group: u16,
    pub(crate) clock_base: Instant,
    pub(crate) now_ms: u64,
    next_gen: u32,
    /// Connections with bytes queued this round; sent in one sendmsg each.
    pub(crate) send_ready: Vec<ConnId>,
    /// Connections whose recv ran out of provided buffers.
    pub(crate) starved: Vec<ConnId>,
    /// Outgoing handoffs: destination shard and token.
    pub(crate) handoffs_out: HashMap<ConnId, (usize, u64)>,
    pub(crate) handoffs_in: HashMap<u64, PendingHandoff<M>>,
    handoff_seq: u64,
    /// The fixed-file table is full: accepts resume when a slot frees.
    pub(crate) accept_paused: bool,
    pub(crate) stopping: bool,
}

impl<M> Reactor<M> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ring: Ring,
        mesh: Mesh<M>,
        shard_id: usize,
        cfg: Arc<RuntimeConfig>,
        stats: Arc<ShardStats>,
        all_stats: Arc<[Arc<ShardStats>]>,
        listeners: Vec<OwnedFd>,
        buf_group: u16,
        clock_base: Instant,
    ) -> Reactor<M> {
        let now_ms = clock_base.elapsed().as_millis() as u64;
        Reactor {
            ring,
            conns: ConnTable::with_capacity(cfg.connections_reserved),
            timers: TimerWheel::new(cfg.timer_buckets, cfg.timer_tick_ms, now_ms),
            mesh,
            local_msgs: VecDeque::new(),
            shard_id,
            stats,
            all_stats,
            listeners: listeners
                .into_iter()
                .map(|fd| ListenerState {
                    fd: Some(fd),
                    accept_armed: false,
                })
                .collect(),
            buf_group,
            clock_base,
            now_ms,
            next_gen: 1,
            send_ready: Vec::new(),
            starved: Vec::new(),
            handoffs_out: HashMap::new(),
            handoffs_in: HashMap::new(),
            handoff_seq: 0,
            accept_paused: false,
            stopping: false,
            cfg,
        }
    }

    pub(crate) fn refresh_clock(&mut self) {
        self.now_ms = self.clock_base.elapsed().as_millis() as u64;
    }

    pub(crate) fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns
            .get(id.index as usize)
            .filter(|c| c.gen == id.gen.get())
    }

    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.index as usize)
            .filter(|c| c.gen == id.gen.get())
    }

    /// Adds a connection living in fixed-file `slot`.
    pub(crate) fn insert(&mut self, slot: u32, flags: u16) -> ConnId {
        let gen = self.next_gen;
        self.next_gen = (self.next_gen + 1) & op::GEN_MASK;
        if self.next_gen == 0 {
            self.next_gen = 1;
        }
        let index = self.conns.insert(Conn {
            slot,
            gen,
            timer: Default::default(),
            phase: Phase::Open,
            flags,
            send: None,
        }) as u32;
        ShardStats::add(&self.stats.connections_open, 1);
        ConnId::new(index, gen)
    }

    pub(crate) fn arm_accept(&mut self, listener: usize) {
        let state = &mut self.listeners[listener];
        let Some(fd) = state.fd.as_ref() else { return };
        if state.accept_armed {
            return;
        }
        state.accept_armed = true;
        let entry = opcode::AcceptMulti::new(types::Fd(fd.as_raw_fd()))
            .allocate_file_index(true)
            .build()
            .user_data(op::encode(Tag::Accept, listener as u64));
        self.ring.push(entry);
    }

    pub(crate) fn resume_accepts(&mut self) {
        if self.accept_paused && !self.stopping {
            self.accept_paused = false;
            for i in 0..self.listeners.len() {
                self.arm_accept(i);
            }
        }
    }

    /// Stops accepting on listener `i`: cancels its multishot accept and
    /// closes its socket (connections still in its backlog are reset by the
    /// kernel; SO_REUSEPORT siblings of a successor keep accepting).
    pub(crate) fn close_listener(&mut self, i: usize) {
        let Some(state) = self.listeners.get_mut(i) else {
            return;
        };
        if state.accept_armed {
            let entry = opcode::AsyncCancel::new(op::encode(Tag::Accept, i as u64))
                .build()
                .user_data(op::encode(Tag::Ignore, 0));
            self.ring.push(entry);
        }
        state.fd = None;
    }

    pub(crate) fn close_listeners(&mut self) {
        for i in 0..self.listeners.len() {
            self.close_listener(i);
        }
    }

    pub(crate) fn arm_recv(&mut self, id: ConnId) {
        let group = self.buf_group;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.has(RECV_ARMED) {
            return;
        }
        conn.set(RECV_ARMED);
        let fd = types::Fixed(conn.slot);
        let entry = if conn.has(STREAMING) {
            opcode::RecvMulti::new(fd, group).build()
        } else {
            opcode::Recv::new(fd, std::ptr::null_mut(), 0)
                .buf_group(group)
                .build()
                .flags(io_uring::squeue::Flags::BUFFER_SELECT)
        };
        self.ring
            .push(entry.user_data(op::encode_conn(Tag::Recv, id)));
    }

    /// Queues chunks; they leave at the end of this round of completions.
    pub(crate) fn enqueue(&mut self, id: ConnId, parts: &[Bytes]) {
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
            self.send_ready.push(id);
        }
    }

    pub(crate) fn submit_send(&mut self, id: ConnId) {
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
    }

    /// Sends what the app queued during this round.
    pub(crate) fn flush_send_ready(&mut self) {
        let ready = std::mem::take(&mut self.send_ready);
        for &id in &ready {
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
        self.send_ready = ready;
        self.send_ready.clear();
    }

    /// Graceful close: flush, shut down writing, discard input until the
    /// peer closes or `close_linger_ms` passes. `last` (e.g. a close frame)
    /// is queued even over the send bound.
    pub(crate) fn start_close(&mut self, id: ConnId, last: Option<Bytes>) {
        let linger_at = self.now_ms + self.cfg.close_linger_ms;
        let tick = self.timers.tick_for(linger_at);
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.phase != Phase::Open {
            return;
        }
        conn.phase = Phase::Flushing;
        conn.clear(WANT_DRAINED);
        let mut timer = conn.timer;
        self.timers.set(&mut timer, id.index, tick);
        let conn = self.conn_mut(id).expect("checked above");
        conn.timer = timer;
        if let Some(last) = last {
            self.enqueue(id, &[last]);
        }
        let conn = self.conn_mut(id).expect("checked above");
        if conn.queued_bytes() == 0 && !conn.has(SEND_IN_FLIGHT) {
            self.start_linger(id);
        }
    }

    pub(crate) fn start_linger(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.has(PEER_EOF) {
            // Everything is sent and the peer already closed its side.
            self.final_close(id);
            return;
        }
        conn.phase = Phase::Lingering;
        conn.set(SHUTDOWN_IN_FLIGHT);
        let entry = opcode::Shutdown::new(types::Fixed(conn.slot), libc::SHUT_WR)
            .build()
            .user_data(op::encode_conn(Tag::Shutdown, id));
        let starved = conn.has(STARVED);
        self.ring.push(entry);
        if !starved {
            self.arm_recv(id);
        }
    }

    /// Closes now: cancels what is in flight and closes the fixed slot.
    /// The entry is freed when the last completion arrives.
    pub(crate) fn final_close(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.phase == Phase::Closed {
            return;
        }
        conn.phase = Phase::Closed;
        conn.timer.deadline_tick = 0;
        conn.clear(STARVED | WANT_DRAINED);
        let cancels: Vec<Tag> = [(RECV_ARMED, Tag::Recv), (SEND_IN_FLIGHT, Tag::Send)]
            .into_iter()
            .filter(|(flag, _)| conn.has(*flag))
            .map(|(_, tag)| tag)
            .collect();
        conn.set(CLOSE_IN_FLIGHT);
        let slot = conn.slot;
        for tag in cancels {
            let entry = opcode::AsyncCancel::new(op::encode_conn(tag, id))
                .build()
                .user_data(op::encode(Tag::Ignore, 0));
            self.ring.push(entry);
        }
        let entry = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(op::encode_conn(Tag::Close, id));
        self.ring.push(entry);
    }

    /// Frees a closed connection once nothing of it is in flight.
    pub(crate) fn maybe_free(&mut self, id: ConnId) {
        let Some(conn) = self.conn(id) else { return };
        if conn.phase != Phase::Closed || conn.ops_in_flight() {
            return;
        }
        let conn = self.conns.remove(id.index as usize);
        let queued = conn.queued_bytes() as u64;
        self.stats.send_queue_bytes.store(
            self.stats
                .send_queue_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(queued),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.stats.connections_open.store(
            self.conns.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        ShardStats::add(&self.stats.closed_total, 1);
        self.resume_accepts();
    }

    pub(crate) fn set_deadline(&mut self, id: ConnId, at_ms: Option<u64>) {
        let tick = at_ms.map_or(0, |at| self.timers.tick_for(at));
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.phase != Phase::Open {
            return;
        }
        let mut timer = conn.timer;
        self.timers.set(&mut timer, id.index, tick);
        if let Some(conn) = self.conn_mut(id) {
            conn.timer = timer;
        }
    }

    /// Starts moving `id` to shard `to`. The app state already went ahead
    /// (Envelope::Handoff); the fd follows when the send queue is empty.
    pub(crate) fn start_handoff(&mut self, id: ConnId, to: usize, msg: M) -> Result<(), M> {
        let token = ((self.shard_id as u64) << 40) | (self.handoff_seq & ((1 << 40) - 1));
        self.handoff_seq += 1;
        if let Err(envelope) = self.mesh.send(to, Envelope::Handoff { token, msg }) {
            match envelope {
                Envelope::Handoff { msg, .. } => return Err(msg),
                _ => unreachable!("sent a Handoff"),
            }
        }
        let conn = self.conn_mut(id).expect("caller checked the connection");
        conn.phase = Phase::HandingOff;
        conn.timer.deadline_tick = 0;
        conn.clear(WANT_DRAINED);
        let idle = conn.queued_bytes() == 0 && !conn.has(SEND_IN_FLIGHT);
        self.handoffs_out.insert(id, (to, token));
        if idle {
            self.submit_handoff(id);
        }
        Ok(())
    }

    pub(crate) fn submit_handoff(&mut self, id: ConnId) {
        let Some(&(to, token)) = self.handoffs_out.get(&id) else {
            return;
        };
        let ring_fd = self.mesh.peers[to].ring_fd;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.phase = Phase::HandedOff;
        conn.set(HANDOFF_IN_FLIGHT);
        let entry = opcode::MsgRingSendFd::new(
            types::Fd(ring_fd),
            types::Fixed(conn.slot),
            types::DestinationSlot::auto_target(),
            op::encode(Tag::HandoffIn, token),
        )
        .build()
        .user_data(op::encode_conn(Tag::HandoffOut, id));
        self.ring.push(entry);
    }

    /// Closes a fixed slot that belongs to no connection (e.g. a handed-in
    /// fd whose state never came).
    pub(crate) fn close_slot(&mut self, slot: u32) {
        let entry = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(op::encode(Tag::Ignore, 0));
        self.ring.push(entry);
    }

    /// Handoffs whose other half did not arrive within this long are dropped.
    pub(crate) const HANDOFF_STALE_MS: u64 = 10_000;

    pub(crate) fn sweep_stale_handoffs(&mut self) {
        let now = self.now_ms;
        let stale: Vec<u64> = self
            .handoffs_in
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.since_ms) > Self::HANDOFF_STALE_MS)
            .map(|(t, _)| *t)
            .collect();
        for token in stale {
            if let Some(p) = self.handoffs_in.remove(&token) {
                tracing::warn!(token, "handed-in connection incomplete after 10 s; dropped");
                if let Some(slot) = p.slot {
                    self.close_slot(slot);
                }
            }
        }
    }
}
