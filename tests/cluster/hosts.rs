//! Pushgate hosts over Redis for the several-hosts tests: the `serve`
//! arguments of a host, its readiness, metrics and presence as its admin
//! API says them, pushes through its push socket, and waiting until a
//! host hears its doorbell channels. Shared by `tests/cluster.rs` and
//! `tests/cluster_failure.rs`.
#![allow(dead_code)]

use crate::common::Server;
use crate::redis_fixture::{cli, wait_for, RedisCluster};
use pushgate::push::client::{Client, PushOutcome};
use std::time::Duration;

/// Heartbeats every second, so a test sees changes within a few.
pub const HOST_TTL_MS: &str = "3000";
pub const TIMEOUT_MS: &str = "500";

pub fn redis_args<'a>(target: &'a [&'a str], host_id: &'a str) -> Vec<&'a str> {
    redis_args_with_shards(target, host_id, "1")
}

pub fn redis_args_with_shards<'a>(
    target: &'a [&'a str],
    host_id: &'a str,
    shards: &'a str,
) -> Vec<&'a str> {
    let mut args = target.to_vec();
    args.extend([
        "--host-id",
        host_id,
        "--redis-host-ttl-ms",
        HOST_TTL_MS,
        "--redis-timeout-ms",
        TIMEOUT_MS,
        "--shards",
        shards,
    ]);
    args
}

pub fn readyz(server: &Server) -> (u16, String) {
    server.admin("GET", "/readyz", None, "")
}

pub fn metric(server: &Server, name: &str) -> u64 {
    let (_, text) = server.admin("GET", "/metrics", None, "");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// `GET /v1/presence/<user>` on `server`: the device count.
pub fn presence(server: &Server, user: &str) -> u64 {
    let (status, body) = server.admin(
        "GET",
        &format!("/v1/presence/{user}"),
        Some(&server.admin_token()),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["online"].as_bool(),
        Some(v["devices"].as_u64() > Some(0)),
        "{v}"
    );
    v["devices"].as_u64().unwrap()
}

/// Waits until presence says `devices`; a 503 (Redis reconnecting) is
/// asked again.
pub fn wait_presence(server: &Server, user: &str, devices: u64, what: &str) {
    wait_for(what, Duration::from_secs(20), || {
        let path = format!("/v1/presence/{user}");
        let (status, body) = server.admin("GET", &path, Some(&server.admin_token()), "");
        match status {
            503 => {
                assert!(body.contains("Redis unavailable"), "{body}");
                false
            }
            _ => presence(server, user) == devices,
        }
    });
}

/// Pushes through `host`'s push socket (the Unix sockets in its run
/// directory, as `pushgate push` and the client library do).
pub fn push_via(host: &Server, users: &[&str], data: &str) -> PushOutcome {
    let mut client = Client::connect(&host.run_dir).expect("the host's push socket");
    client.push(users, data).expect("the push is answered")
}

/// Broadcasts through `host`'s push socket.
pub fn broadcast_via(host: &Server, data: &str) -> PushOutcome {
    let mut client = Client::connect(&host.run_dir).expect("the host's push socket");
    client.broadcast(data).expect("the broadcast is answered")
}

/// Subscribers of a doorbell channel: `PUBSUB NUMSUB` on a standalone
/// Redis, `PUBSUB SHARDNUMSUB` on the cluster master of its slot.
pub type NumSub<'a> = Box<dyn Fn(&str) -> u64 + 'a>;

pub fn subscribers(reply: Option<String>) -> u64 {
    reply
        .and_then(|out| out.lines().nth(1)?.trim().parse().ok())
        .unwrap_or(0)
}

pub fn standalone_numsub(port: u16) -> NumSub<'static> {
    Box::new(move |channel| subscribers(cli(port, &["pubsub", "numsub", channel])))
}

pub fn cluster_numsub(cluster: &RedisCluster) -> NumSub<'_> {
    Box::new(move |channel| {
        let master = cluster.master_of(channel);
        subscribers(cli(master, &["pubsub", "shardnumsub", channel]))
    })
}

/// Waits until each of `host_id`'s shards hears its doorbell channel.
pub fn wait_subscribed(numsub: &NumSub<'_>, host_id: &str, shards: usize) {
    for shard in 0..shards {
        let channel = pushgate::cluster::doorbell::channel(host_id, shard);
        wait_for(
            &format!("{channel} subscribed"),
            Duration::from_secs(20),
            || numsub(&channel) >= 1,
        );
    }
}
