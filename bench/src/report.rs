//! `pushgate-bench report`: merges a results directory's raw run files into
//! one JSON per scenario, a Markdown summary with ratios against pushgate,
//! and SVG charts.
//!
//! Input: `DIR/raw/*.json`, each one run of one scenario against one server
//! (what the scenario subcommands write with `--json`). Output:
//! `DIR/<scenario>.json` (`{"scenario", "machine", "runs": […]}`),
//! `DIR/summary.md`, `DIR/*.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use plotters::prelude::*;
use serde_json::Value;

use crate::machine::SHARED_CORES_NOTE;

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// The results directory (holds raw/*.json).
    #[arg(long)]
    pub dir: PathBuf,
    /// The server the ratios are taken against.
    #[arg(long, default_value = "pushgate")]
    pub baseline: String,
}

/// Scenarios in the order the summary lists them.
const SCENARIOS: [&str; 6] = [
    "idle",
    "idle-max",
    "upgrade",
    "broadcast",
    "homing",
    "latency",
];

/// A column of the summary: a JSON pointer into a run, and whether less is
/// better (for the reader; the ratio is always server / baseline).
struct Metric {
    title: &'static str,
    pointer: &'static str,
    lower_is_better: bool,
    digits: usize,
}

const fn m(title: &'static str, pointer: &'static str, lower: bool, digits: usize) -> Metric {
    Metric {
        title,
        pointer,
        lower_is_better: lower,
        digits,
    }
}

fn metrics(scenario: &str) -> Vec<Metric> {
    match scenario {
        "idle" => vec![
            m("bytes/conn", "/server_rss_per_conn_bytes", true, 0),
            m("established", "/conns_established", false, 0),
            m("server fds", "/server_open_fds", true, 0),
            m("conn/s", "/connect_rate_per_s", false, 0),
        ],
        "idle-max" => vec![
            m("max held", "/max_held", false, 0),
            m("bytes/conn", "/server_rss_per_conn_bytes", true, 0),
        ],
        "upgrade" => vec![
            m("conn/s", "/conns_per_s", false, 0),
            m("p50 ms", "/handshake_ms/p50", true, 2),
            m("p99 ms", "/handshake_ms/p99", true, 2),
            m("listen overflows", "/listen_overflows", true, 0),
        ],
        "broadcast" => vec![
            m("time to last ms", "/time_to_last_ms", true, 2),
            m("p50 ms", "/receive_ms/p50", true, 2),
            m("p99 ms", "/receive_ms/p99", true, 2),
            m("lost", "/lost", true, 0),
        ],
        "homing" => vec![
            m("deliveries/s", "/deliveries_per_s", false, 0),
            m("server CPU s per M", "/server_cpu_s_per_million", true, 2),
            m("lost", "/lost", true, 0),
            m("dup", "/duplicates", true, 0),
            m("box busy", "/cpu/box_busy_fraction", true, 2),
        ],
        "latency" => vec![
            m("pushes/s", "/rate_target_per_s", false, 0),
            m("p50 ms", "/latency_ms/p50", true, 2),
            m("p99 ms", "/latency_ms/p99", true, 2),
            m("p999 ms", "/latency_ms/p999", true, 2),
            m("lost", "/lost", true, 0),
        ],
        _ => Vec::new(),
    }
}

/// Runs of a scenario are told apart by server and, for idle, size.
fn row_key(run: &Value) -> String {
    let server = run["server"].as_str().unwrap_or("?").to_string();
    match run["scenario"].as_str() {
        Some("idle") => format!("{server} @ {}", run["conns_requested"]),
        _ => server,
    }
}

fn baseline_key(run: &Value, baseline: &str) -> String {
    match run["scenario"].as_str() {
        Some("idle") => format!("{baseline} @ {}", run["conns_requested"]),
        _ => baseline.to_string(),
    }
}

pub fn run(args: ReportArgs) -> Result<(), String> {
    let raw = args.dir.join("raw");
    let mut by_scenario: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&raw)
        .map_err(|e| format!("{}: {e}", raw.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for path in entries {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(scenario) = value["scenario"].as_str() else {
            eprintln!("report: {} has no scenario; skipped", path.display());
            continue;
        };
        by_scenario
            .entry(scenario.to_string())
            .or_default()
            .push(value);
    }
    if by_scenario.is_empty() {
        return Err(format!("no run files in {}", raw.display()));
    }
    let mut md = String::new();
    let _ = writeln!(md, "# pushgate benchmarks\n");
    if let Some(machine) = by_scenario.values().flatten().map(|r| &r["machine"]).next() {
        let _ = writeln!(
            md,
            "Machine: {} cores ({}), {:.1} GiB, Linux {}, open files {} per process.\n",
            machine["cores"],
            machine["cpu_model"].as_str().unwrap_or("?"),
            machine["mem_total_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
            machine["kernel"].as_str().unwrap_or("?"),
            machine["open_files_limit"]
        );
    }
    let _ = writeln!(md, "**Note:** {SHARED_CORES_NOTE}.\n");
    let _ = writeln!(
        md,
        "Ratios are server ÷ {}: above 1 is more of the quantity (better for conn/s and deliveries/s, worse for bytes, milliseconds and CPU).\n",
        args.baseline
    );
    let mut charts = Vec::new();
    let order: Vec<String> = SCENARIOS
        .iter()
        .map(|s| s.to_string())
        .chain(
            by_scenario
                .keys()
                .filter(|k| !SCENARIOS.contains(&k.as_str()))
                .cloned(),
        )
        .collect();
    for scenario in order {
        let Some(runs) = by_scenario.get_mut(&scenario) else {
            continue;
        };
        // The baseline first, then by name; idle by size within.
        runs.sort_by_key(|r| {
            let server = r["server"].as_str().unwrap_or("").to_string();
            (
                r["conns_requested"].as_u64().unwrap_or(0),
                server != args.baseline,
                server,
            )
        });
        let runs = &*runs;
        let merged = serde_json::json!({
            "scenario": scenario,
            "machine": runs[0]["machine"],
            "note": SHARED_CORES_NOTE,
            "runs": runs,
        });
        crate::machine::write_json(&args.dir.join(format!("{scenario}.json")), &merged)?;
        md.push_str(&table(&scenario, runs, &args.baseline));
        charts.extend(chart_scenario(&args.dir, &scenario, runs)?);
    }
    if !charts.is_empty() {
        let _ = writeln!(md, "## Charts\n");
        for chart in &charts {
            let _ = writeln!(md, "![{chart}]({chart})\n");
        }
    }
    let summary = args.dir.join("summary.md");
    std::fs::write(&summary, md).map_err(|e| format!("{}: {e}", summary.display()))?;
    println!("wrote {} and {} charts", summary.display(), charts.len());
    Ok(())
}

fn fmt_number(value: f64, digits: usize) -> String {
    if !value.is_finite() {
        return "–".to_string();
    }
    let text = format!("{value:.digits$}");
    // Thousands separators for the integer part.
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, int) = int.strip_prefix('-').map_or(("", int), |i| ("-", i));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn table(scenario: &str, runs: &[Value], baseline: &str) -> String {
    let metrics = metrics(scenario);
    let mut t = String::new();
    let _ = writeln!(t, "## {scenario}\n");
    let mut header = "| server |".to_string();
    let mut rule = "|---|".to_string();
    for metric in &metrics {
        let arrow = if metric.lower_is_better { "↓" } else { "↑" };
        let _ = write!(header, " {} {arrow} | ×{baseline} |", metric.title);
        rule.push_str("---:|---:|");
    }
    header.push_str(" notes |");
    rule.push_str("---|");
    let _ = writeln!(t, "{header}\n{rule}");
    let rows: BTreeMap<String, &Value> = runs.iter().map(|r| (row_key(r), r)).collect();
    for run in runs {
        let base = rows.get(&baseline_key(run, baseline));
        let mut line = format!("| {} |", row_key(run));
        for metric in &metrics {
            let value = run.pointer(metric.pointer).and_then(Value::as_f64);
            let base_value = base
                .and_then(|b| b.pointer(metric.pointer))
                .and_then(Value::as_f64);
            let ratio = match (value, base_value) {
                (Some(v), Some(b)) if b != 0.0 => format!("{:.2}", v / b),
                _ => "–".to_string(),
            };
            let shown = value.map_or("–".to_string(), |v| fmt_number(v, metric.digits));
            let _ = write!(line, " {shown} | {ratio} |");
        }
        let _ = writeln!(line, " {} |", notes(run));
        t.push_str(&line);
    }
    t.push('\n');
    t
}

fn notes(run: &Value) -> String {
    let mut notes = Vec::new();
    if let Some(stopped) = run["stopped_by"].as_str() {
        notes.push(format!("stopped by: {stopped}"));
    }
    for key in ["failures", "connect_failures", "dropped_connections"] {
        if let Some(map) = run[key].as_object() {
            let total: u64 = map.values().filter_map(Value::as_u64).sum();
            if total > 0 {
                let top = map
                    .iter()
                    .max_by_key(|(_, n)| n.as_u64().unwrap_or(0))
                    .map(|(k, _)| k.as_str())
                    .unwrap_or("");
                notes.push(format!("{key}: {total} ({top})"));
            }
        }
    }
    if run["ok"] == Value::Bool(false) && notes.is_empty() {
        notes.push("not ok".to_string());
    }
    notes.join("; ").replace('|', "/")
}

/// `(label, [values per series])` rows of a chart.
type Rows = Vec<(String, Vec<f64>)>;

fn chart_scenario(dir: &Path, scenario: &str, runs: &[Value]) -> Result<Vec<String>, String> {
    let pick = |pointers: &[&str]| -> Rows {
        runs.iter()
            .filter_map(|r| {
                let values: Option<Vec<f64>> = pointers
                    .iter()
                    .map(|p| {
                        r.pointer(p)
                            .and_then(Value::as_f64)
                            .filter(|v| v.is_finite())
                    })
                    .collect();
                values.map(|v| (row_key(r), v))
            })
            .collect()
    };
    let mut made = Vec::new();
    let mut chart =
        |file: &str, title: &str, unit: &str, series: &[&str], rows: Rows, log: bool| {
            if rows.is_empty() {
                return Ok(());
            }
            bar_chart(&dir.join(file), title, unit, series, &rows, log)?;
            made.push(file.to_string());
            Ok::<(), String>(())
        };
    match scenario {
        "idle" => chart(
            "idle-bytes-per-conn.svg",
            "Server user-space RSS per idle connection",
            "bytes (log)",
            &["bytes/conn"],
            pick(&["/server_rss_per_conn_bytes"]),
            true,
        )?,
        "idle-max" => chart(
            "idle-max-held.svg",
            "Most connections held by one server process",
            "connections",
            &["max held"],
            pick(&["/max_held"]),
            false,
        )?,
        "upgrade" => chart(
            "upgrade-conns-per-s.svg",
            "Connections upgraded per second",
            "conn/s",
            &["conn/s"],
            pick(&["/conns_per_s"]),
            false,
        )?,
        "broadcast" => chart(
            "broadcast-time-to-last.svg",
            "Broadcast: send → last client's receipt",
            "ms (log)",
            &["p50", "p99", "last client (median round)"],
            pick(&["/receive_ms/p50", "/receive_ms/p99", "/time_to_last_ms"]),
            true,
        )?,
        "homing" => chart(
            "homing-deliveries-per-s.svg",
            "Homing workload: deliveries per second (300 users per push)",
            "deliveries/s",
            &["deliveries/s"],
            pick(&["/deliveries_per_s"]),
            false,
        )?,
        "latency" => chart(
            "latency-percentiles.svg",
            "Push → receive latency at 50% of the homing maximum",
            "ms (log)",
            &["p50", "p99", "p999"],
            pick(&["/latency_ms/p50", "/latency_ms/p99", "/latency_ms/p999"]),
            true,
        )?,
        _ => {}
    }
    Ok(made)
}

/// Axis numbers: 0.5, 12, 1.5k, 20k, 1.2M.
fn short_number(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = if scaled.fract().abs() < 1e-9 || scaled.abs() >= 10.0 {
        format!("{scaled:.0}")
    } else {
        format!("{scaled:.1}")
    };
    format!("{text}{suffix}")
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

/// Grouped vertical bars: one group per row, one bar per series.
fn bar_chart(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[&str],
    rows: &[(String, Vec<f64>)],
    log: bool,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let width = (160 + rows.len() as u32 * 150).max(640);
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let values = rows.iter().flat_map(|(_, v)| v.iter().copied());
    let max = values.clone().fold(0.0f64, f64::max).max(1e-9);
    let min_positive = values.filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let n = rows.len() as f64;
    let labels: Vec<String> = rows.iter().map(|(l, _)| l.clone()).collect();
    let label_of = move |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let group = 0.8;
    let bar = group / series.len() as f64;
    let bars = rows.iter().enumerate().flat_map(|(i, (_, vals))| {
        vals.iter().enumerate().map(move |(j, &v)| {
            let x0 = i as f64 - group / 2.0 + j as f64 * bar;
            (x0, x0 + bar * 0.92, v, j)
        })
    });
    macro_rules! draw {
        ($chart:expr, $base:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(rows.len() * 2 + 1)
                .x_label_formatter(&label_of)
                .y_label_formatter(&|y: &f64| short_number(*y))
                .y_desc(unit)
                .draw()
                .map_err(|e| err(&e))?;
            for (j, name) in series.iter().enumerate() {
                let color = COLORS[j % COLORS.len()];
                let mine: Vec<_> = bars.clone().filter(|b| b.3 == j).collect();
                chart
                    .draw_series(mine.into_iter().map(|(x0, x1, v, _)| {
                        Rectangle::new([(x0, $base), (x1, v.max($base))], color.filled())
                    }))
                    .map_err(|e| err(&e))?
                    .label(*name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                    });
            }
            if series.len() > 1 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|e| err(&e))?;
            }
        }};
    }
    let builder = || {
        let mut b = ChartBuilder::on(&root);
        b.caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(36)
            .y_label_area_size(90);
        b
    };
    if log {
        let lo = if min_positive.is_finite() {
            10f64.powf((min_positive / 2.0).log10().floor())
        } else {
            0.1
        };
        let hi = 10f64.powf((max * 2.0).log10().ceil());
        let chart = builder()
            .build_cartesian_2d(-0.6..n - 0.4, (lo..hi).log_scale())
            .map_err(|e| err(&e))?;
        draw!(chart, lo);
    } else {
        let chart = builder()
            .build_cartesian_2d(-0.6..n - 0.4, 0.0..max * 1.15)
            .map_err(|e| err(&e))?;
        draw!(chart, 0.0);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(short_number(1_000_000.0), "1M");
        assert_eq!(short_number(1500.0), "1.5k");
        assert_eq!(short_number(20_000.0), "20k");
        assert_eq!(short_number(0.5), "0.5");
        assert_eq!(short_number(100.0), "100");
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(fmt_number(1234567.0, 0), "1,234,567");
        assert_eq!(fmt_number(-1234.5, 1), "-1,234.5");
        assert_eq!(fmt_number(12.345, 2), "12.35");
        assert_eq!(fmt_number(f64::NAN, 2), "–");
    }

    #[test]
    fn report_merges_runs_and_writes_summary_and_charts() {
        let dir =
            std::env::temp_dir().join(format!("pushgate-bench-report-{}", std::process::id()));
        let raw = dir.join("raw");
        std::fs::create_dir_all(&raw).unwrap();
        let machine = serde_json::json!({"cores": 2, "cpu_model": "x", "mem_total_bytes": 1u64 << 34,
            "kernel": "6.18", "open_files_limit": 20000, "note": "n"});
        for (server, bytes, dps) in [
            ("pushgate", 130.0, 900_000.0),
            ("node-ws", 5600.0, 150_000.0),
        ] {
            let idle = serde_json::json!({"scenario": "idle", "server": server, "machine": machine,
                "conns_requested": 300, "conns_established": 300, "server_rss_per_conn_bytes": bytes,
                "server_open_fds": 15, "connect_rate_per_s": 5000.0, "failures": {}});
            std::fs::write(
                raw.join(format!("idle-300-{server}.json")),
                idle.to_string(),
            )
            .unwrap();
            let homing = serde_json::json!({"scenario": "homing", "server": server, "machine": machine,
                "deliveries_per_s": dps, "server_cpu_s_per_million": 1.5, "lost": 0, "duplicates": 0,
                "cpu": {"box_busy_fraction": 0.9}, "connect_failures": {}, "ok": true});
            std::fs::write(
                raw.join(format!("homing-{server}.json")),
                homing.to_string(),
            )
            .unwrap();
        }
        run(ReportArgs {
            dir: dir.clone(),
            baseline: "pushgate".to_string(),
        })
        .unwrap();
        let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(
            summary.contains("| node-ws @ 300 | 5,600 | 43.08 |"),
            "{summary}"
        );
        assert!(
            summary.contains("| node-ws | 150,000 | 0.17 |"),
            "{summary}"
        );
        let merged: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("idle.json")).unwrap()).unwrap();
        assert_eq!(merged["runs"].as_array().unwrap().len(), 2);
        for svg in ["idle-bytes-per-conn.svg", "homing-deliveries-per-s.svg"] {
            let text = std::fs::read_to_string(dir.join(svg)).unwrap();
            assert!(
                text.starts_with("<svg") && text.contains("node-ws"),
                "{svg}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
