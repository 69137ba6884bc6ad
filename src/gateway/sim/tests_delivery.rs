//! Delivery in the in-memory driver: seq, mailboxes, resume and replay,
//! slow consumers, broadcasts, expiry and the bounds on stored state.

#![cfg(test)]

use super::client::{admin_request, cluster, shared, user_homed_on, Frame};
use super::{Cluster, SimSettings};
use serde_json::json;

fn seqs(pushes: &[(u64, serde_json::Value)]) -> Vec<u64> {
    pushes.iter().map(|(s, _)| *s).collect()
}

fn data(pushes: &[(u64, serde_json::Value)]) -> Vec<serde_json::Value> {
    pushes.iter().map(|(_, d)| d.clone()).collect()
}

#[test]
fn a_push_reaches_every_device_of_the_user_wherever_it_connected() {
    let mut c = cluster(3);
    let user = user_homed_on("multi", 2, 3);
    let mut phone = c.device(0, &user, None);
    let mut console = c.device(1, &user, None);
    let mut p = c.publisher(0);
    assert_eq!(p.push(&mut c, &[&user], r#"{"hi":1}"#), (1, 0, 0));
    for d in [&mut phone, &mut console] {
        let got = d.pushes(&mut c);
        assert_eq!(data(&got), [json!({"hi": 1})]);
        assert_eq!(seqs(&got), [1]);
    }
}

#[test]
fn seqs_increase_for_each_user_and_the_welcome_says_the_last() {
    let mut c = cluster(2);
    let mut p = c.publisher(1);
    for i in 0..5 {
        p.push(&mut c, &["seq-user", "other"], &i.to_string());
    }
    let d = c.device(0, "seq-user", None);
    assert_eq!(d.welcome["seq"], 5);
}

#[test]
fn an_offline_user_gets_what_was_stored_on_resume_in_order() {
    let mut c = cluster(2);
    let mut p = c.publisher(0);
    let first = c.device(1, "away", None);
    let since = first.since(0);
    c.hang_up(first.socket);
    for i in 0..3 {
        assert_eq!(p.push(&mut c, &["away"], &i.to_string()), (0, 1, 0));
    }
    let mut back = c.device(0, "away", Some(&since));
    assert_eq!(back.welcome["recovered"], true);
    let got = back.pushes(&mut c);
    assert_eq!(data(&got), [json!(0), json!(1), json!(2)]);
    assert!(seqs(&got).windows(2).all(|w| w[0] < w[1]));
    assert_eq!(back.welcome["seq"], got.last().unwrap().0);
}

#[test]
fn a_resume_merges_the_users_pushes_and_the_broadcasts_by_seq() {
    let mut c = cluster(1);
    let d = c.device(0, "mixed", None);
    let _stay = c.device(0, "stay", None); // broadcasts need someone online
    let since = d.since(0);
    c.hang_up(d.socket);
    let mut p = c.publisher(0);
    p.push(&mut c, &["mixed"], r#""a""#);
    p.broadcast(&mut c, r#""all-1""#);
    p.push(&mut c, &["mixed"], r#""b""#);
    p.broadcast(&mut c, r#""all-2""#);
    let mut back = c.device(0, "mixed", Some(&since));
    let got = back.pushes(&mut c);
    assert_eq!(
        data(&got),
        [json!("a"), json!("all-1"), json!("b"), json!("all-2")]
    );
}

/// A replay larger than the send queue continues as the device reads;
/// pushes that arrive meanwhile wait in the mailbox and come after it, in
/// order, exactly once.
#[test]
fn live_pushes_wait_behind_a_replay_that_outgrows_the_send_queue() {
    let mut c = Cluster::new(
        shared(),
        SimSettings {
            shards: 2,
            send_queue_bytes_max: 2_000,
            ..SimSettings::default()
        },
    );
    let mut p = c.publisher(0);
    let d = c.device(0, "replayed", None);
    let since = d.since(0);
    c.hang_up(d.socket);
    let pad = "x".repeat(400);
    for i in 0..20 {
        p.push(
            &mut c,
            &["replayed"],
            &format!(r#"{{"i":{i},"pad":"{pad}"}}"#),
        );
    }
    // Connect without reading: the replay fills the queue and waits.
    let mut back = c.device(1, "replayed", Some(&since));
    let s = back.socket;
    c.socket_mut(s).reading = false;
    for i in 20..25 {
        let (delivered, stored, _) = p.push(&mut c, &["replayed"], &format!(r#"{{"i":{i}}}"#));
        assert_eq!((delivered, stored), (1, 0), "replaying counts as delivered");
    }
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(back.pushes(&mut c));
    }
    let order: Vec<u64> = got.iter().map(|(_, d)| d["i"].as_u64().unwrap()).collect();
    assert_eq!(order, (0..25).collect::<Vec<_>>());
    assert!(seqs(&got).windows(2).all(|w| w[0] < w[1]));
    assert!(!c.gateway(0).sessions.holds_work(c.server_end(s).unwrap().1));
}

#[test]
fn a_device_that_stops_reading_is_cut_with_1013_and_loses_nothing() {
    let mut c = Cluster::new(
        shared(),
        SimSettings {
            shards: 2,
            send_queue_bytes_max: 4_000,
            ..SimSettings::default()
        },
    );
    let mut p = c.publisher(1);
    let mut d = c.device(0, "slow", None);
    let mut bystander = c.device(1, "fast", None);
    c.socket_mut(d.socket).reading = false;
    let pad = "y".repeat(1_000);
    let mut cut_at = None;
    for i in 0..30 {
        let (delivered, stored, _) = p.push(
            &mut c,
            &["slow", "fast"],
            &format!(r#"{{"i":{i},"pad":"{pad}"}}"#),
        );
        if stored == 1 && cut_at.is_none() {
            cut_at = Some(i);
        }
        assert_eq!(delivered + stored, 2);
    }
    let cut_at = cut_at.expect("cut");
    assert!(c.is_closed(d.socket));
    let frames = d.frames(&mut c);
    assert_eq!(frames.last(), Some(&Frame::Close(1013)));
    let seen: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Text(t) => serde_json::from_str::<serde_json::Value>(t).ok(),
            _ => None,
        })
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(bystander.pushes(&mut c).len(), 30, "the bystander got all");
    // It resumes after the last push it read and gets the rest.
    let last_seen = seen.last().copied().unwrap_or(0);
    let mut back = c.device(1, "slow", Some(&d.since(last_seen)));
    assert_eq!(back.welcome["recovered"], true);
    let rest = back.pushes(&mut c);
    assert_eq!(rest.len(), 30 - seen.len(), "cut at push {cut_at}");
    c.check_invariants();
}

#[test]
fn a_mailbox_expires_after_retention_and_the_user_is_forgotten() {
    let mut c = cluster(2);
    let d = c.device(0, "expiring", None);
    let since = d.since(0);
    c.hang_up(d.socket);
    let mut p = c.publisher(0);
    p.push(&mut c, &["expiring"], "1");
    let home = crate::route::home_shard("expiring", 2);
    assert_eq!(c.gateway(home).home.status().mailbox_entries, 1);
    c.advance(120_100);
    let status = c.gateway(home).home.status();
    assert_eq!((status.mailbox_entries, status.mailboxes_nonempty), (0, 0));
    assert_eq!(status.users, 0, "forgotten");
    assert_eq!(status.stored_bytes, 0, "the push is freed");
    let back = c.device(0, "expiring", Some(&since));
    assert_eq!(back.welcome["recovered"], false, "what expired is a gap");
}

#[test]
fn a_user_back_within_retention_is_recovered_even_with_nothing_new() {
    let mut c = cluster(1);
    let d = c.device(0, "brief", None);
    let since = d.since(0);
    c.hang_up(d.socket);
    c.advance(60_000);
    let back = c.device(0, "brief", Some(&since));
    assert_eq!(back.welcome["recovered"], true);
}

#[test]
fn entries_past_the_mailbox_bound_are_evicted_and_a_resume_across_them_is_a_gap() {
    let mut c = cluster(1);
    let d = c.device(0, "full", None);
    let since = d.since(0);
    c.hang_up(d.socket);
    let mut p = c.publisher(0);
    for i in 0..70 {
        p.push(&mut c, &["full"], &i.to_string());
    }
    assert_eq!(c.gateway(0).home.status().mailbox_entries, 64);
    let back = c.device(0, "full", Some(&since));
    assert_eq!(back.welcome["recovered"], false);
    // Resuming from the oldest kept entry's predecessor is complete.
    let mut again = c.device(0, "full", Some(&format!("{}:6", back.welcome["epoch"])));
    assert_eq!(again.welcome["recovered"], true);
    assert_eq!(again.pushes(&mut c).len(), 64);
}

#[test]
fn a_resume_from_another_epoch_or_from_the_future_is_not_recovered() {
    let mut c = cluster(1);
    let mut p = c.publisher(0);
    p.push(&mut c, &["e"], "1");
    let mut other_epoch = c.device(0, "e", Some("12345:0"));
    assert_eq!(other_epoch.welcome["recovered"], false);
    assert!(other_epoch.pushes(&mut c).is_empty(), "no replay");
    let future = c.device(0, "e", Some(&format!("{}:99", super::client::EPOCH)));
    assert_eq!(future.welcome["recovered"], false);
}

#[test]
fn a_broadcast_reaches_every_device_on_every_shard_once() {
    let mut c = cluster(3);
    let mut devices: Vec<_> = (0..12)
        .map(|i| c.device(i % 3, &format!("b{}", i % 9), None))
        .collect();
    let mut p = c.publisher(2);
    let (delivered, stored, rejected) = p.broadcast(&mut c, r#""hello all""#);
    assert_eq!((delivered, stored, rejected), (9, 0, 0), "counted per user");
    for d in &mut devices {
        assert_eq!(data(&d.pushes(&mut c)), [json!("hello all")]);
    }
    let status: u64 = (0..3)
        .map(|s| c.gateway(s).home.status().broadcast_log_entries)
        .sum();
    assert_eq!(status, 3, "stored once per shard");
}

#[test]
fn a_user_listed_twice_gets_the_push_once() {
    let mut c = cluster(2);
    let mut d = c.device(0, "twice", None);
    let mut p = c.publisher(1);
    assert_eq!(p.push(&mut c, &["twice", "other", "twice"], "1"), (1, 1, 0));
    assert_eq!(d.pushes(&mut c).len(), 1);
}

#[test]
fn invalid_user_ids_are_rejected_with_the_reason() {
    let mut c = cluster(2);
    let mut p = c.publisher(0);
    let long = "x".repeat(1000);
    assert_eq!(p.push(&mut c, &["", "ok", &long], "1"), (0, 1, 2));
    let body = r#"{"users":["", "fine"],"data":1}"#;
    let req = admin_request(&c, "POST", "/v1/push", body);
    let (status, answer) = c.admin(0, &req).expect("answered");
    assert_eq!(status, 200);
    assert!(answer.contains(r#""rejected":1"#), "{answer}");
    assert!(answer.contains("invalid user ID"), "{answer}");
}

#[test]
fn offline_users_past_their_bound_are_rejected_and_online_ones_still_served() {
    let mut shared = shared();
    shared.home.offline_users_max = 10;
    let mut c = Cluster::new(
        shared,
        SimSettings {
            shards: 1,
            ..SimSettings::default()
        },
    );
    let mut online = c.device(0, "online", None);
    let mut p = c.publisher(0);
    for i in 0..10 {
        assert_eq!(p.push(&mut c, &[&format!("off{i}")], "1"), (0, 1, 0));
    }
    assert_eq!(p.push(&mut c, &["off-new", "online"], "2"), (1, 0, 1));
    assert_eq!(
        p.push(&mut c, &["off3"], "3"),
        (0, 1, 0),
        "known ones still stored"
    );
    assert_eq!(online.pushes(&mut c).len(), 1);
    let req = admin_request(&c, "POST", "/v1/push", r#"{"users":["another"],"data":1}"#);
    let (_, answer) = c.admin(0, &req).unwrap();
    assert!(answer.contains("offline users at their bound"), "{answer}");
    // Retention frees them, and the bound admits new ones again.
    c.advance(120_100);
    assert_eq!(p.push(&mut c, &["off-new"], "4"), (0, 1, 0));
}

#[test]
fn stored_bytes_past_their_bound_reject_offline_users_and_mark_a_gap_for_online_ones() {
    let mut shared = shared();
    shared.home.stored_bytes_max = 10_000;
    let mut c = Cluster::new(
        shared,
        SimSettings {
            shards: 1,
            ..SimSettings::default()
        },
    );
    let mut p = c.publisher(0);
    let pad = format!(r#""{}""#, "z".repeat(3_000));
    for _ in 0..3 {
        assert_eq!(p.push(&mut c, &["heavy"], &pad), (0, 1, 0));
    }
    assert_eq!(
        p.push(&mut c, &["heavy"], &pad),
        (0, 0, 1),
        "over the bound"
    );
    let mut d = c.device(0, "live", None);
    let since = d.since(0);
    assert_eq!(
        p.push(&mut c, &["live"], &pad),
        (1, 0, 0),
        "delivered anyway"
    );
    assert_eq!(d.pushes(&mut c).len(), 1);
    c.hang_up(d.socket);
    let back = c.device(0, "live", Some(&since));
    assert_eq!(back.welcome["recovered"], false, "it was not kept");
    assert!(c.gateway(0).home.status().stored_bytes <= 10_000);
}

#[test]
fn over_the_memory_mark_pushes_to_offline_users_are_rejected() {
    let mut c = cluster(2);
    let mut d = c.device(0, "on", None);
    let mut p = c.publisher(0);
    c.shared.control.set_overloaded(true);
    assert_eq!(p.push(&mut c, &["on", "off"], "1"), (1, 0, 1));
    assert_eq!(d.pushes(&mut c).len(), 1);
    let req = admin_request(&c, "POST", "/v1/push", r#"{"users":["off"],"data":1}"#);
    let (_, answer) = c.admin(0, &req).unwrap();
    assert!(answer.contains("memory"), "{answer}");
    c.shared.control.set_overloaded(false);
    assert_eq!(p.push(&mut c, &["off"], "1"), (0, 1, 0));
}

#[test]
fn memory_comes_back_when_offline_users_expire() {
    let mut c = cluster(1);
    let mut p = c.publisher(0);
    let names: Vec<String> = (0..900).map(|i| format!("burst{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for chunk in names.chunks(300) {
        assert_eq!(p.push(&mut c, chunk, "1").1, 300);
    }
    assert_eq!(c.gateway(0).home.status().users, 900);
    c.advance(120_100);
    let status = c.gateway(0).home.status();
    assert_eq!(
        (status.users, status.stored_bytes, status.mailbox_entries),
        (0, 0, 0)
    );
}

/// Pushes to offline users routed to a shard before it accepted anything
/// must survive its first connection (issue 10, finding 3).
#[test]
fn pushes_stored_before_a_shards_first_connection_survive_it() {
    let mut c = cluster(2);
    let user = user_homed_on("early", 1, 2);
    let mut p = c.publisher(0);
    assert_eq!(p.push(&mut c, &[&user], r#""before""#), (0, 1, 0));
    let mut d = c.device(1, &user, Some(&format!("{}:0", super::client::EPOCH)));
    assert_eq!(d.welcome["recovered"], true);
    assert_eq!(data(&d.pushes(&mut c)), [json!("before")]);
    c.hang_up(d.socket);
    c.advance(120_100);
    assert_eq!(c.gateway(1).home.status().mailbox_entries, 0);
}

#[test]
fn a_replay_that_falls_behind_the_mailbox_is_cut_with_1013() {
    let mut c = Cluster::new(
        shared(),
        SimSettings {
            shards: 1,
            send_queue_bytes_max: 500,
            ..SimSettings::default()
        },
    );
    let mut p = c.publisher(0);
    let d = c.device(0, "lagging", None);
    let since = d.since(0);
    c.hang_up(d.socket);
    for i in 0..10 {
        p.push(
            &mut c,
            &["lagging"],
            &format!(r#""{i}{}""#, "p".repeat(200)),
        );
    }
    let mut back = c.device(0, "lagging", Some(&since));
    c.socket_mut(back.socket).reading = false;
    // 70 more evict everything the replay had not reached.
    for i in 0..70 {
        p.push(&mut c, &["lagging"], &i.to_string());
    }
    let frames = back.frames(&mut c);
    assert_eq!(frames.last(), Some(&Frame::Close(1013)), "{frames:?}");
    c.check_invariants();
}
