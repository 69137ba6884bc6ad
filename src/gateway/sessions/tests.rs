//! The sessions part alone: bytes and `now` in, pongs, closes and
//! liveness actions out.

use super::*;
use crate::ws::frame::Opcode;

fn settings() -> SessionSettings {
    SessionSettings {
        reader_limits: ReaderLimits {
            frame_payload_bytes_max: 1024,
            message_bytes_max: 1024,
        },
        liveness: Liveness {
            ping_interval_ms: 1_000,
            idle_timeout_ms: 3_000,
        },
        console_liveness: Liveness {
            ping_interval_ms: 0,
            idle_timeout_ms: 60_000,
        },
    }
}

fn conn(i: u32, gen: u32) -> ConnId {
    ConnId::for_tests(i, gen)
}

fn masked(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    writer::write_frame(&mut out, true, opcode, payload, Some([1, 2, 3, 4]));
    out
}

#[test]
fn open_and_close_keep_the_count_and_the_user() {
    let mut s = Sessions::new(settings());
    assert_eq!(s.open(conn(5, 1), 42, false, None, 100), 1_100);
    assert_eq!(s.user(conn(5, 1)), Some(42));
    assert_eq!(s.len(), 1);
    assert_eq!(s.close(conn(5, 1)), Some(42));
    assert_eq!(s.close(conn(5, 1)), None, "once");
    assert!(s.is_empty());
    assert_eq!(s.user(conn(5, 1)), None);
}

#[test]
fn pings_are_answered_split_at_every_offset() {
    let bytes = masked(Opcode::Ping, b"hello");
    for cut in 0..=bytes.len() {
        let mut s = Sessions::new(settings());
        s.open(conn(0, 1), 0, false, None, 0);
        let (a, b) = bytes.split_at(cut);
        let mut pongs = s.receive(conn(0, 1), &mut a.to_vec(), 0).pongs;
        assert!(s.holds_work(conn(0, 1)) || cut == 0 || cut == bytes.len());
        pongs.extend(s.receive(conn(0, 1), &mut b.to_vec(), 0).pongs);
        assert_eq!(pongs, writer::pong_frame(b"hello"), "cut {cut}");
        assert!(!s.holds_work(conn(0, 1)), "an idle device keeps no reader");
    }
}

#[test]
fn a_close_is_echoed_and_a_violation_gets_its_code() {
    let mut s = Sessions::new(settings());
    s.open(conn(0, 1), 0, false, None, 0);
    let mut close = masked(Opcode::Close, &4001u16.to_be_bytes());
    let got = s.receive(conn(0, 1), &mut close, 0);
    assert_eq!(got.close, Some(Closing::Echo(CloseCode(4001))));
    s.open(conn(1, 1), 0, false, None, 0);
    let mut unmasked = vec![0x81, 0x00];
    let got = s.receive(conn(1, 1), &mut unmasked, 0);
    assert!(matches!(
        got.close,
        Some(Closing::ProtocolError(CloseCode::PROTOCOL_ERROR, _))
    ));
    s.open(conn(2, 1), 0, false, None, 0);
    let mut empty_close = masked(Opcode::Close, b"");
    let got = s.receive(conn(2, 1), &mut empty_close, 0);
    assert_eq!(got.close, Some(Closing::Echo(CloseCode::NORMAL)));
}

#[test]
fn liveness_follows_the_last_byte_and_the_profile() {
    let mut s = Sessions::new(settings());
    s.open(conn(0, 1), 0, false, None, 0);
    s.open(conn(1, 1), 1, true, None, 0);
    assert_eq!(
        s.on_deadline(conn(0, 1), 1_000),
        Some(Action::Ping { next_at_ms: 2_000 })
    );
    s.receive(conn(0, 1), &mut masked(Opcode::Pong, b""), 1_500);
    assert_eq!(
        s.on_deadline(conn(0, 1), 2_000),
        Some(Action::Wait { next_at_ms: 2_500 })
    );
    assert_eq!(s.on_deadline(conn(0, 1), 4_500), Some(Action::Close));
    assert_eq!(
        s.on_deadline(conn(1, 1), 30_000),
        Some(Action::Wait { next_at_ms: 60_000 }),
        "a console is never pinged"
    );
    s.close(conn(1, 1));
    s.open(conn(1, 2), 2, false, None, 0);
    assert_eq!(
        s.on_deadline(conn(1, 2), 1_000),
        Some(Action::Ping { next_at_ms: 2_000 }),
        "the console bit went with the old connection"
    );
}

#[test]
fn the_replay_cursor_keeps_work_only_while_behind() {
    let mut s = Sessions::new(settings());
    s.open(conn(0, 1), 0, false, Some(7), 0);
    assert_eq!(s.replay_cursor(conn(0, 1)), Some(7));
    assert!(s.holds_work(conn(0, 1)));
    s.set_replay_cursor(conn(0, 1), Some(9));
    assert_eq!(s.replay_cursor(conn(0, 1)), Some(9));
    s.set_replay_cursor(conn(0, 1), None);
    assert_eq!(s.replay_cursor(conn(0, 1)), None);
    assert!(!s.holds_work(conn(0, 1)));
}

#[test]
fn sse_devices_ignore_bytes_and_get_heartbeats_not_idle_closes() {
    let mut s = Sessions::new(settings());
    let c = conn(7, 1);
    let first = s.open(c, 3, false, None, 0);
    s.set_wire(c, Wire::Sse);
    assert_eq!(s.wire(c), Wire::Sse);
    // Bytes after the request are ignored: no reader, no pong, no close.
    let mut junk = masked(Opcode::Ping, b"x");
    junk.extend_from_slice(b"\xff\xff garbage");
    assert_eq!(s.receive(c, &mut junk, 10), Received::default());
    assert!(!s.holds_work(c));
    // A heartbeat every ping interval, however long the client is silent.
    let mut at = first;
    for _ in 0..10 {
        match s.on_deadline(c, at) {
            Some(Action::Ping { next_at_ms }) => {
                assert_eq!(next_at_ms, at + 1_000);
                at = next_at_ms;
            }
            other => panic!("{other:?} at {at}"),
        }
    }
    assert!(at > 3_000, "well past the idle timeout");
    // The slot's next device is a WebSocket again.
    s.close(c);
    assert_eq!(s.wire(c), Wire::WebSocket);
    s.open(conn(7, 2), 4, false, None, 0);
    assert_eq!(s.wire(conn(7, 2)), Wire::WebSocket);
}

#[test]
fn sse_without_pings_is_closed_after_the_idle_timeout() {
    let mut s = Sessions::new(settings());
    let c = conn(1, 1);
    let first = s.open(c, 3, true, None, 0);
    s.set_wire(c, Wire::Sse);
    assert_eq!(
        s.ping_interval_ms(c),
        0,
        "the console profile does not ping"
    );
    assert_eq!(s.on_deadline(c, first), Some(Action::Close));
}

#[test]
fn a_wire_is_only_set_on_a_device() {
    let mut s = Sessions::new(settings());
    s.set_wire(conn(2, 1), Wire::Sse);
    assert_eq!(s.wire(conn(2, 1)), Wire::WebSocket);
    s.open(conn(2, 1), 0, false, None, 0);
    s.set_wire(conn(2, 1), Wire::WebSocketTextPing);
    assert_eq!(s.wire(conn(2, 1)), Wire::WebSocketTextPing);
    assert_eq!(s.ping_interval_ms(conn(2, 1)), 1_000);
}

// Tables that give memory back.

fn sessions() -> Sessions {
    let liveness = Liveness {
        ping_interval_ms: 30_000,
        idle_timeout_ms: 75_000,
    };
    Sessions::new(SessionSettings {
        reader_limits: ReaderLimits {
            frame_payload_bytes_max: 1024,
            message_bytes_max: 1024,
        },
        liveness,
        console_liveness: Liveness {
            ping_interval_ms: 0,
            idle_timeout_ms: 600_000,
        },
    })
}

fn conn1(i: usize) -> ConnId {
    ConnId::for_tests(i as u32, 1)
}

#[test]
fn a_mostly_empty_table_cuts_its_vacant_tail_and_grows_again() {
    let n = 4 * SHRINK_SLOTS_MIN;
    let mut s = sessions();
    s.reserve(n);
    for i in 0..n {
        s.open(conn1(i), i as UserIndex, i % 2 == 1, None, 0);
    }
    assert_eq!(s.footprint()[0], (n, n));
    // A quarter still in use: nothing moves.
    for i in n / 4..n {
        assert_eq!(s.close(conn1(i)), Some(i as UserIndex));
    }
    s.shrink_if_sparse();
    assert_eq!(s.footprint()[0], (n, n));
    // Under a quarter: cut after the last device (index 99).
    for i in 100..n / 4 {
        s.close(conn1(i));
    }
    s.close(conn1(50));
    s.shrink_if_sparse();
    assert_eq!(s.len(), 99);
    let [(slots, slot_capacity), (words, word_capacity)] = s.footprint();
    assert_eq!(slots, 100);
    assert!(slot_capacity <= 200, "{slot_capacity}");
    assert_eq!(words, 2);
    assert!(word_capacity <= 4, "{word_capacity}");
    // What is left is intact, including each device's profile.
    assert_eq!(s.user(conn1(99)), Some(99));
    assert_eq!(s.user(conn1(50)), None);
    assert_eq!(s.user(conn1(100)), None);
    assert!(s.on_deadline(conn1(100), 1).is_none());
    let console = Liveness {
        ping_interval_ms: 0,
        idle_timeout_ms: 600_000,
    };
    assert_eq!(s.liveness(99), console);
    assert_ne!(s.liveness(98), console);
    // It grows again past the cut, console bits included.
    s.open(conn1(5000), 7, true, None, 0);
    assert_eq!(s.user(conn1(5000)), Some(7));
    assert_eq!(s.liveness(5000), console);
    assert_eq!(s.close(conn1(5000)), Some(7));
}

#[test]
fn a_small_table_is_left_alone() {
    let mut s = sessions();
    for i in 0..100 {
        s.open(conn1(i), i as UserIndex, false, None, 0);
    }
    for i in 1..100 {
        s.close(conn1(i));
    }
    s.shrink_if_sparse();
    assert_eq!(s.footprint()[0].0, 100);
}
