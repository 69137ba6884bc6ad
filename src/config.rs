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

/// Most shards one process runs; far more than cores on any machine, so a
/// larger number is a typo.
pub const SHARDS_MAX: usize = 1024;
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
    /// How long each user's notifications are kept for resume.
    pub mailbox_retention_ms: u64,
    /// How many notifications each user keeps for resume (oldest dropped).
    pub mailbox_entries_max: usize,
    /// Largest push request frame on the Unix sockets.
    pub push_frame_bytes_max: usize,
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
            mailbox_retention_ms: 120_000,
            mailbox_entries_max: 64,
            push_frame_bytes_max: 1 << 20,
            connections_per_shard_max: 200_000,
            recv_buffer_bytes: 4096,
            recv_buffer_count: 2048,
            ring_sq_entries: 1024,
            ring_cq_entries: 16_384,
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
            self.mailbox_retention_ms > 0 && self.mailbox_entries_max > 0,
            "mailbox_retention_ms and mailbox_entries_max must be greater than 0: \
             a device that reconnects resumes from the mailbox"
                .to_owned(),
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

/// `pushgate serve` options. Every [`Config`] field has a flag and an
/// environment variable; unset ones fall back to the config file, then to the
/// default shown.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (same names, snake_case);
    /// environment variables and flags override it
    #[arg(long, value_name = "FILE", env = "PUSHGATE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    pub print_config: bool,

    /// Address clients connect to [default: 0.0.0.0:8080]
    #[arg(long, value_name = "ADDR", env = "PUSHGATE_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Shard threads, one io_uring ring each [default: available cores]
    #[arg(long, value_name = "N", env = "PUSHGATE_SHARDS")]
    pub shards: Option<usize>,

    // Help as an attribute, not a doc comment: rustdoc would read `<uid>` as
    // an HTML tag.
    #[arg(
        long,
        value_name = "DIR",
        env = "PUSHGATE_RUN_DIR",
        help = "Directory for the generated secret and push sockets \
                [default: $XDG_RUNTIME_DIR/pushgate, else /tmp/pushgate-<uid>]"
    )]
    pub run_dir: Option<PathBuf>,

    #[arg(
        long,
        value_name = "FILE",
        env = "PUSHGATE_SECRET_FILE",
        help = "File holding the HS256 token secret (≥ 32 bytes) \
                [default: <run-dir>/secret, created if missing]"
    )]
    pub secret_file: Option<PathBuf>,

    /// Time allowed from accept to a completed upgrade [default: 10000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_HANDSHAKE_TIMEOUT_MS")]
    pub handshake_timeout_ms: Option<u64>,

    /// Disconnect a client silent this long [default: 120000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,

    /// Ping a quiet client this often; 0 sends no pings [default: 30000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_PING_INTERVAL_MS")]
    pub ping_interval_ms: Option<u64>,

    /// Largest upgrade request accepted [default: 8192]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_HEADER_BYTES_MAX")]
    pub header_bytes_max: Option<usize>,

    /// Largest client frame payload [default: 65536]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_FRAME_PAYLOAD_BYTES_MAX")]
    pub frame_payload_bytes_max: Option<u64>,

    /// Largest reassembled client message [default: 65536]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_MESSAGE_BYTES_MAX")]
    pub message_bytes_max: Option<u64>,

    /// Unsent bytes per connection before it is closed as a slow consumer [default: 262144]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_SEND_QUEUE_BYTES_MAX")]
    pub send_queue_bytes_max: Option<usize>,

    /// Kernel send buffer per client socket (SO_SNDBUF); 0 = kernel autotuning [default: 65536]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_SOCKET_SEND_BUFFER_BYTES")]
    pub socket_send_buffer_bytes: Option<u32>,

    /// How long each user's notifications are kept for resume [default: 120000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_MAILBOX_RETENTION_MS")]
    pub mailbox_retention_ms: Option<u64>,

    /// Notifications kept per user for resume [default: 64]
    #[arg(long, value_name = "N", env = "PUSHGATE_MAILBOX_ENTRIES_MAX")]
    pub mailbox_entries_max: Option<usize>,

    /// Largest push request frame on the Unix sockets [default: 1048576]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_PUSH_FRAME_BYTES_MAX")]
    pub push_frame_bytes_max: Option<usize>,

    /// Connections per shard; sizes each ring's fixed-file table [default: 200000]
    #[arg(long, value_name = "N", env = "PUSHGATE_CONNECTIONS_PER_SHARD_MAX")]
    pub connections_per_shard_max: Option<u32>,

    /// Size of each receive buffer [default: 4096]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_RECV_BUFFER_BYTES")]
    pub recv_buffer_bytes: Option<u32>,

    /// Receive buffers per shard, a power of two ≤ 32768 [default: 2048]
    #[arg(long, value_name = "N", env = "PUSHGATE_RECV_BUFFER_COUNT")]
    pub recv_buffer_count: Option<u16>,

    /// Submission queue entries per ring, a power of two [default: 1024]
    #[arg(long, value_name = "N", env = "PUSHGATE_RING_SQ_ENTRIES")]
    pub ring_sq_entries: Option<u32>,

    /// Completion queue entries per ring, a power of two ≥ sq entries [default: 16384]
    #[arg(long, value_name = "N", env = "PUSHGATE_RING_CQ_ENTRIES")]
    pub ring_cq_entries: Option<u32>,

    /// Log line format [default: text]
    #[arg(long, value_name = "FORMAT", env = "PUSHGATE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, e.g. info or info,pushgate=debug; RUST_LOG overrides it [default: info]
    #[arg(long, value_name = "FILTER", env = "PUSHGATE_LOG_LEVEL")]
    pub log_level: Option<String>,
}

impl ServeArgs {
    /// Overwrites `config` with every setting given as a flag or env var.
    fn apply(&self, config: &mut Config) {
        macro_rules! overlay {
            ($($field:ident),* $(,)?) => {
                $(if let Some(value) = &self.$field {
                    config.$field = value.clone();
                })*
            };
        }
        overlay!(
            listen,
            shards,
            run_dir,
            handshake_timeout_ms,
            idle_timeout_ms,
            ping_interval_ms,
            header_bytes_max,
            frame_payload_bytes_max,
            message_bytes_max,
            send_queue_bytes_max,
            socket_send_buffer_bytes,
            mailbox_retention_ms,
            mailbox_entries_max,
            push_frame_bytes_max,
            connections_per_shard_max,
            recv_buffer_bytes,
            recv_buffer_count,
            ring_sq_entries,
            ring_cq_entries,
            log_format,
            log_level,
        );
        if let Some(secret_file) = &self.secret_file {
            config.secret_file = Some(secret_file.clone());
        }
    }
}

/// Builds the validated config: defaults ← `--config` file ← env ← flags.
pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    args.apply(&mut config);
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
