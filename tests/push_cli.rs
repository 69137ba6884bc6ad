//! `pushgate push` and `pushgate status`: the real CLI binary against a
//! real server, with real WebSocket devices checking what arrived. What
//! this adds to tests/push.rs is what `main.rs` puts on top of the client
//! library: arguments, stdin, the output line and the exit status.

mod common;

use common::{assert_quiet, next_push, ws_connect, Server, Ws};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `pushgate ARGS --run-dir RUN_DIR` with `stdin` as its input.
fn pushgate(run_dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(args)
        .arg("--run-dir")
        .arg(run_dir)
        // Only the flags say where the server is.
        .env_remove("PUSHGATE_CONFIG")
        .env_remove("PUSHGATE_RUN_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pushgate");
    // Written from a thread: a CLI that exits early (a bad line) must not
    // leave this write blocked on a full pipe.
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

/// The single stdout line of a successful run.
fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed ({:?}): {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn counts(delivered: u64, stored: u64, rejected: u64) -> String {
    format!("{{\"delivered\":{delivered},\"stored\":{stored},\"rejected\":{rejected}}}\n")
}

/// The next push's data exactly as the device received it: the text
/// between `"data":` and the frame's closing brace, unparsed, so the bytes
/// can be compared.
fn next_push_data_text(ws: &mut Ws) -> String {
    let text = loop {
        match ws.read().expect("a push") {
            tungstenite::Message::Text(t) => break t.as_str().to_owned(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected a push, got {other:?}"),
        }
    };
    let data = text
        .split_once("\"data\":")
        .and_then(|(_, rest)| rest.strip_suffix('}'));
    data.unwrap_or_else(|| panic!("not a push frame: {text}"))
        .to_owned()
}

#[test]
fn push_to_users_and_to_all_prints_the_counts_and_devices_get_it() {
    let server = Server::start(&["--shards", "2"]);
    let (mut alice, _) = ws_connect(&server, "alice", false, None);
    let (mut bob, _) = ws_connect(&server, "bob", true, None);

    // Online, offline (kept for later), and not a valid user ID.
    let args = [
        "push",
        "--user",
        "alice",
        "--user",
        "carol",
        "--user",
        "",
        r#"{"x":1}"#,
    ];
    let out = pushgate(&server.run_dir, &args, "");
    assert_eq!(stdout_of(&out), counts(1, 1, 1));
    assert_eq!(next_push(&mut alice).1, json!({"x": 1}));
    assert_quiet(&mut bob, Duration::from_millis(50));

    let out = pushgate(&server.run_dir, &["push", "--all", "[1]"], "");
    assert_eq!(stdout_of(&out), counts(2, 0, 0), "the two online users");
    assert_eq!(next_push(&mut alice).1, json!([1]));
    assert_eq!(next_push(&mut bob).1, json!([1]));
}

#[test]
fn push_ndjson_sums_every_line_and_passes_data_through_byte_for_byte() {
    let server = Server::start(&["--shards", "2"]);
    let (mut alice, _) = ws_connect(&server, "alice", false, None);
    let (mut bob, _) = ws_connect(&server, "bob", false, None);

    let lines = concat!(
        "{\"users\":[\"alice\",\"bob\"],\"data\":{\"k\":1}}\n",
        "\n",
        "{\"users\":[\"offline-1\",\"offline-2\"],\"data\":\"hi\"}\n",
        "  \r\n",
        "{\"users\":[\"bob\"],\"data\":{\"n\":12345678901234567890,\"f\":1.10}}\n",
        "{\"users\":[\"alice\"],\"data\": { \"spaced\" : [ 1 ] } }", // no final newline
    );
    let out = pushgate(&server.run_dir, &["push", "--ndjson"], lines);
    assert_eq!(stdout_of(&out), counts(4, 2, 0));

    assert_eq!(next_push(&mut alice).1, json!({"k": 1}));
    assert_eq!(next_push(&mut bob).1, json!({"k": 1}));
    // As written, not re-serialised: 1.10 stays 1.10, spaces stay.
    assert_eq!(
        next_push_data_text(&mut bob),
        r#"{"n":12345678901234567890,"f":1.10}"#
    );
    assert_eq!(next_push_data_text(&mut alice), r#"{ "spaced" : [ 1 ] }"#);
}

#[test]
fn push_ndjson_of_more_lines_than_the_window_arrives_complete_and_in_order() {
    // More requests to one shard than the client keeps in flight (256), so
    // replies are read while the rest is still being sent.
    const LINES: usize = 600;
    let server = Server::start(&["--shards", "2"]);
    let (mut dana, _) = ws_connect(&server, "dana", false, None);
    let lines: String = (0..LINES)
        .map(|i| {
            format!(
                "{{\"users\":[\"dana\",\"away-{}\"],\"data\":{i}}}\n",
                i % 10
            )
        })
        .collect();
    let out = pushgate(&server.run_dir, &["push", "--ndjson"], &lines);
    assert_eq!(stdout_of(&out), counts(LINES as u64, LINES as u64, 0));
    for i in 0..LINES {
        assert_eq!(next_push(&mut dana).1, json!(i));
    }
    assert_quiet(&mut dana, Duration::from_millis(20));
}

#[test]
fn bad_input_is_a_usage_error_that_says_where() {
    let server = Server::start(&["--shards", "2"]);
    let (mut erin, _) = ws_connect(&server, "erin", false, None);

    // Line 3 is broken: line 1 went out, line 4 did not.
    let lines = concat!(
        "{\"users\":[\"erin\"],\"data\":\"first\"}\n",
        "\n",
        "{\"users\":[\"erin\"],\"data\":}\n",
        "{\"users\":[\"erin\"],\"data\":\"never\"}\n",
    );
    let out = pushgate(&server.run_dir, &["push", "--ndjson"], lines);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(out.stdout.is_empty());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("stdin line 3: "), "{stderr}");
    assert!(
        stderr.contains("the 1 pushes before it were sent: {\"delivered\":1,"),
        "{stderr}"
    );
    assert_eq!(next_push(&mut erin).1, json!("first"));
    assert_quiet(&mut erin, Duration::from_millis(100));

    // DATA that is not JSON: refused before connecting, nothing sent.
    let out = pushgate(&server.run_dir, &["push", "--user", "erin", "{nope"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("not one JSON value"), "{stderr}");
    assert_quiet(&mut erin, Duration::from_millis(50));
}

#[test]
fn no_server_is_a_runtime_error_that_says_what_to_start() {
    let run_dir: PathBuf =
        std::env::temp_dir().join(format!("pushgate-cli-no-server-{}", std::process::id()));
    for args in [&["push", "--user", "a", "1"][..], &["status"]] {
        let out = pushgate(&run_dir, args, "");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty());
        let stderr = stderr_of(&out);
        assert!(stderr.contains("no pushgate at"), "{stderr}");
        assert!(stderr.contains("is `pushgate serve --run-dir"), "{stderr}");
    }
}

#[test]
fn status_prints_totals_and_one_users_presence() {
    let server = Server::start(&["--shards", "2"]);
    let _devices: Vec<Ws> = [("fay", false), ("fay", true), ("gus", false)]
        .into_iter()
        .map(|(user, via_query)| ws_connect(&server, user, via_query, None).0)
        .collect();

    let out = pushgate(&server.run_dir, &["status"], "");
    let status: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(status["connections"], 3, "{status}");
    assert_eq!(status["users_online"], 2, "{status}");
    let shards = status["shards"].as_array().unwrap();
    let numbers: Vec<u64> = shards
        .iter()
        .map(|s| s["shard"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [0, 1]);
    let connections: u64 = shards
        .iter()
        .map(|s| s["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(connections, 3, "the totals are the shards' sums");

    let out = pushgate(&server.run_dir, &["status", "--user", "fay"], "");
    assert_eq!(
        stdout_of(&out),
        "{\"user\":\"fay\",\"online\":true,\"devices\":2}\n"
    );
    let out = pushgate(&server.run_dir, &["status", "--user", "nobody"], "");
    assert_eq!(
        stdout_of(&out),
        "{\"user\":\"nobody\",\"online\":false,\"devices\":0}\n"
    );
}
