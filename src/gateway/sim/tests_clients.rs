//! WebSocket clients in the in-memory driver: upgrade, handoff, frames,
//! liveness, admission caps, drain and stop.

#![cfg(test)]

use super::client::{client_frame, cluster, shared, user_homed_on, Frame};
use super::{Cluster, SimSettings};
use crate::gateway::{CLIENT_LISTENER, CONSOLE_LISTENER};

use crate::ws::frame::Opcode;

fn response_status(bytes: &[u8]) -> u16 {
    String::from_utf8_lossy(&bytes[9..12]).parse().unwrap()
}

#[test]
fn a_device_is_moved_to_its_home_shard_and_welcomed_there() {
    let mut c = cluster(4);
    let user = user_homed_on("alice", 3, 4);
    let device = c.device(0, &user, None);
    assert_eq!(device.welcome["user"], user.as_str());
    assert_eq!(device.welcome["seq"], 0);
    assert!(device.welcome.get("recovered").is_none(), "not a resume");
    let (shard, _) = c.server_end(device.socket).expect("open");
    assert_eq!(shard, 3, "handed to the home shard");
    c.check_invariants();
}

#[test]
fn a_request_head_split_at_every_offset_is_judged_once_whole() {
    let mut c = cluster(2);
    let request = c.upgrade_request("split", None);
    for cut in 1..request.len() {
        let socket = c.connect(0, CLIENT_LISTENER).unwrap();
        c.write(socket, &request[..cut]);
        assert!(c.read(socket).is_empty(), "cut {cut}: answered early");
        c.write(socket, &request[cut..]);
        let answer = c.read(socket);
        assert_eq!(response_status(&answer), 101, "cut {cut}");
        c.hang_up(socket);
    }
    c.check_invariants();
    assert_eq!(c.pending()["handshakes"], 0);
}

#[test]
fn a_bad_token_gets_401_with_the_reason_and_leaves_nothing() {
    let mut c = cluster(2);
    let socket = c.connect(1, CLIENT_LISTENER).unwrap();
    c.write(
        socket,
        b"GET /ws?token=nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let answer = c.read(socket);
    assert_eq!(response_status(&answer), 401);
    assert!(c.is_closed(socket));
    c.check_invariants();
}

#[test]
fn an_upgrade_not_finished_in_time_gets_408() {
    let mut c = cluster(2);
    let socket = c.connect(0, CLIENT_LISTENER).unwrap();
    c.write(socket, b"GET /ws HTTP/1.1\r\n");
    c.advance(9_900);
    assert!(!c.is_closed(socket), "not before the timeout");
    c.advance(200);
    assert_eq!(response_status(&c.read(socket)), 408);
    assert!(c.is_closed(socket));
    assert_eq!(c.pending()["handshakes"], 0);
    c.check_invariants();
}

#[test]
fn pings_are_answered_and_a_close_is_echoed() {
    let mut c = cluster(2);
    let mut d = c.device(0, "pinger", None);
    d.send(&mut c, Opcode::Ping, b"are you there");
    assert_eq!(d.frames(&mut c), [Frame::Pong(b"are you there".to_vec())]);
    // A ping and a close in one read: the pong first, then the echo.
    let mut both = client_frame(Opcode::Ping, b"1");
    both.extend(client_frame(Opcode::Close, &4000u16.to_be_bytes()));
    c.write(d.socket, &both);
    assert_eq!(
        d.frames(&mut c),
        [Frame::Pong(b"1".to_vec()), Frame::Close(4000)]
    );
    assert!(c.is_closed(d.socket));
    c.check_invariants();
}

#[test]
fn bytes_right_behind_the_request_head_are_frames() {
    let mut c = cluster(2);
    let user = user_homed_on("eager", 1, 2);
    let socket = c.connect(0, CLIENT_LISTENER).unwrap();
    let mut bytes = c.upgrade_request(&user, None);
    bytes.extend(client_frame(Opcode::Ping, b"early"));
    c.write(socket, &bytes);
    let answer = String::from_utf8_lossy(&c.read(socket)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(
        answer.ends_with("early"),
        "pong after the welcome: {answer:?}"
    );
    c.check_invariants();
}

#[test]
fn a_protocol_violation_closes_with_its_code_and_others_carry_on() {
    let mut c = cluster(2);
    let mut bad = c.device(0, "bad", None);
    let mut good = c.device(0, "good", None);
    // An unmasked client frame: 1002.
    c.write(bad.socket, &[0x81, 0x01, b'x']);
    assert_eq!(bad.frames(&mut c), [Frame::Close(1002)]);
    assert!(c.is_closed(bad.socket));
    // Text that is not UTF-8: 1007.
    good.send(&mut c, Opcode::Text, b"fine");
    let mut bad2 = c.device(1, "bad2", None);
    bad2.send(&mut c, Opcode::Text, &[0xff, 0xfe]);
    assert_eq!(bad2.frames(&mut c), [Frame::Close(1007)]);
    assert!(good.frames(&mut c).is_empty());
    assert!(!c.is_closed(good.socket));
    c.check_invariants();
}

#[test]
fn a_silent_browser_is_pinged_then_closed_at_the_idle_timeout() {
    let mut c = cluster(1);
    let mut d = c.device(0, "quiet", None);
    c.advance(29_900);
    assert!(d.frames(&mut c).is_empty());
    c.advance(200);
    assert_eq!(d.frames(&mut c), [Frame::Ping]);
    c.advance(30_000);
    assert_eq!(d.frames(&mut c), [Frame::Ping], "pinged again");
    c.advance(15_000);
    assert_eq!(d.frames(&mut c), [Frame::Close(1001)]);
    assert!(c.is_closed(d.socket));
    c.check_invariants();
}

#[test]
fn activity_keeps_a_device_alive_without_moving_its_deadline() {
    let mut c = cluster(1);
    let mut d = c.device(0, "chatty", None);
    for _ in 0..10 {
        c.advance(20_000);
        d.send(&mut c, Opcode::Pong, b"");
    }
    assert!(!c.is_closed(d.socket), "200 s with a byte every 20 s");
    assert!(d.frames(&mut c).iter().all(|f| *f == Frame::Ping));
}

#[test]
fn a_sleeping_console_is_never_pinged_and_closed_only_after_its_long_timeout() {
    let mut c = cluster(1);
    let mut d = c.device_via(0, CONSOLE_LISTENER, "console", None);
    c.advance(599_900);
    assert!(d.frames(&mut c).is_empty(), "no ping for a console");
    c.advance(200);
    assert_eq!(d.frames(&mut c), [Frame::Close(1001)]);
    assert!(c.is_closed(d.socket));
}

#[test]
fn the_connection_cap_and_the_upgrade_cap_answer_503() {
    let mut shared = shared();
    shared.limits.connections_per_shard_max = 3;
    shared.limits.handshakes_max = 2;
    let mut c = Cluster::new(
        shared,
        SimSettings {
            shards: 1,
            ..SimSettings::default()
        },
    );
    let a = c.connect(0, CLIENT_LISTENER).unwrap();
    let b = c.connect(0, CLIENT_LISTENER).unwrap();
    let refused = c.connect(0, CLIENT_LISTENER).unwrap();
    let answer = String::from_utf8_lossy(&c.read(refused)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many upgrades in progress"), "{answer}");
    for s in [a, b] {
        let request = c.upgrade_request(&format!("u{s}"), None);
        c.write(s, &request);
    }
    let _third = c.device(0, "third", None);
    let fourth = c.connect(0, CLIENT_LISTENER).unwrap();
    let answer = String::from_utf8_lossy(&c.read(fourth)).into_owned();
    assert!(answer.contains("connection cap"), "{answer}");
    c.check_invariants();
}

#[test]
fn the_accept_rate_limit_refuses_past_a_one_second_burst() {
    let mut shared = shared();
    shared.limits.accepts_per_shard_per_s = 10.0;
    let mut c = Cluster::new(shared, SimSettings::default());
    let mut admitted = 0;
    for _ in 0..30 {
        let s = c.connect(0, CLIENT_LISTENER).unwrap();
        if !c.is_closed(s) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
    c.advance(500);
    let s = c.connect(0, CLIENT_LISTENER).unwrap();
    assert!(!c.is_closed(s), "refilled");
}

#[test]
fn over_the_memory_mark_new_clients_get_503_and_existing_ones_stay() {
    let mut c = cluster(2);
    let mut d = c.device(0, "stays", None);
    c.shared.control.set_overloaded(true);
    let refused = c.try_device(1, "new", None).err().expect("refused");
    assert!(
        refused.contains("503") && refused.contains("memory"),
        "{refused}"
    );
    let mut p = c.publisher(0);
    assert_eq!(p.push(&mut c, &["stays"], "1"), (1, 0, 0));
    assert_eq!(d.pushes(&mut c).len(), 1);
    c.shared.control.set_overloaded(false);
    c.device(1, "new", None);
}

#[test]
fn a_drain_closes_devices_at_its_rate_with_1012_and_reports_each_shard_empty() {
    let mut c = cluster(2);
    // 20 homed on each shard, each shard closing its share of the rate.
    let mut devices: Vec<_> = (0..40)
        .map(|i| {
            let user = user_homed_on(&format!("d{i}-"), i % 2, 2);
            c.device(0, &user, None)
        })
        .collect();
    c.shared.control.start_drain(20); // 10/s per shard
    c.advance(100);
    assert!(c.listener_closed(0, CLIENT_LISTENER) && c.listener_closed(1, CLIENT_LISTENER));
    assert!(
        c.connect(0, CLIENT_LISTENER).is_none(),
        "no longer accepting"
    );
    c.advance(1_000);
    let closed = devices.iter().filter(|d| c.is_closed(d.socket)).count();
    assert!(
        (18..=22).contains(&closed),
        "about 20 in one second: {closed}"
    );
    assert_eq!(c.shared.control.shards_drained(), 0);
    c.advance(1_200);
    for d in &mut devices {
        assert!(c.is_closed(d.socket));
        assert_eq!(d.frames(&mut c).last(), Some(&Frame::Close(1012)));
    }
    assert_eq!(
        c.shared.control.shards_drained(),
        2,
        "each shard reports once"
    );
    c.advance(1_000);
    assert_eq!(c.shared.control.shards_drained(), 2);
    c.check_invariants();
}

#[test]
fn pushes_keep_reaching_devices_a_drain_has_not_closed_yet() {
    let mut c = cluster(1);
    let mut devices: Vec<_> = (0..10)
        .map(|i| c.device(0, &format!("w{i}"), None))
        .collect();
    let mut p = c.publisher(0);
    c.shared.control.start_drain(5);
    c.advance(1_000);
    let open = devices.iter().filter(|d| !c.is_closed(d.socket)).count() as u32;
    assert!((4..=7).contains(&open), "{open} left after a second at 5/s");
    let names: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (delivered, stored, _) = p.push(&mut c, &names, r#""still here""#);
    assert_eq!((delivered, stored), (open, 10 - open));
    let mut got = 0;
    for d in &mut devices {
        let pushes = d
            .frames(&mut c)
            .into_iter()
            .filter(|f| matches!(f, Frame::Text(_)))
            .count();
        got += pushes as u32;
    }
    assert_eq!(got, open);
}

#[test]
fn stop_closes_devices_with_1001_and_aborts_upgrades_in_progress() {
    let mut c = cluster(2);
    let mut d = c.device(0, "bye", None);
    let half = c.connect(1, CLIENT_LISTENER).unwrap();
    c.write(half, b"GET /ws");
    let p = c.publisher(1);
    c.stop();
    assert_eq!(d.frames(&mut c), [Frame::Close(1001)]);
    assert!(c.socket(half).aborted_by_server);
    assert!(c.is_closed(p.socket));
    assert_eq!(c.open_conns(0) + c.open_conns(1), 0);
}

#[test]
fn a_client_that_hangs_up_is_forgotten_and_offline_at_once() {
    let mut c = cluster(2);
    let user = user_homed_on("gone", 1, 2);
    let d1 = c.device(0, &user, None);
    let _d2 = c.device(1, &user, None);
    c.hang_up(d1.socket);
    c.check_invariants();
    let status = c.gateway(1).home.status();
    assert_eq!((status.users_online, status.devices_online), (1, 1));
    assert_eq!(c.gateway(1).home.presence(&user), (true, 1));
}

#[test]
fn the_demo_page_is_served_and_unknown_paths_get_404() {
    let mut c = cluster(1);
    let s = c.connect(0, CLIENT_LISTENER).unwrap();
    c.write(s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let page = String::from_utf8_lossy(&c.read(s)).into_owned();
    assert!(page.starts_with("HTTP/1.1 200") && page.ends_with("demo</html>"));
    let s = c.connect(0, CLIENT_LISTENER).unwrap();
    c.write(s, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(response_status(&c.read(s)), 404);
    c.check_invariants();
}
