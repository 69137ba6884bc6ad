//! The in-memory driver: N gateway shards wired to a recording [`Io`]
//! instead of rings, an in-memory mesh, in-memory sockets and simulated
//! time (in the spirit of quinn-proto's test pair). Every flow of the
//! gateway runs here in microseconds and deterministically: no thread, no
//! socket, no clock.
//!
//! The model follows the shard runtime's contract (`shard::App`): a
//! connection gets calls until the gateway closes, aborts or hands it off
//! (or it ends and `closed` is called); a send is all-or-nothing against
//! `send_queue_bytes_max` once bytes are queued; a send queue empties when
//! its client reads, and `drained` follows if it was asked for; messages
//! and handoffs are delivered after the current call, in order.
//!
//! Tests drive it through [`Cluster`]: connect sockets, write bytes as a
//! client, read what the server sent, let time pass. [`client`] speaks
//! WebSocket and the push wire on top of it.

pub mod client;
mod tests_admin;
mod tests_clients;
mod tests_delivery;
mod tests_publish;
mod tests_redis;
mod tests_sse;
mod tests_takeover;

use super::{Gateway, GatewayShared, Io, Msg};
use bytes::Bytes;
use shard::{CloseReason, ConnId, SendError, StatsSnapshot};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// A socket's stable name while its server end moves between shards.
pub type SocketId = usize;

/// The runtime's timer tick: deadlines and `tick` run at this granularity.
pub const TICK_MS: u64 = 100;

/// Steps of follow-up work (messages, handoffs, drained calls) processed
/// after one outside event at most: more means the gateway loops.
const FOLLOW_UP_STEPS_MAX: usize = 1_000_000;

/// Knobs of the simulated runtime.
#[derive(Clone, Copy, Debug)]
pub struct SimSettings {
    pub shards: usize,
    pub connection_capacity: usize,
    pub send_queue_bytes_max: usize,
    /// Messages one shard's inbox holds; a full inbox refuses `send_msg`
    /// and `hand_off`, as a full flume channel does.
    pub mesh_queue_len: usize,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            shards: 2,
            connection_capacity: 4096,
            send_queue_bytes_max: 64 * 1024,
            mesh_queue_len: 65536,
        }
    }
}

/// The server end of a socket on one shard.
struct ServerConn {
    socket: SocketId,
    /// Bytes sent and not yet read by the client (the send queue).
    queued: usize,
    want_drained: bool,
    deadline_ms: Option<u64>,
    streaming: bool,
}

/// A socket as its client sees it.
#[derive(Default)]
pub struct Socket {
    /// Where its server end is now.
    at: Option<(usize, ConnId)>,
    /// Bytes the server sent that the client has not read.
    unread: Vec<u8>,
    /// Read by the client, not yet consumed by the test.
    pub received: Vec<u8>,
    /// The client reads as soon as bytes arrive (otherwise only on
    /// [`Cluster::read`]).
    pub reading: bool,
    /// The server closed (gracefully, after `unread`) or aborted it.
    pub closed_by_server: bool,
    pub aborted_by_server: bool,
}

struct Shard {
    gateway: Gateway,
    conns: BTreeMap<u32, (ConnId, ServerConn)>,
    free: Vec<u32>,
    next_index: u32,
    next_gen: u32,
    closed_listeners: Vec<usize>,
}

enum FollowUp {
    Msg {
        to: usize,
        from: usize,
        msg: Msg,
    },
    Handoff {
        to: usize,
        socket: SocketId,
        msg: Msg,
    },
    Drained {
        shard: usize,
        conn: ConnId,
    },
}

/// What one shard's `Io` needs: the world minus that shard's gateway.
struct World {
    settings: SimSettings,
    now_ms: u64,
    sockets: Vec<Socket>,
    follow_ups: VecDeque<FollowUp>,
    /// Messages queued per destination shard (bounds the inbox).
    inbox_len: Vec<usize>,
    /// Shards whose inbox is held: messages to them wait (a slow shard).
    held: Vec<bool>,
}

pub struct Cluster {
    pub shared: Arc<GatewayShared>,
    shards: Vec<Shard>,
    world: World,
}

/// The `Io` of one shard during a call into its gateway.
struct SimIo<'a> {
    shard: usize,
    conns: &'a mut BTreeMap<u32, (ConnId, ServerConn)>,
    closed_listeners: &'a mut Vec<usize>,
    freed: &'a mut Vec<u32>,
    world: &'a mut World,
}

impl SimIo<'_> {
    fn conn(&mut self, conn: ConnId) -> Option<&mut ServerConn> {
        match self.conns.get_mut(&(conn.index() as u32)) {
            Some((id, c)) if *id == conn => Some(c),
            _ => None,
        }
    }

    /// The gateway let go of `conn`: it gets no more calls for it.
    fn remove(&mut self, conn: ConnId) -> Option<ServerConn> {
        let index = conn.index() as u32;
        match self.conns.get(&index) {
            Some((id, _)) if *id == conn => {
                self.freed.push(index);
                self.conns.remove(&index).map(|(_, c)| c)
            }
            _ => None,
        }
    }
}

impl Io for SimIo<'_> {
    fn shard_id(&self) -> usize {
        self.shard
    }

    fn shard_count(&self) -> usize {
        self.world.settings.shards
    }

    fn now_ms(&self) -> u64 {
        self.world.now_ms
    }

    fn connection_capacity(&self) -> usize {
        self.world.settings.connection_capacity
    }

    fn send(&mut self, conn: ConnId, parts: &[Bytes]) -> Result<(), SendError> {
        let max = self.world.settings.send_queue_bytes_max;
        let Some(c) = self.conn(conn) else {
            return Err(SendError::Closed);
        };
        let adding: usize = parts.iter().map(Bytes::len).sum();
        if c.queued > 0 && c.queued + adding > max {
            return Err(SendError::QueueFull);
        }
        c.queued += adding;
        let socket = c.socket;
        for part in parts {
            self.world.sockets[socket].unread.extend_from_slice(part);
        }
        Ok(())
    }

    fn notify_when_drained(&mut self, conn: ConnId) {
        if let Some(c) = self.conn(conn) {
            c.want_drained = true;
        }
    }

    fn close(&mut self, conn: ConnId, last: Option<Bytes>) {
        if let Some(c) = self.remove(conn) {
            let socket = &mut self.world.sockets[c.socket];
            if let Some(last) = last {
                socket.unread.extend_from_slice(&last);
            }
            socket.closed_by_server = true;
            socket.at = None;
        }
    }

    fn abort(&mut self, conn: ConnId) {
        if let Some(c) = self.remove(conn) {
            let socket = &mut self.world.sockets[c.socket];
            socket.unread.clear();
            socket.closed_by_server = true;
            socket.aborted_by_server = true;
            socket.at = None;
        }
    }

    fn stream(&mut self, conn: ConnId) {
        if let Some(c) = self.conn(conn) {
            c.streaming = true;
        }
    }

    fn set_deadline(&mut self, conn: ConnId, at_ms: u64) {
        if let Some(c) = self.conn(conn) {
            c.deadline_ms = Some(at_ms);
        }
    }

    fn clear_deadline(&mut self, conn: ConnId) {
        if let Some(c) = self.conn(conn) {
            c.deadline_ms = None;
        }
    }

    fn hand_off(&mut self, conn: ConnId, to_shard: usize, msg: Msg) -> Result<(), Msg> {
        let ok = self
            .conn(conn)
            .is_some_and(|c| !c.streaming && c.queued == 0);
        if !ok
            || to_shard == self.shard
            || to_shard >= self.world.settings.shards
            || self.world.inbox_len[to_shard] >= self.world.settings.mesh_queue_len
        {
            return Err(msg);
        }
        let c = self.remove(conn).expect("checked above");
        self.world.sockets[c.socket].at = None;
        self.world.inbox_len[to_shard] += 1;
        self.world.follow_ups.push_back(FollowUp::Handoff {
            to: to_shard,
            socket: c.socket,
            msg,
        });
        Ok(())
    }

    fn send_msg(&mut self, to_shard: usize, msg: Msg) -> Result<(), Msg> {
        if to_shard != self.shard
            && self.world.inbox_len[to_shard] >= self.world.settings.mesh_queue_len
        {
            return Err(msg);
        }
        self.world.inbox_len[to_shard] += 1;
        self.world.follow_ups.push_back(FollowUp::Msg {
            to: to_shard,
            from: self.shard,
            msg,
        });
        Ok(())
    }

    fn close_listener(&mut self, listener: usize) {
        if !self.closed_listeners.contains(&listener) {
            self.closed_listeners.push(listener);
        }
    }

    fn runtime_stats(&self) -> Vec<StatsSnapshot> {
        Vec::new()
    }
    fn export(&mut self, _conn: ConnId) -> Result<(), shard::ExportError> {
        // Moves between processes are tested on real rings (tests/takeover.rs).
        Err(shard::ExportError::Unsupported)
    }
    fn adopt(
        &mut self,
        fd: std::os::fd::OwnedFd,
        msg: Msg,
    ) -> Result<(), (std::os::fd::OwnedFd, Msg)> {
        Err((fd, msg))
    }
}

impl Cluster {
    pub fn new(shared: GatewayShared, settings: SimSettings) -> Cluster {
        let shared = Arc::new(shared);
        let shards = (0..settings.shards)
            .map(|id| Shard {
                gateway: Gateway::new(shared.clone(), id),
                conns: BTreeMap::new(),
                free: Vec::new(),
                next_index: 0,
                next_gen: 1,
                closed_listeners: Vec::new(),
            })
            .collect();
        Cluster {
            shared,
            shards,
            world: World {
                settings,
                now_ms: 0,
                sockets: Vec::new(),
                follow_ups: VecDeque::new(),
                inbox_len: vec![0; settings.shards],
                held: vec![false; settings.shards],
            },
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.world.now_ms
    }

    /// Runs `f` on shard `shard`'s gateway with that shard's `Io`.
    fn call<R>(&mut self, shard: usize, f: impl FnOnce(&mut Gateway, &mut SimIo) -> R) -> R {
        let s = &mut self.shards[shard];
        let mut freed = Vec::new();
        let mut io = SimIo {
            shard,
            conns: &mut s.conns,
            closed_listeners: &mut s.closed_listeners,
            freed: &mut freed,
            world: &mut self.world,
        };
        let result = f(&mut s.gateway, &mut io);
        s.free.extend(freed);
        result
    }

    /// A new connection id on `shard`, reusing the lowest freed index
    /// last-in-first-out as the shard's slab does, with a new generation.
    fn new_conn(&mut self, shard: usize) -> ConnId {
        let s = &mut self.shards[shard];
        let index = s.free.pop().unwrap_or_else(|| {
            s.next_index += 1;
            s.next_index - 1
        });
        let gen = s.next_gen;
        s.next_gen = s.next_gen % ((1 << 24) - 1) + 1;
        ConnId::for_tests(index, gen)
    }

    fn attach(&mut self, shard: usize, socket: SocketId, streaming: bool) -> ConnId {
        let conn = self.new_conn(shard);
        self.shards[shard].conns.insert(
            conn.index() as u32,
            (
                conn,
                ServerConn {
                    socket,
                    queued: 0,
                    want_drained: false,
                    deadline_ms: None,
                    streaming,
                },
            ),
        );
        self.world.sockets[socket].at = Some((shard, conn));
        conn
    }

    /// A client connects to `listener`, accepted on `shard`. `None` if the
    /// shard no longer listens there (drain).
    pub fn connect(&mut self, shard: usize, listener: usize) -> Option<SocketId> {
        if self.shards[shard].closed_listeners.contains(&listener) {
            return None;
        }
        let socket = self.world.sockets.len();
        self.world.sockets.push(Socket {
            reading: true,
            ..Socket::default()
        });
        let conn = self.attach(shard, socket, false);
        self.call(shard, |g, io| g.accept(io, conn, listener));
        self.settle();
        Some(socket)
    }

    /// The client writes `bytes` (one read on the server).
    pub fn write(&mut self, socket: SocketId, bytes: &[u8]) {
        let Some((shard, conn)) = self.world.sockets[socket].at else {
            return;
        };
        let mut data = bytes.to_vec();
        self.call(shard, |g, io| g.data(io, conn, &mut data));
        self.settle();
    }

    /// The client closes its end (the server sees EOF).
    pub fn hang_up(&mut self, socket: SocketId) {
        let Some((shard, conn)) = self.world.sockets[socket].at.take() else {
            return;
        };
        self.call(shard, |g, io| {
            g.closed(io, conn, CloseReason::PeerClosed);
            io.remove(conn);
        });
        self.settle();
    }

    pub fn socket(&self, socket: SocketId) -> &Socket {
        &self.world.sockets[socket]
    }

    pub fn socket_mut(&mut self, socket: SocketId) -> &mut Socket {
        &mut self.world.sockets[socket]
    }

    /// Where the server end of `socket` is now.
    pub fn server_end(&self, socket: SocketId) -> Option<(usize, ConnId)> {
        self.world.sockets[socket].at
    }

    /// Is the server end of `socket` gone (closed, aborted or never)?
    pub fn is_closed(&self, socket: SocketId) -> bool {
        self.world.sockets[socket].at.is_none()
    }

    /// The client reads everything sent so far; returns what it got.
    pub fn read(&mut self, socket: SocketId) -> Vec<u8> {
        self.deliver_unread(socket);
        self.settle();
        std::mem::take(&mut self.world.sockets[socket].received)
    }

    /// Moves what the server sent into `received`, emptying the send queue.
    fn deliver_unread(&mut self, socket: SocketId) {
        let s = &mut self.world.sockets[socket];
        let unread = std::mem::take(&mut s.unread);
        s.received.extend_from_slice(&unread);
        if let Some((shard, conn)) = s.at {
            if let Some((id, c)) = self.shards[shard].conns.get_mut(&(conn.index() as u32)) {
                if *id == conn && c.queued > 0 {
                    c.queued = 0;
                    if std::mem::take(&mut c.want_drained) {
                        self.world
                            .follow_ups
                            .push_back(FollowUp::Drained { shard, conn });
                    }
                }
            }
        }
    }

    /// Runs follow-up work until nothing is left: reading clients read,
    /// messages and handoffs arrive, drained calls are made.
    fn settle(&mut self) {
        for _ in 0..FOLLOW_UP_STEPS_MAX {
            let reading: Vec<SocketId> = (0..self.world.sockets.len())
                .filter(|&s| {
                    let s = &self.world.sockets[s];
                    s.reading && !s.unread.is_empty()
                })
                .collect();
            for socket in reading {
                self.deliver_unread(socket);
            }
            let held = &self.world.held;
            let next = self.world.follow_ups.iter().position(|f| match f {
                FollowUp::Msg { to, .. } | FollowUp::Handoff { to, .. } => !held[*to],
                FollowUp::Drained { .. } => true,
            });
            let Some(next) = next.and_then(|i| self.world.follow_ups.remove(i)) else {
                return;
            };
            match next {
                FollowUp::Msg { to, from, msg } => {
                    self.world.inbox_len[to] -= 1;
                    self.call(to, |g, io| g.message(io, from, msg));
                }
                FollowUp::Handoff { to, socket, msg } => {
                    self.world.inbox_len[to] -= 1;
                    let conn = self.attach(to, socket, true);
                    self.call(to, |g, io| g.handed_in(io, conn, msg));
                }
                FollowUp::Drained { shard, conn } => {
                    let open = self.shards[shard]
                        .conns
                        .get(&(conn.index() as u32))
                        .is_some_and(|(id, _)| *id == conn);
                    if open {
                        self.call(shard, |g, io| g.drained(io, conn));
                    }
                }
            }
        }
        panic!("follow-up work did not settle after {FOLLOW_UP_STEPS_MAX} steps");
    }

    /// A message from outside the shards (the Redis thread's injector) to
    /// `shard`'s gateway.
    pub fn inject(&mut self, shard: usize, msg: Msg) {
        self.world.inbox_len[shard] += 1;
        self.world.follow_ups.push_back(FollowUp::Msg {
            to: shard,
            from: shard,
            msg,
        });
        self.settle();
    }

    /// Lets `ms` pass in timer ticks: due deadlines fire, then each
    /// shard's tick runs.
    pub fn advance(&mut self, ms: u64) {
        let until = self.world.now_ms + ms;
        while self.world.now_ms < until {
            self.world.now_ms = (self.world.now_ms + TICK_MS).min(until);
            let now = self.world.now_ms;
            for shard in 0..self.shards.len() {
                let due: Vec<ConnId> = self.shards[shard]
                    .conns
                    .values()
                    .filter(|(_, c)| c.deadline_ms.is_some_and(|at| at <= now))
                    .map(|(id, _)| *id)
                    .collect();
                for conn in due {
                    let still = self.shards[shard]
                        .conns
                        .get_mut(&(conn.index() as u32))
                        .filter(|(id, _)| *id == conn);
                    if let Some((_, c)) = still {
                        c.deadline_ms = None;
                        self.call(shard, |g, io| g.timer(io, conn));
                        self.settle();
                    }
                }
                self.call(shard, |g, io| g.tick(io));
                self.settle();
            }
        }
    }

    /// The runtime stops: every shard's gateway is told.
    pub fn stop(&mut self) {
        for shard in 0..self.shards.len() {
            self.call(shard, |g, io| g.stop(io));
            self.settle();
        }
    }

    /// Holds (or releases) messages and handoffs to `shard`, as if it were
    /// busy: they wait in its inbox, which still bounds them.
    pub fn hold(&mut self, shard: usize, held: bool) {
        self.world.held[shard] = held;
        self.settle();
    }

    /// Connections the shard runtime still holds for the gateway.
    pub fn open_conns(&self, shard: usize) -> usize {
        self.shards[shard].conns.len()
    }

    pub fn gateway(&self, shard: usize) -> &Gateway {
        &self.shards[shard].gateway
    }

    pub fn listener_closed(&self, shard: usize, listener: usize) -> bool {
        self.shards[shard].closed_listeners.contains(&listener)
    }

    /// The gateway's books agree with the runtime's: every device the home
    /// part lists is a connection the shard holds, sessions count them,
    /// and nothing is kept for connections that are gone.
    pub fn check_invariants(&self) {
        for (i, shard) in self.shards.iter().enumerate() {
            let g = &shard.gateway;
            let mut devices = Vec::new();
            g.home.devices_from(0, usize::MAX, usize::MAX, &mut devices);
            for conn in &devices {
                let held = shard
                    .conns
                    .get(&(conn.index() as u32))
                    .is_some_and(|(id, _)| id == conn);
                assert!(held, "shard {i}: ghost device {conn:?}");
                assert!(
                    g.sessions.user(*conn).is_some(),
                    "shard {i}: device without slot"
                );
            }
            let status = g.home.status();
            assert_eq!(status.devices_online as usize, devices.len(), "shard {i}");
            assert_eq!(g.sessions.len(), devices.len(), "shard {i}: sessions count");
            let parts = devices.len() + g.handshakes.len() + g.publishers.len() + g.admins.len();
            assert_eq!(
                parts,
                shard.conns.len(),
                "shard {i}: the gateway's parts hold {parts} connections, the runtime {}",
                shard.conns.len()
            );
        }
    }

    /// Counts of the gateway's deferred work, for leak checks.
    pub fn pending(&self) -> HashMap<&'static str, usize> {
        let mut out = HashMap::new();
        for shard in &self.shards {
            let g = &shard.gateway;
            *out.entry("tickets").or_default() += g.tickets.len();
            *out.entry("handshakes").or_default() += g.handshakes.len();
        }
        out
    }
}
