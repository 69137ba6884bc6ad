use super::*;

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

fn conn(i: usize) -> ConnId {
    ConnId::for_tests(i as u32, 1)
}

#[test]
fn a_mostly_empty_table_cuts_its_vacant_tail_and_grows_again() {
    let n = 4 * SHRINK_SLOTS_MIN;
    let mut s = sessions();
    s.reserve(n);
    for i in 0..n {
        s.open(conn(i), i as UserIndex, i % 2 == 1, None, 0);
    }
    assert_eq!(s.footprint()[0], (n, n));
    // A quarter still in use: nothing moves.
    for i in n / 4..n {
        assert_eq!(s.close(conn(i)), Some(i as UserIndex));
    }
    s.shrink_if_sparse();
    assert_eq!(s.footprint()[0], (n, n));
    // Under a quarter: cut after the last device (index 99).
    for i in 100..n / 4 {
        s.close(conn(i));
    }
    s.close(conn(50));
    s.shrink_if_sparse();
    assert_eq!(s.len(), 99);
    let [(slots, slot_capacity), (words, word_capacity)] = s.footprint();
    assert_eq!(slots, 100);
    assert!(slot_capacity <= 200, "{slot_capacity}");
    assert_eq!(words, 2);
    assert!(word_capacity <= 4, "{word_capacity}");
    // What is left is intact, including each device's profile.
    assert_eq!(s.user(conn(99)), Some(99));
    assert_eq!(s.user(conn(50)), None);
    assert_eq!(s.user(conn(100)), None);
    assert!(s.on_deadline(conn(100), 1).is_none());
    let console = Liveness {
        ping_interval_ms: 0,
        idle_timeout_ms: 600_000,
    };
    assert_eq!(s.liveness(99), console);
    assert_ne!(s.liveness(98), console);
    // It grows again past the cut, console bits included.
    s.open(conn(5000), 7, true, None, 0);
    assert_eq!(s.user(conn(5000)), Some(7));
    assert_eq!(s.liveness(5000), console);
    assert_eq!(s.close(conn(5000)), Some(7));
}

#[test]
fn a_small_table_is_left_alone() {
    let mut s = sessions();
    for i in 0..100 {
        s.open(conn(i), i as UserIndex, false, None, 0);
    }
    for i in 1..100 {
        s.close(conn(i));
    }
    s.shrink_if_sparse();
    assert_eq!(s.footprint()[0].0, 100);
}
