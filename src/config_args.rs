//! `pushgate serve`'s flags and environment variables: one per [`Config`]
//! field, laid over the config file's values.

use super::*;

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

    /// Address clients connect to [default: 0.0.0.0:8080; 127.0.0.1:8080 with --dev]
    #[arg(long, value_name = "ADDR", env = "PUSHGATE_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Listen backlog of each shard's client listener; the kernel caps it at net.core.somaxconn [default: 65535]
    #[arg(long, value_name = "N", env = "PUSHGATE_LISTEN_BACKLOG")]
    pub listen_backlog: Option<u32>,

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

    /// Keepalive profile of --listen: browser or sleeping-console [default: browser]
    #[arg(long, value_name = "PROFILE", env = "PUSHGATE_LISTEN_PROFILE")]
    pub listen_profile: Option<KeepaliveProfile>,

    /// A second client address, for devices that sleep [default: none]
    #[arg(long, value_name = "ADDR", env = "PUSHGATE_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,

    /// A client address that speaks TLS (wss://, https://); needs --tls-cert-file and --tls-key-file [default: none]
    #[arg(long, value_name = "ADDR", env = "PUSHGATE_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,

    /// PEM certificate chain for --tls-listen, leaf first; reloaded on SIGHUP [default: none]
    #[arg(long, value_name = "FILE", env = "PUSHGATE_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for --tls-cert-file [default: none]
    #[arg(long, value_name = "FILE", env = "PUSHGATE_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Keepalive profile of --console-listen [default: sleeping-console]
    #[arg(long, value_name = "PROFILE", env = "PUSHGATE_CONSOLE_LISTEN_PROFILE")]
    pub console_listen_profile: Option<KeepaliveProfile>,

    /// Sleeping-console profile: disconnect after this much silence [default: 21600000 (6 h)]
    #[arg(long, value_name = "MS", env = "PUSHGATE_CONSOLE_IDLE_TIMEOUT_MS")]
    pub console_idle_timeout_ms: Option<u64>,

    /// Sleeping-console profile: idle seconds before the first TCP keepalive probe [default: 300]
    #[arg(long, value_name = "S", env = "PUSHGATE_TCP_KEEPALIVE_IDLE_S")]
    pub tcp_keepalive_idle_s: Option<u32>,

    /// Sleeping-console profile: seconds between TCP keepalive probes [default: 60]
    #[arg(long, value_name = "S", env = "PUSHGATE_TCP_KEEPALIVE_INTERVAL_S")]
    pub tcp_keepalive_interval_s: Option<u32>,

    /// Sleeping-console profile: unanswered probes before the connection is dropped [default: 5]
    #[arg(long, value_name = "N", env = "PUSHGATE_TCP_KEEPALIVE_COUNT")]
    pub tcp_keepalive_count: Option<u32>,

    /// Sleeping-console profile: how long sent data may go unacknowledged [default: 600000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_TCP_USER_TIMEOUT_MS")]
    pub tcp_user_timeout_ms: Option<u32>,

    /// Admin HTTP address: health, readiness, metrics, push API [default: 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR", env = "PUSHGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Drain: connections closed per second with 1012 [default: 1000]
    #[arg(long, value_name = "N", env = "PUSHGATE_DRAIN_RATE_PER_S")]
    pub drain_rate_per_s: Option<u32>,

    /// Drain: exit after this long even if connections remain [default: 600000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_DRAIN_DEADLINE_MS")]
    pub drain_deadline_ms: Option<u64>,

    /// Client connections over all shards; 0 = the shards' capacity [default: 0]
    #[arg(long, value_name = "N", env = "PUSHGATE_CONNECTIONS_MAX")]
    pub connections_max: Option<u64>,

    /// Upgrades in progress per shard before refusing new connections [default: 4096]
    #[arg(long, value_name = "N", env = "PUSHGATE_HANDSHAKES_MAX")]
    pub handshakes_max: Option<u32>,

    /// New client connections per second over all shards; 0 = unlimited [default: 0]
    #[arg(long, value_name = "N", env = "PUSHGATE_ACCEPT_RATE_PER_S")]
    pub accept_rate_per_s: Option<u32>,

    /// RSS above which /readyz fails and new connections are refused; 0 = 90% of RAM [default: 0]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_MEMORY_HIGH_WATER_BYTES")]
    pub memory_high_water_bytes: Option<u64>,

    /// How long each user's notifications are kept for resume [default: 120000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_MAILBOX_RETENTION_MS")]
    pub mailbox_retention_ms: Option<u64>,

    /// Notifications kept per user for resume [default: 64]
    #[arg(long, value_name = "N", env = "PUSHGATE_MAILBOX_ENTRIES_MAX")]
    pub mailbox_entries_max: Option<usize>,

    /// Largest push request frame on the Unix sockets [default: 1048576]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_PUSH_FRAME_BYTES_MAX")]
    pub push_frame_bytes_max: Option<usize>,

    /// A publisher must finish a frame it started within this long [default: 10000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_PUSH_FRAME_TIMEOUT_MS")]
    pub push_frame_timeout_ms: Option<u64>,

    /// Users kept only for their mailbox, over all shards [default: 1000000]
    #[arg(long, value_name = "N", env = "PUSHGATE_OFFLINE_USERS_MAX")]
    pub offline_users_max: Option<u64>,

    /// Bytes of notifications kept for resume, over all shards [default: 1073741824]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_STORED_BYTES_MAX")]
    pub stored_bytes_max: Option<u64>,

    /// Admin HTTP connections open at once, over all shards [default: 1024]
    #[arg(long, value_name = "N", env = "PUSHGATE_ADMIN_CONNECTIONS_MAX")]
    pub admin_connections_max: Option<u32>,

    /// Push-socket connections open at once, over all shards [default: 1024]
    #[arg(long, value_name = "N", env = "PUSHGATE_PUBLISHER_CONNECTIONS_MAX")]
    pub publisher_connections_max: Option<u32>,

    /// Longest a device's new notifications may wait for more while a shard is saturated; 0 = never [default: 40]
    #[arg(long, value_name = "MS", env = "PUSHGATE_SEND_COALESCE_MS_MAX")]
    pub send_coalesce_ms_max: Option<u64>,

    /// Compress messages with permessage-deflate for clients that offer it (no context takeover)
    #[arg(long, env = "PUSHGATE_DEFLATE")]
    pub deflate: bool,

    /// With --deflate, messages shorter than this are sent uncompressed [default: 1024]
    #[arg(long, value_name = "BYTES", env = "PUSHGATE_DEFLATE_THRESHOLD_BYTES")]
    pub deflate_threshold_bytes: Option<usize>,

    /// How long a closing connection may take to send its goodbye [default: 2000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_CLOSE_LINGER_MS")]
    pub close_linger_ms: Option<u64>,

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

    /// Redis Cluster seed node (host:port or redis://host:port); repeat for more seeds, or
    /// comma-separate them in the variable. Hosts sharing Redis form one gateway [default: none]
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "PUSHGATE_REDIS_NODES",
        value_delimiter = ','
    )]
    pub redis_nodes: Vec<String>,

    /// One standalone Redis instead of a cluster: redis://[user:pass@]host:port[/db] [default: none]
    #[arg(long, value_name = "URL", env = "PUSHGATE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// This host's stable, unique name in the fleet; required with Redis [default: none]
    #[arg(long, value_name = "ID", env = "PUSHGATE_HOST_ID")]
    pub host_id: Option<String>,

    /// Redis ACL user name [default: none]
    #[arg(long, value_name = "NAME", env = "PUSHGATE_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// File whose first line is the Redis password [default: none]
    #[arg(long, value_name = "FILE", env = "PUSHGATE_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// How long a host's claim on its host_id outlives its last heartbeat [default: 15000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_REDIS_HOST_TTL_MS")]
    pub redis_host_ttl_ms: Option<u64>,

    /// Connect and response timeout of each Redis call [default: 2000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,

    /// Least time between two rounds of each shard's check of its devices against the history in Redis
    /// (catches a lost doorbell no later push reveals) [default: 5000]
    #[arg(long, value_name = "MS", env = "PUSHGATE_REDIS_CHECK_INTERVAL_MS")]
    pub redis_check_interval_ms: Option<u64>,

    /// Development mode: GET /dev/token?user=U mints a token for any user to whoever asks (for the demo
    /// page); never in production. Listens on 127.0.0.1:8080 unless --listen is given, and refuses a
    /// non-loopback --listen / --console-listen unless --dev-allow-remote
    #[arg(long, env = "PUSHGATE_DEV")]
    pub dev: bool,

    /// With --dev: allow non-loopback client listeners, so every host that can reach them can mint
    /// tokens for any user (a trusted lab network only)
    #[arg(long, env = "PUSHGATE_DEV_ALLOW_REMOTE")]
    pub dev_allow_remote: bool,

    /// Take over from the pushgate running on the same run directory (what
    /// `pushgate upgrade` starts): its listeners move here without refusing
    /// a connection, then it drains onto this process
    #[arg(long)]
    pub takeover: bool,

    /// Log line format [default: text]
    #[arg(long, value_name = "FORMAT", env = "PUSHGATE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, e.g. info or info,pushgate=debug; RUST_LOG overrides it [default: info]
    #[arg(long, value_name = "FILTER", env = "PUSHGATE_LOG_LEVEL")]
    pub log_level: Option<String>,
}

impl ServeArgs {
    /// Overwrites `config` with every setting given as a flag or env var.
    pub(super) fn apply(&self, config: &mut Config) {
        macro_rules! overlay {
            ($($field:ident),* $(,)?) => {
                $(if let Some(value) = &self.$field {
                    config.$field = value.clone();
                })*
            };
        }
        overlay!(
            listen,
            listen_backlog,
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
            listen_profile,
            console_listen_profile,
            console_idle_timeout_ms,
            tcp_keepalive_idle_s,
            tcp_keepalive_interval_s,
            tcp_keepalive_count,
            tcp_user_timeout_ms,
            admin_listen,
            drain_rate_per_s,
            drain_deadline_ms,
            connections_max,
            handshakes_max,
            accept_rate_per_s,
            memory_high_water_bytes,
            mailbox_retention_ms,
            mailbox_entries_max,
            push_frame_bytes_max,
            push_frame_timeout_ms,
            offline_users_max,
            stored_bytes_max,
            admin_connections_max,
            publisher_connections_max,
            close_linger_ms,
            send_coalesce_ms_max,
            deflate_threshold_bytes,
            connections_per_shard_max,
            recv_buffer_bytes,
            recv_buffer_count,
            ring_sq_entries,
            ring_cq_entries,
            log_format,
            log_level,
            redis_host_ttl_ms,
            redis_timeout_ms,
            redis_check_interval_ms,
        );
        if !self.redis_nodes.is_empty() {
            config.redis_nodes = self.redis_nodes.clone();
        }
        for (field, value) in [
            (&mut config.redis_url, &self.redis_url),
            (&mut config.host_id, &self.host_id),
            (&mut config.redis_username, &self.redis_username),
        ] {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        if let Some(file) = &self.redis_password_file {
            config.redis_password_file = Some(file.clone());
        }
        if let Some(secret_file) = &self.secret_file {
            config.secret_file = Some(secret_file.clone());
        }
        if self.dev {
            config.dev = true;
        }
        if self.dev_allow_remote {
            config.dev_allow_remote = true;
        }
        if self.deflate {
            config.deflate = true;
        }
        if let Some(console_listen) = self.console_listen {
            config.console_listen = Some(console_listen);
        }
        if let Some(tls_listen) = self.tls_listen {
            config.tls_listen = Some(tls_listen);
        }
        if let Some(file) = &self.tls_cert_file {
            config.tls_cert_file = Some(file.clone());
        }
        if let Some(file) = &self.tls_key_file {
            config.tls_key_file = Some(file.clone());
        }
    }
}
