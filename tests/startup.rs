//! Start-up failures print the cause and the fix, not a backtrace.

use std::process::Command;

fn serve(extra: &[&str]) -> std::process::Output {
    let run_dir = std::env::temp_dir().join(format!("pushgate-startup-{}", std::process::id()));
    Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .arg("serve")
        .arg("--run-dir")
        .arg(&run_dir)
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pushgate")
}

#[test]
fn port_in_use_names_the_problem() {
    // Held without SO_REUSEPORT, so the server's sockets cannot share it.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = blocker.local_addr().unwrap().to_string();
    let out = serve(&["--listen", &addr, "--shards", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use") && stderr.contains("--listen"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_config_exits_2_with_the_rule_broken() {
    let out = serve(&["--ping-interval-ms", "50000", "--idle-timeout-ms", "1000"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ping_interval_ms"), "{stderr}");
}

/// Without CAP_IPC_LOCK, rings are charged to RLIMIT_MEMLOCK. Needs root to
/// drop to an unprivileged user; skipped otherwise.
#[test]
fn memlock_too_low_says_how_to_raise_it() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and setpriv to run unprivileged");
        return;
    }
    let run_dir = std::env::temp_dir().join(format!("pushgate-memlock-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let script = format!(
        "ulimit -l 64; exec {} serve --listen 127.0.0.1:0 --shards 2 --run-dir {}/r",
        env!("CARGO_BIN_EXE_pushgate"),
        run_dir.display()
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
            "bash",
            "-c",
        ])
        .arg(script)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&run_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("locked memory") && stderr.contains("LimitMEMLOCK"),
        "{stderr}"
    );
}
