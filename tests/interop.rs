//! Interop with WebSocket clients nobody here wrote: Python's `websockets`
//! (asyncio) and Node's `ws`, run as real subprocesses (tests/interop/
//! client.py and client.mjs) against the real server, with pushes made by
//! the real client library on the per-shard Unix sockets.
//!
//! Each client prints JSON lines (the welcome, each push, the close code it
//! got back); the tests check the welcome, exactly the pushes in order, a
//! clean close, and resume after a disconnect; with the server's `deflate`
//! on, that both libraries negotiate permessage-deflate with it, get large
//! pushes compressed and small ones plain, send it compressed messages,
//! and get 1009 for a zip bomb. A language whose client
//! library is not installed is skipped with a message (the test passes);
//! `scripts/ci-deps.sh` installs both at pinned versions, and
//! `PUSHGATE_INTEROP_REQUIRED=1` turns a skip into a failure.

mod common;

use common::Server;
use pushgate::push::client::Client;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a client may take for any one expected line.
const LINE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Node,
}

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Node => "node",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Lang::Python => "python3",
            Lang::Node => "node",
        }
    }

    fn script(self) -> PathBuf {
        interop_dir().join(match self {
            Lang::Python => "client.py",
            Lang::Node => "client.mjs",
        })
    }

    /// `Err(why)` when the interpreter or its WebSocket library is missing.
    fn available(self) -> Result<String, String> {
        let (args, what): (&[&str], _) = match self {
            Lang::Python => (
                &["-c", "import websockets; print(websockets.__version__)"],
                "python3 with websockets",
            ),
            Lang::Node => (
                &["-p", "require('ws/package.json').version"],
                "node with ws in tests/interop/node_modules",
            ),
        };
        let out = Command::new(self.program())
            .args(args)
            .current_dir(interop_dir())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{what}: cannot run {}: {e}", self.program()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
            let why = lines
                .iter()
                .find(|l| l.contains("Error"))
                .or(lines.iter().rev().find(|l| !l.is_empty()))
                .copied()
                .unwrap_or("");
            return Err(format!(
                "{what} is not installed (run scripts/ci-deps.sh): {why}"
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// True if the tests for this language can run; otherwise says why and
    /// (unless PUSHGATE_INTEROP_REQUIRED is set) lets the test pass.
    fn ready(self) -> bool {
        match self.available() {
            Ok(version) => {
                eprintln!("{} client library version {version}", self.name());
                true
            }
            Err(why) if std::env::var_os("PUSHGATE_INTEROP_REQUIRED").is_some() => {
                panic!("{} interop required: {why}", self.name())
            }
            Err(why) => {
                eprintln!("skipping the {} interop test: {why}", self.name());
                false
            }
        }
    }
}

/// A client subprocess and the JSON lines it prints.
struct ClientProc {
    lang: Lang,
    child: Child,
    lines: Receiver<String>,
    stderr: Receiver<String>,
}

impl ClientProc {
    fn spawn(
        lang: Lang,
        server: &Server,
        mode: &str,
        token: &str,
        count: usize,
        since: Option<&str>,
    ) -> ClientProc {
        Self::spawn_with(lang, server, mode, token, count, since, &[])
    }

    fn spawn_with(
        lang: Lang,
        server: &Server,
        mode: &str,
        token: &str,
        count: usize,
        since: Option<&str>,
        extra: &[&str],
    ) -> ClientProc {
        let mut cmd = Command::new(lang.program());
        cmd.arg(lang.script())
            .arg(format!("ws://{}/ws", server.addr))
            .arg(mode)
            .args(["--token", token, "--count", &count.to_string()])
            .args(["--timeout", "20", "--grace-ms", "300"])
            .args(extra)
            .current_dir(interop_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(since) = since {
            cmd.args(["--since", since]);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", lang.program()));
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
        ClientProc {
            lang,
            child,
            lines,
            stderr,
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .recv_timeout(Duration::from_millis(500))
            .unwrap_or_default()
    }

    /// The next line, parsed; fails on a timeout or the client's end.
    fn next(&mut self, what: &str) -> Value {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{:?}: {what}: not JSON ({e}): {line}", self.lang)),
            Err(e) => {
                let _ = self.child.kill();
                panic!(
                    "{:?}: no line for {what} ({e:?}); stderr: {}",
                    self.lang,
                    self.stderr_text()
                )
            }
        }
    }

    /// Waits for the client to exit successfully; returns the lines it
    /// printed after those already read.
    fn finish(mut self) -> Vec<Value> {
        let mut rest = Vec::new();
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => rest.push(
                    serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("{:?}: not JSON ({e}): {line}", self.lang)),
                ),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{:?}: the client did not end; lines: {rest:?}", self.lang);
            }
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{:?}: did not exit", self.lang);
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            status.success(),
            "{:?}: exited with {status}; lines: {rest:?}; stderr: {}",
            self.lang,
            self.stderr_text()
        );
        rest
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push_client(server: &Server) -> Client {
    Client::connect(&server.run_dir).expect("push client")
}

/// Waits until the server has no device of `user` online.
fn wait_offline(c: &mut Client, user: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.presence(user).unwrap().online {
        assert!(Instant::now() < deadline, "{user} still online after close");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks `line` is a push of `data` with a seq above `after`; returns it.
fn check_push(line: &Value, data: &Value, after: u64, what: &str) -> u64 {
    assert_eq!(line["type"], "push", "{what}: {line}");
    assert_eq!(&line["data"], data, "{what}");
    let seq = line["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: {line}"));
    assert!(seq > after, "{what}: seq {seq} not after {after}");
    seq
}

fn check_closed_cleanly(line: Option<&Value>, what: &str) {
    assert_eq!(
        line,
        Some(&json!({"type": "closed", "code": 1000})),
        "{what}: the server echoes the client's close (1000)"
    );
}

/// The pushes the live tests send: small, multi-byte text, and sizes that
/// take the 16-bit and the 64-bit frame length forms.
fn payloads() -> Vec<Value> {
    vec![
        json!({"n": 0, "text": "hello"}),
        json!({"n": 1, "text": "κόσμε ✓ 🙂 \u{0}"}),
        json!("m".repeat(300)),
        json!({"n": 3, "big": "b".repeat(100_000)}),
        json!([1, 2.5, null, true]),
        json!(null),
    ]
}

/// A client with the token in `mode` (header or query) receives its welcome
/// and exactly the pushes for its user, in order, and closes cleanly.
fn live(lang: Lang, mode: &str) {
    if !lang.ready() {
        return;
    }
    let server = Server::start(&["--shards", "2"]);
    let mut c = push_client(&server);
    let user = format!("{}-{mode}", lang.name());
    let payloads = payloads();
    let mut client = ClientProc::spawn(
        lang,
        &server,
        mode,
        &server.token(&user),
        payloads.len(),
        None,
    );
    let welcome = client.next("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["user"], user.as_str());
    assert_eq!(welcome["seq"], 0);
    assert!(welcome["epoch"].as_u64().unwrap() > 0, "{welcome}");
    assert!(welcome.get("recovered").is_none(), "no since, no recovered");
    assert_eq!(welcome["_deflate"], false, "deflate is off by default");
    assert!(c.presence(&user).unwrap().online);

    // Someone else's push does not reach this client.
    let outcome = c.push(&["someone-else"], r#""not for you""#).unwrap();
    assert_eq!((outcome.delivered, outcome.stored), (0, 1));
    for data in &payloads {
        let outcome = c.push(&[&user], &data.to_string()).unwrap();
        assert_eq!(
            (outcome.delivered, outcome.stored, outcome.rejected),
            (1, 0, 0),
            "{user} is online"
        );
    }
    let lines = client.finish();
    assert_eq!(
        lines.len(),
        payloads.len() + 1,
        "{lang:?}: exactly the pushes, then the close: {lines:?}"
    );
    let mut seq = welcome["seq"].as_u64().unwrap();
    for (i, (line, data)) in lines.iter().zip(&payloads).enumerate() {
        seq = check_push(line, data, seq, &format!("{lang:?} push {i}"));
    }
    check_closed_cleanly(lines.last(), &format!("{lang:?}"));
    wait_offline(&mut c, &user);
}

/// A client disconnects; pushes arrive while it is away (stored); it
/// reconnects with `since=<epoch>:<seq>` and gets exactly the missed ones,
/// in order, with `recovered: true`, then live pushes after them. A resume
/// from another epoch says `recovered: false` and replays nothing.
fn resume(lang: Lang) {
    if !lang.ready() {
        return;
    }
    let server = Server::start(&["--shards", "2"]);
    let mut c = push_client(&server);
    let user = format!("{}-resume", lang.name());
    let token = server.token(&user);

    let mut first = ClientProc::spawn(lang, &server, "header", &token, 2, None);
    let welcome = first.next("first welcome");
    let epoch = welcome["epoch"].as_u64().unwrap();
    for data in [json!("seen 0"), json!("seen 1")] {
        assert_eq!(c.push(&[&user], &data.to_string()).unwrap().delivered, 1);
    }
    let lines = first.finish();
    assert_eq!(lines.len(), 3, "{lang:?}: {lines:?}");
    let seen0 = check_push(&lines[0], &json!("seen 0"), 0, "seen 0");
    let seen = check_push(&lines[1], &json!("seen 1"), seen0, "seen 1");
    check_closed_cleanly(lines.last(), "first connection");
    wait_offline(&mut c, &user);

    let missed = [
        json!({"missed": 0}),
        json!({"missed": 1, "text": "κόσμε"}),
        json!({"missed": 2}),
    ];
    for data in &missed {
        let outcome = c.push(&[&user], &data.to_string()).unwrap();
        assert_eq!(
            (outcome.delivered, outcome.stored),
            (0, 1),
            "offline: stored"
        );
    }

    let since = format!("{epoch}:{seen}");
    let mut second = ClientProc::spawn(lang, &server, "resume", &token, 4, Some(&since));
    let welcome = second.next("resume welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["epoch"], epoch, "same server, same epoch");
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!(
        second.next("resume line"),
        json!({"type": "resume", "recovered": true})
    );
    let mut seq = seen;
    for (i, data) in missed.iter().enumerate() {
        let line = second.next("a replayed push");
        seq = check_push(&line, data, seq, &format!("{lang:?} replayed {i}"));
    }
    assert_eq!(welcome["seq"], seq, "the welcome names the newest seq");
    // A live push after the replay.
    assert_eq!(c.push(&[&user], r#""live""#).unwrap().delivered, 1);
    let lines = second.finish();
    assert_eq!(
        lines.len(),
        2,
        "{lang:?}: the live push, then the close: {lines:?}"
    );
    check_push(&lines[0], &json!("live"), seq, "live after replay");
    check_closed_cleanly(lines.last(), "resumed connection");
    wait_offline(&mut c, &user);

    // Another epoch (as after a server restart): not recovered, no replay.
    let stale = format!("{}:{seen}", epoch - 1);
    let mut third = ClientProc::spawn(lang, &server, "resume", &token, 0, Some(&stale));
    let welcome = third.next("stale welcome");
    assert_eq!(welcome["recovered"], false, "{welcome}");
    assert_eq!(
        third.next("stale resume line"),
        json!({"type": "resume", "recovered": false})
    );
    let lines = third.finish();
    assert_eq!(lines.len(), 1, "{lang:?}: nothing replayed: {lines:?}");
    check_closed_cleanly(lines.last(), "stale resume");
}

/// A 2 KB JSON payload like the bench's.
fn json_2k() -> Value {
    let items: Vec<Value> = (0..40)
        .map(|i| json!({"id": i, "name": format!("user-{i}"), "online": i % 3 == 0}))
        .collect();
    json!({"kind": "roster", "items": items})
}

/// With `--deflate`: the library negotiates permessage-deflate; pushes of
/// 1 KB or more arrive compressed and intact, smaller ones plain; the
/// client's own compressed message is taken (the connection stays up and
/// closes cleanly).
fn deflate_live(lang: Lang) {
    if !lang.ready() {
        return;
    }
    let server = Server::start(&["--shards", "2", "--deflate"]);
    let mut c = push_client(&server);
    let user = format!("{}-deflate", lang.name());
    let payloads = [
        json!({"n": 0, "text": "small"}),
        json_2k(),
        json!({"n": 2, "text": "κόσμε ✓ 🙂 ".repeat(400)}),
        json!({"n": 3, "big": "b".repeat(100_000)}),
        json!("m".repeat(300)),
    ];
    let compressed = [false, true, true, true, false];
    let extra = ["--send-bytes", "20000"];
    let mut client = ClientProc::spawn_with(
        lang,
        &server,
        "header",
        &server.token(&user),
        payloads.len(),
        None,
        &extra,
    );
    let welcome = client.next("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["_deflate"], true, "negotiated: {welcome}");
    assert_eq!(welcome["_compressed"], false, "the welcome is small");
    for data in &payloads {
        assert_eq!(c.push(&[&user], &data.to_string()).unwrap().delivered, 1);
    }
    let lines = client.finish();
    assert_eq!(lines.len(), payloads.len() + 1, "{lang:?}: {lines:?}");
    let mut seq = 0;
    for (i, line) in lines[..payloads.len()].iter().enumerate() {
        seq = check_push(line, &payloads[i], seq, &format!("{lang:?} push {i}"));
        assert_eq!(
            line["_compressed"], compressed[i],
            "{lang:?} push {i}: compressed only from the threshold on"
        );
    }
    check_closed_cleanly(lines.last(), &format!("{lang:?} with deflate"));
    assert!(
        !server.log_contains("protocol error"),
        "the client's compressed message was accepted"
    );
}

/// A compressed message that inflates past `message_bytes_max` (64 KiB):
/// the server closes with 1009 without inflating it all.
fn deflate_zip_bomb(lang: Lang) {
    if !lang.ready() {
        return;
    }
    let server = Server::start(&["--deflate"]);
    let user = format!("{}-bomb", lang.name());
    let mut client = ClientProc::spawn_with(
        lang,
        &server,
        "header",
        &server.token(&user),
        0,
        None,
        &["--send-bomb"],
    );
    let welcome = client.next("welcome");
    assert_eq!(welcome["_deflate"], true, "{welcome}");
    let lines = client.finish();
    assert_eq!(
        lines.last(),
        Some(&json!({"type": "closed", "code": 1009})),
        "{lang:?}: {lines:?}"
    );
    server.wait_log("message too big once inflated");
}

#[test]
fn python_websockets_deflate() {
    deflate_live(Lang::Python);
}

#[test]
fn python_websockets_deflate_zip_bomb() {
    deflate_zip_bomb(Lang::Python);
}

#[test]
fn node_ws_deflate() {
    deflate_live(Lang::Node);
}

#[test]
fn node_ws_deflate_zip_bomb() {
    deflate_zip_bomb(Lang::Node);
}

#[test]
fn python_websockets_header_token() {
    live(Lang::Python, "header");
}

#[test]
fn python_websockets_query_token() {
    live(Lang::Python, "query");
}

#[test]
fn python_websockets_resume() {
    resume(Lang::Python);
}

#[test]
fn node_ws_header_token() {
    live(Lang::Node, "header");
}

#[test]
fn node_ws_query_token() {
    live(Lang::Node, "query");
}

#[test]
fn node_ws_resume() {
    resume(Lang::Node);
}
