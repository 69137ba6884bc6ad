//! Ringing doorbells ([`super::doorbell`]) and hearing them: the Redis
//! calls, on a connection of their own for the subscriptions.
//!
//! - [`ring`]: one `SPUBLISH` (cluster) / `PUBLISH` (standalone) per
//!   doorbell, all in flight at once; each answers how many subscribers
//!   got it (0: the host·shard is not listening — dead, or resubscribing).
//! - [`sink`] + [`subscribe`]: a RESP3 connection whose messages land in a
//!   bounded queue; a full queue drops the doorbell and counts it (at most
//!   once anyway: the receiving shard repairs the gap from the history).
//!   redis-rs renews the subscriptions after a reconnect (standalone); on a
//!   cluster it does not after a failover (the test kills a master: its
//!   channels stayed silent for a minute), so the owner calls [`subscribe`]
//!   again every [`RESUBSCRIBE_INTERVAL_MS`]: one `SSUBSCRIBE` per channel,
//!   a no-op where the subscription stands, a new one on a promoted
//!   replica. Doorbells rung in between are lost, which the history
//!   repairs.

use super::connect::Conn;
use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::sync::mpsc;

/// How often the owner subscribes again (see the module's doc): a
/// failover silences a channel for at most about this long after the
/// cluster has a new master.
pub const RESUBSCRIBE_INTERVAL_MS: u64 = 1_000;

/// Doorbells heard and not yet handed to the shards, at most.
pub const HEARD_QUEUE_MAX: usize = 8_192;

/// A message heard on a subscribed channel: (channel, message).
pub type Heard = (String, Bytes);

/// Doorbells dropped because the heard queue was full.
#[derive(Clone, Default)]
pub struct Dropped(Arc<AtomicU64>);

impl Dropped {
    pub fn count(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// The subscriber's push sender and the bounded queue it fills.
pub fn sink(
    queue_max: usize,
) -> (
    impl redis::aio::AsyncPushSender,
    mpsc::Receiver<Heard>,
    Dropped,
) {
    let (tx, rx) = mpsc::channel(queue_max);
    let dropped = Dropped::default();
    let counter = dropped.clone();
    let sender = move |info: PushInfo| -> Result<(), redis::aio::SendError> {
        if !matches!(info.kind, PushKind::Message | PushKind::SMessage) {
            return Ok(()); // (s)subscribe confirmations, disconnects
        }
        let mut data = info.data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(message))) =
            (data.next(), data.next())
        else {
            return Ok(());
        };
        let heard = (
            String::from_utf8_lossy(&channel).into_owned(),
            Bytes::from(message),
        );
        if tx.try_send(heard).is_err() {
            counter.0.fetch_add(1, Relaxed);
        }
        // Never an error: redis-rs would stop using this sender.
        Ok(())
    };
    (sender, rx, dropped)
}

/// Subscribes `conn` (from `connect_subscriber`) to `channels`, one call
/// per channel on a cluster (each lives in its own slot). Call again every
/// [`RESUBSCRIBE_INTERVAL_MS`]; channels already subscribed stay as they
/// are.
pub async fn subscribe(conn: &mut Conn, channels: &[String]) -> redis::RedisResult<()> {
    match conn {
        Conn::Standalone(manager) => manager.subscribe(channels).await,
        Conn::Cluster(cluster) => {
            for channel in channels {
                cluster.ssubscribe(channel).await?;
            }
            Ok(())
        }
    }
}

/// Publishes each `(channel, message)`, all in flight at once; how many
/// subscribers got each, in order.
pub async fn ring(conn: &Conn, bells: Vec<(String, Vec<u8>)>) -> redis::RedisResult<Vec<u64>> {
    let verb = match conn {
        Conn::Standalone(_) => "PUBLISH",
        Conn::Cluster(_) => "SPUBLISH",
    };
    let mut calls = tokio::task::JoinSet::new();
    for (i, (channel, message)) in bells.into_iter().enumerate() {
        let mut conn = conn.clone();
        calls.spawn(async move {
            let mut cmd = redis::cmd(verb);
            cmd.arg(channel).arg(message);
            let got: u64 = cmd.query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>((i, got))
        });
    }
    let mut got = vec![0; calls.len()];
    while let Some(joined) = calls.join_next().await {
        let (i, n) = joined.map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Io, "publish task ended", e.to_string()))
        })??;
        got[i] = n;
    }
    Ok(got)
}
