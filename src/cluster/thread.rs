//! The Redis thread: one per process, outside the shard rings, running a
//! current-thread tokio runtime with the maintained Redis connection.
//!
//! Today it claims the host's `host_id` at start (refusing a duplicate),
//! renews the claim with a heartbeat, reports Redis health to [`Control`]
//! (`/readyz` reason `redis`, the `redis_*` metrics) and releases the claim
//! on a clean stop. Shards never wait for it: they read `Control`'s atomics.

use super::connect::{connect, Conn, Credentials};
use super::host_claim::{self, Claimed, Renewed};
use super::settings::ClusterSettings;
use crate::control::Control;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// While Redis is down, how often the heartbeat tries again: recovery is
/// noticed within about this long, without a busy loop.
const RETRY_INTERVAL_MS: u64 = 500;
/// How long a start tries to reach Redis, in units of `redis_timeout_ms`
/// (default 2 s → 10 s), before giving up.
const START_REACH_TIMEOUTS: u32 = 5;

/// Why `serve` with Redis configured could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The operator has to change something (exit 2): a duplicate host_id,
    /// an unreadable password file.
    #[error("{0}")]
    Config(String),
    /// Redis could not be reached or used in time (exit 1; a restart may
    /// succeed once Redis is back).
    #[error("{0}")]
    Unreachable(String),
}

/// The running Redis thread; [`ClusterHandle::stop`] releases the host's
/// claim and joins it.
pub struct ClusterHandle {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl ClusterHandle {
    /// Stops the thread after it released the claim (bounded by one Redis
    /// timeout).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Starts the Redis thread and waits until this host holds its host_id, or
/// says why it cannot. Call before the shards start, so a duplicate never
/// accepts a connection.
pub fn start(
    settings: ClusterSettings,
    control: Arc<Control>,
) -> Result<ClusterHandle, StartError> {
    let credentials = Credentials::load(&settings).map_err(StartError::Config)?;
    control.set_redis_configured();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("redis".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(StartError::Unreachable(format!(
                        "cannot start the Redis thread's runtime: {e}"
                    ))));
                    return;
                }
            };
            runtime.block_on(run(settings, credentials, control, ready_tx, stop_rx));
        })
        .map_err(|e| StartError::Unreachable(format!("cannot start the Redis thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ClusterHandle {
            stop: stop_tx,
            thread,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        // The thread ended without a word: it panicked, and the panic hook
        // already ends the process.
        Err(_) => Err(StartError::Unreachable(
            "the Redis thread ended during start".to_owned(),
        )),
    }
}

type Ready = std::sync::mpsc::SyncSender<Result<(), StartError>>;

async fn run(
    settings: ClusterSettings,
    credentials: Credentials,
    control: Arc<Control>,
    ready: Ready,
    mut stop: oneshot::Receiver<()>,
) {
    let timeout = Duration::from_millis(settings.timeout_ms);
    let key = host_claim::key(&settings.host_id);
    let value = host_claim::holder_value(random_u64(), std::process::id(), &hostname(), unix_ms());
    let Some(mut conn) = claim_at_start(&settings, &credentials, &key, &value, &ready).await else {
        return;
    };
    control.set_redis_up(true);
    tracing::info!(
        host_id = %settings.host_id,
        redis = %settings.describe_target(),
        host_ttl_ms = settings.host_ttl_ms,
        "Redis: this host holds its host_id; heartbeat every {} ms",
        settings.heartbeat_interval_ms()
    );
    let _ = ready.send(Ok(()));

    let renew = host_claim::renew_script();
    let mut health = Health::Up;
    loop {
        let wait_ms = match health {
            Health::Up => settings.heartbeat_interval_ms(),
            Health::Down | Health::Lost => RETRY_INTERVAL_MS.min(settings.heartbeat_interval_ms()),
        };
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
        }
        let started = Instant::now();
        let mut invocation = renew.key(&key);
        invocation.arg(&value).arg(settings.host_ttl_ms);
        let call = invocation.invoke_async::<(i64, String)>(&mut conn);
        let next = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(reply)) => {
                control
                    .redis_round_trip_us
                    .store(started.elapsed().as_micros() as u64, Relaxed);
                match Renewed::from_reply(reply) {
                    Renewed::Kept => Health::Up,
                    Renewed::Retaken => {
                        tracing::warn!(
                            host_id = %settings.host_id,
                            "Redis: this host's claim on its host_id had lapsed (Redis unreachable for \
                             longer than redis_host_ttl_ms, or restarted empty); claimed it again"
                        );
                        Health::Up
                    }
                    Renewed::Lost { holder } => {
                        if health != Health::Lost {
                            tracing::error!(
                                host_id = %settings.host_id,
                                %holder,
                                "Redis: another process claimed this host's host_id while this one \
                                 could not renew it; /readyz says 503 (reason redis) until it is \
                                 free again — give every host its own host_id"
                            );
                        }
                        Health::Lost
                    }
                }
            }
            failed => {
                control.redis_errors_total.fetch_add(1, Relaxed);
                if health == Health::Up {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!(
                            "no answer within redis_timeout_ms ({} ms)",
                            settings.timeout_ms
                        ),
                    };
                    tracing::warn!(
                        redis = %settings.describe_target(),
                        error = %why,
                        "Redis unreachable: /readyz says 503 (reason redis) until it answers again"
                    );
                }
                Health::Down
            }
        };
        if next == Health::Up && health != Health::Up {
            tracing::info!(redis = %settings.describe_target(), "Redis reachable again");
        }
        control.set_redis_up(next == Health::Up);
        health = next;
    }
    let release = host_claim::release_script();
    let mut invocation = release.key(&key);
    invocation.arg(&value);
    let call = invocation.invoke_async::<i64>(&mut conn);
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(_)) => {
            tracing::info!(host_id = %settings.host_id, "Redis: released this host's host_id")
        }
        _ => tracing::warn!(
            host_id = %settings.host_id,
            "Redis: could not release this host's host_id; it lapses after redis_host_ttl_ms ({} ms)",
            settings.host_ttl_ms
        ),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Up,
    Down,
    /// Redis answers, but another process holds this host_id.
    Lost,
}

/// Connects and claims the host_id, within the start deadlines; on failure
/// says why through `ready` and returns `None`.
async fn claim_at_start(
    settings: &ClusterSettings,
    credentials: &Credentials,
    key: &str,
    value: &str,
    ready: &Ready,
) -> Option<Conn> {
    let timeout = Duration::from_millis(settings.timeout_ms);
    let reach_deadline = Instant::now() + timeout * START_REACH_TIMEOUTS;
    let unreachable = |why: String| {
        StartError::Unreachable(format!(
            "cannot reach Redis at {} within {} ms: {why}; start Redis or fix redis_url / \
             redis_nodes (and redis_timeout_ms)",
            settings.describe_target(),
            settings.timeout_ms * u64::from(START_REACH_TIMEOUTS)
        ))
    };
    let mut conn = loop {
        let why = match tokio::time::timeout(timeout, connect(settings, credentials)).await {
            Ok(Ok(conn)) => break conn,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        if Instant::now() >= reach_deadline {
            let _ = ready.send(Err(unreachable(why)));
            return None;
        }
        tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS)).await;
    };
    // A process that was killed keeps its claim until the TTL runs out: wait
    // that long (and one timeout more) before calling the host_id taken.
    let claim_deadline = Instant::now() + Duration::from_millis(settings.host_ttl_ms) + timeout;
    let mut waiting_logged = false;
    let claim = host_claim::claim_script();
    loop {
        let mut invocation = claim.key(key);
        invocation.arg(value).arg(settings.host_ttl_ms);
        let call = invocation.invoke_async::<(i64, String)>(&mut conn);
        let failed = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(reply)) => match Claimed::from_reply(reply) {
                Claimed::Ours => return Some(conn),
                Claimed::Held { holder } => {
                    if Instant::now() >= claim_deadline {
                        let _ = ready.send(Err(StartError::Config(format!(
                            "host_id {:?} is in use by another running pushgate ({holder}); every \
                             host needs its own host_id (a process that died frees its host_id \
                             within redis_host_ttl_ms, {} ms)",
                            settings.host_id, settings.host_ttl_ms
                        ))));
                        return None;
                    }
                    if !waiting_logged {
                        waiting_logged = true;
                        tracing::warn!(
                            host_id = %settings.host_id,
                            %holder,
                            "Redis: host_id is held by another process; waiting up to {} ms for \
                             its claim to lapse (a process that died leaves it until then)",
                            settings.host_ttl_ms
                        );
                    }
                    None
                }
            },
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer".to_owned()),
        };
        if let Some(why) = failed {
            if Instant::now() >= reach_deadline.max(claim_deadline) {
                let _ = ready.send(Err(unreachable(why)));
                return None;
            }
        }
        tokio::time::sleep(Duration::from_millis(RETRY_INTERVAL_MS)).await;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown host".to_owned())
}

/// A value no other process's claim will hold: from the kernel's random
/// pool, else the clock and pid.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the array
    // it is given, which lives for the call.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        u64::from_ne_bytes(bytes)
    } else {
        unix_ms().rotate_left(20) ^ u64::from(std::process::id())
    }
}
