//! One maintained async connection to Redis, standalone or cluster, behind
//! redis-rs's `ConnectionLike` so the rest of the Redis thread does not
//! care which.
//!
//! - Standalone: a `ConnectionManager` (one multiplexed connection that
//!   pipelines every caller's commands and reconnects by itself).
//! - Cluster: redis-rs's async cluster connection (follows MOVED/ASK,
//!   refreshes the slot map after a failover, one connection per node).
//!
//! Both time out each call after `timeout_ms`, so a Redis that stopped
//! answering turns into errors, never into a Redis thread that waits.

use super::settings::{ClusterSettings, RedisTarget};
use redis::aio::{AsyncPushSender, ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// Reconnect back-off of the standalone connection: from this…
const RECONNECT_DELAY_MS_MIN: u64 = 100;
/// …up to this, so a Redis that returns is used again within about a second.
const RECONNECT_DELAY_MS_MAX: u64 = 1_000;

#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Credentials given outside the URLs (`redis_username`,
/// `redis_password_file`).
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Credentials {
    /// Reads the password file, if any: its first line, without the line
    /// end (files written by `echo` end in one).
    pub fn load(settings: &ClusterSettings) -> Result<Credentials, String> {
        let password = match &settings.password_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read redis_password_file {}: {e}", path.display())
                })?;
                let line = text.lines().next().unwrap_or("").to_owned();
                if line.is_empty() {
                    return Err(format!(
                        "redis_password_file {} is empty; write the password on its first line",
                        path.display()
                    ));
                }
                Some(line)
            }
        };
        Ok(Credentials {
            username: settings.username.clone(),
            password,
        })
    }
}

/// Connects once; the connection then keeps itself connected.
pub async fn connect(settings: &ClusterSettings, credentials: &Credentials) -> RedisResult<Conn> {
    let timeout = Duration::from_millis(settings.timeout_ms);
    match &settings.target {
        RedisTarget::Standalone(url) => {
            let mut info = url.as_str().into_connection_info()?;
            let mut redis = info.redis_settings().clone();
            if let Some(username) = &credentials.username {
                redis = redis.set_username(username);
            }
            if let Some(password) = &credentials.password {
                redis = redis.set_password(password);
            }
            info = info.set_redis_settings(redis);
            let client = redis::Client::open(info)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_min_delay(Duration::from_millis(RECONNECT_DELAY_MS_MIN))
                .set_max_delay(Duration::from_millis(RECONNECT_DELAY_MS_MAX));
            let manager = ConnectionManager::new_with_config(client, config).await?;
            Ok(Conn::Standalone(manager))
        }
        RedisTarget::Cluster(urls) => {
            let mut builder = ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout);
            if let Some(username) = &credentials.username {
                builder = builder.username(username);
            }
            if let Some(password) = &credentials.password {
                builder = builder.password(password);
            }
            let client = builder.build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

/// Connects a subscriber: RESP3 (sharded pub/sub needs it), its messages
/// handed to `sink` as they arrive, its subscriptions renewed by the client
/// after a reconnect (standalone) or a failover / slot move (cluster).
pub async fn connect_subscriber(
    settings: &ClusterSettings,
    credentials: &Credentials,
    sink: impl AsyncPushSender,
) -> RedisResult<Conn> {
    let timeout = Duration::from_millis(settings.timeout_ms);
    match &settings.target {
        RedisTarget::Standalone(url) => {
            let mut info = url.as_str().into_connection_info()?;
            let mut redis = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            if let Some(username) = &credentials.username {
                redis = redis.set_username(username);
            }
            if let Some(password) = &credentials.password {
                redis = redis.set_password(password);
            }
            info = info.set_redis_settings(redis);
            let client = redis::Client::open(info)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_min_delay(Duration::from_millis(RECONNECT_DELAY_MS_MIN))
                .set_max_delay(Duration::from_millis(RECONNECT_DELAY_MS_MAX))
                .set_push_sender(sink)
                .set_automatic_resubscription();
            let manager = ConnectionManager::new_with_config(client, config).await?;
            Ok(Conn::Standalone(manager))
        }
        RedisTarget::Cluster(urls) => {
            let mut builder = ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(sink);
            if let Some(username) = &credentials.username {
                builder = builder.username(username);
            }
            if let Some(password) = &credentials.password {
                builder = builder.password(password);
            }
            let client = builder.build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
