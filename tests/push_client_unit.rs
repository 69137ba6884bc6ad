//! `pushgate push` / `pushgate status` wiring: argument handling, output
//! format and exit status, against a stand-in for the server's push sockets
//! that answers with canned replies. The end-to-end tests against the real
//! server live elsewhere; this only checks what `main.rs` adds on top of
//! the client library.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use pushgate::push::client::shard_socket_path;
use pushgate::push::wire::{self, Reply, Request, ShardStatus};

const SHARDS: u32 = 2;

fn temp_run_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pgcli-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Answers like a healthy server: each pushed user is online except those
/// named `off-*` (stored); broadcast reaches 7; everyone has 2 devices.
fn answer(request: &Request, shard: u32) -> Reply {
    match request {
        Request::Push { id, users, .. } => {
            let stored = users.iter().filter(|u| u.starts_with("off-")).count() as u32;
            Reply::Pushed {
                id: *id,
                delivered: users.len() as u32 - stored,
                stored,
                rejected: 0,
            }
        }
        Request::Broadcast { id, .. } => Reply::Pushed {
            id: *id,
            delivered: 7,
            stored: 0,
            rejected: 0,
        },
        Request::Presence { id, user } => Reply::Presence {
            id: *id,
            online: user != "nobody",
            devices: if user == "nobody" { 0 } else { 2 },
        },
        Request::Status { id } => Reply::Status {
            id: *id,
            shards: (0..SHARDS)
                .map(|s| ShardStatus {
                    shard: s,
                    connections: 10 * u64::from(s + 1),
                    users_online: 3 + u64::from(shard),
                    mailboxes: 1,
                })
                .collect(),
        },
    }
}

/// One listener per shard, each serving connections one after another on
/// its own thread for the rest of the test process.
fn fake_server(dir: &Path) {
    for shard in 0..SHARDS {
        let listener = UnixListener::bind(shard_socket_path(dir, shard as usize)).unwrap();
        std::thread::spawn(move || {
            // Bounded: far more connections than one test makes.
            for stream in listener.incoming().take(64) {
                let mut stream = stream.unwrap();
                let mut splitter = wire::FrameSplitter::default();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    let mut out = Vec::new();
                    splitter
                        .feed(&buf[..n], wire::FRAME_BODY_BYTES_MAX_DEFAULT, |body| {
                            let request = wire::decode_request(body).unwrap();
                            out.extend(wire::encode_reply(&answer(&request, shard)));
                        })
                        .unwrap();
                    if stream.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        });
    }
}

fn pushgate(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(args)
        .arg("--run-dir")
        .arg(dir)
        .env_remove("PUSHGATE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn push_and_status_print_one_json_line() {
    let dir = temp_run_dir();
    fake_server(&dir);

    let out = pushgate(
        &dir,
        &[
            "push",
            "--user",
            "a",
            "--user",
            "off-b",
            "--user",
            "c",
            "{\"x\":1}",
        ],
        "",
    );
    assert_eq!(
        stdout_of(&out),
        "{\"delivered\":2,\"stored\":1,\"rejected\":0}\n"
    );

    let out = pushgate(&dir, &["push", "--all", "[1]"], "");
    assert_eq!(
        stdout_of(&out),
        "{\"delivered\":7,\"stored\":0,\"rejected\":0}\n"
    );

    let lines =
        "{\"users\":[\"a\",\"b\"],\"data\":{\"k\":1}}\n\n{\"users\":[\"off-c\"],\"data\":\"hi\"}\n";
    let out = pushgate(&dir, &["push", "--ndjson"], lines);
    assert_eq!(
        stdout_of(&out),
        "{\"delivered\":2,\"stored\":1,\"rejected\":0}\n"
    );

    let out = pushgate(&dir, &["status"], "");
    assert_eq!(
        stdout_of(&out),
        concat!(
            "{\"shards\":[",
            "{\"shard\":0,\"connections\":10,\"users_online\":3,\"mailboxes\":1},",
            "{\"shard\":1,\"connections\":20,\"users_online\":3,\"mailboxes\":1}",
            "],\"connections\":30,\"users_online\":6}\n"
        )
    );

    let out = pushgate(&dir, &["status", "--user", "u"], "");
    assert_eq!(
        stdout_of(&out),
        "{\"user\":\"u\",\"online\":true,\"devices\":2}\n"
    );
    let out = pushgate(&dir, &["status", "--user", "nobody"], "");
    assert_eq!(
        stdout_of(&out),
        "{\"user\":\"nobody\",\"online\":false,\"devices\":0}\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_and_no_server_fail_with_a_message() {
    let dir = temp_run_dir();

    // No server yet: a runtime failure, exit 1, saying what to start.
    let out = pushgate(&dir, &["push", "--user", "a", "1"], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is `pushgate serve --run-dir"), "{stderr}");
    assert!(out.stdout.is_empty());

    // Bad DATA is reported before connecting: a usage error, exit 2.
    let out = pushgate(&dir, &["push", "--user", "a", "{nope"], "");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not one JSON value"), "{stderr}");

    fake_server(&dir);
    let lines = "{\"users\":[\"a\"],\"data\":1}\n\n{\"users\":[\"b\"],\"data\":}\n{\"users\":[\"c\"],\"data\":1}\n";
    let out = pushgate(&dir, &["push", "--ndjson"], lines);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stdin line 3: "), "{stderr}");
    assert!(
        stderr.contains("the 1 pushes before it were sent: {\"delivered\":1,"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
