//! The shard's state apart from the app: ring, connection slab, timers,
//! mesh, listeners, handoffs, counters and clock. All of it is private to
//! this module and changed only through its methods: here a connection's
//! life (insert, recv, close, free) and what the app may read and ask for
//! (through `Ctx`); beside it `listeners.rs` (accepts and the accept gate),
//! `send.rs` (send queues, coalescing, sendmsg), `handoff_out.rs` (moving a
//! connection to another shard), `tls_io.rs`, `moves.rs` (to and from
//! another process) and `completion.rs`, the part of each completion that
//! needs no app callback, which `event_loop` runs before telling the app
//! what they return.

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
use crate::takeover::{AcceptGate, GateFollower};
use crate::timer::TimerWheel;
use crate::tls::{self, Tls};
use crate::ConnId;
use bytes::Bytes;
use io_uring::{opcode, types};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

mod completion;
mod handoff_out;
mod listeners;
mod moves;
mod send;
mod tls_io;

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

    /// Arms the first recv of a connection the app kept open after
    /// `on_accept` / `on_handoff`.
    pub(crate) fn arm_recv_if_open(&mut self, id: ConnId) {
        if self.is_open(id) {
            self.arm_recv(id);
        }
    }
}
