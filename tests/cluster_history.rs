//! Seq, epoch and history in Redis (issue 11, step 2's store), against real
//! `redis-server` processes: two connections stand for two hosts pushing
//! to the same users. Seq strictly increasing per user across them, each
//! recipient's previous seq exact, the payload stored once per partition,
//! the entry limit and the retention time making an old resume
//! `recovered:false`, a lost partition meta changing the epoch, and a
//! 300-user push costing one script call per partition touched (all in
//! flight at once), on a standalone Redis and a 3+3 cluster.

#[path = "cluster/redis_fixture.rs"]
mod redis_fixture;

use bytes::Bytes;
use pushgate::cluster::history::{self, HistoryLimits, Scripts, Stored};
use pushgate::cluster::keys;
use pushgate::cluster::partitions::{Partitions, PARTITIONS_DEFAULT};
use redis::aio::ConnectionLike;
use redis_fixture::{cli, RedisCluster, RedisServer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMITS: HistoryLimits = HistoryLimits {
    retention_ms: 60_000,
    entries_max: 100,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Script calls Redis ran so far (EVALSHA + EVAL), summed over `ports`.
fn script_calls(ports: &[u16]) -> u64 {
    ports
        .iter()
        .map(|&port| {
            let stats = cli(port, &["info", "commandstats"]).unwrap_or_default();
            stats
                .lines()
                .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
        })
        .sum()
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

/// Pushes from both "hosts" in turn and checks every recipient's seq
/// chain; returns each user's seqs in order.
async fn pushes_from_two_hosts<C: ConnectionLike + Clone + Send + 'static>(
    hosts: [&C; 2],
    scripts: &Arc<Scripts>,
    partitions: &Partitions,
    recipients: &[String],
    rounds: usize,
) -> HashMap<String, Vec<u64>> {
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for round in 0..rounds {
        let payload = Bytes::from(format!("{{\"round\":{round}}}"));
        let stored = history::add(
            hosts[round % 2],
            scripts,
            partitions,
            recipients,
            payload,
            LIMITS,
        )
        .await
        .expect("history add");
        let mut seen = 0;
        for Stored {
            seq, recipients, ..
        } in stored
        {
            for r in recipients {
                let chain = seqs.entry(r.user.clone()).or_default();
                let previous = chain.last().copied().unwrap_or(0);
                assert_eq!(r.previous_seq, previous, "{}: previous seq", r.user);
                assert!(seq > previous, "{}: seq {seq} after {previous}", r.user);
                chain.push(seq);
                seen += 1;
            }
        }
        assert_eq!(seen, recipients.len(), "every recipient stored once");
    }
    seqs
}

/// A first push, so every node has the scripts cached: the first call of
/// each after a (re)start is an `EVALSHA` refused with `NOSCRIPT` and
/// sent again as `EVAL`.
async fn warm_up<C: ConnectionLike + Clone + Send + 'static>(
    host: &C,
    scripts: &Arc<Scripts>,
    partitions: &Partitions,
    recipients: &[String],
) {
    history::add(
        host,
        scripts,
        partitions,
        recipients,
        Bytes::from("0"),
        LIMITS,
    )
    .await
    .expect("warm-up push");
}

/// Pushes started back to back from one connection, each its own task as
/// the Redis thread runs them, all naming one user among 299 others: the
/// user's seqs follow the order the pushes were started (a publisher's
/// order), however their calls are routed.
async fn pushes_started_in_order_keep_it<C: ConnectionLike + Clone + Send + Sync + 'static>(
    host: &C,
    scripts: &Arc<Scripts>,
    partitions: &Partitions,
) {
    const PUSHES: usize = 60;
    let mut tasks = Vec::new();
    for i in 0..PUSHES {
        let mut recipients: Vec<String> = (0..299).map(|j| format!("order-{i}-{j}")).collect();
        recipients.push("ordered".to_owned());
        let (host, scripts, partitions) = (
            host.clone(),
            scripts.clone(),
            Partitions::new(partitions.count()),
        );
        tasks.push(tokio::spawn(async move {
            history::add(
                &host,
                &scripts,
                &partitions,
                &recipients,
                Bytes::from(format!("{i}")),
                LIMITS,
            )
            .await
            .expect("history add")
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        let stored = task.await.expect("push task");
        let seq = stored
            .iter()
            .find(|s| s.recipients.iter().any(|r| r.user == "ordered"))
            .map(|s| s.seq)
            .expect("the shared user stored");
        seqs.push(seq);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "the shared user's seqs in the order the pushes started: {seqs:?}"
    );
}

#[test]
fn history_in_a_standalone_redis() {
    if !redis_fixture::available("history_in_a_standalone_redis") {
        return;
    }
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let host_a = client.get_multiplexed_async_connection().await.unwrap();
        let host_b = client.get_multiplexed_async_connection().await.unwrap();
        let scripts = Arc::new(Scripts::default());
        let partitions = Partitions::new(PARTITIONS_DEFAULT);

        // Seq chains across two hosts; payload once per partition.
        let recipients = users(300);
        let warm: Vec<String> = recipients.iter().map(|u| format!("warm-{u}")).collect();
        warm_up(&host_a, &scripts, &partitions, &warm).await;
        let calls_before = script_calls(&[redis.port]);
        let started = Instant::now();
        let seqs =
            pushes_from_two_hosts([&host_a, &host_b], &scripts, &partitions, &recipients, 4).await;
        let per_push = started.elapsed() / 4;
        let calls = script_calls(&[redis.port]) - calls_before;
        let touched = recipients
            .iter()
            .map(|u| partitions.of(u))
            .collect::<std::collections::HashSet<_>>()
            .len() as u64;
        assert_eq!(calls, 4 * touched, "one script call per partition per push");
        eprintln!(
            "standalone: a 300-user push = {touched} script calls (partitions touched), \
             all in flight at once, {per_push:?} wall per push on this machine"
        );
        let payload_keys = cli(redis.port, &["--scan", "--pattern", "pushgate:p:*:push:*"])
            .unwrap()
            .lines()
            .count() as u64;
        let warm_touched = warm
            .iter()
            .map(|u| partitions.of(u))
            .collect::<std::collections::HashSet<_>>()
            .len() as u64;
        assert_eq!(
            payload_keys,
            4 * touched + warm_touched,
            "payload stored once per partition"
        );

        // Resume: none, from the first push, from the newest, a wrong epoch.
        let mut conn = host_a.clone();
        let user = &recipients[7];
        let chain = &seqs[user];
        let now = history::resume(&mut conn, &scripts, &partitions, user, None)
            .await
            .unwrap();
        assert_eq!(
            (now.last_seq, now.recovered),
            (*chain.last().unwrap(), None)
        );
        let epoch = now.epoch;
        let epoch_of_user = epoch;
        let from_first = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            user,
            Some((epoch, chain[0])),
        )
        .await
        .unwrap();
        assert_eq!(from_first.recovered, Some(true));
        let replayed: Vec<(u64, Bytes)> = chain[1..]
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, Bytes::from(format!("{{\"round\":{}}}", i + 1))))
            .collect();
        assert_eq!(from_first.replay, replayed);
        let from_zero = history::resume(&mut conn, &scripts, &partitions, user, Some((epoch, 0)))
            .await
            .unwrap();
        assert_eq!(
            (from_zero.recovered, from_zero.replay.len()),
            (Some(true), 4)
        );
        let newest = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            user,
            Some((epoch, *chain.last().unwrap())),
        )
        .await
        .unwrap();
        assert_eq!((newest.recovered, newest.replay.len()), (Some(true), 0));
        let other_epoch = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            user,
            Some((epoch + 1, chain[0])),
        )
        .await
        .unwrap();
        assert_eq!(other_epoch.recovered, Some(false));
        let ahead = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            user,
            Some((epoch, chain.last().unwrap() + 1)),
        )
        .await
        .unwrap();
        assert_eq!(
            ahead.recovered,
            Some(false),
            "a seq never given is not recovered"
        );
        // A user never pushed to: nothing lost since 0 (its partition's
        // epoch; each partition has its own).
        let nobody_epoch = stored_epoch(&mut conn, &scripts, &partitions, "nobody").await;
        let fresh = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            "nobody",
            Some((nobody_epoch, 0)),
        )
        .await
        .unwrap();
        assert_eq!((fresh.last_seq, fresh.recovered), (0, Some(true)));

        // The entry limit: 5 pushes, 3 kept; resuming before the kept ones
        // is a gap, from the newest dropped one is not.
        let limited = HistoryLimits {
            retention_ms: 60_000,
            entries_max: 3,
        };
        let one = vec!["limited".to_owned()];
        let mut chain = Vec::new();
        for i in 0..5 {
            let stored = history::add(
                &host_b,
                &scripts,
                &partitions,
                &one,
                Bytes::from(i.to_string()),
                limited,
            )
            .await
            .unwrap();
            chain.push(stored[0].seq);
        }
        let epoch = stored_epoch(&mut conn, &scripts, &partitions, "limited").await;
        let gap = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            "limited",
            Some((epoch, chain[0])),
        )
        .await
        .unwrap();
        assert_eq!(gap.recovered, Some(false), "an evicted entry is a gap");
        let kept = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            "limited",
            Some((epoch, chain[1])),
        )
        .await
        .unwrap();
        assert_eq!(kept.recovered, Some(true));
        assert_eq!(
            kept.replay.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            chain[2..].to_vec()
        );

        // The retention time: the history expires, the meta remembers.
        let short = HistoryLimits {
            retention_ms: 200,
            entries_max: 100,
        };
        let once = vec!["brief".to_owned()];
        let seq = history::add(
            &host_a,
            &scripts,
            &partitions,
            &once,
            Bytes::from("1"),
            short,
        )
        .await
        .unwrap()[0]
            .seq;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let epoch = stored_epoch(&mut conn, &scripts, &partitions, "brief").await;
        let expired = history::resume(&mut conn, &scripts, &partitions, "brief", Some((epoch, 0)))
            .await
            .unwrap();
        assert_eq!(
            (expired.last_seq, expired.recovered),
            (seq, Some(false)),
            "an expired push is a gap"
        );
        let seen = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            "brief",
            Some((epoch, seq)),
        )
        .await
        .unwrap();
        assert_eq!(
            seen.recovered,
            Some(true),
            "nothing after the last seen push"
        );
        // A push after the list expired: what expired stays a gap.
        let next = history::add(
            &host_a,
            &scripts,
            &partitions,
            &once,
            Bytes::from("2"),
            LIMITS,
        )
        .await
        .unwrap()[0]
            .seq;
        let still = history::resume(&mut conn, &scripts, &partitions, "brief", Some((epoch, 0)))
            .await
            .unwrap();
        assert_eq!(still.recovered, Some(false), "the expired push stays lost");
        let after_seen = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            "brief",
            Some((epoch, seq)),
        )
        .await
        .unwrap();
        assert_eq!(after_seen.recovered, Some(true));
        assert_eq!(after_seen.replay, [(next, Bytes::from("2"))]);

        // Presence fields come back with the push.
        let tag = partitions.tag(partitions.of("here"));
        let mut hset = redis::cmd("HSET");
        hset.arg(keys::presence(tag, "here"))
            .arg("web-1/0000abcd/2")
            .arg(3);
        hset.query_async::<()>(&mut conn).await.unwrap();
        let stored = history::add(
            &host_a,
            &scripts,
            &partitions,
            &["here".to_owned()],
            Bytes::from("1"),
            LIMITS,
        )
        .await
        .unwrap();
        assert_eq!(
            stored[0].recipients[0].locations,
            vec![("web-1/0000abcd/2".to_owned(), 3)]
        );

        // A lost partition meta (a failover that lost it): a new epoch, the
        // old history is not resumed from, and the chain starts again.
        let user = &recipients[7];
        let tag = partitions.tag(partitions.of(user));
        let old_epoch = epoch_of_user;
        let mut del = redis::cmd("DEL");
        del.arg(keys::partition_meta(tag));
        del.query_async::<()>(&mut conn).await.unwrap();
        let stored = history::add(
            &host_b,
            &scripts,
            &partitions,
            std::slice::from_ref(user),
            Bytes::from("1"),
            LIMITS,
        )
        .await
        .unwrap();
        assert_ne!(stored[0].epoch, old_epoch, "a new epoch");
        assert_eq!(stored[0].recipients[0].previous_seq, 0, "a new chain");
        let lost = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            user,
            Some((old_epoch, *seqs[user].last().unwrap())),
        )
        .await
        .unwrap();
        assert_eq!((lost.epoch, lost.recovered), (stored[0].epoch, Some(false)));

        broadcasts_merge_into_every_users_history([&host_a, &host_b], &[redis.port]).await;
        pushes_started_in_order_keep_it(&host_a, &scripts, &partitions).await;
    });
}

/// Broadcasts, stored once per partition: one script call per partition;
/// every user's seq chain (pushed to or not) takes them in order; a
/// resume merges them with the user's own pushes; the periodic check sees
/// them; the next broadcast names the users pushed since the previous one
/// where they have devices; the entry limit applies to them too.
async fn broadcasts_merge_into_every_users_history<C: ConnectionLike + Clone + Send + 'static>(
    hosts: [&C; 2],
    ports: &[u16],
) {
    let scripts = Arc::new(Scripts::default());
    let partitions = Partitions::new(PARTITIONS_DEFAULT);
    let mut conn = hosts[0].clone();
    let (pushed, quiet) = ("bc-pushed".to_owned(), "bc-quiet".to_owned());
    let add = |host: &C, data: &'static str| {
        let host = host.clone();
        let (scripts, partitions, users) = (
            scripts.clone(),
            Partitions::new(PARTITIONS_DEFAULT),
            [pushed.clone()],
        );
        async move {
            history::add(
                &host,
                &scripts,
                &partitions,
                &users,
                Bytes::from(data),
                LIMITS,
            )
            .await
            .unwrap()
            .remove(0)
        }
    };
    let first = add(hosts[0], "p1").await;
    let b1 = history::broadcast(hosts[1], &scripts, &partitions, Bytes::from("b1"), LIMITS)
        .await
        .unwrap();
    assert_eq!(b1.len(), PARTITIONS_DEFAULT, "one copy per partition");
    assert!(b1.iter().enumerate().all(|(p, s)| s.partition == p));
    let b1_of = |user: &str| &b1[partitions.of(user)];
    assert_eq!(b1_of(&pushed).previous_seq, 0);
    assert!(b1_of(&pushed).seq > first.seq);
    let second = add(hosts[1], "p2").await;
    assert_eq!(
        second.recipients[0].previous_seq,
        b1_of(&pushed).seq,
        "a push after a broadcast names it as the user's previous"
    );

    let epoch = stored_epoch(&mut conn, &scripts, &partitions, &pushed).await;
    let resumed = history::resume(
        &mut conn,
        &scripts,
        &partitions,
        &pushed,
        Some((epoch, first.seq)),
    )
    .await
    .unwrap();
    assert_eq!(resumed.recovered, Some(true));
    assert_eq!(
        resumed.replay,
        [
            (b1_of(&pushed).seq, Bytes::from("b1")),
            (second.seq, Bytes::from("p2"))
        ],
        "the broadcast merged with the user's pushes, in seq order"
    );
    let quiet_epoch = stored_epoch(&mut conn, &scripts, &partitions, &quiet).await;
    let fresh = history::resume(
        &mut conn,
        &scripts,
        &partitions,
        &quiet,
        Some((quiet_epoch, 0)),
    )
    .await
    .unwrap();
    assert_eq!(
        fresh.last_seq,
        b1_of(&quiet).seq,
        "a user never pushed to has the broadcast"
    );
    assert_eq!(fresh.replay, [(b1_of(&quiet).seq, Bytes::from("b1"))]);
    let checked = history::check(hosts[0], &partitions, &[pushed.clone(), quiet.clone()])
        .await
        .unwrap();
    assert_eq!(
        checked,
        [
            Some((epoch, second.seq)),
            Some((quiet_epoch, b1_of(&quiet).seq))
        ]
    );

    // Pushed since b1 where the user has a device: b2 names it.
    let tag = partitions.tag(partitions.of(&pushed));
    let mut hset = redis::cmd("HSET");
    hset.arg(keys::presence(tag, &pushed))
        .arg("web-1/0000abcd/0")
        .arg(1);
    hset.query_async::<()>(&mut conn).await.unwrap();
    let third = add(hosts[0], "p3").await;
    let b2 = history::broadcast(hosts[0], &scripts, &partitions, Bytes::from("b2"), LIMITS)
        .await
        .unwrap();
    let b2_pushed = &b2[partitions.of(&pushed)];
    assert_eq!(b2_pushed.previous_seq, b1_of(&pushed).seq);
    assert_eq!(
        b2_pushed.pushed_since,
        [(
            "web-1/0000abcd/0".to_owned(),
            vec![(pushed.clone(), third.seq)]
        )]
    );
    // The scripts are loaded now (a first call is EVALSHA, then EVAL).
    let calls_before = script_calls(ports);
    let b3 = history::broadcast(hosts[1], &scripts, &partitions, Bytes::from("b3"), LIMITS)
        .await
        .unwrap();
    assert_eq!(
        script_calls(ports) - calls_before,
        PARTITIONS_DEFAULT as u64,
        "one script call per partition"
    );
    assert!(
        b3[partitions.of(&pushed)].pushed_since.is_empty(),
        "each broadcast starts the record again"
    );

    // The entry limit (each broadcast drops the oldest above it): b1
    // dropped; a resume from before it is a gap, from it is not.
    let two = HistoryLimits {
        retention_ms: 60_000,
        entries_max: 2,
    };
    let b4 = history::broadcast(hosts[0], &scripts, &partitions, Bytes::from("b4"), two)
        .await
        .unwrap();
    let gap = history::resume(
        &mut conn,
        &scripts,
        &partitions,
        &quiet,
        Some((quiet_epoch, 0)),
    )
    .await
    .unwrap();
    assert_eq!(gap.recovered, Some(false), "an evicted broadcast is a gap");
    let since = b1_of(&quiet).seq;
    let kept = history::resume(
        &mut conn,
        &scripts,
        &partitions,
        &quiet,
        Some((quiet_epoch, since)),
    )
    .await
    .unwrap();
    assert_eq!(kept.recovered, Some(true));
    let p = partitions.of(&quiet);
    assert_eq!(
        kept.replay.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [b2[p].seq, b3[p].seq, b4[p].seq]
    );
}

async fn stored_epoch<C: ConnectionLike>(
    conn: &mut C,
    scripts: &Scripts,
    partitions: &Partitions,
    user: &str,
) -> u64 {
    history::resume(conn, scripts, partitions, user, None)
        .await
        .unwrap()
        .epoch
}

#[test]
fn history_in_a_redis_cluster() {
    if !redis_fixture::available("history_in_a_redis_cluster") {
        return;
    }
    let cluster = RedisCluster::start();
    let seeds = vec![format!("redis://{}", cluster.seed())];
    let client = redis::cluster::ClusterClient::new(seeds).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let host_a = client.get_async_connection().await.unwrap();
        let host_b = client.get_async_connection().await.unwrap();
        let scripts = Arc::new(Scripts::default());
        let partitions = Partitions::new(PARTITIONS_DEFAULT);
        let recipients = users(300);
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
        let warm: Vec<String> = recipients.iter().map(|u| format!("warm-{u}")).collect();
        warm_up(&host_a, &scripts, &partitions, &warm).await;
        let before = script_calls(&ports);
        let started = Instant::now();
        let seqs =
            pushes_from_two_hosts([&host_a, &host_b], &scripts, &partitions, &recipients, 4).await;
        let per_push = started.elapsed() / 4;
        let calls = script_calls(&ports) - before;
        let touched = recipients
            .iter()
            .map(|u| partitions.of(u))
            .collect::<std::collections::HashSet<_>>()
            .len() as u64;
        assert_eq!(calls, 4 * touched, "one script call per partition per push");
        eprintln!(
            "3+3 cluster: a 300-user push = {touched} script calls over 3 masters, \
             all in flight at once, {per_push:?} wall per push on this machine"
        );
        let mut conn = host_b.clone();
        let user = &recipients[42];
        let chain = &seqs[user];
        let epoch = stored_epoch(&mut conn, &scripts, &partitions, user).await;
        let resumed = history::resume(
            &mut conn,
            &scripts,
            &partitions,
            user,
            Some((epoch, chain[1])),
        )
        .await
        .unwrap();
        assert_eq!(resumed.recovered, Some(true));
        assert_eq!(
            resumed.replay.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            chain[2..].to_vec()
        );
        broadcasts_merge_into_every_users_history([&host_a, &host_b], &ports).await;
        pushes_started_in_order_keep_it(&host_a, &scripts, &partitions).await;
    });
}

fn used_memory(port: u16) -> i64 {
    let info = cli(port, &["info", "memory"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The Redis cost of the history (bench/results/2026-12-01/cluster/):
/// `cargo test --release --test cluster_history -- --ignored --nocapture`.
/// 30,000 users pushed in 300-user pushes with a 100-byte payload, twice:
/// used_memory per user after the first push (its history list and meta)
/// and per further stored entry, the payload keys per push, and the
/// script calls and wall time per push.
#[test]
#[ignore]
fn measure_history_cost() {
    if !redis_fixture::available("measure_history_cost") {
        return;
    }
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        let scripts = Arc::new(Scripts::default());
        let partitions = Partitions::new(PARTITIONS_DEFAULT);
        let all = users(30_000);
        let payload = Bytes::from(format!("{{\"p\":\"{}\"}}", "x".repeat(92)));
        assert_eq!(payload.len(), 100);
        warm_up(&conn, &scripts, &partitions, &["warm".to_owned()]).await;
        let mut rounds = Vec::new();
        for round in 0..2 {
            let memory_before = used_memory(redis.port);
            let calls_before = script_calls(&[redis.port]);
            let started = Instant::now();
            for batch in all.chunks(300) {
                history::add(&conn, &scripts, &partitions, batch, payload.clone(), LIMITS)
                    .await
                    .unwrap();
            }
            let wall = started.elapsed();
            let memory = used_memory(redis.port) - memory_before;
            let calls = script_calls(&[redis.port]) - calls_before;
            let pushes = all.len().div_ceil(300) as u64;
            eprintln!(
                "round {round}: {pushes} pushes of 300 users, {} B used_memory ({:.0} B per \
                 recipient), {} script calls ({:.1} per push), {:?} per push",
                memory,
                memory as f64 / all.len() as f64,
                calls,
                calls as f64 / pushes as f64,
                wall / pushes as u32
            );
            rounds.push((memory, calls));
        }
        let payload_keys = cli(redis.port, &["dbsize"]).unwrap();
        eprintln!("keys in Redis: {}", payload_keys.trim());
        let sample = keys::payload_prefix(partitions.tag(0)) + "1";
        eprintln!(
            "MEMORY USAGE of one payload key: {}",
            cli(redis.port, &["memory", "usage", &sample])
                .unwrap_or_default()
                .trim()
        );
        let user = &all[0];
        let tag = partitions.tag(partitions.of(user));
        for key in [keys::history(tag, user), keys::user_meta(tag, user)] {
            eprintln!(
                "MEMORY USAGE {key}: {}",
                cli(redis.port, &["memory", "usage", &key])
                    .unwrap_or_default()
                    .trim()
            );
        }
    });
}
