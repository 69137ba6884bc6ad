//! The Redis thread's side of a broadcast (see `cluster::broadcast`):
//! storing it once per partition and ringing one doorbell per live host
//! (the origin), and handing a heard broadcast doorbell to every shard of
//! this host (the receiver).

use super::{redis_failure, Shared};
use crate::cluster::broadcast::{self, BroadcastBell, BroadcastPlan};
use crate::cluster::connect::Conn;
use crate::cluster::{history, presence, pubsub};
use crate::gateway::publish::tickets::Ticket;
use crate::gateway::Msg;
use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Stores a broadcast (one script call per partition, all in flight),
/// hands it to this host's shards, rings every other live host and
/// answers the counts (hosts reached). A failed store answers the
/// broadcast as failed — never as accepted: the partitions whose call
/// succeeded have it, and their devices get it at the next doorbell,
/// check or resume.
pub(super) async fn broadcast(
    shared: Arc<Shared>,
    conn: Conn,
    shard: usize,
    ticket: Ticket,
    payload: Bytes,
) {
    let timeout = Duration::from_millis(shared.settings.timeout_ms);
    let store = history::broadcast(
        &conn,
        &shared.scripts,
        &shared.partitions,
        payload.clone(),
        shared.settings.history,
    );
    let stored = match tokio::time::timeout(timeout, store).await {
        Ok(Ok(stored)) => stored,
        failed => {
            shared.control.redis_errors_total.fetch_add(1, Relaxed);
            let why = format!(
                "Redis unavailable: {}; the broadcast may have been stored for some partitions",
                redis_failure(failed, shared.settings.timeout_ms)
            );
            return shared.answer(shard, Msg::RedisFailed { ticket, why }).await;
        }
    };
    // Every host live now: a host started since the last heartbeat has
    // devices too (one read; the last heartbeat's set if it fails).
    let mut reader = conn.clone();
    let live = match tokio::time::timeout(timeout, presence::read_live(&mut reader)).await {
        Ok(Ok(live)) => Arc::new(live),
        _ => shared.live(),
    };
    let BroadcastPlan { local, remote } =
        broadcast::plan(&stored, &live, &shared.settings.host_id, &payload);
    hand_to_shards(&shared, Arc::new(local)).await;
    let others = remote.len();
    let heard = if remote.is_empty() {
        Vec::new()
    } else {
        match tokio::time::timeout(timeout, pubsub::ring(&conn, remote)).await {
            Ok(Ok(heard)) => heard,
            // Not rung: those hosts count as stored, and their devices
            // repair from the history at the next doorbell or check.
            failed => {
                shared.control.redis_errors_total.fetch_add(1, Relaxed);
                tracing::warn!(
                    error = %redis_failure(failed, shared.settings.timeout_ms),
                    "Redis: a broadcast's doorbells could not be rung"
                );
                Vec::new()
            }
        }
    };
    let counted = broadcast::count(others, &heard);
    let counts = crate::gateway::home::Counts {
        delivered: counted.delivered,
        stored: counted.stored,
        ..Default::default()
    };
    shared.answer(shard, Msg::Pushed { ticket, counts }).await;
}

/// A broadcast's doorbell heard on `channel`: every shard of this host
/// gets it (one decoded bell, shared).
pub(super) async fn heard(shared: &Shared, channel: &str, message: &Bytes) {
    match BroadcastBell::decode(message) {
        Ok(bell) => hand_to_shards(shared, Arc::new(bell)).await,
        Err(why) => tracing::warn!(%channel, why, "Redis: a broadcast doorbell was refused"),
    }
}

async fn hand_to_shards(shared: &Shared, bell: Arc<BroadcastBell>) {
    let shards = shared.injectors.get().map_or(0, Vec::len);
    for shard in 0..shards {
        shared.answer(shard, Msg::BroadcastBell(bell.clone())).await;
    }
}
