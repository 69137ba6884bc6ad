//! `pushgate-bench report`: merges a results directory's raw run files into
//! one JSON per scenario, a Markdown summary and SVG charts.
//!
//! Input: `DIR/raw/*.json`, each one run of one scenario against one server
//! (what the scenario subcommands write with `--json`), and
//! `DIR/environment.json` (`pushgate-bench environment`). A server usually
//! has several runs of a scenario: tables show their median and, in
//! brackets, the lowest and highest; ratios are of medians, server ÷
//! baseline. Output: `DIR/<scenario>.json` (`{"scenario", "environment",
//! "runs": […]}`), `DIR/summary.md`, `DIR/*.svg`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};

use crate::machine::SHARED_CORES_NOTE;
use crate::report_chart::{self as chart, Bar, BarRows, Line};

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// The results directory (holds raw/*.json).
    #[arg(long)]
    pub dir: PathBuf,
    /// The server the ratios are taken against.
    #[arg(long, default_value = "pushgate")]
    pub baseline: String,
    /// The latency table's rate (deliveries/s) [default: the highest step
    /// every server kept up with in every run].
    #[arg(long)]
    pub equal_rate: Option<f64>,
}

/// Scenarios in the order the summary lists them.
const SCENARIOS: [&str; 8] = [
    "idle",
    "idle-max",
    "upgrade",
    "broadcast",
    "homing",
    "latency",
    "cluster",
    "million",
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
            m("user B/conn", "/server_rss_per_conn_bytes", true, 0),
            m("kernel B/conn", "/kernel_per_conn_bytes", true, 0),
            m("total B/conn", "/total_per_conn_bytes", true, 0),
            m("conn/s", "/connect_rate_per_s", false, 0),
            m("server fds", "/server_open_fds", true, 0),
        ],
        "idle-max" => vec![
            m("max held", "/max_held", false, 0),
            m("user B/conn", "/server_rss_per_conn_bytes", true, 0),
            m("kernel B/conn", "/kernel_per_conn_bytes", true, 0),
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
            m(
                "TCP segments per delivery",
                "/tcp_segments_per_delivery",
                true,
                2,
            ),
            m("lost", "/lost", true, 0),
            m("dup", "/duplicates", true, 0),
            m("reordered", "/reordered", true, 0),
            m("box busy", "/cpu/box_busy_fraction", true, 2),
        ],
        "cluster" => vec![
            m("deliveries/s", "/deliveries_per_s", false, 0),
            m("p50 ms", "/latency_ms/p50", true, 2),
            m("p99 ms", "/latency_ms/p99", true, 2),
            m(
                "gateways CPU s per M",
                "/gateways_cpu_s_per_million",
                true,
                2,
            ),
            m("Redis CPU s per M", "/redis_cpu_s_per_million", true, 2),
            m("lost", "/lost", true, 0),
            m("dup", "/duplicates", true, 0),
            m("reordered", "/reordered", true, 0),
            m("box busy", "/cpu/box_busy_fraction", true, 2),
        ],
        // Derived rows (latency_rows).
        "latency" => vec![
            m("p50 ms", "/p50", true, 2),
            m("p99 ms", "/p99", true, 2),
            m("p999 ms", "/p999", true, 2),
            m("achieved/s", "/achieved", false, 0),
            m("server CPU s per M", "/cpu_per_m", true, 2),
            m("lost", "/lost", true, 0),
        ],
        "latency-max" => vec![
            m("highest rate kept up", "/max_kept_up", false, 0),
            m("p99 ms there", "/p99_at_max", true, 2),
            m("server CPU s per M there", "/cpu_at_max", true, 2),
        ],
        "million" => vec![
            m("established", "/established", false, 0),
            m("held after hold", "/held_after_hold", false, 0),
            m("push received", "/push_received", false, 0),
            m("missing", "/push_missing", true, 0),
            m("time to last ms", "/push_time_to_last_ms", true, 0),
            m("user B/conn", "/server_rss_per_conn_bytes", true, 0),
            m("kernel B/conn", "/kernel_per_conn_bytes", true, 0),
            m("server fds", "/server_open_fds", true, 0),
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

/// The median and range of a row's runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// `None` without a finite value. The median of an even count is the
    /// mean of the middle two.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    fn bar(self) -> Bar {
        Bar {
            median: self.median,
            min: self.min,
            max: self.max,
        }
    }
}

fn spread_at(runs: &[&Value], pointer: &str) -> Option<Spread> {
    Spread::of(
        runs.iter()
            .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64)),
    )
}

/// Rows in order: the baseline first, then by name; idle by size first.
fn rows<'a>(runs: &'a [Value], baseline: &str) -> Vec<(String, Vec<&'a Value>)> {
    let mut by_key: BTreeMap<(u64, bool, String), Vec<&Value>> = BTreeMap::new();
    for run in runs {
        let server = run["server"].as_str().unwrap_or("");
        let size = match run["scenario"].as_str() {
            Some("idle") => run["conns_requested"].as_u64().unwrap_or(0),
            _ => 0,
        };
        by_key
            .entry((size, server != baseline, row_key(run)))
            .or_default()
            .push(run);
    }
    by_key.into_iter().map(|((_, _, k), v)| (k, v)).collect()
}

fn read_runs(raw: &Path) -> Result<BTreeMap<String, Vec<Value>>, String> {
    let mut by_scenario: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(raw)
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
    Ok(by_scenario)
}

pub fn run(args: ReportArgs) -> Result<(), String> {
    let by_scenario = read_runs(&args.dir.join("raw"))?;
    if by_scenario.is_empty() {
        return Err(format!(
            "no run files in {}",
            args.dir.join("raw").display()
        ));
    }
    let environment: Value = std::fs::read_to_string(args.dir.join("environment.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let mut md = String::new();
    header(&mut md, &environment, &by_scenario, &args.baseline);
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
        let Some(runs) = by_scenario.get(&scenario) else {
            continue;
        };
        let mut merged = json!({
            "scenario": scenario,
            "environment": environment,
            "note": SHARED_CORES_NOTE,
            "runs": runs,
        });
        if scenario == "latency" {
            let latency = latency_section(&args, runs)?;
            merged["equal_rate_deliveries_per_s"] = json!(latency.equal_rate);
            md.push_str(&latency.markdown);
            charts.extend(latency.charts);
        } else {
            md.push_str(&table(&scenario, runs, &args.baseline));
            charts.extend(chart_scenario(&args.dir, &scenario, runs, &args.baseline)?);
        }
        crate::machine::write_json(&args.dir.join(format!("{scenario}.json")), &merged)?;
    }
    if !charts.is_empty() {
        let _ = writeln!(md, "## Charts\n");
        let _ = writeln!(
            md,
            "Bars are each server's median run; whiskers span its lowest to highest run.\n"
        );
        for chart in &charts {
            let _ = writeln!(md, "![{chart}]({chart})\n");
        }
    }
    let summary = args.dir.join("summary.md");
    std::fs::write(&summary, md).map_err(|e| format!("{}: {e}", summary.display()))?;
    println!("wrote {} and {} charts", summary.display(), charts.len());
    Ok(())
}

fn header(
    md: &mut String,
    env: &Value,
    by_scenario: &BTreeMap<String, Vec<Value>>,
    baseline: &str,
) {
    let _ = writeln!(md, "# pushgate benchmarks\n");
    let machine = if env["machine"].is_object() {
        &env["machine"]
    } else {
        by_scenario
            .values()
            .flatten()
            .map(|r| &r["machine"])
            .next()
            .unwrap_or(&Value::Null)
    };
    let _ = writeln!(
        md,
        "Machine: {} cores ({}), {:.1} GiB, Linux {}, open files {} per process.\n",
        machine["cores"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["mem_total_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        machine["kernel"].as_str().unwrap_or("?"),
        machine["open_files_limit"]
    );
    if env.is_object() {
        let meta = &env["meta"];
        let _ = writeln!(
            md,
            "Command: `{}` (seed {}, {} runs per server and scenario, shuffled), started {}, git {}{}.\n",
            meta["command"].as_str().unwrap_or("?"),
            meta["seed"].as_str().unwrap_or("?"),
            meta["repeats"].as_str().unwrap_or("?"),
            meta["started"].as_str().unwrap_or("?"),
            env["git_commit"].as_str().unwrap_or("?"),
            match env["git_changed_files"].as_u64() {
                Some(0) | None => String::new(),
                Some(n) => format!(" with {n} files changed"),
            }
        );
        let tools = &env["tools"];
        let crates = &env["crates"];
        let npm = &env["npm"];
        let first = |v: &Value| v.as_array().and_then(|a| a.last()).cloned();
        let _ = writeln!(
            md,
            "Versions: {}; {}; Node {}, npm `ws` {}, `socket.io` {}, `@socket.io/redis-adapter` {}, `redis` {}, uWebSockets.js {} ({}); {}; crates tokio {}, tokio-tungstenite {}, io-uring {}.\n",
            tools["rustc"].as_str().unwrap_or("?"),
            machine["kernel"].as_str().map(|k| format!("Linux {k}")).unwrap_or_default(),
            tools["node"].as_str().unwrap_or("?"),
            npm["ws"].as_str().unwrap_or("?"),
            npm["socket.io"].as_str().unwrap_or("?"),
            npm["@socket.io/redis-adapter"].as_str().unwrap_or("?"),
            npm["redis"].as_str().unwrap_or("?"),
            npm["@trufflesuite/uws-js-unofficial"].as_str().unwrap_or("?"),
            env["uws_binary"].as_str().unwrap_or("?"),
            tools["redis-server"].as_str().unwrap_or("?"),
            first(&crates["tokio"]).unwrap_or(Value::Null),
            first(&crates["tokio-tungstenite"]).unwrap_or(Value::Null),
            first(&crates["io-uring"]).unwrap_or(Value::Null),
        );
        let sysctl = &env["sysctl"];
        let _ = writeln!(
            md,
            "Kernel settings: somaxconn {}, tcp_max_syn_backlog {}, tcp_tw_reuse {}, ip_local_port_range {}.\n",
            sysctl["net.core.somaxconn"].as_str().unwrap_or("?"),
            sysctl["net.ipv4.tcp_max_syn_backlog"].as_str().unwrap_or("?"),
            sysctl["net.ipv4.tcp_tw_reuse"].as_str().unwrap_or("?"),
            sysctl["net.ipv4.ip_local_port_range"].as_str().unwrap_or("?"),
        );
    }
    let loads = Spread::of(by_scenario.values().flatten().filter_map(|r| {
        r.pointer("/server_info/meta/load1")
            .and_then(Value::as_str)
            .and_then(|l| l.parse().ok())
    }));
    if let Some(l) = loads {
        let _ = writeln!(
            md,
            "1-minute load average when each run started: {:.2}–{:.2} (median {:.2}, {} runs; at the start of the whole run {}).\n",
            l.min,
            l.max,
            l.median,
            l.n,
            env["meta"]["load_at_start"].as_str().unwrap_or("?")
        );
    }
    let _ = writeln!(md, "**Note:** {SHARED_CORES_NOTE}.\n");
    let _ = writeln!(
        md,
        "Each cell is the median of a server's runs, with the lowest and highest in brackets. \
         Ratios (×{baseline}) are of medians, server ÷ {baseline}: above 1 is more of the quantity \
         (better for conn/s and deliveries/s, worse for bytes, milliseconds and CPU). \
         `pushgate-backlog512` is pushgate with `--listen-backlog 512`, the backlog uSockets (uWebSockets.js) \
         hardcodes. Memory: user space is the growth of the server's RSS (all its processes); kernel is the \
         growth of slab and socket buffers over both ends of every loopback connection less the load \
         generator's end (one socket and one epoll entry per connection), so it is the server's end; \
         total is their sum.\n"
    );
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

/// `median (min–max)`, or the one value.
fn fmt_spread(s: Option<Spread>, digits: usize) -> String {
    match s {
        None => "–".to_string(),
        Some(s) if s.n == 1 || s.min == s.max => fmt_number(s.median, digits),
        Some(s) => format!(
            "{} ({}–{})",
            fmt_number(s.median, digits),
            fmt_number(s.min, digits),
            fmt_number(s.max, digits)
        ),
    }
}

/// A table of `runs` (already grouped by `rows`) for `metrics`.
fn table_of(
    title: &str,
    metrics: &[Metric],
    rows: &[(String, Vec<&Value>)],
    base_of: &dyn Fn(&str) -> Option<String>,
    baseline: &str,
) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "## {title}\n");
    let mut header = "| server | runs |".to_string();
    let mut rule = "|---|---:|".to_string();
    for metric in metrics {
        let arrow = if metric.lower_is_better { "↓" } else { "↑" };
        let _ = write!(header, " {} {arrow} | ×{baseline} |", metric.title);
        rule.push_str("---:|---:|");
    }
    header.push_str(" notes |");
    rule.push_str("---|");
    let _ = writeln!(t, "{header}\n{rule}");
    let index: BTreeMap<&str, &Vec<&Value>> = rows.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (key, runs) in rows {
        let base = base_of(key).and_then(|k| index.get(k.as_str()).copied());
        let mut line = format!("| {key} | {} |", runs.len());
        for metric in metrics {
            let mine = spread_at(runs, metric.pointer);
            let theirs = base.and_then(|b| spread_at(b, metric.pointer));
            let ratio = match (mine, theirs) {
                (Some(v), Some(b)) if b.median != 0.0 => format!("{:.2}", v.median / b.median),
                _ => "–".to_string(),
            };
            let _ = write!(line, " {} | {ratio} |", fmt_spread(mine, metric.digits));
        }
        let _ = writeln!(line, " {} |", notes(runs));
        t.push_str(&line);
    }
    t.push('\n');
    t
}

fn table(scenario: &str, runs: &[Value], baseline: &str) -> String {
    let rows = rows(runs, baseline);
    let base_of = |key: &str| -> Option<String> {
        let run = rows.iter().find(|(k, _)| k == key)?.1.first()?;
        Some(baseline_key(run, baseline))
    };
    table_of(scenario, &metrics(scenario), &rows, &base_of, baseline)
}

fn notes(runs: &[&Value]) -> String {
    let mut notes = Vec::new();
    let not_ok = runs
        .iter()
        .filter(|r| r["ok"] == Value::Bool(false))
        .count();
    if not_ok > 0 {
        notes.push(format!("{not_ok} of {} runs not ok", runs.len()));
    }
    let stopped: BTreeSet<&str> = runs
        .iter()
        .filter_map(|r| r["stopped_by"].as_str())
        .collect();
    if !stopped.is_empty() {
        let list: Vec<&str> = stopped.into_iter().collect();
        notes.push(format!("stopped by: {}", list.join(" / ")));
    }
    let backlogs: BTreeSet<&str> = runs
        .iter()
        .filter_map(|r| r.pointer("/server_info/meta/listen_backlogs")?.as_str())
        .collect();
    if runs[0]["scenario"] == "upgrade" && !backlogs.is_empty() {
        let list: Vec<&str> = backlogs.into_iter().collect();
        notes.push(format!("listen backlog {}", list.join(" / ")));
    }
    for key in [
        "failures",
        "connect_failures",
        "dropped_connections",
        "dropped",
    ] {
        let mut total = 0;
        let mut top: BTreeMap<&str, u64> = BTreeMap::new();
        for run in runs {
            if let Some(map) = run[key].as_object() {
                for (why, n) in map {
                    let n = n.as_u64().unwrap_or(0);
                    total += n;
                    *top.entry(why.as_str()).or_default() += n;
                }
            }
        }
        if total > 0 {
            let why = top.iter().max_by_key(|(_, n)| **n).map_or("", |(w, _)| *w);
            notes.push(format!("{key}: {total} in all ({why})"));
        }
    }
    notes.join("; ").replace('|', "/")
}

// ------------------------------------------------------------------ latency

struct LatencySection {
    equal_rate: Option<f64>,
    markdown: String,
    charts: Vec<String>,
}

fn steps(run: &Value) -> impl Iterator<Item = &Value> {
    run["steps"].as_array().into_iter().flatten()
}

fn step_at(run: &Value, rate: f64) -> Option<&Value> {
    steps(run).find(|s| {
        s["rate_target_deliveries_per_s"]
            .as_f64()
            .is_some_and(|r| (r - rate).abs() < 0.5)
    })
}

fn kept_up(step: &Value) -> bool {
    step["kept_up"] == Value::Bool(true)
}

/// The highest step rate every row kept up with in every run.
fn equal_rate(rows: &[(String, Vec<&Value>)]) -> Option<f64> {
    let rates: BTreeSet<u64> = rows
        .iter()
        .flat_map(|(_, runs)| runs.iter().flat_map(|r| steps(r)))
        .filter_map(|s| s["rate_target_deliveries_per_s"].as_f64())
        .map(|r| r.round() as u64)
        .collect();
    rates.into_iter().rev().map(|r| r as f64).find(|&rate| {
        rows.iter().all(|(_, runs)| {
            runs.iter()
                .all(|run| step_at(run, rate).is_some_and(kept_up))
        })
    })
}

/// A latency run as a flat row: its step at `rate`, and its highest rate
/// kept up with.
fn latency_row(run: &Value, rate: Option<f64>) -> Value {
    let at = rate.and_then(|r| step_at(run, r));
    let max = run["max_kept_up_deliveries_per_s"].as_f64();
    let at_max = max.and_then(|r| step_at(run, r));
    json!({
        "scenario": "latency",
        "server": run["server"],
        "ok": run["ok"],
        "connect_failures": run["connect_failures"],
        "dropped_connections": run["dropped_connections"],
        "p50": at.map(|s| &s["latency_ms"]["p50"]),
        "p99": at.map(|s| &s["latency_ms"]["p99"]),
        "p999": at.map(|s| &s["latency_ms"]["p999"]),
        "achieved": at.map(|s| &s["achieved_deliveries_per_s"]),
        "cpu_per_m": at.map(|s| &s["server_cpu_s_per_million"]),
        "lost": at.map(|s| &s["lost"]),
        "max_kept_up": max,
        "p99_at_max": at_max.map(|s| &s["latency_ms"]["p99"]),
        "cpu_at_max": at_max.map(|s| &s["server_cpu_s_per_million"]),
    })
}

fn latency_section(args: &ReportArgs, runs: &[Value]) -> Result<LatencySection, String> {
    let grouped = rows(runs, &args.baseline);
    let equal_rate = args.equal_rate.or_else(|| equal_rate(&grouped));
    let derived: Vec<(String, Vec<Value>)> = grouped
        .iter()
        .map(|(k, runs)| {
            (
                k.clone(),
                runs.iter().map(|r| latency_row(r, equal_rate)).collect(),
            )
        })
        .collect();
    let flat: Vec<(String, Vec<&Value>)> = derived
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().collect()))
        .collect();
    let base = args.baseline.clone();
    let base_of = move |_: &str| Some(base.clone());
    let mut md = String::new();
    let title = match equal_rate {
        Some(r) => format!(
            "latency at {} deliveries/s offered to every server",
            fmt_number(r, 0)
        ),
        None => "latency (no rate every server kept up with)".to_string(),
    };
    md.push_str(&table_of(
        &title,
        &metrics("latency"),
        &flat,
        &base_of,
        &args.baseline,
    ));
    let _ = writeln!(
        md,
        "Paced pushes of 200 bytes to 300 random users each, stamped with the time they were due \
         (a late send counts as latency); the rate is the highest step of the ladder that every server \
         kept up with (delivered ≥ {:.0} % of it, nothing lost) in every run.\n",
        crate::push::KEEP_UP_FRACTION * 100.0
    );
    md.push_str(&table_of(
        "latency: each server's saturation",
        &metrics("latency-max"),
        &flat,
        &base_of,
        &args.baseline,
    ));
    let mut charts = Vec::new();
    if let Some(rate) = equal_rate {
        let rows: BarRows = flat
            .iter()
            .filter_map(|(k, runs)| {
                let bars: Option<Vec<Bar>> = ["/p50", "/p99", "/p999"]
                    .iter()
                    .map(|p| spread_at(runs, p).map(Spread::bar))
                    .collect();
                bars.map(|b| (k.clone(), b))
            })
            .collect();
        if !rows.is_empty() {
            let file = "latency-equal-rate.svg";
            chart::bars(
                &args.dir.join(file),
                &format!(
                    "Push → receive latency at {} deliveries/s",
                    chart::short_number(rate)
                ),
                "ms (log)",
                &["p50", "p99", "p999"],
                &rows,
                true,
            )?;
            charts.push(file.to_string());
        }
    }
    // Saturation curves: per server, the median over its runs at each rate.
    let mut achieved: Vec<Line> = Vec::new();
    let mut p99: Vec<Line> = Vec::new();
    for (key, runs) in &grouped {
        let rates: BTreeSet<u64> = runs
            .iter()
            .flat_map(|r| steps(r))
            .filter_map(|s| s["rate_target_deliveries_per_s"].as_f64())
            .map(|r| r.round() as u64)
            .collect();
        let mut a = Vec::new();
        let mut p = Vec::new();
        for rate in rates {
            let at: Vec<&Value> = runs
                .iter()
                .filter_map(|r| step_at(r, rate as f64))
                .collect();
            let x = rate as f64;
            if let Some(s) = spread_at(&at, "/achieved_deliveries_per_s") {
                a.push((x, s.median));
            }
            if let Some(s) = spread_at(&at, "/latency_ms/p99") {
                p.push((x, s.median));
            }
        }
        achieved.push((key.clone(), a));
        p99.push((key.clone(), p));
    }
    if achieved.iter().any(|(_, points)| !points.is_empty()) {
        let file = "latency-saturation.svg";
        chart::lines_pair(
            &args.dir.join(file),
            "offered deliveries/s",
            ("Delivered vs offered", "deliveries/s", &achieved),
            ("p99 push → receive vs offered", "ms (log)", &p99),
        )?;
        charts.push(file.to_string());
    }
    Ok(LatencySection {
        equal_rate,
        markdown: md,
        charts,
    })
}

// ------------------------------------------------------------------- charts

fn chart_scenario(
    dir: &Path,
    scenario: &str,
    runs: &[Value],
    baseline: &str,
) -> Result<Vec<String>, String> {
    let grouped = rows(runs, baseline);
    let pick = |pointers: &[&str]| -> BarRows {
        grouped
            .iter()
            .filter_map(|(key, runs)| {
                let bars: Option<Vec<Bar>> = pointers
                    .iter()
                    .map(|p| spread_at(runs, p).map(Spread::bar))
                    .collect();
                bars.map(|b| (key.clone(), b))
            })
            .collect()
    };
    let mut made = Vec::new();
    let mut draw =
        |file: &str, title: &str, unit: &str, series: &[&str], rows: BarRows, log: bool| {
            if rows.is_empty() {
                return Ok(());
            }
            chart::bars(&dir.join(file), title, unit, series, &rows, log)?;
            made.push(file.to_string());
            Ok::<(), String>(())
        };
    match scenario {
        "idle" => draw(
            "idle-bytes-per-conn.svg",
            "Server memory per idle connection: user space, kernel (server's end), total",
            "bytes (log)",
            &["user space", "kernel", "total"],
            pick(&[
                "/server_rss_per_conn_bytes",
                "/kernel_per_conn_bytes",
                "/total_per_conn_bytes",
            ]),
            true,
        )?,
        "idle-max" => draw(
            "idle-max-held.svg",
            "Most connections held by one server",
            "connections",
            &["max held"],
            pick(&["/max_held"]),
            false,
        )?,
        "upgrade" => draw(
            "upgrade-conns-per-s.svg",
            "Connections upgraded per second (1,024 handshakes in flight)",
            "conn/s",
            &["conn/s"],
            pick(&["/conns_per_s"]),
            false,
        )?,
        "broadcast" => draw(
            "broadcast-time-to-last.svg",
            "Broadcast: send → receipt (median round of each run)",
            "ms (log)",
            &["p50", "p99", "last client"],
            pick(&["/receive_ms/p50", "/receive_ms/p99", "/time_to_last_ms"]),
            true,
        )?,
        "homing" => {
            draw(
                "homing-deliveries-per-s.svg",
                "Homing workload: deliveries per second (300 users per push)",
                "deliveries/s",
                &["deliveries/s"],
                pick(&["/deliveries_per_s"]),
                false,
            )?;
            draw(
                "homing-cpu-per-million.svg",
                "Homing workload: server CPU seconds per million deliveries",
                "CPU s",
                &["server CPU s per M"],
                pick(&["/server_cpu_s_per_million"]),
                false,
            )?;
        }
        _ => {}
    }
    Ok(made)
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
