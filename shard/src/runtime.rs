//! Starting and stopping the shards: listeners are opened first (so "port
//! in use" is reported before any thread starts), then one pinned thread per
//! shard builds its ring; the rings' fds are exchanged so shards can hand
//! connections to each other; then every shard runs its loop.

use crate::buf_ring::BufRing;
use crate::config::RuntimeConfig;
use crate::event_loop::Shard;
use crate::listen::{self, ListenerSpec};
use crate::mesh::{Envelope, Injector, Mesh, Peer, Waker};
use crate::reactor::Reactor;
use crate::ring::{self, Ring};
use crate::stats::ShardStats;
use crate::takeover::{AcceptGate, InheritedListener, ListenerCopies, ListenerCopy};
use crate::App;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// A start-up failure, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Listen(String),
    #[error("shard {shard}: {message}")]
    Shard { shard: usize, message: String },
}

/// Stops a running runtime from any thread (e.g. a signal handler thread).
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
}

impl Stopper {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for w in &self.wakers {
            w.wake();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// One [`Injector`] per shard, indexed by shard.
pub type Injectors<M> = Vec<Injector<M>>;

pub struct Runtime {
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    stopper: Stopper,
    tcp_addrs: Vec<Option<SocketAddr>>,
    stats: Vec<Arc<ShardStats>>,
    fixed_table_size: u32,
    gate: AcceptGate,
    copies: ListenerCopies,
}

/// Listening sockets by shard (with their listener index), and each
/// listener's bound TCP address.
struct OpenListeners {
    per_shard: Vec<Vec<(usize, OwnedFd)>>,
    tcp_addrs: Vec<Option<SocketAddr>>,
}

impl OpenListeners {
    /// Duplicates of every socket, listener by listener, shard by shard.
    fn copies(&self) -> Result<Vec<ListenerCopy>, StartError> {
        let mut copies = Vec::new();
        for (shard, fds) in self.per_shard.iter().enumerate() {
            for (listener, fd) in fds {
                let fd = fd
                    .try_clone()
                    .map_err(|e| StartError::Listen(format!("duplicating a listener: {e}")))?;
                copies.push(ListenerCopy {
                    listener: *listener,
                    shard,
                    fd,
                });
            }
        }
        copies.sort_by_key(|c| (c.listener, c.shard));
        Ok(copies)
    }
}

/// Deals listener `index`'s inherited sockets over the shards (checked
/// against the spec: a successor must listen where its predecessor did):
/// TCP sockets round-robin, each Unix socket to the shard its path names
/// (modulo the shard count, so a successor with fewer shards still answers
/// on every path). Where a shard has no TCP socket, or a shard's Unix path
/// was not inherited, a socket of its own is opened: a TCP one joins the
/// inherited sockets' SO_REUSEPORT group.
fn adopt_listener(
    index: usize,
    spec: &ListenerSpec,
    inherited: Vec<OwnedFd>,
    per_shard: &mut [Vec<(usize, OwnedFd)>],
) -> Result<Option<SocketAddr>, StartError> {
    let shards = per_shard.len();
    match spec {
        ListenerSpec::Tcp {
            addr,
            backlog,
            options,
        } => {
            let mut bound = *addr;
            let mut served = vec![false; shards];
            for (k, fd) in inherited.into_iter().enumerate() {
                bound = listen::local_addr(fd.as_raw_fd()).map_err(|e| {
                    StartError::Listen(format!("inherited listener {index} is not TCP: {e}"))
                })?;
                if addr.port() != 0 && bound != *addr {
                    return Err(StartError::Listen(format!(
                        "the running process listens on {bound} where this configuration \
                         says {addr}: a take-over keeps the listeners; change the address \
                         with a restart instead"
                    )));
                }
                served[k % shards] = true;
                per_shard[k % shards].push((index, fd));
            }
            for shard in (0..shards).filter(|&s| !served[s]) {
                let fd = listen::open_tcp(bound, *backlog, options)
                    .map_err(|e| StartError::Listen(explain_listen(&e, &bound.to_string())))?;
                per_shard[shard].push((index, fd));
            }
            Ok(Some(bound))
        }
        ListenerSpec::Unix {
            path_template,
            mode,
            backlog,
        } => {
            let mut served = vec![false; shards];
            for fd in inherited {
                let bound = listen::unix_path(fd.as_raw_fd()).map_err(|e| {
                    StartError::Listen(format!("inherited listener {index} is not Unix: {e}"))
                })?;
                let number =
                    ListenerSpec::unix_shard_of(path_template, &bound).ok_or_else(|| {
                        StartError::Listen(format!(
                            "the running process listens on {} where this configuration says {}: \
                         a take-over keeps the listeners",
                            bound.display(),
                            path_template.display()
                        ))
                    })?;
                if number < shards {
                    served[number] = true;
                }
                per_shard[number % shards].push((index, fd));
            }
            for shard in (0..shards).filter(|&s| !served[s]) {
                let path = ListenerSpec::unix_path(path_template, shard);
                let fd = listen::open_unix(&path, *mode, *backlog).map_err(|e| {
                    StartError::Listen(explain_listen(&e, &path.display().to_string()))
                })?;
                per_shard[shard].push((index, fd));
            }
            Ok(None)
        }
    }
}

fn open_listeners(
    cfg: &RuntimeConfig,
    mut inherited: Vec<InheritedListener>,
) -> Result<OpenListeners, StartError> {
    let mut per_shard: Vec<Vec<(usize, OwnedFd)>> = (0..cfg.shards).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for (index, spec) in cfg.listeners.iter().enumerate() {
        let mine: Vec<OwnedFd> = extract(&mut inherited, index);
        if !mine.is_empty() {
            addrs.push(adopt_listener(index, spec, mine, &mut per_shard)?);
            continue;
        }
        match spec {
            ListenerSpec::Tcp {
                addr,
                backlog,
                options,
            } => {
                let mut bound = *addr;
                for fds in per_shard.iter_mut() {
                    let fd = listen::open_tcp(bound, *backlog, options)
                        .map_err(|e| StartError::Listen(explain_listen(&e, &bound.to_string())))?;
                    if bound.port() == 0 {
                        bound = listen::local_addr(fd.as_raw_fd())
                            .map_err(|e| StartError::Listen(format!("listen on {addr}: {e}")))?;
                    }
                    fds.push((index, fd));
                }
                addrs.push(Some(bound));
            }
            ListenerSpec::Unix {
                path_template,
                mode,
                backlog,
            } => {
                for (shard, fds) in per_shard.iter_mut().enumerate() {
                    let path = ListenerSpec::unix_path(path_template, shard);
                    let fd = listen::open_unix(&path, *mode, *backlog).map_err(|e| {
                        StartError::Listen(explain_listen(&e, &path.display().to_string()))
                    })?;
                    fds.push((index, fd));
                }
                addrs.push(None);
            }
        }
    }
    if !inherited.is_empty() {
        tracing::warn!(
            sockets = inherited.len(),
            "inherited listeners this configuration does not have are closed \
             (connections waiting on them are reset)"
        );
    }
    Ok(OpenListeners {
        per_shard,
        tcp_addrs: addrs,
    })
}

/// Takes the inherited sockets of listener `index`, in order.
fn extract(inherited: &mut Vec<InheritedListener>, index: usize) -> Vec<OwnedFd> {
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(inherited)
        .into_iter()
        .partition(|l| l.listener == index);
    *inherited = rest;
    mine.into_iter().map(|l| l.fd).collect()
}

fn explain_listen(e: &std::io::Error, what: &str) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => format!(
            "cannot listen on {what}: the address is in use by another program \
             (find it with `ss -ltnp`), or choose another address with --listen"
        ),
        Some(libc::EACCES) => format!(
            "cannot listen on {what}: permission denied (ports below 1024 need root or \
             CAP_NET_BIND_SERVICE; a Unix socket needs a writable directory)"
        ),
        Some(libc::EADDRNOTAVAIL) => {
            format!("cannot listen on {what}: no interface on this host has that address")
        }
        _ => format!("cannot listen on {what}: {e}"),
    }
}

impl Runtime {
    /// Starts `cfg.shards` shards; `make_app(shard_id)` runs on each shard's
    /// thread. Returns when every shard is ready (or the first failure).
    pub fn start<A, F>(cfg: RuntimeConfig, make_app: F) -> Result<Runtime, StartError>
    where
        A: App + 'static,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        Runtime::start_inheriting(cfg, Vec::new(), make_app).map(|(runtime, _)| runtime)
    }

    /// Like `start`, but listens on `inherited` sockets (a predecessor's,
    /// see [`InheritedListener`]) instead of opening new ones where given,
    /// and returns one [`Injector`] per shard (indexed by shard) for a
    /// thread outside the shards to send them messages.
    pub fn start_inheriting<A, F>(
        cfg: RuntimeConfig,
        inherited: Vec<InheritedListener>,
        make_app: F,
    ) -> Result<(Runtime, Injectors<A::Msg>), StartError>
    where
        A: App + 'static,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        cfg.validate().map_err(StartError::Config)?;
        let fixed_table_size = fixed_table_size(&cfg);
        let listeners = open_listeners(&cfg, inherited)?;
        let copies = ListenerCopies::new(listeners.copies()?);
        let channels = Channels::<A::Msg>::new(cfg.shards, cfg.mesh_queue_len)?;
        let stats: Vec<Arc<ShardStats>> = (0..cfg.shards).map(|_| Arc::default()).collect();
        let stopper = Stopper {
            stop: Arc::new(AtomicBool::new(false)),
            wakers: channels.wakers.clone(),
        };
        let gate = AcceptGate::new(channels.wakers.clone());
        let mut cfg = cfg;
        // Reserved, not touched: pages are faulted in only as slots are used.
        cfg.connections_reserved = fixed_table_size as usize;
        let injectors = channels
            .txs
            .iter()
            .zip(&channels.wakers)
            .map(|(tx, waker)| Injector::new(tx.clone(), waker.clone()))
            .collect();
        let common = Arc::new(SeedCommon {
            cfg: Arc::new(cfg),
            fixed_table_size,
            make_app,
            stopper: stopper.clone(),
            all_stats: stats.clone().into(),
            txs: channels.txs,
            wakers: channels.wakers,
            clock_base: Instant::now(),
            gate: gate.clone(),
        });

        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let started = spawn_shards(&common, &stats, listeners.per_shard, channels.rxs, ready_tx)?;
        match collect_ring_fds(&ready_rx, common.cfg.shards) {
            Ok(ring_fds) => started.exchange_peers(&ring_fds),
            Err(err) => {
                started.abandon();
                return Err(err);
            }
        }
        let runtime = Runtime {
            threads: started.threads,
            stopper,
            tcp_addrs: listeners.tcp_addrs,
            stats,
            fixed_table_size,
            gate,
            copies,
        };
        Ok((runtime, injectors))
    }

    /// Pauses and resumes accepting on every shard (a live upgrade).
    pub fn accept_gate(&self) -> AcceptGate {
        self.gate.clone()
    }

    /// Duplicates of every listening socket, for a successor.
    pub fn listener_copies(&self) -> ListenerCopies {
        self.copies.clone()
    }

    /// The bound address of TCP listener number `listener` (port resolved).
    pub fn tcp_addr(&self, listener: usize) -> Option<SocketAddr> {
        self.tcp_addrs.get(listener).copied().flatten()
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    pub fn stats(&self) -> &[Arc<ShardStats>] {
        &self.stats
    }

    /// Connections one shard can hold (the fixed-file table size).
    pub fn connections_per_shard_max(&self) -> u32 {
        self.fixed_table_size
    }

    /// Waits for every shard to finish (after `stop`, or a fatal error).
    pub fn join(self) -> Result<(), String> {
        let mut first_err = None;
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(format!("shard {i}: {e}"));
                }
                Err(_) => {
                    first_err.get_or_insert(format!("shard {i} panicked"));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Each shard's fixed-file table size: `connections_per_shard_max`, capped
/// by the open-file limit (with a warning saying how to raise it).
fn fixed_table_size(cfg: &RuntimeConfig) -> u32 {
    let nofile = ring::rlimit(libc::RLIMIT_NOFILE).0;
    let size = (cfg.connections_per_shard_max as u64).min(nofile).max(1) as u32;
    if size < cfg.connections_per_shard_max {
        tracing::warn!(
            requested = cfg.connections_per_shard_max,
            open_file_limit = nofile,
            "each shard holds at most {size} connections: a ring's fixed-file \
             table cannot exceed the open-file limit (raise `ulimit -n` / LimitNOFILE)"
        );
    }
    size
}

/// The mesh's parts before they are dealt out: per shard a bounded inbox
/// channel and an eventfd waker.
struct Channels<M> {
    txs: Vec<flume::Sender<Envelope<M>>>,
    rxs: Vec<flume::Receiver<Envelope<M>>>,
    wakers: Vec<Arc<Waker>>,
}

impl<M> Channels<M> {
    fn new(shards: usize, queue_len: usize) -> Result<Channels<M>, StartError> {
        let wakers = (0..shards)
            .map(|_| Waker::new().map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(|e| StartError::Config(format!("eventfd: {e}")))?;
        let (txs, rxs) = (0..shards).map(|_| flume::bounded(queue_len)).unzip();
        Ok(Channels { txs, rxs, wakers })
    }
}

/// What every shard thread shares.
struct SeedCommon<M, F> {
    cfg: Arc<RuntimeConfig>,
    fixed_table_size: u32,
    make_app: F,
    /// A shard whose loop fails stops them all.
    stopper: Stopper,
    all_stats: Arc<[Arc<ShardStats>]>,
    /// Every shard's inbox sender and waker, indexed by shard.
    txs: Vec<flume::Sender<Envelope<M>>>,
    wakers: Vec<Arc<Waker>>,
    /// The start of the clock every shard reads (`Ctx::now_ms`).
    clock_base: Instant,
    gate: AcceptGate,
}

/// A shard's ring fd (or why it could not be built), reported at start-up.
type Ready = (usize, Result<i32, String>);

/// Everything one shard thread starts from.
struct ShardSeed<M, F> {
    shard_id: usize,
    common: Arc<SeedCommon<M, F>>,
    stats: Arc<ShardStats>,
    inbox: flume::Receiver<Envelope<M>>,
    listeners: Vec<(usize, OwnedFd)>,
    core: Option<core_affinity::CoreId>,
    ready_tx: std::sync::mpsc::Sender<Ready>,
    /// Every shard's ring fd once all are built; `None`: start-up failed.
    peers_rx: flume::Receiver<Option<Vec<i32>>>,
}

/// The shard threads spawned so far, and the way to tell each the peers.
struct Started {
    peer_txs: Vec<flume::Sender<Option<Vec<i32>>>>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Started {
    /// Tells every shard the others' ring fds: they start their loops.
    fn exchange_peers(&self, ring_fds: &[i32]) {
        for tx in &self.peer_txs {
            let _ = tx.send(Some(ring_fds.to_vec()));
        }
    }

    /// Start-up failed: tells every shard to exit without running, and
    /// waits for them.
    fn abandon(self) {
        for tx in &self.peer_txs {
            let _ = tx.send(None);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Spawns one thread per shard, pinned round-robin to the cores when
/// `pin_threads`. On a failure, the threads already spawned are told to
/// exit and joined.
fn spawn_shards<A, F>(
    common: &Arc<SeedCommon<A::Msg, F>>,
    stats: &[Arc<ShardStats>],
    listeners: Vec<Vec<(usize, OwnedFd)>>,
    inboxes: Vec<flume::Receiver<Envelope<A::Msg>>>,
    ready_tx: std::sync::mpsc::Sender<Ready>,
) -> Result<Started, StartError>
where
    A: App + 'static,
    F: Fn(usize) -> A + Send + Sync + 'static,
{
    let cores = if common.cfg.pin_threads {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut started = Started {
        peer_txs: Vec::new(),
        threads: Vec::new(),
    };
    for ((shard_id, listeners), inbox) in listeners.into_iter().enumerate().zip(inboxes) {
        let (peers_tx, peers_rx) = flume::bounded(1);
        let seed = ShardSeed {
            shard_id,
            common: common.clone(),
            stats: stats[shard_id].clone(),
            inbox,
            listeners,
            core: cores.get(shard_id % cores.len().max(1)).copied(),
            ready_tx: ready_tx.clone(),
            peers_rx,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("shard-{shard_id}"))
            .spawn(move || seed.run());
        match spawned {
            Ok(handle) => {
                started.peer_txs.push(peers_tx);
                started.threads.push(handle);
            }
            Err(e) => {
                started.abandon();
                return Err(StartError::Shard {
                    shard: shard_id,
                    message: format!("spawn: {e}"),
                });
            }
        }
    }
    Ok(started)
}

/// Waits for every shard to report its ring fd; the first failure wins.
fn collect_ring_fds(
    ready_rx: &std::sync::mpsc::Receiver<Ready>,
    shards: usize,
) -> Result<Vec<i32>, StartError> {
    let mut ring_fds = vec![-1; shards];
    let mut failure = None;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok((shard, Ok(fd))) => ring_fds[shard] = fd,
            Ok((shard, Err(message))) => {
                failure.get_or_insert(StartError::Shard { shard, message });
            }
            Err(_) => {
                failure.get_or_insert(StartError::Shard {
                    shard: 0,
                    message: "a shard thread died during start-up".into(),
                });
                break;
            }
        }
    }
    failure.map_or(Ok(ring_fds), Err)
}

impl<A, F> ShardSeed<A::Msg, F>
where
    A: App + 'static,
    F: Fn(usize) -> A + Send + Sync + 'static,
{
    /// The shard thread: pins itself, builds its ring, reports the ring's
    /// fd, waits for the other shards' fds, then runs its loop. A loop that
    /// fails stops every shard.
    fn run(self) -> std::io::Result<()> {
        let shard_id = self.shard_id;
        if let Some(core) = self.core {
            if !core_affinity::set_for_current(core) {
                tracing::warn!(shard_id, "could not pin to core {}", core.id);
            }
        }
        let common = self.common;
        let (uring, bufs) = match build_shard_parts(&common.cfg, common.fixed_table_size) {
            Ok(parts) => parts,
            Err(message) => {
                let _ = self.ready_tx.send((shard_id, Err(message)));
                return Ok(());
            }
        };
        let ring = Ring::new(uring);
        let _ = self.ready_tx.send((shard_id, Ok(ring.fd())));
        let Ok(Some(ring_fds)) = self.peers_rx.recv() else {
            return Ok(());
        };
        let peers = common
            .txs
            .iter()
            .zip(&common.wakers)
            .zip(ring_fds)
            .map(|((tx, waker), ring_fd)| Peer {
                tx: tx.clone(),
                waker: waker.clone(),
                ring_fd,
            })
            .collect();
        let mesh = Mesh {
            peers,
            inbox: self.inbox,
            waker: common.wakers[shard_id].clone(),
        };
        let group = bufs.group_id;
        let reactor = Reactor::new(
            ring,
            mesh,
            shard_id,
            common.cfg.clone(),
            self.stats,
            common.all_stats.clone(),
            self.listeners,
            group,
            common.clock_base,
            common.gate.clone(),
        );
        let app = (common.make_app)(shard_id);
        let result = Shard::new(reactor, bufs, app, common.stopper.stop.clone()).run();
        if let Err(e) = &result {
            tracing::error!(shard_id, "shard loop failed: {e}; stopping all shards");
            common.stopper.stop();
        }
        result
    }
}

fn build_shard_parts(
    cfg: &RuntimeConfig,
    fixed_table_size: u32,
) -> Result<(io_uring::IoUring, BufRing), String> {
    let (sq, cq) = (cfg.ring_sq_entries, cfg.ring_cq_entries);
    let uring = ring::build(sq, cq).map_err(|e| ring::explain(&e, "io_uring set-up", sq, cq))?;
    uring
        .submitter()
        .register_files_sparse(fixed_table_size)
        .map_err(|e| ring::explain(&e, "registering the fixed-file table", sq, cq))?;
    let bufs = BufRing::new(&uring, 0, cfg.recv_buffer_count, cfg.recv_buffer_bytes)
        .map_err(|e| ring::explain(&e, "registering the provided-buffer ring", sq, cq))?;
    Ok((uring, bufs))
}
