//! Live binary upgrade (`pushgate upgrade`, `serve --takeover`) on the real
//! binary: real sockets, real io_uring, a real successor process. While it
//! happens, clients connect in a loop and every one of them must get its
//! 101 and welcome: no refusal, no reset, at any moment.

mod common;

use common::{assert_quiet, next_push, upgrade_request, ws_connect, Raw, Server};
use pushgate::takeover::{self, wire};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clients that connect, upgrade, read the welcome and leave, in a loop,
/// counting what happened.
struct Connectors {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Connectors {
    fn start(addr: SocketAddr, token: String, threads: usize) -> Connectors {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failures, token) =
                    (stop.clone(), ok.clone(), failures.clone(), token.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match connect_once(addr, &token) {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures.lock().unwrap().push(e);
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Connectors {
            stop,
            ok,
            failures,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops them; returns (successes, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// One client: connect, upgrade, read the 101 head and the welcome frame.
fn connect_once(addr: SocketAddr, token: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = upgrade_request("/ws", &format!("Authorization: Bearer {token}\r\n"));
    std::io::Write::write_all(&mut stream, request.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The head, then at least the welcome frame's first bytes.
    while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}")) {
        let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed early: {:?}", String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..n]);
    }
    if !got.starts_with(b"HTTP/1.1 101") {
        return Err(format!("not upgraded: {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(())
}

fn upgrade(server: &Server) -> Output {
    upgrade_with(server, &[])
}

fn upgrade_with(server: &Server, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["upgrade", "--timeout", "60", "--run-dir"])
        .arg(&server.run_dir)
        .args(extra)
        .output()
        .unwrap()
}

/// The successor's pid from `pushgate upgrade`'s output.
fn successor_pid(stdout: &str) -> Option<i32> {
    stdout.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        v["successor_pid"].as_i64().map(|p| p as i32)
    })
}

/// Kills the successor at the end of a test (the harness only knows the
/// process it started).
struct Successor(i32);

impl Drop for Successor {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a process this test caused to start.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// A successor this test started itself: killed and reaped at the end.
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve --takeover` started by hand (as an operator may) with `args`
/// (another shard count, other bounds).
fn start_successor(server: &Server, args: &[&str]) -> Started {
    let successor = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--connections-per-shard-max",
            "2000",
            "--recv-buffer-count",
            "256",
        ])
        .args(args)
        .args(["--takeover", "--run-dir"])
        .arg(&server.run_dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Started(successor)
}

fn push(run_dir: &std::path::Path, user: &str, data: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["push", "--user", user, data, "--run-dir"])
        .arg(run_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `/readyz`'s status, or None if the request failed.
fn readyz(admin: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(admin).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    std::io::Write::write_all(&mut stream, b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.get(9..12)?.parse().ok()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn upgrade_hands_over_the_listeners_without_refusing_a_connection() {
    let mut server = Server::start(&["--shards", "2", "--drain-rate-per-s", "500"]);
    let (mut before, _) = Raw::upgraded(&server, "early");
    let connectors = Connectors::start(server.addr, server.token("looping"), 3);
    wait_until("clients connecting", Duration::from_secs(10), || {
        connectors.ok() > 20
    });

    let out = upgrade(&server);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let pid = successor_pid(&stdout).expect("the outcome names the successor");
    let _successor = Successor(pid);
    for step in [
        "\"started\"",
        "\"listeners\"",
        "\"accepting\"",
        "\"committed\"",
        "\"connections\"",
    ] {
        assert!(stdout.contains(step), "{step} missing: {stdout}");
    }

    // The old process moves its device (it stays connected) and exits 0.
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits");
    assert!(status.success(), "{status}");

    // Clients keep connecting, now to the successor alone.
    let after_exit = connectors.ok();
    wait_until(
        "clients served by the successor",
        Duration::from_secs(10),
        || connectors.ok() > after_exit + 20,
    );
    let (ok, failures) = connectors.finish();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(5)]
    );

    // Every listener moved: admin, push socket, clients.
    assert_eq!(server.admin("GET", "/readyz", None, "").0, 200);
    let (mut device, _) = Raw::upgraded(&server, "late");
    let reply = push(&server.run_dir, "late", r#"{"n":1}"#);
    assert_eq!(reply["delivered"], 1, "{reply}");
    let (opcode, payload) = device.read_frame();
    assert_eq!(opcode, 1);
    assert!(String::from_utf8_lossy(&payload).contains(r#""data":{"n":1}"#));
    // The device connected before the upgrade now lives in the successor.
    let reply = push(&server.run_dir, "early", r#"{"n":2}"#);
    assert_eq!(reply["delivered"], 1, "{reply}");
    let (opcode, payload) = before.read_frame();
    assert_eq!(opcode, 1);
    assert!(String::from_utf8_lossy(&payload).contains(r#""data":{"n":2}"#));
    server.wait_log("take-over: committed; this process is the server now");
}

#[test]
fn upgrade_with_drain_moves_the_listeners_and_drains_the_devices() {
    let mut server = Server::start(&["--shards", "2", "--drain-rate-per-s", "500"]);
    let (mut device, _) = Raw::upgraded(&server, "drained");
    let out = upgrade_with(&server, &["--drain"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let _successor = Successor(successor_pid(&stdout).expect("the successor's pid"));
    assert!(stdout.contains("asked to drain"), "{stdout}");
    assert!(!stdout.contains("\"connections\""), "{stdout}");
    // The operator's fallback: the device reconnects once (1012).
    assert_eq!(device.read_close_code(), 1012);
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits");
    assert!(status.success(), "{status}");
    let (_device, welcome) = Raw::upgraded(&server, "drained");
    assert!(welcome.contains("welcome"), "{welcome}");
}

#[test]
fn on_a_kernel_without_fixed_fd_install_the_upgrade_drains_instead() {
    let mut server = Server::start_with_env(
        &["--shards", "1", "--drain-rate-per-s", "500"],
        &[(takeover::DEBUG_ENV, "no-fixed-fd-install")],
    );
    let (mut device, _) = Raw::upgraded(&server, "old-kernel");
    let out = upgrade(&server);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let _successor = Successor(successor_pid(&stdout).expect("the successor's pid"));
    assert!(stdout.contains("IORING_OP_FIXED_FD_INSTALL"), "{stdout}");
    assert_eq!(device.read_close_code(), 1012);
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
}

/// A successor that cannot read the state it is sent (here: this test,
/// speaking the protocol by hand) refuses it; the old process takes every
/// device back and keeps serving it.
#[test]
fn a_successor_that_refuses_the_connection_state_leaves_every_device_with_the_old_process() {
    const DEVICES: usize = 50;
    let server = Server::start(&["--shards", "2"]);
    let mut devices: Vec<Raw> = (0..DEVICES)
        .map(|i| Raw::upgraded(&server, &format!("r{i}")).0)
        .collect();
    let conn = wire::connect(&takeover::socket_path(&server.run_dir)).unwrap();
    conn.send(
        &wire::Message::Hello {
            format: wire::FORMAT_VERSION,
            pid: std::process::id(),
            shards: 2,
        },
        &[],
    )
    .unwrap();
    let timeout = Some(Duration::from_secs(10));
    let mut listeners = Vec::new();
    loop {
        match conn.recv(timeout).unwrap().unwrap() {
            (wire::Message::History { .. }, _) => {}
            (wire::Message::Listeners { more, .. }, fds) => {
                listeners.extend(fds);
                if !more {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    conn.send(&wire::Message::Accepting, &[]).unwrap();
    let (committed, _) = conn.recv(timeout).unwrap().unwrap();
    assert_eq!(committed, wire::Message::Committed);
    let (batch, fds) = conn.recv(timeout).unwrap().unwrap();
    assert!(
        matches!(batch, wire::Message::Connections { .. }),
        "{batch:?}"
    );
    assert!(!fds.is_empty());
    let reason = "connection state not understood".to_string();
    conn.send(&wire::Message::Refused { reason }, &[]).unwrap();
    drop(fds);
    drop(conn);
    drop(listeners);

    server.wait_log("taking the listeners back");
    let mut client = pushgate::push::client::Client::connect(&server.run_dir).unwrap();
    client.broadcast(r#""kept""#).unwrap();
    for (i, device) in devices.iter_mut().enumerate() {
        assert!(hears(device, "kept"), "device r{i} was lost");
    }
}

#[test]
fn a_successor_that_dies_before_accepting_leaves_everything_with_the_old_process() {
    let mut server = Server::start_with_env(
        &["--shards", "2"],
        &[(takeover::DEBUG_ENV, "exit-before-accepting")],
    );
    let (mut device, _) = Raw::upgraded(&server, "stays");
    let connectors = Connectors::start(server.addr, server.token("looping"), 2);
    wait_until("clients connecting", Duration::from_secs(10), || {
        connectors.ok() > 20
    });

    let out = upgrade(&server);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#""ok":false"#), "{stdout}");
    assert!(stdout.contains("keeps serving"), "{stdout}");

    let at_failure = connectors.ok();
    wait_until("clients still served", Duration::from_secs(10), || {
        connectors.ok() > at_failure + 20
    });
    let (ok, failures) = connectors.finish();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(5)]
    );
    assert!(
        server.wait_exit(Duration::from_millis(500)).is_none(),
        "the old process keeps running"
    );
    assert_eq!(server.admin("GET", "/readyz", None, "").0, 200);
    let reply = push(&server.run_dir, "stays", r#"{"n":2}"#);
    assert_eq!(reply["delivered"], 1, "{reply}");
    let (_, payload) = device.read_frame();
    assert!(String::from_utf8_lossy(&payload).contains(r#""data":{"n":2}"#));
    server.wait_log("take-over failed");
}

#[test]
fn a_successor_that_dies_after_the_commit_gives_the_listeners_back() {
    let mut server = Server::start_with_env(
        &["--shards", "2", "--drain-rate-per-s", "1"],
        &[(takeover::DEBUG_ENV, "exit-after-commit")],
    );
    let out = upgrade(&server);
    // It died before the connections moved: the upgrade failed, and says
    // this process took everything back.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("took every connection"), "{stdout}");
    server.wait_log("taking the listeners back");
    // Accepting and serving again, not draining. The dead successor's ring
    // is torn down by the kernel after its process is gone, and its armed
    // accepts may take (and so reset) a connection until then: the first
    // requests here may fail.
    wait_until("ready again", Duration::from_secs(10), || {
        readyz(server.admin_addr) == Some(200)
    });
    let connectors = Connectors::start(server.addr, server.token("after"), 2);
    wait_until("clients served again", Duration::from_secs(10), || {
        connectors.ok() > 20
    });
    let (ok, failures) = connectors.finish();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(5)]
    );
    assert!(
        server.wait_exit(Duration::from_millis(500)).is_none(),
        "the old process keeps running"
    );
}

#[test]
fn a_successor_speaking_another_format_is_refused_and_nothing_moves() {
    let server = Server::start(&["--shards", "1"]);
    let conn = wire::connect(&takeover::socket_path(&server.run_dir)).unwrap();
    conn.send(
        &wire::Message::Hello {
            format: wire::FORMAT_VERSION + 1,
            pid: std::process::id(),
            shards: 1,
        },
        &[],
    )
    .unwrap();
    let (answer, fds) = conn.recv(Some(Duration::from_secs(10))).unwrap().unwrap();
    assert!(fds.is_empty(), "no listener may leave");
    match answer {
        wire::Message::Refused { reason } => assert!(reason.contains("format"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    server.wait_log("take-over failed");
    let (_device, welcome) = Raw::upgraded(&server, "still-here");
    assert!(welcome.contains("welcome"), "{welcome}");
}

#[test]
fn a_successor_with_more_shards_adopts_the_listeners_and_adds_its_own() {
    take_over_with_another_shard_count(2, 3);
}

#[test]
fn a_successor_with_fewer_shards_answers_on_every_old_socket() {
    take_over_with_another_shard_count(3, 1);
}

fn take_over_with_another_shard_count(old_shards: usize, new_shards: usize) {
    let (old, new) = (old_shards.to_string(), new_shards.to_string());
    let mut server = Server::start(&["--shards", &old, "--drain-rate-per-s", "500"]);
    // Live before the upgrade: they move, re-homed by the route hash over
    // the successor's shard count.
    let early_users: Vec<String> = (0..40).map(|i| format!("e{i}")).collect();
    let mut early: Vec<Raw> = early_users
        .iter()
        .map(|u| Raw::upgraded(&server, u).0)
        .collect();
    let connectors = Connectors::start(server.addr, server.token("looping"), 2);
    wait_until("clients connecting", Duration::from_secs(10), || {
        connectors.ok() > 20
    });
    // Started by hand, as an operator may: another shard count.
    let _successor = start_successor(&server, &["--shards", &new]);
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process hands over and exits");
    assert!(status.success(), "{status}");
    let after_exit = connectors.ok();
    wait_until(
        "clients served by the successor",
        Duration::from_secs(10),
        || connectors.ok() > after_exit + 20,
    );
    let (ok, failures) = connectors.finish();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(5)]
    );
    // Every push socket path answers, the old ones and any new ones (the
    // client library learns the count and writes to each user's home shard).
    for shard in 0..old_shards.max(new_shards) {
        let path = server.run_dir.join(format!("shard-{shard}.sock"));
        let stream = std::os::unix::net::UnixStream::connect(&path);
        assert!(stream.is_ok(), "{}: {stream:?}", path.display());
    }
    let users: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    let mut devices: Vec<Raw> = users.iter().map(|u| Raw::upgraded(&server, u).0).collect();
    for (user, device) in users.iter().zip(&mut devices) {
        let reply = push(&server.run_dir, user, r#"{"n":3}"#);
        assert_eq!(reply["delivered"], 1, "{user}: {reply}");
        let (_, payload) = device.read_frame();
        assert!(String::from_utf8_lossy(&payload).contains(r#""data":{"n":3}"#));
    }
    let mut client = pushgate::push::client::Client::connect(&server.run_dir).unwrap();
    assert_eq!(client.shard_count(), new_shards);
    let refs: Vec<&str> = early_users.iter().map(String::as_str).collect();
    let outcome = client.push(&refs, r#"{"n":4}"#).unwrap();
    assert_eq!(outcome.delivered as usize, early.len(), "{outcome:?}");
    for (user, device) in early_users.iter().zip(&mut early) {
        let (opcode, payload) = device.read_frame();
        assert_eq!(opcode, 1, "{user}");
        assert!(
            String::from_utf8_lossy(&payload).contains(r#""data":{"n":4}"#),
            "{user}: {payload:?}"
        );
    }
}

/// Reads from `device` until `needle` arrives (true) or the connection
/// ends or stays silent for 5 s (false).
fn hears(device: &mut Raw, needle: &str) -> bool {
    heard(device, needle).is_some()
}

/// What `device` sent up to and including `needle`, or None if the
/// connection ended or stayed silent for 5 s first.
fn heard(device: &mut Raw, needle: &str) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle.as_bytes()) {
        match device.stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[test]
fn a_successor_that_dies_mid_move_leaves_every_unacknowledged_connection_with_the_old_process() {
    const DEVICES: usize = 600;
    let mut server = Server::start_with_env(
        &["--shards", "2", "--drain-rate-per-s", "1"],
        &[(takeover::DEBUG_ENV, "exit-mid-move")],
    );
    let mut devices: Vec<Raw> = (0..DEVICES)
        .map(|i| Raw::upgraded(&server, &format!("d{i}")).0)
        .collect();
    let out = upgrade(&server);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not acknowledged"), "{stdout}");
    assert!(stdout.contains("took every connection"), "{stdout}");
    server.wait_log("taking the listeners back");
    wait_until("ready again", Duration::from_secs(10), || {
        readyz(server.admin_addr) == Some(200)
    });

    // Only the one acknowledged batch (≤ 128) went down with the
    // successor; every other device is served by the old process again
    // (one taken back after the broadcast is replayed it). The dead
    // successor's rings are torn down by the kernel after its exit, and
    // their armed accepts may take a connection until then (see the test
    // above): the first publisher connections may hang, so retry.
    let mut client = None;
    wait_until("the push socket answers", Duration::from_secs(30), || {
        client = pushgate::push::client::Client::connect_with_io_timeout(
            &server.run_dir,
            Duration::from_secs(1),
        )
        .ok();
        client.is_some()
    });
    let mut client = client.unwrap();
    client.broadcast(r#""still here""#).unwrap();
    let alive = devices
        .iter_mut()
        .filter_map(|d| hears(d, "still here").then_some(()))
        .count();
    eprintln!("{alive} of {DEVICES} devices kept after the successor died mid-move");
    let online: u64 = client.status().unwrap().iter().map(|s| s.connections).sum();
    assert_eq!(online as usize, alive);
    assert!(
        (DEVICES - pushgate::takeover::wire::BATCH_RECORDS_MAX..DEVICES).contains(&alive),
        "{alive}"
    );
    assert!(
        server.wait_exit(Duration::from_millis(500)).is_none(),
        "the old process keeps running"
    );
}

/// What a pusher sent: per user, the `k` of each push the server confirmed,
/// and of those whose reply never came (a connection cut mid-request).
#[derive(Default)]
struct Sent {
    confirmed: Vec<Vec<u64>>,
    uncertain: Vec<Vec<u64>>,
}

/// Pushes `{"k":k}` (k from `k_base`) to user `m<k * 7919 % users>` one at
/// a time until stopped: each on a fresh connection, or (`keep`) on one
/// client library connection kept open across the upgrade — the old
/// process forwards what it receives to the successor — and opened again
/// after an error.
fn start_pusher(
    run_dir: std::path::PathBuf,
    users: usize,
    stop: Arc<AtomicBool>,
    confirmed_total: Arc<AtomicU64>,
    k_base: u64,
    keep: bool,
) -> std::thread::JoinHandle<Sent> {
    std::thread::spawn(move || {
        let mut sent = Sent {
            confirmed: vec![Vec::new(); users],
            uncertain: vec![Vec::new(); users],
        };
        let mut k = k_base;
        let mut kept: Option<pushgate::push::client::Client> = None;
        while !stop.load(Ordering::Relaxed) {
            k += 1;
            let user = (k as usize * 7919) % users;
            let name = format!("m{user}");
            let data = format!(r#"{{"k":{k}}}"#);
            let client = match kept.take() {
                Some(c) => Ok(c),
                None => pushgate::push::client::Client::connect(&run_dir),
            };
            let result = client.and_then(|mut c| {
                let outcome = c.push(&[&name], &data);
                if keep && outcome.is_ok() {
                    kept = Some(c);
                }
                outcome
            });
            match result {
                Ok(outcome) if outcome.rejected == 0 => {
                    sent.confirmed[user].push(k);
                    confirmed_total.fetch_add(1, Ordering::Relaxed);
                }
                Ok(outcome) => panic!("push {k} rejected: {outcome:?}"),
                Err(_) => sent.uncertain[user].push(k),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

/// Reads a device's frames until it has had the broadcast `"final"` and
/// every push in `owed`: the `k` of each push and its seq, in arrival
/// order. (A push the old process forwarded may arrive after the final
/// broadcast: the successor delivers forwarded pushes on its next tick.)
/// Panics on a close frame, a lost connection, or 5 s of silence.
fn read_until_final(device: &mut Raw, user: usize, owed: &[u64]) -> Vec<(u64, u64)> {
    let mut got: Vec<(u64, u64)> = Vec::new();
    let done = |got: &[(u64, u64)]| {
        got.iter().any(|&(k, _)| k == u64::MAX)
            && owed.iter().all(|k| got.iter().any(|&(g, _)| g == *k))
    };
    while !done(&got) {
        let (opcode, payload) = device.read_frame();
        match opcode {
            1 => {}
            8 => panic!("device m{user} was closed: {payload:?}"),
            _ => continue, // a ping
        }
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["type"], "push", "m{user}: {v}");
        let seq = v["seq"].as_u64().unwrap();
        if v["data"] == "final" {
            got.push((u64::MAX, seq));
        } else {
            got.push((v["data"]["k"].as_u64().unwrap(), seq));
        }
    }
    got
}

#[test]
fn upgrade_moves_every_live_connection_with_pushes_flowing() {
    const DEVICES: usize = 2000;
    let mut server = Server::start(&["--shards", "2"]);
    let mut devices: Vec<Raw> = (0..DEVICES)
        .map(|i| Raw::upgraded(&server, &format!("m{i}")).0)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let pusher = start_pusher(
        server.run_dir.clone(),
        DEVICES,
        stop.clone(),
        confirmed.clone(),
        0,
        false,
    );
    let kept_pusher = start_pusher(
        server.run_dir.clone(),
        DEVICES,
        stop.clone(),
        confirmed.clone(),
        1_000_000_000,
        true,
    );
    wait_until("pushes before", Duration::from_secs(30), || {
        confirmed.load(Ordering::Relaxed) >= 100
    });

    let started = Instant::now();
    let out = upgrade(&server);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let _successor = Successor(successor_pid(&stdout).expect("the successor's pid"));
    assert!(
        stdout.contains(&format!("{DEVICES} live connections moved")),
        "{stdout}"
    );
    let at_upgrade = confirmed.load(Ordering::Relaxed);
    wait_until("pushes after", Duration::from_secs(30), || {
        confirmed.load(Ordering::Relaxed) >= at_upgrade + 100
    });
    // The kept publisher connection lives through the old process's exit:
    // what the old process answered before it must arrive; a request it
    // had not read is resent by the client library to the successor (a
    // client error would count it uncertain and start a new connection).
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits once everything moved");
    assert!(status.success(), "{status}");
    let at_exit = confirmed.load(Ordering::Relaxed);
    wait_until("pushes after the exit", Duration::from_secs(30), || {
        confirmed.load(Ordering::Relaxed) >= at_exit + 50
    });
    stop.store(true, Ordering::Relaxed);
    let mut sent = pusher.join().unwrap();
    let kept = kept_pusher.join().unwrap();
    for (all, more) in sent.confirmed.iter_mut().zip(kept.confirmed) {
        all.extend(more);
    }
    for (all, more) in sent.uncertain.iter_mut().zip(kept.uncertain) {
        all.extend(more);
    }
    // The kept publisher connection reached the old process during the
    // move: what it pushed there was forwarded, none delivered twice.
    assert!(server.log_contains("forwarding the pushes received here"));

    // Every device is still connected and hears a broadcast from the
    // successor; before it, every push confirmed for its user, once, in
    // increasing seq.
    let mut client = pushgate::push::client::Client::connect(&server.run_dir).unwrap();
    let outcome = client.broadcast(r#""final""#).unwrap();
    assert_eq!(outcome.delivered as usize, DEVICES, "{outcome:?}");
    let (mut pushes, mut uncertain_got) = (0, 0);
    for (user, device) in devices.iter_mut().enumerate() {
        let got = read_until_final(device, user, &sent.confirmed[user]);
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "m{user}: seqs not increasing: {got:?}"
        );
        let mut ks: Vec<u64> = got
            .iter()
            .map(|&(k, _)| k)
            .filter(|&k| k != u64::MAX)
            .collect();
        ks.sort_unstable();
        let before = ks.len();
        ks.dedup();
        assert_eq!(before, ks.len(), "m{user}: a push arrived twice: {got:?}");
        for k in &sent.confirmed[user] {
            assert!(ks.contains(k), "m{user}: push {k} lost: got {got:?}");
        }
        for k in &ks {
            let confirmed = sent.confirmed[user].contains(k);
            assert!(
                confirmed || sent.uncertain[user].contains(k),
                "m{user}: push {k} was never sent"
            );
            uncertain_got += usize::from(!confirmed);
        }
        pushes += ks.len();
    }
    let uncertain: usize = sent.uncertain.iter().map(Vec::len).sum();
    eprintln!(
        "{DEVICES} devices moved, 0 disconnects; upgrade command {took:?}; {pushes} pushes \
         received, 0 lost, 0 duplicated; {uncertain} unanswered requests ({uncertain_got} \
         of them delivered)"
    );
}

/// Devices of every wire move with it: an SSE stream and a WebSocket with
/// text heartbeats keep receiving in their own form, and the successor
/// continues the epoch (an SSE event's id is `epoch:seq`).
#[test]
fn sse_and_text_heartbeat_devices_move_in_their_own_form() {
    let mut server = Server::start(&["--shards", "2"]);
    let mut sse = Raw::connect(server.addr);
    let token = server.token("sse-mover");
    sse.send(
        format!("GET /sse?token={token} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    );
    assert!(hears(&mut sse, "welcome"));
    let mut ws = Raw::connect(server.addr);
    let token = server.token("ping-mover");
    ws.send(
        upgrade_request(
            "/ws?heartbeat=1",
            &format!("Authorization: Bearer {token}\r\n"),
        )
        .as_bytes(),
    );
    let head = ws.read_head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, welcome) = ws.read_frame();
    let welcome: serde_json::Value = serde_json::from_slice(&welcome).unwrap();
    assert!(welcome["heartbeat_ms"].as_u64().is_some(), "{welcome}");
    let epoch = welcome["epoch"].as_u64().unwrap();

    let out = upgrade(&server);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let _successor = Successor(successor_pid(&stdout).expect("the successor's pid"));
    assert!(stdout.contains("2 live connections moved"), "{stdout}");
    server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits");

    let reply = push(&server.run_dir, "sse-mover", r#"{"n":5}"#);
    assert_eq!(reply["delivered"], 1, "{reply}");
    let event = heard(&mut sse, r#"{"n":5}"#).expect("the push as an SSE event");
    assert!(
        event.contains(&format!("id: {epoch}:")),
        "same epoch: {event}"
    );
    let reply = push(&server.run_dir, "ping-mover", r#"{"n":6}"#);
    assert_eq!(reply["delivered"], 1, "{reply}");
    let (opcode, payload) = ws.read_frame();
    assert_eq!(opcode, 1);
    let push: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(push["data"]["n"], 6, "{push}");
    assert!(
        push["seq"].as_u64().unwrap() > 1 << 32,
        "seqs continue above the gap"
    );
}

/// A device whose state cannot travel (it negotiated permessage-deflate;
/// TLS connections likewise) is told to reconnect (1012) while a plain one
/// beside it moves and keeps its connection.
#[test]
fn a_deflate_device_is_told_to_reconnect_while_a_plain_one_moves() {
    let mut server = Server::start(&["--shards", "2", "--deflate"]);
    let mut deflate = Raw::connect(server.addr);
    let token = server.token("deflate-stays");
    deflate.send(
        upgrade_request(
            "/ws",
            &format!(
                "Authorization: Bearer {token}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
            ),
        )
        .as_bytes(),
    );
    let head = deflate.read_head();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("permessage-deflate"),
        "{head}"
    );
    let _welcome = deflate.read_frame();
    let (mut plain, _) = Raw::upgraded(&server, "plain-moves");

    let out = upgrade(&server);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let _successor = Successor(successor_pid(&stdout).expect("the successor's pid"));
    assert!(stdout.contains("1 live connections moved"), "{stdout}");
    assert_eq!(deflate.read_close_code(), 1012);
    server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits");

    let reply = push(&server.run_dir, "plain-moves", r#"{"n":7}"#);
    assert_eq!(reply["delivered"], 1, "{reply}");
    let (opcode, payload) = plain.read_frame();
    assert_eq!(opcode, 1);
    let push: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(push["data"]["n"], 7, "{push}");
}

/// Users who missed pushes before an upgrade, and what each is owed when
/// it resumes: (user, the seq it resumes from, the data owed in order).
struct Missed {
    epoch: u64,
    users: Vec<(String, u64, Vec<serde_json::Value>)>,
}

/// Before an upgrade: `n` users whose device saw a push and left
/// (`left<i>`, resuming from the seq of that push) and `n` users that
/// never had a device (`offline<i>`, resuming from seq 0); then, with no
/// device connected, a push to each, a broadcast, and another push to each.
fn miss_pushes(server: &Server, n: usize) -> Missed {
    let mut client = pushgate::push::client::Client::connect(&server.run_dir).unwrap();
    let mut users = Vec::new();
    let mut epoch = 0;
    for i in 0..n {
        let name = format!("left{i}");
        let (mut ws, welcome) = ws_connect(server, &name, false, None);
        epoch = welcome["epoch"].as_u64().unwrap();
        let outcome = client.push(&[&name], r#""seen""#).unwrap();
        assert_eq!(outcome.delivered, 1, "{outcome:?}");
        let (seen, data) = next_push(&mut ws);
        assert_eq!(data, "seen");
        drop(ws);
        users.push((name, seen, Vec::new()));
    }
    wait_until("the devices gone", Duration::from_secs(10), || {
        let online: u64 = client.status().unwrap().iter().map(|s| s.connections).sum();
        online == 0
    });
    users.extend((0..n).map(|i| (format!("offline{i}"), 0, Vec::new())));
    for round in ["first", "second"] {
        for (name, _, owed) in &mut users {
            let data = format!("{name} {round}");
            let outcome = client
                .push(&[name.as_str()], &serde_json::json!(data).to_string())
                .unwrap();
            assert_eq!((outcome.delivered, outcome.stored), (0, 1), "{outcome:?}");
            owed.push(serde_json::json!(data));
        }
        if round == "first" {
            client.broadcast(r#""missed broadcast""#).unwrap();
            for (_, _, owed) in &mut users {
                owed.push(serde_json::json!("missed broadcast"));
            }
        }
    }
    Missed { epoch, users }
}

/// Each user of `missed` resumes on the successor: `recovered:true` and
/// exactly what it missed, in increasing seq; then a live push, numbered
/// above the old process's seqs.
fn resume_exactly(server: &Server, missed: &Missed) {
    resume_exactly_then_live_above(server, missed, 1 << 32);
}

/// Like `resume_exactly`; the live push's seq is above `live_above`.
fn resume_exactly_then_live_above(server: &Server, missed: &Missed, live_above: u64) {
    for (name, since, owed) in &missed.users {
        let position = format!("{}:{since}", missed.epoch);
        let (mut ws, welcome) = ws_connect(server, name, true, Some(&position));
        assert_eq!(welcome["recovered"], true, "{name}: {welcome}");
        assert_eq!(welcome["epoch"], missed.epoch, "{name}: {welcome}");
        let mut last = *since;
        for want in owed {
            let (seq, data) = next_push(&mut ws);
            assert_eq!(&data, want, "{name}");
            assert!(seq > last, "{name}: seq {seq} after {last}");
            last = seq;
        }
        assert_quiet(&mut ws, Duration::from_millis(200));
        let reply = push(&server.run_dir, name, r#""live""#);
        assert_eq!(reply["delivered"], 1, "{name}: {reply}");
        let (seq, data) = next_push(&mut ws);
        assert_eq!(data, "live");
        assert!(
            seq > live_above,
            "{name}: seq {seq}, not above {live_above}"
        );
    }
}

#[test]
fn devices_that_left_and_offline_users_resume_after_the_upgrade_with_exactly_what_they_missed() {
    let mut server = Server::start(&["--shards", "2"]);
    let missed = miss_pushes(&server, 4);
    let out = upgrade(&server);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let _successor = Successor(successor_pid(&stdout).expect("the successor's pid"));
    // The outcome comes once the successor merged every mailbox.
    assert!(stdout.contains("users' mailboxes moved"), "{stdout}");
    server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits");
    resume_exactly(&server, &missed);
}

/// Issue 14: with `--drain` the devices are drained (each reconnects
/// once), not moved, and the mailboxes still move: the old process
/// forwards every push from the commit on and sends its mailboxes before
/// it starts the drain. A device that left before the upgrade (and an
/// offline user) resumes on the successor with `recovered:true` and
/// exactly what it missed; a drained device resumes with
/// `recovered:true` and nothing again.
#[test]
fn with_drain_the_mailboxes_move_too_and_a_device_that_left_resumes_exactly() {
    let mut server = Server::start(&["--shards", "2", "--drain-rate-per-s", "500"]);
    let missed = miss_pushes(&server, 4);
    let (mut stay, welcome) = ws_connect(&server, "stay", false, None);
    let epoch = welcome["epoch"].as_u64().unwrap();
    assert_eq!(push(&server.run_dir, "stay", r#""before""#)["delivered"], 1);
    let (seen, data) = next_push(&mut stay);
    assert_eq!(data, "before");

    let out = upgrade_with(&server, &["--drain"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let _successor = Successor(successor_pid(&stdout).expect("the successor's pid"));
    assert!(stdout.contains("asked to drain"), "{stdout}");
    assert!(stdout.contains("users' mailboxes moved"), "{stdout}");
    // Drained: told to reconnect (1012) after the mailboxes moved.
    loop {
        match stay.read() {
            Ok(tungstenite::Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1012));
                break;
            }
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
            Ok(other) => panic!("{other:?} before the drain's close"),
            Err(e) => panic!("no close frame: {e}"),
        }
    }
    server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits once drained");
    resume_exactly(&server, &missed);
    let position = format!("{epoch}:{seen}");
    let (mut stay, welcome) = ws_connect(&server, "stay", false, Some(&position));
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_quiet(&mut stay, Duration::from_millis(200));
}

#[test]
fn mailboxes_are_re_homed_on_a_successor_with_another_shard_count() {
    let mut server = Server::start(&["--shards", "2"]);
    let missed = miss_pushes(&server, 6);
    let _successor = start_successor(&server, &["--shards", "3"]);
    // The old process drains (and exits) only after the mailboxes merged.
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process hands over and exits");
    assert!(status.success(), "{status}");
    assert!(server.log_contains("users' mailboxes moved"));
    resume_exactly(&server, &missed);
}

/// A successor with smaller bounds keeps what fits, newest first, and
/// raises the floor over the rest: every resume across what was dropped
/// is `recovered:false` with nothing replayed, never a replay with a gap.
#[test]
fn mailboxes_over_the_successors_entries_bound_resume_as_not_recovered() {
    let mut server = Server::start(&["--shards", "2"]);
    // Each user is owed 3 (two pushes, a broadcast) besides what it saw.
    let missed = miss_pushes(&server, 2);
    let _successor = start_successor(&server, &["--shards", "2", "--mailbox-entries-max", "2"]);
    server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process hands over and exits");
    for (name, since, _) in &missed.users {
        let position = format!("{}:{since}", missed.epoch);
        let (mut ws, welcome) = ws_connect(&server, name, true, Some(&position));
        assert_eq!(welcome["recovered"], false, "{name}: {welcome}");
        assert_quiet(&mut ws, Duration::from_millis(200));
    }
}

/// A successor with room for fewer offline users imports what fits; a
/// user that did not fit resumes `recovered:false` with nothing replayed,
/// one that did with exactly what it missed.
#[test]
fn mailboxes_over_the_successors_offline_users_bound_resume_as_not_recovered() {
    const USERS: usize = 4;
    let mut server = Server::start(&["--shards", "1"]);
    let mut client = pushgate::push::client::Client::connect(&server.run_dir).unwrap();
    // The epoch, from a device of one of them that then leaves.
    let (reader, welcome) = ws_connect(&server, "off0", false, None);
    let epoch = welcome["epoch"].as_u64().unwrap();
    drop(reader);
    wait_until("the device gone", Duration::from_secs(10), || {
        let online: u64 = client.status().unwrap().iter().map(|s| s.connections).sum();
        online == 0
    });
    for i in 0..USERS {
        let name = format!("off{i}");
        let outcome = client.push(&[name.as_str()], &format!("{i}")).unwrap();
        assert_eq!(outcome.stored, 1, "{outcome:?}");
    }
    drop(client);
    let _successor = start_successor(&server, &["--shards", "1", "--offline-users-max", "1"]);
    server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process hands over and exits");
    let mut recovered = 0;
    for i in 0..USERS {
        let name = format!("off{i}");
        let (mut ws, welcome) = ws_connect(&server, &name, true, Some(&format!("{epoch}:0")));
        assert!(welcome["recovered"].is_boolean(), "{welcome}");
        if welcome["recovered"] == true {
            recovered += 1;
            let (_, data) = next_push(&mut ws);
            assert_eq!(data, serde_json::json!(i));
        }
        assert_quiet(&mut ws, Duration::from_millis(200));
    }
    assert_eq!(recovered, 1, "the bound is one offline user");
}

/// A successor that dies while the mailboxes move (here: this test,
/// speaking the protocol by hand, hangs up at the first `Mailboxes`) costs
/// nothing: an export only copies, so the old process still has every
/// mailbox; it takes the listeners back instead of draining, and every
/// device resumes there with exactly what it missed.
#[test]
fn a_successor_that_dies_while_mailboxes_move_leaves_them_with_the_old_process() {
    let server = Server::start(&["--shards", "2"]);
    let missed = miss_pushes(&server, 2);
    let conn = wire::connect(&takeover::socket_path(&server.run_dir)).unwrap();
    conn.send(
        &wire::Message::Hello {
            format: wire::FORMAT_VERSION,
            pid: std::process::id(),
            shards: 2,
        },
        &[],
    )
    .unwrap();
    let timeout = Some(Duration::from_secs(30));
    let mut listeners = Vec::new();
    loop {
        match conn.recv(timeout).unwrap().unwrap() {
            (wire::Message::History { .. }, _) => {}
            (wire::Message::Listeners { more, .. }, fds) => {
                listeners.extend(fds);
                if !more {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    conn.send(&wire::Message::Accepting, &[]).unwrap();
    let (committed, _) = conn.recv(timeout).unwrap().unwrap();
    assert_eq!(committed, wire::Message::Committed);
    loop {
        match conn.recv(timeout).unwrap().unwrap() {
            (wire::Message::ConnectionsDone { moved }, _) => assert_eq!(moved, 0),
            (wire::Message::Mailboxes { .. }, _) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(conn);
    drop(listeners);

    server.wait_log("mailboxes not moved");
    server.wait_log("taking the listeners back");
    wait_until("ready again", Duration::from_secs(10), || {
        readyz(server.admin_addr) == Some(200)
    });
    resume_exactly_then_live_above(&server, &missed, 0);
}

/// A mailbox larger than one take-over message moves in parts; a stored
/// push too large for any message stays behind and raises its user's
/// floor: a resume from before it is `recovered:false`, one from it on is
/// recovered with exactly what came after.
#[test]
fn a_large_mailbox_moves_in_parts_and_a_push_too_large_to_travel_raises_the_floor() {
    let mut server = Server::start(&["--shards", "1"]);
    let mut client = pushgate::push::client::Client::connect(&server.run_dir).unwrap();
    let (mut huge_device, welcome) = ws_connect(&server, "huge", false, None);
    let epoch = welcome["epoch"].as_u64().unwrap();
    let huge = serde_json::json!("h".repeat(60_000)).to_string();
    assert_eq!(client.push(&["huge"], &huge).unwrap().delivered, 1);
    let (huge_seq, _) = next_push(&mut huge_device);
    drop(huge_device);
    wait_until("the device gone", Duration::from_secs(10), || {
        let online: u64 = client.status().unwrap().iter().map(|s| s.connections).sum();
        online == 0
    });
    assert_eq!(client.push(&["huge"], r#""after""#).unwrap().stored, 1);
    let big: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!(format!("{i}{}", "b".repeat(20_000))))
        .collect();
    for data in &big {
        let outcome = client.push(&["big"], &data.to_string()).unwrap();
        assert_eq!(outcome.stored, 1, "{outcome:?}");
    }
    drop(client);

    let out = upgrade(&server);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let _successor = Successor(successor_pid(&stdout).expect("the successor's pid"));
    assert!(stdout.contains("2 users' mailboxes moved"), "{stdout}");
    server
        .wait_exit(Duration::from_secs(30))
        .expect("the old process exits");

    let (mut ws, welcome) = ws_connect(&server, "big", true, Some(&format!("{epoch}:0")));
    assert_eq!(welcome["recovered"], true, "{welcome}");
    for want in &big {
        assert_eq!(&next_push(&mut ws).1, want);
    }
    assert_quiet(&mut ws, Duration::from_millis(200));
    let (mut ws, welcome) = ws_connect(&server, "huge", true, Some(&format!("{epoch}:0")));
    assert_eq!(welcome["recovered"], false, "{welcome}");
    assert_quiet(&mut ws, Duration::from_millis(200));
    let (mut ws, welcome) = ws_connect(&server, "huge", true, Some(&format!("{epoch}:{huge_seq}")));
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!(next_push(&mut ws).1, "after");
    assert_quiet(&mut ws, Duration::from_millis(200));
}

/// Reads a device's pushes until the broadcast `"final"`: the `n` of each
/// push in arrival order, with its seq. Panics on a close frame, a lost
/// connection, or 5 s of silence.
fn read_ns_until_final(device: &mut Raw, user: &str) -> Vec<(u64, u64)> {
    let mut got = Vec::new();
    loop {
        let (opcode, payload) = device.read_frame();
        match opcode {
            1 => {}
            8 => panic!("device {user} was closed: {payload:?}"),
            _ => continue, // a ping
        }
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["type"], "push", "{user}: {v}");
        if v["data"] == "final" {
            return got;
        }
        got.push((v["data"]["n"].as_u64().unwrap(), v["seq"].as_u64().unwrap()));
    }
}

/// Each device `<prefix><u>` must have received exactly the pushes
/// `n < sent` with `n % users == u`, once each, in order, in increasing seqs.
fn assert_each_push_once_in_order(devices: &mut [Raw], prefix: &str, sent: u64) {
    let users = devices.len() as u64;
    for (u, device) in devices.iter_mut().enumerate() {
        let user = format!("{prefix}{u}");
        let got = read_ns_until_final(device, &user);
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "{user}: seqs not increasing: {got:?}"
        );
        let ns: Vec<u64> = got.iter().map(|&(n, _)| n).collect();
        let expected: Vec<u64> = (0..sent).filter(|n| n % users == u as u64).collect();
        assert_eq!(
            ns, expected,
            "{user}: pushes lost, repeated or out of order"
        );
    }
}

/// Pushes `{"n":n}` to `<prefix><n % users>`, slowly enough that devices
/// that read only at the end do not fall behind (≈ `per_ms` per ms at most).
fn slow_pushes(
    prefix: &'static str,
    users: u64,
    per_ms: u64,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
) -> impl Iterator<Item = (Vec<String>, String)> {
    let mut n = 0u64;
    std::iter::from_fn(move || {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if n.is_multiple_of(per_ms) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let item = (
            vec![format!("{prefix}{}", n % users)],
            format!(r#"{{"n":{n}}}"#),
        );
        n += 1;
        produced.store(n, Ordering::Relaxed);
        Some(item)
    })
}

/// What a library publisher's `push_many` ended with: its outcome, the
/// pushes it produced, and how often it reopened a socket.
type LibraryRun = (
    Result<pushgate::push::client::PushOutcome, pushgate::push::client::ClientError>,
    u64,
    u64,
);

/// A library publisher: one `push_many` over `slow_pushes` until `stop`.
fn spawn_library(
    server: &Server,
    prefix: &'static str,
    users: usize,
    per_ms: u64,
    stop: &Arc<AtomicBool>,
    produced: &Arc<AtomicU64>,
) -> std::thread::JoinHandle<LibraryRun> {
    let (run_dir, stop, produced) = (server.run_dir.clone(), stop.clone(), produced.clone());
    std::thread::spawn(move || {
        let mut client = pushgate::push::client::Client::connect(&run_dir).unwrap();
        let pushes = slow_pushes(prefix, users as u64, per_ms, stop, produced.clone());
        let outcome = client.push_many(pushes);
        (
            outcome,
            produced.load(Ordering::Relaxed),
            client.reconnects(),
        )
    })
}

/// Every push of the library publisher was answered once, and it resent
/// at least once; (pushes sent, reconnects).
fn each_answered_once(library: std::thread::JoinHandle<LibraryRun>) -> (u64, u64) {
    let (outcome, sent, reconnects) = library.join().unwrap();
    let outcome = outcome.expect("push_many across the upgrade");
    assert_eq!(outcome.rejected, 0, "{outcome:?}");
    assert_eq!(
        outcome.delivered + outcome.stored,
        sent,
        "every push answered once: {outcome:?}"
    );
    assert!(reconnects >= 1, "the library never resent: {reconnects}");
    (sent, reconnects)
}

/// Issue 14, step 4: publishers keep pushing, pipelined, while the binary
/// is replaced. The client library (a window of requests per shard socket)
/// and `pushgate push --ndjson` (fed line by line) lose nothing and repeat
/// nothing: the old process answers every request it read before closing
/// a publisher connection, and the client resends the rest to the
/// successor on the same socket path. Every push is answered once, and
/// every device connected throughout receives each push once, in order.
#[test]
fn pipelining_publishers_lose_and_repeat_nothing_across_the_upgrade() {
    // Enough users that a device, read only at the end, holds a few
    // hundred pushes (far under its send queue) even on a slow machine.
    const USERS: usize = 100;
    /// The library publisher's pace: its window stays full, so requests
    /// are in flight whenever the old process closes its connection.
    const LIB_PER_MS: u64 = 8;
    let mut server = Server::start(&["--shards", "2"]);
    let mut lib_devices: Vec<Raw> = (0..USERS)
        .map(|i| Raw::upgraded(&server, &format!("p{i}")).0)
        .collect();
    let mut cli_devices: Vec<Raw> = (0..USERS)
        .map(|i| Raw::upgraded(&server, &format!("q{i}")).0)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));

    // The library publisher: one push_many over an endless iterator.
    let lib_produced = Arc::new(AtomicU64::new(0));
    let library = spawn_library(&server, "p", USERS, LIB_PER_MS, &stop, &lib_produced);

    // `pushgate push --ndjson`, its stdin written line by line.
    let mut cli = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["push", "--ndjson", "--run-dir"])
        .arg(&server.run_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cli_produced = Arc::new(AtomicU64::new(0));
    let feeder = {
        let mut stdin = cli.stdin.take().unwrap();
        let (stop, produced) = (stop.clone(), cli_produced.clone());
        std::thread::spawn(move || {
            for (users, data) in slow_pushes("q", USERS as u64, 1, stop, produced) {
                let line = format!("{{\"users\":[\"{}\"],\"data\":{data}}}\n", users[0]);
                std::io::Write::write_all(&mut stdin, line.as_bytes()).unwrap();
            }
            // Dropping stdin ends the input: the CLI drains and prints.
        })
    };
    wait_until("pushes before the upgrade", Duration::from_secs(30), || {
        lib_produced.load(Ordering::Relaxed) >= LIB_PER_MS * 1_000
            && cli_produced.load(Ordering::Relaxed) >= 1_000
    });

    let out = upgrade(&server);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    let _successor = Successor(successor_pid(&stdout).expect("the successor's pid"));
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("the old process exits once everything moved");
    assert!(status.success(), "{status}");
    assert!(server.log_contains("every publisher answered and closed"));
    let (lib_at_exit, cli_at_exit) = (
        lib_produced.load(Ordering::Relaxed),
        cli_produced.load(Ordering::Relaxed),
    );
    wait_until("pushes after the exit", Duration::from_secs(30), || {
        lib_produced.load(Ordering::Relaxed) >= lib_at_exit + LIB_PER_MS * 1_000
            && cli_produced.load(Ordering::Relaxed) >= cli_at_exit + 1_000
    });
    stop.store(true, Ordering::Relaxed);

    let (lib_sent, reconnects) = each_answered_once(library);

    feeder.join().unwrap();
    let cli_sent = cli_produced.load(Ordering::Relaxed);
    let cli_out = cli.wait_with_output().unwrap();
    assert!(cli_out.status.success(), "{cli_out:?}");
    let cli_outcome: serde_json::Value = serde_json::from_slice(&cli_out.stdout).unwrap();
    assert_eq!(cli_outcome["rejected"], 0, "{cli_outcome}");
    assert_eq!(
        cli_outcome["delivered"].as_u64().unwrap() + cli_outcome["stored"].as_u64().unwrap(),
        cli_sent,
        "every line answered once: {cli_outcome}"
    );

    // The devices moved and heard every push once, in order; the final
    // broadcast comes from the successor after all of them.
    let mut client = pushgate::push::client::Client::connect(&server.run_dir).unwrap();
    let outcome = client.broadcast(r#""final""#).unwrap();
    assert_eq!(outcome.delivered as usize, 2 * USERS, "{outcome:?}");
    assert_each_push_once_in_order(&mut lib_devices, "p", lib_sent);
    assert_each_push_once_in_order(&mut cli_devices, "q", cli_sent);
    eprintln!(
        "{lib_sent} library pushes ({reconnects} reconnects) and {cli_sent} --ndjson lines \
         across the upgrade: each answered once, each delivered once, in order"
    );
}

/// The successor's pid from the `accepting` step of `pushgate upgrade`'s
/// output (there is no outcome when the old process dies mid-hand-over).
fn accepting_pid(stdout: &str) -> Option<i32> {
    let line = stdout
        .lines()
        .find(|l| l.contains("accepts on every listener"))?;
    let after = &line[line.find("pid ")? + 4..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Issue 14: the old process dies (`fault`: SIGKILL, or SIGINT, which
/// closes its publishers with requests unanswered) after the successor
/// acknowledged pushes it forwarded and before it answered them (a debug
/// fault withholds those replies, so the window is certain). The client
/// library resends every unanswered request to the successor, which
/// answers those it had processed from memory (`takeover::resends`)
/// instead of delivering them again: every push answered once, and every
/// device receives each push once, in order.
fn publishers_exactly_once_when_the_old_process_stops_mid_hand_over(fault: &str) {
    const USERS: usize = 60;
    const PER_MS: u64 = 4;
    let mut server = Server::start_with_env(&["--shards", "2"], &[(takeover::DEBUG_ENV, fault)]);
    let mut devices: Vec<Raw> = (0..USERS)
        .map(|i| Raw::upgraded(&server, &format!("k{i}")).0)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let library = spawn_library(&server, "k", USERS, PER_MS, &stop, &produced);
    wait_until("pushes before the upgrade", Duration::from_secs(30), || {
        produced.load(Ordering::Relaxed) >= PER_MS * 1_000
    });

    let out = upgrade(&server);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let _successor = Successor(accepting_pid(&stdout).expect("the successor's pid"));
    assert!(
        server.wait_exit(Duration::from_secs(60)).is_some(),
        "the old process stops itself: {stdout}"
    );
    assert!(
        server.log_contains("replies to acknowledged forwarded pushes withheld"),
        "the fault did not fire: {stdout}"
    );
    let at_exit = produced.load(Ordering::Relaxed);
    wait_until("pushes after the exit", Duration::from_secs(30), || {
        produced.load(Ordering::Relaxed) >= at_exit + PER_MS * 1_000
    });
    stop.store(true, Ordering::Relaxed);

    let (sent, reconnects) = each_answered_once(library);
    wait_until(
        "the successor answering resends from memory",
        Duration::from_secs(10),
        || server.log_contains("answered, not delivered again"),
    );

    let mut client = pushgate::push::client::Client::connect(&server.run_dir).unwrap();
    let outcome = client.broadcast(r#""final""#).unwrap();
    assert_eq!(outcome.delivered as usize, USERS, "{outcome:?}");
    assert_each_push_once_in_order(&mut devices, "k", sent);
    eprintln!(
        "{sent} pushes ({reconnects} reconnects) across an old process stopped by {fault}: \
         each answered once, each delivered once, in order"
    );
}

#[test]
fn publishers_lose_and_repeat_nothing_when_the_old_process_is_killed_mid_hand_over() {
    publishers_exactly_once_when_the_old_process_stops_mid_hand_over("kill-after-forwarding");
}

#[test]
fn publishers_lose_and_repeat_nothing_when_the_old_process_gets_sigint_mid_hand_over() {
    publishers_exactly_once_when_the_old_process_stops_mid_hand_over("sigint-after-forwarding");
}
