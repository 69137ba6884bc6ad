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
    let text = read("sysctl.d/90-pushgate.conf");
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

    // tcp_mem: three page counts, min <= pressure <= max.
    let tcp_mem: Vec<u64> = keys
        .iter()
        .find(|k| k.name == "net.ipv4.tcp_mem")
        .unwrap()
        .value
        .split(' ')
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(tcp_mem.len(), 3);
    assert!(
        tcp_mem[0] <= tcp_mem[1] && tcp_mem[1] <= tcp_mem[2],
        "{tcp_mem:?}"
    );

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
    let keys = profile();
    let nr_open: u64 = keys
        .iter()
        .find(|k| k.name == "fs.nr_open")
        .unwrap()
        .value
        .parse()
        .unwrap();

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
    let out = script("apply.sh").arg("--dry-run").output().unwrap();
    let after = snapshot(&keys);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(before, after, "--dry-run changed /proc/sys");

    for k in &keys {
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
                    k.value,
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
        kernel-tuning/apply.sh --only net || exit 10
        echo "== check after apply"
        kernel-tuning/check.sh --only net || exit 11
        echo 1000 > /proc/sys/net/core/somaxconn
        printf '2000\t60001\n' > /proc/sys/net/ipv4/ip_local_port_range
        echo "== check after change"
        kernel-tuning/check.sh --only net
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
    for k in &keys {
        if k.netns {
            assert!(
                applied.contains(&format!("wrote {} = {} ", k.name, k.value)),
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

    let dry = script("apply.sh")
        .args(["--install", "--dry-run", "--root"])
        .arg(&root)
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
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("wrote "),
        "--root must not touch /proc/sys"
    );
    for (src, dest) in [
        ("sysctl.d/90-pushgate.conf", "etc/sysctl.d/90-pushgate.conf"),
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
