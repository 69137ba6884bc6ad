//! The demo page (web/demo.html, served at `GET /` with `serve --dev`) in a
//! real browser: headless Chromium (Debian's `chromium`), driven over the
//! Chrome DevTools Protocol by tests/browser/driver.mjs (Node, standard
//! library only), against the real server; pushes come from the real client
//! library on the per-shard Unix sockets.
//!
//! The driver types a user ID, clicks Connect and prints, as JSON lines, what
//! the page shows at each stage; the test pushes in between and checks the
//! DOM: the welcome, a live push, the server dropping the idle connection
//! (close 1001), and the automatic reconnect with `since=<epoch>:<seq>` that
//! replays exactly the pushes made while the page was away ("recovered 3
//! missed notifications") — or, when they fell out of the mailbox, the
//! "gap — refetch" notice. It also checks the page asked for nothing but its
//! own origin (it must work offline) and logged no errors. Screenshots go to
//! target/browser-artifacts/.
//!
//! The SDK's transports in the same browser (`--scenario transport`): the page
//! on WebSocket, and behind a proxy that refuses WebSocket upgrades (it falls
//! back to Server-Sent Events), across a server crash and restart (the page
//! shows the reset: the new server cannot replay) and a drain onto a
//! successor on the same port (closed with 1012, back after the delay the
//! server or the SDK spread), with a push through each server shown once.
//!
//! Without Chromium or Node the tests say why and pass;
//! `scripts/browser-deps.sh` installs both, and `PUSHGATE_BROWSER_REQUIRED=1`
//! turns a skip into a failure.

mod common;
#[path = "browser/gateway.rs"]
mod gateway;

use common::Server;
use pushgate::push::client::Client;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The server closes a client silent this long (the browser sends nothing).
const IDLE_TIMEOUT_MS: &str = "2000";
/// The page's backoff (the SDK waits this floor plus a draw below this base
/// doubling with each failure):
/// long enough for the test to push while the page is away.
const BACKOFF_MS: u32 = 1500;
/// Bounds for the driver: each stage, and its whole run.
const STAGE_TIMEOUT_MS: u32 = 8000;
const DRIVER_TIMEOUT_MS: u32 = 20_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("PUSHGATE_CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), Into::into)
}

/// `Err(why)` when Chromium or Node is missing.
fn available() -> Result<String, String> {
    let chromium = chromium();
    if !chromium.is_file() {
        return Err(format!(
            "{} not found (run scripts/browser-deps.sh)",
            chromium.display()
        ));
    }
    let out = Command::new("node")
        .args(["-p", "process.versions.node"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run node (run scripts/browser-deps.sh): {e}"))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if !out.status.success() || major < 16 {
        return Err(format!("node ≥ 16 is needed, found {version:?}"));
    }
    Ok(format!("{} with node {version}", chromium.display()))
}

/// True if the browser tests can run; otherwise says why and (unless
/// PUSHGATE_BROWSER_REQUIRED is set) lets the test pass.
fn ready() -> bool {
    match available() {
        Ok(what) => {
            eprintln!("browser test: {what}");
            true
        }
        Err(why) if std::env::var_os("PUSHGATE_BROWSER_REQUIRED").is_some() => {
            panic!("browser test required: {why}")
        }
        Err(why) => {
            eprintln!("skipping the browser test: {why}");
            false
        }
    }
}

/// The driver subprocess (its own process group, with Chromium in it) and
/// the JSON lines it prints.
struct Driver {
    child: Child,
    lines: Receiver<String>,
    stderr: Receiver<String>,
    profile: PathBuf,
    deadline: Instant,
}

impl Driver {
    fn spawn(server: &Server, user: &str, expect: &str, missed: usize, shot: &Path) -> Driver {
        let url = format!("http://{}/?backoff={BACKOFF_MS}", server.addr);
        let args = [
            "--user",
            user,
            "--expect",
            expect,
            "--missed",
            &missed.to_string(),
        ]
        .map(String::from);
        Driver::spawn_at(&url, &args, shot, DRIVER_TIMEOUT_MS)
    }

    /// The driver on `url` with more arguments (`--scenario …`).
    fn spawn_at(url: &str, args: &[String], shot: &Path, timeout_ms: u32) -> Driver {
        let profile = std::env::temp_dir().join(format!(
            "pushgate-chromium-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let mut child = Command::new("node")
            .arg(repo().join("tests/browser/driver.mjs"))
            .args(["--url", url])
            .args(args)
            .arg("--screenshot")
            .arg(shot)
            .arg("--chromium")
            .arg(chromium())
            .arg("--user-data-dir")
            .arg(&profile)
            .args(["--stage-timeout-ms", &STAGE_TIMEOUT_MS.to_string()])
            .args(["--timeout-ms", &timeout_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn node");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
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
        Driver {
            child,
            lines,
            stderr,
            profile,
            // The driver bounds itself; this catches a driver that hangs anyway.
            deadline: Instant::now() + Duration::from_millis(u64::from(timeout_ms) + 3000),
        }
    }

    /// The next line, which must be `event`; fails on the driver's error
    /// line, its end, or the deadline.
    fn next(&mut self, event: &str) -> Value {
        let wait = self.deadline.saturating_duration_since(Instant::now());
        let line = match self.lines.recv_timeout(wait) {
            Ok(line) => line,
            Err(e) => {
                self.kill();
                let stderr = self
                    .stderr
                    .recv_timeout(Duration::from_secs(1))
                    .unwrap_or_default();
                panic!("browser driver: no {event:?} line ({e:?}); stderr: {stderr}");
            }
        };
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("browser driver: not JSON ({e}): {line}"));
        assert_eq!(
            value["event"], event,
            "browser driver, waiting for {event:?}: {value:#}"
        );
        value
    }

    /// Waits (bounded) for the driver to exit 0.
    fn finish(mut self) {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "browser driver exited with {status}");
                return;
            }
            assert!(
                Instant::now() < self.deadline,
                "browser driver did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        // The whole group: node and the Chromium it started.
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Even after the driver exits, Chromium's helpers may linger a moment.
        self.kill();
        let _ = self.child.wait();
        // Chromium's processes may still be exiting (and writing) a moment.
        for _ in 0..5 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn artifact(name: &str) -> PathBuf {
    let dir = repo().join("target/browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn start_server(extra: &[&str]) -> Server {
    let mut flags = vec![
        "--dev",
        "--shards",
        "2",
        "--idle-timeout-ms",
        IDLE_TIMEOUT_MS,
        "--ping-interval-ms",
        "0",
    ];
    flags.extend_from_slice(extra);
    Server::start(&flags)
}

/// The page's notifications, newest first: (seq, data, replayed).
fn log_entries(page: &Value) -> Vec<(u64, Value, bool)> {
    page["log"]
        .as_array()
        .unwrap_or_else(|| panic!("no log: {page:#}"))
        .iter()
        .map(|li| {
            let text = li["data"].as_str().unwrap();
            let data = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("the page shows data that is not JSON ({e}): {text}"));
            (li["seq"].as_u64().unwrap(), data, li["replayed"] == true)
        })
        .collect()
}

/// The page's data attributes hold strings.
fn attr_u64(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Connect, a live push, the server's idle close, pushes while the page is
/// away: everything up to the page's reconnect. Returns (epoch, the live
/// push's seq).
fn connect_push_and_drop(driver: &mut Driver, c: &mut Client, user: &str) -> (u64, u64) {
    let ready = driver.next("ready");
    eprintln!("browser: {}", ready["browser"]);

    let page = &driver.next("welcome")["page"];
    assert_eq!(page["state"], "open", "{page:#}");
    assert_eq!(
        page["transport"],
        json!({"transport": "websocket"}),
        "{page:#}"
    );
    assert_eq!(page["welcome"]["user"], user);
    assert!(
        page["welcome"].get("recovered").is_none(),
        "a first connect is not a resume: {page:#}"
    );
    let epoch = attr_u64(&page["welcome"]["epoch"]);
    assert!(epoch > 0);
    assert_eq!(
        page["cmd"],
        format!(r#"pushgate push --user {user} '{{"hi":1}}'"#),
        "the page shows the command that pushes to it"
    );
    assert_eq!(page["log"], json!([]));

    // A live push (the page sends nothing, so well within the idle timeout).
    let outcome = c.push(&[user], r#"{"hi":1}"#).unwrap();
    assert_eq!((outcome.delivered, outcome.stored), (1, 0), "page online");
    let page = &driver.next("push")["page"];
    let live = log_entries(page);
    assert_eq!(live.len(), 1, "{page:#}");
    let (live_seq, ref data, replayed) = live[0];
    assert_eq!(data, &json!({"hi": 1}));
    assert!(!replayed);

    // The server drops the silent page (idle timeout, close 1001). As soon
    // as it has forgotten the device, push while the page backs off.
    let deadline = Instant::now() + Duration::from_secs(8);
    while c.presence(user).unwrap().online {
        assert!(
            Instant::now() < deadline,
            "the server did not drop the idle page"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for i in 0..3 {
        let data = json!({"missed": i, "text": "κόσμε"});
        let outcome = c.push(&[user], &data.to_string()).unwrap();
        assert_eq!(
            (outcome.delivered, outcome.stored),
            (0, 1),
            "the page is away: stored"
        );
    }
    let page = &driver.next("dropped")["page"];
    assert_eq!(page["state"], "reconnecting", "{page:#}");
    assert_eq!(
        (&page["close"]["code"], &page["close"]["reason"]),
        (&json!("1001"), &json!("idle timeout")),
        "the page shows the server's close: {page:#}"
    );
    let delay = attr_u64(&page["close"]["delay"]);
    assert!(
        (u64::from(BACKOFF_MS)..2 * u64::from(BACKOFF_MS)).contains(&delay),
        "the SDK's first delay: the floor plus a full-jitter draw below the base: {delay}"
    );
    assert!(
        page["stateText"]
            .as_str()
            .unwrap()
            .starts_with("reconnecting in "),
        "{page:#}"
    );
    (epoch, live_seq)
}

/// The final checks: Disconnect closes the page's socket for good; the page
/// asked only its own origin for anything (it works offline), logged no
/// errors, resumed with `since`, and exited.
fn check_done(server: &Server, driver: &mut Driver, since: &str, shot: &Path) -> Value {
    let http = format!("http://{}/", server.addr);
    let ws = format!("ws://{}/ws?", server.addr);
    check_done_at(&http, &ws, driver, since, shot)
}

/// `check_done` for a page loaded from `http` whose sockets go to `ws`.
fn check_done_at(http: &str, ws: &str, driver: &mut Driver, since: &str, shot: &Path) -> Value {
    let page = &driver.next("disconnected")["page"];
    assert_eq!(page["state"], "closed", "Disconnect stays closed: {page:#}");
    assert_eq!(page["canDisconnect"], false);
    let done = driver.next("done");
    let requests: Vec<&str> = done["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for r in &requests {
        assert!(
            r.starts_with(http) || r.starts_with(ws) || r.starts_with("data:"),
            "the page loaded something from elsewhere: {r} (all: {requests:?})"
        );
    }
    let sockets: Vec<&&str> = requests.iter().filter(|r| r.starts_with(ws)).collect();
    assert!(sockets.len() >= 2, "{requests:?}");
    assert!(
        !sockets[0].contains("since="),
        "a first connect has no since"
    );
    assert!(
        sockets[1].ends_with(&format!("&since={since}")),
        "the reconnect resumes from the last seq seen: {}",
        sockets[1]
    );
    assert_eq!(done["problems"], json!([]), "page errors");
    let png = std::fs::read(shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    eprintln!("screenshot: {}", shot.display());
    done
}

/// The page connects, shows a live push, is dropped by the server, and on
/// its automatic reconnect recovers exactly the three pushes it missed.
#[test]
fn page_recovers_pushes_missed_while_the_server_had_dropped_it() {
    if !ready() {
        return;
    }
    let done = recovers(&[], "demo.png");
    assert!(
        done["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e == ""),
        "deflate is off by default: {done:#}"
    );
}

/// The same with permessage-deflate on and no threshold: Chromium offers
/// it (as it does by default), the server accepts it on every connection,
/// and every push — live and replayed — arrives compressed and is shown
/// as it was pushed.
#[test]
fn page_recovers_pushes_with_deflate() {
    if !ready() {
        return;
    }
    let done = recovers(
        &["--deflate", "--deflate-threshold-bytes", "0"],
        "demo-deflate.png",
    );
    let extensions = done["extensions"].as_array().unwrap();
    assert!(extensions.len() >= 2, "{done:#}");
    for e in extensions {
        assert_eq!(
            e, "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "every handshake negotiated deflate: {done:#}"
        );
    }
}

fn recovers(flags: &[&str], shot_name: &str) -> Value {
    let started = Instant::now();
    let server = start_server(flags);
    let mut c = Client::connect(&server.run_dir).expect("push client");
    let user = "browser-alice";
    let shot = artifact(shot_name);
    let mut driver = Driver::spawn(&server, user, "recovered", 3, &shot);
    let (epoch, live_seq) = connect_push_and_drop(&mut driver, &mut c, user);

    let page = &driver.next("resumed")["page"];
    assert_eq!(page["state"], "open", "{page:#}");
    assert_eq!(page["welcome"]["recovered"], "true", "{page:#}");
    assert_eq!(attr_u64(&page["welcome"]["epoch"]), epoch, "same server");
    assert_eq!(
        page["resume"],
        json!({"kind": "recovered", "count": "3"}),
        "{page:#}"
    );
    assert_eq!(page["resumeText"], "recovered 3 missed notifications");
    assert_eq!(page["dupes"], 0, "no push shown twice");
    // Newest first: the three missed ones (replayed, in push order), then the
    // live one; nothing else.
    let log = log_entries(page);
    let data: Vec<&Value> = log.iter().map(|(_, d, _)| d).collect();
    assert_eq!(
        data,
        [
            &json!({"missed": 2, "text": "κόσμε"}),
            &json!({"missed": 1, "text": "κόσμε"}),
            &json!({"missed": 0, "text": "κόσμε"}),
            &json!({"hi": 1}),
        ],
        "{page:#}"
    );
    assert_eq!(
        log.iter().map(|(_, _, r)| *r).collect::<Vec<_>>(),
        [true, true, true, false]
    );
    assert!(
        log.windows(2).all(|w| w[0].0 > w[1].0),
        "seqs increase: {log:?}"
    );
    assert_eq!(log[3].0, live_seq);
    assert_eq!(
        attr_u64(&page["welcome"]["seq"]),
        log[0].0,
        "the welcome names the newest seq, the last one replayed"
    );
    let done = check_done(&server, &mut driver, &format!("{epoch}:{live_seq}"), &shot);
    driver.finish();
    eprintln!("browser test took {:?}", started.elapsed());
    done
}

/// When the pushes made while the page was away no longer fit the mailbox,
/// the resume is not recovered and the page shows the gap notice.
#[test]
fn page_shows_a_gap_when_missed_pushes_fell_out_of_the_mailbox() {
    if !ready() {
        return;
    }
    let server = start_server(&["--mailbox-entries-max", "2"]);
    let mut c = Client::connect(&server.run_dir).expect("push client");
    let user = "browser-bob";
    let shot = artifact("demo-gap.png");
    let mut driver = Driver::spawn(&server, user, "gap", 0, &shot);
    let (epoch, live_seq) = connect_push_and_drop(&mut driver, &mut c, user);

    let page = &driver.next("resumed")["page"];
    assert_eq!(page["state"], "open", "{page:#}");
    assert_eq!(page["welcome"]["recovered"], "false", "{page:#}");
    assert_eq!(page["resume"], json!({"kind": "gap"}), "{page:#}");
    assert!(
        page["resumeText"]
            .as_str()
            .unwrap()
            .starts_with("gap — refetch"),
        "{page:#}"
    );
    let log = log_entries(page);
    assert_eq!(log.len(), 1, "nothing replayed: {page:#}");
    assert_eq!(log[0].0, live_seq);
    check_done(&server, &mut driver, &format!("{epoch}:{live_seq}"), &shot);
    driver.finish();
}

/// The transport scenario's whole run, bounded.
const TRANSPORT_DRIVER_TIMEOUT_MS: u32 = 60_000;

/// The page over `want`, across a crash + restart and a drain onto a
/// successor; behind the upgrade-refusing proxy when `via_proxy`.
fn page_survives_a_restart_and_a_drain(want: &str, via_proxy: bool, shot_name: &str) {
    if !ready() {
        return;
    }
    let dir = gateway::temp_dir("browser-transport");
    let (secret, _) = gateway::shared_secret(&dir);
    let port = gateway::free_port();
    // Heartbeats every second: the SDK sees the connection live.
    let flags = ["--dev", "--shards", "2", "--ping-interval-ms", "1000"];
    let mut first = gateway::Gateway::start(port, &secret, &flags);
    let entry = if via_proxy {
        gateway::start_proxy_refusing_upgrades(port)
    } else {
        port
    };
    let user = format!("browser-{want}");
    let url = format!("http://127.0.0.1:{entry}/?user={user}&connect=1&backoff=200");
    let shot = artifact(shot_name);
    let args = [
        "--scenario",
        "transport",
        "--transport",
        want,
        "--user",
        &user,
    ]
    .map(String::from);
    let mut driver = Driver::spawn_at(&url, &args, &shot, TRANSPORT_DRIVER_TIMEOUT_MS);
    driver.next("ready");

    let page = &driver.next("open")["page"];
    assert_eq!(page["transport"]["transport"], want, "{page:#}");
    let epoch1 = attr_u64(&page["welcome"]["epoch"]);
    assert_eq!(first.push(&[&user], r#"{"n":1}"#), (1, 0));
    let page = &driver.next("push")["page"];
    assert_eq!(log_entries(page)[0].1, json!({"n": 1}));

    // A crash and a restart: the new process is up (sharing the port) before
    // the old one vanishes, so the page's next attempt finds it.
    let mut second = gateway::Gateway::start(port, &secret, &flags);
    first.crash();
    let page = &driver.next("restarted")["page"];
    assert_eq!(page["resume"]["kind"], "gap", "{page:#}");
    assert_eq!(page["welcome"]["recovered"], "false", "{page:#}");
    let epoch2 = attr_u64(&page["welcome"]["epoch"]);
    assert_ne!(epoch2, epoch1, "a new server, a new epoch");
    assert_eq!(second.push(&[&user], r#"{"n":2}"#), (1, 0));
    driver.next("push2");

    // A drain onto a successor on the same port.
    let third = gateway::Gateway::start(port, &secret, &flags);
    second.signal(libc::SIGTERM);
    let page = &driver.next("drain-closed")["page"];
    let delay = attr_u64(&page["close"]["delay"]);
    assert!(
        delay < 1000,
        "reconnect spread over the drain window (server retry or SDK spread): {delay} ms"
    );
    let page = &driver.next("drained")["page"];
    assert_eq!(page["resets"], 2, "{page:#}");
    assert!(second.wait_exit(Duration::from_secs(10)).success());
    let epoch3 = attr_u64(&page["welcome"]["epoch"]);
    assert!(epoch3 != epoch2 && epoch3 != epoch1);
    assert_eq!(third.push(&[&user], r#"{"n":3}"#), (1, 0));
    let page = &driver.next("push3")["page"];
    let data: Vec<Value> = log_entries(page).into_iter().map(|(_, d, _)| d).collect();
    assert_eq!(
        data,
        [json!({"n": 3}), json!({"n": 2}), json!({"n": 1})],
        "each push once, newest first: {page:#}"
    );
    assert_eq!(page["dupes"], 0);
    assert_eq!(page["transport"]["transport"], want);

    let done = driver.next("done");
    assert_eq!(done["problems"], json!([]), "page errors");
    let requests: Vec<&str> = done["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let websockets = requests.iter().filter(|r| r.contains("/ws?")).count();
    let streams = requests.iter().filter(|r| r.contains("/sse?")).count();
    if via_proxy {
        assert!(websockets >= 3, "WebSocket was tried first: {requests:?}");
        assert!(streams >= 3, "then SSE, for each server: {requests:?}");
    } else {
        assert!(websockets >= 3, "{requests:?}");
    }
    assert!(png_ok(&shot));
    driver.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn png_ok(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|png| png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000)
}

#[test]
fn page_over_websocket_survives_a_restart_and_a_drain() {
    page_survives_a_restart_and_a_drain("websocket", false, "demo-websocket.png");
}

#[test]
fn page_behind_a_proxy_that_refuses_websocket_uses_sse_across_a_restart_and_a_drain() {
    page_survives_a_restart_and_a_drain("sse", true, "demo-sse.png");
}

/// The demo page over https and its WebSocket over wss (`tls_listen` with a
/// test certificate made here, which Chromium trusts by its key's hash):
/// connect, a live push, dropped by the server, and the three pushes
/// missed meanwhile recovered on the automatic reconnect.
#[test]
fn page_over_https_and_wss_recovers_missed_pushes() {
    use base64::Engine;
    use rcgen::PublicKeyData;
    if !ready() {
        return;
    }
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("pushgate-browser-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, made.cert.pem()).unwrap();
    std::fs::write(&key_file, made.signing_key.serialize_pem()).unwrap();
    let spki_sha256 = ring::digest::digest(
        &ring::digest::SHA256,
        &made.signing_key.subject_public_key_info(),
    );
    let spki = base64::engine::general_purpose::STANDARD.encode(spki_sha256.as_ref());

    let server = start_server(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        cert_file.to_str().unwrap(),
        "--tls-key-file",
        key_file.to_str().unwrap(),
    ]);
    server.wait_log("tls_addr=");
    let tls_addr: std::net::SocketAddr = server
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split("tls_addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("the TLS address is logged");
    let mut c = Client::connect(&server.run_dir).expect("push client");
    let user = "browser-tls";
    let shot = artifact("demo-https.png");
    let args = [
        "--user",
        user,
        "--expect",
        "recovered",
        "--missed",
        "3",
        "--trust-spki",
        &spki,
    ]
    .map(String::from);
    let url = format!("https://{tls_addr}/?backoff={BACKOFF_MS}");
    let mut driver = Driver::spawn_at(&url, &args, &shot, DRIVER_TIMEOUT_MS);
    let (epoch, live_seq) = connect_push_and_drop(&mut driver, &mut c, user);
    let page = &driver.next("resumed")["page"];
    assert_eq!(page["state"], "open", "{page:#}");
    assert_eq!(page["welcome"]["recovered"], "true", "{page:#}");
    assert_eq!(
        page["resume"],
        json!({"kind": "recovered", "count": "3"}),
        "{page:#}"
    );
    check_done_at(
        &format!("https://{tls_addr}/"),
        &format!("wss://{tls_addr}/ws?"),
        &mut driver,
        &format!("{epoch}:{live_seq}"),
        &shot,
    );
    driver.finish();
    let _ = std::fs::remove_dir_all(&dir);
}
