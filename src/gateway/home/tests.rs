//! The home part alone: names, payloads and `now` in, fan-outs and
//! counts out. (Whole flows through the wiring are in `gateway/sim`.)

use super::*;

const EPOCH: u64 = 9;

fn home() -> Home {
    Home::new(HomeSettings {
        epoch: EPOCH,
        retention_ms: 1_000,
        entries_max: 4,
        offline_users_max: 3,
        stored_bytes_max: 10_000,
    })
}

fn conn(i: u32) -> ConnId {
    ConnId::for_tests(i, 1)
}

fn since(seq: u64) -> Option<Since> {
    Some(Since { epoch: EPOCH, seq })
}

fn push(h: &mut Home, names: &[&str], now_ms: u64) -> Fanout {
    let mut out = Fanout::default();
    h.push(names, Bytes::from_static(b"1"), now_ms, false, &mut out);
    out
}

fn seqs<'a>(it: impl Iterator<Item = &'a SharedPush>) -> Vec<u64> {
    it.map(|p| p.seq).collect()
}

#[test]
fn a_push_lists_each_online_recipients_devices_and_counts_the_offline_ones() {
    let mut h = home();
    let a = h.join("a", conn(1), None).user;
    h.join("a", conn(2), None);
    h.join("b", conn(3), None);
    let out = push(&mut h, &["a", "b", "c"], 0);
    let runs: Vec<&[ConnId]> = out.recipients().collect();
    assert_eq!(runs, [&[conn(1), conn(2)][..], &[conn(3)][..]]);
    assert_eq!(out.counts.stored, 1, "c is offline");
    assert_eq!(out.push.as_ref().unwrap().seq, 1);
    assert_eq!(h.devices_of(a).count(), 2);
    assert_eq!(h.presence("a"), (true, 2));
    assert_eq!(h.presence("c"), (false, 0));
}

#[test]
fn a_join_says_whether_a_resume_is_recovered_and_what_to_replay() {
    let mut h = home();
    push(&mut h, &["u"], 0);
    push(&mut h, &["u"], 0);
    let fresh = h.join("u", conn(1), None);
    assert_eq!(
        (fresh.last_seq, fresh.recovered, fresh.replay_after),
        (2, None, None)
    );
    let resumed = h.join("u", conn(2), since(1));
    assert_eq!(resumed.recovered, Some(true));
    assert_eq!(resumed.replay_after, Some(1));
    let current = h.join("u", conn(3), since(2));
    assert_eq!(
        (current.recovered, current.replay_after),
        (Some(true), None)
    );
    let other_epoch = h.join("u", conn(4), Some(Since { epoch: 1, seq: 0 }));
    assert_eq!(other_epoch.recovered, Some(false));
    let future = h.join("u", conn(5), since(3));
    assert_eq!(future.recovered, Some(false));
    assert_eq!(seqs(h.replay_after(resumed.user, 0).unwrap()), [1, 2]);
}

#[test]
fn evicted_entries_raise_the_floor_and_a_replay_behind_it_fell_behind() {
    let mut h = home();
    let u = h.join("u", conn(1), None).user;
    for _ in 0..6 {
        push(&mut h, &["u"], 0);
    }
    assert_eq!(seqs(h.replay_after(u, 2).unwrap()), [3, 4, 5, 6]);
    assert_eq!(h.replay_after(u, 1).err(), Some(FellBehind));
    assert_eq!(h.join("u", conn(2), since(1)).recovered, Some(false));
    assert_eq!(h.join("u", conn(3), since(2)).recovered, Some(true));
}

#[test]
fn broadcasts_are_kept_once_and_merged_into_a_users_replay() {
    let mut h = home();
    let u = h.join("u", conn(1), None).user;
    h.join("v", conn(2), None);
    let mut out = Fanout::default();
    h.broadcast(Bytes::from_static(b"2"), 0, &mut out);
    assert_eq!(out.recipients().count(), 2);
    push(&mut h, &["u"], 0);
    h.broadcast(Bytes::from_static(b"3"), 0, &mut out);
    assert_eq!(seqs(h.replay_after(u, 0).unwrap()), [1, 2, 3]);
    let status = h.status();
    assert_eq!(
        (status.broadcast_log_entries, status.mailbox_entries),
        (2, 1)
    );
}

#[test]
fn retention_expires_entries_and_forgets_users_with_nothing_left() {
    let mut h = home();
    let u = h.join("u", conn(1), None).user;
    push(&mut h, &["u", "away"], 0);
    h.leave(u, conn(1), 100);
    h.tick(999);
    assert_eq!(h.status().users, 2);
    h.tick(1_000);
    let status = h.status();
    assert_eq!((status.mailbox_entries, status.mailboxes_nonempty), (0, 0));
    assert_eq!(status.users, 1, "u left at 100: kept until 1,100");
    h.tick(1_100);
    assert_eq!(h.status().users, 0);
    assert_eq!(h.status().stored_bytes, 0);
    // A forgotten user comes back with a floor: an old resume is a gap.
    assert_eq!(h.join("u", conn(2), since(0)).recovered, Some(false));
}

#[test]
fn a_user_who_left_keeps_its_floor_while_away() {
    let mut h = home();
    let u = h.join("u", conn(1), None).user;
    push(&mut h, &["u"], 0);
    h.leave(u, conn(1), 0);
    assert_eq!(h.status().users_online, 0);
    let back = h.join("u", conn(2), since(1));
    assert_eq!((back.recovered, back.last_seq), (Some(true), 1));
}

#[test]
fn offline_users_past_their_bound_are_rejected_known_ones_are_kept() {
    let mut h = home();
    let out = push(&mut h, &["o1", "o2", "o3", "o4"], 0);
    assert_eq!(out.counts.stored, 3);
    assert_eq!(out.counts.rejected, 1);
    assert_eq!(out.counts.reasons, RejectReasons::OFFLINE_USERS_FULL);
    let again = push(&mut h, &["o2"], 0);
    assert_eq!((again.counts.stored, again.counts.rejected), (1, 0));
    h.join("on", conn(1), None);
    let online = push(&mut h, &["on"], 0);
    assert_eq!(
        online.recipients().count(),
        1,
        "online users are not offline state"
    );
}

#[test]
fn stored_bytes_past_their_bound_reject_offline_users_and_gap_online_ones() {
    let mut h = home();
    let on = h.join("on", conn(1), None).user;
    let big = Bytes::from(vec![b'7'; 6_000]);
    let mut out = Fanout::default();
    h.push(&["off"], big.clone(), 0, false, &mut out);
    assert_eq!(out.counts.stored, 1);
    h.push(&["off", "on"], big.clone(), 0, false, &mut out);
    assert_eq!(out.counts.reasons, RejectReasons::STORED_BYTES_FULL);
    assert_eq!(out.counts.rejected, 1);
    assert_eq!(out.recipients().count(), 1, "the online user still gets it");
    drop(out);
    assert_eq!(
        h.replay_after(on, 0).err(),
        Some(FellBehind),
        "not kept: a gap"
    );
    assert!(h.status().stored_bytes <= 10_000);
}

#[test]
fn over_the_memory_mark_nothing_new_is_kept_for_offline_users() {
    let mut h = home();
    h.join("on", conn(1), None);
    let mut out = Fanout::default();
    h.push(&["on", "off"], Bytes::from_static(b"1"), 0, true, &mut out);
    assert_eq!(out.recipients().count(), 1);
    assert_eq!(out.counts.rejected, 1);
    assert_eq!(out.counts.reasons, RejectReasons::MEMORY_HIGH);
}

#[test]
fn invalid_names_are_rejected_and_a_name_twice_is_one_recipient() {
    let mut h = home();
    h.join("on", conn(1), None);
    let out = push(&mut h, &["", "on", "on", "bad\u{202e}name"], 0);
    assert_eq!(out.recipients().count(), 1);
    assert_eq!(out.counts.rejected, 2);
    assert_eq!(out.counts.reasons, RejectReasons::INVALID_USER);
    assert_eq!(h.status().mailbox_entries, 1);
}

#[test]
fn devices_from_visits_every_device_once_per_lap() {
    let mut h = home();
    for i in 0..10 {
        h.join(&format!("u{i}"), conn(i), None);
    }
    let (mut seen, mut cursor) = (Vec::new(), 0);
    for _ in 0..4 {
        cursor = h.devices_from(cursor, 100, 3, &mut seen);
    }
    seen.truncate(10);
    seen.sort_by_key(|c| c.index());
    assert_eq!(seen, (0..10).map(conn).collect::<Vec<_>>());
}

#[test]
fn reject_reasons_read_as_text_in_a_fixed_order() {
    let mut r = RejectReasons::default();
    assert!(r.is_empty());
    r.add(RejectReasons::MEMORY_HIGH);
    r.add(RejectReasons::INVALID_USER);
    assert_eq!(
        r.texts().collect::<Vec<_>>(),
        ["invalid user ID", "server over its memory mark"]
    );
    assert_eq!(RejectReasons::from_bits(r.bits()), r);
}
