//! Every scenario end to end — parent, worker processes, publisher, report —
//! against the tokio-tungstenite peer built with this crate, at tiny sizes.
//! (The real pushgate is exercised by `scripts/bench.sh --quick`.)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

struct Peer {
    child: Child,
    addr: String,
}

impl Peer {
    fn start(extra: &[&str]) -> Peer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_peer-tokio-tungstenite"))
            .args(["--listen", "127.0.0.1:0", "--threads", "2"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().strip_prefix("listening ").unwrap().to_string();
        Peer { child, addr }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pushgate-bench-scenarios-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(dir.join("raw")).unwrap();
    dir
}

/// Runs `pushgate-bench ARGS --json FILE` against `peer`; returns the report.
fn bench(peer: &Peer, json: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate-bench"))
        .args(args)
        .args(["--target", &peer.addr, "--protocol", "peer"])
        .args(["--server-name", "tokio-tungstenite"])
        .args(["--server-pid", &peer.child.id().to_string()])
        .args(["--sources", "127.0.0.2-127.0.0.5"])
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("share the same cores") || args[0] == "idle",
        "{stdout}"
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn every_scenario_runs_against_the_tokio_peer_and_reports() {
    let dir = out_dir("all");
    let raw = dir.join("raw");
    let peer = Peer::start(&["--read-buffer-bytes", "4096"]);

    let r = bench(
        &peer,
        &raw.join("upgrade.json"),
        &["upgrade", "--conns", "60"],
    );
    assert_eq!(r["conns_established"], 60);
    assert!(r["conns_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["handshake_ms"]["count"], 60);

    let r = bench(
        &peer,
        &raw.join("broadcast.json"),
        &["broadcast", "--conns", "50", "--rounds", "2"],
    );
    assert_eq!(r["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(r["warmup_rounds"], 1);
    // Round numbers go on from the warm-up's.
    assert_eq!(r["rounds"][0]["round"], 2);
    assert_eq!(r["rounds"][1]["received"], 50);
    assert_eq!(r["rounds"][1]["server_delivered"], 50);
    assert_eq!(r["lost"], 0);
    assert!(r["time_to_last_ms"].as_f64().unwrap() > 0.0);

    let r = bench(
        &peer,
        &raw.join("homing.json"),
        &[
            "homing",
            "--conns",
            "80",
            "--fanout",
            "20",
            "--duration-s",
            "1",
            "--warmup-s",
            "0.5",
            "--drain-s",
            "5",
        ],
    );
    let pushes = r["pushes"].as_u64().unwrap();
    assert!(pushes > 0);
    assert_eq!(r["targeted"].as_u64().unwrap(), pushes * 20);
    assert_eq!(r["received"], r["targeted"], "{r}");
    assert_eq!(r["server_totals"]["delivered"], r["targeted"]);
    assert_eq!(
        (r["lost"].as_i64(), r["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(r["deliveries_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["server_cpu_s_per_million"].is_number());

    assert_eq!(r["reordered"], 0, "{r}");
    assert!(
        r["tcp_segments_per_delivery"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert_eq!(r["server_info"]["processes"][0]["pid"], peer.child.id());

    let r = bench(
        &peer,
        &raw.join("latency.json"),
        &[
            "latency",
            "--conns",
            "80",
            "--fanout",
            "20",
            "--duration-s",
            "1",
            "--warmup-s",
            "0.5",
            "--drain-s",
            "5",
            "--deliveries-per-s",
            "200,400",
        ],
    );
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["reordered"], 0, "{r}");
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{r}");
    assert_eq!(steps[1]["rate_target_deliveries_per_s"], 400.0);
    assert!(steps.iter().all(|s| s["kept_up"] == true), "{r}");
    assert!(steps[0]["latency_ms"]["count"].as_u64().unwrap() > 0);
    assert!(
        steps[0]["latency_ms"]["p999"].as_f64().unwrap()
            >= steps[0]["latency_ms"]["p50"].as_f64().unwrap()
    );
    assert_eq!(r["max_kept_up_deliveries_per_s"], 400.0);

    let r = bench(
        &peer,
        &raw.join("idle-50.json"),
        &[
            "idle",
            "--conns",
            "50",
            "--warmup",
            "0",
            "--settle-ms",
            "100",
        ],
    );
    assert_eq!(r["conns_established"], 50);
    assert_eq!(r["server"], "tokio-tungstenite");
    // User space and kernel, each per connection.
    assert!(r["server_rss_per_conn_bytes"].is_number(), "{r}");
    if std::fs::read("/proc/slabinfo").is_ok() {
        // Readable by root only.
        assert!(
            r["kernel"]["client_end_per_conn_bytes"].as_f64().unwrap() > 1000.0,
            "{r}"
        );
    }

    let r = bench(
        &peer,
        &raw.join("idle-max.json"),
        &["idle", "--max", "--conns", "90", "--batch", "40"],
    );
    assert_eq!(r["max_held"], 90);
    assert_eq!(r["workers"], 3);
    assert_eq!(r["stopped_by"], "reached the target");

    let out = Command::new(env!("CARGO_BIN_EXE_pushgate-bench"))
        .args(["report", "--dir"])
        .arg(&dir)
        .args(["--baseline", "tokio-tungstenite"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    for section in [
        "## idle",
        "## idle-max",
        "## upgrade",
        "## broadcast",
        "## homing",
        "## latency",
    ] {
        assert!(summary.contains(section), "{section}\n{summary}");
    }
    assert!(dir.join("homing-deliveries-per-s.svg").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unknown_path_is_refused_and_counted() {
    // The peer protocol needs ?user=: a pushgate-style upgrade (no user)
    // is refused with 404, which the worker reports by status line.
    let peer = Peer::start(&[]);
    let dir = out_dir("refused");
    let json = dir.join("refused.json");
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate-bench"))
        .args(["upgrade", "--conns", "4", "--target", &peer.addr])
        .args([
            "--protocol",
            "pushgate",
            "--server-pid",
            &peer.child.id().to_string(),
        ])
        .args(["--secret-file"])
        .arg(secret_file())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["failures"]["status: HTTP/1.1 404 Not Found"], 4, "{r}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn secret_file() -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("pushgate-bench-scen-{}.secret", std::process::id()));
    std::fs::write(&path, format!("{}\n", "cd".repeat(32))).unwrap();
    path
}
