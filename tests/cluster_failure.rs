//! Failures of several hosts over Redis (issue 11), each while pushes flow,
//! counting every notification on real WebSocket clients
//! (`cluster/counted.rs`): real `redis-server` processes (standalone, or 3
//! masters + 3 replicas) and real `pushgate serve` processes.
//!
//! - A host SIGKILLed: its devices reconnect to the other hosts with
//!   `?since=` and resume (`recovered:true`); every push answered with
//!   counts reaches every device of its user exactly once, in order.
//! - A Redis master SIGKILLed: pushes fail for at most the failover time,
//!   then are answered delivered again and reach devices on every host.
//! - Redis unreachable (SIGSTOP): devices stay connected, pushes are
//!   answered with an error (never taken and lost), `/readyz` 503 reason
//!   `redis`, `pushgate_redis_up` 0; Redis back (SIGCONT): all of it
//!   recovers by itself and the still-connected devices get every push.
//! - One host cut off from Redis by a network partition (its own network
//!   namespace; the veth pair carrying its Redis traffic set down, the one
//!   carrying its devices left up): that host says 503 `redis` and refuses
//!   pushes, pushes through the others to its users are stored, and once
//!   the link is back its devices get every one of them.
//!
//! Each test prints what it measured (pause, failover, recovery times;
//! notifications, duplicates, pushes answered with an error and whether
//! they came anyway).

mod common;
#[path = "cluster/counted.rs"]
mod counted;
#[path = "cluster/hosts.rs"]
mod hosts;
#[path = "cluster/netns.rs"]
mod netns;
#[path = "cluster/redis_fixture.rs"]
mod redis_fixture;

use common::{Launch, Server};
use counted::{Device, Endpoint, Ledger, Publisher, Pushed, Recipients, Tally};
use hosts::{
    cluster_numsub, metric, readyz, redis_args_with_shards, standalone_numsub, wait_presence,
    wait_subscribed, NumSub,
};
use redis_fixture::{wait_for, RedisCluster, RedisServer};
use std::time::{Duration, Instant};

/// The periodic history check of every host: a doorbell lost in the
/// failure is repaired within this (plus a round), not at the next push.
const CHECK_INTERVAL_MS: &str = "300";
/// Between a push's answer and the next push of a publisher.
const PUSH_PAUSE: Duration = Duration::from_millis(10);
/// `--cluster-node-timeout` of the fixture's Redis cluster.
const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(2_000);
/// What a failover may take on top of the node timeout on a busy machine:
/// the replica's election, redis-rs refreshing its slot map, a Redis call
/// timing out (500 ms) and the doorbell subscriptions renewed (1 s).
const FAILOVER_MARGIN: Duration = Duration::from_secs(13);
/// How long devices get to receive every acknowledged push at the end.
const SETTLE: Duration = Duration::from_secs(60);

/// Each user's history keeps this many pushes: more than a publisher
/// sends during any outage here (about 100 a second), so a device that was
/// behind is owed all of them. With the default (64) a device that falls
/// further behind is told `recovered:false`, as the entry limit says.
const ENTRIES_MAX: &str = "4096";

/// `serve` arguments of host `host_id` with `shards` shards.
fn host_args<'a>(target: &'a [&'a str], host_id: &'a str, shards: &'a str) -> Vec<&'a str> {
    let mut args = redis_args_with_shards(target, host_id, shards);
    args.extend(["--redis-check-interval-ms", CHECK_INTERVAL_MS]);
    args.extend(["--mailbox-entries-max", ENTRIES_MAX]);
    args
}

/// Starts hosts `(host_id, shards)` and waits until each hears its
/// doorbells.
fn start_hosts(target: &[&str], specs: &[(&str, usize)], numsub: &NumSub<'_>) -> Vec<Server> {
    let hosts: Vec<Server> = specs
        .iter()
        .map(|(id, shards)| Server::start(&host_args(target, id, &shards.to_string())))
        .collect();
    for (id, shards) in specs {
        wait_subscribed(numsub, id, *shards);
    }
    hosts
}

/// A device of `user` on `hosts[first]` that may reconnect to any of
/// `hosts`.
fn device(hosts: &[&Server], user: &str, first: usize) -> Device {
    let endpoints = hosts.iter().map(|h| Endpoint::of(h, user)).collect();
    Device::start(user, endpoints, first)
}

fn all_of(users: &[String]) -> Recipients {
    let users = users.to_vec();
    Box::new(move |_| users.clone())
}

/// Waits until `publisher` has `n` pushes answered with counts that were
/// sent after `after`.
fn wait_acked(publisher: &Publisher, n: usize, after: Instant, what: &str) {
    wait_for(what, Duration::from_secs(60), || {
        publisher
            .pushes()
            .iter()
            .filter(|p| p.sent >= after && p.result.is_ok())
            .count()
            >= n
    });
}

/// The first push sent after `after` that `ok` accepts.
fn first_after(pushes: &[Pushed], after: Instant, ok: impl Fn(&Pushed) -> bool) -> Option<&Pushed> {
    pushes.iter().find(|p| p.sent >= after && ok(p))
}

/// Asserts that every push sent after `from` and answered before `until`
/// (Redis out of reach all that time) was answered with the error that
/// says so — not taken and lost; returns them.
fn refused_between(pushes: &[Pushed], from: Instant, until: Instant) -> Vec<&Pushed> {
    let refused: Vec<&Pushed> = pushes
        .iter()
        .filter(|p| p.sent > from && p.answered < until)
        .collect();
    for p in &refused {
        match &p.result {
            Err(why) => assert!(why.contains("Redis unavailable"), "push {}: {why}", p.k),
            Ok(counts) => panic!("push {} taken without Redis: {counts:?}", p.k),
        }
    }
    refused
}

fn delivered_to_all(p: &Pushed) -> bool {
    p.result
        .as_ref()
        .is_ok_and(|o| o.delivered == p.users.len() as u64)
}

fn report(test: &str, pushes: &[&[Pushed]], tally: &Tally) {
    let ledger = Ledger::new(pushes);
    let (ok, failed) = ledger.answers();
    let mut errors: Vec<&str> = pushes
        .iter()
        .flat_map(|p| p.iter())
        .filter_map(|p| p.result.as_ref().err().map(String::as_str))
        .collect();
    errors.sort_unstable();
    errors.dedup();
    eprintln!("{test}: the errors pushes were answered with: {errors:?}");
    eprintln!(
        "{test}: {ok} pushes answered with counts, {failed} with an error; devices read \
         {} notifications ({} acknowledged deliveries owed, all came), {} duplicates before \
         de-duplication by seq; of {} deliveries owed by pushes answered with an error \
         {} came anyway; {} excused by a recovered:false welcome",
        tally.notifications,
        tally.acked,
        tally.duplicates,
        tally.failed,
        tally.failed_arrived,
        tally.excused
    );
}

/// Counts every device's ends of connection by reason.
fn ends(devices: &[Device]) -> Vec<String> {
    devices
        .iter()
        .flat_map(|d| d.log().ends)
        .map(|(_, why)| why)
        .collect()
}

#[test]
fn a_host_killed_while_pushes_flow_its_devices_resume_on_the_others_and_get_every_push_once() {
    const TEST: &str = "a_host_killed_while_pushes_flow";
    if !redis_fixture::available(TEST) {
        return;
    }
    let cluster = RedisCluster::start();
    let seed = cluster.seed();
    let target = ["--redis-nodes", seed.as_str()];
    let numsub = cluster_numsub(&cluster);
    let mut hosts = start_hosts(&target, &[("a", 1), ("b", 2), ("c", 1)], &numsub);
    let all: Vec<&Server> = hosts.iter().collect();
    // Nine users, each with devices on two of the three hosts: six on the
    // host that dies.
    let users: Vec<String> = (0..9).map(|i| format!("kill-{i}")).collect();
    let mut devices = Vec::new();
    let mut firsts = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for first in [i % 3, (i + 1) % 3] {
            devices.push(device(&all, user, first));
            firsts.push(first);
        }
    }
    for user in &users {
        wait_presence(&hosts[0], user, 2, "every device in presence");
    }
    let started = Instant::now();
    let publisher = Publisher::start(1, hosts[0].run_dir.clone(), all_of(&users), PUSH_PAUSE);
    wait_acked(&publisher, 30, started, "pushes flowing before the kill");

    let host_c = hosts.pop().unwrap();
    let killed_at = Instant::now();
    assert!(!host_c.signal_and_wait(libc::SIGKILL).success());
    let was_on_c = |i: &usize| firsts[*i] == 2;
    wait_for(
        "the killed host's devices welcomed on another host",
        Duration::from_secs(30),
        || {
            (0..devices.len())
                .filter(was_on_c)
                .all(|i| devices[i].log().joins.iter().any(|j| j.at > killed_at))
        },
    );
    let back = Instant::now();
    wait_acked(&publisher, 30, back, "pushes flowing after the resumes");
    let pushes = publisher.stop();

    let ledger = Ledger::new(&[&pushes]);
    let tally = ledger.settle(&devices, SETTLE);
    report(TEST, &[&pushes], &tally);
    let mut resumed_in = Duration::ZERO;
    for (i, d) in devices.iter().enumerate() {
        let log = d.log();
        if !was_on_c(&i) {
            // The survivors' devices saw nothing of it.
            assert_eq!(log.joins.len(), 1, "{}: {:?}", d.user, log.ends);
            continue;
        }
        let again: Vec<_> = log.joins.iter().filter(|j| j.at > killed_at).collect();
        for join in &again {
            assert_ne!(join.endpoint, 2, "{}: {join:?}", d.user);
            assert_eq!(
                join.recovered,
                Some(true),
                "{}: resumed from the history in Redis: {join:?}",
                d.user
            );
        }
        resumed_in = resumed_in.max(again[0].at - killed_at);
    }
    eprintln!(
        "{TEST}: the killed host's {} devices were welcomed on another host within {:.2} s \
         of the SIGKILL",
        firsts.iter().filter(|&&f| f == 2).count(),
        resumed_in.as_secs_f64()
    );
    assert_eq!(
        tally.duplicates, 0,
        "a device resuming with ?since= is sent nothing it read"
    );
    assert_eq!(tally.excused, 0, "no welcome said recovered:false");
}

#[test]
fn a_redis_master_killed_while_pushes_flow_pauses_them_for_the_failover_and_delivery_resumes() {
    const TEST: &str = "a_redis_master_killed_while_pushes_flow";
    if !redis_fixture::available(TEST) {
        return;
    }
    let mut cluster = RedisCluster::start();
    let seed = cluster.seed();
    let target = ["--redis-nodes", seed.as_str()];
    let hosts = start_hosts(
        &target,
        &[("a", 1), ("b", 2), ("c", 1)],
        &cluster_numsub(&cluster),
    );
    let all: Vec<&Server> = hosts.iter().collect();
    let users: Vec<String> = (0..9).map(|i| format!("failover-{i}")).collect();
    let mut devices = Vec::new();
    for (i, user) in users.iter().enumerate() {
        for first in [i % 3, (i + 1) % 3] {
            devices.push(device(&all, user, first));
        }
    }
    for user in &users {
        wait_presence(&hosts[0], user, 2, "every device in presence");
    }
    // The victim: a master holding some user's history, not the seed the
    // hosts were given.
    let partitions = pushgate::cluster::partitions::Partitions::new(128);
    let victim = users
        .iter()
        .map(|u| {
            let meta = pushgate::cluster::keys::partition_meta(partitions.tag(partitions.of(u)));
            cluster.master_of(&meta)
        })
        .find(|&port| port != cluster.nodes[0].port)
        .expect("a user's history on a master other than the seed");
    let started = Instant::now();
    let publisher = Publisher::start(1, hosts[0].run_dir.clone(), all_of(&users), PUSH_PAUSE);
    wait_acked(&publisher, 30, started, "pushes flowing before the kill");

    let killed_at = Instant::now();
    cluster
        .nodes
        .iter_mut()
        .find(|n| n.port == victim)
        .unwrap()
        .kill();
    let bound = CLUSTER_NODE_TIMEOUT + FAILOVER_MARGIN;
    // Every push names a user on the dead master: they fail until its
    // replica took over, then are answered again, and delivered again
    // once every host hears its doorbells.
    wait_for(
        "a push answered delivered to every recipient after the failover",
        bound + Duration::from_secs(10),
        || {
            let pushes = publisher.pushes();
            let first_error = first_after(&pushes, killed_at, |p| p.result.is_err());
            first_error.is_some_and(|e| first_after(&pushes, e.sent, delivered_to_all).is_some())
        },
    );
    let back = Instant::now();
    wait_acked(&publisher, 30, back, "pushes flowing after the failover");
    let pushes = publisher.stop();
    let first_error = first_after(&pushes, killed_at, |p| p.result.is_err()).unwrap();
    let answered_again = first_after(&pushes, first_error.sent, |p| p.result.is_ok()).unwrap();
    let delivered_again = first_after(&pushes, first_error.sent, delivered_to_all).unwrap();
    let pause = answered_again.answered - killed_at;
    let delivery_pause = delivered_again.answered - killed_at;
    let errors_after_kill = pushes
        .iter()
        .filter(|p| p.sent >= killed_at && p.result.is_err())
        .count();

    let ledger = Ledger::new(&[&pushes]);
    let tally = ledger.settle(&devices, SETTLE);
    report(TEST, &[&pushes], &tally);
    let reconnects: Vec<String> = ends(&devices);
    let not_recovered = devices
        .iter()
        .flat_map(|d| d.log().joins)
        .filter(|j| j.since.is_some() && j.recovered != Some(true))
        .count();
    eprintln!(
        "{TEST}: master on port {victim} killed; pushes answered again after {:.2} s and \
         delivered to every recipient after {:.2} s ({errors_after_kill} answered with an \
         error meanwhile; cluster-node-timeout {} ms); devices' connections ended {:?}; \
         resumes with recovered other than true: {not_recovered}",
        pause.as_secs_f64(),
        delivery_pause.as_secs_f64(),
        CLUSTER_NODE_TIMEOUT.as_millis(),
        reconnects
    );
    assert!(pause <= bound, "pushes paused {pause:?}, bound {bound:?}");
    assert!(
        delivery_pause <= bound,
        "delivery paused {delivery_pause:?}, bound {bound:?}"
    );
    assert_eq!(tally.duplicates, 0, "nothing a device read is sent again");
}

#[test]
fn redis_unreachable_while_pushes_flow_keeps_devices_fails_pushes_clearly_and_recovers() {
    const TEST: &str = "redis_unreachable_while_pushes_flow";
    if !redis_fixture::available(TEST) {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    let target = ["--redis-url", url.as_str()];
    let numsub = standalone_numsub(redis.port);
    let hosts = start_hosts(&target, &[("a", 1), ("b", 2)], &numsub);
    let all: Vec<&Server> = hosts.iter().collect();
    let users: Vec<String> = (0..6).map(|i| format!("away-{i}")).collect();
    let mut devices = Vec::new();
    for user in &users {
        devices.push(device(&all, user, 0));
        devices.push(device(&all, user, 1));
    }
    for user in &users {
        wait_presence(&hosts[0], user, 2, "every device in presence");
    }
    let started = Instant::now();
    let publisher = Publisher::start(1, hosts[0].run_dir.clone(), all_of(&users), PUSH_PAUSE);
    wait_acked(&publisher, 20, started, "pushes flowing before the outage");

    // SIGSTOP: connections to Redis open, nothing answered (a hung Redis,
    // or packets dropped on the way).
    redis.signal(libc::SIGSTOP);
    // Stopped: pushes sent from here on cannot be answered by Redis.
    let stopped_at = Instant::now();
    let not_ready = r#"{"ready":false,"reason":"redis"}"#;
    for host in &hosts {
        wait_for("readyz 503 reason redis", Duration::from_secs(20), || {
            readyz(host) == (503, not_ready.to_owned())
        });
    }
    let noticed_in = stopped_at.elapsed();
    for host in &hosts {
        assert_eq!(metric(host, "pushgate_redis_up"), 0);
    }
    // The admin API says the same (push number 0; it may still be
    // stored once Redis runs again, like every push answered so).
    let sent = Instant::now();
    let (status, body) = hosts[1].admin(
        "POST",
        "/v1/push",
        Some(&hosts[1].admin_token()),
        r#"{"users":["away-0"],"data":{"k":0}}"#,
    );
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("Redis unavailable"), "{body}");
    let admin_push = [Pushed {
        k: 0,
        users: vec!["away-0".to_owned()],
        sent,
        answered: Instant::now(),
        result: Err(body),
    }];
    wait_for(
        "pushes answered with an error while Redis is away",
        Duration::from_secs(30),
        || {
            publisher
                .pushes()
                .iter()
                .filter(|p| p.sent > stopped_at && p.result.is_err())
                .count()
                >= 3
        },
    );

    let continued_at = Instant::now();
    redis.signal(libc::SIGCONT);
    for host in &hosts {
        wait_for("readyz 200 again", Duration::from_secs(30), || {
            readyz(host).0 == 200
        });
        assert_eq!(metric(host, "pushgate_redis_up"), 1);
    }
    let recovered_in = continued_at.elapsed();
    wait_for(
        "a push delivered to every recipient after Redis returned",
        Duration::from_secs(30),
        || first_after(&publisher.pushes(), continued_at, delivered_to_all).is_some(),
    );
    wait_acked(&publisher, 20, Instant::now(), "pushes flowing again");
    let pushes = publisher.stop();

    // Not accepted and lost: while Redis could not answer, no push was
    // answered with counts.
    let during = refused_between(&pushes, stopped_at, continued_at);
    let ledger = Ledger::new(&[&pushes, &admin_push]);
    let tally = ledger.settle(&devices, SETTLE);
    report(TEST, &[&pushes, &admin_push], &tally);
    eprintln!(
        "{TEST}: Redis stopped {:.2} s; both hosts said 503 redis within {:.2} s and 200 \
         again {:.2} s after it continued; {} pushes sent meanwhile, all answered with an error",
        (continued_at - stopped_at).as_secs_f64(),
        noticed_in.as_secs_f64(),
        recovered_in.as_secs_f64(),
        during.len()
    );
    // Every device kept its one connection through it all.
    for d in &devices {
        let log = d.log();
        assert_eq!(
            (log.joins.len(), log.ends.len()),
            (1, 0),
            "{}: {:?}",
            d.user,
            log.ends
        );
    }
    assert_eq!(tally.duplicates, 0);
}

#[test]
fn a_host_cut_off_from_redis_says_not_ready_refuses_pushes_and_its_devices_get_every_stored_push() {
    const TEST: &str = "a_host_cut_off_from_redis";
    if !redis_fixture::available(TEST) {
        return;
    }
    // Declared first, dropped last: after the host inside it is gone.
    let Some(ns) = netns::NetNs::create(TEST) else {
        return;
    };
    let redis = RedisServer::start_binding(&[&ns.redis_root_ip]);
    let url = redis.url();
    let target = ["--redis-url", url.as_str()];
    let numsub = standalone_numsub(redis.port);
    let mut hosts = start_hosts(&target, &[("a", 1), ("b", 2)], &numsub);
    let url_from_ns = format!("redis://{}:{}", ns.redis_root_ip, redis.port);
    let target_from_ns = ["--redis-url", url_from_ns.as_str()];
    hosts.push(Server::launch(&Launch {
        extra: &host_args(&target_from_ns, "n", "1"),
        listen_ip: &ns.client_ns_ip,
        wrapper: &ns.wrapper(),
        ..Launch::default()
    }));
    wait_subscribed(&numsub, "n", 1);
    let all: Vec<&Server> = hosts.iter().collect();
    let (host_a, host_n) = (&hosts[0], &hosts[2]);
    // Each user has a device on the cut-off host and one on a or b.
    let users: Vec<String> = (0..6).map(|i| format!("cut-{i}")).collect();
    let mut devices = Vec::new();
    for (i, user) in users.iter().enumerate() {
        devices.push(device(&all, user, 2));
        devices.push(device(&all, user, i % 2));
    }
    for user in &users {
        wait_presence(host_a, user, 2, "every device in presence");
    }
    let started = Instant::now();
    let through_a = Publisher::start(1, host_a.run_dir.clone(), all_of(&users), PUSH_PAUSE);
    let through_n = Publisher::start(2, host_n.run_dir.clone(), all_of(&users), PUSH_PAUSE);
    wait_acked(&through_a, 20, started, "pushes through a flowing");
    wait_acked(&through_n, 20, started, "pushes through n flowing");

    ns.set_redis_link(false);
    // Pushes sent from here on cannot reach Redis.
    let cut_at = Instant::now();
    wait_for("host n 503 reason redis", Duration::from_secs(20), || {
        readyz(host_n) == (503, r#"{"ready":false,"reason":"redis"}"#.to_owned())
    });
    let noticed_in = cut_at.elapsed();
    assert_eq!(metric(host_n, "pushgate_redis_up"), 0);
    assert_eq!(readyz(host_a).0, 200, "the other hosts are unaffected");
    // Cut off for longer than its host TTL: the others stop counting its
    // devices, and pushes to its users are stored for them.
    wait_presence(host_a, &users[0], 1, "host n's devices gone from presence");
    wait_for(
        "pushes through n refused, through a taken, while cut off",
        Duration::from_secs(30),
        || {
            let refused = through_n
                .pushes()
                .iter()
                .filter(|p| p.sent > cut_at && p.result.is_err())
                .count();
            let taken = through_a
                .pushes()
                .iter()
                .filter(|p| p.sent > cut_at && p.result.is_ok())
                .count();
            refused >= 3 && taken >= 20
        },
    );

    let restored_at = Instant::now();
    ns.set_redis_link(true);
    wait_for("host n ready again", Duration::from_secs(60), || {
        readyz(host_n).0 == 200
    });
    let recovered_in = restored_at.elapsed();
    assert_eq!(metric(host_n, "pushgate_redis_up"), 1);
    wait_acked(
        &through_n,
        20,
        restored_at,
        "pushes through n flowing again",
    );
    wait_acked(&through_a, 20, restored_at, "pushes through a flowing on");
    let pushes_a = through_a.stop();
    let pushes_n = through_n.stop();

    let refused = refused_between(&pushes_n, cut_at, restored_at);
    let taken_while_cut = pushes_a
        .iter()
        .filter(|p| p.sent > cut_at && p.answered < restored_at && p.result.is_ok())
        .count();
    let ledger = Ledger::new(&[&pushes_a, &pushes_n]);
    let tally = ledger.settle(&devices, SETTLE);
    report(TEST, &[&pushes_a, &pushes_n], &tally);
    eprintln!(
        "{TEST}: cut off {:.2} s; 503 redis after {:.2} s, ready again {:.2} s after the link \
         came back; while cut off {} pushes through it refused, {taken_while_cut} through \
         host a taken; devices' connections ended {:?}",
        (restored_at - cut_at).as_secs_f64(),
        noticed_in.as_secs_f64(),
        recovered_in.as_secs_f64(),
        refused.len(),
        ends(&devices)
    );
    assert_eq!(tally.duplicates, 0);
    assert_eq!(tally.excused, 0, "no welcome said recovered:false");
}
