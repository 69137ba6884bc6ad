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

/// A fresh directory under the temp dir for one test (owned by this user,
/// mode 0755 under the usual umask), removed on drop.
struct TempDir(std::path::PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("pushgate-startup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// Runs `serve` on ephemeral loopback ports with `args`, expecting it to
/// refuse to start. A server that does start is stopped after a few seconds
/// and reported as such (status None), so a missing refusal fails the test
/// instead of hanging it.
fn serve_expecting_refusal(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["serve", "--admin-listen", "127.0.0.1:0", "--shards", "1"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pushgate");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Issue 10: a `<run-dir>/secret` placed by another user (their uid, mode
/// 0644, a key they know) was used with a warning, and tokens minted from it
/// passed the admin API. Now start-up refuses it (exit 2) and says what to do.
/// Needs root to hand the file to another user (with `setpriv`, as that user).
#[test]
fn secret_planted_by_another_user_is_refused() {
    if !is_root() || Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and setpriv to act as another user");
        return;
    }
    let tmp = TempDir::new("planted");
    let run_dir = tmp.0.join("run");
    std::fs::create_dir(&run_dir).unwrap();
    // The window: the directory was writable by others for a while (the
    // check below refuses that too; here it is closed again before start).
    set_mode(&run_dir, 0o777);
    let secret = run_dir.join("secret");
    let planted = Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(format!(
            "umask 022; printf %s {} > {}",
            "k".repeat(64),
            secret.display()
        ))
        .status()
        .unwrap();
    assert!(planted.success());
    set_mode(&run_dir, 0o700);

    let (status, stderr) = serve_expecting_refusal(&[
        os("--listen"),
        os("127.0.0.1:0"),
        os("--run-dir"),
        run_dir.as_os_str(),
    ]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains("belongs to uid 65534") && stderr.contains("delete it"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // `token` refuses it the same way: nothing is minted from it.
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["token", "--admin", "--run-dir"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

/// Issue 10: the run directory (push sockets, generated secret) must be
/// this user's and not writable by others, and `--secret-file` used to skip
/// that check, so the push sockets were created in a directory anyone could
/// write to.
#[test]
fn run_dir_writable_by_others_is_refused_with_or_without_secret_file() {
    let tmp = TempDir::new("loose");
    let key = tmp.0.join("key");
    std::fs::write(&key, "k".repeat(64)).unwrap();
    set_mode(&key, 0o600);
    let run_dir = tmp.0.join("run");
    std::fs::create_dir(&run_dir).unwrap();
    set_mode(&run_dir, 0o777);
    for secret_file in [None, Some(&key)] {
        let mut args = vec![
            os("--listen"),
            os("127.0.0.1:0"),
            os("--run-dir"),
            run_dir.as_os_str(),
        ];
        if let Some(key) = secret_file {
            args.extend([os("--secret-file"), key.as_os_str()]);
        }
        let (status, stderr) = serve_expecting_refusal(&args);
        assert_eq!(status, Some(2), "{secret_file:?}: {stderr}");
        assert!(
            stderr.contains("mode 0777") && stderr.contains("chmod go-w"),
            "{stderr}"
        );
        assert!(
            !run_dir.join("shard-0.sock").exists(),
            "a push socket was created in the loose directory"
        );
    }

    if !is_root() {
        eprintln!("skipped the other-owner half: only root can give a directory away");
        return;
    }
    set_mode(&run_dir, 0o700);
    std::os::unix::fs::chown(&run_dir, Some(65_534), Some(65_534)).unwrap();
    let (status, stderr) = serve_expecting_refusal(&[
        os("--listen"),
        os("127.0.0.1:0"),
        os("--run-dir"),
        run_dir.as_os_str(),
        os("--secret-file"),
        key.as_os_str(),
    ]);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
}

/// Issue 10: `--dev` on a non-loopback address let every host that could
/// reach it mint tokens. Now refused unless `--dev-allow-remote`, and the
/// warning names the address the dev endpoint answers on.
#[test]
fn dev_on_a_public_address_needs_dev_allow_remote() {
    let tmp = TempDir::new("dev");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let (status, stderr) = serve_expecting_refusal(&[
            os("--dev"),
            os("--listen"),
            os(listen),
            os("--run-dir"),
            tmp.0.as_os_str(),
        ]);
        assert_eq!(status, Some(2), "{stderr}");
        assert!(
            stderr.contains("not a loopback address") && stderr.contains("--dev-allow-remote"),
            "{stderr}"
        );
    }

    // Allowed remote: it starts and logs where /dev/token answers.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "serve",
            "--dev",
            "--dev-allow-remote",
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--run-dir",
        ])
        .arg(&tmp.0)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(stderr) {
        let line = line.unwrap();
        let found = line.contains("/dev/token") && line.contains("0.0.0.0:");
        seen.push(line);
        if found || seen.len() > 50 {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.iter()
            .any(|l| l.contains("http://0.0.0.0:") && l.contains("/dev/token")),
        "{seen:#?}"
    );
}
