//! Tests of config loading: defaults, TOML, flag and env precedence, and every validation rule.

use super::*;
use clap::{CommandFactory, Parser};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

fn parse(args: &[&str]) -> ServeArgs {
    Cli::try_parse_from(std::iter::once("pushgate").chain(args.iter().copied()))
        .unwrap()
        .serve
}

/// Writes `text` to a per-test file under the temp dir, removed on drop.
struct TempFile(PathBuf);
impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "pushgate-config-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn problems(config: &Config) -> Vec<String> {
    match config.validate() {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid { problems }) => problems,
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Asserts that exactly one rule is broken and its message contains `needle`.
fn assert_invalid(config: Config, needle: &str) {
    let problems = problems(&config);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(needle),
        "{:?} does not contain {needle:?}",
        problems[0]
    );
}

#[test]
fn defaults_are_valid() {
    let config = Config::default();
    config.validate().unwrap();
    assert_eq!(
        config.listen,
        "0.0.0.0:8080".parse::<std::net::SocketAddr>().unwrap()
    );
    assert!(config.shards >= 1);
    assert_eq!(config.secret_file, None);
    assert_eq!(config.idle_timeout_ms, 120_000);
    assert_eq!(config.log_format, LogFormat::Text);
    // No file, no flags: load gives the defaults.
    assert_eq!(load(&ServeArgs::default()).unwrap(), config);
}

#[test]
fn run_dir_default() {
    assert_eq!(
        run_dir_from(Some("/run/user/1000".into()), 1000),
        PathBuf::from("/run/user/1000/pushgate")
    );
    assert_eq!(
        run_dir_from(None, 1000),
        PathBuf::from("/tmp/pushgate-1000")
    );
    assert_eq!(
        run_dir_from(Some("".into()), 7),
        PathBuf::from("/tmp/pushgate-7")
    );
    assert_eq!(
        run_dir_from(Some("relative".into()), 7),
        PathBuf::from("/tmp/pushgate-7")
    );
}

#[test]
fn toml_overrides_defaults() {
    let text = r#"
            listen = "127.0.0.1:9000"
            shards = 3
            secret_file = "/etc/pushgate/secret"
            idle_timeout_ms = 60000
            ping_interval_ms = 0
            recv_buffer_count = 4096
            log_format = "json"
            log_level = "debug"
        "#;
    let config = Config::from_toml_str(text, Path::new("t.toml")).unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.listen,
        "127.0.0.1:9000".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(config.shards, 3);
    assert_eq!(
        config.secret_file,
        Some(PathBuf::from("/etc/pushgate/secret"))
    );
    assert_eq!(config.idle_timeout_ms, 60_000);
    assert_eq!(config.ping_interval_ms, 0);
    assert_eq!(config.recv_buffer_count, 4096);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.log_level, "debug");
    // Untouched settings keep their defaults.
    assert_eq!(config.handshake_timeout_ms, 10_000);
    assert_eq!(config.ring_cq_entries, 16_384);
}

#[test]
fn flag_beats_file() {
    let file = TempFile::new("flag-beats-file", "shards = 3\nidle_timeout_ms = 60000\n");
    let path = file.0.to_str().unwrap();
    let args = parse(&["--config", path, "--shards", "5", "--log-format", "json"]);
    let config = load(&args).unwrap();
    assert_eq!(config.shards, 5); // flag
    assert_eq!(config.idle_timeout_ms, 60_000); // file
    assert_eq!(config.log_format, LogFormat::Json); // flag
    assert_eq!(config.ping_interval_ms, 30_000); // default
}

#[test]
fn unknown_key_rejected_with_line() {
    let text = "shards = 2\nidle_timeout = 5\n";
    let err = Config::from_toml_str(text, Path::new("/etc/pushgate.toml")).unwrap_err();
    match &err {
        ConfigError::Toml {
            line,
            column,
            message,
            ..
        } => {
            assert_eq!((*line, *column), (2, 1));
            assert!(message.contains("idle_timeout"), "{message}");
        }
        other => panic!("{other}"),
    }
    let shown = err.to_string();
    assert!(
        shown.starts_with("config file /etc/pushgate.toml, line 2, column 1: "),
        "{shown}"
    );
    assert!(shown.ends_with("(in `idle_timeout = 5`)"), "{shown}");
}

#[test]
fn bad_toml_values_name_the_line() {
    for (text, line) in [
        ("shards = \"four\"\n", 1),
        ("\n\nlisten = \"localhost\"\n", 3),
        ("recv_buffer_count = 70000\n", 1),
        ("log_format = \"xml\"\n", 1),
        ("shards = \n", 1),
    ] {
        match Config::from_toml_str(text, Path::new("c.toml")) {
            Err(ConfigError::Toml { line: got, .. }) => assert_eq!(got, line, "{text:?}"),
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn missing_file_named() {
    let args = ServeArgs {
        config: Some(PathBuf::from("/nonexistent/pushgate.toml")),
        ..ServeArgs::default()
    };
    let err = load(&args).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/pushgate.toml"),
        "{err}"
    );
}

#[test]
fn load_validates_after_overlay() {
    // Valid file, invalid flag: the error is reported.
    let args = parse(&["--ping-interval-ms", "40000", "--idle-timeout-ms", "30000"]);
    let err = load(&args).unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid configuration: ping_interval_ms (40000) must be less than idle_timeout_ms (30000), or 0 to send no pings"
    );
}

#[test]
fn print_config_round_trips() {
    let config = Config {
        secret_file: Some(PathBuf::from("/etc/pushgate/secret")),
        log_format: LogFormat::Json,
        ..Config::default()
    };
    let text = config.to_toml().unwrap();
    assert!(text.contains("listen = \"0.0.0.0:8080\""), "{text}");
    assert!(text.contains("log_format = \"json\""), "{text}");
    assert_eq!(
        Config::from_toml_str(&text, Path::new("printed")).unwrap(),
        config
    );
    // Without a secret file the key is left out, and still round-trips.
    let text = Config::default().to_toml().unwrap();
    assert!(!text.contains("secret_file"), "{text}");
    assert_eq!(
        Config::from_toml_str(&text, Path::new("printed")).unwrap(),
        Config::default()
    );
}

#[test]
fn every_field_has_flag_and_env() {
    let command = Cli::command();
    command.clone().debug_assert();
    let table: toml::Table = toml::from_str(
        &Config {
            secret_file: Some("/s".into()),
            console_listen: Some("127.0.0.1:1".parse().unwrap()),
            redis_url: Some("redis://127.0.0.1:6379".into()),
            host_id: Some("h".into()),
            redis_username: Some("u".into()),
            redis_password_file: Some("/p".into()),
            tls_listen: Some("127.0.0.1:2".parse().unwrap()),
            tls_cert_file: Some("/c".into()),
            tls_key_file: Some("/k".into()),
            ..Config::default()
        }
        .to_toml()
        .unwrap(),
    )
    .unwrap();
    assert_eq!(table.len(), 60);
    for field in table.keys() {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == field.as_str())
            .unwrap_or_else(|| panic!("no flag for {field}"));
        assert_eq!(arg.get_long(), Some(field.replace('_', "-").as_str()));
        let env = format!("PUSHGATE_{}", field.to_uppercase());
        assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(&env)), "{field}");
    }
}

#[test]
fn flags_parse() {
    let args = parse(&[
        "--listen",
        "[::1]:443",
        "--run-dir",
        "/run/pg",
        "--secret-file",
        "/etc/pg.key",
        "--recv-buffer-count",
        "1024",
        "--log-level",
        "warn",
        "--print-config",
    ]);
    assert!(args.print_config);
    let config = load(&args).unwrap();
    assert_eq!(
        config.listen,
        "[::1]:443".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(config.run_dir, PathBuf::from("/run/pg"));
    assert_eq!(config.secret_file, Some(PathBuf::from("/etc/pg.key")));
    assert_eq!(config.recv_buffer_count, 1024);
    assert_eq!(config.log_level, "warn");
    assert!(Cli::try_parse_from(["pushgate", "--shards", "many"]).is_err());
    assert!(Cli::try_parse_from(["pushgate", "--log-format", "xml"]).is_err());
}

#[test]
fn validate_shards() {
    assert_invalid(
        Config {
            shards: 0,
            ..Config::default()
        },
        "shards (0) must be between 1 and 1024",
    );
    assert_invalid(
        Config {
            shards: 1025,
            ..Config::default()
        },
        "shards (1025)",
    );
    Config {
        shards: 1024,
        ..Config::default()
    }
    .validate()
    .unwrap();
}

#[test]
fn validate_timeouts() {
    assert_invalid(
        Config {
            handshake_timeout_ms: 0,
            ..Config::default()
        },
        "handshake_timeout_ms",
    );
    assert_invalid(
        Config {
            idle_timeout_ms: 0,
            ping_interval_ms: 0,
            ..Config::default()
        },
        "idle_timeout_ms must be greater than 0",
    );
    assert_invalid(
        Config {
            ping_interval_ms: 40_000,
            idle_timeout_ms: 30_000,
            ..Config::default()
        },
        "ping_interval_ms (40000) must be less than idle_timeout_ms (30000)",
    );
    assert_invalid(
        Config {
            ping_interval_ms: 30_000,
            idle_timeout_ms: 30_000,
            ..Config::default()
        },
        "ping_interval_ms (30000)",
    );
    Config {
        ping_interval_ms: 0,
        idle_timeout_ms: 1,
        ..Config::default()
    }
    .validate()
    .unwrap();
}

#[test]
fn validate_sizes() {
    assert_invalid(
        Config {
            header_bytes_max: 100,
            ..Config::default()
        },
        "header_bytes_max (100)",
    );
    assert_invalid(
        Config {
            frame_payload_bytes_max: 0,
            ..Config::default()
        },
        "frame_payload_bytes_max",
    );
    assert_invalid(
        Config {
            message_bytes_max: 0,
            ..Config::default()
        },
        "message_bytes_max",
    );
    assert_invalid(
        Config {
            send_queue_bytes_max: 0,
            ..Config::default()
        },
        "send_queue_bytes_max",
    );
    assert_invalid(
        Config {
            recv_buffer_bytes: 0,
            ..Config::default()
        },
        "recv_buffer_bytes",
    );
    assert_invalid(
        Config {
            connections_per_shard_max: 0,
            ..Config::default()
        },
        "connections_per_shard_max (0)",
    );
    assert_invalid(
        Config {
            connections_per_shard_max: CONNECTIONS_PER_SHARD_MAX + 1,
            ..Config::default()
        },
        "connections_per_shard_max (1048577)",
    );
}

#[test]
fn validate_listen_backlog() {
    assert_eq!(Config::default().listen_backlog, 65_535);
    for bad in [0, 65_536] {
        assert_invalid(
            Config {
                listen_backlog: bad,
                ..Config::default()
            },
            &format!("listen_backlog ({bad}) must be between 1 and 65535"),
        );
    }
    let config = load(&parse(&["--listen-backlog", "512"])).unwrap();
    assert_eq!(config.listen_backlog, 512);
    let spec = &crate::server::runtime_config(&config).listeners[0];
    assert!(
        matches!(spec, shard::ListenerSpec::Tcp { backlog: 512, .. }),
        "{spec:?}"
    );
}

#[test]
fn validate_recv_buffer_count() {
    for bad in [0, 3, 3000, 65_535] {
        assert_invalid(
            Config {
                recv_buffer_count: bad,
                ..Config::default()
            },
            &format!("recv_buffer_count ({bad}) must be a power of two"),
        );
    }
    for good in [1, 2, 2048, 32_768] {
        Config {
            recv_buffer_count: good,
            ..Config::default()
        }
        .validate()
        .unwrap();
    }
}

#[test]
fn validate_ring_sizes() {
    assert_invalid(
        Config {
            ring_sq_entries: 1000,
            ..Config::default()
        },
        "ring_sq_entries (1000) must be a power of two",
    );
    assert_invalid(
        Config {
            ring_sq_entries: 0,
            ..Config::default()
        },
        "ring_sq_entries (0)",
    );
    assert_invalid(
        Config {
            ring_cq_entries: 20_000,
            ..Config::default()
        },
        "ring_cq_entries (20000) must be a power of two",
    );
    assert_invalid(
        Config {
            ring_sq_entries: 2048,
            ring_cq_entries: 1024,
            ..Config::default()
        },
        "ring_cq_entries (1024) must be at least ring_sq_entries (2048)",
    );
    assert_invalid(
        Config {
            ring_cq_entries: 1 << 17,
            ..Config::default()
        },
        "ring_cq_entries (131072)",
    );
    Config {
        ring_sq_entries: 4096,
        ring_cq_entries: 4096,
        ..Config::default()
    }
    .validate()
    .unwrap();
}

#[test]
fn validate_paths_and_logging() {
    assert_invalid(
        Config {
            run_dir: PathBuf::new(),
            ..Config::default()
        },
        "run_dir must not be empty",
    );
    assert_invalid(
        Config {
            run_dir: PathBuf::from(format!("/{}", "d".repeat(100))),
            shards: 16,
            ..Config::default()
        },
        "/shard-15.sock would be 115 bytes",
    );
    assert_invalid(
        Config {
            secret_file: Some(PathBuf::new()),
            ..Config::default()
        },
        "secret_file must not be empty",
    );
    assert_invalid(
        Config {
            log_level: "info,=[".into(),
            ..Config::default()
        },
        "log_level (\"info,=[\")",
    );
    for bad in ["", "inf", "info,verbose"] {
        assert_invalid(
            Config {
                log_level: bad.into(),
                ..Config::default()
            },
            "log_level (",
        );
    }
    for good in [
        "info,pushgate=trace",
        "DEBUG",
        "warn,shard::ring=debug",
        "off",
    ] {
        Config {
            log_level: good.into(),
            ..Config::default()
        }
        .validate()
        .unwrap();
    }
}

/// Issue 10: `--dev` on 0.0.0.0 minted tokens for anyone on every
/// interface. Now `--dev` alone listens on loopback, and a non-loopback
/// client listener needs `--dev-allow-remote`.
#[test]
fn dev_listens_on_loopback_unless_allowed_remote() {
    let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(load(&parse(&["--dev"])).unwrap().listen, loopback);
    // Without --dev nothing changes.
    assert_eq!(
        load(&parse(&[])).unwrap().listen,
        "0.0.0.0:8080".parse::<SocketAddr>().unwrap()
    );
    // An explicit loopback address is kept, IPv6 too.
    for addr in ["127.0.0.1:0", "[::1]:9000", "127.0.0.2:8080"] {
        let config = load(&parse(&["--dev", "--listen", addr])).unwrap();
        assert_eq!(config.listen, addr.parse::<SocketAddr>().unwrap());
    }
    // A non-loopback client listener, from a flag, the file or
    // console_listen, is refused and the message says what to do.
    for args in [
        &["--dev", "--listen", "0.0.0.0:8080"][..],
        &["--dev", "--listen", "[::]:8080"],
        &["--dev", "--listen", "192.0.2.1:8080"],
        &["--dev", "--console-listen", "0.0.0.0:8081"],
    ] {
        let err = load(&parse(args)).unwrap_err().to_string();
        assert!(
            err.contains("not a loopback address") && err.contains("--dev-allow-remote"),
            "{args:?}: {err}"
        );
    }
    let file = TempFile::new("dev-listen", "listen = \"0.0.0.0:8080\"\ndev = true\n");
    let path = file.0.to_str().unwrap();
    let err = load(&parse(&["--config", path])).unwrap_err().to_string();
    assert!(err.contains("listen (0.0.0.0:8080)"), "{err}");
    // A file that sets dev but no listen: loopback.
    let file = TempFile::new("dev-only", "dev = true\n");
    let path = file.0.to_str().unwrap();
    assert_eq!(load(&parse(&["--config", path])).unwrap().listen, loopback);
    // --dev-allow-remote: the usual default and any address.
    let config = load(&parse(&["--dev", "--dev-allow-remote"])).unwrap();
    assert_eq!(config.listen, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
    load(&parse(&[
        "--dev",
        "--dev-allow-remote",
        "--listen",
        "[::]:1",
    ]))
    .unwrap();
    // --print-config shows the address actually used.
    let text = load(&parse(&["--dev"])).unwrap().to_toml().unwrap();
    assert!(text.contains("listen = \"127.0.0.1:8080\""), "{text}");
}

#[test]
fn all_problems_reported_together() {
    let config = Config {
        shards: 0,
        recv_buffer_count: 3,
        ring_sq_entries: 3,
        ..Config::default()
    };
    let problems = problems(&config);
    assert_eq!(problems.len(), 3, "{problems:?}");
    let shown = config.validate().unwrap_err().to_string();
    assert!(
        shown.contains("shards (0)") && shown.contains("recv_buffer_count (3)"),
        "{shown}"
    );
}

#[test]
fn source_line_is_trimmed_and_cut() {
    assert_eq!(source_line("a = 1\n  b = 2  \n", 2), "b = 2");
    assert_eq!(source_line("a = 1", 9), "");
    let long = format!("log_level = \"{}\"", "x".repeat(100));
    assert_eq!(source_line(&long, 1).chars().count(), 61);
}

#[test]
fn line_column_counts_chars() {
    assert_eq!(line_column("abc", 0), (1, 1));
    assert_eq!(line_column("a\nbc", 3), (2, 2));
    assert_eq!(line_column("é = 1\nx", 7), (2, 1));
    assert_eq!(line_column("ab", 99), (1, 3));
}

#[test]
fn redis_settings_from_flags_env_and_file() {
    // Seeds repeat as flags or come comma-separated.
    let args = parse(&[
        "--redis-nodes",
        "10.0.0.1:7000,10.0.0.2:7000",
        "--redis-nodes",
        "10.0.0.3:7000",
        "--host-id",
        "web-1",
    ]);
    let config = load(&args).unwrap();
    assert_eq!(
        config.redis_nodes,
        ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]
    );
    assert_eq!(config.host_id.as_deref(), Some("web-1"));
    // The same in a file round-trips through --print-config's TOML.
    let text = config.to_toml().unwrap();
    let back = Config::from_toml_str(&text, Path::new("x.toml")).unwrap();
    assert_eq!(back, config);
    // No Redis settings: a single host, as before.
    let plain = load(&parse(&[])).unwrap();
    assert!(plain.redis_nodes.is_empty() && plain.redis_url.is_none() && plain.host_id.is_none());
}

#[test]
fn deflate_is_off_by_default_and_set_by_file_flag_or_env() {
    let defaults = Config::default();
    assert!(!defaults.deflate);
    assert_eq!(defaults.deflate_threshold_bytes, 1024);
    let config = Config::from_toml_str(
        "deflate = true\ndeflate_threshold_bytes = 512\n",
        Path::new("t.toml"),
    )
    .unwrap();
    assert!(config.deflate);
    assert_eq!(config.deflate_threshold_bytes, 512);
    let args = parse(&["--deflate", "--deflate-threshold-bytes", "0"]);
    let mut config = Config::default();
    args.apply(&mut config);
    assert!(config.deflate);
    assert_eq!(config.deflate_threshold_bytes, 0);
    config.validate().unwrap();
}
