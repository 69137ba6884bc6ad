//! The connection engine against the real binary: real sockets, a real
//! WebSocket client crate (tungstenite) and raw bytes for malformed input.

mod common;

use common::{client_frame, upgrade_request, Raw, Server};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

type Client = WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn connect(server: &Server, user: &str, via_query: bool) -> (Client, serde_json::Value) {
    let token = server.token(user);
    let url = if via_query {
        format!("ws://{}/ws?token={token}", server.addr)
    } else {
        format!("ws://{}/ws", server.addr)
    };
    let mut request = url.into_client_request().unwrap();
    if !via_query {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (mut ws, response) = tungstenite::connect(request).expect("upgrade");
    assert_eq!(response.status(), 101);
    let welcome = match ws.read().unwrap() {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected welcome, got {other:?}"),
    };
    (ws, welcome)
}

fn status_of(server: &Server, request: &str) -> String {
    let mut raw = Raw::connect(server.addr);
    raw.send(request.as_bytes());
    let all = raw.read_all();
    String::from_utf8_lossy(&all).to_string()
}

#[test]
fn welcome_ping_and_close_with_header_and_query_tokens() {
    let server = Server::start(&["--shards", "2"]);
    for (user, via_query) in [("alice", false), ("bob", true)] {
        let (mut ws, welcome) = connect(&server, user, via_query);
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["user"], user);
        assert_eq!(welcome["seq"], 0);
        assert!(welcome["epoch"].as_u64().unwrap() > 0);
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .unwrap();
        match ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
            other => panic!("expected pong, got {other:?}"),
        }
        ws.send(Message::Text("client messages are accepted".into()))
            .unwrap();
        ws.close(None).unwrap();
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => continue,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn users_spread_over_shards_and_every_connection_works_after_handoff() {
    let server = Server::start(&["--shards", "4"]);
    let mut clients: Vec<Client> = (0..64)
        .map(|i| connect(&server, &format!("user-{i}"), i % 2 == 0).0)
        .collect();
    // Two devices of one user land on the same shard and both work.
    clients.push(connect(&server, "user-1", true).0);
    for (i, ws) in clients.iter_mut().enumerate() {
        let payload = format!("ping {i}");
        ws.send(Message::Ping(payload.clone().into_bytes().into()))
            .unwrap();
        match ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], payload.as_bytes()),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn bad_upgrades_get_precise_http_answers() {
    let server = Server::start(&["--shards", "2", "--header-bytes-max", "1024"]);
    let good = server.token("carol");
    let expired = pushgate::auth::mint(&server.secret, "carol", 10, common::now_unix_s() - 60);
    let cases = [
        (upgrade_request("/ws", ""), "401", "missing token"),
        (
            upgrade_request("/ws?token=not.a.jwt", ""),
            "401",
            "invalid token",
        ),
        (
            upgrade_request(&format!("/ws?token={expired}"), ""),
            "401",
            "expired",
        ),
        (
            upgrade_request(&format!("/nope?token={good}"), ""),
            "404",
            "/ws",
        ),
        (
            format!("GET /ws?token={good} HTTP/1.1\r\nHost: x\r\n\r\n"),
            "400",
            "",
        ),
        (
            upgrade_request(&format!("/ws?token={good}"), "").replace("Version: 13", "Version: 7"),
            "426",
            "Sec-WebSocket-Version: 13",
        ),
        (
            upgrade_request("/ws", &format!("X-Big: {}\r\n", "b".repeat(2000))),
            "431",
            "",
        ),
        (
            "\x16\x03\x01\x02\x00 TLS to a plain port\r\n\r\n".to_string(),
            "400",
            "",
        ),
    ];
    for (request, status, needle) in cases {
        let answer = status_of(&server, &request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "want {status} for {request:?}, got {answer:?}"
        );
        assert!(answer.contains(needle), "{answer}");
    }
    server.wait_log("upgrade refused");
    assert!(server.log_contains("status=401"));
}

#[test]
fn slow_handshake_is_closed_on_time() {
    let server = Server::start(&["--shards", "1", "--handshake-timeout-ms", "300"]);
    let mut raw = Raw::connect(server.addr);
    let start = Instant::now();
    raw.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n"); // and never finishes
    let answer = String::from_utf8(raw.read_all()).unwrap();
    let waited = start.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[test]
fn protocol_violations_get_the_right_close_code_and_spare_others() {
    let server = Server::start(&["--shards", "2", "--frame-payload-bytes-max", "1000"]);
    let (mut bystander, _) = Raw::upgraded(&server, "bystander");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        (
            "reserved bit",
            {
                let mut f = client_frame(0x81, b"hi");
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("reserved opcode", client_frame(0x83, b""), 1002),
        ("continuation without start", client_frame(0x80, b"x"), 1002),
        ("fragmented ping", client_frame(0x09, b""), 1002),
        (
            "invalid UTF-8",
            client_frame(0x81, &[0xce, 0xba, 0xff]),
            1007,
        ),
        ("frame too big", client_frame(0x82, &[0u8; 1001]), 1009),
        (
            "close code 1005 on the wire",
            client_frame(0x88, &1005u16.to_be_bytes()),
            1002,
        ),
    ];
    for (name, bytes, want) in cases {
        let (mut raw, _) = Raw::upgraded(&server, &format!("victim-{want}"));
        raw.send(&bytes);
        assert_eq!(raw.read_close_code(), want, "{name}");
        // The server closes the TCP connection after its close frame.
        assert!(raw.read_all().is_empty(), "{name}: data after close");
    }
    server.wait_log("protocol error");
    // The bystander was never disturbed.
    bystander.send(&client_frame(0x89, b"still here"));
    let (opcode, payload) = bystander.read_frame();
    assert_eq!((opcode, payload.as_slice()), (0x0a, &b"still here"[..]));
}

#[test]
fn quiet_clients_are_pinged_then_closed_for_idleness() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--ping-interval-ms",
        "200",
        "--idle-timeout-ms",
        "700",
    ]);
    let (mut raw, _) = Raw::upgraded(&server, "sleepy");
    let start = Instant::now();
    let (opcode, _) = raw.read_frame();
    assert_eq!(opcode, 0x09, "a ping after ~200 ms of silence");
    assert!(start.elapsed() >= Duration::from_millis(150));
    // Never answering: closed with 1001 at the idle timeout.
    assert_eq!(raw.read_close_code(), 1001);
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );

    // A client that answers pings stays.
    let (mut ws, _) = connect(&server, "awake", false);
    let until = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
    }
    while Instant::now() < until {
        match ws.read() {
            Ok(Message::Ping(_)) => pings += 1, // tungstenite queues the pong
            Ok(other) => panic!("{other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = ws.flush();
            }
            Err(e) => panic!("closed while answering pings: {e}"),
        }
    }
    assert!(pings >= 3, "{pings}");
}

#[test]
fn sigint_closes_with_1001_and_sigterm_drains_with_1012() {
    for (signal, code) in [(libc::SIGINT, 1001), (libc::SIGTERM, 1012)] {
        let server = Server::start(&["--shards", "2"]);
        let mut clients: Vec<Raw> = (0..10)
            .map(|i| Raw::upgraded(&server, &format!("u{i}")).0)
            .collect();
        let status = server.signal_and_wait(signal);
        assert!(status.success(), "{status:?}");
        for c in clients.iter_mut() {
            assert_eq!(c.read_close_code(), code, "signal {signal}");
        }
    }
}

/// Accepted sockets inherit the listener's SO_SNDBUF (direct descriptors
/// cannot be given options after accept), so a slow client's undelivered
/// bytes wait in its mailbox, not in kernel memory. Read back with `ss -m`.
#[test]
fn client_sockets_inherit_the_send_buffer_bound() {
    let server = Server::start(&["--shards", "1", "--socket-send-buffer-bytes", "32768"]);
    let (_ws, _) = connect(&server, "buffer", false);
    let port = server.addr.port().to_string();
    let out = std::process::Command::new("ss")
        .args(["-tmnH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss (iproute2) is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    // The kernel doubles SO_SNDBUF for its bookkeeping.
    assert!(text.contains("tb65536"), "{text}");
}

/// A graceful close shuts the socket down (io_uring runs that on a worker
/// thread) and then closes its fixed slot. If the close ran first, the next
/// accept could take the slot and the late shutdown would hit the new
/// connection: it saw EOF before any byte (found by the abuse suite; 1 in a few
/// thousand connections here). Each connection below gets an error reply and
/// a graceful close; its client reads only the reply's length and hangs up
/// at once, so shutdowns and closes race with the next accepts.
#[test]
fn a_late_shutdown_never_reaches_the_next_connection_in_its_slot() {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;
    let server = Server::start(&["--shards", "1"]);
    for i in 0..6_000 {
        let mut s = UnixStream::connect(server.run_dir.join("shard-0.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // A 1-byte frame body is never a valid request.
        s.write_all(&[1, 0, 0, 0, (i % 251) as u8]).unwrap();
        let mut len = [0u8; 4];
        match s.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                panic!("connection {i} was shut down before its reply")
            }
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
}
