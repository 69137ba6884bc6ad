//! Operating pushgate: the admin HTTP API, drip drain, overload caps and
//! keepalive profiles, against the real binary.

mod common;

use common::{next_push, upgrade_request, ws_connect, Raw, Server};
use pushgate::push::client::Client;
use serde_json::{json, Value};
use std::io::Read;
use std::time::{Duration, Instant};

#[test]
fn admin_api_health_metrics_push_and_presence() {
    let server = Server::start(&["--shards", "2"]);
    assert_eq!(
        server.admin("GET", "/healthz", None, ""),
        (200, r#"{"status":"ok"}"#.into())
    );
    assert_eq!(server.admin("GET", "/readyz", None, "").0, 200);
    let (mut ws, _) = ws_connect(&server, "alice", false, None);

    // The API needs an admin token: none, a user's, and a bad one → 401.
    let body = r#"{"users":["alice","offline-bob"],"data":{"hi":1}}"#;
    for token in [
        None,
        Some(server.token("alice")),
        Some("garbage".to_string()),
    ] {
        let (status, text) = server.admin("POST", "/v1/push", token.as_deref(), body);
        assert_eq!(status, 401, "{text}");
    }
    let admin = server.admin_token();
    let (status, text) = server.admin("POST", "/v1/push", Some(&admin), body);
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"delivered":1,"stored":1,"rejected":0})
    );
    assert_eq!(next_push(&mut ws).1, json!({"hi": 1}));
    let (status, text) = server.admin(
        "POST",
        "/v1/push",
        Some(&admin),
        r#"{"all":true,"data":"x"}"#,
    );
    assert_eq!(
        (status, text.contains(r#""delivered":1"#)),
        (200, true),
        "{text}"
    );
    assert_eq!(next_push(&mut ws).1, json!("x"));
    assert_eq!(
        server
            .admin(
                "POST",
                "/v1/push",
                Some(&admin),
                r#"{"users":["a"],"data":nope}"#
            )
            .0,
        400
    );
    assert_eq!(
        server
            .admin("POST", "/v1/push", Some(&admin), r#"{"data":1}"#)
            .0,
        400
    );
    let (status, text) = server.admin("GET", "/v1/presence/alice", Some(&admin), "");
    assert_eq!(
        (status, text.as_str()),
        (200, r#"{"online":true,"devices":1}"#)
    );
    assert_eq!(server.admin("GET", "/nope", None, "").0, 404);

    let (status, metrics) = server.admin("GET", "/metrics", None, "");
    assert_eq!(status, 200);
    for family in [
        "pushgate_ring_connections_open{shard=\"1\"}",
        "pushgate_handshakes_total",
        "pushgate_deliveries_total",
        "pushgate_devices_online",
        "pushgate_mailbox_entries",
        "pushgate_slow_consumer_closes_total",
        "pushgate_ring_send_queue_bytes",
        "pushgate_ring_recv_buffer_starved_total",
        "pushgate_kernel_tcp_sockets_inuse",
        "pushgate_resident_memory_bytes",
        "pushgate_ready 1",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    let delivered: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("pushgate_deliveries_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(delivered, 2);
}

/// A drain closes connections with 1012 at about the configured rate,
/// readiness says 503 meanwhile, pushes keep reaching devices not yet
/// closed without a gap, and the process exits when empty.
#[test]
fn drain_closes_at_the_rate_and_loses_nothing_for_those_still_connected() {
    const DEVICES: usize = 40;
    const RATE_PER_S: u64 = 30;
    let server = Server::start(&["--shards", "2"]);
    let users: Vec<String> = (0..DEVICES).map(|i| format!("d{i}")).collect();
    let devices: Vec<_> = users
        .iter()
        .map(|u| ws_connect(&server, u, false, None).0)
        .collect();
    let readers: Vec<_> = devices
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    match ws.read() {
                        Ok(tungstenite::Message::Text(t)) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            got.push(v["data"].as_u64().unwrap());
                        }
                        Ok(tungstenite::Message::Close(frame)) => {
                            return (got, u16::from(frame.unwrap().code), Instant::now());
                        }
                        Ok(_) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["drain", "--rate", &RATE_PER_S.to_string(), "--run-dir"])
        .arg(&server.run_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    assert_eq!(server.admin("GET", "/readyz", None, "").0, 503);
    // New clients are refused while draining.
    let mut late = Raw::connect(server.addr);
    late.send(upgrade_request("/ws", "").as_bytes());
    let answer = String::from_utf8_lossy(&late.read_all()).to_string();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    // Keep pushing to everyone during the drain.
    // Keep pushing to everyone until the drained server exits.
    let mut client = Client::connect(&server.run_dir).unwrap();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let mut pushed = 0u64;
    while client.push(&names, &pushed.to_string()).is_ok() {
        pushed += 1;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the drain never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(pushed >= 20, "pushed {pushed} during the drain");
    let mut close_times = Vec::new();
    for reader in readers {
        let (got, code, at) = reader.join().unwrap();
        assert_eq!(code, 1012);
        // What each device got is exactly the pushes before its close.
        assert_eq!(
            got,
            (0..got.len() as u64).collect::<Vec<_>>(),
            "a gap or duplicate"
        );
        close_times.push(at.duration_since(started));
    }
    close_times.sort();
    let spread = *close_times.last().unwrap() - close_times[0];
    let expected = Duration::from_millis(1000 * DEVICES as u64 / RATE_PER_S);
    assert!(
        spread > expected / 2 && spread < expected * 3,
        "closes spread over {spread:?}, expected about {expected:?}"
    );
    server.wait_log("drain complete");
}

#[test]
fn caps_refuse_the_excess_with_503_and_leave_existing_connections_alone() {
    let server = Server::start(&["--shards", "1", "--connections-max", "3"]);
    let mut kept: Vec<Raw> = (0..3)
        .map(|i| Raw::upgraded(&server, &format!("k{i}")).0)
        .collect();
    for _ in 0..3 {
        let mut extra = Raw::connect(server.addr);
        let answer = String::from_utf8_lossy(&extra.read_all()).to_string();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("connection cap"), "{answer}");
    }
    for c in kept.iter_mut() {
        c.send(&common::client_frame(0x89, b"alive"));
        assert_eq!(c.read_frame(), (0x0a, b"alive".to_vec()));
    }
    let (_, metrics) = server.admin("GET", "/metrics", None, "");
    assert!(
        metrics.contains("pushgate_overload_rejections_total{shard=\"0\"} 3"),
        "{metrics}"
    );

    // Upgrades in progress are capped too, and new ones get 503 at once.
    let server = Server::start(&["--shards", "1", "--handshakes-max", "2"]);
    let _slow: Vec<Raw> = (0..2).map(|_| Raw::connect(server.addr)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut third = Raw::connect(server.addr);
    let answer = String::from_utf8_lossy(&third.read_all()).to_string();
    assert!(answer.contains("too many upgrades"), "{answer}");

    // The accept rate limit: a burst of one second's worth, then 503.
    let server = Server::start(&["--shards", "1", "--accept-rate-per-s", "5"]);
    let mut burst: Vec<Raw> = (0..15).map(|_| Raw::connect(server.addr)).collect();
    let refused = burst
        .iter_mut()
        .filter(|c| {
            // `Read` is implemented for `&TcpStream`.
            let mut c: &std::net::TcpStream = &c.stream;
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 12];
            matches!(c.read(&mut buf), Ok(12) if &buf == b"HTTP/1.1 503")
        })
        .count();
    assert!(
        (8..=11).contains(&refused),
        "refused {refused} of 15 at 5/s"
    );
}

/// `ss -to` shows the keepalive timer the kernel runs for a socket.
fn ss_timers(port: u16) -> String {
    let out = std::process::Command::new("ss")
        .args(["-tonH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn sleeping_consoles_get_tcp_keepalive_and_no_pings() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--console-listen",
        "127.0.0.1:0",
        "--tcp-keepalive-idle-s",
        "250",
        "--ping-interval-ms",
        "150",
        "--idle-timeout-ms",
        "5000",
    ]);
    let console = server.console_addr();
    // A console: no application pings; the kernel keeps the path alive.
    let mut raw = Raw::connect(console);
    raw.send(
        upgrade_request(
            "/ws",
            &format!("Authorization: Bearer {}\r\n", server.token("switch-1")),
        )
        .as_bytes(),
    );
    assert!(raw.read_head().starts_with("HTTP/1.1 101"));
    assert_eq!(raw.read_frame().0, 1, "welcome");
    raw.stream
        .set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        raw.stream.read(&mut byte).is_err(),
        "a console must not be pinged"
    );
    let timers = ss_timers(console.port());
    assert!(timers.contains("timer:(keepalive,4min"), "{timers}");
    // A browser on the other listener: pinged, no keepalive timer.
    let (mut browser, _) = Raw::upgraded(&server, "browser-1");
    assert_eq!(browser.read_frame().0, 0x09, "browsers are pinged");
    let timers = ss_timers(server.addr.port());
    assert!(!timers.contains("keepalive"), "{timers}");
}

#[test]
fn print_config_shows_the_effective_settings() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["serve", "--print-config", "--drain-rate-per-s", "77"])
        .env("PUSHGATE_MAILBOX_ENTRIES_MAX", "9")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(table["drain_rate_per_s"].as_integer(), Some(77));
    assert_eq!(table["mailbox_entries_max"].as_integer(), Some(9));
    assert_eq!(table["listen_profile"].as_str(), Some("browser"));
}

/// The status line's code of one raw request to `addr`.
fn raw_status(addr: std::net::SocketAddr, request: &str) -> String {
    let mut raw = Raw::connect(addr);
    raw.send(request.as_bytes());
    let head = raw.read_head();
    head.get(9..12).unwrap_or_default().to_owned()
}

/// Issue 10, over the real binary: admin and client tokens are not
/// interchangeable, one Bearer rule (spaces, no tab) holds on both
/// listeners, and the admin listener takes only a digits-only
/// Content-Length.
#[test]
fn tokens_bearer_and_lengths_are_judged_alike_on_both_listeners() {
    let server = Server::start(&["--shards", "1"]);
    let admin_token = server.admin_token();
    let client_token = server.token("alice");

    // An admin token is not a client token (it used to log in as "admin").
    let on_ws = |headers: &str, query: &str| {
        raw_status(
            server.addr,
            &upgrade_request(&format!("/ws{query}"), headers),
        )
    };
    assert_eq!(on_ws("", &format!("?token={admin_token}")), "401");
    assert_eq!(
        on_ws(&format!("Authorization: Bearer {admin_token}\r\n"), ""),
        "401"
    );
    server.wait_log("not for clients");
    // … nor a client token an admin token.
    assert_eq!(
        server
            .admin("GET", "/v1/presence/alice", Some(&client_token), "")
            .0,
        401
    );

    // One Bearer rule: one or more spaces, never a tab.
    assert_eq!(
        on_ws(&format!("Authorization: Bearer   {client_token}\r\n"), ""),
        "101"
    );
    assert_eq!(
        on_ws(&format!("Authorization: Bearer\t{client_token}\r\n"), ""),
        "401"
    );
    let on_admin = |auth: &str, length: &str| {
        raw_status(
            server.admin_addr,
            &format!("GET /v1/presence/alice HTTP/1.1\r\nHost: a\r\n{auth}{length}\r\n"),
        )
    };
    assert_eq!(
        on_admin(&format!("Authorization: Bearer   {admin_token}\r\n"), ""),
        "200"
    );
    assert_eq!(
        on_admin(&format!("Authorization: Bearer\t{admin_token}\r\n"), ""),
        "401"
    );

    // Content-Length: digits only; a sign or a repeat is a 400.
    let auth = format!("Authorization: Bearer {admin_token}\r\n");
    assert_eq!(on_admin(&auth, "Content-Length: 0\r\n"), "200");
    for bad in [
        "Content-Length: +0\r\n",
        "Content-Length: 0\r\nContent-Length: 0\r\n",
        "Content-Length: 0, 0\r\n",
    ] {
        assert_eq!(on_admin(&auth, bad), "400", "{bad:?}");
    }
}
