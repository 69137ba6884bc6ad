//! Runs the `idle` command end to end — parent, worker processes, report —
//! against the stand-in server living in this test process.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{secret_file, Behaviour, StandIn};

fn idle(
    target: &str,
    conns: u64,
    json: &std::path::Path,
    secret: &std::path::Path,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pushgate-bench"))
        .args([
            "idle",
            "--target",
            target,
            "--conns",
            &conns.to_string(),
            "--procs",
            "2",
        ])
        .args(["--server-pid", &std::process::id().to_string()])
        .arg("--secret-file")
        .arg(secret)
        .args([
            "--sources",
            "127.0.0.2-127.0.0.5",
            "--settle-ms",
            "0",
            // The stand-in serves a fixed number of connections.
            "--warmup",
            "0",
            "--handshake-timeout-ms",
            "3000",
        ])
        .arg("--json")
        .arg(json)
        .output()
        .unwrap()
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    let value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    std::fs::remove_file(path).unwrap();
    value
}

#[test]
fn two_workers_establish_and_report() {
    const CONNS: u64 = 40;
    let server = StandIn::start(CONNS as usize, Behaviour::Welcome);
    let secret = secret_file("cli-ok");
    let json = std::env::temp_dir().join(format!("pushgate-bench-{}-ok.json", std::process::id()));
    let out = idle(&server.addr.to_string(), CONNS, &json, &secret);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("server bytes/conn"), "{stdout}");
    let report = read_json(&json);
    assert_eq!(report["procs"], 2);
    assert_eq!(report["conns_requested"], CONNS);
    assert_eq!(report["conns_established"], CONNS);
    assert_eq!(report["conns_failed"], 0);
    assert_eq!(report["handshake_latency_us"]["count"], CONNS);
    assert!(report["server_rss_per_conn_bytes"].is_number());
    assert!(report["server_open_fds"].as_u64().unwrap() > 0);
    assert_eq!(report["hold"]["held_at_stop"], CONNS);
    let seen = server.finish();
    assert_eq!(seen.authorizations.len(), CONNS as usize);
    std::fs::remove_file(&secret).unwrap();
}

#[test]
fn failures_make_the_exit_code_nonzero() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = secret_file("cli-refused");
    let json = std::env::temp_dir().join(format!(
        "pushgate-bench-{}-refused.json",
        std::process::id()
    ));
    let out = idle(&format!("127.0.0.1:{port}"), 4, &json, &secret);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = read_json(&json);
    assert_eq!(report["conns_failed"], 4);
    assert_eq!(report["failures"]["connect refused"], 4);
    std::fs::remove_file(&secret).unwrap();
}
