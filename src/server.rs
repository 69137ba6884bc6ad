//! `pushgate serve`: loads the secret, starts the shards with the gateway
//! app, and supervises them: every 250 ms host readings (RSS, kernel socket
//! memory) and freed memory given back to the kernel ([`memory`]), SIGTERM
//! → drip drain then exit, SIGINT → stop now, and a panic on any thread →
//! log it and exit with `PANIC_EXIT_STATUS`.

use crate::auth::Secret;
use crate::config::{Config, KeepaliveProfile};
use crate::control::Control;
use crate::gateway::home::HomeSettings;
use crate::gateway::sessions::handshakes::UpgradeRules;
use crate::gateway::sessions::SessionSettings;
use crate::gateway::{Gateway, GatewayShared, GatewayStats, OverloadLimits};
use crate::liveness::Liveness;
use crate::takeover;
use crate::takeover::moves::Moves;
use crate::ws::handshake::HandshakeLimits;
use crate::ws::reader::ReaderLimits;
use shard::{App, InheritedListener, ListenerSpec, Runtime, RuntimeConfig, SocketOption};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod memory;

/// A start-up or run failure, worded to tell the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Secret(String),
    #[error("{0}")]
    Start(#[from] shard::StartError),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Signals(String),
    #[error("a shard failed: {0}")]
    Shard(String),
    /// This program's own path could not be read (a live upgrade restarts it).
    #[error("{0}")]
    Exe(String),
    /// `--takeover` could not take over (the running process keeps serving).
    #[error("{0}")]
    Takeover(String),
    /// Redis is configured and this host cannot join: a duplicate host_id
    /// or an unreadable password file (exit 2), or Redis unreachable (1).
    #[error("{0}")]
    Cluster(#[from] crate::cluster::StartError),
    /// `PUSHGATE_DEBUG_PANIC` names no fault (debug builds only).
    #[cfg(debug_assertions)]
    #[error("{0}")]
    DebugFault(String),
}

/// Exit status when a thread of a running server panicked: EX_SOFTWARE
/// ("internal software error", sysexits.h). Non-zero, so systemd's
/// `Restart=on-failure` restarts the server, and apart from 1 (a failure the
/// server reported) and 2 (bad configuration), so a crash is recognisable.
pub const PANIC_EXIT_STATUS: i32 = 70;

/// The demo page served at `GET /` (web/demo.html, built in).
const DEMO_PAGE: &[u8] = include_bytes!("../web/demo.html");
/// How often the main thread reads RSS and /proc/net/sockstat.
const SUPERVISE_INTERVAL_MS: u64 = 250;
/// How long the drain's last step may take: shards answer what their
/// publishers sent before closing them (`Control::close_publishers`). A
/// request waits at most the shards' ticket timeout, so this is ample.
const PUBLISHERS_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

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
        // Validated ≤ 65,535: fits an i32. The kernel caps it at somaxconn;
        // a deep queue absorbs reconnect storms instead of dropping SYNs.
        backlog: config.listen_backlog as i32,
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
    if let Some(addr) = config.tls_listen {
        // Browsers use wss://: the browser profile.
        listeners.push(tcp(addr, KeepaliveProfile::Browser));
    }
    RuntimeConfig {
        shards: config.shards,
        ring_sq_entries: config.ring_sq_entries,
        ring_cq_entries: config.ring_cq_entries,
        connections_per_shard_max: config.connections_per_shard_max,
        recv_buffer_bytes: config.recv_buffer_bytes,
        recv_buffer_count: config.recv_buffer_count,
        send_queue_bytes_max: config.send_queue_bytes_max,
        close_linger_ms: config.close_linger_ms,
        send_coalesce_ms_max: config.send_coalesce_ms_max,
        listeners,
        ..RuntimeConfig::default()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn gateway_shared(
    config: &Config,
    secret: Secret,
    control: Arc<Control>,
    moves: Arc<Moves>,
) -> GatewayShared {
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
    let shards = config.shards as u64;
    GatewayShared {
        upgrade: UpgradeRules {
            limits: HandshakeLimits {
                header_bytes_max: config.header_bytes_max,
                ..HandshakeLimits::default()
            },
            secret,
            site: crate::upgrade::Site {
                page: DEMO_PAGE,
                dev_tokens: config.dev,
                deflate: config.deflate,
            },
        },
        sessions: SessionSettings {
            reader_limits: ReaderLimits {
                frame_payload_bytes_max: config.frame_payload_bytes_max,
                message_bytes_max: config.message_bytes_max,
            },
            // Both client listeners can use either profile; a listener's
            // profile decides its connections' liveness.
            liveness: profile_liveness(KeepaliveProfile::Browser),
            console_liveness: profile_liveness(KeepaliveProfile::SleepingConsole),
        },
        home: HomeSettings {
            // This process's start, or the predecessor's epoch it continues.
            epoch: moves.epoch(),
            retention_ms: config.mailbox_retention_ms,
            entries_max: config.mailbox_entries_max,
            offline_users_max: config.offline_users_max.div_ceil(shards),
            stored_bytes_max: config.stored_bytes_max.div_ceil(shards),
        },
        console_listeners: {
            let mut kinds = vec![is_console(config.listen_profile), false, false];
            if config.console_listen.is_some() {
                kinds.push(is_console(config.console_listen_profile));
            }
            if config.tls_listen.is_some() {
                kinds.push(false);
            }
            kinds
        },
        handshake_timeout_ms: config.handshake_timeout_ms,
        deflate_threshold_bytes: config.deflate_threshold_bytes,
        publisher_frame_timeout_ms: config.push_frame_timeout_ms,
        push_frame_bytes_max: config.push_frame_bytes_max,
        limits: OverloadLimits {
            connections_per_shard_max: connections_max.div_ceil(shards),
            handshakes_max: config.handshakes_max as usize,
            accepts_per_shard_per_s: config.accept_rate_per_s as f64 / config.shards as f64,
            admin_connections_max: (config.admin_connections_max as usize).div_ceil(config.shards),
            publisher_connections_max: (config.publisher_connections_max as usize)
                .div_ceil(config.shards),
        },
        drain_rate_per_s: config.drain_rate_per_s,
        control,
        moves,
        stats: (0..config.shards)
            .map(|_| GatewayStats::default())
            .collect(),
        clock_unix_base_ms: start_unix_ms,
        redis: None,
    }
}

/// Index of the `tls_listen` listener (see `runtime_config`), if any.
pub fn tls_listener_index(config: &Config) -> Option<usize> {
    config.tls_listen.map(|_| {
        if config.console_listen.is_some() {
            4
        } else {
            3
        }
    })
}

/// Loads `tls_cert_file` / `tls_key_file` if `tls_listen` is set.
pub fn load_tls(config: &Config) -> Result<Option<Arc<crate::tls::CertStore>>, ServeError> {
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) if config.tls_listen.is_some() => {
            crate::tls::CertStore::load(cert, key)
                .map(Some)
                .map_err(ServeError::Tls)
        }
        _ => Ok(None),
    }
}

/// Starts the gateway; returns its runtime and the shared control.
pub fn start(config: &Config, secret: Secret) -> Result<(Runtime, Arc<Control>), ServeError> {
    let tls = load_tls(config)?;
    let moves = Arc::new(Moves::new(config.shards, unix_ms()));
    let with = StartWith {
        control: Arc::default(),
        cluster: None,
        tls: tls.as_ref(),
        inherited: Vec::new(),
        moves,
    };
    start_wrapped(config, secret, with, |_, gateway| gateway)
}

/// Starts the gateway with each shard's app made by `wrap(shard, gateway)`,
/// on `inherited` listeners where given (a take-over: then not ready until
/// it is done).
/// What a gateway starts with besides its configuration: the shared
/// control, the Redis link, the TLS certificate, a predecessor's listeners
/// and the history it continues (a take-over).
struct StartWith<'a> {
    control: Arc<Control>,
    cluster: Option<&'a crate::cluster::ClusterHandle>,
    tls: Option<&'a Arc<crate::tls::CertStore>>,
    inherited: Vec<InheritedListener>,
    moves: Arc<Moves>,
}

fn start_wrapped<A, W>(
    config: &Config,
    secret: Secret,
    with: StartWith<'_>,
    wrap: W,
) -> Result<(Runtime, Arc<Control>), ServeError>
where
    A: App<Msg = crate::gateway::Msg> + 'static,
    W: Fn(usize, Gateway) -> A + Send + Sync + 'static,
{
    let StartWith {
        control,
        cluster,
        tls,
        inherited,
        moves,
    } = with;
    control.set_taking_over(!inherited.is_empty());
    let mut shared = gateway_shared(config, secret, control.clone(), moves);
    shared.redis = cluster.map(|c| c.link());
    let shared = Arc::new(shared);
    let mut runtime_config = runtime_config(config);
    if let (Some(store), Some(listener)) = (tls, tls_listener_index(config)) {
        runtime_config.tls = Some(shard::TlsListeners {
            config: store.server_config(),
            listeners: vec![listener],
        });
    }
    let (runtime, injectors) =
        Runtime::start_inheriting(runtime_config, inherited, move |shard| {
            wrap(shard, Gateway::new(shared.clone(), shard))
        })?;
    if let Some(cluster) = cluster {
        cluster.attach(injectors);
    }
    Ok((runtime, control))
}

/// Makes a panic on any thread end the process, from now on.
///
/// A shard owns its connections, its users and their mailboxes. Were its
/// thread to die alone, the process would stay up, /healthz would say ok,
/// and that shard's users could not be reached until someone noticed; a
/// panicked supervisor or signal thread would leave a server that no longer
/// drains or stops. So the hook logs which thread panicked, the message and
/// the location, then ends the process at once with `PANIC_EXIT_STATUS`
/// and the service manager starts a fresh one.
///
/// The hook runs before any unwinding, so a panicked shard never gets to
/// run destructors or keep going in a half-changed state. It ends the
/// process with `_exit`, not `exit`: nothing else of this process runs
/// after the decision (no atexit handlers while shard threads still use
/// what those would tear down), and it cannot race the signal thread's own
/// `exit`. The log lines are already out: stderr is unbuffered and the log
/// writes each event as it happens. Not `abort`: that would add a core dump
/// of a process whose rings and buffers may map gigabytes, delaying the
/// restart, and a signal instead of a status that says what happened.
fn exit_on_panic(supervisor: std::thread::ThreadId) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // "thread 'shard-1' panicked at src/…:L:C:\n<message>", and a
        // backtrace when RUST_BACKTRACE asks for one.
        default_hook(info);
        let current = std::thread::current();
        let thread = if current.id() == supervisor {
            "supervisor"
        } else {
            current.name().unwrap_or("unnamed")
        };
        let location = info
            .location()
            .map_or_else(|| "unknown".to_string(), |l| l.to_string());
        tracing::error!(
            thread,
            %location,
            panic = info.payload_as_str().unwrap_or("(not a string)"),
            "thread {thread} panicked: exiting with status {PANIC_EXIT_STATUS} so that \
             the service manager restarts pushgate"
        );
        // SAFETY: _exit has no preconditions; it ends the process without
        // returning, so nothing after the panic runs.
        unsafe { libc::_exit(PANIC_EXIT_STATUS) }
    }));
}

/// Host readings the shards should not take themselves. The overload
/// state is recomputed from this round's RSS every round, after memory
/// over the mark was given back (`memory::Watch`), so it follows what the
/// server holds rather than what malloc kept.
fn read_host(control: &Control, high_water_bytes: u64, watch: &mut memory::Watch) {
    let was_overloaded = control.is_overloaded();
    if let Some(round) = watch.round(was_overloaded, high_water_bytes) {
        control.rss_bytes.store(round.rss_bytes, Ordering::Relaxed);
        if round.overloaded != was_overloaded {
            let rss_mib = round.rss_bytes >> 20;
            let high_water_mib = high_water_bytes >> 20;
            if round.overloaded {
                tracing::warn!(
                    rss_mib,
                    high_water_mib,
                    "overloaded: RSS over the high-water mark; refusing new connections \
                     and pushes to offline users"
                );
            } else {
                tracing::info!(rss_mib, high_water_mib, "no longer overloaded");
            }
        }
        control.set_overloaded(round.overloaded);
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
/// when empty or at `drain_deadline_ms`. A second signal exits at once. A
/// panic on any thread exits with `PANIC_EXIT_STATUS` (see `exit_on_panic`).
pub fn serve(config: Config) -> Result<(), ServeError> {
    serve_with(config, false)
}

/// `serve`, or with `takeover` the successor of the process running on the
/// same run directory: it starts on that process's listeners and becomes
/// the server when the old one commits (`crate::takeover`).
pub fn serve_with(config: Config, takeover: bool) -> Result<(), ServeError> {
    exit_on_panic(std::thread::current().id());
    // Read now: a deploy replaces the file, and the next upgrade starts
    // whatever is at this path then.
    let exe = std::env::current_exe()
        .map_err(|e| ServeError::Exe(format!("finding this program's path: {e}")))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    #[cfg(debug_assertions)]
    let fault = debug_fault::from_env(config.shards)?;
    let secret = Secret::load_or_create(&config.run_dir, config.secret_file.as_deref())
        .map_err(|e| ServeError::Secret(e.to_string()))?;
    let moves = Arc::new(Moves::new(config.shards, unix_ms()));
    let (mut predecessor, inherited) = if takeover {
        let (p, inherited) = takeover::successor::connect(&config.run_dir, config.shards)
            .map_err(ServeError::Takeover)?;
        if let Some((epoch, seq_start)) = p.history {
            moves.continue_history(epoch, seq_start);
        }
        (Some(p), inherited)
    } else {
        (None, Vec::new())
    };
    let tls = load_tls(&config)?;
    let mut wanted = vec![signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    if tls.is_some() {
        // Only with TLS: without it SIGHUP keeps its default (terminate).
        wanted.push(signal_hook::consts::SIGHUP);
    }
    let signals = signal_hook::iterator::Signals::new(wanted)
        .map_err(|e| ServeError::Signals(format!("installing signal handlers: {e}")))?;
    let control = Arc::new(Control::default());
    // With Redis configured, this host claims its host_id before any
    // listener opens, so a duplicate never takes a connection.
    let settings = match crate::cluster::ClusterSettings::from_config(&config) {
        Ok(settings) => settings,
        Err(problems) => unreachable!("validated with the config: {problems:?}"),
    };
    if settings.is_some() {
        if let Some(p) = predecessor.take() {
            // The successor would claim the host_id its predecessor holds.
            let why = "a live upgrade with Redis configured is not built yet; \
                       drain this host instead (`pushgate drain`)";
            p.give_up(why);
            return Err(ServeError::Takeover(format!("--takeover: {why}")));
        }
    }
    let cluster = match settings {
        Some(settings) => Some(crate::cluster::start(settings, control.clone())?),
        None => None,
    };
    let with = StartWith {
        control,
        cluster: cluster.as_ref(),
        tls: tls.as_ref(),
        inherited,
        moves: moves.clone(),
    };
    #[cfg(debug_assertions)]
    let started = match fault {
        Some(debug_fault::Fault::Shard(shard)) => {
            start_wrapped(&config, secret, with, move |id, app| {
                debug_fault::PanicOnTick::new(app, id == shard)
            })
        }
        _ => start_wrapped(&config, secret, with, |_, gateway| gateway),
    };
    #[cfg(not(debug_assertions))]
    let started = start_wrapped(&config, secret, with, |_, gateway| gateway);
    let (runtime, control) = match (started, predecessor) {
        (Ok(started), None) => {
            takeover::notify::notify("READY=1");
            started
        }
        (Ok((runtime, control)), Some(predecessor)) => {
            if let Err(e) = predecessor.accepting(moves.clone()) {
                runtime.stopper().stop();
                let _ = runtime.join();
                return Err(ServeError::Takeover(e));
            }
            control.set_taking_over(false);
            // The old process no longer waits on these sockets: accept
            // afresh (see `AcceptGate::renew`).
            runtime.accept_gate().renew();
            tracing::info!("take-over: committed; this process is the server now");
            takeover::notify::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
            (runtime, control)
        }
        (Err(e), predecessor) => {
            if let Some(p) = predecessor {
                p.give_up(&e.to_string());
            }
            return Err(e);
        }
    };
    let copies = runtime.listener_copies();
    let control_socket = takeover::OldSide {
        socket_path: takeover::socket_path(&config.run_dir),
        gate: runtime.accept_gate(),
        copies: copies.clone(),
        control: control.clone(),
        drain_rate_per_s: config.drain_rate_per_s,
        moves: moves.clone(),
        exe,
        args,
    };
    if let Err(e) = takeover::serve_control(control_socket) {
        tracing::warn!(
            "take-over socket {}: {e}; `pushgate upgrade` will not reach this process",
            takeover::socket_path(&config.run_dir).display()
        );
    }
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
        let console = config.console_listen.and_then(|_| runtime.tcp_addr(3));
        tracing::warn!(
            %addr,
            console = console.map(|c| c.to_string()),
            allow_remote = config.dev_allow_remote,
            "--dev: GET http://{addr}/dev/token mints a token for any user to whoever can reach {addr}{}; never use it in production",
            console.map(|c| format!(" (and {c})")).unwrap_or_default()
        );
    }
    if let Some(console) = config.console_listen.and_then(|_| runtime.tcp_addr(3)) {
        tracing::info!(%console, "sleeping-console listener");
    }
    if let Some(tls_addr) = tls_listener_index(&config).and_then(|i| runtime.tcp_addr(i)) {
        tracing::info!(
            %tls_addr,
            cert_file = %config.tls_cert_file.as_deref().unwrap_or(std::path::Path::new("")).display(),
            "TLS listener; clients connect to wss://{tls_addr}/ws (SIGHUP reloads the certificate)"
        );
    }
    let received = Arc::new(AtomicU8::new(SIGNAL_NONE));
    let handle = signals.handle();
    #[cfg(debug_assertions)]
    let debug_panic_on_signal = fault == Some(debug_fault::Fault::Signals);
    #[cfg(not(debug_assertions))]
    let debug_panic_on_signal = false;
    let signal_thread = spawn_signal_thread(signals, received.clone(), debug_panic_on_signal, tls)?;
    #[cfg(debug_assertions)]
    let supervisor_panic_at = (fault == Some(debug_fault::Fault::Supervisor))
        .then(|| Instant::now() + Duration::from_millis(debug_fault::DELAY_MS));
    let stopper = runtime.stopper();
    let mut drain_started: Option<Instant> = None;
    let mut publishers_closing_since: Option<Instant> = None;
    let mut memory_watch = memory::Watch::new();
    loop {
        std::thread::sleep(Duration::from_millis(SUPERVISE_INTERVAL_MS));
        #[cfg(debug_assertions)]
        if supervisor_panic_at.is_some_and(|at| Instant::now() >= at) {
            panic!(
                "{}=supervisor: the supervisor panics on purpose",
                debug_fault::ENV
            );
        }
        if stopper.is_stopped() {
            break; // a shard failed and stopped everything
        }
        read_host(&control, high_water, &mut memory_watch);
        match received.swap(SIGNAL_NONE, Ordering::Relaxed) {
            SIGNAL_STOP => {
                tracing::info!("SIGINT: closing connections with 1001");
                stopper.stop();
                break;
            }
            SIGNAL_DRAIN => start_drain_on_sigterm(&control, config.drain_rate_per_s),
            _ => {}
        }
        if control.is_draining() && !control.listeners_handed_over() {
            // A plain drain: a listener the shards close must really close.
            copies.forget();
        }
        if !control.is_draining() {
            drain_started = None; // a take-back stopped it
            publishers_closing_since = None;
        }
        if control.is_draining() {
            let started = *drain_started.get_or_insert_with(Instant::now);
            let all_empty = control.shards_drained() >= config.shards;
            let late = started.elapsed() >= Duration::from_millis(config.drain_deadline_ms);
            if (all_empty || late) && publishers_closing_since.is_none() {
                if late && !all_empty {
                    tracing::warn!("drain deadline reached with connections left; stopping");
                }
                // Last step: every publisher's requests answered, then
                // closed (what it sent and was not read, it resends).
                control.close_publishers();
                publishers_closing_since = Some(Instant::now());
            }
            if let Some(since) = publishers_closing_since {
                let closed = control.shards_publishers_closed() >= config.shards;
                if closed || since.elapsed() >= PUBLISHERS_CLOSE_TIMEOUT {
                    if !closed {
                        tracing::warn!(
                            "publishers still had requests unanswered after \
                             {PUBLISHERS_CLOSE_TIMEOUT:?}; stopping"
                        );
                    }
                    tracing::info!(seconds = started.elapsed().as_secs_f64(), "drain complete");
                    stopper.stop();
                    break;
                }
            }
        }
    }
    let result = runtime.join().map_err(ServeError::Shard);
    // Pushes this process accepted and forwards to its successor (a live
    // upgrade) leave before it does.
    if moves.is_forwarding() && !moves.wait_forwarded(Duration::from_secs(5)) {
        tracing::warn!("exiting with pushes not yet forwarded to the successor");
    }
    if let Some(cluster) = cluster {
        cluster.stop();
    }
    handle.close();
    let _ = signal_thread.join();
    tracing::info!("stopped");
    result
}

/// The thread that receives SIGINT / SIGTERM and hands the first one to the
/// supervisor (through `received`); a second signal of either kind exits at
/// once. `debug_panic_on_signal` is honoured in debug builds only.
fn spawn_signal_thread(
    mut signals: signal_hook::iterator::Signals,
    received: Arc<AtomicU8>,
    debug_panic_on_signal: bool,
    tls: Option<Arc<crate::tls::CertStore>>,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    #[cfg(not(debug_assertions))]
    let _ = debug_panic_on_signal;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    reload_certificate(tls.as_deref());
                    continue;
                }
                #[cfg(debug_assertions)]
                if debug_panic_on_signal {
                    panic!(
                        "{}=signals: the signal thread panics on purpose",
                        debug_fault::ENV
                    );
                }
                if seen {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(1);
                }
                seen = true;
                let what = if sig == signal_hook::consts::SIGTERM {
                    SIGNAL_DRAIN
                } else {
                    SIGNAL_STOP
                };
                received.store(what, Ordering::Relaxed);
            }
        })
        .map_err(|e| ServeError::Signals(format!("starting the signal thread: {e}")))
}

/// SIGHUP: new handshakes use the certificate and key read now; a file
/// that does not load keeps the old certificate. Logs the outcome.
fn reload_certificate(tls: Option<&crate::tls::CertStore>) {
    let Some(store) = tls else { return };
    match store.reload() {
        Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded; new handshakes use it"),
        Err(why) => tracing::error!(
            why,
            "SIGHUP: TLS certificate NOT reloaded, the previous one stays in use"
        ),
    }
}

/// SIGTERM starts a drain at the configured rate, unless one is already
/// running (`pushgate drain --rate`, the admin API): then its rate stays.
/// Called once per SIGTERM (a second one exits), so it logs once.
fn start_drain_on_sigterm(control: &Control, configured_rate_per_s: u32) {
    if control.is_draining() {
        tracing::info!(
            rate_per_s = control.drain_rate_per_s(),
            "SIGTERM: draining (already draining: its rate stays)"
        );
    } else {
        control.start_drain(configured_rate_per_s);
        tracing::info!(rate_per_s = configured_rate_per_s, "SIGTERM: draining");
    }
}

/// `PUSHGATE_DEBUG_PANIC`: a panic on purpose on a chosen thread of a
/// running server, to test that any panic stops the process. Compiled into
/// debug builds only; a release binary ignores the variable.
#[cfg(debug_assertions)]
mod debug_fault {
    use super::ServeError;
    use shard::{App, CloseReason, ConnId, Ctx};
    use std::os::fd::OwnedFd;

    pub(super) const ENV: &str = "PUSHGATE_DEBUG_PANIC";
    /// How long after start-up the chosen thread panics.
    pub(super) const DELAY_MS: u64 = 1000;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Fault {
        /// `shard:<i>`: shard i's thread, in its first tick after `DELAY_MS`.
        Shard(usize),
        /// `supervisor`: the thread running `serve`, after `DELAY_MS`.
        Supervisor,
        /// `signals`: the signal thread, when it receives a signal.
        Signals,
    }

    pub(super) fn parse(value: &str, shards: usize) -> Result<Fault, String> {
        let bad =
            || format!("{ENV}={value:?}: expected shard:<0..{shards}>, supervisor or signals");
        match value.trim() {
            "supervisor" => Ok(Fault::Supervisor),
            "signals" => Ok(Fault::Signals),
            other => {
                let shard = other
                    .strip_prefix("shard:")
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|&i| i < shards)
                    .ok_or_else(bad)?;
                Ok(Fault::Shard(shard))
            }
        }
    }

    pub(super) fn from_env(shards: usize) -> Result<Option<Fault>, ServeError> {
        match std::env::var(ENV) {
            Ok(value) if !value.trim().is_empty() => {
                let fault = parse(&value, shards).map_err(ServeError::DebugFault)?;
                tracing::warn!(?fault, "{ENV}: this server will panic on purpose");
                Ok(Some(fault))
            }
            _ => Ok(None),
        }
    }

    /// The gateway with one change: on the chosen shard, `on_tick` panics
    /// once the runtime clock passes `DELAY_MS`. Every other call is passed
    /// through unchanged.
    pub(super) struct PanicOnTick<A> {
        inner: A,
        armed: bool,
    }

    impl<A> PanicOnTick<A> {
        pub(super) fn new(inner: A, armed: bool) -> PanicOnTick<A> {
            PanicOnTick { inner, armed }
        }
    }

    impl<A: App> App for PanicOnTick<A> {
        type Msg = A::Msg;

        fn on_accept(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, listener: usize) {
            self.inner.on_accept(ctx, conn, listener)
        }

        fn on_data(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, data: &mut [u8]) {
            self.inner.on_data(ctx, conn, data)
        }

        fn on_timer(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId) {
            self.inner.on_timer(ctx, conn)
        }

        fn on_close(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, reason: CloseReason) {
            self.inner.on_close(ctx, conn, reason)
        }

        fn on_message(&mut self, ctx: &mut Ctx<'_, Self::Msg>, from_shard: usize, msg: Self::Msg) {
            self.inner.on_message(ctx, from_shard, msg)
        }

        fn on_handoff(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, msg: Self::Msg) {
            self.inner.on_handoff(ctx, conn, msg)
        }

        fn on_drained(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId) {
            self.inner.on_drained(ctx, conn)
        }

        fn on_exported(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, fd: OwnedFd) {
            self.inner.on_exported(ctx, conn, fd)
        }

        fn on_export_failed(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, errno: i32) {
            self.inner.on_export_failed(ctx, conn, errno)
        }

        fn on_adopted(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, msg: Self::Msg) {
            self.inner.on_adopted(ctx, conn, msg)
        }

        fn on_adopt_failed(
            &mut self,
            ctx: &mut Ctx<'_, Self::Msg>,
            fd: OwnedFd,
            msg: Self::Msg,
            errno: i32,
        ) {
            self.inner.on_adopt_failed(ctx, fd, msg, errno)
        }

        fn on_tick(&mut self, ctx: &mut Ctx<'_, Self::Msg>) {
            if self.armed && ctx.now_ms() >= DELAY_MS {
                panic!(
                    "{ENV}=shard:{}: shard {} panics on purpose",
                    ctx.shard_id(),
                    ctx.shard_id()
                );
            }
            self.inner.on_tick(ctx)
        }

        fn on_stop(&mut self, ctx: &mut Ctx<'_, Self::Msg>) {
            self.inner.on_stop(ctx)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_each_fault_and_names_what_it_expects() {
            assert_eq!(parse("shard:1", 2), Ok(Fault::Shard(1)));
            assert_eq!(parse(" supervisor ", 2), Ok(Fault::Supervisor));
            assert_eq!(parse("signals", 2), Ok(Fault::Signals));
            for wrong in ["shard:2", "shard:", "shard:x", "main", ""] {
                let err = parse(wrong, 2).unwrap_err();
                assert!(err.contains("shard:<0..2>, supervisor or signals"), "{err}");
            }
        }
    }
}
