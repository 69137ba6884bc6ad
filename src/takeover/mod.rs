//! Live binary upgrade: a new `pushgate` process takes over a running one
//! on the same host (`pushgate upgrade`, the unit's `ExecReload=`).
//!
//! # Status
//!
//! Done (step 1 of issue 14): the **listeners** move, and the old process
//! then drains its connections onto the successor (1012 at
//! `drain_rate_per_s`, as `pushgate drain`), so every device still
//! reconnects once, but no connection attempt is refused or reset at any
//! moment, and a successor that fails or dies gives everything back.
//! Not yet: connections with their state (step 2), mailboxes/seq/epoch
//! (3), publishers (4) — their design is below, marked *(to do)*.
//!
//! # The conversation
//!
//! The running process ("old") listens on `<run-dir>/takeover.sock`, a Unix
//! SOCK_SEQPACKET socket of mode 0600 whose peer must have old's uid
//! (SO_PEERCRED). Messages: [`wire::Message`], JSON, one per packet, with
//! SCM_RIGHTS descriptors attached (≤ 253 per packet), format version
//! [`wire::FORMAT_VERSION`].
//!
//! 1. `pushgate upgrade` connects and sends `Upgrade`. Old starts the
//!    binary at the path it was started from (replaced by the deploy) with
//!    its own arguments plus `--takeover`, in its own process group, and
//!    reports each step to the CLI (`Progress`), then one `Outcome`.
//!    (An operator may also start `pushgate serve … --takeover` by hand.)
//! 2. The successor ("new") connects and sends `Hello{format, pid,
//!    shards}`. Old refuses another format (`Refused`, logged by both; old
//!    keeps everything); new likewise refuses a `Listeners` it cannot read.
//! 3. Old sends `Listeners`: a duplicate of every listening socket (client,
//!    push, admin, console; one per shard each), attached. The very same
//!    sockets, not new SO_REUSEPORT siblings: closing a group member resets
//!    the connections queued on it, while a socket held by two processes
//!    keeps its queue for whichever accepts.
//! 4. New starts its shards on them (`shard::Runtime::start_inheriting`):
//!    a different shard count deals TCP sockets round-robin and opens
//!    extra group members for shards left without one; a Unix socket goes
//!    to the shard its path names modulo the count (every
//!    `shard-<i>.sock` path keeps answering). Then `Accepting`. Both
//!    processes now accept from the same queues; each connection lands in
//!    exactly one.
//! 5. Old pauses accepting on every shard (`shard::AcceptGate`: multishot
//!    accepts cancelled, sockets kept open), waits until every shard
//!    confirmed, marks the listeners handed over, starts the drain and
//!    sends `Committed`. New becomes ready (`/readyz`), re-creates
//!    `takeover.sock` for the next upgrade, and tells systemd
//!    `MAINPID=<new>` + `READY=1` (`Type=notify`, `NotifyAccess=all`).
//! 6. The conversation stays open until one process exits: old exits when
//!    drained; if new dies first (old sees EOF), old takes back: resumes
//!    accepting on its kept sockets, stops the drain, logs it.
//!
//! Failure before `Committed` (new exits, refuses, times out, cannot start
//! its shards): old never stopped accepting, so nothing is lost; the CLI
//! prints the reason and exits 1; the operator can retry or fall back to
//! `pushgate drain` with a fresh process. Clients that new had accepted
//! before dying after `Committed` are lost to it (they reconnect: old
//! accepts again) — step 2 shrinks this to the batch in transit.
//!
//! Bounds: one take-over at a time (a second `Upgrade` is refused), a
//! successor must say `Hello` within `HELLO_TIMEOUT` and `Accepting` within
//! `ACCEPTING_TIMEOUT`; descriptors held for the hand-over: shards ×
//! listeners duplicates in old (`shard::ListenerCopies`, dropped by a plain
//! drain so that a drained host refuses new clients at once).
//!
//! # Connections (step 2, to do)
//!
//! After `Committed`, old moves its connections shard by shard in batches
//! of ≤ 253, two-phase. Per batch, on the owning shard: each connection at
//! a quiescent point (no send in flight; its multishot recv cancelled and
//! reaped, so no byte is lost between rings) is *frozen*; its direct
//! descriptor becomes a regular one with `IORING_OP_FIXED_FD_INSTALL`
//! (probe for it; without it the batch is refused and old keeps the
//! connections, then drains); the batch's state record goes with the fds
//! (`Connections{batch, records}`): user, device kind (WebSocket/SSE,
//! heartbeat), listener profile, liveness (ms since last input, ping
//! outstanding), the partial inbound frame (reader state + bytes), the
//! replay cursor. Unsent bytes are *flushed first* (the freeze waits for
//! the send queue to drain, bounded by `close_linger_ms`; a connection
//! that does not drain is left to the drip drain): a queue of frames mid-
//! write has no meaning in another process, and flushing keeps the record
//! small. Pushes for a frozen connection go to the mailbox (they are
//! stored anyway) and the record carries the seq it saw last, so new
//! replays from there. New registers each fd in its home shard's table
//! (route hash over *its* shard count), answers `Ack{batch}`; only then
//! old closes its copies. A new that dies before `Ack` leaves old holding
//! every descriptor of the batch: it un-freezes them (recv re-armed). The
//! regular fds installed for a batch are closed once sent, so both
//! processes stay under RLIMIT_NOFILE (20,000 here: batches of 253 with
//! ≤ 4 in flight).
//!
//! # Mailboxes, publishers (steps 3–4, to do)
//!
//! Mailboxes go per home shard after the connections (`Mailboxes{users:
//! [(user, seq, entries)]}`) with the epoch, so a device that reconnects
//! resumes with `recovered:true`; new refuses pushes until its mailboxes
//! arrived (replies wait, bounded). Publisher connections stay with old
//! until their requests in flight are answered, then old closes them; the
//! client library reconnects to the same `shard-<i>.sock` paths (now new's)
//! and resends unacknowledged requests by id; duplicates are dropped by
//! (publisher id, request id) for the retention time.

pub mod moves;
pub mod notify;
pub mod successor;
pub mod wire;

mod old;

pub use old::{serve_control, OldSide};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a started successor has to say `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a successor has, after receiving the listeners, to accept.
pub const ACCEPTING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the old process waits for every shard to stop accepting.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the old process waits for a batch of moved connections to be
/// acknowledged before it takes the batch back.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the old process keeps moving devices; those that never became
/// quiescent by then are drained instead.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(120);

/// The control socket of the process serving `run_dir`.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("takeover.sock")
}

/// `PUSHGATE_DEBUG_TAKEOVER`: a successor that fails on purpose at a
/// chosen point, to test that the old process keeps (or takes back)
/// everything. Debug builds only; a release binary ignores it.
pub const DEBUG_ENV: &str = "PUSHGATE_DEBUG_TAKEOVER";

/// Where a debug successor fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugFault {
    /// Exits after receiving the listeners, before accepting.
    ExitBeforeAccepting,
    /// Exits right after `Committed`.
    ExitAfterCommit,
    /// Exits when the second batch of moved connections arrives, before
    /// acknowledging it (the first one is its own).
    ExitMidMove,
    /// Set on the *running* process: it behaves as on a kernel without
    /// IORING_OP_FIXED_FD_INSTALL (it drains instead of moving).
    NoFixedFdInstall,
}

impl DebugFault {
    pub fn from_env() -> Option<DebugFault> {
        if !cfg!(debug_assertions) {
            return None;
        }
        match std::env::var(DEBUG_ENV).ok()?.trim() {
            "exit-before-accepting" => Some(DebugFault::ExitBeforeAccepting),
            "exit-after-commit" => Some(DebugFault::ExitAfterCommit),
            "exit-mid-move" => Some(DebugFault::ExitMidMove),
            "no-fixed-fd-install" => Some(DebugFault::NoFixedFdInstall),
            _ => None,
        }
    }
}
