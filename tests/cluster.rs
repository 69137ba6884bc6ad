//! Several hosts over Redis (issue 11), against real `redis-server`
//! processes and real `pushgate serve` processes: the host's claim on its
//! host_id (a duplicate refused at start, released on a clean stop), Redis
//! health in /readyz and /metrics, and recovery when Redis returns;
//! presence across hosts; pushes through any host reaching every device
//! of each recipient on every host once and in seq order, a device
//! resuming on another host from the history in Redis, and a lost doorbell
//! repaired by the next push.

mod common;
#[path = "cluster/hosts.rs"]
mod hosts;
#[path = "cluster/redis_fixture.rs"]
mod redis_fixture;

use common::Server;
use hosts::{
    broadcast_via, cluster_numsub, metric, presence, push_via, readyz, redis_args,
    redis_args_with_shards, standalone_numsub, wait_presence, wait_subscribed, NumSub,
};
use redis_fixture::{cli, wait_for, RedisCluster, RedisServer};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `serve` expected to refuse; (exit status, stderr, seconds taken).
fn serve_refused(extra: &[&str]) -> (Option<i32>, String, f64) {
    let run_dir = std::env::temp_dir().join(format!(
        "pushgate-cluster-refused-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--run-dir")
        .arg(&run_dir)
        .args(extra)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .output()
        .expect("run pushgate");
    let _ = std::fs::remove_dir_all(&run_dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed().as_secs_f64(),
    )
}

/// The Redis key of `user`'s presence.
fn presence_key(user: &str) -> String {
    let partitions = pushgate::cluster::partitions::Partitions::new(128);
    pushgate::cluster::keys::presence(partitions.tag(partitions.of(user)), user)
}

#[test]
fn standalone_claim_duplicate_outage_and_release() {
    if !redis_fixture::available("standalone_claim_duplicate_outage_and_release") {
        return;
    }
    let mut redis = RedisServer::start();
    let url = redis.url();
    let target = ["--redis-url", url.as_str()];
    let host_a = Server::start(&redis_args(&target, "a"));
    assert_eq!(readyz(&host_a), (200, r#"{"ready":true}"#.to_owned()));
    assert_eq!(metric(&host_a, "pushgate_redis_up"), 1);
    let holder = cli(redis.port, &["get", "pushgate:host:{a}"]).unwrap();
    assert!(
        holder.contains(&format!("pid {}", host_a.pid())),
        "{holder}"
    );

    // A second process with the same host_id waits out one TTL (the first
    // keeps renewing) and is refused with exit 2 and the holder named.
    let (status, stderr, seconds) = serve_refused(&redis_args(&target, "a"));
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"host_id "a" is in use by another running pushgate"#)
            && stderr.contains(&format!("pid {}", host_a.pid())),
        "{stderr}"
    );
    assert!(seconds >= 2.5, "refused only after the TTL: {seconds} s");
    assert_eq!(readyz(&host_a).0, 200, "the first host is unaffected");

    // Redis gone: the device stays connected, readiness and the metric say
    // so; Redis back (empty): the claim is taken again, ready again.
    let (mut ws, _welcome) = common::ws_connect(&host_a, "alice", false, None);
    redis.kill();
    wait_for("readyz 503 reason redis", Duration::from_secs(20), || {
        readyz(&host_a) == (503, r#"{"ready":false,"reason":"redis"}"#.to_owned())
    });
    assert_eq!(metric(&host_a, "pushgate_redis_up"), 0);
    assert!(metric(&host_a, "pushgate_redis_errors_total") >= 1);
    host_a.wait_log("Redis unreachable");
    // Through the outage the device saw nothing but its connection staying
    // up. (Asked before Redis returns: it returns empty, so the periodic
    // history check may rightly close the device with 1012 to resume.)
    ws.send(tungstenite::Message::Ping(b"still-there".to_vec().into()))
        .unwrap();
    loop {
        match ws.read().expect("the device is still connected") {
            tungstenite::Message::Pong(p) => {
                assert_eq!(&p[..], b"still-there");
                break;
            }
            tungstenite::Message::Ping(_) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    redis.restart();
    wait_for(
        "readyz 200 after Redis returned",
        Duration::from_secs(20),
        || readyz(&host_a).0 == 200,
    );
    host_a.wait_log("claimed it again");
    assert_eq!(metric(&host_a, "pushgate_redis_up"), 1);

    // A clean stop releases the claim: the same host_id starts at once.
    let status = host_a.signal_and_wait(libc::SIGINT);
    assert!(status.success(), "{status:?}");
    assert_eq!(
        cli(redis.port, &["exists", "pushgate:host:{a}"])
            .unwrap()
            .trim(),
        "0"
    );
    let started = Instant::now();
    let host_a_again = Server::start(&redis_args(&target, "a"));
    assert!(
        !host_a_again.log_contains("held by another process"),
        "a released host_id is free at once"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(readyz(&host_a_again).0, 200);
}

#[test]
fn a_killed_host_frees_its_host_id_after_the_ttl() {
    if !redis_fixture::available("a_killed_host_frees_its_host_id_after_the_ttl") {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    let target = ["--redis-url", url.as_str()];
    let host = Server::start(&redis_args(&target, "k"));
    let status = host.signal_and_wait(libc::SIGKILL);
    assert!(!status.success());
    // Its claim is still there; a new process waits for it to lapse, then
    // starts (the supervisor's restart after a crash).
    let again = Server::start(&redis_args(&target, "k"));
    assert_eq!(readyz(&again).0, 200);
}

#[test]
fn unreachable_redis_at_start_exits_1_and_says_where() {
    if !redis_fixture::available("unreachable_redis_at_start_exits_1_and_says_where") {
        return;
    }
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let (status, stderr, _) = serve_refused(&redis_args(&["--redis-url", &url], "u"));
    assert_eq!(status, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach Redis at redis://127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[test]
fn redis_settings_are_checked_before_anything_starts() {
    for (args, expected) in [
        (
            vec!["--redis-url", "redis://127.0.0.1:1"],
            "host_id is required",
        ),
        (vec!["--host-id", "h"], "set redis_url or redis_nodes too"),
        (
            vec!["--redis-url", "rediss://127.0.0.1:1", "--host-id", "h"],
            "TLS to Redis",
        ),
        (
            vec![
                "--redis-url",
                "redis://127.0.0.1:1",
                "--redis-nodes",
                "127.0.0.1:2",
                "--host-id",
                "h",
            ],
            "cannot both be set",
        ),
    ] {
        let (status, stderr, _) = serve_refused(&args);
        assert_eq!(status, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn cluster_of_three_masters_claims_and_refuses_a_duplicate() {
    if !redis_fixture::available("cluster_of_three_masters_claims_and_refuses_a_duplicate") {
        return;
    }
    let cluster = RedisCluster::start();
    let seed = cluster.seed();
    let target = ["--redis-nodes", seed.as_str()];
    let host = Server::start(&redis_args(&target, "c1"));
    assert_eq!(readyz(&host).0, 200);
    // The claim lives on the master of its slot, reached through one seed.
    let master = cluster.master_of("pushgate:host:{c1}");
    let holder = cli(master, &["get", "pushgate:host:{c1}"]).unwrap();
    assert!(holder.contains(&format!("pid {}", host.pid())), "{holder}");
    let (status, stderr, _) = serve_refused(&redis_args(&target, "c1"));
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains(r#"host_id "c1" is in use"#), "{stderr}");
    // A second host with its own id joins the same cluster.
    let other = Server::start(&redis_args(&target, "c2"));
    assert_eq!(readyz(&other).0, 200);
}

#[test]
fn presence_counts_devices_on_every_host_and_forgets_a_dead_one() {
    if !redis_fixture::available("presence_counts_devices_on_every_host_and_forgets_a_dead_one") {
        return;
    }
    let mut redis = RedisServer::start();
    let url = redis.url();
    let target = ["--redis-url", url.as_str()];
    let host_a = Server::start(&redis_args_with_shards(&target, "a", "2"));
    let host_b = Server::start(&redis_args(&target, "b"));
    let (ws_a, _) = common::ws_connect(&host_a, "alice", false, None);
    let (_ws_b1, _) = common::ws_connect(&host_b, "alice", false, None);
    let (_ws_b2, _) = common::ws_connect(&host_b, "alice", true, None);
    let (_bob, _) = common::ws_connect(&host_b, "bob", false, None);
    wait_presence(&host_a, "alice", 3, "alice's 3 devices seen from host a");
    assert_eq!(presence(&host_b, "alice"), 3);
    assert_eq!(presence(&host_a, "bob"), 1);
    assert_eq!(presence(&host_a, "nobody"), 0);
    // The push socket (`pushgate status --user`) asks the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["status", "--user", "alice", "--run-dir"])
        .arg(&host_a.run_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(r#""devices":3"#), "{text}");

    // Redis restarts empty: each host moves to a new instance and writes
    // its users again.
    redis.restart();
    wait_for("host a ready again", Duration::from_secs(20), || {
        readyz(&host_a).0 == 200
    });
    wait_presence(
        &host_a,
        "alice",
        3,
        "presence rewritten after Redis came back empty",
    );
    host_a.wait_log("every shard writes its users again");

    // Host b dies: within its TTL plus a heartbeat its devices stop counting.
    let killed = Instant::now();
    let status = host_b.signal_and_wait(libc::SIGKILL);
    assert!(!status.success());
    wait_presence(&host_a, "alice", 1, "host b's devices gone from presence");
    let seconds = killed.elapsed().as_secs_f64();
    eprintln!("a SIGKILLed host left presence after {seconds:.1} s (TTL 3 s)");
    assert_eq!(presence(&host_a, "bob"), 0);
    // Its fields were deleted by the reader that found them dead.
    assert_eq!(
        cli(redis.port, &["hlen", &presence_key("bob")])
            .unwrap()
            .trim(),
        "0"
    );
    drop(ws_a);
    wait_presence(&host_a, "alice", 0, "alice's last device left");
}

#[test]
fn presence_across_hosts_on_a_redis_cluster() {
    if !redis_fixture::available("presence_across_hosts_on_a_redis_cluster") {
        return;
    }
    let cluster = RedisCluster::start();
    let seed = cluster.seed();
    let target = ["--redis-nodes", seed.as_str()];
    let host_a = Server::start(&redis_args(&target, "a"));
    let host_b = Server::start(&redis_args(&target, "b"));
    // Users spread over slots on all three masters.
    let users: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let mut devices = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let host = if i % 2 == 0 { &host_a } else { &host_b };
        devices.push(common::ws_connect(host, user, false, None).0);
        devices.push(common::ws_connect(&host_b, user, false, None).0);
    }
    for user in &users {
        wait_presence(&host_a, user, 2, "two devices of each user");
    }
    let masters: std::collections::HashSet<u16> = users
        .iter()
        .map(|u| cluster.master_of(&presence_key(u)))
        .collect();
    assert_eq!(masters.len(), 3, "the users' presence is on every master");

    // The partitions the next step keys users by spread evenly over the
    // real cluster's masters.
    let partitions = pushgate::cluster::partitions::Partitions::new(128);
    let ranges = cluster.master_ranges();
    assert_eq!(ranges.len(), 3);
    let mut per_master = vec![0; 3];
    for p in 0..partitions.count() {
        let slot = pushgate::cluster::keys::slot(partitions.tag(p).as_bytes());
        let master = ranges
            .iter()
            .position(|r| r.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot)))
            .expect("every slot has a master");
        per_master[master] += 1;
    }
    eprintln!("128 partitions over 3 masters: {per_master:?}");
    assert!(
        per_master.iter().all(|&n| (42..=43).contains(&n)),
        "{per_master:?}"
    );
}

/// Reads `n` pushes: each seq above the one before; their `data`.
fn read_pushes(ws: &mut common::Ws, n: usize, after_seq: &mut u64) -> Vec<serde_json::Value> {
    (0..n)
        .map(|_| {
            let (seq, data) = common::next_push(ws);
            assert!(seq > *after_seq, "seq {seq} after {after_seq}: {data}");
            *after_seq = seq;
            data
        })
        .collect()
}

/// A push taken by host a (admin API, then its push socket) is stored in
/// Redis and rung on host b, where the user has a device: counted
/// delivered across hosts, and the device gets it.
#[test]
fn a_push_through_one_host_reaches_a_device_on_the_other() {
    if !redis_fixture::available("a_push_through_one_host_reaches_a_device_on_the_other") {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    let target = ["--redis-url", url.as_str()];
    let numsub = standalone_numsub(redis.port);
    let host_a = Server::start(&redis_args(&target, "a"));
    let host_b = Server::start(&redis_args(&target, "b"));
    let (mut ws_b, welcome) = common::ws_connect(&host_b, "alice", false, None);
    // The welcome names the history in Redis: its epoch, no push yet.
    assert!(welcome["epoch"].as_u64().unwrap() > 0, "{welcome}");
    assert_eq!(welcome["seq"], 0, "{welcome}");
    wait_presence(&host_a, "alice", 1, "alice's device on host b seen from a");
    wait_subscribed(&numsub, "b", 1);
    let (status, body) = host_a.admin(
        "POST",
        "/v1/push",
        Some(&host_a.admin_token()),
        r#"{"users":["alice","nobody"],"data":{"n":1}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    if v["delivered"] != 1 {
        eprintln!("host a log:\n{}", host_a.log.lock().unwrap().join("\n"));
    }
    assert_eq!(v["delivered"], 1, "{v}");
    assert_eq!(v["stored"], 1, "{v}");
    assert_eq!(v["rejected"], 0, "{v}");
    let mut seq = 0;
    assert_eq!(
        read_pushes(&mut ws_b, 1, &mut seq),
        [serde_json::json!({"n": 1})]
    );

    let outcome = push_via(&host_a, &["alice"], r#"{"n":2}"#);
    assert_eq!(
        (outcome.delivered, outcome.stored, outcome.rejected),
        (1, 0, 0)
    );
    assert_eq!(
        read_pushes(&mut ws_b, 1, &mut seq),
        [serde_json::json!({"n": 2})]
    );
    common::assert_quiet(&mut ws_b, Duration::from_millis(300));
    // A broadcast through host a's admin API: both hosts reached (a
    // broadcast counts hosts), the device on b gets it next.
    let (status, body) = host_a.admin(
        "POST",
        "/v1/push",
        Some(&host_a.admin_token()),
        r#"{"all":true,"data":{"all":3}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["delivered"].clone(), v["stored"].clone()),
        (2.into(), 0.into()),
        "{v}"
    );
    assert_eq!(
        read_pushes(&mut ws_b, 1, &mut seq),
        [serde_json::json!({"all": 3})]
    );
    common::assert_quiet(&mut ws_b, Duration::from_millis(300));
}

/// Users with devices on two or three of three hosts (one host with two
/// shards); pushes and broadcasts (every third) through every host in
/// turn: each device gets each push of its user and every broadcast once,
/// in seq order, every push counted delivered and every broadcast
/// delivered on the three hosts.
fn pushes_through_every_host_reach_every_device_once_in_order(
    target: &[&str],
    numsub: &NumSub<'_>,
) {
    let hosts = [
        Server::start(&redis_args_with_shards(target, "a", "2")),
        Server::start(&redis_args(target, "b")),
        Server::start(&redis_args(target, "c")),
    ];
    for (host_id, shards) in [("a", 2), ("b", 1), ("c", 1)] {
        wait_subscribed(numsub, host_id, shards);
    }
    let users: Vec<String> = (0..6).map(|i| format!("spread-{i}")).collect();
    let mut devices = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let on: &[usize] = if i == 0 {
            &[0, 1, 2]
        } else {
            &[i % 3, (i + 1) % 3]
        };
        for &host in on {
            let (ws, welcome) = common::ws_connect(&hosts[host], user, false, None);
            assert_eq!(welcome["seq"], 0, "{welcome}");
            devices.push((user.clone(), host, ws));
        }
    }
    let mut sent: std::collections::HashMap<&str, Vec<u64>> = Default::default();
    for k in 0..36u64 {
        let via = &hosts[k as usize % 3];
        if k % 3 == 1 {
            let outcome = broadcast_via(via, &format!(r#"{{"k":{k}}}"#));
            assert_eq!(
                (outcome.delivered, outcome.stored, outcome.rejected),
                (3, 0, 0),
                "broadcast {k}: every host reached"
            );
            for user in &users {
                sent.entry(user).or_default().push(k);
            }
            continue;
        }
        let recipients: Vec<&str> = users
            .iter()
            .enumerate()
            .filter(|&(i, _)| i == 0 || (i as u64 + k).is_multiple_of(2))
            .map(|(_, u)| u.as_str())
            .collect();
        let outcome = push_via(via, &recipients, &format!(r#"{{"k":{k}}}"#));
        assert_eq!(
            (outcome.delivered, outcome.stored, outcome.rejected),
            (recipients.len() as u64, 0, 0),
            "push {k}"
        );
        for user in recipients {
            sent.entry(user).or_default().push(k);
        }
    }
    for (user, host, ws) in &mut devices {
        let expected = &sent[user.as_str()];
        let mut seq = 0;
        let got: Vec<u64> = read_pushes(ws, expected.len(), &mut seq)
            .iter()
            .map(|data| data["k"].as_u64().unwrap())
            .collect();
        assert_eq!(
            &got, expected,
            "{user} on host {host}: each push once, in order"
        );
        common::assert_quiet(ws, Duration::from_millis(200));
    }
}

#[test]
fn pushes_through_every_host_reach_every_device_once_in_order_standalone() {
    if !redis_fixture::available("pushes_through_every_host_reach_every_device_once_in_order") {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    pushes_through_every_host_reach_every_device_once_in_order(
        &["--redis-url", url.as_str()],
        &standalone_numsub(redis.port),
    );
}

#[test]
fn pushes_through_every_host_reach_every_device_once_in_order_on_a_redis_cluster() {
    if !redis_fixture::available("pushes_through_every_host_reach_every_device_once_in_order") {
        return;
    }
    let cluster = RedisCluster::start();
    let seed = cluster.seed();
    pushes_through_every_host_reach_every_device_once_in_order(
        &["--redis-nodes", seed.as_str()],
        &cluster_numsub(&cluster),
    );
}

/// A device on host a gets a push, leaves, misses three pushes (through
/// both hosts), and reconnects to host b with `?since=`: recovered, the
/// three replayed in order, then live pushes; a `since` of another epoch
/// is told `recovered:false` and replayed nothing.
fn a_device_resumes_on_another_host(target: &[&str], numsub: &NumSub<'_>) {
    let host_a = Server::start(&redis_args(target, "a"));
    let host_b = Server::start(&redis_args(target, "b"));
    wait_subscribed(numsub, "a", 1);
    wait_subscribed(numsub, "b", 1);
    let (mut ws, welcome) = common::ws_connect(&host_a, "roamer", false, None);
    let epoch = welcome["epoch"].as_u64().unwrap();
    assert_eq!(welcome.get("recovered"), None, "{welcome}");
    let outcome = push_via(&host_b, &["roamer"], r#"{"n":1}"#);
    assert_eq!(outcome.delivered, 1);
    let mut seq = 0;
    assert_eq!(
        read_pushes(&mut ws, 1, &mut seq),
        [serde_json::json!({"n": 1})]
    );
    let seen = seq;
    drop(ws);
    wait_presence(&host_b, "roamer", 0, "the device left");
    // Missed: pushes 2 to 5 and broadcasts 3 and 5 (through both hosts).
    for n in 2..=6 {
        let via = if n % 2 == 0 { &host_a } else { &host_b };
        let data = format!(r#"{{"n":{n}}}"#);
        if n % 2 == 1 {
            let outcome = broadcast_via(via, &data);
            assert_eq!((outcome.delivered, outcome.stored), (2, 0), "broadcast {n}");
        } else {
            let outcome = push_via(via, &["roamer"], &data);
            assert_eq!((outcome.delivered, outcome.stored), (0, 1), "push {n}");
        }
    }
    let since = format!("{epoch}:{seen}");
    let (mut ws, welcome) = common::ws_connect(&host_b, "roamer", false, Some(&since));
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!(welcome["epoch"], epoch, "{welcome}");
    let replayed = read_pushes(&mut ws, 5, &mut seq);
    assert_eq!(
        replayed,
        [2, 3, 4, 5, 6].map(|n| serde_json::json!({ "n": n })),
        "exactly the missed pushes and broadcasts, in order"
    );
    assert_eq!(welcome["seq"], seq, "the welcome names the newest seq");
    common::assert_quiet(&mut ws, Duration::from_millis(300));
    let outcome = push_via(&host_a, &["roamer"], r#"{"n":7}"#);
    assert_eq!(outcome.delivered, 1);
    broadcast_via(&host_a, r#"{"n":8}"#);
    assert_eq!(
        read_pushes(&mut ws, 2, &mut seq),
        [7, 8].map(|n| serde_json::json!({ "n": n }))
    );

    let since = format!("{}:{seen}", epoch + 1);
    let (mut other, welcome) = common::ws_connect(&host_a, "roamer", false, Some(&since));
    assert_eq!(welcome["recovered"], false, "{welcome}");
    assert_eq!(welcome["seq"], seq, "{welcome}");
    common::assert_quiet(&mut other, Duration::from_millis(300));
}

#[test]
fn a_device_resumes_on_another_host_standalone() {
    if !redis_fixture::available("a_device_resumes_on_another_host") {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    a_device_resumes_on_another_host(
        &["--redis-url", url.as_str()],
        &standalone_numsub(redis.port),
    );
}

#[test]
fn a_device_resumes_on_another_host_on_a_redis_cluster() {
    if !redis_fixture::available("a_device_resumes_on_another_host") {
        return;
    }
    let cluster = RedisCluster::start();
    let seed = cluster.seed();
    a_device_resumes_on_another_host(&["--redis-nodes", seed.as_str()], &cluster_numsub(&cluster));
}

/// Stores a push for `user` (`None`: a broadcast) in the history without
/// ringing any doorbell: what a doorbell lost in pub/sub leaves behind.
fn store_unrung(redis: Redis<'_>, user: Option<&str>, data: &'static str) {
    use pushgate::cluster::history::{self, HistoryLimits, Scripts};
    use pushgate::cluster::partitions::{Partitions, PARTITIONS_DEFAULT};
    async fn add<C: redis::aio::ConnectionLike + Clone + Send + 'static>(
        conn: C,
        user: Option<&str>,
        data: &'static str,
    ) {
        let (scripts, partitions) = (
            std::sync::Arc::new(Scripts::default()),
            Partitions::new(PARTITIONS_DEFAULT),
        );
        let payload = bytes::Bytes::from_static(data.as_bytes());
        let limits = HistoryLimits {
            retention_ms: 600_000,
            entries_max: 100,
        };
        match user {
            Some(user) => {
                let users = [user.to_owned()];
                history::add(&conn, &scripts, &partitions, &users, payload, limits)
                    .await
                    .map(drop)
            }
            None => history::broadcast(&conn, &scripts, &partitions, payload, limits)
                .await
                .map(drop),
        }
        .unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match redis {
            Redis::Standalone(server) => {
                let client = redis::Client::open(server.url()).unwrap();
                let conn = client.get_multiplexed_async_connection().await.unwrap();
                add(conn, user, data).await;
            }
            Redis::Cluster(cluster) => {
                let seeds = vec![format!("redis://{}", cluster.seed())];
                let client = redis::cluster::ClusterClient::new(seeds).unwrap();
                let conn = client.get_async_connection().await.unwrap();
                add(conn, user, data).await;
            }
        }
    });
}

/// The Redis a test runs against.
#[derive(Clone, Copy)]
enum Redis<'a> {
    Standalone(&'a RedisServer),
    Cluster(&'a RedisCluster),
}

impl Redis<'_> {
    /// Kills every pub/sub connection (on each master of a cluster).
    fn kill_subscribers(self) {
        let ports: Vec<u16> = match self {
            Redis::Standalone(server) => vec![server.port],
            Redis::Cluster(cluster) => cluster.nodes.iter().map(|n| n.port).collect(),
        };
        for port in ports {
            cli(port, &["client", "kill", "type", "pubsub"]).unwrap();
        }
    }
}

/// A doorbell lost: first a push stored in the history that no host rang
/// (what a doorbell dropped by pub/sub leaves), then the doorbell
/// subscribers killed (`CLIENT KILL TYPE pubsub`) right before a push.
/// The next push's rung shows the gap; the device gets every push once,
/// in order.
fn a_lost_doorbell_is_repaired_by_the_next_push(
    target: &[&str],
    redis: Redis<'_>,
    numsub: &NumSub<'_>,
) {
    let host_a = Server::start(&redis_args(target, "a"));
    let host_b = Server::start(&redis_args(target, "b"));
    wait_subscribed(numsub, "b", 1);
    let (mut ws, _) = common::ws_connect(&host_b, "lossy", false, None);
    assert_eq!(push_via(&host_a, &["lossy"], r#"{"n":1}"#).delivered, 1);
    let mut seq = 0;
    assert_eq!(
        read_pushes(&mut ws, 1, &mut seq),
        [serde_json::json!({"n": 1})]
    );

    store_unrung(redis, Some("lossy"), r#"{"n":2}"#);
    common::assert_quiet(&mut ws, Duration::from_millis(300));
    assert_eq!(push_via(&host_a, &["lossy"], r#"{"n":3}"#).delivered, 1);
    assert_eq!(
        read_pushes(&mut ws, 2, &mut seq),
        [2, 3].map(|n| serde_json::json!({ "n": n })),
        "the lost push repaired from the history, before the next"
    );

    // The subscribers killed: the next doorbell may be lost (or heard, if
    // host b subscribed again first); either way the push after it
    // brings both.
    redis.kill_subscribers();
    push_via(&host_a, &["lossy"], r#"{"n":4}"#);
    wait_subscribed(numsub, "b", 1);
    assert_eq!(push_via(&host_a, &["lossy"], r#"{"n":5}"#).delivered, 1);
    assert_eq!(
        read_pushes(&mut ws, 2, &mut seq),
        [4, 5].map(|n| serde_json::json!({ "n": n }))
    );
    common::assert_quiet(&mut ws, Duration::from_millis(300));

    // Broadcasts: one stored that no host rang, then one rung while the
    // subscribers are killed; each push after shows the gap.
    store_unrung(redis, None, r#"{"n":6}"#);
    common::assert_quiet(&mut ws, Duration::from_millis(300));
    assert_eq!(push_via(&host_a, &["lossy"], r#"{"n":7}"#).delivered, 1);
    assert_eq!(
        read_pushes(&mut ws, 2, &mut seq),
        [6, 7].map(|n| serde_json::json!({ "n": n })),
        "the lost broadcast repaired from the history, before the next push"
    );
    redis.kill_subscribers();
    broadcast_via(&host_a, r#"{"n":8}"#);
    wait_subscribed(numsub, "b", 1);
    assert_eq!(push_via(&host_a, &["lossy"], r#"{"n":9}"#).delivered, 1);
    assert_eq!(
        read_pushes(&mut ws, 2, &mut seq),
        [8, 9].map(|n| serde_json::json!({ "n": n }))
    );
    common::assert_quiet(&mut ws, Duration::from_millis(300));
}

#[test]
fn a_lost_doorbell_is_repaired_by_the_next_push_standalone() {
    if !redis_fixture::available("a_lost_doorbell_is_repaired_by_the_next_push") {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    a_lost_doorbell_is_repaired_by_the_next_push(
        &["--redis-url", url.as_str()],
        Redis::Standalone(&redis),
        &standalone_numsub(redis.port),
    );
}

#[test]
fn a_lost_doorbell_is_repaired_by_the_next_push_on_a_redis_cluster() {
    if !redis_fixture::available("a_lost_doorbell_is_repaired_by_the_next_push") {
        return;
    }
    let cluster = RedisCluster::start();
    let seed = cluster.seed();
    a_lost_doorbell_is_repaired_by_the_next_push(
        &["--redis-nodes", seed.as_str()],
        Redis::Cluster(&cluster),
        &cluster_numsub(&cluster),
    );
}

/// A doorbell lost with no later push: a push stored in the history that
/// no host rang, and nothing after it. The periodic check (here every
/// 300 ms) finds the device behind its user's history and repairs it; the
/// device gets the push once, in order, and the metrics count the gap.
fn a_lost_doorbell_is_caught_by_the_check_without_a_later_push(
    target: &[&str],
    redis: Redis<'_>,
    numsub: &NumSub<'_>,
) {
    let mut args_a = redis_args(target, "a");
    args_a.extend(["--redis-check-interval-ms", "300"]);
    let mut args_b = redis_args(target, "b");
    args_b.extend(["--redis-check-interval-ms", "300"]);
    let host_a = Server::start(&args_a);
    let host_b = Server::start(&args_b);
    wait_subscribed(numsub, "b", 1);
    let (mut ws, _) = common::ws_connect(&host_b, "quiet", false, None);
    assert_eq!(push_via(&host_a, &["quiet"], r#"{"n":1}"#).delivered, 1);
    let mut seq = 0;
    assert_eq!(
        read_pushes(&mut ws, 1, &mut seq),
        [serde_json::json!({"n": 1})]
    );
    // A check answered after the store but before the doorbell reached
    // the device (a busy machine) rightly counts a gap and repairs it (the
    // device still gets the push once), so count from two full rounds
    // after the device has the push: from then on nothing is behind.
    let gaps = "pushgate_history_check_gaps_total{shard=\"0\"}";
    let checked = "pushgate_history_checked_users_total{shard=\"0\"}";
    let checked_after_read = metric(&host_b, checked);
    wait_for("two rounds of the check", Duration::from_secs(20), || {
        metric(&host_b, checked) >= checked_after_read + 2
    });
    let gaps_up_to_date = metric(&host_b, gaps);
    let checked_now = metric(&host_b, checked);
    wait_for(
        "another round of the check",
        Duration::from_secs(20),
        || metric(&host_b, checked) > checked_now,
    );
    assert_eq!(
        metric(&host_b, gaps),
        gaps_up_to_date,
        "a device up to date has no gap"
    );

    store_unrung(redis, Some("quiet"), r#"{"n":2}"#);
    // No push follows: only the check can bring it (the read timeout of
    // the test's socket, 10 s, is far above the 300 ms interval).
    assert_eq!(
        read_pushes(&mut ws, 1, &mut seq),
        [serde_json::json!({"n": 2})],
        "the lost push, found by the check"
    );
    assert!(metric(&host_b, gaps) > gaps_up_to_date, "counted as a gap");
    assert!(metric(&host_b, "pushgate_history_repairs_total{shard=\"0\"}") >= 1);
    common::assert_quiet(&mut ws, Duration::from_millis(1_000));
    assert_eq!(push_via(&host_a, &["quiet"], r#"{"n":3}"#).delivered, 1);
    assert_eq!(
        read_pushes(&mut ws, 1, &mut seq),
        [serde_json::json!({"n": 3})],
        "live again after the repair"
    );

    // A broadcast whose doorbell was lost, nothing after it: the check
    // finds the device behind the partition's newest broadcast.
    let gaps_before = metric(&host_b, gaps);
    store_unrung(redis, None, r#"{"n":4}"#);
    assert_eq!(
        read_pushes(&mut ws, 1, &mut seq),
        [serde_json::json!({"n": 4})],
        "the lost broadcast, found by the check"
    );
    assert!(metric(&host_b, gaps) > gaps_before, "counted as a gap");
    broadcast_via(&host_a, r#"{"n":5}"#);
    assert_eq!(
        read_pushes(&mut ws, 1, &mut seq),
        [serde_json::json!({"n": 5})],
        "broadcasts live again after the repair"
    );
    common::assert_quiet(&mut ws, Duration::from_millis(1_000));
}

#[test]
fn a_lost_doorbell_is_caught_by_the_check_without_a_later_push_standalone() {
    if !redis_fixture::available("a_lost_doorbell_is_caught_by_the_check") {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    a_lost_doorbell_is_caught_by_the_check_without_a_later_push(
        &["--redis-url", url.as_str()],
        Redis::Standalone(&redis),
        &standalone_numsub(redis.port),
    );
}

#[test]
fn a_lost_doorbell_is_caught_by_the_check_without_a_later_push_on_a_redis_cluster() {
    if !redis_fixture::available("a_lost_doorbell_is_caught_by_the_check") {
        return;
    }
    let cluster = RedisCluster::start();
    let seed = cluster.seed();
    a_lost_doorbell_is_caught_by_the_check_without_a_later_push(
        &["--redis-nodes", seed.as_str()],
        Redis::Cluster(&cluster),
        &cluster_numsub(&cluster),
    );
}

/// Redis away: a device that joins is closed with 1013 (try again later)
/// and a log line instead of a welcome that guesses, a push is answered
/// with an error; Redis back: the device is welcomed.
#[test]
fn redis_away_at_join_closes_the_device_with_1013_and_fails_pushes_clearly() {
    if !redis_fixture::available("redis_away_at_join_closes_the_device_with_1013") {
        return;
    }
    let mut redis = RedisServer::start();
    let url = redis.url();
    let target = ["--redis-url", url.as_str()];
    let host = Server::start(&redis_args(&target, "a"));
    redis.kill();
    let url = format!("ws://{}/ws?token={}", host.addr, host.token("early"));
    let (mut ws, response) = tungstenite::connect(url).expect("upgrade");
    assert_eq!(response.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    loop {
        match ws.read().expect("a close frame") {
            tungstenite::Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1013, "{frame:?}");
                break;
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected a close with 1013, got {other:?}"),
        }
    }
    host.wait_log("device closed with 1013");
    let (status, body) = host.admin(
        "POST",
        "/v1/push",
        Some(&host.admin_token()),
        r#"{"users":["early"],"data":1}"#,
    );
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("Redis"), "{body}");

    redis.restart();
    wait_for("ready again", Duration::from_secs(20), || {
        readyz(&host).0 == 200
    });
    let (_ws, welcome) = common::ws_connect(&host, "early", false, None);
    assert_eq!(welcome["seq"], 0, "{welcome}");
}
