//! Flags + TOML → validated [`Config`], once.
//!
//! Precedence, lowest first: built-in defaults, the `--config` TOML file,
//! `PUSHGATE_*` environment variables, command-line flags. Every setting has
//! the same name everywhere: `idle_timeout_ms` in the file,
//! `--idle-timeout-ms` on the command line, `PUSHGATE_IDLE_TIMEOUT_MS` in the
//! environment. The result is validated as a whole, so a shard never starts
//! with settings that contradict each other.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most shards one process runs. Defined with the route (the push client
/// checks status replies against it too); re-exported so the config's
/// limits stay in one place.
pub use pushgate_client::route::SHARDS_MAX;
/// `listen` under `--dev` when no address is given: loopback only, because
/// the dev endpoint mints tokens for anyone who can reach it.
pub const DEV_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
/// Smallest header buffer accepted: a WebSocket upgrade request carrying a
/// JWT does not fit in less.
pub const HEADER_BYTES_MIN: usize = 256;
/// The kernel's limit on a ring's registered (fixed) file table
/// (`IORING_MAX_FIXED_FILES`).
pub const CONNECTIONS_PER_SHARD_MAX: u32 = 1 << 20;
/// The kernel's limit on entries in a provided-buffer ring.
pub const RECV_BUFFER_COUNT_MAX: u16 = 1 << 15;
/// The kernel's limit on submission queue entries (`IORING_MAX_ENTRIES`).
pub const RING_SQ_ENTRIES_MAX: u32 = 1 << 15;
/// The kernel's limit on completion queue entries (`IORING_MAX_CQ_ENTRIES`).
pub const RING_CQ_ENTRIES_MAX: u32 = 1 << 16;
/// Largest `listen_backlog`: what a deep queue needs to absorb reconnect
/// storms (see kernel-tuning/); the kernel caps it at net.core.somaxconn.
pub const LISTEN_BACKLOG_MAX: u32 = 65_535;
/// Longest Unix socket path, counting the terminating NUL (`sun_path`).
const UNIX_SOCKET_PATH_BYTES_MAX: usize = 108;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// How a client listener keeps connections alive and finds dead ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KeepaliveProfile {
    /// WebSocket pings every `ping_interval_ms`, closed after
    /// `idle_timeout_ms` of silence: browsers and phones in the foreground.
    #[default]
    Browser,
    /// No application pings (they would wake the device); TCP keepalive
    /// probes and TCP_USER_TIMEOUT, set on the listener, find dead peers;
    /// closed after `console_idle_timeout_ms` of silence.
    SleepingConsole,
}

/// The validated settings of one `pushgate serve` process.
///
/// Build it with [`load`] (or `Config::default()` plus [`Config::validate`]
/// in tests). It serialises to the same TOML the `--config` file accepts, so
/// `--print-config` output can be saved and edited.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to (every shard listens on it, SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Listen backlog of each shard's client listener (`listen` and
    /// `console_listen`); the kernel caps it at net.core.somaxconn.
    pub listen_backlog: u32,
    /// Shard threads, one io_uring ring each.
    pub shards: usize,
    /// Directory for the generated secret and the per-shard push sockets.
    pub run_dir: PathBuf,
    /// File holding the HS256 secret; `None` uses (and creates)
    /// `<run_dir>/secret`.
    pub secret_file: Option<PathBuf>,
    /// Time from accept to a completed upgrade before the connection is
    /// dropped.
    pub handshake_timeout_ms: u64,
    /// Time without any frame from the client before it is disconnected.
    pub idle_timeout_ms: u64,
    /// Interval between server pings to an otherwise quiet client; 0 sends
    /// none.
    pub ping_interval_ms: u64,
    /// Largest upgrade request (request line + headers) accepted.
    pub header_bytes_max: usize,
    /// Largest payload of a single client frame.
    pub frame_payload_bytes_max: u64,
    /// Largest client message after reassembling fragments.
    pub message_bytes_max: u64,
    /// Unsent bytes a connection may queue before it counts as a slow
    /// consumer and is closed (it resumes from its mailbox).
    pub send_queue_bytes_max: usize,
    /// Kernel send buffer of each client socket (SO_SNDBUF; the kernel
    /// doubles it); 0 keeps the kernel's autotuning. Small, so undelivered
    /// notifications wait in mailboxes rather than in kernel memory.
    pub socket_send_buffer_bytes: u32,
    /// Keepalive profile of `listen`.
    pub listen_profile: KeepaliveProfile,
    /// A second client address for devices that sleep (optional).
    pub console_listen: Option<SocketAddr>,
    /// Keepalive profile of `console_listen`.
    pub console_listen_profile: KeepaliveProfile,
    /// A client address that speaks TLS (wss://, https://), browser
    /// profile; needs `tls_cert_file` and `tls_key_file`. `listen` stays
    /// plain, so one process serves ws:// and wss://.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain for `tls_listen`, leaf first (reloaded on SIGHUP).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) for `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Sleeping-console profile: close after this much silence.
    pub console_idle_timeout_ms: u64,
    /// Sleeping-console profile: TCP_KEEPIDLE, idle seconds before the first probe.
    pub tcp_keepalive_idle_s: u32,
    /// Sleeping-console profile: TCP_KEEPINTVL, seconds between probes.
    pub tcp_keepalive_interval_s: u32,
    /// Sleeping-console profile: TCP_KEEPCNT, unanswered probes before the kernel drops the connection.
    pub tcp_keepalive_count: u32,
    /// Sleeping-console profile: TCP_USER_TIMEOUT, how long sent data may stay unacknowledged.
    pub tcp_user_timeout_ms: u32,
    /// Admin HTTP: /healthz, /readyz, /metrics, /v1/push, /v1/presence.
    pub admin_listen: SocketAddr,
    /// Drain: connections closed per second (1012), over all shards.
    pub drain_rate_per_s: u32,
    /// Drain: exit after this long even if connections remain.
    pub drain_deadline_ms: u64,
    /// Client connections over all shards; 0 = the shards' capacity.
    pub connections_max: u64,
    /// Upgrades in progress per shard before new connections are refused (503).
    pub handshakes_max: u32,
    /// New client connections per second over all shards; 0 = unlimited.
    pub accept_rate_per_s: u32,
    /// RSS above which readiness fails and new connections are refused; 0 = 90% of RAM.
    pub memory_high_water_bytes: u64,
    /// How long each user's notifications are kept for resume.
    pub mailbox_retention_ms: u64,
    /// How many notifications each user keeps for resume (oldest dropped).
    pub mailbox_entries_max: usize,
    /// Largest push request frame on the Unix sockets.
    pub push_frame_bytes_max: usize,
    /// A publisher must finish a frame it started within this long.
    pub push_frame_timeout_ms: u64,
    /// Users kept only for their mailbox (no device), over all shards;
    /// pushes that would keep more are rejected.
    pub offline_users_max: u64,
    /// Bytes of notifications kept for resume, over all shards; pushes to
    /// offline users past it are rejected.
    pub stored_bytes_max: u64,
    /// Admin HTTP connections open at once, over all shards.
    pub admin_connections_max: u32,
    /// Push-socket connections open at once, over all shards.
    pub publisher_connections_max: u32,
    /// How long a closing connection may take to send its goodbye and see
    /// the peer close before it is cut.
    pub close_linger_ms: u64,
    /// The longest a device's new notifications may wait for more before
    /// they are sent, reached only while a shard is saturated; 0 = never.
    pub send_coalesce_ms_max: u64,
    /// Offer permessage-deflate (RFC 7692) to clients that ask for it,
    /// only without context takeover: one compressor and one decompressor
    /// per shard, each push compressed once for all its recipients.
    pub deflate: bool,
    /// With `deflate`, notifications whose message is shorter than this
    /// are sent uncompressed (compressing them saves too little).
    pub deflate_threshold_bytes: usize,
    /// Connections one shard holds at most; sizes the ring's fixed-file table.
    pub connections_per_shard_max: u32,
    /// Size of each receive buffer in a shard's provided-buffer ring.
    pub recv_buffer_bytes: u32,
    /// Receive buffers per shard (a power of two).
    pub recv_buffer_count: u16,
    /// Submission queue entries per ring (a power of two).
    pub ring_sq_entries: u32,
    /// Completion queue entries per ring (a power of two, ≥ ring_sq_entries).
    pub ring_cq_entries: u32,
    /// Redis Cluster seed nodes (`host:port` or `redis://host:port`): hosts
    /// that share them form one gateway. Empty, with no `redis_url`: a
    /// single host, no Redis.
    pub redis_nodes: Vec<String>,
    /// One standalone Redis instead of a cluster (`redis://[user:pass@]host:port[/db]`
    /// or `redis+unix:///path`).
    pub redis_url: Option<String>,
    /// This host's name in the fleet: stable across restarts and unique;
    /// required with Redis. A second process with the same one is refused.
    pub host_id: Option<String>,
    /// Redis ACL user name (AUTH), for every Redis node.
    pub redis_username: Option<String>,
    /// File whose first line is the Redis password (AUTH), read at start.
    pub redis_password_file: Option<PathBuf>,
    /// How long this host's claim on its host_id outlives its last
    /// heartbeat (heartbeats every third of it).
    pub redis_host_ttl_ms: u64,
    /// Connect and response timeout of each Redis call.
    pub redis_timeout_ms: u64,
    /// With Redis: each shard checks its devices' positions against the
    /// history in Redis in rounds started at most this often, catching a
    /// lost doorbell no later push reveals.
    pub redis_check_interval_ms: u64,
    /// Development mode: `GET /dev/token?user=U` on the client listeners
    /// mints tokens for anyone who asks (for the demo page). Never in
    /// production. Without `dev_allow_remote`, `listen` defaults to
    /// [`DEV_LISTEN_DEFAULT`] (loopback) and a client listener on any other
    /// address is refused, so only this machine can ask.
    pub dev: bool,
    /// With `dev`: allow client listeners on non-loopback addresses, so
    /// anyone who can reach them can mint a token for any user.
    pub dev_allow_remote: bool,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `info,pushgate=trace`, …); `RUST_LOG`
    /// overrides it.
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            listen_backlog: LISTEN_BACKLOG_MAX,
            shards: default_shards(),
            run_dir: default_run_dir(),
            secret_file: None,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            ping_interval_ms: 30_000,
            header_bytes_max: 8192,
            frame_payload_bytes_max: 65_536,
            message_bytes_max: 65_536,
            send_queue_bytes_max: 262_144,
            socket_send_buffer_bytes: 65_536,
            listen_profile: KeepaliveProfile::Browser,
            console_listen: None,
            console_listen_profile: KeepaliveProfile::SleepingConsole,
            tls_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            console_idle_timeout_ms: 21_600_000,
            tcp_keepalive_idle_s: 300,
            tcp_keepalive_interval_s: 60,
            tcp_keepalive_count: 5,
            tcp_user_timeout_ms: 600_000,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            drain_rate_per_s: 1_000,
            drain_deadline_ms: 600_000,
            connections_max: 0,
            handshakes_max: 4_096,
            accept_rate_per_s: 0,
            memory_high_water_bytes: 0,
            mailbox_retention_ms: 120_000,
            mailbox_entries_max: 64,
            push_frame_bytes_max: 1 << 20,
            push_frame_timeout_ms: 10_000,
            offline_users_max: 1_000_000,
            stored_bytes_max: 1 << 30,
            admin_connections_max: 1_024,
            publisher_connections_max: 1_024,
            close_linger_ms: 2_000,
            send_coalesce_ms_max: 40,
            deflate: false,
            deflate_threshold_bytes: 1024,
            connections_per_shard_max: 200_000,
            recv_buffer_bytes: 4096,
            recv_buffer_count: 2048,
            ring_sq_entries: 1024,
            ring_cq_entries: 16_384,
            redis_nodes: Vec::new(),
            redis_url: None,
            host_id: None,
            redis_username: None,
            redis_password_file: None,
            redis_host_ttl_ms: 15_000,
            redis_timeout_ms: 2_000,
            redis_check_interval_ms: 5_000,
            dev: false,
            dev_allow_remote: false,
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
        }
    }
}

/// One shard per core this process may run on (respects affinity masks and
/// cgroup quotas), capped at [`SHARDS_MAX`].
fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(SHARDS_MAX)
}

/// `$XDG_RUNTIME_DIR/pushgate` when that is set (per-user, 0700, cleared at
/// logout), else `/tmp/pushgate-<uid>`.
pub fn default_run_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    run_dir_from(std::env::var_os("XDG_RUNTIME_DIR"), uid)
}

fn run_dir_from(xdg_runtime_dir: Option<OsString>, uid: u32) -> PathBuf {
    match xdg_runtime_dir {
        // The XDG spec says to ignore a relative value.
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir).join("pushgate"),
        _ => PathBuf::from(format!("/tmp/pushgate-{uid}")),
    }
}

/// Why the configuration could not be built. Each message names the file and
/// line, or the setting and the rule it breaks.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("config file {}, line {line}, column {column}: {message} (in `{source_line}`)", path.display())]
    Toml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        /// The offending line, trimmed and shortened, so the message shows
        /// which key is meant even where the parser's message does not.
        source_line: String,
    },

    #[error("invalid configuration: {}", problems.join("; "))]
    Invalid { problems: Vec<String> },

    #[error("cannot print the configuration as TOML: {0}")]
    Print(String),
}

impl Config {
    /// Parses a config file's text; `path` is only used in error messages.
    /// Settings the text leaves out keep their defaults. Not validated.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((1, 1), |span| line_column(text, span.start));
            ConfigError::Toml {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
                source_line: source_line(text, line),
            }
        })
    }

    /// Reads and parses a config file. Not validated.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// The configuration as TOML, in the form `--config` reads.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self)
            .map_err(|e| ConfigError::Print(format!("{e} (paths must be valid UTF-8)")))
    }

    /// Checks every rule and reports all broken ones at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };

        check(
            (1..=SHARDS_MAX).contains(&self.shards),
            format!(
                "shards ({}) must be between 1 and {SHARDS_MAX}",
                self.shards
            ),
        );

        check(
            !self.run_dir.as_os_str().is_empty(),
            "run_dir must not be empty".to_owned(),
        );
        // Each shard binds `<run_dir>/shard-<i>.sock`; the kernel refuses a
        // Unix socket path that does not fit in sun_path, so say so now
        // instead of failing at bind.
        let longest_socket_name = format!("/shard-{}.sock", self.shards.max(1) - 1);
        let socket_path_bytes = self.run_dir.as_os_str().len() + longest_socket_name.len();
        check(
            socket_path_bytes < UNIX_SOCKET_PATH_BYTES_MAX,
            format!(
                "run_dir is too long: the push socket path {}{} would be {socket_path_bytes} bytes, \
                 but Unix socket paths must be under {UNIX_SOCKET_PATH_BYTES_MAX}; choose a shorter run_dir",
                self.run_dir.display(),
                longest_socket_name,
            ),
        );
        if let Some(secret_file) = &self.secret_file {
            check(
                !secret_file.as_os_str().is_empty(),
                "secret_file must not be empty (leave it out to use <run_dir>/secret)".to_owned(),
            );
        }

        check(
            self.handshake_timeout_ms > 0,
            "handshake_timeout_ms must be greater than 0".to_owned(),
        );
        check(
            self.idle_timeout_ms > 0,
            "idle_timeout_ms must be greater than 0".to_owned(),
        );
        check(
            self.ping_interval_ms == 0 || self.ping_interval_ms < self.idle_timeout_ms,
            format!(
                "ping_interval_ms ({}) must be less than idle_timeout_ms ({}), or 0 to send no pings",
                self.ping_interval_ms, self.idle_timeout_ms
            ),
        );

        check(
            self.header_bytes_max >= HEADER_BYTES_MIN,
            format!(
                "header_bytes_max ({}) must be at least {HEADER_BYTES_MIN}: an upgrade request carrying a token does not fit in less",
                self.header_bytes_max
            ),
        );
        check(
            self.push_frame_timeout_ms > 0
                && self.admin_connections_max > 0
                && self.publisher_connections_max > 0
                && self.close_linger_ms > 0,
            "push_frame_timeout_ms, admin_connections_max, publisher_connections_max and \
             close_linger_ms must be greater than 0"
                .to_owned(),
        );
        check(
            self.mailbox_retention_ms > 0 && self.mailbox_entries_max > 0,
            "mailbox_retention_ms and mailbox_entries_max must be greater than 0: \
             a device that reconnects resumes from the mailbox"
                .to_owned(),
        );
        check(
            self.drain_rate_per_s > 0 && self.handshakes_max > 0,
            "drain_rate_per_s and handshakes_max must be greater than 0".to_owned(),
        );
        check(
            self.tcp_keepalive_idle_s > 0
                && self.tcp_keepalive_interval_s > 0
                && self.tcp_keepalive_count > 0
                && self.console_idle_timeout_ms > 0,
            "tcp_keepalive_idle_s, tcp_keepalive_interval_s, tcp_keepalive_count and \
             console_idle_timeout_ms must be greater than 0"
                .to_owned(),
        );
        check(
            {
                // Port 0 asks for any free port, so equal port-0 addresses differ.
                let clash = |a: SocketAddr, b: SocketAddr| a == b && a.port() != 0;
                !clash(self.admin_listen, self.listen)
                    && self
                        .console_listen
                        .is_none_or(|c| !clash(c, self.listen) && !clash(c, self.admin_listen))
            },
            format!(
                "listen ({}), console_listen and admin_listen ({}) must be different addresses",
                self.listen, self.admin_listen
            ),
        );
        check(
            self.tls_listen.is_some()
                == (self.tls_cert_file.is_some() && self.tls_key_file.is_some())
                && self.tls_cert_file.is_some() == self.tls_key_file.is_some(),
            "tls_listen, tls_cert_file and tls_key_file go together: set all three \
             (e.g. --tls-listen 0.0.0.0:8443 --tls-cert-file fullchain.pem --tls-key-file privkey.pem) or none"
                .to_owned(),
        );
        check(
            {
                let clash = |a: SocketAddr, b: SocketAddr| a == b && a.port() != 0;
                self.tls_listen.is_none_or(|t| {
                    !clash(t, self.listen)
                        && !clash(t, self.admin_listen)
                        && self.console_listen.is_none_or(|c| !clash(t, c))
                })
            },
            "tls_listen must differ from listen, console_listen and admin_listen".to_owned(),
        );
        check(
            (1..=LISTEN_BACKLOG_MAX).contains(&self.listen_backlog),
            format!(
                "listen_backlog ({}) must be between 1 and {LISTEN_BACKLOG_MAX}",
                self.listen_backlog
            ),
        );
        check(
            self.socket_send_buffer_bytes == 0 || self.socket_send_buffer_bytes >= 4096,
            format!(
                "socket_send_buffer_bytes ({}) must be 0 (kernel default) or at least 4096",
                self.socket_send_buffer_bytes
            ),
        );
        check(
            self.push_frame_bytes_max >= 1024,
            format!(
                "push_frame_bytes_max ({}) must be at least 1024",
                self.push_frame_bytes_max
            ),
        );
        check(
            self.frame_payload_bytes_max > 0,
            "frame_payload_bytes_max must be greater than 0".to_owned(),
        );
        check(
            self.message_bytes_max > 0,
            "message_bytes_max must be greater than 0".to_owned(),
        );
        check(
            self.send_queue_bytes_max > 0,
            "send_queue_bytes_max must be greater than 0".to_owned(),
        );

        check(
            (1..=CONNECTIONS_PER_SHARD_MAX).contains(&self.connections_per_shard_max),
            format!(
                "connections_per_shard_max ({}) must be between 1 and {CONNECTIONS_PER_SHARD_MAX} (the kernel's limit on a ring's fixed-file table)",
                self.connections_per_shard_max
            ),
        );

        check(
            self.recv_buffer_bytes > 0,
            "recv_buffer_bytes must be greater than 0".to_owned(),
        );
        check(
            self.recv_buffer_count.is_power_of_two() && self.recv_buffer_count <= RECV_BUFFER_COUNT_MAX,
            format!(
                "recv_buffer_count ({}) must be a power of two between 1 and {RECV_BUFFER_COUNT_MAX} (the kernel's limit for a provided-buffer ring)",
                self.recv_buffer_count
            ),
        );

        check(
            self.ring_sq_entries.is_power_of_two() && self.ring_sq_entries <= RING_SQ_ENTRIES_MAX,
            format!(
                "ring_sq_entries ({}) must be a power of two between 1 and {RING_SQ_ENTRIES_MAX}",
                self.ring_sq_entries
            ),
        );
        check(
            self.ring_cq_entries.is_power_of_two() && self.ring_cq_entries <= RING_CQ_ENTRIES_MAX,
            format!(
                "ring_cq_entries ({}) must be a power of two between 1 and {RING_CQ_ENTRIES_MAX}",
                self.ring_cq_entries
            ),
        );
        check(
            self.ring_cq_entries >= self.ring_sq_entries,
            format!(
                "ring_cq_entries ({}) must be at least ring_sq_entries ({})",
                self.ring_cq_entries, self.ring_sq_entries
            ),
        );

        if self.dev && !self.dev_allow_remote {
            for (key, addr) in [
                ("listen", Some(self.listen)),
                ("console_listen", self.console_listen),
                ("tls_listen", self.tls_listen),
            ] {
                let Some(addr) = addr else { continue };
                check(
                    addr.ip().is_loopback(),
                    format!(
                        "dev serves GET /dev/token, which mints a token for any user to whoever asks, but {key} ({addr}) \
                         is not a loopback address, so anyone who can reach it could act as any user; \
                         listen on 127.0.0.1 or [::1] (--dev alone defaults to {DEV_LISTEN_DEFAULT}), \
                         or add --dev-allow-remote if every host that can reach it may (never in production)"
                    ),
                );
            }
        }

        if let Err(redis_problems) = crate::cluster::ClusterSettings::from_config(self) {
            problems.extend(redis_problems);
        }

        if let Err(why) = check_log_filter(&self.log_level) {
            problems.push(format!(
                "log_level ({:?}) is not a valid filter: {why}; use off, error, warn, info, debug or trace, \
                 optionally with per-module directives like \"info,pushgate::ws=debug\"",
                self.log_level
            ));
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

/// Checks a log filter the way tracing's `EnvFilter` will parse it, and also
/// refuses a bare word that is not a level: `EnvFilter` would take `inf` as a
/// module name and silently log nothing of ours.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    if filter.trim().is_empty() {
        return Err("it is empty".to_owned());
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare_word = !directive.contains(['=', ':', '[', '{']);
        if bare_word && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            return Err(format!("{directive:?} is not a level"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Line `line` (1-based) of `text`, trimmed and cut to a readable length.
fn source_line(text: &str, line: usize) -> String {
    const CHARS_MAX: usize = 60;
    let whole = text
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or("")
        .trim();
    if whole.chars().count() > CHARS_MAX {
        format!("{}…", whole.chars().take(CHARS_MAX).collect::<String>())
    } else {
        whole.to_owned()
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[path = "config_args.rs"]
mod args;
pub use args::ServeArgs;

/// Builds the validated config: defaults ← `--config` file ← env ← flags.
///
/// Under `dev` without `dev_allow_remote`, a `listen` that no file, variable
/// or flag chose becomes [`DEV_LISTEN_DEFAULT`] instead of 0.0.0.0:8080, so
/// `pushgate serve --dev` works on a fresh machine and answers only it.
pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    let (mut config, file_sets_listen) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let config = Config::from_toml_str(&text, path)?;
            // It parsed as a Config, so it parses as a table.
            let sets_listen = toml::from_str::<toml::Table>(&text)
                .is_ok_and(|table| table.contains_key("listen"));
            (config, sets_listen)
        }
        None => (Config::default(), false),
    };
    args.apply(&mut config);
    let listen_chosen = file_sets_listen || args.listen.is_some();
    if config.dev && !config.dev_allow_remote && !listen_chosen {
        config.listen = DEV_LISTEN_DEFAULT;
    }
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
