use super::*;

#[test]
fn numbers_are_grouped() {
    assert_eq!(fmt_number(1234567.0, 0), "1,234,567");
    assert_eq!(fmt_number(-1234.5, 1), "-1,234.5");
    assert_eq!(fmt_number(12.345, 2), "12.35");
    assert_eq!(fmt_number(f64::NAN, 2), "–");
}

#[test]
fn spreads_take_the_median_and_range() {
    let s = Spread::of([3.0, 1.0, 2.0]).unwrap();
    assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
    assert_eq!(Spread::of([4.0, 1.0]).unwrap().median, 2.5);
    assert_eq!(Spread::of([f64::NAN]), None);
    assert_eq!(
        fmt_spread(Spread::of([135.0, 127.0, 141.0]), 0),
        "135 (127–141)"
    );
    assert_eq!(fmt_spread(Spread::of([5.0]), 0), "5");
    assert_eq!(fmt_spread(None, 0), "–");
}

fn machine() -> Value {
    json!({"cores": 2, "cpu_model": "x", "mem_total_bytes": 1u64 << 34,
        "kernel": "6.18", "open_files_limit": 20000, "note": "n"})
}

fn latency_run(server: &str, kept: &[(f64, bool, f64)]) -> Value {
    let steps: Vec<Value> = kept
        .iter()
        .map(|&(rate, ok, p99)| {
            json!({"rate_target_deliveries_per_s": rate, "kept_up": ok,
                "achieved_deliveries_per_s": if ok { rate } else { rate * 0.7 },
                "latency_ms": {"p50": p99 / 4.0, "p99": p99, "p999": p99 * 2.0},
                "server_cpu_s_per_million": 5.0, "lost": 0})
        })
        .collect();
    let max = kept
        .iter()
        .filter(|k| k.1)
        .map(|k| k.0)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    json!({"scenario": "latency", "server": server, "machine": machine(), "ok": true,
        "steps": steps, "max_kept_up_deliveries_per_s": max,
        "connect_failures": {}, "dropped_connections": {}})
}

#[test]
fn the_equal_rate_is_the_highest_every_run_kept_up_with() {
    let runs = [
        latency_run(
            "pushgate",
            &[(10.0, true, 1.0), (20.0, true, 1.0), (40.0, true, 2.0)],
        ),
        latency_run(
            "pushgate",
            &[(10.0, true, 1.0), (20.0, true, 1.0), (40.0, false, 9.0)],
        ),
        latency_run(
            "uws",
            &[(10.0, true, 1.0), (20.0, true, 1.0), (40.0, true, 2.0)],
        ),
    ];
    let grouped = rows(&runs, "pushgate");
    assert_eq!(grouped[0].0, "pushgate");
    assert_eq!(grouped[0].1.len(), 2);
    assert_eq!(equal_rate(&grouped), Some(20.0));
    let none = [latency_run("slow", &[(10.0, false, 50.0)])];
    assert_eq!(equal_rate(&rows(&none, "pushgate")), None);
    let row = latency_row(&runs[2], Some(20.0));
    assert_eq!(row["p99"], 1.0);
    assert_eq!(row["max_kept_up"], 40.0);
    assert_eq!(row["p99_at_max"], 2.0);
}

#[test]
fn report_merges_runs_and_writes_summary_and_charts() {
    let dir = std::env::temp_dir().join(format!("pushgate-bench-report-{}", std::process::id()));
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    for (server, bytes, dps) in [
        ("pushgate", [130.0, 140.0, 135.0], 900_000.0),
        ("node-ws", [5600.0, 5500.0, 5700.0], 150_000.0),
    ] {
        for (r, b) in bytes.iter().enumerate() {
            let idle = json!({"scenario": "idle", "server": server, "machine": machine(),
                "conns_requested": 300, "conns_established": 300, "server_rss_per_conn_bytes": b,
                "kernel_per_conn_bytes": 3900.0, "total_per_conn_bytes": b + 3900.0,
                "server_open_fds": 15, "connect_rate_per_s": 5000.0, "failures": {},
                "server_info": {"processes": [], "meta": {"load1": "0.2"}}});
            std::fs::write(
                raw.join(format!("idle-300-{server}-r{r}.json")),
                idle.to_string(),
            )
            .unwrap();
        }
        let homing = json!({"scenario": "homing", "server": server, "machine": machine(),
            "deliveries_per_s": dps, "server_cpu_s_per_million": 1.5, "lost": 0, "duplicates": 0,
            "reordered": 0, "tcp_segments_per_delivery": 0.5,
            "cpu": {"box_busy_fraction": 0.9}, "connect_failures": {}, "ok": true});
        std::fs::write(
            raw.join(format!("homing-{server}.json")),
            homing.to_string(),
        )
        .unwrap();
        let latency = latency_run(
            server,
            &[(10.0, true, 1.0), (20.0, server == "pushgate", 3.0)],
        );
        std::fs::write(
            raw.join(format!("latency-{server}.json")),
            latency.to_string(),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("environment.json"),
        json!({"machine": machine(), "meta": {"command": "scripts/bench.sh", "seed": "1",
            "repeats": "3", "load_at_start": "0.1 0.2 0.3"}, "tools": {}, "crates": {},
            "npm": {}, "sysctl": {}})
        .to_string(),
    )
    .unwrap();
    run(ReportArgs {
        dir: dir.clone(),
        baseline: "pushgate".to_string(),
        equal_rate: None,
    })
    .unwrap();
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        summary.contains("| node-ws @ 300 | 3 | 5,600 (5,500–5,700) | 41.48 |"),
        "{summary}"
    );
    assert!(
        summary.contains("| node-ws | 1 | 150,000 | 0.17 |"),
        "{summary}"
    );
    assert!(
        summary.contains("latency at 10 deliveries/s offered"),
        "{summary}"
    );
    assert!(
        summary.contains("load average when each run started: 0.20–0.20"),
        "{summary}"
    );
    let merged: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("idle.json")).unwrap()).unwrap();
    assert_eq!(merged["runs"].as_array().unwrap().len(), 6);
    assert_eq!(merged["environment"]["meta"]["seed"], "1");
    let latency: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("latency.json")).unwrap()).unwrap();
    assert_eq!(latency["equal_rate_deliveries_per_s"], 10.0);
    for svg in [
        "idle-bytes-per-conn.svg",
        "homing-deliveries-per-s.svg",
        "latency-saturation.svg",
        "latency-equal-rate.svg",
    ] {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg") && text.contains("node-ws"),
            "{svg}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
