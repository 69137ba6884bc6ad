//! The presence sweeper (issue 11), against real `redis-server` processes
//! (standalone, and 3 masters + 3 replicas) and real `pushgate serve`
//! processes: a host killed with SIGKILL leaves presence fields for users
//! nobody asks about; the host that stays removes them, and the dead
//! instance's indexes and its entry among the hosts, within a stated time,
//! without touching the live host's fields.

mod common;
#[path = "cluster/redis_fixture.rs"]
mod redis_fixture;

use common::Server;
use pushgate::cluster::keys;
use pushgate::cluster::partitions::Partitions;
use redis_fixture::{cli, wait_for, RedisCluster, RedisServer};
use std::time::{Duration, Instant};

const HOST_TTL_MS: u64 = 3000;

/// The stated bound (README, "Running several hosts"): the dead instance
/// lapses one TTL after its last heartbeat, the sweep lock (if the dead
/// host held it) lapses one TTL after that, and a sweep step runs every
/// heartbeat interval (TTL / 3) — here a few steps.
const STATED_BOUND: Duration = Duration::from_millis(2 * HOST_TTL_MS + 3 * HOST_TTL_MS / 3);
/// What the test waits: four times that, for a busy machine (each check
/// below runs ~100 `redis-cli` processes).
const SWEPT_WITHIN: Duration = Duration::from_millis(4 * (2 * HOST_TTL_MS + 3 * HOST_TTL_MS / 3));

fn host(target: &[&str], host_id: &str) -> Server {
    let ttl = HOST_TTL_MS.to_string();
    let mut args = target.to_vec();
    args.extend([
        "--host-id",
        host_id,
        "--redis-host-ttl-ms",
        &ttl,
        "--redis-timeout-ms",
        "500",
        "--shards",
        "2",
    ]);
    Server::start(&args)
}

/// Where a key lives: the standalone port, or its cluster master.
type PortOf<'a> = Box<dyn Fn(&str) -> u16 + 'a>;

fn presence_key(user: &str) -> String {
    let partitions = Partitions::new(128);
    keys::presence(partitions.tag(partitions.of(user)), user)
}

/// Every instance of `pushgate:hosts`, live or lapsed.
fn instances(port_of: &PortOf) -> Vec<String> {
    let port = port_of(keys::HOSTS_KEY);
    cli(port, &["zrange", keys::HOSTS_KEY, "0", "-1"])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn fields(port_of: &PortOf, user: &str) -> Vec<String> {
    let key = presence_key(user);
    cli(port_of(&key), &["hkeys", &key])
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// How many of `users` are in `instance`'s presence index.
fn indexed(port_of: &PortOf, instance: &str, users: &[&str]) -> usize {
    let partitions = Partitions::new(128);
    users
        .iter()
        .filter(|user| {
            let tag = partitions.tag(partitions.of(user));
            let bucket = pushgate::cluster::presence::index_bucket(&partitions, user);
            let key = keys::presence_index(tag, instance, bucket);
            cli(port_of(&key), &["hexists", &key, user]).is_some_and(|n| n.trim() == "1")
        })
        .count()
}

fn a_killed_hosts_presence_is_swept(port_of: PortOf, target: &[&str]) {
    let keeper = host(target, "keeper");
    let doomed = host(target, "doomed");
    let users: Vec<String> = (0..40).map(|i| format!("swept-{i}")).collect();
    let mut doomed_users: Vec<&str> = users.iter().map(String::as_str).collect();
    doomed_users.push("both");
    let mut devices = Vec::new();
    for user in &users {
        devices.push(common::ws_connect(&doomed, user, false, None).0);
    }
    // One user with a device on each host: only the dead host's field goes.
    devices.push(common::ws_connect(&doomed, "both", false, None).0);
    devices.push(common::ws_connect(&keeper, "both", false, None).0);
    wait_for(
        "every device's presence written with its index",
        Duration::from_secs(30),
        || {
            users.iter().all(|u| fields(&port_of, u).len() == 1)
                && fields(&port_of, "both").len() == 2
        },
    );
    let all = instances(&port_of);
    let doomed_instance = all
        .iter()
        .find(|i| i.starts_with("doomed/"))
        .expect("the doomed host is listed")
        .clone();
    let keeper_instance = all
        .iter()
        .find(|i| i.starts_with("keeper/"))
        .expect("the keeper is listed")
        .clone();
    assert_eq!(indexed(&port_of, &doomed_instance, &doomed_users), 41);
    assert_eq!(indexed(&port_of, &keeper_instance, &["both"]), 1);

    let killed = Instant::now();
    let status = doomed.signal_and_wait(libc::SIGKILL);
    assert!(!status.success());
    drop(devices.drain(..users.len() + 1));
    // Nobody asks about these users: only the sweeper can remove them.
    wait_for(
        "the dead host's presence fields swept",
        SWEPT_WITHIN,
        || {
            users.iter().all(|u| fields(&port_of, u).is_empty())
                && fields(&port_of, "both").len() == 1
                && indexed(&port_of, &doomed_instance, &doomed_users) == 0
                && instances(&port_of) == vec![keeper_instance.clone()]
        },
    );
    eprintln!(
        "a SIGKILLed host's presence was swept {:.1} s after the kill (TTL {} ms; stated bound {:?})",
        killed.elapsed().as_secs_f64(),
        HOST_TTL_MS,
        STATED_BOUND
    );
    keeper.wait_log("swept the presence a lapsed host instance left");
    assert!(fields(&port_of, "both")[0].starts_with(&format!("{keeper_instance}/")));
    assert_eq!(indexed(&port_of, &keeper_instance, &["both"]), 1);
}

#[test]
fn a_killed_hosts_presence_is_swept_on_a_standalone_redis() {
    if !redis_fixture::available("a_killed_hosts_presence_is_swept_on_a_standalone_redis") {
        return;
    }
    let redis = RedisServer::start();
    let url = redis.url();
    let port = redis.port;
    a_killed_hosts_presence_is_swept(Box::new(move |_| port), &["--redis-url", &url]);
}

#[test]
fn a_killed_hosts_presence_is_swept_on_a_redis_cluster() {
    if !redis_fixture::available("a_killed_hosts_presence_is_swept_on_a_redis_cluster") {
        return;
    }
    let cluster = RedisCluster::start();
    let seed = cluster.seed();
    a_killed_hosts_presence_is_swept(
        Box::new(|key| cluster.master_of(key)),
        &["--redis-nodes", &seed],
    );
}
