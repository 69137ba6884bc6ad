//! kernel-tuning/: the sysctl profile, the limits and unit that must agree
//! with it, and the scripts that apply and check it.
//!
//! These tests never change the host's settings: `--dry-run` only reads,
//! and real writes happen inside a network namespace the test creates
//! (`unshare --net`, per-namespace keys only; it is gone when the command
//! exits). That test needs root and a working `unshare` (util-linux) and is
//! skipped, saying why, without them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kernel_tuning() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-tuning")
}

fn read(rel: &str) -> String {
    let path = kernel_tuning().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One `key = value` of the sysctl profile.
#[derive(Debug)]
struct Key {
    name: String,
    value: String,
    /// `[netns]` in its comment block (else `[global]`).
    netns: bool,
    /// Written `-key = value`: skipped when the kernel lacks it.
    optional: bool,
}

/// Parses the profile independently of the scripts' own parser.
fn profile() -> Vec<Key> {
    parse_profile(&read("sysctl.d/90-pushgate.conf"))
}

/// Parses a sysctl.d profile (the shipped one, or one apply.sh rendered).
fn parse_profile(text: &str) -> Vec<Key> {
    let mut keys = Vec::new();
    let mut scope: Option<bool> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            scope = None;
        } else if line.starts_with('#') || line.starts_with(';') {
            if scope.is_none() {
                if line.contains("[netns]") {
                    scope = Some(true);
                } else if line.contains("[global]") {
                    scope = Some(false);
                }
            }
        } else {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("line {}: not key = value: {line}", n + 1));
            let k = k.trim();
            let netns =
                scope.unwrap_or_else(|| panic!("line {}: {k} has no [netns]/[global] tag", n + 1));
            keys.push(Key {
                name: k.trim_start_matches('-').to_owned(),
                value: squeeze(v),
                netns,
                optional: k.starts_with('-'),
            });
            scope = None;
        }
    }
    keys
}

fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn proc_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Current values of every profile key in this process's namespaces (None: absent).
fn snapshot(keys: &[Key]) -> BTreeMap<String, Option<String>> {
    keys.iter()
        .map(|k| {
            let v = std::fs::read_to_string(proc_path(&k.name))
                .ok()
                .map(|s| squeeze(&s));
            (k.name.clone(), v)
        })
        .collect()
}

fn script(name: &str) -> Command {
    let mut cmd = Command::new(kernel_tuning().join(name));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The value of `Name=` in the unit file (last one wins, as in systemd).
fn unit_setting(unit: &str, name: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
}

/// The keys the scripts derive (`auto` in the profile).
const DERIVED_KEYS: [&str; 8] = [
    "fs.nr_open",
    "fs.file-max",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_max_tw_buckets",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_buckets",
];

/// What a host and a deployment look like to the sizing.
struct Sizing {
    memory_bytes: u64,
    connections: u64,
    /// Sorted, comma-separated, as the scripts print them.
    ports: &'static str,
    drain_rate_per_s: u64,
    drain_deadline_s: u64,
}

impl Sizing {
    fn new(memory_bytes: u64, connections: u64) -> Sizing {
        Sizing {
            memory_bytes,
            connections,
            ports: "8080,9090",
            drain_rate_per_s: 1000,
            drain_deadline_s: 600,
        }
    }
}

fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

const GIB: u64 = 1 << 30;

/// The derived values, computed here from the rules in the profile's
/// comments, independently of lib.sh.
fn expected_derived(s: &Sizing) -> BTreeMap<&'static str, String> {
    const MI: u64 = 1 << 20;
    let up_mi = |v: u64| v.div_ceil(MI) * MI;
    let n = s.connections;
    let nofile: u64 = unit_setting(&read("systemd/pushgate.service"), "LimitNOFILE")
        .unwrap()
        .parse()
        .unwrap();
    let pages = s.memory_bytes / page_bytes();
    let tcp_max = n.max(pages * 3 / 32).min(pages / 2);
    let rate = s.drain_rate_per_s.max(n.div_ceil(s.drain_deadline_s));
    let kernel_default = (s.memory_bytes / 131_072).next_power_of_two() / 2;
    let conntrack = up_mi(n * 6 / 5).max(262_144);
    BTreeMap::from([
        (
            "fs.nr_open",
            up_mi(n * 8 / 5).max(nofile).min(2_147_483_584).to_string(),
        ),
        (
            "fs.file-max",
            up_mi(n * 12 / 5)
                .max(s.memory_bytes / 1024 / 10)
                .to_string(),
        ),
        ("net.ipv4.ip_local_reserved_ports", s.ports.to_owned()),
        (
            "net.ipv4.tcp_mem",
            format!("{} {} {}", tcp_max / 2, tcp_max * 3 / 4, tcp_max),
        ),
        (
            "net.ipv4.tcp_max_orphans",
            (rate * 15 * 2).max(kernel_default).to_string(),
        ),
        (
            "net.ipv4.tcp_max_tw_buckets",
            (rate * 60 * 2).max(kernel_default).to_string(),
        ),
        ("net.netfilter.nf_conntrack_max", conntrack.to_string()),
        (
            "net.netfilter.nf_conntrack_buckets",
            (conntrack / 4).to_string(),
        ),
    ])
}

/// The `derived KEY = VALUE: why` lines of a script's output.
fn derived_lines(stdout: &str) -> BTreeMap<String, (String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("derived "))
        .map(|l| {
            let (key, rest) = l.split_once(" = ").unwrap();
            let (value, why) = rest.split_once(": ").unwrap();
            (key.to_owned(), (value.to_owned(), why.to_owned()))
        })
        .collect()
}

/// Runs `apply.sh --dry-run` with `args`, asserting success.
fn dry_run(args: &[&str]) -> String {
    let out = script("apply.sh")
        .arg("--dry-run")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts that a dry run derived exactly `expected`, each with a reason.
fn assert_derived(stdout: &str, expected: &BTreeMap<&'static str, String>) {
    let got = derived_lines(stdout);
    assert_eq!(
        got.keys().map(String::as_str).collect::<Vec<_>>(),
        expected.keys().copied().collect::<Vec<_>>(),
        "{stdout}"
    );
    for (key, want) in expected {
        let (value, why) = &got[*key];
        assert_eq!(value, want, "{key}\n{stdout}");
        assert!(why.len() > 20, "{key} has no reason: {why:?}");
    }
}

/// A pushgate config file under the temp dir, removed on drop.
struct TempConfig(PathBuf);
impl TempConfig {
    fn new(name: &str, text: &str) -> TempConfig {
        let path =
            std::env::temp_dir().join(format!("pushgate-kt-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempConfig(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}
impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn profile_covers_the_host_and_marks_each_key_scope() {
    let keys = profile();
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    for required in [
        "fs.nr_open",
        "fs.file-max",
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.core.netdev_max_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_mem",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_tw_reuse",
        "net.ipv4.tcp_max_orphans",
        "net.ipv4.tcp_orphan_retries",
        "net.ipv4.tcp_slow_start_after_idle",
    ] {
        assert!(
            names.contains(&required),
            "{required} missing from the profile"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for k in &keys {
        assert!(seen.insert(&k.name), "{} appears twice", k.name);
        assert!(
            !k.netns || k.name.starts_with("net."),
            "{} is marked [netns]; only net.* keys can be",
            k.name
        );
        // Keys that exist only in the host's namespace must not be marked
        // [netns]: `apply.sh --only net` would then fail inside one.
        for global in [
            "net.ipv4.tcp_mem",
            "net.ipv4.tcp_max_orphans",
            "net.core.netdev_max_backlog",
        ] {
            assert!(
                !(k.name == global && k.netns),
                "{global} is global, not per namespace"
            );
        }
        // Tests never apply these; the profile must not call them per-namespace.
        for prefix in ["fs.", "vm.", "kernel."] {
            assert!(
                !(k.name.starts_with(prefix) && k.netns),
                "{} cannot be [netns]",
                k.name
            );
        }
    }

    // The values that depend on the host and the deployment are derived
    // (`auto`), and only those.
    let auto: Vec<&str> = keys
        .iter()
        .filter(|k| k.value == "auto")
        .map(|k| k.name.as_str())
        .collect();
    assert_eq!(auto, DERIVED_KEYS);

    // Every key's comment says for how many connections ("10 M", "17 k/s").
    let text = read("sysctl.d/90-pushgate.conf");
    for block in text
        .split("\n\n")
        .filter(|b| b.lines().any(|l| !l.starts_with('#')))
    {
        let counts = block
            .as_bytes()
            .windows(3)
            .any(|w| w[0].is_ascii_digit() && w[1] == b' ' && (w[2] == b'M' || w[2] == b'k'));
        assert!(
            counts,
            "this block does not say for how many connections:\n{block}"
        );
    }
}

#[test]
fn limits_unit_and_profile_agree() {
    let unit = read("systemd/pushgate.service");
    let limits = read("limits.d/90-pushgate.conf");
    // The smallest sizing still leaves room for the unit's open files.
    let derived = derived_lines(&dry_run(&["--connections", "1", "--memory", "1G"]));
    let nr_open: u64 = derived["fs.nr_open"].0.parse().unwrap();

    let nofile: u64 = unit_setting(&unit, "LimitNOFILE")
        .expect("LimitNOFILE=")
        .parse()
        .unwrap();
    assert!(
        nofile <= nr_open,
        "LimitNOFILE {nofile} > fs.nr_open {nr_open}: the unit would not start"
    );
    assert_eq!(
        unit_setting(&unit, "LimitMEMLOCK").as_deref(),
        Some("infinity")
    );

    let entries: Vec<Vec<&str>> = limits
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    for kind in ["soft", "hard"] {
        let find = |item: &str| {
            entries
                .iter()
                .find(|e| e[0] == "pushgate" && e[1] == kind && e[2] == item)
                .map(|e| e[3].to_owned())
                .unwrap_or_else(|| panic!("limits.d has no pushgate {kind} {item}"))
        };
        assert_eq!(
            find("nofile"),
            nofile.to_string(),
            "limits.d and LimitNOFILE differ"
        );
        assert_eq!(find("memlock"), "unlimited");
    }

    assert_eq!(
        unit_setting(&unit, "ExecStart").as_deref(),
        Some("/usr/local/bin/pushgate serve --run-dir /run/pushgate --config /etc/pushgate/pushgate.toml")
    );
    assert_eq!(
        unit_setting(&unit, "RuntimeDirectory").as_deref(),
        Some("pushgate")
    );
    assert_eq!(
        unit_setting(&unit, "Restart").as_deref(),
        Some("on-failure")
    );
    assert_eq!(unit_setting(&unit, "User").as_deref(), Some("pushgate"));
    assert!(unit_setting(&unit, "TimeoutStopSec").is_some());
    assert!(
        unit_setting(&unit, "ExecStop").is_none(),
        "SIGTERM drains; no ExecStop"
    );
    // A seccomp filter here would have to allow io_uring_*; the unit sets none.
    assert!(unit_setting(&unit, "SystemCallFilter").is_none());
    // The service's secret must survive restarts: not in the run directory.
    assert!(read("pushgate.toml").contains("secret_file = \"/var/lib/pushgate/secret\""));
    assert_eq!(
        unit_setting(&unit, "StateDirectory").as_deref(),
        Some("pushgate")
    );
}

#[test]
fn dry_run_prints_every_write_and_changes_nothing() {
    let keys = profile();
    let before = snapshot(&keys);
    let sizing = Sizing::new(16 * GIB, 1_000_000);
    let out = script("apply.sh")
        .args(["--dry-run", "--memory", "16G", "--connections", "1000000"])
        .args(["--ports", "9090,8080"])
        .output()
        .unwrap();
    let after = snapshot(&keys);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(before, after, "--dry-run changed /proc/sys");
    let derived = expected_derived(&sizing);
    assert_derived(&stdout, &derived);

    for k in &keys {
        let value = derived.get(k.name.as_str()).unwrap_or(&k.value);
        let line = stdout
            .lines()
            .find(|l| {
                l.starts_with(&format!("would write {} = ", k.name))
                    || l.starts_with(&format!("skip {} ", k.name))
            })
            .unwrap_or_else(|| panic!("no line for {}:\n{}", k.name, text(&out)));
        match &before[&k.name] {
            Some(now) => assert_eq!(
                line,
                format!(
                    "would write {} = {} (now {})",
                    k.name,
                    value,
                    if now.is_empty() { "(empty)" } else { now }
                )
            ),
            None => assert!(k.optional && line.starts_with("skip "), "{line}"),
        }
    }
}

/// Runs `script` in a new network namespace; None (with the reason printed)
/// when this machine cannot make one.
fn in_new_netns(script: &str) -> Option<Output> {
    if !is_root() {
        eprintln!("skipped: creating a network namespace needs root");
        return None;
    }
    match Command::new("unshare")
        .args(["--net", "--", "true"])
        .output()
    {
        Err(e) => {
            eprintln!("skipped: unshare (util-linux) not runnable: {e}");
            return None;
        }
        Ok(o) if !o.status.success() => {
            eprintln!(
                "skipped: unshare --net fails here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Ok(_) => {}
    }
    let out = Command::new("unshare")
        .args(["--net", "--", "bash", "-c", script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    Some(out)
}

#[test]
fn apply_then_check_inside_a_network_namespace() {
    let keys = profile();
    let host_before = snapshot(&keys);
    // tcp_mem exists only in the host's namespace: refuse to go on if it is
    // visible, so nothing here can ever write to the host.
    let script = r#"
        [ ! -e /proc/sys/net/ipv4/tcp_mem ] || { echo "NOT IN A NEW NETNS"; exit 97; }
        S="--memory 16G --connections 1000000"
        kernel-tuning/apply.sh --only net $S || exit 10
        echo "== check after apply"
        kernel-tuning/check.sh --only net $S || exit 11
        echo 1000 > /proc/sys/net/core/somaxconn
        printf '2000\t60001\n' > /proc/sys/net/ipv4/ip_local_port_range
        echo "== check after change"
        kernel-tuning/check.sh --only net $S
        echo "== rc $?"
        echo "== apply without --only net"
        kernel-tuning/apply.sh
        echo "== rc $?"
    "#;
    let Some(out) = in_new_netns(script) else {
        return;
    };
    let host_after = snapshot(&keys);
    assert_eq!(host_before, host_after, "the host's settings changed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));

    let (applied, rest) = stdout.split_once("== check after apply").unwrap();
    let (checked, rest) = rest.split_once("== check after change").unwrap();
    let (changed, refused) = rest.split_once("== apply without --only net").unwrap();
    let derived = expected_derived(&Sizing::new(16 * GIB, 1_000_000));
    for k in &keys {
        let value = derived.get(k.name.as_str()).unwrap_or(&k.value);
        if k.netns {
            assert!(
                applied.contains(&format!("wrote {} = {} ", k.name, value)),
                "{}\n{}",
                k.name,
                text(&out)
            );
            assert!(
                checked.contains(&format!("ok      {} = ", k.name)),
                "{}\n{}",
                k.name,
                text(&out)
            );
        } else {
            assert!(
                applied.contains(&format!("skip {} (global", k.name)),
                "{}\n{}",
                k.name,
                text(&out)
            );
            assert!(
                checked.contains(&format!("skip    {} (global", k.name)),
                "{}\n{}",
                k.name,
                text(&out)
            );
        }
    }
    assert!(checked.contains("0 differ"), "{}", text(&out));

    assert!(
        changed.contains("DIFFERS net.core.somaxconn: have 1000, want 65535"),
        "{}",
        text(&out)
    );
    assert!(
        changed.contains("DIFFERS net.ipv4.ip_local_port_range: have 2000 60001, want 1024 65535"),
        "{}",
        text(&out)
    );
    assert!(
        changed.contains("2 differ") && changed.contains("== rc 1"),
        "{}",
        text(&out)
    );

    // Without --only net, global keys would reach the host: refused.
    assert!(
        refused.contains("== rc 1") && !refused.contains("wrote "),
        "{}",
        text(&out)
    );
    assert!(
        stderr.contains("not the host's network namespace"),
        "{}",
        text(&out)
    );
}

#[test]
fn check_reports_the_open_file_limit_of_a_pid() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let pid = std::process::id().to_string();
    let out = script("check.sh").args(["--pid", &pid]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 0 or 1: this host need not be tuned; 2 would be a usage error.
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", text(&out));
    let line = stdout
        .lines()
        .find(|l| l.contains(&format!("ulimit -n (pid {pid})")))
        .unwrap_or_else(|| panic!("no open-file line:\n{}", text(&out)));
    assert!(
        line.contains(&soft),
        "expected soft limit {soft} in: {line}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(&format!("ulimit -l (pid {pid})"))),
        "{}",
        text(&out)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("kernel.io_uring_disabled")),
        "{}",
        text(&out)
    );
}

#[test]
fn install_into_a_root_directory_keeps_the_operators_config() {
    let root = std::env::temp_dir().join(format!("pushgate-kernel-tuning-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();

    let sizing = ["--memory", "16G", "--connections", "1000000"];
    let dry = script("apply.sh")
        .args(["--install", "--dry-run", "--root"])
        .arg(&root)
        .args(sizing)
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("would install"),
        "{}",
        text(&dry)
    );
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "--dry-run installed something"
    );

    let out = script("apply.sh")
        .args(["--install", "--root"])
        .arg(&root)
        .args(sizing)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("wrote "),
        "--root must not touch /proc/sys"
    );
    // The sysctl profile is installed sized: every `auto` replaced by its
    // derived value, the rest as shipped, still a profile the scripts read.
    let installed_profile = root.join("etc/sysctl.d/90-pushgate.conf");
    let installed = parse_profile(&std::fs::read_to_string(&installed_profile).unwrap());
    let derived = expected_derived(&Sizing::new(16 * GIB, 1_000_000));
    let shipped = profile();
    assert_eq!(installed.len(), shipped.len());
    for (got, want) in installed.iter().zip(&shipped) {
        assert_eq!(
            (&got.name, got.netns, got.optional),
            (&want.name, want.netns, want.optional)
        );
        assert_eq!(
            &got.value,
            derived.get(want.name.as_str()).unwrap_or(&want.value),
            "{}",
            want.name
        );
    }
    let check = script("check.sh")
        .arg("--profile")
        .arg(&installed_profile)
        .output()
        .unwrap();
    assert!(
        matches!(check.status.code(), Some(0 | 1)),
        "check.sh cannot read the installed profile:\n{}",
        text(&check)
    );
    for (src, dest) in [
        (
            "limits.d/90-pushgate.conf",
            "etc/security/limits.d/90-pushgate.conf",
        ),
        (
            "systemd/pushgate.service",
            "etc/systemd/system/pushgate.service",
        ),
        ("sysusers.d/pushgate.conf", "etc/sysusers.d/pushgate.conf"),
        ("pushgate.toml", "etc/pushgate/pushgate.toml"),
    ] {
        assert_eq!(
            std::fs::read_to_string(root.join(dest)).unwrap(),
            read(src),
            "{dest}"
        );
    }

    let config = root.join("etc/pushgate/pushgate.toml");
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    let again = script("apply.sh")
        .args(["--install", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# edited by the operator\n"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn apply_refuses_to_run_unprivileged() {
    let mut cmd = if is_root() {
        // Drop to nobody; skipped where setpriv is missing or nobody cannot
        // read the checkout.
        let probe = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "test",
                "-r",
            ])
            .arg(kernel_tuning().join("lib.sh"))
            .status();
        if !matches!(probe, Ok(s) if s.success()) {
            eprintln!(
                "skipped: needs setpriv and a checkout readable by nobody to run unprivileged"
            );
            return;
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(kernel_tuning().join("apply.sh"))
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        c
    } else {
        script("apply.sh")
    };
    let keys = profile();
    let before = snapshot(&keys);
    let out = cmd.args(["--only", "net"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must run as root"),
        "{}",
        text(&out)
    );
    assert_eq!(before, snapshot(&keys));
}

/// Issue 10: the profile was sized for 10 M connections on >= 128 GiB and
/// only warned on a smaller host. Now the scripts size it from the RAM and a
/// connection target, with a reason for each derived value.
#[test]
fn sizing_follows_the_ram_and_the_connection_target() {
    for (memory, connections, flag) in [
        (128 * GIB, 10_000_000, "128G"),
        (16 * GIB, 1_000_000, "16GiB"),
        // A small target on a big host: tcp_mem and the orphan/TIME_WAIT
        // limits stay at the kernel's own defaults, nr_open at LimitNOFILE.
        (64 * GIB, 1_000, "68719476736"),
        // More than the RAM holds: tcp_mem capped at half the RAM.
        (8 * GIB, 10_000_000, "8G"),
    ] {
        let stdout = dry_run(&["--memory", flag, "--connections", &connections.to_string()]);
        assert_derived(
            &stdout,
            &expected_derived(&Sizing::new(memory, connections)),
        );
        assert!(
            stdout.starts_with(&format!(
                "sizing: {connections} connections (--connections)"
            )),
            "{stdout}"
        );
        assert_eq!(
            stdout.contains("warning: "),
            memory == 8 * GIB,
            "warns only when the RAM is short:\n{stdout}"
        );
    }
    if page_bytes() == 4096 {
        // The figures the profile's comments give for 10 M on 128 GiB.
        let at_10m = expected_derived(&Sizing::new(128 * GIB, 10_000_000));
        assert_eq!(at_10m["net.ipv4.tcp_mem"], "5000000 7500000 10000000");
        assert_eq!(at_10m["fs.nr_open"], "16777216");
        assert_eq!(at_10m["fs.file-max"], "24117248");
        assert_eq!(at_10m["net.netfilter.nf_conntrack_max"], "12582912");
        assert_eq!(at_10m["net.ipv4.tcp_max_tw_buckets"], "2000040");

        // Without --connections: what 2/3 of the RAM holds at worst
        // (4100 B of slab + a 4 KiB page + 150 B each), in thousands; the
        // 10 M design point fits in 128 GiB.
        let stdout = dry_run(&["--memory", "16G"]);
        let n = 16 * GIB * 66 / 100 / (4100 + 4096 + 150) / 1000 * 1000;
        assert_eq!(n, 1_358_000);
        assert!(
            stdout.starts_with(&format!("sizing: {n} connections (what 66 % of the RAM")),
            "{stdout}"
        );
        assert_derived(&stdout, &expected_derived(&Sizing::new(16 * GIB, n)));
    }
}

/// Issue 10: the reserved ports were a fixed 8080,9090; now they follow the
/// listeners in pushgate's config file (or --ports), and the drain settings
/// there size the orphan and TIME_WAIT limits.
#[test]
fn reserved_ports_and_drain_limits_follow_pushgates_config() {
    let config = TempConfig::new(
        "listeners",
        "# clients on 443, consoles on 8443\n\
         listen = \"0.0.0.0:443\"\n\
         console_listen = \"[::]:8443\"   # sleeping consoles\n\
         admin_listen = \"127.0.0.1:9100\"\n\
         drain_rate_per_s = 20000\n\
         drain_deadline_ms = 1200000\n",
    );
    let stdout = dry_run(&[
        "--memory",
        "16G",
        "--connections",
        "1000000",
        "--config",
        config.path(),
    ]);
    let sizing = Sizing {
        ports: "443,8443,9100",
        drain_rate_per_s: 20_000,
        drain_deadline_s: 1200,
        ..Sizing::new(16 * GIB, 1_000_000)
    };
    assert_derived(&stdout, &expected_derived(&sizing));
    assert!(
        stdout.contains("would write net.ipv4.ip_local_reserved_ports = 443,8443,9100 "),
        "{stdout}"
    );
    let (_, why) = &derived_lines(&stdout)["net.ipv4.ip_local_reserved_ports"];
    assert!(
        why.contains("listen 0.0.0.0:443") && why.contains(config.path()),
        "{why}"
    );

    // Only the admin port set, and a port-0 listener: defaults fill in,
    // port 0 (any free port) reserves nothing.
    let config = TempConfig::new(
        "partial",
        "admin_listen = \"127.0.0.1:9999\"\nconsole_listen = \"0.0.0.0:0\"\n",
    );
    let stdout = dry_run(&["--config", config.path()]);
    assert_eq!(
        derived_lines(&stdout)["net.ipv4.ip_local_reserved_ports"].0,
        "8080,9999"
    );
    // --ports wins over the config.
    let stdout = dry_run(&["--config", config.path(), "--ports", "7000,80"]);
    assert_eq!(
        derived_lines(&stdout)["net.ipv4.ip_local_reserved_ports"].0,
        "80,7000"
    );
    // check.sh derives the same way from the same options.
    let out = script("check.sh")
        .args(["--config", config.path(), "--memory", "16G"])
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("net.ipv4.ip_local_reserved_ports: have")
            || String::from_utf8_lossy(&out.stdout)
                .contains("ok      net.ipv4.ip_local_reserved_ports = 8080,9999"),
        "{}",
        text(&out)
    );

    // Bad sizing input: a usage error (2) that names the option.
    let zero_ports = TempConfig::new(
        "zero",
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n",
    );
    for (args, needle) in [
        (&["--connections", "10k"][..], "--connections"),
        (&["--connections", "0"], "--connections"),
        (&["--connections", "100000001"], "--connections"),
        (&["--memory", "lots"], "--memory"),
        (&["--ports", "8080,http"], "--ports"),
        (&["--ports", "70000"], "--ports"),
        (&["--config", "/nonexistent/pushgate.toml"], "--config"),
        (&["--config", zero_ports.path()], "--ports"),
    ] {
        for name in ["apply.sh", "check.sh"] {
            let mut cmd = script(name);
            if name == "apply.sh" {
                cmd.arg("--dry-run");
            }
            let out = cmd.args(args).output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name} {args:?}\n{}",
                text(&out)
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(needle),
                "{name} {args:?}\n{}",
                text(&out)
            );
        }
    }
}
