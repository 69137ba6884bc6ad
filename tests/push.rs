//! Pushing end to end: the real binary, the client library on the
//! per-shard Unix sockets, real WebSocket clients.

mod common;

use common::{assert_quiet, next_push, ws_connect, Server};
use pushgate::push::client::Client;
use serde_json::json;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn client(server: &Server) -> Client {
    Client::connect(&server.run_dir).expect("push client")
}

#[test]
fn two_devices_of_one_user_both_receive_in_order() {
    let server = Server::start(&["--shards", "3"]);
    let (mut phone, w1) = ws_connect(&server, "alice", false, None);
    let (mut laptop, _) = ws_connect(&server, "alice", true, None);
    let (mut other, _) = ws_connect(&server, "bob", false, None);
    let mut c = client(&server);
    for i in 0..5 {
        let outcome = c.push(&["alice"], &json!({"n": i}).to_string()).unwrap();
        assert_eq!(
            (outcome.delivered, outcome.stored, outcome.rejected),
            (1, 0, 0)
        );
    }
    for device in [&mut phone, &mut laptop] {
        let mut last = w1["seq"].as_u64().unwrap();
        for i in 0..5 {
            let (seq, data) = next_push(device);
            assert!(seq > last, "seq strictly increasing");
            last = seq;
            assert_eq!(data, json!({"n": i}));
        }
    }
    assert_quiet(&mut other, Duration::from_millis(200));
    let presence = c.presence("alice").unwrap();
    assert!(presence.online);
    assert_eq!(presence.devices, 2);
    assert!(!c.presence("nobody").unwrap().online);
}

#[test]
fn push_to_300_users_reaches_each_once() {
    let server = Server::start(&["--shards", "4"]);
    let users: Vec<String> = (0..300).map(|i| format!("friend-{i}")).collect();
    let mut devices: Vec<_> = users
        .iter()
        .map(|u| ws_connect(&server, u, true, None).0)
        .collect();
    let mut c = client(&server);
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let outcome = c.push(&names, r#"{"mail":"you have mail"}"#).unwrap();
    assert_eq!(
        (outcome.delivered, outcome.stored, outcome.rejected),
        (300, 0, 0)
    );
    for ws in devices.iter_mut() {
        let (_, data) = next_push(ws);
        assert_eq!(data, json!({"mail": "you have mail"}));
    }
    for ws in devices.iter_mut().take(20) {
        assert_quiet(ws, Duration::from_millis(20));
    }
    // Offline users are stored, invalid IDs rejected.
    let outcome = c.push(&["friend-0", "never-seen", ""], "1").unwrap();
    assert_eq!(
        (outcome.delivered, outcome.stored, outcome.rejected),
        (1, 1, 1)
    );
    let status = c.status().unwrap();
    assert_eq!(status.len(), 4);
    assert_eq!(status.iter().map(|s| s.users_online).sum::<u64>(), 300);
}

#[test]
fn broadcast_reaches_every_connection_once() {
    let server = Server::start(&["--shards", "2"]);
    let mut devices: Vec<_> = (0..40)
        .map(|i| ws_connect(&server, &format!("b{}", i % 30), false, None).0)
        .collect();
    let mut c = client(&server);
    let outcome = c.broadcast(r#""maintenance at 3""#).unwrap();
    assert_eq!(outcome.delivered, 30, "users reached");
    for ws in devices.iter_mut() {
        let (_, data) = next_push(ws);
        assert_eq!(data, json!("maintenance at 3"));
        assert_quiet(ws, Duration::from_millis(10));
    }
}

#[test]
fn a_device_that_missed_three_pushes_gets_exactly_those_on_resume() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = client(&server);
    let (mut ws, welcome) = ws_connect(&server, "carol", false, None);
    let epoch = welcome["epoch"].as_u64().unwrap();
    c.push(&["carol"], r#""before""#).unwrap();
    let (seen, _) = next_push(&mut ws);
    drop(ws);
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..3 {
        let outcome = c.push(&["carol"], &format!("\"missed {i}\"")).unwrap();
        assert_eq!(
            (outcome.delivered, outcome.stored),
            (0, 1),
            "offline: stored"
        );
    }
    let (mut ws, welcome) = ws_connect(&server, "carol", true, Some(&format!("{epoch}:{seen}")));
    assert_eq!(welcome["recovered"], true);
    for i in 0..3 {
        let (_, data) = next_push(&mut ws);
        assert_eq!(data, json!(format!("missed {i}")));
    }
    assert_quiet(&mut ws, Duration::from_millis(200));
    c.push(&["carol"], r#""live""#).unwrap();
    assert_eq!(next_push(&mut ws).1, json!("live"));

    // A resume from another epoch (a restarted server) is not recovered.
    let (mut ws2, welcome) = ws_connect(
        &server,
        "carol",
        false,
        Some(&format!("{}:{seen}", epoch - 1)),
    );
    assert_eq!(welcome["recovered"], false);
    assert_quiet(&mut ws2, Duration::from_millis(100));
}

#[test]
fn a_slow_reader_is_cut_with_1013_and_then_recovers_everything() {
    // The cut device reads only after all 60 pushes, which can take longer
    // than the default 2 s a goodbye waits for its reader on a busy
    // machine: give the close frame time to be read.
    let server = Server::start(&[
        "--shards",
        "1",
        "--send-queue-bytes-max",
        "65536",
        "--close-linger-ms",
        "60000",
    ]);
    let mut c = client(&server);
    let (ws, welcome) = ws_connect(&server, "slow", false, None);
    let epoch = welcome["epoch"].as_u64().unwrap();
    // Stop reading; push 15 MB in 60 notifications of 256 KB: more than the
    // kernel's loopback socket buffers hold, so the send queue fills.
    let big = "x".repeat(256 * 1024);
    for i in 0..60 {
        c.push(&["slow"], &json!({"i": i, "pad": big}).to_string())
            .unwrap();
    }
    server.wait_log("slow consumer");
    // What the cut device got before the close, then the rest on resume.
    let mut ws = ws;
    let mut got = Vec::new();
    let mut last_seq = 0;
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                last_seq = v["seq"].as_u64().unwrap();
                got.push(v["data"]["i"].as_u64().unwrap());
            }
            Ok(tungstenite::Message::Close(frame)) => {
                assert_eq!(u16::from(frame.unwrap().code), 1013);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        got.len() < 60,
        "the cut happened before everything was sent"
    );
    let (mut ws, welcome) =
        ws_connect(&server, "slow", false, Some(&format!("{epoch}:{last_seq}")));
    assert_eq!(welcome["recovered"], true);
    while got.len() < 60 {
        let (_, data) = next_push(&mut ws);
        got.push(data["i"].as_u64().unwrap());
    }
    assert_eq!(
        got,
        (0..60).collect::<Vec<_>>(),
        "nothing lost or duplicated"
    );
}

#[test]
fn bad_push_frames_are_refused_without_disturbing_others() {
    let server = Server::start(&["--shards", "2"]);
    let (mut ws, _) = ws_connect(&server, "dave", false, None);
    let mut good = client(&server);
    let sock = server.run_dir.join("shard-0.sock");
    for garbage in [
        vec![0xff; 64],                                        // absurd length
        [8u32.to_le_bytes().to_vec(), vec![0xab; 8]].concat(), // not an archive
    ] {
        let mut raw = UnixStream::connect(&sock).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(&garbage).unwrap();
        let mut reply = Vec::new();
        raw.read_to_end(&mut reply).unwrap(); // answered, then closed
        let body = &reply[4..];
        match pushgate::push::wire::decode_reply(body).unwrap() {
            pushgate::push::wire::Reply::Error { message, .. } => {
                assert!(message.contains("bad push frame"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    // Data that is not JSON is refused, the connection stays usable.
    assert!(good.push(&["dave"], "{not json").is_err());
    let outcome = good.push(&["dave"], r#"{"ok":true}"#).unwrap();
    assert_eq!(outcome.delivered, 1);
    assert_eq!(next_push(&mut ws).1, json!({"ok": true}));
    server.wait_log("publisher refused");
}

/// 10,000 pushes to one user while its device drops and resumes every few
/// hundred: every notification arrives exactly once, in order.
#[test]
fn ten_thousand_pushes_with_reconnects_lose_and_duplicate_nothing() {
    const PUSHES: u64 = 10_000;
    let server = Server::start(&["--shards", "2", "--mailbox-entries-max", "20000"]);
    let (ws, welcome) = ws_connect(&server, "erin", false, None);
    let epoch = welcome["epoch"].as_u64().unwrap();
    let run_dir = server.run_dir.clone();
    let publisher = std::thread::spawn(move || {
        let mut c = Client::connect(&run_dir).unwrap();
        for chunk in 0..PUSHES / 100 {
            let items =
                (chunk * 100..(chunk + 1) * 100).map(|i| (vec!["erin".to_string()], i.to_string()));
            let outcome = c.push_many(items).unwrap();
            assert_eq!(outcome.rejected, 0);
        }
    });
    let mut ws = ws;
    let mut received = Vec::with_capacity(PUSHES as usize);
    let mut last_seq = 0;
    let mut reconnects = 0;
    while (received.len() as u64) < PUSHES {
        let (seq, data) = next_push(&mut ws);
        assert!(seq > last_seq);
        last_seq = seq;
        received.push(data.as_u64().unwrap());
        if received.len() % 700 == 0 {
            drop(ws);
            let (again, welcome) = ws_connect(
                &server,
                "erin",
                reconnects % 2 == 0,
                Some(&format!("{epoch}:{last_seq}")),
            );
            assert_eq!(welcome["recovered"], true);
            ws = again;
            reconnects += 1;
        }
    }
    publisher.join().unwrap();
    assert_eq!(received, (0..PUSHES).collect::<Vec<_>>());
    assert!(reconnects >= 10);
    assert_quiet(&mut ws, Duration::from_millis(100));
}

/// Broadcasts are kept once per shard and merged with a user's own pushes
/// in seq order when a device that was away resumes.
#[test]
fn a_resuming_device_gets_missed_broadcasts_in_order_with_its_pushes() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = client(&server);
    let (mut ws, welcome) = ws_connect(&server, "frank", false, None);
    let epoch = welcome["epoch"].as_u64().unwrap();
    c.push(&["frank"], r#""seen""#).unwrap();
    let (seen, _) = next_push(&mut ws);
    drop(ws);
    // Another device keeps the shard's users online for the broadcasts.
    let (_other, _) = ws_connect(&server, "grace", false, None);
    std::thread::sleep(Duration::from_millis(100));
    c.push(&["frank"], r#""p1""#).unwrap();
    c.broadcast(r#""b1""#).unwrap();
    c.push(&["frank"], r#""p2""#).unwrap();
    c.broadcast(r#""b2""#).unwrap();
    let (mut ws, welcome) = ws_connect(&server, "frank", true, Some(&format!("{epoch}:{seen}")));
    assert_eq!(welcome["recovered"], true);
    let mut got = Vec::new();
    let mut last = seen;
    for _ in 0..4 {
        let (seq, data) = next_push(&mut ws);
        assert!(seq > last);
        last = seq;
        got.push(data.as_str().unwrap().to_string());
    }
    assert_eq!(got, ["p1", "b1", "p2", "b2"]);
    assert_quiet(&mut ws, Duration::from_millis(100));
}
