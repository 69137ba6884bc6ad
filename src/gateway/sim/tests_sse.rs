//! Server-Sent Events devices in the in-memory driver: the same welcome,
//! fan-out, resume, drain, slow-consumer and stop paths as WebSocket
//! devices, in SSE's form; and the WebSocket text heartbeat.

#![cfg(test)]

use super::client::{cluster, shared, user_homed_on, Frame};
use super::{Cluster, SimSettings};
use crate::gateway::sessions::Wire;
use crate::gateway::CLIENT_LISTENER;
use crate::sse::{Item, DRAIN_RETRY_SPREAD_MS, RETRY_MS_MIN, RETRY_SPREAD_MS};
use serde_json::json;

fn data(pushes: &[(u64, serde_json::Value)]) -> Vec<serde_json::Value> {
    pushes.iter().map(|(_, d)| d.clone()).collect()
}

#[test]
fn an_sse_device_is_moved_home_and_welcomed_with_the_event_stream_head() {
    let mut c = cluster(2);
    let user = user_homed_on("sse", 1, 2);
    let d = c.sse_device(0, &user, None, None);
    assert_eq!(c.server_end(d.socket).unwrap().0, 1, "handed to its home");
    let head = d.head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-type: text/event-stream\r\n"));
    assert!(head.contains("\r\ncache-control: no-store\r\n"));
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(d.welcome["user"], user.as_str());
    assert_eq!(d.welcome["seq"], 0);
    assert_eq!(d.welcome["heartbeat_ms"], 30_000);
    assert!(d.welcome.get("recovered").is_none());
    let epoch = d.welcome["epoch"].as_u64().unwrap();
    assert_eq!(d.welcome_event.id, Some(format!("{epoch}:0")));
    let retry = d.welcome_event.retry_ms.unwrap();
    assert!((RETRY_MS_MIN..RETRY_MS_MIN + RETRY_SPREAD_MS).contains(&retry));
    let conn = c.server_end(d.socket).unwrap().1;
    assert_eq!(c.gateway(1).sessions.wire(conn), Wire::Sse);
    assert_eq!(c.gateway(1).home.presence(&user), (true, 1));
    c.check_invariants();
}

#[test]
fn pushes_reach_sse_and_websocket_devices_of_a_user_alike() {
    let mut c = cluster(2);
    let user = user_homed_on("both", 0, 2);
    let mut sse_a = c.sse_device(1, &user, None, None);
    let mut sse_b = c.sse_device(0, &user, None, None);
    let mut ws = c.device(1, &user, None);
    let mut p = c.publisher(1);
    assert_eq!(p.push(&mut c, &[&user], r#"{"hi":1}"#), (1, 0, 0));
    // A payload with line breaks (JSON whitespace) reads back the same.
    assert_eq!(p.push(&mut c, &[&user], "{\"a\":\r\n[1,\n2]}"), (1, 0, 0));
    let want = [json!({"hi": 1}), json!({"a": [1, 2]})];
    for d in [&mut sse_a, &mut sse_b] {
        let got = d.pushes(&mut c);
        assert_eq!(data(&got), want);
        assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
    }
    assert_eq!(
        data(&ws.pushes(&mut c)),
        want,
        "the WebSocket frame is unchanged"
    );
    c.check_invariants();
}

#[test]
fn sse_resumes_from_since_or_last_event_id_in_order() {
    let mut c = cluster(2);
    let user = user_homed_on("resume", 1, 2);
    let d = c.sse_device(0, &user, None, None);
    let epoch = d.welcome["epoch"].as_u64().unwrap();
    c.hang_up(d.socket);
    let mut p = c.publisher(0);
    for i in 0..3 {
        assert_eq!(p.push(&mut c, &[&user], &i.to_string()), (0, 1, 0));
    }
    // `?since=`: everything after seq 0, with a welcome whose id is the
    // client's own position until the replay brings it forward.
    let mut back = c.sse_device(0, &user, Some(&format!("{epoch}:0")), None);
    assert_eq!(back.welcome["recovered"], true);
    assert_eq!(back.welcome["seq"], 3);
    assert_eq!(back.welcome_event.id, Some(format!("{epoch}:0")));
    assert_eq!(data(&back.pushes(&mut c)), [json!(0), json!(1), json!(2)]);
    c.hang_up(back.socket);
    p.push(&mut c, &[&user], "3");
    // `Last-Event-ID` (what an EventSource sends) wins over a stale since.
    let mut again = c.sse_device(
        1,
        &user,
        Some(&format!("{epoch}:0")),
        Some(&format!("{epoch}:2")),
    );
    assert_eq!(again.welcome["recovered"], true);
    assert_eq!(data(&again.pushes(&mut c)), [json!(2), json!(3)]);
    c.check_invariants();
}

#[test]
fn an_unreadable_or_foreign_position_resets_the_client() {
    let mut c = cluster(1);
    let mut p = c.publisher(0);
    p.push(&mut c, &["reset"], "1");
    for (since, id) in [
        (Some("junk"), None),
        (None, Some("not-a-position")),
        (Some("1:1"), None), // another epoch (a restarted server)
    ] {
        let d = c.sse_device(0, "reset", since, id);
        assert_eq!(d.welcome["recovered"], false, "{since:?} {id:?}");
        let epoch = d.welcome["epoch"].as_u64().unwrap();
        // The id moves to the current position: an EventSource that comes
        // back does not send the stale one again.
        assert_eq!(d.welcome_event.id, Some(format!("{epoch}:1")));
        c.hang_up(d.socket);
    }
    // The same for a WebSocket: an unreadable since is no 400.
    let ws = c.device(0, "reset", Some("x:y"));
    assert_eq!(ws.welcome["recovered"], false);
    c.check_invariants();
}

#[test]
fn an_sse_device_gets_heartbeats_and_is_not_closed_for_its_silence() {
    let mut c = cluster(1);
    let mut d = c.sse_device(0, "beat", None, None);
    c.advance(5 * 60_000); // far past the 75 s idle timeout
    let items = d.items(&mut c);
    assert!(!c.is_closed(d.socket));
    assert!(items.iter().all(|i| *i == Item::Comment), "{items:?}");
    assert!(
        (9..=10).contains(&items.len()),
        "one per 30 s: {}",
        items.len()
    );
    // Bytes from the client are ignored.
    c.write(d.socket, b"\x88\x80garbage\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert!(!c.is_closed(d.socket));
    assert!(d.items(&mut c).is_empty());
    c.hang_up(d.socket);
    assert_eq!(c.gateway(0).home.presence("beat"), (false, 0));
    c.check_invariants();
}

#[test]
fn without_pings_a_silent_sse_device_is_closed_with_a_close_event() {
    let mut c = cluster(1);
    // The console listener's profile does not ping; its idle timeout is 600 s.
    let request = c.sse_request("quiet", None, None);
    let s = c.connect(0, 3).unwrap();
    c.write(s, &request);
    c.read(s);
    c.advance(600_000);
    assert!(c.is_closed(s));
    let text = String::from_utf8(c.read(s)).unwrap();
    assert!(
        text.contains(r#"data: {"type":"close","code":1001,"reason":"idle timeout"}"#),
        "{text}"
    );
    c.check_invariants();
}

#[test]
fn a_drain_ends_sse_streams_with_1012_and_spread_retries() {
    let mut c = cluster(2);
    let mut devices: Vec<_> = (0..20)
        .map(|i| c.sse_device(i % 2, &format!("drained{i}"), None, None))
        .collect();
    c.shared.control.start_drain(1_000);
    c.advance(1_000);
    let mut retries = Vec::new();
    for d in &mut devices {
        assert!(c.is_closed(d.socket));
        let events = d.items(&mut c);
        let Some(Item::Event(last)) = events.last() else {
            panic!("{events:?}")
        };
        let v: serde_json::Value = serde_json::from_str(&last.data).unwrap();
        assert_eq!(v["type"], "close");
        assert_eq!(v["code"], 1012);
        assert!(v["reason"].as_str().unwrap().contains("restarting"));
        retries.push(last.retry_ms.unwrap());
    }
    assert!(retries.iter().all(|&r| r < DRAIN_RETRY_SPREAD_MS));
    retries.sort();
    retries.dedup();
    assert!(retries.len() >= 15, "spread, not one value: {retries:?}");
    assert_eq!(c.shared.control.shards_drained(), 2);
    c.check_invariants();
}

#[test]
fn an_sse_device_that_stops_reading_is_cut_with_1013_and_resumes() {
    let mut c = Cluster::new(
        shared(),
        SimSettings {
            shards: 1,
            send_queue_bytes_max: 4_000,
            ..SimSettings::default()
        },
    );
    let mut p = c.publisher(0);
    let mut d = c.sse_device(0, "slow-sse", None, None);
    let epoch = d.welcome["epoch"].as_u64().unwrap();
    c.socket_mut(d.socket).reading = false;
    let pad = "z".repeat(1_000);
    for i in 0..20 {
        p.push(
            &mut c,
            &["slow-sse"],
            &format!(r#"{{"i":{i},"pad":"{pad}"}}"#),
        );
    }
    assert!(c.is_closed(d.socket));
    let mut seen = Vec::new();
    let mut close = None;
    for item in d.items(&mut c) {
        let Item::Event(e) = item else { continue };
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        match v["type"].as_str() {
            Some("push") => seen.push(v["seq"].as_u64().unwrap()),
            Some("close") => close = Some(v["code"].as_u64().unwrap()),
            _ => panic!("{v}"),
        }
    }
    assert_eq!(close, Some(1013));
    let last = *seen.last().unwrap();
    let mut back = c.sse_device(0, "slow-sse", None, Some(&format!("{epoch}:{last}")));
    assert_eq!(back.welcome["recovered"], true);
    assert_eq!(back.pushes(&mut c).len(), 20 - seen.len());
    c.check_invariants();
}

#[test]
fn stop_ends_sse_streams_with_1001() {
    let mut c = cluster(2);
    let mut d = c.sse_device(0, "stopping", None, None);
    c.stop();
    let events = d.events(&mut c);
    assert_eq!(events.last().unwrap().1["code"], 1001);
    assert_eq!(c.open_conns(0) + c.open_conns(1), 0);
}

#[test]
fn sse_refusals_are_http_answers() {
    let mut c = cluster(1);
    let refused = |c: &mut Cluster, request: &[u8]| {
        let Err(answer) = c.try_sse_device(0, request) else {
            panic!("accepted")
        };
        answer[9..12].parse::<u16>().unwrap()
    };
    assert_eq!(
        refused(&mut c, b"GET /sse HTTP/1.1\r\nHost: x\r\n\r\n"),
        401
    );
    assert_eq!(
        refused(&mut c, b"GET /sse?token=nope HTTP/1.1\r\nHost: x\r\n\r\n"),
        401
    );
    assert_eq!(
        refused(&mut c, b"PUT /sse HTTP/1.1\r\nHost: x\r\n\r\n"),
        405
    );
    c.check_invariants();
}

#[test]
fn the_sdk_is_served() {
    let mut c = cluster(1);
    let s = c.connect(0, CLIENT_LISTENER).unwrap();
    c.write(s, b"GET /pushgate.js HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = c.read(s);
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(answer.ends_with(crate::upgrade::SDK_JS));
    assert!(c.is_closed(s));
}

#[test]
fn a_websocket_that_asks_for_text_heartbeats_gets_them() {
    let mut c = cluster(1);
    let s = c.connect(0, CLIENT_LISTENER).unwrap();
    let request = String::from_utf8(c.upgrade_request("tp", None))
        .unwrap()
        .replacen("/ws?", "/ws?heartbeat=1&", 1);
    c.write(s, request.as_bytes());
    let bytes = c.read(s);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(r#""heartbeat_ms":30000"#), "{text}");
    c.advance(30_000);
    assert_eq!(c.read(s), b"\x81\x0f{\"type\":\"ping\"}");
    // Any message answers it (here the SDK's pong) and keeps it alive.
    c.write(
        s,
        &super::client::client_frame(crate::ws::frame::Opcode::Text, br#"{"type":"pong"}"#),
    );
    c.advance(60_000);
    assert!(!c.is_closed(s));
    // A plain WebSocket still gets ping frames and no heartbeat_ms.
    let mut plain = c.device(0, "plain", None);
    assert!(plain.welcome.get("heartbeat_ms").is_none());
    c.advance(30_000);
    assert_eq!(plain.frames(&mut c), [Frame::Ping]);
}
