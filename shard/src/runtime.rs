//! Starting and stopping the shards: listeners are opened first (so "port
//! in use" is reported before any thread starts), then one pinned thread per
//! shard builds its ring; the rings' fds are exchanged so shards can hand
//! connections to each other; then every shard runs its loop.

use crate::buf_ring::BufRing;
use crate::event_loop::Shard;
use crate::listen::{self, ListenerSpec};
use crate::mesh::{Mesh, Peer, Waker};
use crate::reactor::Reactor;
use crate::ring::{self, Ring};
use crate::stats::ShardStats;
use crate::App;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Everything the runtime needs to know; the gateway derives it from its config.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub shards: usize,
    pub ring_sq_entries: u32,
    pub ring_cq_entries: u32,
    /// Size of each ring's fixed-file table: the most connections a shard
    /// holds. Capped by the open-file limit (the kernel's rule per ring).
    pub connections_per_shard_max: u32,
    pub recv_buffer_bytes: u32,
    /// Buffers in each shard's provided-buffer ring (power of two ≤ 32768).
    pub recv_buffer_count: u16,
    pub send_queue_bytes_max: usize,
    /// Capacity of each shard's inbox channel.
    pub mesh_queue_len: usize,
    pub timer_tick_ms: u64,
    pub timer_buckets: usize,
    /// How long a closing connection may take to flush and see the peer close.
    pub close_linger_ms: u64,
    /// After a stop, how long connections have to close before being aborted.
    pub stop_grace_ms: u64,
    pub pin_threads: bool,
    pub listeners: Vec<ListenerSpec>,
    /// Set by the runtime: connection-table capacity reserved per shard.
    #[doc(hidden)]
    pub connections_reserved: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ring_sq_entries: 1024,
            ring_cq_entries: 16384,
            connections_per_shard_max: 200_000,
            recv_buffer_bytes: 4096,
            recv_buffer_count: 2048,
            send_queue_bytes_max: 256 * 1024,
            mesh_queue_len: 65536,
            timer_tick_ms: 100,
            timer_buckets: 1024,
            close_linger_ms: 2000,
            stop_grace_ms: 5000,
            pin_threads: true,
            listeners: Vec::new(),
            connections_reserved: 0,
        }
    }
}

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

pub struct Runtime {
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    stopper: Stopper,
    tcp_addrs: Vec<Option<SocketAddr>>,
    stats: Vec<Arc<ShardStats>>,
    fixed_table_size: u32,
}

fn validate(cfg: &RuntimeConfig) -> Result<(), StartError> {
    let bad = |m: String| Err(StartError::Config(m));
    if cfg.shards == 0 || cfg.shards > 4096 {
        return bad(format!("shards must be 1..=4096, not {}", cfg.shards));
    }
    if !cfg.recv_buffer_count.is_power_of_two() || cfg.recv_buffer_count > 32768 {
        return bad(format!(
            "recv_buffer_count must be a power of two ≤ 32768, not {}",
            cfg.recv_buffer_count
        ));
    }
    if cfg.recv_buffer_bytes == 0 || cfg.timer_tick_ms == 0 || cfg.timer_buckets < 2 {
        return bad("recv_buffer_bytes, timer_tick_ms must be > 0 and timer_buckets ≥ 2".into());
    }
    if cfg.listeners.len() >= u8::MAX as usize {
        return bad("at most 254 listeners".into());
    }
    Ok(())
}

/// Listening sockets by shard, and each listener's bound TCP address.
struct OpenListeners {
    per_shard: Vec<Vec<OwnedFd>>,
    tcp_addrs: Vec<Option<SocketAddr>>,
}

fn open_listeners(cfg: &RuntimeConfig) -> Result<OpenListeners, StartError> {
    let mut per_shard: Vec<Vec<OwnedFd>> = (0..cfg.shards).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for spec in &cfg.listeners {
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
                    fds.push(fd);
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
                    fds.push(fd);
                }
                addrs.push(None);
            }
        }
    }
    Ok(OpenListeners {
        per_shard,
        tcp_addrs: addrs,
    })
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
        validate(&cfg)?;
        let nofile = ring::rlimit(libc::RLIMIT_NOFILE).0;
        let fixed_table_size = (cfg.connections_per_shard_max as u64).min(nofile).max(1) as u32;
        if fixed_table_size < cfg.connections_per_shard_max {
            tracing::warn!(
                requested = cfg.connections_per_shard_max,
                open_file_limit = nofile,
                "each shard holds at most {fixed_table_size} connections: a ring's fixed-file \
                 table cannot exceed the open-file limit (raise `ulimit -n` / LimitNOFILE)"
            );
        }
        let OpenListeners {
            per_shard: mut listener_fds,
            tcp_addrs,
        } = open_listeners(&cfg)?;

        let shards = cfg.shards;
        let wakers: Vec<Arc<Waker>> = (0..shards)
            .map(|_| Waker::new().map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(|e| StartError::Config(format!("eventfd: {e}")))?;
        let channels: Vec<_> = (0..shards)
            .map(|_| flume::bounded(cfg.mesh_queue_len))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stats: Vec<Arc<ShardStats>> = (0..shards).map(|_| Arc::default()).collect();
        let mut cfg = cfg;
        // Reserved, not touched: pages are faulted in only as slots are used.
        cfg.connections_reserved = fixed_table_size as usize;
        let cfg = Arc::new(cfg);
        let make_app = Arc::new(make_app);
        let clock_base = Instant::now();
        let cores = if cfg.pin_threads {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };

        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, Result<i32, String>)>();
        let mut peer_txs = Vec::new();
        let mut threads = Vec::new();
        for (shard_id, listeners) in listener_fds.drain(..).enumerate() {
            let (peers_tx, peers_rx) = flume::bounded::<Option<Vec<i32>>>(1);
            peer_txs.push(peers_tx);
            let cfg = cfg.clone();
            let make_app = make_app.clone();
            let ready_tx = ready_tx.clone();
            let stop = stop.clone();
            let all_stats: Arc<[Arc<ShardStats>]> = stats.clone().into();
            let stats = stats[shard_id].clone();
            let inbox = channels[shard_id].1.clone();
            let txs: Vec<_> = channels.iter().map(|(tx, _)| tx.clone()).collect();
            let wakers = wakers.clone();
            let core = cores.get(shard_id % cores.len().max(1)).copied();
            let spawned = std::thread::Builder::new()
                .name(format!("shard-{shard_id}"))
                .spawn(move || -> std::io::Result<()> {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            tracing::warn!(shard_id, "could not pin to core {}", core.id);
                        }
                    }
                    let built = build_shard_parts(&cfg, fixed_table_size);
                    let (uring, bufs) = match built {
                        Ok(parts) => parts,
                        Err(message) => {
                            let _ = ready_tx.send((shard_id, Err(message)));
                            return Ok(());
                        }
                    };
                    let ring = Ring::new(uring);
                    let _ = ready_tx.send((shard_id, Ok(ring.fd())));
                    let Ok(Some(ring_fds)) = peers_rx.recv() else {
                        return Ok(());
                    };
                    let peers = txs
                        .into_iter()
                        .zip(wakers.iter().cloned())
                        .zip(ring_fds)
                        .map(|((tx, waker), ring_fd)| Peer { tx, waker, ring_fd })
                        .collect();
                    let mesh = Mesh {
                        peers,
                        inbox,
                        waker: wakers[shard_id].clone(),
                    };
                    let group = bufs.group_id;
                    let reactor = Reactor::new(
                        ring, mesh, shard_id, cfg, stats, all_stats, listeners, group, clock_base,
                    );
                    let app = make_app(shard_id);
                    let result = Shard::new(reactor, bufs, app, stop.clone()).run();
                    if let Err(e) = &result {
                        tracing::error!(shard_id, "shard loop failed: {e}; stopping all shards");
                        stop.store(true, Ordering::Release);
                        for w in &wakers {
                            w.wake();
                        }
                    }
                    result
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    return Err(StartError::Shard {
                        shard: shard_id,
                        message: format!("spawn: {e}"),
                    })
                }
            }
        }
        drop(ready_tx);

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
        if let Some(err) = failure {
            for tx in &peer_txs {
                let _ = tx.send(None);
            }
            for t in threads {
                let _ = t.join();
            }
            return Err(err);
        }
        for tx in &peer_txs {
            let _ = tx.send(Some(ring_fds.clone()));
        }
        Ok(Runtime {
            threads,
            stopper: Stopper { stop, wakers },
            tcp_addrs,
            stats,
            fixed_table_size,
        })
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
