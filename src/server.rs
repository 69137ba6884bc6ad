//! `pushgate serve`: loads the secret, starts the shards with the gateway
//! app, and stops them cleanly on SIGINT / SIGTERM.

use crate::auth::Secret;
use crate::config::Config;
use crate::gateway::{Gateway, GatewayShared};
use crate::liveness::Liveness;
use crate::ws::handshake::HandshakeLimits;
use crate::ws::reader::ReaderLimits;
use shard::{ListenerSpec, Runtime, RuntimeConfig, SocketOption};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Options set on the client listener; accepted sockets inherit them (a
/// direct descriptor cannot be given options after accept).
fn client_socket_options(config: &Config) -> Vec<SocketOption> {
    let mut options = Vec::new();
    if config.socket_send_buffer_bytes > 0 {
        options.push(SocketOption {
            level: libc::SOL_SOCKET,
            name: libc::SO_SNDBUF,
            value: config.socket_send_buffer_bytes as i32,
        });
    }
    options
}

pub fn runtime_config(config: &Config) -> RuntimeConfig {
    RuntimeConfig {
        shards: config.shards,
        ring_sq_entries: config.ring_sq_entries,
        ring_cq_entries: config.ring_cq_entries,
        connections_per_shard_max: config.connections_per_shard_max,
        recv_buffer_bytes: config.recv_buffer_bytes,
        recv_buffer_count: config.recv_buffer_count,
        send_queue_bytes_max: config.send_queue_bytes_max,
        // Order matters: gateway::CLIENT_LISTENER, gateway::PUSH_LISTENER.
        listeners: vec![
            ListenerSpec::Tcp {
                addr: config.listen,
                backlog: LISTEN_BACKLOG,
                options: client_socket_options(config),
            },
            ListenerSpec::Unix {
                path_template: config.run_dir.join("shard-{shard}.sock"),
                mode: 0o660,
                backlog: 1024,
            },
        ],
        ..RuntimeConfig::default()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn gateway_shared(config: &Config, secret: Secret) -> GatewayShared {
    let start_unix_ms = unix_ms();
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
        liveness: Liveness {
            ping_interval_ms: config.ping_interval_ms,
            idle_timeout_ms: config.idle_timeout_ms,
        },
        handshake_timeout_ms: config.handshake_timeout_ms,
        mailbox_retention_ms: config.mailbox_retention_ms,
        mailbox_entries_max: config.mailbox_entries_max,
        push_frame_bytes_max: config.push_frame_bytes_max,
        epoch: start_unix_ms,
        clock_unix_base_ms: start_unix_ms,
    }
}

/// Starts the gateway; returns its runtime (tests drive it themselves).
pub fn start(config: &Config, secret: Secret) -> Result<Runtime, ServeError> {
    let shared = Arc::new(gateway_shared(config, secret));
    Ok(Runtime::start(runtime_config(config), move |_| {
        Gateway::new(shared.clone())
    })?)
}

/// Runs until SIGINT or SIGTERM, then closes every connection with 1001
/// and exits. A second signal while stopping exits at once.
pub fn serve(config: Config) -> Result<(), ServeError> {
    let secret = Secret::load_or_create(&config.run_dir, config.secret_file.as_deref())
        .map_err(|e| ServeError::Secret(e.to_string()))?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| ServeError::Signals(format!("installing signal handlers: {e}")))?;
    let runtime = start(&config, secret)?;
    let addr = runtime.tcp_addr(0).expect("one TCP listener");
    tracing::info!(
        %addr,
        shards = config.shards,
        connections_per_shard_max = runtime.connections_per_shard_max(),
        run_dir = %config.run_dir.display(),
        "pushgate listening; clients connect to ws://{addr}/ws"
    );
    let stopper = runtime.stopper();
    let handle = signals.handle();
    let signal_thread = std::thread::spawn(move || {
        let mut forever = signals.forever();
        if let Some(sig) = forever.next() {
            tracing::info!(signal = sig, "stopping: closing connections with 1001");
            stopper.stop();
        }
        if forever.next().is_some() {
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        }
    });
    let result = runtime.join().map_err(ServeError::Shard);
    handle.close();
    let _ = signal_thread.join();
    tracing::info!("stopped");
    result
}
