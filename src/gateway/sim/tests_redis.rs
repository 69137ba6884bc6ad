//! Several hosts in the in-memory driver: the shard's side of Redis, with
//! the test as the Redis thread (it takes the shard's requests from the
//! queue and answers through the shard's inbox). A welcome waits for the
//! history; doorbells are sent in seq order, skipped, repaired or make the
//! device resume; late answers never reach a connection that reused the
//! slot. The Redis side itself is tested against real Redis in
//! tests/cluster.rs.

#![cfg(test)]

use super::client::{shared, Device, Frame};
use super::{Cluster, SimSettings};
use crate::cluster::doorbell::{Bell, Rung};
use crate::cluster::history::Resumed;
use crate::cluster::{RedisLink, ToRedis};
use crate::gateway::Msg;
use bytes::Bytes;
use serde_json::json;
use shard::ConnId;

/// The Redis thread's end of the queue, played by the test.
struct FakeRedis {
    requests: tokio::sync::mpsc::Receiver<ToRedis>,
}

/// A read the shard asked for.
struct Read {
    conn: ConnId,
    read: u64,
    user: String,
    since: Option<(u64, u64)>,
}

/// With `redis_timeout_ms` 500 a shard waits 3 s for an answer.
const ANSWER_TIMEOUT_MS: u64 = 3_000;

fn cluster_with_redis() -> (Cluster, FakeRedis) {
    let (link, requests) = RedisLink::bounded(500, 5_000);
    assert_eq!(link.answer_timeout_ms(), ANSWER_TIMEOUT_MS);
    let mut shared = shared();
    shared.redis = Some(link);
    let settings = SimSettings {
        shards: 1,
        ..SimSettings::default()
    };
    (Cluster::new(shared, settings), FakeRedis { requests })
}

impl FakeRedis {
    /// The next history read asked for (presence writes before it are
    /// skipped).
    fn read(&mut self) -> Read {
        loop {
            match self
                .requests
                .try_recv()
                .expect("a request for the Redis thread")
            {
                ToRedis::Resume {
                    conn,
                    read,
                    user,
                    since,
                    ..
                } => {
                    return Read {
                        conn,
                        read,
                        user,
                        since,
                    }
                }
                ToRedis::PresenceUpdate { .. } => continue,
                _ => panic!("unexpected request"),
            }
        }
    }

    /// No read is waiting.
    fn no_read(&mut self) {
        while let Ok(request) = self.requests.try_recv() {
            assert!(
                matches!(request, ToRedis::PresenceUpdate { .. }),
                "a read was asked for"
            );
        }
    }
}

fn answer(c: &mut Cluster, read: &Read, resumed: Result<Resumed, String>) {
    c.inject(
        0,
        Msg::Resumed {
            conn: read.conn,
            read: read.read,
            result: resumed.map(Box::new),
        },
    );
}

fn history(epoch: u64, last_seq: u64, recovered: Option<bool>, replay: &[u64]) -> Resumed {
    Resumed {
        epoch,
        last_seq,
        recovered,
        replay: replay
            .iter()
            .map(|&seq| (seq, Bytes::from(seq.to_string())))
            .collect(),
    }
}

fn ring(c: &mut Cluster, user: &str, epoch: u64, seq: u64, previous_seq: u64) {
    let bell = Bell {
        rungs: vec![Rung {
            user: user.to_owned(),
            epoch,
            seq,
            previous_seq,
        }],
        payload: Bytes::from(seq.to_string()),
    };
    c.inject(0, Msg::Bell(Box::new(bell)));
}

fn seqs(d: &mut Device, c: &mut Cluster) -> Vec<u64> {
    d.pushes(c)
        .into_iter()
        .map(|(seq, data)| {
            assert_eq!(data, json!(seq), "each push carries its own payload");
            seq
        })
        .collect()
}

#[test]
fn the_welcome_comes_from_the_history_after_the_devices_presence() {
    let (mut c, mut redis) = cluster_with_redis();
    let mut d = c.upgraded(0, "alice", None);
    assert!(
        d.frames(&mut c).is_empty(),
        "no welcome before Redis answers"
    );
    // Presence first, then the read, on the one queue.
    let Ok(ToRedis::PresenceUpdate { devices, .. }) = redis.requests.try_recv() else {
        panic!("the device's presence is written before its history is read");
    };
    assert_eq!(devices, [("alice".to_owned(), 1)]);
    let read = redis.read();
    assert_eq!((read.user.as_str(), read.since), ("alice", None));
    answer(&mut c, &read, Ok(history(9, 3, None, &[])));
    let welcome = d.read_welcome(&mut c);
    assert_eq!(
        (welcome["epoch"].clone(), welcome["seq"].clone()),
        (json!(9), json!(3))
    );
    assert_eq!(welcome.get("recovered"), None);
    ring(&mut c, "alice", 9, 4, 3);
    assert_eq!(seqs(&mut d, &mut c), [4]);
    ring(&mut c, "alice", 9, 4, 3);
    assert_eq!(seqs(&mut d, &mut c), [] as [u64; 0], "a duplicate doorbell");
    c.check_invariants();
}

#[test]
fn a_push_rung_while_the_welcome_waits_is_repaired_after_it() {
    let (mut c, mut redis) = cluster_with_redis();
    let mut d = c.upgraded(0, "bob", None);
    let read = redis.read();
    // Stored after the read ran: rung before its answer arrives.
    ring(&mut c, "bob", 9, 5, 3);
    answer(&mut c, &read, Ok(history(9, 3, None, &[])));
    assert_eq!(d.read_welcome(&mut c)["seq"], 3);
    let repair = redis.read();
    assert_eq!(repair.since, Some((9, 3)));
    answer(&mut c, &repair, Ok(history(9, 5, Some(true), &[5])));
    assert_eq!(seqs(&mut d, &mut c), [5]);
    redis.no_read();
}

#[test]
fn a_lost_doorbell_is_repaired_in_order_and_later_rings_wait_for_it() {
    let (mut c, mut redis) = cluster_with_redis();
    let mut d = c.upgraded(0, "carol", None);
    let read = redis.read();
    answer(&mut c, &read, Ok(history(9, 7, None, &[])));
    d.read_welcome(&mut c);
    // Push 9 was never rung here: 12 says its previous is 9.
    ring(&mut c, "carol", 9, 12, 9);
    assert_eq!(seqs(&mut d, &mut c), [] as [u64; 0]);
    let repair = redis.read();
    assert_eq!(repair.since, Some((9, 7)));
    // Rung during the repair: not sent ahead of 9 and 12.
    ring(&mut c, "carol", 9, 13, 12);
    assert_eq!(seqs(&mut d, &mut c), [] as [u64; 0]);
    // The read ran before 13 was stored: another read after it.
    answer(&mut c, &repair, Ok(history(9, 12, Some(true), &[9, 12])));
    assert_eq!(seqs(&mut d, &mut c), [9, 12]);
    let again = redis.read();
    assert_eq!(again.since, Some((9, 12)));
    answer(&mut c, &again, Ok(history(9, 13, Some(true), &[13])));
    assert_eq!(seqs(&mut d, &mut c), [13]);
    ring(&mut c, "carol", 9, 14, 13);
    assert_eq!(seqs(&mut d, &mut c), [14]);
    redis.no_read();
}

#[test]
fn a_history_that_disagrees_makes_the_device_resume() {
    let (mut c, mut redis) = cluster_with_redis();
    let mut d = c.upgraded(0, "dave", None);
    let read = redis.read();
    answer(&mut c, &read, Ok(history(9, 2, None, &[])));
    d.read_welcome(&mut c);
    ring(&mut c, "dave", 10, 1, 0);
    assert_eq!(d.frames(&mut c), [Frame::Close(1012)], "a new epoch");

    // A repair the history cannot make (entries gone): resume too.
    let mut e = c.upgraded(0, "erin", None);
    let read = redis.read();
    answer(&mut c, &read, Ok(history(9, 2, None, &[])));
    e.read_welcome(&mut c);
    ring(&mut c, "erin", 9, 8, 6);
    let repair = redis.read();
    answer(&mut c, &repair, Ok(history(9, 8, Some(false), &[])));
    assert_eq!(e.frames(&mut c), [Frame::Close(1012)]);
    c.check_invariants();
}

#[test]
fn a_resume_is_replayed_from_the_history_or_told_it_lost_something() {
    let (mut c, mut redis) = cluster_with_redis();
    let mut d = c.upgraded(0, "frank", Some("9:4"));
    let read = redis.read();
    assert_eq!(read.since, Some((9, 4)));
    answer(&mut c, &read, Ok(history(9, 8, Some(true), &[6, 8])));
    let welcome = d.read_welcome(&mut c);
    assert_eq!(
        (welcome["recovered"].clone(), welcome["seq"].clone()),
        (json!(true), json!(8))
    );
    assert_eq!(seqs(&mut d, &mut c), [6, 8]);
    ring(&mut c, "frank", 9, 10, 8);
    assert_eq!(seqs(&mut d, &mut c), [10]);

    let mut lost = c.upgraded(0, "frank", Some("3:4"));
    let read = redis.read();
    answer(&mut c, &read, Ok(history(9, 10, Some(false), &[])));
    let welcome = lost.read_welcome(&mut c);
    assert_eq!(
        (welcome["recovered"].clone(), welcome["seq"].clone()),
        (json!(false), json!(10))
    );
    ring(&mut c, "frank", 9, 11, 10);
    assert_eq!(seqs(&mut lost, &mut c), [11]);
    assert_eq!(seqs(&mut d, &mut c), [11], "both devices of the user");
}

#[test]
fn redis_failing_or_silent_at_join_closes_with_1013_and_late_answers_go_nowhere() {
    let (mut c, mut redis) = cluster_with_redis();
    let mut d = c.upgraded(0, "gina", None);
    let read = redis.read();
    answer(
        &mut c,
        &read,
        Err("Redis unavailable: connection refused".into()),
    );
    assert_eq!(
        d.frames(&mut c),
        [Frame::Close(1013)],
        "never a welcome that guesses"
    );
    c.check_invariants();

    let mut silent = c.upgraded(0, "gina", None);
    let late = redis.read();
    c.advance(ANSWER_TIMEOUT_MS + 200);
    assert_eq!(silent.frames(&mut c), [Frame::Close(1013)]);
    c.check_invariants();
    // The slot is reused by a new device; the old answer finds nothing.
    let mut next = c.upgraded(0, "gina", None);
    let own = redis.read();
    assert_eq!(own.conn.index(), late.conn.index(), "the slot was reused");
    assert_ne!(own.conn, late.conn);
    answer(&mut c, &late, Ok(history(9, 1, None, &[])));
    assert!(
        next.frames(&mut c).is_empty(),
        "not welcomed by another's answer"
    );
    answer(&mut c, &own, Ok(history(9, 2, None, &[])));
    assert_eq!(next.read_welcome(&mut c)["seq"], 2);
    // An answer for a device that left is dropped.
    let gone = c.upgraded(0, "gina", None);
    let read = redis.read();
    c.hang_up(gone.socket);
    answer(&mut c, &read, Ok(history(9, 2, None, &[])));
    c.check_invariants();
}

/// A broadcast with Redis goes to the Redis thread (stored once per
/// partition there) and its counts answer the request; its bell reaches
/// each device as the next push, or repairs one that missed a push named
/// by the bell's "pushed since".
#[test]
fn a_broadcast_goes_through_redis_and_each_device_gets_it_in_order() {
    use crate::cluster::broadcast::{BroadcastBell, Place};
    let (mut c, mut redis) = cluster_with_redis();
    let mut d = c.upgraded(0, "dora", None);
    let read = redis.read();
    answer(&mut c, &read, Ok(history(9, 5, None, &[])));
    d.read_welcome(&mut c);

    let request = super::client::admin_request(&c, "POST", "/v1/push", r#"{"all":true,"data":1}"#);
    let socket = c.admin_send(0, &request);
    let ticket = loop {
        match redis.requests.try_recv().expect("the broadcast for Redis") {
            ToRedis::Broadcast {
                ticket, payload, ..
            } => {
                assert_eq!(payload, "1");
                break ticket;
            }
            ToRedis::PresenceUpdate { .. } => continue,
            _ => panic!("unexpected request"),
        }
    };
    assert_eq!(super::client::admin_answer(&mut c, socket), None);
    let counts = crate::gateway::home::Counts {
        delivered: 3,
        ..Default::default()
    };
    c.inject(0, Msg::Pushed { ticket, counts });
    let (status, body) = super::client::admin_answer(&mut c, socket).expect("answered");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"delivered\":3"), "{body}");

    // One partition: every user is in it.
    let bell = |seq: u64, previous_seq: u64, pushed: &[(&str, u64)]| {
        let bell = BroadcastBell {
            places: vec![Place {
                epoch: 9,
                seq,
                previous_seq,
            }],
            pushed_since: pushed.iter().map(|(u, s)| (u.to_string(), *s)).collect(),
            payload: Bytes::from(seq.to_string()),
        };
        Msg::BroadcastBell(std::sync::Arc::new(bell))
    };
    c.inject(0, bell(8, 2, &[("dora", 5)]));
    assert_eq!(seqs(&mut d, &mut c), [8], "the next after push 5");
    c.inject(0, bell(8, 2, &[("dora", 5)]));
    assert_eq!(seqs(&mut d, &mut c), [] as [u64; 0], "a duplicate");
    // Push 9 was stored for dora but its doorbell is late or lost.
    c.inject(0, bell(10, 8, &[("dora", 9)]));
    assert_eq!(seqs(&mut d, &mut c), [] as [u64; 0]);
    let repair = redis.read();
    assert_eq!(repair.since, Some((9, 8)));
    answer(&mut c, &repair, Ok(history(9, 10, Some(true), &[9, 10])));
    assert_eq!(seqs(&mut d, &mut c), [9, 10]);
    ring(&mut c, "dora", 9, 9, 8);
    assert_eq!(seqs(&mut d, &mut c), [] as [u64; 0], "the late doorbell");
    redis.no_read();
    c.check_invariants();
}

#[test]
fn an_sse_device_is_welcomed_and_replayed_from_the_history_too() {
    let (mut c, mut redis) = cluster_with_redis();
    let socket = c
        .connect(0, crate::gateway::CLIENT_LISTENER)
        .expect("client listener");
    let request = c.sse_request("sam", Some("9:4"), None);
    c.write(socket, &request);
    let head = String::from_utf8(c.read(socket)).expect("text");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "the head alone while the welcome waits: {head:?}"
    );
    let read = redis.read();
    assert_eq!(read.since, Some((9, 4)));
    answer(&mut c, &read, Ok(history(9, 6, Some(true), &[6])));
    ring(&mut c, "sam", 9, 7, 6);
    let mut events = Vec::new();
    crate::sse::EventReader::default().feed(&c.read(socket), |item| {
        if let crate::sse::Item::Event(event) = item {
            events.push(event);
        }
    });
    let ids: Vec<Option<&str>> = events.iter().map(|e| e.id.as_deref()).collect();
    // The welcome's id is where the device stands before its replay.
    assert_eq!(ids, [Some("9:4"), Some("9:6"), Some("9:7")]);
    let welcome: serde_json::Value = serde_json::from_str(&events[0].data).expect("JSON");
    assert_eq!(
        (welcome["recovered"].clone(), welcome["seq"].clone()),
        (json!(true), json!(6))
    );
    let push: serde_json::Value = serde_json::from_str(&events[2].data).expect("JSON");
    assert_eq!(
        (push["seq"].clone(), push["data"].clone()),
        (json!(7), json!(7))
    );
}

impl FakeRedis {
    /// The next history check asked for (presence writes are skipped).
    fn check(&mut self) -> (u64, Vec<String>) {
        loop {
            match self.requests.try_recv().expect("a history check") {
                ToRedis::Check { batch, users, .. } => return (batch, users),
                ToRedis::PresenceUpdate { .. } => continue,
                _ => panic!("unexpected request"),
            }
        }
    }
}

#[test]
fn the_periodic_check_repairs_a_device_a_lost_doorbell_left_behind() {
    let (mut c, mut redis) = cluster_with_redis();
    let mut d = c.upgraded(0, "dave", None);
    let read = redis.read();
    answer(&mut c, &read, Ok(history(9, 3, None, &[])));
    d.read_welcome(&mut c);
    // A round starts once the interval (5 s) has passed.
    c.advance(5_200);
    let (batch, users) = redis.check();
    assert_eq!(users, ["dave"]);
    // Up to date: nothing to read; a stale batch number is dropped.
    c.inject(
        0,
        Msg::Checked {
            batch,
            result: Ok(vec![Some((9, 3))]),
        },
    );
    redis.no_read();
    c.advance(5_200);
    let (batch, _) = redis.check();
    c.inject(
        0,
        Msg::Checked {
            batch: batch + 100,
            result: Ok(vec![Some((9, 5))]),
        },
    );
    redis.no_read();
    // Pushes 4 and 5 stored, never rung here: repaired from the history.
    c.inject(
        0,
        Msg::Checked {
            batch,
            result: Ok(vec![Some((9, 5))]),
        },
    );
    let repair = redis.read();
    assert_eq!(repair.since, Some((9, 3)));
    answer(&mut c, &repair, Ok(history(9, 5, Some(true), &[4, 5])));
    assert_eq!(seqs(&mut d, &mut c), [4, 5]);
    ring(&mut c, "dave", 9, 6, 5);
    assert_eq!(seqs(&mut d, &mut c), [6], "live again");
    c.check_invariants();
}
