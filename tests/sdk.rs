//! The browser SDK (sdk/pushgate.js) under Node, wired into `cargo test`:
//!
//! - its logic tests (`node --test sdk/test/`: backoff, de-duplication,
//!   order, reset, tokens, transports, tabs — on simulated time);
//! - 1,000 SDK clients (one in five on SSE) against a real gateway that
//!   drains onto a successor on the same port (sdk/bench/drain-fleet.mjs):
//!   every client moves, reconnects spread over the drain instead of
//!   arriving at once, and no push is lost — each is delivered once, in
//!   order, or covered by the reset the successor's new epoch causes. The
//!   report and a chart of reconnects per 100 ms land in
//!   target/sdk-artifacts/.
//!
//! Without Node ≥ 20 the tests say why and pass; `PUSHGATE_INTEROP_REQUIRED=1`
//! (set by CI) turns a skip into a failure.

#[path = "browser/gateway.rs"]
mod gateway;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Clients in the drain test, and the drain's pace: 1,000 at 250/s take
/// about four seconds to close.
const FLEET_CLIENTS: usize = 1000;
const DRAIN_RATE_PER_S: &str = "250";
/// Bounds on each stage of the fleet run (a busy 2-core machine runs the
/// gateways, 1,000 clients and the test at once).
const FLEET_STAGE_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The node arguments that give it a global WebSocket (Node 20 needs a
/// flag; Node ≥ 22 has it), or why the tests cannot run.
fn node_websocket_args() -> Result<Vec<&'static str>, String> {
    let probe = |args: &[&str]| {
        Command::new("node")
            .args(args)
            .args(["-p", "process.versions.node + ' ' + typeof WebSocket"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(plain) = probe(&[]) else {
        return Err("cannot run node (run scripts/ci-deps.sh)".into());
    };
    let major: u32 = plain
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Err(format!("node ≥ 20 is needed, found {plain}"));
    }
    if plain.ends_with("function") {
        return Ok(Vec::new());
    }
    match probe(&["--experimental-websocket"]) {
        Some(v) if v.ends_with("function") => Ok(vec!["--experimental-websocket"]),
        _ => Err(format!("node {plain} has no WebSocket")),
    }
}

/// The node arguments, or None after saying why the test is skipped.
fn ready() -> Option<Vec<&'static str>> {
    match node_websocket_args() {
        Ok(args) => Some(args),
        Err(why) if std::env::var_os("PUSHGATE_INTEROP_REQUIRED").is_some() => {
            panic!("SDK tests required: {why}")
        }
        Err(why) => {
            eprintln!("skipping the SDK test: {why}");
            None
        }
    }
}

#[test]
fn sdk_logic_tests_pass_under_node_test() {
    let Some(node_args) = ready() else { return };
    let out = Command::new("node")
        .args(&node_args)
        .args(["--test", "test/"])
        .current_dir(repo().join("sdk"))
        .stdin(Stdio::null())
        .output()
        .expect("run node --test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 20, "only {passed} SDK tests ran:\n{stdout}");
}

/// The fleet script: its JSON lines, its stdin, its stderr.
struct Fleet {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Receiver<String>,
}

impl Fleet {
    fn next(&mut self, event: &str) -> Value {
        let line = match self.lines.recv_timeout(FLEET_STAGE_TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let stderr = self
                    .stderr
                    .recv_timeout(Duration::from_secs(2))
                    .unwrap_or_default();
                panic!("drain-fleet: no {event:?} line ({e:?}); stderr: {stderr}");
            }
        };
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("drain-fleet: not JSON ({e}): {line}"));
        assert_eq!(value["event"], event, "drain-fleet: {value:#}");
        value
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_thousand_sdk_clients_follow_a_drain_spread_out_and_lose_nothing() {
    let Some(node_args) = ready() else { return };
    let dir = gateway::temp_dir("sdk-fleet");
    let (secret, _) = gateway::shared_secret(&dir);
    let port = gateway::free_port();
    let flags = [
        "--shards",
        "2",
        "--drain-rate-per-s",
        DRAIN_RATE_PER_S,
        "--connections-per-shard-max",
        "4000",
    ];
    let mut first = gateway::Gateway::start(port, &secret, &flags);
    let out_dir = repo().join("target/sdk-artifacts");
    let mut child = Command::new("node")
        .args(&node_args)
        .arg(repo().join("sdk/bench/drain-fleet.mjs"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--admin", &first.admin_addr.to_string()])
        .arg("--secret-file")
        .arg(&secret)
        .args(["--clients", &FLEET_CLIENTS.to_string()])
        .arg("--out")
        .arg(&out_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (tx, stderr) = mpsc::channel();
    let mut err_pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err_pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let stdin = child.stdin.take().unwrap();
    let mut fleet = Fleet {
        child,
        stdin,
        lines,
        stderr,
    };

    let ready = fleet.next("ready");
    eprintln!("fleet: {ready}");
    let successor = gateway::Gateway::start(port, &secret, &flags);
    writeln!(fleet.stdin, "successor {}", successor.admin_addr).unwrap();
    fleet.next("pushing");
    let drain_began = Instant::now();
    first.signal(libc::SIGTERM);
    let done = fleet.next("done");
    let r = &done["report"];
    eprintln!("fleet report: {r}");
    assert_eq!(r["moved"], FLEET_CLIENTS, "every client on the successor");
    assert_eq!(
        r["drain_closes"], FLEET_CLIENTS,
        "each closed once with 1012"
    );
    assert_eq!(r["lost"], 0, "no push lost: {r:#}");
    assert_eq!(r["duplicates"], 0, "no push delivered twice");
    assert_eq!(r["out_of_order"], 0);
    assert_eq!(r["resets"], FLEET_CLIENTS, "one reset each: the new epoch");
    assert!(r["pushes"].as_u64().unwrap() >= 5, "pushes kept coming");
    // 1,000 at 250/s: the closes take about 4 s and the reconnects follow
    // them, spread; a herd would put most of the fleet in a few 100 ms.
    let span_ms = r["reconnect_span_ms"].as_u64().unwrap();
    assert!(span_ms >= 2_500, "reconnects spread over {span_ms} ms");
    // About 25 per 100 ms; a quarter of the fleet allows for a client
    // process the machine stalled (welcomes then land in a burst).
    let peak = r["reconnects_per_bin_max"].as_u64().unwrap();
    assert!(
        peak <= FLEET_CLIENTS as u64 / 4,
        "at most a quarter of the fleet in one 100 ms, got {peak}"
    );
    assert!(first.wait_exit(Duration::from_secs(30)).success());
    eprintln!(
        "drain to exit {:?}; chart: {}",
        drain_began.elapsed(),
        out_dir.join("drain-fleet.svg").display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
