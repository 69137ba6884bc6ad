//! Doorbells over Redis pub/sub (issue 11, step 2's transport), against
//! real `redis-server` processes: one channel per host·shard, each heard
//! only by its subscriber, decoded as rung; and heard again, without the
//! subscriber doing anything, after Redis restarts (standalone) or after
//! the master holding a channel's slot is killed and its replica takes
//! over (3+3 cluster: sharded pub/sub resubscribed after the topology
//! change).

#[path = "cluster/redis_fixture.rs"]
mod redis_fixture;

use bytes::Bytes;
use pushgate::cluster::connect::{connect, connect_subscriber, Conn, Credentials};
use pushgate::cluster::doorbell::{channel, Bell, Rung};
use pushgate::cluster::pubsub::{self, Heard, HEARD_QUEUE_MAX};
use pushgate::cluster::{ClusterSettings, RedisTarget};
use redis_fixture::{cli, wait_for, RedisCluster, RedisServer};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SHARDS: usize = 6;

fn settings(target: RedisTarget) -> ClusterSettings {
    ClusterSettings {
        target,
        host_id: "h1".to_owned(),
        username: None,
        password_file: None,
        host_ttl_ms: 3_000,
        timeout_ms: 1_000,
        check_interval_ms: 5_000,
        history: pushgate::cluster::history::HistoryLimits {
            retention_ms: 60_000,
            entries_max: 64,
        },
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn bell_for(shard: usize, round: u64) -> Bell {
    Bell {
        rungs: vec![Rung {
            user: format!("user-{shard}"),
            epoch: 77,
            seq: round + 1,
            previous_seq: round,
        }],
        payload: Bytes::from(format!("{{\"shard\":{shard},\"round\":{round}}}")),
    }
}

/// Rings every shard's channel once (retrying, within a generous deadline,
/// until each has a listener again) and checks each shard hears exactly
/// its doorbell.
async fn ring_and_hear(publisher: &Conn, heard: &mut mpsc::Receiver<Heard>, round: u64) {
    let channels: Vec<String> = (0..SHARDS).map(|s| channel("h1", s)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<usize> = (0..SHARDS).collect();
    while !pending.is_empty() {
        let bells = pending
            .iter()
            .map(|&s| (channels[s].clone(), bell_for(s, round).encode()))
            .collect();
        let got = pubsub::ring(publisher, bells).await.unwrap_or_default();
        pending = pending
            .iter()
            .zip(got.iter().chain(std::iter::repeat(&0)))
            .filter(|(_, &n)| n == 0)
            .map(|(&s, _)| s)
            .collect();
        assert!(
            Instant::now() < deadline,
            "round {round}: channels of shards {pending:?} have no listener"
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Every shard's doorbell arrives (a retry may have rung one twice:
    // at most once per ring, de-duplicated by seq on a real shard).
    let mut by_channel: HashMap<String, Bell> = HashMap::new();
    while by_channel.len() < SHARDS {
        let (channel, message) = tokio::time::timeout(Duration::from_secs(20), heard.recv())
            .await
            .expect("a doorbell within 20 s")
            .expect("the subscriber's queue is open");
        let bell = Bell::decode(&message).expect("a well-formed doorbell");
        by_channel.insert(channel, bell);
    }
    for (s, channel) in channels.iter().enumerate() {
        assert_eq!(by_channel[channel], bell_for(s, round), "{channel}");
    }
}

#[test]
fn doorbells_on_a_standalone_redis_survive_its_restart() {
    if !redis_fixture::available("doorbells_on_a_standalone_redis_survive_its_restart") {
        return;
    }
    let mut redis = RedisServer::start();
    let settings = settings(RedisTarget::Standalone(redis.url()));
    let rt = runtime();
    rt.block_on(async {
        let credentials = Credentials::default();
        let publisher = connect(&settings, &credentials).await.unwrap();
        let (sink, mut heard, dropped) = pubsub::sink(HEARD_QUEUE_MAX);
        let mut subscriber = connect_subscriber(&settings, &credentials, sink)
            .await
            .unwrap();
        let channels: Vec<String> = (0..SHARDS).map(|s| channel("h1", s)).collect();
        pubsub::subscribe(&mut subscriber, &channels).await.unwrap();
        ring_and_hear(&publisher, &mut heard, 1).await;
        // Nobody listens on another host's channel.
        let got = pubsub::ring(&publisher, vec![(channel("h2", 0), b"x".to_vec())])
            .await
            .unwrap();
        assert_eq!(got, vec![0]);

        redis.restart();
        ring_and_hear(&publisher, &mut heard, 2).await;
        assert_eq!(dropped.count(), 0);
        drop(subscriber);
    });
}

/// The live node that serves `key`'s slot as master, if any says so.
fn serving_master(cluster: &RedisCluster, key: &str) -> Option<u16> {
    let slot = pushgate::cluster::keys::slot(key.as_bytes());
    cluster.nodes.iter().map(|n| n.port).find(|&port| {
        cli(port, &["cluster", "nodes"]).is_some_and(|nodes| {
            nodes
                .lines()
                .filter(|l| l.contains("myself,master"))
                .flat_map(|l| l.split_whitespace().skip(8))
                .any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
                })
        })
    })
}

#[test]
fn sharded_doorbells_survive_a_master_failover() {
    if !redis_fixture::available("sharded_doorbells_survive_a_master_failover") {
        return;
    }
    let mut cluster = RedisCluster::start();
    let settings = settings(RedisTarget::Cluster(vec![format!(
        "redis://{}",
        cluster.seed()
    )]));
    let rt = runtime();
    rt.block_on(async {
        let credentials = Credentials::default();
        let publisher = connect(&settings, &credentials).await.unwrap();
        let (sink, mut heard, dropped) = pubsub::sink(HEARD_QUEUE_MAX);
        let mut subscriber = connect_subscriber(&settings, &credentials, sink)
            .await
            .unwrap();
        let channels: Vec<String> = (0..SHARDS).map(|s| channel("h1", s)).collect();
        pubsub::subscribe(&mut subscriber, &channels).await.unwrap();
        // What the Redis thread does: subscribe again every interval.
        let renew = {
            let (mut subscriber, channels) = (subscriber.clone(), channels.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(pubsub::RESUBSCRIBE_INTERVAL_MS))
                        .await;
                    let _ = pubsub::subscribe(&mut subscriber, &channels).await;
                }
            })
        };
        let masters: std::collections::HashSet<u16> = channels
            .iter()
            .filter_map(|c| serving_master(&cluster, c))
            .collect();
        eprintln!("{SHARDS} channels over {} masters", masters.len());
        ring_and_hear(&publisher, &mut heard, 1).await;

        // Kill the master of shard 0's channel (not the seed the clients
        // were given, so the test is about the failover, not the seed).
        let victim = serving_master(&cluster, &channels[0]).unwrap();
        let index = cluster.nodes.iter().position(|n| n.port == victim).unwrap();
        let started = Instant::now();
        cluster.nodes[index].kill();
        let survivor = cluster
            .nodes
            .iter()
            .find(|n| n.port != victim)
            .unwrap()
            .port;
        wait_for("a replica to take over", Duration::from_secs(60), || {
            cli(survivor, &["cluster", "info"]).is_some_and(|o| o.contains("cluster_state:ok"))
                && serving_master(&cluster, &channels[0]).is_some_and(|p| p != victim)
        });
        ring_and_hear(&publisher, &mut heard, 2).await;
        eprintln!(
            "doorbells heard again {:?} after the master was killed",
            started.elapsed()
        );
        assert_eq!(dropped.count(), 0);
        renew.abort();
        drop(subscriber);
    });
}
