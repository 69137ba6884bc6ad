//! Server-Sent Events on the real binary (`GET /sse`), read byte by byte
//! from a raw socket with the client side of `pushgate::sse`: the response
//! head, the welcome, pushes as events with `id: <epoch>:<seq>`, comment
//! heartbeats at the ping interval, client bytes ignored, resume from
//! `Last-Event-ID` and `?since=`, an unreadable position answered with a
//! reset (on `/ws` too), the close events of a drain and a stop, refusals a
//! page of another origin can read, and the SDK served at `/pushgate.js`.

mod common;

use common::{upgrade_request, Raw, Server};
use pushgate::push::client::Client;
use pushgate::sse::{EventReader, Item};
use serde_json::{json, Value};
use std::io::Read;
use std::time::{Duration, Instant};

/// An SSE client on a raw socket.
struct Stream {
    raw: Raw,
    reader: EventReader,
    items: std::collections::VecDeque<Item>,
    head: String,
}

impl Stream {
    /// `GET /sse` with `query` (after the token) and extra header lines.
    fn open(server: &Server, user: &str, query: &str, headers: &str) -> Stream {
        let mut raw = Raw::connect(server.addr);
        raw.send(
            format!(
                "GET /sse?token={}{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{headers}\r\n",
                server.token(user)
            )
            .as_bytes(),
        );
        let head = raw.read_head();
        Stream {
            raw,
            reader: EventReader::default(),
            items: Default::default(),
            head,
        }
    }

    /// The next item (bounded by the socket's 5 s read timeout); None at EOF.
    fn next(&mut self) -> Option<Item> {
        while self.items.is_empty() {
            let mut buf = [0u8; 4096];
            let n = self.raw.stream.read(&mut buf).expect("read (timed out?)");
            if n == 0 {
                return None;
            }
            let items = &mut self.items;
            self.reader.feed(&buf[..n], |i| items.push_back(i));
        }
        self.items.pop_front()
    }

    /// The next event (skipping heartbeats): (id, JSON, retry).
    fn event(&mut self) -> (Option<String>, Value, Option<u64>) {
        loop {
            match self.next().expect("the stream ended") {
                Item::Comment => continue,
                Item::Event(e) => {
                    let v = serde_json::from_str(&e.data)
                        .unwrap_or_else(|err| panic!("event data is not JSON ({err}): {}", e.data));
                    return (e.id, v, e.retry_ms);
                }
            }
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_sse_device_gets_welcome_pushes_and_heartbeats_and_leaves_on_eof() {
    let server = Server::start(&["--shards", "2", "--ping-interval-ms", "300"]);
    let mut s = Stream::open(&server, "sse-alice", "", "");
    let head = s.head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("\r\ncontent-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\ncache-control: no-store\r\n"), "{head}");
    assert!(
        head.contains("\r\naccess-control-allow-origin: *\r\n"),
        "{head}"
    );
    assert!(!head.contains("content-length"), "{head}");
    let (id, welcome, retry) = s.event();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"], "sse-alice");
    assert_eq!(welcome["heartbeat_ms"], 300);
    let epoch = welcome["epoch"].as_u64().unwrap();
    assert_eq!(id, Some(format!("{epoch}:0")));
    assert!(
        retry.is_some_and(|r| (1000..5000).contains(&r)),
        "{retry:?}"
    );

    let mut c = Client::connect(&server.run_dir).unwrap();
    let data = "{\"multi\":\n\"line\",\r\n\"text\":\"κόσμε\"}";
    let outcome = c.push(&["sse-alice"], data).unwrap();
    assert_eq!((outcome.delivered, outcome.stored), (1, 0));
    let (id, push, _) = s.event();
    assert_eq!(push["type"], "push");
    assert_eq!(push["data"], json!({"multi": "line", "text": "κόσμε"}));
    let seq = push["seq"].as_u64().unwrap();
    assert_eq!(id, Some(format!("{epoch}:{seq}")));

    // Client bytes are ignored; heartbeats keep coming well past what a
    // silent WebSocket would be allowed (it is never closed for silence).
    s.raw.send(b"\x88\x80 anything at all\r\n\r\n");
    let started = Instant::now();
    let mut beats = 0;
    while started.elapsed() < Duration::from_millis(2000) {
        match s.next() {
            Some(Item::Comment) => beats += 1,
            other => panic!("{other:?}"),
        }
    }
    // About six; fewer only if the machine stalls the server.
    assert!(beats >= 2, "{beats} heartbeats in 2 s at 300 ms");
    assert!(c.presence("sse-alice").unwrap().online);
    // EOF from the client: the device is gone at once.
    s.raw.stream.shutdown(std::net::Shutdown::Write).unwrap();
    wait_until("the device to leave", || {
        !c.presence("sse-alice").unwrap().online
    });
}

#[test]
fn sse_resumes_from_last_event_id_or_since_and_an_unreadable_one_resets() {
    let server = Server::start(&["--shards", "2"]);
    let mut c = Client::connect(&server.run_dir).unwrap();
    let mut s = Stream::open(&server, "sse-bob", "", "");
    let (_, welcome, _) = s.event();
    let epoch = welcome["epoch"].as_u64().unwrap();
    drop(s);
    wait_until("offline", || !c.presence("sse-bob").unwrap().online);
    let mut seqs = Vec::new();
    for i in 0..3 {
        c.push(&["sse-bob"], &i.to_string()).unwrap();
    }
    // Last-Event-ID, as an EventSource sends it.
    let mut s = Stream::open(
        &server,
        "sse-bob",
        "",
        &format!("Last-Event-ID: {epoch}:0\r\n"),
    );
    let (id, welcome, _) = s.event();
    assert_eq!(welcome["recovered"], true);
    assert_eq!(id, Some(format!("{epoch}:0")), "the client's own position");
    for want in 0..3 {
        let (id, push, _) = s.event();
        assert_eq!(push["data"], want);
        seqs.push(push["seq"].as_u64().unwrap());
        assert_eq!(id, Some(format!("{epoch}:{}", seqs.last().unwrap())));
    }
    drop(s);
    // ?since= in the middle.
    let mut s = Stream::open(
        &server,
        "sse-bob",
        &format!("&since={epoch}:{}", seqs[1]),
        "",
    );
    assert_eq!(s.event().1["recovered"], true);
    assert_eq!(s.event().1["data"], 2);
    drop(s);
    // An unreadable position: a reset, not a 400.
    let mut s = Stream::open(&server, "sse-bob", "&since=yesterday", "");
    assert!(s.head.starts_with("HTTP/1.1 200"), "{}", s.head);
    let (id, welcome, _) = s.event();
    assert_eq!(welcome["recovered"], false);
    assert_eq!(
        id,
        Some(format!("{epoch}:{}", seqs[2])),
        "moved to the newest"
    );
    // The same on /ws.
    let mut raw = Raw::connect(server.addr);
    let token = server.token("ws-carol");
    raw.send(upgrade_request(&format!("/ws?token={token}&since=1:x"), "").as_bytes());
    assert!(raw.read_head().starts_with("HTTP/1.1 101"));
    let (_, welcome) = raw.read_frame();
    let welcome: Value = serde_json::from_slice(&welcome).unwrap();
    assert_eq!(welcome["recovered"], false);
}

#[test]
fn a_drain_ends_the_stream_with_1012_and_a_spread_retry() {
    let server = Server::start(&["--shards", "2", "--drain-rate-per-s", "1000"]);
    let mut streams: Vec<Stream> = (0..10)
        .map(|i| Stream::open(&server, &format!("sse-d{i}"), "", ""))
        .collect();
    for s in &mut streams {
        assert_eq!(s.event().1["type"], "welcome");
    }
    let admin = server.admin_token();
    assert_eq!(server.admin("POST", "/v1/drain", Some(&admin), "").0, 202);
    for s in &mut streams {
        let (_, close, retry) = s.event();
        assert_eq!(close["type"], "close");
        assert_eq!(close["code"], 1012);
        assert!(retry.is_some_and(|r| r < 1000), "{retry:?}");
        assert!(s.next().is_none(), "the stream ends after the close event");
    }
    let status = server.terminate();
    assert!(status.success());
}

#[test]
fn a_stop_ends_the_stream_with_1001() {
    let server = Server::start(&["--shards", "1"]);
    let mut s = Stream::open(&server, "sse-stop", "", "");
    s.event();
    std::thread::sleep(Duration::from_millis(100));
    let pid = server.pid();
    // SAFETY: kill(2) on the server we started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (_, close, _) = s.event();
    assert_eq!(close["code"], 1001);
    assert!(s.next().is_none());
}

#[test]
fn refusals_are_readable_by_any_origin_and_the_sdk_is_served() {
    let server = Server::start(&["--shards", "1"]);
    let mut raw = Raw::connect(server.addr);
    raw.send(b"GET /sse?token=forged HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = String::from_utf8(raw.read_all()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("Access-Control-Allow-Origin: *"),
        "{answer}"
    );
    let mut raw = Raw::connect(server.addr);
    raw.send(b"GET /pushgate.js HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = raw.read_all();
    let sdk = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/pushgate.js")).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(answer.ends_with(&sdk), "the file as built in");
}
