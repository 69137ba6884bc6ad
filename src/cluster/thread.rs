//! The Redis thread: one per process, outside the shard rings, running a
//! current-thread tokio runtime with the maintained Redis connection.
//!
//! It claims the host's `host_id` at start (refusing a duplicate), renews
//! the claim and this instance's entry among the live hosts with a
//! heartbeat, reports Redis health to [`Control`] (`/readyz` reason
//! `redis`, the `redis_*` metrics), serves the shards' requests from their
//! bounded queue ([`RedisLink`]) and answers them through each shard's
//! inbox ([`Injector`]), and releases the claim on a clean stop. Shards
//! never wait for it.
//!
//! Presence writes that fail (Redis unreachable) are not retried one by
//! one: the next successful heartbeat moves this host to a new instance
//! name and asks every shard to write all its users again, so whatever was
//! lost or left behind under the old name stops counting at once.

use super::connect::{connect, connect_subscriber, Conn, Credentials};
use super::doorbell::{self, Bell};
use super::fanout;
use super::history;
use super::host_claim::{self, Claimed, Renewed};
use super::keys;
use super::link::{RedisLink, ToRedis};
use super::partitions::{Partitions, PARTITIONS_DEFAULT};
use super::presence::{self, Live};
use super::pubsub;
use super::settings::ClusterSettings;
use super::sweeper;
use crate::control::Control;
use crate::gateway::Msg;
use shard::Injector;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

mod broadcast;

/// While Redis is down, how often the heartbeat tries again: recovery is
/// noticed within about this long, without a busy loop.
const RETRY_INTERVAL_MS: u64 = 500;
/// How long a start tries to reach Redis, in units of `redis_timeout_ms`
/// (default 2 s → 10 s), before giving up.
const START_REACH_TIMEOUTS: u32 = 5;
/// Queries served at once; more wait in the queue (bounded by
/// `link::QUEUE_MAX`).
const QUERIES_IN_FLIGHT_MAX: usize = 256;
/// A shard's inbox is full: how many times (1 ms apart) an answer is
/// offered before it is dropped (the asker's ticket then times out).
const ANSWER_TRIES_MAX: u32 = 100;

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

/// What the Redis thread's tasks share.
struct Shared {
    settings: ClusterSettings,
    control: Arc<Control>,
    /// `<host_id>/<8 hex digits>`: names this host's presence fields; a
    /// new one after an outage (see the module's doc).
    instance: Mutex<String>,
    /// Live host instances as of the last heartbeat.
    live: Mutex<Arc<Live>>,
    /// Each shard's inbox, set once the shards run.
    injectors: OnceLock<Vec<Injector<Msg>>>,
    /// Where each user's keys live (the same on every host).
    partitions: Partitions,
    /// The history scripts (loaded once per Redis node).
    scripts: Arc<history::Scripts>,
}

impl Shared {
    fn instance(&self) -> String {
        self.instance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn live(&self) -> Arc<Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_live(&self, live: Vec<String>) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(live.into_iter().collect());
    }

    /// Offers `msg` to `shard`'s inbox, waiting (this thread only) while
    /// it is full, a bounded number of times.
    async fn answer(&self, shard: usize, mut msg: Msg) {
        let Some(injector) = self.injectors.get().and_then(|all| all.get(shard)) else {
            return;
        };
        for _ in 0..ANSWER_TRIES_MAX {
            match injector.try_send(msg) {
                Ok(()) => return,
                Err(back) => msg = back,
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tracing::warn!(
            shard,
            "Redis thread: the shard's inbox stayed full; an answer was dropped"
        );
    }
}

/// The running Redis thread; [`ClusterHandle::stop`] releases the host's
/// claim and joins it.
pub struct ClusterHandle {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    link: RedisLink,
    shared: Arc<Shared>,
}

impl ClusterHandle {
    /// The shards' end of the queue to the Redis thread.
    pub fn link(&self) -> RedisLink {
        self.link.clone()
    }

    /// Gives the Redis thread each shard's inbox, once the shards run.
    pub fn attach(&self, injectors: Vec<Injector<Msg>>) {
        let _ = self.shared.injectors.set(injectors);
    }

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
    let (link, requests) = RedisLink::bounded(settings.timeout_ms, settings.check_interval_ms);
    let shared = Arc::new(Shared {
        instance: Mutex::new(new_instance(&settings.host_id)),
        settings,
        control,
        live: Mutex::default(),
        injectors: OnceLock::new(),
        partitions: Partitions::new(PARTITIONS_DEFAULT),
        scripts: Arc::default(),
    });
    let thread_shared = shared.clone();
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
            runtime.block_on(run(thread_shared, credentials, ready_tx, stop_rx, requests));
        })
        .map_err(|e| StartError::Unreachable(format!("cannot start the Redis thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ClusterHandle {
            stop: stop_tx,
            thread,
            link,
            shared,
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
    shared: Arc<Shared>,
    credentials: Credentials,
    ready: Ready,
    mut stop: oneshot::Receiver<()>,
    mut requests: mpsc::Receiver<ToRedis>,
) {
    let settings = &shared.settings;
    let control = &shared.control;
    let timeout = Duration::from_millis(settings.timeout_ms);
    let key = host_claim::key(&settings.host_id);
    let value = host_claim::holder_value(random_u64(), std::process::id(), &hostname(), unix_ms());
    let Some(mut conn) = claim_at_start(settings, &credentials, &key, &value, &ready).await else {
        return;
    };
    let mut resync_needed = false;
    if refresh_instance(&shared, &mut conn, &mut resync_needed).await != Health::Up {
        let _ = ready.send(Err(StartError::Unreachable(format!(
            "Redis at {} stopped answering during start",
            settings.describe_target()
        ))));
        return;
    }
    control.set_redis_up(true);
    tracing::info!(
        host_id = %settings.host_id,
        instance = %shared.instance(),
        redis = %settings.describe_target(),
        host_ttl_ms = settings.host_ttl_ms,
        "Redis: this host holds its host_id; heartbeat every {} ms",
        settings.heartbeat_interval_ms()
    );
    let _ = ready.send(Ok(()));

    let renew = host_claim::renew_script();
    let mut health = Health::Up;
    let mut queries = tokio::task::JoinSet::new();
    let listener = tokio::spawn(listen(shared.clone(), credentials.clone()));
    let sweeper = tokio::spawn(sweep(shared.clone(), conn.clone(), value.clone()));
    let heartbeat = Duration::from_millis(settings.heartbeat_interval_ms());
    let mut next_heartbeat = tokio::time::Instant::now() + heartbeat;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep_until(next_heartbeat) => {}
            Some(_) = queries.join_next(), if !queries.is_empty() => continue,
            request = requests.recv() => {
                match request {
                    Some(ToRedis::PresenceUpdate { shard, devices }) => {
                        // Awaited here, one batch at a time, so two batches
                        // for one user can never land out of order.
                        let instance = shared.instance();
                        let write = presence::write(&conn, &shared.partitions, &instance, shard, &devices);
                        if !matches!(tokio::time::timeout(timeout, write).await, Ok(Ok(()))) {
                            control.redis_errors_total.fetch_add(1, Relaxed);
                            resync_needed = true;
                        }
                    }
                    Some(ToRedis::Presence { shard, ticket, user }) => {
                        while queries.len() >= QUERIES_IN_FLIGHT_MAX {
                            let _ = queries.join_next().await;
                        }
                        queries.spawn(presence_query(shared.clone(), conn.clone(), shard, ticket, user));
                    }
                    Some(ToRedis::Push { shard, ticket, users, payload }) => {
                        while queries.len() >= QUERIES_IN_FLIGHT_MAX {
                            let _ = queries.join_next().await;
                        }
                        queries.spawn(push(shared.clone(), conn.clone(), shard, ticket, users, payload));
                    }
                    Some(ToRedis::Broadcast { shard, ticket, payload }) => {
                        while queries.len() >= QUERIES_IN_FLIGHT_MAX {
                            let _ = queries.join_next().await;
                        }
                        queries.spawn(broadcast::broadcast(shared.clone(), conn.clone(), shard, ticket, payload));
                    }
                    Some(ToRedis::Resume { shard, conn: device, read, user, since }) => {
                        while queries.len() >= QUERIES_IN_FLIGHT_MAX {
                            let _ = queries.join_next().await;
                        }
                        queries.spawn(resume(shared.clone(), conn.clone(), shard, device, read, user, since));
                    }
                    Some(ToRedis::Check { shard, batch, users }) => {
                        while queries.len() >= QUERIES_IN_FLIGHT_MAX {
                            let _ = queries.join_next().await;
                        }
                        queries.spawn(check(shared.clone(), conn.clone(), shard, batch, users));
                    }
                    None => break,
                }
                continue;
            }
        }
        let started = Instant::now();
        let mut invocation = renew.key(&key);
        invocation.arg(&value).arg(settings.host_ttl_ms);
        let call = invocation.invoke_async::<(i64, String)>(&mut conn);
        let mut next = match tokio::time::timeout(timeout, call).await {
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
                        resync_needed = true;
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
                    tracing::warn!(
                        redis = %settings.describe_target(),
                        error = %redis_failure(failed, settings.timeout_ms),
                        "Redis unreachable: /readyz says 503 (reason redis) until it answers again"
                    );
                }
                resync_needed = true;
                Health::Down
            }
        };
        if next == Health::Up {
            next = refresh_instance(&shared, &mut conn, &mut resync_needed).await;
        }
        if next == Health::Up && health != Health::Up {
            tracing::info!(redis = %settings.describe_target(), "Redis reachable again");
        }
        control.set_redis_up(next == Health::Up);
        health = next;
        let wait = match health {
            Health::Up => heartbeat,
            Health::Down | Health::Lost => heartbeat.min(Duration::from_millis(RETRY_INTERVAL_MS)),
        };
        next_heartbeat = tokio::time::Instant::now() + wait;
    }
    queries.abort_all();
    listener.abort();
    sweeper.abort();
    // Lapsed at once (presence stops counting this host), swept by the
    // hosts that stay.
    let instance = shared.instance();
    let _ = tokio::time::timeout(timeout, presence::mark_lapsed(&mut conn, &instance)).await;
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

/// Counts a user's devices on every live host and answers the asking shard.
async fn presence_query(
    shared: Arc<Shared>,
    mut conn: Conn,
    shard: usize,
    ticket: crate::gateway::publish::tickets::Ticket,
    user: String,
) {
    let live = shared.live();
    let timeout = Duration::from_millis(shared.settings.timeout_ms);
    let counted = tokio::time::timeout(
        timeout,
        presence::count(&mut conn, &shared.partitions, &user, &live),
    )
    .await;
    let msg = match counted {
        Ok(Ok((online, devices))) => Msg::PresenceAnswer {
            ticket,
            online,
            devices,
        },
        failed => {
            shared.control.redis_errors_total.fetch_add(1, Relaxed);
            Msg::RedisFailed {
                ticket,
                why: format!(
                    "Redis unavailable: {}",
                    redis_failure(failed, shared.settings.timeout_ms)
                ),
            }
        }
    };
    shared.answer(shard, msg).await;
}

/// Reads a user's history for a device (its welcome, or a gap repair) and
/// answers the asking shard.
async fn resume(
    shared: Arc<Shared>,
    mut conn: Conn,
    shard: usize,
    device: shard::ConnId,
    read: u64,
    user: String,
    since: Option<(u64, u64)>,
) {
    let timeout = Duration::from_millis(shared.settings.timeout_ms);
    let call = history::resume(&mut conn, &shared.scripts, &shared.partitions, &user, since);
    let result = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(resumed)) => Ok(Box::new(resumed)),
        failed => {
            shared.control.redis_errors_total.fetch_add(1, Relaxed);
            Err(format!(
                "Redis unavailable: {}",
                redis_failure(failed, shared.settings.timeout_ms)
            ))
        }
    };
    let msg = Msg::Resumed {
        conn: device,
        read,
        result,
    };
    shared.answer(shard, msg).await;
}

/// Reads where a batch of users' histories stand for a shard's periodic
/// check and answers it.
async fn check(shared: Arc<Shared>, conn: Conn, shard: usize, batch: u64, users: Vec<String>) {
    let timeout = Duration::from_millis(shared.settings.timeout_ms);
    let call = history::check(&conn, &shared.partitions, &users);
    let result = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(read)) => Ok(read),
        failed => {
            shared.control.redis_errors_total.fetch_add(1, Relaxed);
            Err(redis_failure(failed, shared.settings.timeout_ms))
        }
    };
    shared.answer(shard, Msg::Checked { batch, result }).await;
}

/// Hears this host's doorbells and hands each to the shard its channel
/// names: subscribes once the shards run, then again every
/// [`pubsub::RESUBSCRIBE_INTERVAL_MS`] (redis-rs does not renew a sharded
/// subscription after a failover; renewing a live one changes nothing).
async fn listen(shared: Arc<Shared>, credentials: Credentials) {
    let interval = Duration::from_millis(pubsub::RESUBSCRIBE_INTERVAL_MS);
    let injectors = loop {
        match shared.injectors.get() {
            Some(injectors) => break injectors,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let host_id = &shared.settings.host_id;
    let channels: Vec<String> = (0..injectors.len())
        .map(|shard| doorbell::channel(host_id, shard))
        .collect();
    let (mut subscriber, mut heard) = loop {
        let (sink, heard, _dropped) = pubsub::sink(pubsub::HEARD_QUEUE_MAX);
        match connect_subscriber(&shared.settings, &credentials, sink).await {
            Ok(conn) => break (conn, heard),
            Err(e) => {
                tracing::warn!(error = %e, "Redis: cannot open the doorbell subscriber; retrying");
                tokio::time::sleep(interval).await;
            }
        }
    };
    let mut next_subscribe = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_subscribe) => {
                let timeout = Duration::from_millis(shared.settings.timeout_ms);
                let subscribe = pubsub::subscribe(&mut subscriber, &channels);
                if !matches!(tokio::time::timeout(timeout, subscribe).await, Ok(Ok(()))) {
                    shared.control.redis_errors_total.fetch_add(1, Relaxed);
                }
                next_subscribe = tokio::time::Instant::now() + interval;
            }
            Some((channel, message)) = heard.recv() => {
                let Some(shard) = channels.iter().position(|c| *c == channel) else {
                    continue;
                };
                if super::broadcast::is_broadcast(&message) {
                    broadcast::heard(&shared, &channel, &message).await;
                    continue;
                }
                match Bell::decode(&message) {
                    Ok(bell) => shared.answer(shard, Msg::Bell(Box::new(bell))).await,
                    Err(why) => tracing::warn!(%channel, why, "Redis: a doorbell was refused"),
                }
            }
        }
    }
}

/// Sweeps the presence fields lapsed host instances left (see
/// [`sweeper`]): one step per heartbeat interval on the whole cluster,
/// under a lock that lapses one host TTL after its holder died.
async fn sweep(shared: Arc<Shared>, conn: Conn, holder: String) {
    let settings = &shared.settings;
    let control = &shared.control;
    sweeper::run(
        conn,
        &shared.partitions,
        holder,
        Duration::from_millis(settings.heartbeat_interval_ms()),
        Duration::from_millis(settings.timeout_ms),
        settings.host_ttl_ms,
        || {
            control.redis_errors_total.fetch_add(1, Relaxed);
        },
    )
    .await;
}

/// Stores a push in its recipients' histories, hands this host's share to
/// its shards, rings the other hosts' doorbells and answers the counts
/// (see [`fanout`]). A failed store answers the push as failed: some
/// recipients may have it already (at-least-once, `history::add`).
async fn push(
    shared: Arc<Shared>,
    conn: Conn,
    shard: usize,
    ticket: crate::gateway::publish::tickets::Ticket,
    users: Vec<String>,
    payload: bytes::Bytes,
) {
    let timeout = Duration::from_millis(shared.settings.timeout_ms);
    let limits = shared.settings.history;
    let add = history::add(
        &conn,
        &shared.scripts,
        &shared.partitions,
        &users,
        payload.clone(),
        limits,
    );
    let stored = match tokio::time::timeout(timeout, add).await {
        Ok(Ok(stored)) => stored,
        failed => {
            shared.control.redis_errors_total.fetch_add(1, Relaxed);
            let why = format!(
                "Redis unavailable: {}; the push may have been stored for some recipients",
                redis_failure(failed, shared.settings.timeout_ms)
            );
            return shared.answer(shard, Msg::RedisFailed { ticket, why }).await;
        }
    };
    // A location of an instance not live as of the last heartbeat may be
    // a host that started since: read the live set again, as presence
    // queries do.
    let mut live = shared.live();
    let unknown = stored
        .iter()
        .flat_map(|part| &part.recipients)
        .flat_map(|recipient| &recipient.locations)
        .any(|(field, _)| keys::instance_of_field(field).is_some_and(|i| !live.contains(i)));
    if unknown {
        let mut conn = conn.clone();
        if let Ok(Ok(fresh)) = tokio::time::timeout(timeout, presence::read_live(&mut conn)).await {
            live = Arc::new(fresh);
        }
    }
    let shards = shared.injectors.get().map_or(0, Vec::len);
    let mut plan = fanout::plan(&stored, &live, &shared.instance(), shards, &payload);
    for (to, bell) in std::mem::take(&mut plan.local) {
        shared.answer(to, Msg::Bell(Box::new(bell))).await;
    }
    let bells = std::mem::take(&mut plan.remote);
    let heard = if bells.is_empty() {
        Vec::new()
    } else {
        match tokio::time::timeout(timeout, pubsub::ring(&conn, bells)).await {
            Ok(Ok(heard)) => heard,
            // Not rung: those recipients count as stored, and their
            // devices repair from the history at the next push or resume.
            failed => {
                shared.control.redis_errors_total.fetch_add(1, Relaxed);
                tracing::warn!(
                    error = %redis_failure(failed, shared.settings.timeout_ms),
                    "Redis: a push's doorbells could not be rung"
                );
                Vec::new()
            }
        }
    };
    let counted = plan.count(&heard);
    let counts = crate::gateway::home::Counts {
        delivered: counted.delivered,
        stored: counted.stored,
        ..Default::default()
    };
    shared.answer(shard, Msg::Pushed { ticket, counts }).await;
}

/// Renews this instance among the live hosts (first moving to a new
/// instance if presence needs a resync) and reads the live set.
async fn refresh_instance(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    resync_needed: &mut bool,
) -> Health {
    let settings = &shared.settings;
    let timeout = Duration::from_millis(settings.timeout_ms);
    let old = shared.instance();
    let instance = if *resync_needed {
        new_instance(&settings.host_id)
    } else {
        old.clone()
    };
    let script = presence::heartbeat_script();
    let mut invocation = script.key(keys::HOSTS_KEY);
    invocation.arg(&instance).arg(settings.host_ttl_ms);
    let call = invocation.invoke_async::<Vec<String>>(conn);
    let live = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(live)) => live,
        _ => {
            shared.control.redis_errors_total.fetch_add(1, Relaxed);
            *resync_needed = true;
            return Health::Down;
        }
    };
    shared.set_live(live);
    if instance != old {
        *shared.instance.lock().unwrap_or_else(|e| e.into_inner()) = instance.clone();
        let _ = tokio::time::timeout(timeout, presence::mark_lapsed(conn, &old)).await;
        tracing::info!(
            %old,
            new = %instance,
            "Redis: presence may have missed changes; this host now writes it as a new \
             instance and every shard writes its users again"
        );
        *resync_needed = false;
        let shards = shared.injectors.get().map_or(0, Vec::len);
        for shard in 0..shards {
            shared.answer(shard, Msg::PresenceResync).await;
        }
    }
    Health::Up
}

fn redis_failure<T>(
    failed: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    timeout_ms: u64,
) -> String {
    match failed {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => "no error".to_owned(),
        Err(_) => format!("no answer within redis_timeout_ms ({timeout_ms} ms)"),
    }
}

/// A fresh instance name for this host.
fn new_instance(host_id: &str) -> String {
    format!("{host_id}/{:08x}", random_u64() as u32)
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
