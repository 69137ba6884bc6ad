//! `pushgate` command line. Thin on purpose: parse, build the config, hand
//! off to the library, and turn errors into a message and an exit status.
//!
//! Exit status: 0 success, 1 the server or command failed at run time, 2 the
//! invocation or configuration is wrong (as clap does for bad flags), so a
//! supervisor can tell "restarting will not help" apart; 70 a thread of a
//! running server panicked (`server::PANIC_EXIT_STATUS`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{ArgGroup, Parser, Subcommand};
use pushgate::auth::{self, Secret};
use pushgate::config::{self, Config, LogFormat, ServeArgs};
use pushgate::push::client::{
    check_data, ndjson_line_bytes_max, Client, ClientError, NdjsonPushes, PushOutcome,
};
use pushgate::server::ServeError;
use tracing_subscriber::EnvFilter;

/// The allocator: jemalloc, whose background threads give freed memory back
/// to the kernel about a second after it was freed, so RSS follows what
/// the server holds. glibc's malloc kept what departed users and
/// connections had used in its arenas. Why jemalloc and these settings,
/// with the measurements: `pushgate::server::memory` and the README
/// ("Memory given back").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A C string pointer that may live in a static.
#[repr(transparent)]
pub struct ConfPtr(*const std::ffi::c_char);

// SAFETY: it points at a string literal, immutable for the whole run, so
// any thread may read it.
unsafe impl Sync for ConfPtr {}

/// jemalloc's settings, read once when it starts (`malloc_conf`, under the
/// `_rjem_` prefix of tikv-jemalloc-sys's build; the environment variable
/// `_RJEM_MALLOC_CONF` can override them): background threads purge freed
/// ("dirty") pages after 1 s instead of the default 10 s, straight to the
/// kernel (no "muzzy" stage, as jemalloc's default).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: ConfPtr =
    ConfPtr(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// Push-notification gateway: millions of WebSocket connections on per-core
/// io_uring shards.
#[derive(Parser)]
#[command(name = "pushgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway
    // Boxed: ServeArgs has a field per setting and would make every
    // command as large (clippy::large_enum_variant).
    Serve(Box<ServeArgs>),
    /// Print a client token (HS256 JWT) signed with the server's secret
    Token(TokenArgs),
    /// Push a notification to users of a running gateway
    ///
    /// Prints one JSON line, {"delivered":N,"stored":N,"rejected":N}, summed
    /// over the users: delivered = online, sent to their devices now; stored
    /// = offline, kept for their next connection; rejected = invalid user ID
    /// or server overloaded.
    Push(PushArgs),
    /// Print connection and user counts of a running gateway, or one user's
    /// presence
    ///
    /// Prints one JSON line, the totals after the shards:
    /// {"shards":[{"shard":0,"connections":N,"users_online":N,"mailboxes":N},…],"connections":N,"users_online":N}
    /// or, with --user, {"user":"U","online":true,"devices":N}.
    Status(StatusArgs),
    /// Drain a running gateway: stop accepting clients, close them with 1012
    /// at a fixed rate (so they reconnect to the successor a few at a time),
    /// keep delivering to those not yet closed, exit when empty
    ///
    /// Prints {"draining":true,"rate_per_s":N}. SIGTERM does the same at the
    /// configured drain_rate_per_s.
    Drain(DrainArgs),
    /// Replace the running gateway with the binary now at its path, live
    ///
    /// The running process starts `<its path> serve <its arguments>
    /// --takeover`, hands it the listening sockets (no connection attempt is
    /// refused or reset), stops accepting, and moves its live connections
    /// to it with their state (or, with --drain or on a kernel without
    /// IORING_OP_FIXED_FD_INSTALL, drains them onto it). Prints one JSON line per step, then
    /// {"op":"outcome","ok":…,"message":…,"successor_pid":…}; exits 0 if the
    /// successor took over, 1 if not (the running process then keeps
    /// serving, and says why). For systemd's ExecReload=.
    Upgrade(UpgradeArgs),
}

#[derive(clap::Args)]
struct UpgradeArgs {
    /// Seconds to wait for the outcome
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 120)]
    timeout_s: u64,

    /// Move only the listeners and drain the connections at
    /// drain_rate_per_s (each device reconnects once) instead of moving
    /// them live
    #[arg(long)]
    drain: bool,

    #[command(flatten)]
    location: RunDirArgs,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// User ID to put in the token's `sub` claim
    #[arg(
        long,
        value_name = "USER",
        required_unless_present = "admin",
        conflicts_with = "admin"
    )]
    user: Option<String>,

    /// Mint a token for the admin API (/v1/push, /v1/presence, /v1/drain) instead
    /// (aud "pushgate-admin"; client listeners refuse it, as the admin API
    /// refuses client tokens)
    #[arg(long)]
    admin: bool,

    /// Seconds until the token expires
    #[arg(
        long = "ttl",
        value_name = "SECONDS",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    ttl_s: u64,

    /// Config file `serve` uses, to find the same run_dir / secret_file
    #[arg(long, value_name = "FILE", env = "PUSHGATE_CONFIG")]
    config: Option<PathBuf>,

    /// Directory holding the generated secret, as for `serve`
    /// [default: $XDG_RUNTIME_DIR/pushgate, else /tmp/pushgate-<uid>]
    #[arg(long, value_name = "DIR", env = "PUSHGATE_RUN_DIR")]
    run_dir: Option<PathBuf>,

    /// File holding the HS256 secret, as for `serve` [default: <run-dir>/secret, created if missing]
    #[arg(long, value_name = "FILE", env = "PUSHGATE_SECRET_FILE")]
    secret_file: Option<PathBuf>,
}

/// Where to find a running gateway's push sockets: the same run_dir `serve`
/// resolves from the same flags, environment and config file.
#[derive(clap::Args)]
struct RunDirArgs {
    /// Config file `serve` uses, to find the same run_dir
    #[arg(long, value_name = "FILE", env = "PUSHGATE_CONFIG")]
    config: Option<PathBuf>,

    // Help as an attribute, not a doc comment: rustdoc would read `<uid>` as
    // an HTML tag.
    #[arg(
        long,
        value_name = "DIR",
        env = "PUSHGATE_RUN_DIR",
        help = "Directory holding the push sockets (shard-<i>.sock), as for `serve` \
                [default: $XDG_RUNTIME_DIR/pushgate, else /tmp/pushgate-<uid>]"
    )]
    run_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
#[command(group(
    ArgGroup::new("recipients")
        .required(true)
        .args(["users", "all", "ndjson"])
))]
struct PushArgs {
    /// Deliver to this user's devices (kept for them while offline); repeat
    /// for more users
    #[arg(long = "user", value_name = "USER")]
    users: Vec<String>,

    /// Deliver to every connected user instead
    #[arg(long)]
    all: bool,

    /// Read many pushes from stdin, one JSON object a line:
    /// {"users":["USER",…],"data":<any JSON>}; blank lines are skipped
    #[arg(long)]
    ndjson: bool,

    /// The notification: one JSON value, delivered to devices as is
    #[arg(
        value_name = "DATA",
        required_unless_present = "ndjson",
        conflicts_with = "ndjson"
    )]
    data: Option<String>,

    #[command(flatten)]
    location: RunDirArgs,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Print this user's presence instead: {"user":…,"online":…,"devices":…}
    #[arg(long, value_name = "USER")]
    user: Option<String>,

    #[command(flatten)]
    location: RunDirArgs,
}

#[derive(clap::Args)]
struct DrainArgs {
    /// Connections closed per second over all shards [default: the server's drain_rate_per_s]
    #[arg(long, value_name = "N")]
    rate: Option<u32>,

    #[command(flatten)]
    location: RunDirArgs,
}

/// A failure worth one line on stderr, with the exit status it maps to.
struct Failure {
    message: String,
    status: u8,
}

impl Failure {
    /// The invocation or configuration is wrong.
    fn usage(message: impl ToString) -> Failure {
        Failure {
            message: message.to_string(),
            status: 2,
        }
    }

    /// Something failed while running.
    fn runtime(message: impl ToString) -> Failure {
        Failure {
            message: message.to_string(),
            status: 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Token(args) => token(&args),
        Command::Push(args) => push(&args),
        Command::Status(args) => status(&args),
        Command::Drain(args) => drain(&args),
        Command::Upgrade(args) => upgrade(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // Display only: the errors are written to tell the operator what
            // to do, and a backtrace would bury that.
            eprintln!("pushgate: error: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

fn serve(args: &ServeArgs) -> Result<(), Failure> {
    let config = config::load(args).map_err(Failure::usage)?;
    if args.print_config {
        print!("{}", config.to_toml().map_err(Failure::usage)?);
        return Ok(());
    }
    init_tracing(config.log_format, &config.log_level)?;
    pushgate::server::serve_with(config, args.takeover).map_err(|e| match e {
        // A secret or run directory that cannot be trusted is fixed by the
        // operator (the message says how), not by restarting.
        ServeError::Secret(_) | ServeError::Tls(_) => Failure::usage(e),
        // A duplicate host_id or an unreadable Redis password file, likewise.
        ServeError::Cluster(pushgate::cluster::StartError::Config(_)) => Failure::usage(e),
        _ => Failure::runtime(e),
    })
}

fn token(args: &TokenArgs) -> Result<(), Failure> {
    let config = load_config_like_serve(
        args.config.as_deref(),
        args.run_dir.as_deref(),
        args.secret_file.as_deref(),
    )?;
    if let Some(user) = &args.user {
        auth::check_user_id(user).map_err(|e| {
            Failure::usage(format!("--user {user:?} cannot be used: {}", e.reason()))
        })?;
    }
    // Warnings (loose secret file mode) and the note that a new secret was
    // generated go to stderr, leaving stdout for the token alone.
    init_tracing(LogFormat::Text, "info")?;

    // As for serve, an untrusted run directory or generated secret is the
    // operator's to fix (exit 2); a --secret-file may be another user's
    // (root minting with the service's secret), as minting trusts nothing.
    let secret = Secret::load_to_mint(&config.run_dir, config.secret_file.as_deref())
        .map_err(Failure::usage)?;
    let now_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Failure::runtime("the system clock is before 1970; set the clock and retry"))?
        .as_secs();
    let token = match &args.user {
        Some(user) => auth::mint(&secret, user, args.ttl_s, now_unix_s),
        None => auth::mint_admin(&secret, args.ttl_s, now_unix_s),
    };
    println!("{token}");
    Ok(())
}

/// Resolves run_dir / secret_file through the same precedence as `serve`
/// (defaults ← config file ← env ← flags), so every command finds the same
/// secret and push sockets as the server.
fn load_config_like_serve(
    config_file: Option<&Path>,
    run_dir: Option<&Path>,
    secret_file: Option<&Path>,
) -> Result<Config, Failure> {
    let serve_args = ServeArgs {
        config: config_file.map(Path::to_owned),
        run_dir: run_dir.map(Path::to_owned),
        secret_file: secret_file.map(Path::to_owned),
        ..ServeArgs::default()
    };
    config::load(&serve_args).map_err(Failure::usage)
}

/// Connects to the gateway `serve` would run with these settings, with its
/// push frame limit, so what the server would refuse is refused here first.
fn connect(location: &RunDirArgs) -> Result<Client, Failure> {
    let config = load_config_like_serve(
        location.config.as_deref(),
        location.run_dir.as_deref(),
        None,
    )?;
    let mut client = Client::connect(&config.run_dir).map_err(client_failure)?;
    client.set_frame_body_bytes_max(config.push_frame_bytes_max);
    Ok(client)
}

/// Bad input is a usage error (retrying will not help); anything else
/// happened while talking to the server.
fn client_failure(error: ClientError) -> Failure {
    match error {
        ClientError::InvalidData(_) | ClientError::TooLarge { .. } => Failure::usage(error),
        _ => Failure::runtime(error),
    }
}

fn push(args: &PushArgs) -> Result<(), Failure> {
    // clap guarantees DATA unless --ndjson.
    let data = args.data.as_deref().unwrap_or_default();
    if !args.ndjson {
        // Before connecting: a typo in DATA is the thing to report, whether
        // or not the server is up.
        check_data(data).map_err(client_failure)?;
    }
    let mut client = connect(&args.location)?;
    let outcome = if args.ndjson {
        push_ndjson(&mut client)?
    } else if args.all {
        client.broadcast(data).map_err(client_failure)?
    } else {
        let users: Vec<&str> = args.users.iter().map(String::as_str).collect();
        client.push(&users, data).map_err(client_failure)?
    };
    print_json(&outcome)
}

/// Streams stdin into `push_many`, so input of any length is sent with
/// bounded memory. A bad line ends the input there: the pushes before it
/// have gone out by then, and the error says so.
fn push_ndjson(client: &mut Client) -> Result<PushOutcome, Failure> {
    let line_bytes_max = ndjson_line_bytes_max(client.frame_body_bytes_max());
    let mut pushes = NdjsonPushes::new(std::io::stdin().lock(), line_bytes_max);
    let outcome = client.push_many(&mut pushes).map_err(client_failure)?;
    match pushes.error {
        None => Ok(outcome),
        Some(error) => {
            let sent = serde_json::to_string(&outcome).expect("counts serialise");
            Err(client_failure(ClientError::InvalidData(format!(
                "stdin {error}; stopped there — the {} pushes before it were sent: {sent}",
                pushes.items
            ))))
        }
    }
}

/// `pushgate status` output: every shard, then the totals.
#[derive(serde::Serialize)]
struct StatusOutput {
    shards: Vec<ShardOutput>,
    connections: u64,
    users_online: u64,
}

#[derive(serde::Serialize)]
struct ShardOutput {
    shard: u32,
    connections: u64,
    users_online: u64,
    mailboxes: u64,
}

fn drain(args: &DrainArgs) -> Result<(), Failure> {
    let mut client = connect(&args.location)?;
    let rate_per_s = client
        .drain(args.rate.unwrap_or(0))
        .map_err(client_failure)?;
    println!(r#"{{"draining":true,"rate_per_s":{rate_per_s}}}"#);
    Ok(())
}

/// Asks the running gateway to start its successor and prints each step.
fn upgrade(args: &UpgradeArgs) -> Result<(), Failure> {
    use pushgate::takeover::{self, wire};
    let config = load_config_like_serve(
        args.location.config.as_deref(),
        args.location.run_dir.as_deref(),
        None,
    )?;
    let path = takeover::socket_path(&config.run_dir);
    let conn = wire::connect(&path).map_err(|e| {
        Failure::runtime(format!(
            "no running pushgate at {} ({e}): is it running with this run directory?",
            path.display()
        ))
    })?;
    conn.send(&wire::Message::Upgrade { drain: args.drain }, &[])
        .map_err(Failure::runtime)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout_s);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let msg =
            match conn.recv(Some(left)) {
                Ok(Some((msg, _))) => msg,
                Ok(None) => return Err(Failure::runtime(
                    "the running pushgate closed the conversation without an outcome; see its log",
                )),
                Err(e) => return Err(Failure::runtime(format!("{e}; see the server's log"))),
            };
        print_json(&msg)?;
        match msg {
            wire::Message::Outcome { ok: true, .. } => return Ok(()),
            wire::Message::Outcome { message, .. } | wire::Message::Refused { reason: message } => {
                return Err(Failure::runtime(format!("upgrade failed: {message}")))
            }
            _ => {}
        }
    }
}

fn status(args: &StatusArgs) -> Result<(), Failure> {
    let mut client = connect(&args.location)?;
    if let Some(user) = &args.user {
        let presence = client.presence(user).map_err(client_failure)?;
        return print_json(&presence);
    }
    let shards: Vec<ShardOutput> = client
        .status()
        .map_err(client_failure)?
        .into_iter()
        .map(|s| ShardOutput {
            shard: s.shard,
            connections: s.connections,
            users_online: s.users_online,
            mailboxes: s.mailboxes,
        })
        .collect();
    print_json(&StatusOutput {
        connections: shards.iter().map(|s| s.connections).sum(),
        users_online: shards.iter().map(|s| s.users_online).sum(),
        shards,
    })
}

/// One compact JSON line on stdout, for scripts. A closed stdout is an
/// error, not a panic as `println!` would make it.
fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let mut line = serde_json::to_string(value).expect("output types serialise");
    line.push('\n');
    std::io::stdout()
        .lock()
        .write_all(line.as_bytes())
        .map_err(|e| Failure::runtime(format!("could not write the result to stdout: {e}")))
}

/// Logs to stderr in the configured format. `RUST_LOG`, when set, replaces
/// the configured level, so a one-off debug run needs no config change.
fn init_tracing(format: LogFormat, level: &str) -> Result<(), Failure> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(rust_log) if !rust_log.trim().is_empty() => {
            EnvFilter::try_new(&rust_log).map_err(|e| {
                Failure::usage(format!(
                    "RUST_LOG ({rust_log:?}) is not a valid filter: {e}"
                ))
            })?
        }
        _ => EnvFilter::try_new(level).map_err(|e| {
            Failure::usage(format!("log_level ({level:?}) is not a valid filter: {e}"))
        })?,
    };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn push_args(argv: &[&str]) -> Result<PushArgs, clap::Error> {
        let cli = Cli::try_parse_from(["pushgate", "push"].iter().chain(argv))?;
        let Command::Push(args) = cli.command else {
            panic!("not push")
        };
        Ok(args)
    }

    #[test]
    fn push_args_need_exactly_one_kind_of_recipient() {
        let args = push_args(&["--user", "a", "--user", "b", "{}"]).unwrap();
        assert_eq!(args.users, ["a", "b"]);
        assert_eq!(args.data.as_deref(), Some("{}"));
        assert!(!args.all && !args.ndjson);
        let args = push_args(&["--all", "--run-dir", "/r", "1"]).unwrap();
        assert!(args.all);
        assert_eq!(args.location.run_dir.as_deref(), Some(Path::new("/r")));
        let args = push_args(&["--ndjson"]).unwrap();
        assert!(args.ndjson && args.data.is_none());

        for bad in [
            &["{}"][..],                           // no recipients
            &["--user", "a"],                      // no DATA
            &["--all"],                            // no DATA
            &["--user", "a", "--all", "1"],        // two kinds
            &["--all", "--ndjson"],                // two kinds
            &["--ndjson", "1"],                    // DATA comes from stdin
            &["--user", "a", "--ndjson", "--all"], // all three
        ] {
            assert!(push_args(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn status_args() {
        let cli = Cli::try_parse_from(["pushgate", "status", "--user", "u"]).unwrap();
        let Command::Status(args) = cli.command else {
            panic!("not status")
        };
        assert_eq!(args.user.as_deref(), Some("u"));
        let cli = Cli::try_parse_from(["pushgate", "status", "--config", "f.toml"]).unwrap();
        let Command::Status(args) = cli.command else {
            panic!("not status")
        };
        assert_eq!(args.user, None);
        assert_eq!(args.location.config.as_deref(), Some(Path::new("f.toml")));
    }

    #[test]
    fn token_args() {
        let cli = Cli::try_parse_from(["pushgate", "token", "--user", "alice"]).unwrap();
        let Command::Token(args) = cli.command else {
            panic!("not token")
        };
        assert_eq!(args.user.as_deref(), Some("alice"));
        assert_eq!(args.ttl_s, 3600);
        assert!(Cli::try_parse_from(["pushgate", "token", "--user", "a", "--ttl", "0"]).is_err());
        assert!(Cli::try_parse_from(["pushgate", "token"]).is_err());
    }
}
