//! The shard's state apart from the app: ring, connection slab, timers,
//! mesh, listeners, handoffs, counters and clock. All of it is private to
//! this module and changed only through its methods: here the connection
//! operations and what the app may read and ask for (through `Ctx`); in
//! `completion.rs` the part of each completion that needs no app callback,
//! which `event_loop` runs before telling the app what they return.

use crate::accept_watch::{self, AcceptWatch};
use crate::coalesce::Coalescer;
use crate::config::RuntimeConfig;
use crate::conn::*;
use crate::conn_table::ConnTable;
use crate::handoff::Handoffs;
use crate::mesh::{Envelope, Mesh};
use crate::op::{self, Tag};
use crate::ring::Ring;
use crate::stats::ShardStats;
use crate::takeover::{AcceptGate, GateFollower, GateStep};
use crate::timer::TimerWheel;
use crate::tls::{self, Tls};
use crate::ConnId;
use bytes::Bytes;
use io_uring::{opcode, types};
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

mod completion;
mod moves;

pub(crate) use completion::{Inbound, Received, Sent};
pub use moves::ExportError;
pub(crate) use moves::{Adopted, Exported};

/// One listening socket of this shard. Several may serve one listener
/// index (a successor with fewer shards inherits more sockets than it has
/// shards); the op payload of an accept is the position in `listeners`.
struct ListenerState {
    /// Index into `RuntimeConfig::listeners`: what the app is told.
    listener: usize,
    fd: Option<OwnedFd>,
    accept_armed: bool,
    /// What the accept-queue watch saw (see `accept_watch`).
    watch: AcceptWatch,
}

pub(crate) struct Reactor<M> {
    // Field order is drop order: the ring goes before `wake_buf`, which its
    // eventfd read may write into.
    ring: Ring,
    /// Where the armed read of this shard's eventfd lands (8 bytes).
    wake_buf: Box<[u8; 8]>,
    conns: ConnTable,
    timers: TimerWheel,
    mesh: Mesh<M>,
    /// Messages this shard sent to itself, delivered with the inbox.
    local_msgs: VecDeque<M>,
    shard_id: usize,
    cfg: Arc<RuntimeConfig>,
    stats: Arc<ShardStats>,
    /// Every shard's counters (for metrics served from any shard).
    all_stats: Arc<[Arc<ShardStats>]>,
    listeners: Vec<ListenerState>,
    buf_group: u16,
    clock_base: Instant,
    now_ms: u64,
    next_gen: u32,
    /// Connections with bytes queued this round; sent in one sendmsg each.
    send_ready: Vec<ConnId>,
    /// Connections whose new bytes wait for more until a due time (ms),
    /// oldest first; only while the shard is saturated (see `coalesce`).
    held: VecDeque<(u64, ConnId)>,
    coalescer: Coalescer,
    /// Connections whose recv ran out of provided buffers.
    starved: Vec<ConnId>,
    /// Handed-in halves: the app's state and a TLS connection's record state.
    handoffs: Handoffs<(M, Option<tls::Moved>)>,
    /// TLS connections' state, off to the side of the plain path.
    tls: Tls,
    /// The fixed-file table is full: accepts resume when a slot frees.
    accept_paused: bool,
    /// The runtime's accept gate (a live upgrade), and what this shard did
    /// about it.
    gate: AcceptGate,
    gate_follower: GateFollower,
    /// When the accept queues are next checked (`accept_watch`).
    accept_watch_at_ms: u64,
    stopping: bool,
    /// Descriptors being adopted from another process; after `ring`, whose
    /// FILES_UPDATE ops read and write their arrays.
    adopts: moves::Adopts<M>,
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
        listeners: Vec<(usize, OwnedFd)>,
        buf_group: u16,
        clock_base: Instant,
        gate: AcceptGate,
    ) -> Reactor<M> {
        let now_ms = clock_base.elapsed().as_millis() as u64;
        Reactor {
            ring,
            wake_buf: Box::new([0; 8]),
            conns: ConnTable::with_capacity(cfg.connections_reserved),
            timers: TimerWheel::new(cfg.timer_buckets, cfg.timer_tick_ms, now_ms),
            mesh,
            local_msgs: VecDeque::new(),
            shard_id,
            stats,
            all_stats,
            listeners: listeners
                .into_iter()
                .map(|(listener, fd)| ListenerState {
                    listener,
                    fd: Some(fd),
                    accept_armed: false,
                    watch: AcceptWatch::default(),
                })
                .collect(),
            buf_group,
            clock_base,
            now_ms,
            next_gen: 1,
            send_ready: Vec::new(),
            held: VecDeque::new(),
            coalescer: Coalescer::new(cfg.send_coalesce_ms_max, now_ms),
            starved: Vec::new(),
            handoffs: Handoffs::new(),
            tls: Tls::new(cfg.tls.clone()),
            accept_paused: false,
            gate,
            gate_follower: GateFollower::default(),
            accept_watch_at_ms: now_ms + accept_watch::CHECK_INTERVAL_MS,
            stopping: false,
            adopts: moves::Adopts::new(),
            cfg,
        }
    }

    // --- What the app and the loop may read ---

    pub(crate) fn shard_id(&self) -> usize {
        self.shard_id
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.mesh.peers.len()
    }

    /// Milliseconds on the runtime's monotonic clock, read once per round.
    pub(crate) fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Connection-table capacity reserved for this shard.
    pub(crate) fn connection_capacity(&self) -> usize {
        self.cfg.connections_reserved
    }

    pub(crate) fn send_queue_bytes_max(&self) -> usize {
        self.cfg.send_queue_bytes_max
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping
    }

    pub(crate) fn stats(&self) -> &ShardStats {
        &self.stats
    }

    pub(crate) fn all_stats(&self) -> &[Arc<ShardStats>] {
        &self.all_stats
    }

    pub(crate) fn ops_in_flight(&self) -> usize {
        self.ring.in_flight()
    }

    /// True while the connection exists and the app owns it.
    pub(crate) fn is_open(&self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| c.phase == Phase::Open)
    }

    /// Every connection on this shard (for aborting them all at stop).
    pub(crate) fn conn_ids(&self) -> Vec<ConnId> {
        self.conns
            .iter()
            .map(|(index, c)| ConnId::new(index as u32, c.gen))
            .collect()
    }

    // --- Connections ---

    pub(crate) fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns
            .get(id.index as usize)
            .filter(|c| c.gen == id.gen.get())
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.index as usize)
            .filter(|c| c.gen == id.gen.get())
    }

    /// Adds a connection living in fixed-file `slot`.
    fn insert(&mut self, slot: u32, flags: u16) -> ConnId {
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

    /// Arms the multishot accept of the socket at `position` in
    /// `listeners`, unless the accept gate holds this shard paused.
    fn arm_accept(&mut self, position: usize) {
        if self.gate_follower.is_paused() {
            return;
        }
        let state = &mut self.listeners[position];
        let Some(fd) = state.fd.as_ref() else { return };
        if state.accept_armed {
            return;
        }
        state.accept_armed = true;
        let entry = opcode::AcceptMulti::new(types::Fd(fd.as_raw_fd()))
            .allocate_file_index(true)
            .build()
            .user_data(op::encode(Tag::Accept, position as u64));
        self.ring.push(entry);
    }

    /// The listener index (into `RuntimeConfig::listeners`) of the socket
    /// at `position`.
    pub(crate) fn listener_index(&self, position: usize) -> usize {
        self.listeners[position].listener
    }

    /// Once a second: renews any armed accept whose socket has connections
    /// waiting and accepted none since the last check (see `accept_watch`).
    pub(crate) fn watch_accept_queues(&mut self) {
        if self.now_ms < self.accept_watch_at_ms {
            return;
        }
        self.accept_watch_at_ms = self.now_ms + accept_watch::CHECK_INTERVAL_MS;
        for position in 0..self.listeners.len() {
            let state = &mut self.listeners[position];
            let queued = match (&state.fd, state.accept_armed) {
                (Some(fd), true) => accept_watch::accept_queue_len(fd.as_raw_fd()),
                _ => None,
            };
            let Some(queued) = queued else {
                state.watch.reset();
                continue;
            };
            if state.watch.check(queued) {
                tracing::warn!(
                    shard = self.shard_id,
                    listener = state.listener,
                    queued,
                    "connections wait in an accept queue while this shard's accept sleeps: accepting afresh"
                );
                ShardStats::add(&self.stats.accept_renewals_total, 1);
                self.cancel_accept(position);
            }
        }
    }

    fn cancel_accept(&mut self, position: usize) {
        if self.listeners[position].accept_armed {
            let entry = opcode::AsyncCancel::new(op::encode(Tag::Accept, position as u64))
                .build()
                .user_data(op::encode(Tag::Ignore, 0));
            self.ring.push(entry);
        }
    }

    /// Follows the runtime's accept gate, once per round: a pause cancels
    /// every armed accept (the sockets stay open), a resume arms them again.
    pub(crate) fn follow_accept_gate(&mut self) {
        let armed = self.listeners.iter().any(|l| l.accept_armed);
        match self.gate_follower.step(&self.gate, armed) {
            GateStep::Nothing => {}
            GateStep::Pause => {
                tracing::debug!(shard = self.shard_id, "accepting paused (live upgrade)");
                for i in 0..self.listeners.len() {
                    self.cancel_accept(i);
                }
            }
            GateStep::Renew => {
                tracing::debug!(shard = self.shard_id, "accepts renewed");
                for i in 0..self.listeners.len() {
                    self.cancel_accept(i);
                }
            }
            GateStep::Resume => {
                tracing::debug!(shard = self.shard_id, "accepting resumed");
                if !self.stopping && !self.accept_paused {
                    for i in 0..self.listeners.len() {
                        self.arm_accept(i);
                    }
                }
            }
        }
    }

    fn resume_accepts(&mut self) {
        if self.accept_paused && !self.stopping {
            self.accept_paused = false;
            for i in 0..self.listeners.len() {
                self.arm_accept(i);
            }
        }
    }

    /// Stops accepting on listener `listener` (every socket of this shard
    /// that serves it): cancels its multishot accept and closes its socket
    /// (connections still in its backlog are reset by the kernel, unless
    /// another process holds the same socket; SO_REUSEPORT siblings of a
    /// successor keep accepting).
    pub(crate) fn close_listener(&mut self, listener: usize) {
        for position in 0..self.listeners.len() {
            if self.listeners[position].listener == listener {
                self.close_socket(position);
            }
        }
    }

    fn close_socket(&mut self, position: usize) {
        self.cancel_accept(position);
        self.listeners[position].fd = None;
    }

    fn close_listeners(&mut self) {
        for position in 0..self.listeners.len() {
            self.close_socket(position);
        }
    }

    fn arm_recv(&mut self, id: ConnId) {
        let group = self.buf_group;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.has(RECV_ARMED | EXPORTING) {
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
    fn enqueue_raw(&mut self, id: ConnId, parts: &[Bytes]) {
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

    fn submit_send(&mut self, id: ConnId) {
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
    fn flush_send_ready(&mut self) {
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
        // Held sends go when due: at most one window after their first
        // byte, whatever the window is now.
        while let Some(&(due, id)) = self.held.front() {
            if due > self.now_ms {
                break;
            }
            self.held.pop_front();
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
        conn.clear(WANT_DRAINED | EXPORTING);
        let mut timer = conn.timer;
        self.timers.set(&mut timer, id.index, tick);
        let conn = self.conn_mut(id).expect("checked above");
        conn.timer = timer;
        if let Some(last) = last {
            self.enqueue(id, &[last]);
        }
        if let Some(alert) = self.tls.close_notify(id) {
            self.enqueue_raw(id, &[Bytes::from(alert)]);
        }
        let conn = self.conn_mut(id).expect("checked above");
        if conn.queued_bytes() == 0 && !conn.has(SEND_IN_FLIGHT) {
            self.start_linger(id);
        }
    }

    fn start_linger(&mut self, id: ConnId) {
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
        conn.clear(STARVED | WANT_DRAINED | EXPORTING);
        let cancels: Vec<Tag> = [(RECV_ARMED, Tag::Recv), (SEND_IN_FLIGHT, Tag::Send)]
            .into_iter()
            .filter(|(flag, _)| conn.has(*flag))
            .map(|(_, tag)| tag)
            .collect();
        // A shutdown is never done inline: io_uring hands it to a worker
        // thread, where it may run after a close queued behind it. Closing
        // the fixed slot first would let the next accept take the slot and
        // the late shutdown hit that new connection (seen as an EOF before
        // any reply on the push socket). So the close waits for it.
        let shutdown_running = conn.has(SHUTDOWN_IN_FLIGHT);
        conn.set(if shutdown_running {
            CLOSE_DEFERRED
        } else {
            CLOSE_IN_FLIGHT
        });
        let slot = conn.slot;
        for tag in cancels {
            let entry = opcode::AsyncCancel::new(op::encode_conn(tag, id))
                .build()
                .user_data(op::encode(Tag::Ignore, 0));
            self.ring.push(entry);
        }
        if !shutdown_running {
            self.push_close(id, slot);
        }
    }

    fn push_close(&mut self, id: ConnId, slot: u32) {
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
        if conn.has(TLS) {
            self.tls.remove(id);
        }
        let queued = conn.queued_bytes() as u64;
        self.stats.send_queue_bytes.store(
            self.stats
                .send_queue_bytes
                .load(Ordering::Relaxed)
                .saturating_sub(queued),
            Ordering::Relaxed,
        );
        self.stats
            .connections_open
            .store(self.conns.len() as u64, Ordering::Relaxed);
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
        let Ok(tls) = self.tls.take_for_handoff(id) else {
            return Err(msg); // still handshaking: cannot move
        };
        let token = self.handoffs.next_token(self.shard_id);
        if let Err(envelope) = self.mesh.send(to, Envelope::Handoff { token, msg, tls }) {
            match envelope {
                Envelope::Handoff { msg, tls, .. } => {
                    self.tls.put_back(id, tls);
                    return Err(msg);
                }
                _ => unreachable!("sent a Handoff"),
            }
        }
        let conn = self.conn_mut(id).expect("caller checked the connection");
        conn.phase = Phase::HandingOff;
        conn.timer.deadline_tick = 0;
        conn.clear(WANT_DRAINED);
        let idle = conn.queued_bytes() == 0 && !conn.has(SEND_IN_FLIGHT);
        self.handoffs.start_out(id, to, token);
        if idle {
            self.submit_handoff(id);
        }
        Ok(())
    }

    fn submit_handoff(&mut self, id: ConnId) {
        let Some((to, token)) = self.handoffs.out_target(id) else {
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
    fn close_slot(&mut self, slot: u32) {
        let entry = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(op::encode(Tag::Ignore, 0));
        self.ring.push(entry);
    }

    /// Drops handed-in halves whose other half never came (closing the
    /// fd of those whose fd came).
    pub(crate) fn sweep_stale_handoffs(&mut self) {
        let mut slots = Vec::new();
        self.handoffs.sweep_stale(self.now_ms, |token, slot| {
            tracing::warn!(token, "handed-in connection incomplete after 10 s; dropped");
            slots.extend(slot);
        });
        for slot in slots {
            self.close_slot(slot);
        }
    }

    // --- Requests from the app that need no completion ---

    /// Asks for `on_drained` when the send queue next empties.
    pub(crate) fn want_drained(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            if c.phase == Phase::Open {
                c.set(WANT_DRAINED);
            }
        }
    }

    /// Receives with a multishot recv from the next arming on.
    pub(crate) fn set_coalesced(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            c.set(COALESCED);
        }
    }

    pub(crate) fn set_streaming(&mut self, id: ConnId) {
        if let Some(c) = self.conn_mut(id) {
            c.set(STREAMING);
        }
    }

    /// Sends an app message to shard `to` (this one: delivered with the
    /// inbox, after the current round). A full queue returns the message.
    pub(crate) fn send_msg(&mut self, to: usize, msg: M) -> Result<(), M> {
        if to == self.shard_id {
            self.local_msgs.push_back(msg);
            return Ok(());
        }
        let from = self.shard_id as u16;
        self.mesh
            .send(to, Envelope::App { from, msg })
            .map_err(|e| match e {
                Envelope::App { msg, .. } => msg,
                _ => unreachable!("sent an App envelope"),
            })
    }

    // --- TLS ---

    /// Bytes received on a TLS connection (the caller checked the flag):
    /// opened, or fed to its handshake, whose records are queued here.
    pub(crate) fn tls_input(&mut self, id: ConnId, buf: &mut [u8]) -> tls::Input {
        let mut out = Vec::new();
        let mut input = self.tls.input(id, buf, &mut out);
        self.after_tls(id, out, &mut input);
        input
    }

    /// A new round: the handshake budget is full again.
    pub(crate) fn tls_new_round(&mut self) {
        self.tls.new_round();
    }

    /// Handshakes that wait for budget, oldest first.
    pub(crate) fn tls_take_deferred(&mut self) -> Vec<ConnId> {
        self.tls.take_deferred()
    }

    pub(crate) fn tls_has_deferred(&self) -> bool {
        self.tls.has_deferred()
    }

    /// Continues a deferred handshake of a connection still open.
    pub(crate) fn tls_resume(&mut self, id: ConnId) -> tls::Input {
        if !self.is_open(id) {
            return tls::Input::Nothing;
        }
        let mut out = Vec::new();
        let mut input = self.tls.resume(id, &mut out);
        self.after_tls(id, out, &mut input);
        input
    }

    fn after_tls(&mut self, id: ConnId, out: Vec<u8>, input: &mut tls::Input) {
        if !out.is_empty() {
            self.enqueue_raw(id, &[Bytes::from(out)]);
        }
        if let tls::Input::Ended { failure, reply } = input {
            if let Some(reason) = failure {
                ShardStats::add(&self.stats.tls_failures_total, 1);
                tracing::info!(shard = self.shard_id, reason = %reason, "TLS connection refused or ended");
            }
            let reply = std::mem::take(reply);
            if !reply.is_empty() {
                self.enqueue_raw(id, &[Bytes::from(reply)]);
            }
            self.tls.remove(id);
        }
        let established = self.tls.take_established();
        if established > 0 {
            ShardStats::add(&self.stats.tls_handshakes_total, established);
        }
    }

    /// Arms the first recv of a connection the app kept open after
    /// `on_accept` / `on_handoff`.
    pub(crate) fn arm_recv_if_open(&mut self, id: ConnId) {
        if self.is_open(id) {
            self.arm_recv(id);
        }
    }
}
