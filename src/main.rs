//! `pushgate` command line. Thin on purpose: parse, build the config, hand
//! off to the library, and turn errors into a message and an exit status.
//!
//! Exit status: 0 success, 1 the server or command failed at run time, 2 the
//! invocation or configuration is wrong (as clap does for bad flags), so a
//! supervisor can tell "restarting will not help" apart.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use pushgate::auth::{self, Secret};
use pushgate::config::{self, LogFormat, ServeArgs};
use tracing_subscriber::EnvFilter;

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
    Serve(Box<ServeArgs>),
    /// Print a client token (HS256 JWT) signed with the server's secret
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// User ID to put in the token's `sub` claim
    #[arg(long, value_name = "USER")]
    user: String,

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
    pushgate::server::serve(config).map_err(Failure::runtime)
}

fn token(args: &TokenArgs) -> Result<(), Failure> {
    // Resolve run_dir / secret_file through the same precedence as `serve`
    // (defaults ← config file ← env ← flags), so both find the same secret.
    let serve_args = ServeArgs {
        config: args.config.clone(),
        run_dir: args.run_dir.clone(),
        secret_file: args.secret_file.clone(),
        ..ServeArgs::default()
    };
    let config = config::load(&serve_args).map_err(Failure::usage)?;
    auth::check_user_id(&args.user).map_err(|e| {
        Failure::usage(format!(
            "--user {:?} cannot be used: {}",
            args.user,
            e.reason()
        ))
    })?;
    // Warnings (loose secret file mode) and the note that a new secret was
    // generated go to stderr, leaving stdout for the token alone.
    init_tracing(LogFormat::Text, "info")?;

    let secret = Secret::load_or_create(&config.run_dir, config.secret_file.as_deref())
        .map_err(Failure::runtime)?;
    let now_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Failure::runtime("the system clock is before 1970; set the clock and retry"))?
        .as_secs();
    println!(
        "{}",
        auth::mint(&secret, &args.user, args.ttl_s, now_unix_s)
    );
    Ok(())
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

    #[test]
    fn token_args() {
        let cli = Cli::try_parse_from(["pushgate", "token", "--user", "alice"]).unwrap();
        let Command::Token(args) = cli.command else {
            panic!("not token")
        };
        assert_eq!(args.user, "alice");
        assert_eq!(args.ttl_s, 3600);
        assert!(Cli::try_parse_from(["pushgate", "token", "--user", "a", "--ttl", "0"]).is_err());
        assert!(Cli::try_parse_from(["pushgate", "token"]).is_err());
    }
}
