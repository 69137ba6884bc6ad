//! `pushgate serve`: loads the secret, starts the shards with the gateway
//! app, and supervises them: host readings (RSS, kernel socket memory)
//! every second, SIGTERM → drip drain then exit, SIGINT → stop now.

use crate::auth::Secret;
use crate::config::{Config, KeepaliveProfile};
use crate::control::Control;
use crate::gateway::{Gateway, GatewayShared, GatewayStats, OverloadLimits};
use crate::liveness::Liveness;
use crate::ws::handshake::HandshakeLimits;
use crate::ws::reader::ReaderLimits;
use shard::{ListenerSpec, Runtime, RuntimeConfig, SocketOption};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A start-up or run failure, worded to tell the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Secret(String),
    #[error("{0}")]
    Start(#[from] shard::StartError),
    #[error("{0}")]
    Signals(String),
    #[error("a shard failed: {0}")]
    Shard(String),
}

/// Listen backlog: the kernel caps it at net.core.somaxconn; a deep queue
/// absorbs reconnect storms instead of dropping SYNs (see kernel-tuning/).
const LISTEN_BACKLOG: i32 = 65535;
/// The demo page served at `GET /` (web/demo.html, built in).
const DEMO_PAGE: &[u8] = include_bytes!("../web/demo.html");
/// How often the main thread reads RSS and /proc/net/sockstat.
const SUPERVISE_INTERVAL_MS: u64 = 250;

fn int_option(level: i32, name: i32, value: u32) -> SocketOption {
    SocketOption {
        level,
        name,
        value: value.min(i32::MAX as u32) as i32,
    }
}

/// Options set on a client listener; accepted sockets inherit them (a
/// direct descriptor cannot be given options after accept).
fn client_socket_options(config: &Config, profile: KeepaliveProfile) -> Vec<SocketOption> {
    // Notifications are small and must leave at once: without TCP_NODELAY,
    // Nagle holds a push behind the previous one's delayed ACK (~40 ms).
    // Accepted sockets inherit it from the listener.
    let mut options = vec![int_option(libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)];
    if config.socket_send_buffer_bytes > 0 {
        options.push(int_option(
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            config.socket_send_buffer_bytes,
        ));
    }
    if profile == KeepaliveProfile::SleepingConsole {
        // The kernel probes a silent peer without waking its application;
        // TCP_USER_TIMEOUT bounds how long sent data may go unacknowledged.
        options.extend([
            int_option(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
            int_option(
                libc::IPPROTO_TCP,
                libc::TCP_KEEPIDLE,
                config.tcp_keepalive_idle_s,
            ),
            int_option(
                libc::IPPROTO_TCP,
                libc::TCP_KEEPINTVL,
                config.tcp_keepalive_interval_s,
            ),
            int_option(
                libc::IPPROTO_TCP,
                libc::TCP_KEEPCNT,
                config.tcp_keepalive_count,
            ),
            int_option(
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                config.tcp_user_timeout_ms,
            ),
        ]);
    }
    options
}

pub fn runtime_config(config: &Config) -> RuntimeConfig {
    let tcp = |addr, profile| ListenerSpec::Tcp {
        addr,
        backlog: LISTEN_BACKLOG,
        options: client_socket_options(config, profile),
    };
    // Order matters: gateway::{CLIENT, PUSH, ADMIN, CONSOLE}_LISTENER.
    let mut listeners = vec![
        tcp(config.listen, config.listen_profile),
        ListenerSpec::Unix {
            path_template: config.run_dir.join("shard-{shard}.sock"),
            mode: 0o660,
            backlog: 1024,
        },
        ListenerSpec::Tcp {
            addr: config.admin_listen,
            backlog: 1024,
            options: Vec::new(),
        },
    ];
    if let Some(addr) = config.console_listen {
        listeners.push(tcp(addr, config.console_listen_profile));
    }
    RuntimeConfig {
        shards: config.shards,
        ring_sq_entries: config.ring_sq_entries,
        ring_cq_entries: config.ring_cq_entries,
        connections_per_shard_max: config.connections_per_shard_max,
        recv_buffer_bytes: config.recv_buffer_bytes,
        recv_buffer_count: config.recv_buffer_count,
        send_queue_bytes_max: config.send_queue_bytes_max,
        listeners,
        ..RuntimeConfig::default()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn gateway_shared(config: &Config, secret: Secret, control: Arc<Control>) -> GatewayShared {
    let start_unix_ms = unix_ms();
    let profile_liveness = |profile| match profile {
        KeepaliveProfile::Browser => Liveness {
            ping_interval_ms: config.ping_interval_ms,
            idle_timeout_ms: config.idle_timeout_ms,
        },
        KeepaliveProfile::SleepingConsole => Liveness {
            ping_interval_ms: 0,
            idle_timeout_ms: config.console_idle_timeout_ms,
        },
    };
    let is_console = |p| p == KeepaliveProfile::SleepingConsole;
    let connections_max = if config.connections_max == 0 {
        u64::MAX
    } else {
        config.connections_max
    };
    GatewayShared {
        secret,
        handshake_limits: HandshakeLimits {
            header_bytes_max: config.header_bytes_max,
            ..HandshakeLimits::default()
        },
        reader_limits: ReaderLimits {
            frame_payload_bytes_max: config.frame_payload_bytes_max,
            message_bytes_max: config.message_bytes_max,
        },
        // Both client listeners can use either profile; a listener's
        // profile decides its connections' liveness (see gateway::liveness).
        liveness: profile_liveness(KeepaliveProfile::Browser),
        console_liveness: profile_liveness(KeepaliveProfile::SleepingConsole),
        console_listeners: vec![
            is_console(config.listen_profile),
            false,
            false,
            is_console(config.console_listen_profile),
        ],
        handshake_timeout_ms: config.handshake_timeout_ms,
        mailbox_retention_ms: config.mailbox_retention_ms,
        mailbox_entries_max: config.mailbox_entries_max,
        push_frame_bytes_max: config.push_frame_bytes_max,
        limits: OverloadLimits {
            connections_per_shard_max: connections_max.div_ceil(config.shards as u64),
            handshakes_max: config.handshakes_max as usize,
            accepts_per_shard_per_s: config.accept_rate_per_s as f64 / config.shards as f64,
        },
        drain_rate_per_s: config.drain_rate_per_s,
        control,
        site: crate::upgrade::Site {
            page: DEMO_PAGE,
            dev_tokens: config.dev,
        },
        stats: (0..config.shards)
            .map(|_| GatewayStats::default())
            .collect(),
        epoch: start_unix_ms,
        clock_unix_base_ms: start_unix_ms,
    }
}

/// Starts the gateway; returns its runtime and the shared control.
pub fn start(config: &Config, secret: Secret) -> Result<(Runtime, Arc<Control>), ServeError> {
    let control = Arc::new(Control::default());
    let shared = Arc::new(gateway_shared(config, secret, control.clone()));
    let runtime = Runtime::start(runtime_config(config), move |shard| {
        Gateway::new(shared.clone(), shard)
    })?;
    Ok((runtime, control))
}

/// Host readings the shards should not take themselves.
fn read_host(control: &Control, high_water_bytes: u64) {
    let page = 4096;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss_pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
        {
            let rss = rss_pages * page;
            control.rss_bytes.store(rss, Ordering::Relaxed);
            // 5% hysteresis, so readiness does not flap at the mark.
            let overloaded = control.is_overloaded();
            control.set_overloaded(if overloaded {
                rss > high_water_bytes / 100 * 95
            } else {
                rss > high_water_bytes
            });
        }
    }
    if let Ok(sockstat) = std::fs::read_to_string("/proc/net/sockstat") {
        for line in sockstat.lines().filter(|l| l.starts_with("TCP:")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            for pair in words.windows(2) {
                let value = pair[1].parse().unwrap_or(0);
                match pair[0] {
                    "inuse" => control.tcp_sockets_inuse.store(value, Ordering::Relaxed),
                    "mem" => control.tcp_memory_pages.store(value, Ordering::Relaxed),
                    _ => {}
                }
            }
        }
    }
}

fn memory_high_water_bytes(config: &Config) -> u64 {
    if config.memory_high_water_bytes > 0 {
        return config.memory_high_water_bytes;
    }
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(u64::MAX / 2048);
    total_kib * 1024 / 10 * 9
}

/// Signals the supervisor acts on (set by the signal thread).
const SIGNAL_NONE: u8 = 0;
const SIGNAL_DRAIN: u8 = 1;
const SIGNAL_STOP: u8 = 2;

/// Runs until stopped: SIGINT closes every connection with 1001 and exits;
/// SIGTERM (or `pushgate drain`) drains at the configured rate and exits
/// when empty or at `drain_deadline_ms`. A second signal exits at once.
pub fn serve(config: Config) -> Result<(), ServeError> {
    let secret = Secret::load_or_create(&config.run_dir, config.secret_file.as_deref())
        .map_err(|e| ServeError::Secret(e.to_string()))?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| ServeError::Signals(format!("installing signal handlers: {e}")))?;
    let (runtime, control) = start(&config, secret)?;
    let high_water = memory_high_water_bytes(&config);
    control
        .memory_high_water_bytes
        .store(high_water, Ordering::Relaxed);
    let addr = runtime.tcp_addr(0).expect("the client listener");
    tracing::info!(
        %addr,
        admin = %runtime.tcp_addr(2).expect("the admin listener"),
        shards = config.shards,
        connections_per_shard_max = runtime.connections_per_shard_max(),
        run_dir = %config.run_dir.display(),
        "pushgate listening; clients connect to ws://{addr}/ws"
    );
    if config.dev {
        let console = runtime.tcp_addr(3);
        tracing::warn!(
            %addr,
            console = console.map(|c| c.to_string()),
            allow_remote = config.dev_allow_remote,
            "--dev: GET http://{addr}/dev/token mints a token for any user to whoever can reach {addr}{}; never use it in production",
            console.map(|c| format!(" (and {c})")).unwrap_or_default()
        );
    }
    if let Some(console) = runtime.tcp_addr(3) {
        tracing::info!(%console, "sleeping-console listener");
    }
    let received = Arc::new(AtomicU8::new(SIGNAL_NONE));
    let handle = signals.handle();
    let signal_thread = {
        let received = received.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if received.load(Ordering::Relaxed) != SIGNAL_NONE {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(1);
                }
                let what = if sig == signal_hook::consts::SIGTERM {
                    SIGNAL_DRAIN
                } else {
                    SIGNAL_STOP
                };
                received.store(what, Ordering::Relaxed);
            }
        })
    };
    let stopper = runtime.stopper();
    let mut drain_started: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(SUPERVISE_INTERVAL_MS));
        if stopper.is_stopped() {
            break; // a shard failed and stopped everything
        }
        read_host(&control, high_water);
        match received.swap(SIGNAL_NONE, Ordering::Relaxed) {
            SIGNAL_STOP => {
                tracing::info!("SIGINT: closing connections with 1001");
                stopper.stop();
                break;
            }
            SIGNAL_DRAIN => {
                tracing::info!(rate_per_s = config.drain_rate_per_s, "SIGTERM: draining");
                control.start_drain(config.drain_rate_per_s);
                received.store(SIGNAL_DRAIN, Ordering::Relaxed); // a second signal exits
            }
            _ => {}
        }
        if control.is_draining() {
            let started = *drain_started.get_or_insert_with(Instant::now);
            let all_empty = control.shards_drained() >= config.shards;
            let late = started.elapsed() >= Duration::from_millis(config.drain_deadline_ms);
            if all_empty || late {
                if late && !all_empty {
                    tracing::warn!("drain deadline reached with connections left; stopping");
                }
                tracing::info!(seconds = started.elapsed().as_secs_f64(), "drain complete");
                stopper.stop();
                break;
            }
        }
    }
    let result = runtime.join().map_err(ServeError::Shard);
    handle.close();
    let _ = signal_thread.join();
    tracing::info!("stopped");
    result
}
