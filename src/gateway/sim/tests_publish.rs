//! Publishers in the in-memory driver: requests across shards, replies in
//! order, tickets that time out or are cancelled, presence and status,
//! and the bounds on what one publisher can hold.

#![cfg(test)]

use super::client::{admin_request, cluster, shared, user_homed_on};
use super::{Cluster, SimSettings};
use crate::gateway::publish::publishers::OUTSTANDING_MAX;
use crate::gateway::{ADMIN_LISTENER, CLIENT_LISTENER};
use crate::push::wire::{self, Reply, Request, DRAIN_CONFIRM};

fn push(id: u64, users: &[&str], data: &str) -> Request {
    Request::Push {
        id,
        users: users.iter().map(|u| u.to_string()).collect(),
        data: data.into(),
    }
}

fn pushed_ids(replies: &[Reply]) -> Vec<u64> {
    replies
        .iter()
        .map(|r| match r {
            Reply::Pushed { id, .. } => *id,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn pipelined_requests_are_answered_in_request_order_across_shards() {
    let mut c = cluster(4);
    let mut p = c.publisher(0);
    let here = user_homed_on("here", 0, 4);
    let there = user_homed_on("there", 3, 4);
    c.hold(3, true);
    p.send(
        &mut c,
        &[
            push(1, &[&there], "1"),
            push(2, &[&here], "2"),
            push(3, &[&here, &there], "3"),
        ],
    );
    assert!(p.replies(&mut c).is_empty(), "the first waits for shard 3");
    c.hold(3, false);
    assert_eq!(pushed_ids(&p.replies(&mut c)), [1, 2, 3]);
}

#[test]
fn a_request_whose_shard_does_not_answer_is_replied_at_its_deadline() {
    let mut c = cluster(2);
    let mut p = c.publisher(0);
    let far = user_homed_on("far", 1, 2);
    c.hold(1, true);
    p.send(&mut c, &[push(9, &[&far, "x0"], "1")]);
    c.advance(4_900);
    assert!(p.replies(&mut c).is_empty());
    c.advance(200);
    let replies = p.replies(&mut c);
    let [Reply::Pushed {
        id: 9,
        delivered,
        stored,
        rejected,
    }] = replies.as_slice()
    else {
        panic!("{replies:?}")
    };
    let here = (crate::route::home_shard("x0", 2) == 0) as u32;
    assert_eq!((*delivered, *stored, *rejected), (0, here, 2 - here));
    // The late part arrives and changes nothing.
    c.hold(1, false);
    assert!(p.replies(&mut c).is_empty());
    assert_eq!(c.pending()["tickets"], 0);
}

#[test]
fn a_full_shard_queue_rejects_its_share_at_once() {
    let mut c = Cluster::new(
        shared(),
        SimSettings {
            shards: 2,
            mesh_queue_len: 1,
            ..SimSettings::default()
        },
    );
    let mut p = c.publisher(0);
    let far = user_homed_on("far", 1, 2);
    c.hold(1, true);
    p.send(&mut c, &[push(1, &[&far], "1"), push(2, &[&far], "2")]);
    c.hold(1, false);
    let replies = p.replies(&mut c);
    assert!(
        matches!(
            replies[0],
            Reply::Pushed {
                id: 1,
                stored: 1,
                ..
            }
        ),
        "{replies:?}"
    );
    assert!(
        matches!(
            replies[1],
            Reply::Pushed {
                id: 2,
                rejected: 1,
                ..
            }
        ),
        "{replies:?}"
    );
}

#[test]
fn presence_and_status_are_answered_by_the_shards_that_know() {
    let mut c = cluster(3);
    let user = user_homed_on("p", 2, 3);
    let _a = c.device(0, &user, None);
    let _b = c.device(1, &user, None);
    let _other = c.device(0, "someone", None);
    let mut p = c.publisher(0);
    p.send(
        &mut c,
        &[
            Request::Presence {
                id: 1,
                user: user.clone(),
            },
            Request::Presence {
                id: 2,
                user: "nobody".into(),
            },
            Request::Status { id: 3 },
        ],
    );
    let replies = p.replies(&mut c);
    assert_eq!(
        replies[0],
        Reply::Presence {
            id: 1,
            online: true,
            devices: 2
        }
    );
    assert_eq!(
        replies[1],
        Reply::Presence {
            id: 2,
            online: false,
            devices: 0
        }
    );
    let Reply::Status { id: 3, shards } = &replies[2] else {
        panic!("{replies:?}")
    };
    assert_eq!(
        shards.iter().map(|s| s.shard).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(shards.iter().map(|s| s.connections).sum::<u64>(), 3);
    assert_eq!(shards.iter().map(|s| s.users_online).sum::<u64>(), 2);
}

#[test]
fn replies_a_publisher_does_not_read_wait_and_go_out_when_it_reads() {
    let mut c = Cluster::new(
        shared(),
        SimSettings {
            shards: 1,
            send_queue_bytes_max: 200,
            ..SimSettings::default()
        },
    );
    let mut p = c.publisher(0);
    c.socket_mut(p.socket).reading = false;
    let requests: Vec<Request> = (1..=50).map(|id| push(id, &["u"], "1")).collect();
    p.send(&mut c, &requests);
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.extend(pushed_ids(&p.replies(&mut c)));
    }
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
}

#[test]
fn past_the_in_flight_bound_a_publisher_gets_one_error_and_is_closed() {
    let mut c = cluster(2);
    let mut p = c.publisher(0);
    c.socket_mut(p.socket).reading = false;
    let far = user_homed_on("far", 1, 2);
    c.hold(1, true);
    let requests: Vec<Request> = (1..=OUTSTANDING_MAX as u64 + 10)
        .map(|id| push(id, &[&far], "1"))
        .collect();
    p.send(&mut c, &requests);
    assert!(c.is_closed(p.socket));
    let replies = p.replies(&mut c);
    let errors: Vec<_> = replies
        .iter()
        .filter(|r| matches!(r, Reply::Error { .. }))
        .collect();
    assert_eq!(errors.len(), 1, "one error, not one per request");
    c.hold(1, false);
    assert_eq!(c.pending()["tickets"], 0, "its tickets went with it");
    c.check_invariants();
}

#[test]
fn a_broken_frame_closes_only_its_publisher_after_the_ready_replies() {
    let mut c = cluster(2);
    let mut bad = c.publisher(0);
    let mut good = c.publisher(0);
    let here = user_homed_on("here", 0, 2);
    let mut bytes = wire::encode_request(&push(1, &[&here], "1"));
    bytes.extend([5, 0, 0, 0, 1, 2, 3, 4, 5]);
    c.write(bad.socket, &bytes);
    let replies = bad.replies(&mut c);
    assert!(matches!(replies[0], Reply::Pushed { id: 1, .. }));
    assert!(matches!(replies[1], Reply::Error { id: 0, .. }));
    assert!(c.is_closed(bad.socket));
    assert_eq!(good.push(&mut c, &["x"], "2"), (0, 1, 0));
    // Data that is not JSON is an error for that request only.
    good.send(&mut c, &[push(5, &["x"], "{not json")]);
    assert!(matches!(
        good.replies(&mut c)[0],
        Reply::Error { id: 5, .. }
    ));
    assert!(!c.is_closed(good.socket));
}

#[test]
fn a_frame_left_unfinished_is_refused_after_the_publisher_frame_timeout() {
    let mut c = cluster(1);
    let mut p = c.publisher(0);
    let bytes = wire::encode_request(&push(1, &["x"], "1"));
    c.write(p.socket, &bytes[..bytes.len() - 3]);
    c.advance(9_900);
    assert!(!c.is_closed(p.socket));
    c.advance(200);
    assert!(c.is_closed(p.socket));
    assert!(matches!(
        p.replies(&mut c)[..],
        [Reply::Error { id: 0, .. }]
    ));
    // Whole frames in pieces over time are fine.
    let mut q = c.publisher(0);
    for _ in 0..5 {
        c.write(q.socket, &bytes[..10]);
        c.advance(5_000);
        c.write(q.socket, &bytes[10..]);
    }
    assert_eq!(pushed_ids(&q.replies(&mut c)).len(), 5);
}

#[test]
fn a_drain_request_needs_its_confirmation() {
    let mut c = cluster(1);
    let mut p = c.publisher(0);
    let drain = |confirm: &str| Request::Drain {
        id: 4,
        rate_per_s: 7,
        confirm: confirm.into(),
    };
    p.send(&mut c, &[drain("yes")]);
    assert!(matches!(
        p.replies(&mut c)[..],
        [Reply::Error { id: 4, .. }]
    ));
    assert!(!c.shared.control.is_draining());
    p.send(&mut c, &[drain(DRAIN_CONFIRM)]);
    assert_eq!(
        p.replies(&mut c),
        [Reply::Draining {
            id: 4,
            rate_per_s: 7
        }]
    );
    assert_eq!(c.shared.control.drain_rate_per_s(), 7);
}

/// A publisher that closes with requests in flight takes its tickets with
/// it: a later publisher in the same slot gets only its own replies.
#[test]
fn answers_for_a_gone_publisher_never_reach_the_next_one_in_its_slot() {
    let mut c = cluster(2);
    let far = user_homed_on("far", 1, 2);
    let old = c.publisher(0);
    c.hold(1, true);
    c.write(old.socket, &wire::encode_request(&push(111, &[&far], "1")));
    let (_, old_conn) = c.server_end(old.socket).unwrap();
    c.hang_up(old.socket);
    let mut new = c.publisher(0);
    let (_, new_conn) = c.server_end(new.socket).unwrap();
    assert_eq!(old_conn.index(), new_conn.index(), "the slot is reused");
    assert_ne!(old_conn, new_conn);
    new.send(&mut c, &[push(222, &[&far], "2")]);
    c.hold(1, false);
    assert_eq!(pushed_ids(&new.replies(&mut c)), [222]);
    assert_eq!(c.pending()["tickets"], 0);
}

/// Issue 10, finding 1, as a class: thousands of admin and publisher
/// requests whose askers close before the answer, while devices connect
/// and leave. Afterwards: no stuck upgrade, counters back to zero, no
/// ghost device, and a drain completes.
#[test]
fn close_before_answer_storms_leave_no_trace() {
    let mut c = cluster(2);
    let far = user_homed_on("far", 1, 2);
    let mut devices = Vec::new();
    for round in 0..200 {
        c.hold(1, true);
        for i in 0..5 {
            let req = admin_request(
                &c,
                "POST",
                "/v1/push",
                &format!(r#"{{"users":["{far}","u{i}"],"data":{round}}}"#),
            );
            let s = c.connect(0, ADMIN_LISTENER).unwrap();
            c.write(s, req.as_bytes());
            c.hang_up(s);
            let p = c.publisher(0);
            c.write(p.socket, &wire::encode_request(&push(round, &[&far], "1")));
            c.hang_up(p.socket);
        }
        // Clients connect into the freed slots meanwhile.
        // (Homed on shard 0: shard 1 is busy, a handoff would wait.)
        for i in 0..3 {
            let user = user_homed_on(&format!("dev{round}-{i}-"), 0, 2);
            devices.push(c.device(0, &user, None));
        }
        if round % 3 == 0 {
            let d = devices.remove(0);
            c.hang_up(d.socket);
        }
        c.hold(1, false);
        c.check_invariants();
    }
    for d in &mut devices {
        assert!(!c.is_closed(d.socket), "no device was clobbered");
        let frames = d.frames(&mut c);
        assert!(frames.is_empty(), "nothing foreign arrived: {frames:?}");
    }
    assert_eq!(c.pending()["tickets"], 0);
    assert_eq!(c.pending()["handshakes"], 0);
    c.shared.control.start_drain(1_000);
    c.advance(2_000);
    assert_eq!(c.shared.control.shards_drained(), 2, "the drain completes");
    assert!(devices.iter().all(|d| c.is_closed(d.socket)));
    c.check_invariants();
}

#[test]
fn an_admin_answer_for_a_gone_asker_is_dropped_not_sent_to_a_device_in_its_slot() {
    let mut c = cluster(2);
    let far = user_homed_on("far", 1, 2);
    c.hold(1, true);
    let s = c.admin_push_send(0, &[&far]);
    let (_, admin_conn) = c.server_end(s).unwrap();
    c.hang_up(s);
    // A client takes the slot and is mid-upgrade when the answer comes.
    let socket = c.connect(0, CLIENT_LISTENER).unwrap();
    assert_eq!(c.server_end(socket).unwrap().1.index(), admin_conn.index());
    let request = c.upgrade_request("late", None);
    c.write(socket, &request[..10]);
    c.hold(1, false);
    assert!(c.read(socket).is_empty(), "no HTTP answer leaked into it");
    c.write(socket, &request[10..]);
    assert!(String::from_utf8_lossy(&c.read(socket)).starts_with("HTTP/1.1 101"));
    c.check_invariants();
}

#[test]
fn push_socket_connections_are_capped() {
    let mut c = cluster(1);
    let publishers: Vec<_> = (0..16).map(|_| c.publisher(0)).collect();
    let mut over = c.publisher(0);
    assert!(c.is_closed(over.socket));
    let replies = over.replies(&mut c);
    assert!(
        matches!(&replies[..], [Reply::Error { id: 0, message }] if message.contains("too many")),
        "{replies:?}"
    );
    c.hang_up(publishers[0].socket);
    let mut again = c.publisher(0);
    assert_eq!(again.push(&mut c, &["x"], "1"), (0, 1, 0));
    c.check_invariants();
}

/// The drain's last step: a publisher is closed only once every request
/// it had sent before is answered — one waiting on another shard too —
/// and what it sends meanwhile is neither processed nor answered (the
/// client resends that to the next process).
#[test]
fn closing_publishers_answers_everything_read_and_nothing_after() {
    let mut c = cluster(2);
    let mut p = c.publisher(0);
    let here = user_homed_on("here", 0, 2);
    let there = user_homed_on("there", 1, 2);
    let mut device = c.device(1, &there, None);
    c.hold(1, true);
    p.send(&mut c, &[push(1, &[&here], "1"), push(2, &[&there], "2")]);
    assert_eq!(pushed_ids(&p.replies(&mut c)), [1], "2 waits for shard 1");

    c.shared.control.close_publishers();
    p.send(&mut c, &[push(3, &[&there], "3")]);
    c.advance(100);
    assert!(!c.is_closed(p.socket), "request 2 is not answered yet");
    assert!(p.replies(&mut c).is_empty());
    assert_eq!(
        c.shared.control.shards_publishers_closed(),
        1,
        "shard 1 has none"
    );

    c.hold(1, false);
    c.advance(100);
    assert_eq!(pushed_ids(&p.replies(&mut c)), [2], "3 was never processed");
    assert!(c.is_closed(p.socket));
    assert_eq!(c.shared.control.shards_publishers_closed(), 2);
    let datas: Vec<serde_json::Value> = device.pushes(&mut c).into_iter().map(|(_, d)| d).collect();
    assert_eq!(datas, [serde_json::json!(2)]);
}

/// A take-back (the successor died) ends the step, but a publisher whose
/// bytes were dropped still closes once answered: answering a later
/// request after dropping an earlier one would break the client's rule
/// that everything after the last reply was never processed.
#[test]
fn a_publisher_with_dropped_bytes_closes_even_when_the_step_is_called_off() {
    let mut c = cluster(2);
    let mut p = c.publisher(0);
    let mut other = c.publisher(0);
    let here = user_homed_on("here", 0, 2);
    c.shared.control.close_publishers();
    p.send(&mut c, &[push(1, &[&here], "1")]);
    c.shared.control.stop_drain();
    c.advance(100);
    assert!(p.replies(&mut c).is_empty(), "1 was dropped unread");
    assert!(c.is_closed(p.socket));
    assert_eq!(other.push(&mut c, &[&here], "2"), (0, 1, 0), "others go on");
}
