//! Live binary upgrade: a new `pushgate` process takes over a running one
//! on the same host (`pushgate upgrade`, the unit's `ExecReload=`).
//!
//! # Status
//!
//! Done: the **listeners** move (step 1), then the **live connections**
//! with their state (step 2, "Connections" below): a device keeps its
//! socket, sees no close and no welcome, and is replayed on the successor
//! whatever was pushed after the newest seq it was sent; the successor
//! continues the old process's epoch with seqs above every seq the old one
//! gave. A successor that fails or dies gives back everything it did not
//! acknowledge. `pushgate upgrade --drain` (or a kernel without
//! IORING_OP_FIXED_FD_INSTALL) moves the listeners only and drains, as
//! before.
//! Then the **mailboxes** (step 3, "Mailboxes" below): every user's stored
//! pushes, floor and the shards' broadcast logs, so a device that
//! reconnects after the upgrade with a position from before it resumes
//! with `recovered:true` and exactly what it missed.
//! Publishers (4): from the first export on, every push the old process
//! receives is forwarded to the successor, and when it is done the old
//! process closes its publisher connections only after answering every
//! request it read; the client library (and `push --ndjson`) resends what
//! was left unanswered to the successor on the same socket path
//! ("Publishers" below) — exactly once even when the old process crashes
//! or is stopped with SIGINT mid-hand-over ("Exactly once across a
//! crash").
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
//!    accepting on its kept sockets, stops the drain, logs it. With
//!    `--drain` (or without IORING_OP_FIXED_FD_INSTALL) old forwards
//!    pushes from the commit on and moves its mailboxes ("Mailboxes")
//!    before it starts the drain.
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
//! # Connections (step 2)
//!
//! Before `Listeners`, old sends `History{epoch, seq_start}`: new keeps
//! old's epoch and numbers pushes from `seq_start` = old's newest seq +
//! 2^32 ([`moves::SEQ_GAP`]: old keeps numbering pushes that reach it
//! during the overlap, all below it), so a moved device's seqs keep
//! increasing; a resume from a seq below `seq_start` is recovered on new
//! once old's mailboxes arrived ("Mailboxes").
//!
//! After `Committed`, old's shards *export* their devices, ≤ 512 in flight
//! per shard, each finished one starting the next (`gateway::moves`):
//! `shard::Ctx::export` cancels the device's multishot recv and reaps it
//! (every byte the kernel handed over reached the gateway; later bytes
//! stay in the socket for new), waits until its send queue is empty —
//! unsent bytes are *flushed first*: a queue of frames mid-write means
//! nothing to another process, the record stays small, and pushes keep
//! going out until the freeze — then turns the direct descriptor into a
//! regular one with IORING_OP_FIXED_FD_INSTALL (probed once:
//! `shard::connection_moves_supported`; without it old drains instead).
//! Devices with a partial inbound frame or a replay under way are skipped
//! and picked later; one that received part of a frame in the instant of
//! its freeze is closed with 1012 and resumes (the frame reader's state
//! does not travel). The record ([`wire::ConnectionRecord`]): user,
//! console profile, wire (WebSocket, text-ping WebSocket, SSE), ms since
//! its last byte (liveness), the newest seq it was sent (its replay
//! position). The gateway forgets the device; the socket and record wait
//! in the outbox ([`moves::Moves`]).
//!
//! Old's take-over thread sends them in batches (`Connections{batch,
//! records}` with ≤ 128 descriptors) and waits for `Ack{batch}` before
//! closing its copies. New gives each to its user's home shard by the
//! route hash over *its* shard count; the shard adopts the socket into its
//! ring (IORING_OP_FILES_UPDATE into an allocated slot), registers the
//! device (liveness from its record), and replays what its user was
//! pushed after max(record seq, `seq_start`) — on new, pushes that arrived
//! while the device was in transit. When every shard has nothing left,
//! old sends `ConnectionsDone{moved}`, reports "N live connections moved
//! in T ms" with both processes' peak RSS, moves its mailboxes
//! ("Mailboxes"), then drains what is left (its publishers, "Publishers"
//! below) and exits.
//!
//! Failure: a successor that dies, refuses or does not acknowledge a batch
//! within `ACK_TIMEOUT` → old adopts that batch and every device still in
//! its outbox again (with their records: replayed from old's mailboxes),
//! stops exporting, resumes accepting, and `pushgate upgrade` exits 1;
//! the batches already acknowledged went with the successor. Devices that
//! never became quiescent within `MOVE_TIMEOUT` are drained.
//!
//! Bounds: ≤ 512 exports in flight per shard, ≤ 4,096 descriptors in the
//! outbox and in the successor's inboxes (a shard takes its inbox once per
//! timer tick), one batch of ≤ 128 in transit: both processes stay far
//! under RLIMIT_NOFILE. Memory during the overlap: each process holds its
//! own devices; a moved device costs old nothing once sent.
//!
//! # Publishers (step 4)
//!
//! From the first export on (`Moves::start_forwarding`, before any device
//! leaves), a push that reaches one of old's home shards is not delivered
//! there — its device may be on its way — but queued (≤ 16,384; a push over
//! 16 KiB or a full queue is refused with a retryable reason, never
//! dropped) and answered as stored; a broadcast is forwarded once, by
//! shard 0. Old's take-over thread sends the queue as `Pushes{batch,
//! items}` between connection batches and, after the move, until it exits
//! (it waits up to 5 s for the last acknowledgement before exiting); new
//! delivers each push on its users' home shards (on their next tick): to a
//! device already there, or into the mailbox from which a device in
//! transit is replayed once adopted. So every push old answered is
//! delivered exactly once. A successor that dies: what it did not
//! acknowledge is delivered by old.
//!
//! Closing (a plain drain does the same): once every shard has no device
//! left, the supervisor sets `Control::close_publishers`. From then on a
//! shard does not process bytes from its publishers (dropped unread, as if
//! they had stayed in the socket; a publisher stops reading for good, even
//! if a take-back calls the step off) and each tick closes every publisher
//! whose requests are all answered — including those waiting on other
//! shards (tickets) — and, while forwarding, only once the successor has
//! acknowledged every forwarded push (`Moves::forward_idle`). The process
//! stops when every shard has closed its publishers (or after 10 s). So a
//! publisher connection closes at a reply boundary, and the contract is:
//! **every request after the last reply the publisher read was never
//! processed**. The client library (`pushgate_client`, "Reconnecting")
//! then reopens the same `shard-<i>.sock` — the successor accepts on that
//! very socket — and resends exactly those requests, in order: each push
//! answered and processed once. Order across the hand-over: new delivers
//! what old forwarded (its shards' `pushes_in`) before any push it
//! receives directly (`Gateway::deliver_forwarded` first in `push_here`
//! and `broadcast_here`), and old closed only after the forwarded pushes
//! were acknowledged, i.e. in new's `pushes_in`; so a publisher's pushes
//! reach each device in the order it sent them. Before the close, a push
//! sent by another publisher straight to new may overtake one forwarded
//! by old (seqs still increase).
//!
//! **Exactly once across a crash.** A process that crashes (SIGKILL) or
//! is stopped with SIGINT mid-hand-over closes its publishers without the
//! reply boundary above. Two rules keep every push processed once:
//! (1) while forwarding, old answers a request only once every push it
//! accepted for forwarding before the answer was filled is acknowledged
//! by new (`Moves::reply_gate` / `forward_acked`; shards send the
//! released replies each tick): an answered push is new's, so a crash
//! loses none; what was accepted and not yet sent is unanswered, and is
//! resent. (2) The client library names each push: `Request::PushOnce`
//! carries a random 32-bit publisher id, kept for the client's life, and
//! the request id (numbered from a random start); old forwards the pair
//! with the push (`ForwardedPush::origin`, an optional JSON field: the
//! format version stays). New remembers, bounded ([`resends`]: per
//! publisher 16,384 requests, 262,144 in all, each for 60 s), which named
//! pushes it processed: forwarded ones from the moment it reads them, and
//! direct ones while old may still forward (from `Accepting` until old's
//! end of the conversation closes). A resend of a forwarded push is
//! answered from that memory (as old would have: stored), not delivered
//! again (`push_resends_answered_total`); a forwarded copy of a push new
//! already received directly (the publisher resent it before new read
//! the batch old had sent before dying) is skipped. Wire compatibility:
//! `PushOnce` is appended after the other variants and keeps the
//! archived request's size (tested), so a publisher that sends `Push`
//! works as before (without the memory, as before); a publisher speaking
//! the wire protocol itself can send `PushOnce`. A new client against a
//! server older than `PushOnce` is refused ("not a valid archive").
//! Tested by stopping old (`PUSHGATE_DEBUG_TAKEOVER=kill-after-forwarding`,
//! `sigint-after-forwarding`: old withholds the replies to pushes new
//! acknowledged, then stops itself) under a pipelining publisher: each
//! push answered once and delivered once, in order (`tests/takeover.rs`).
//! Not covered: broadcasts (`Request::Broadcast` has no publisher id);
//! a request whose users old homed on several shards travels in parts,
//! and a resend answered from memory counts only the parts that had
//! arrived; pushes old processed itself before forwarding started (before
//! its first export) and had not answered when it died.
//!
//! # Mailboxes (step 3)
//!
//! From the first export on old stores nothing (it forwards, "Publishers"
//! above), so once the devices moved its mailboxes are final. Before it
//! starts its drain (it exits once drained), old's take-over thread asks
//! every shard to export its home part (`Moves::start_mailbox_export`); a
//! `Home` is not `Send`, so each shard does it from its own tick
//! (`gateway::moves`): its broadcast log first, then its users from a
//! cursor (`Home::export_users`: name, floor seq, entries with seq, age
//! and payload), ≤ 4,096 users a tick, into a per-shard mailbox outbox of
//! ≤ 4,096 items and ≤ 16 MiB of payload ([`moves`]). The thread takes
//! shard after shard and packs the items ([`mailboxes::Packer`]) into
//! `Mailboxes{batch, shard, users, broadcasts}` messages of ≤ 56 KiB of
//! escaped names and entries (no descriptors), each acknowledged before
//! the next (`Ack{batch}`); forwarded pushes go between them. A user or a
//! broadcast log larger than a message travels in parts (`more`); a
//! stored push too large for any message (over 48 KiB escaped) stays
//! behind and raises its user's (or the log's) floor over it. Then
//! `MailboxesDone{batch, users}`, which the successor acknowledges once
//! its shards merged everything: `pushgate upgrade` reports "N users'
//! mailboxes moved … in T ms", and only then the outcome and old's drain.
//!
//! The successor reassembles the parts ([`mailboxes::Assembler`]: one
//! user in parts at a time, per old shard its broadcast log) and gives
//! each user to its home shard under *its* route hash and shard count
//! (inboxes of ≤ 16,384 users in all; the next `Ack` waits below that).
//! The shard merges on its next tick (`Home::import`, grouped by old
//! shard, since seqs are per old shard): old's entries and its old
//! shard's broadcasts go before the user's own entries here (all below
//! `seq_start`), the floor is lowered to old's unless something was
//! dropped here since, a push stays one allocation however many users
//! and imports bring it. The successor's bounds hold: `entries_max`,
//! `stored_bytes_max` (newest kept, the floor raised over the rest) and
//! `offline_users_max` (a user that does not fit is not created) — a
//! resume across what was dropped is `recovered:false`, never a replay
//! with a gap. Counts are logged by the successor.
//!
//! Failure costs nothing: an export only copies. A successor that dies
//! meanwhile: old says so ("mailboxes not moved: …"), takes the listeners
//! back instead of draining (the devices it had moved reconnect to old and
//! resume from its mailboxes) and `pushgate upgrade` exits 1 (test). A
//! successor that refuses or does not acknowledge within `ACK_TIMEOUT`
//! (`MailboxesDone`: plus `MERGE_TIMEOUT`), or a shard that does not
//! finish within `MOVE_TIMEOUT`: old says so and drains as before;
//! devices that resume on the successor from before the upgrade are told
//! `recovered:false` (a user whose parts did not all arrive is not
//! imported). Also `recovered:false`: a device that reconnects to the
//! successor before its user's mailbox was merged (e.g. a TLS or deflate
//! device told 1012 during the device move).
//!
//! With `--drain` (or on a kernel without IORING_OP_FIXED_FD_INSTALL) the
//! mailboxes move too: old forwards every push from the commit on (its
//! mailboxes are final), moves them as above, and only then starts the
//! drain; a drained device reconnects to new and resumes with
//! `recovered:true` and what it missed. The price: a push to a device
//! still waiting for its turn in the drain reaches it only when it
//! resumes on new (replayed from new's mailbox), up to N /
//! `drain_rate_per_s` later.
//!
//! **Publishers (step 4)** are done ("Publishers" above; tested in
//! `tests/takeover.rs` with a pipelining `push_many` and `push --ndjson`
//! across an upgrade), including the crash and SIGINT case ("Exactly
//! once across a crash"). Left there: broadcasts named like pushes (a
//! `BroadcastOnce`), and the memory's counts for a request in parts. And
//! latency: holding replies until the successor acknowledged costs a
//! publisher p99 2.4–3.0 s during a 100,000-device hand-over on a busy
//! 2-core box (bench/results/2026-12-02/takeover/); the take-over thread
//! forwards nothing while it waits for `MailboxesDone` (the successor's
//! merge), and replies are released on the shards' tick, not on the
//! acknowledgement — both are where to cut it.
//!
//! **Mailboxes.** Done besides the above: they move with `--drain` too
//! (`with_drain_the_mailboxes_move_too_and_a_device_that_left_resumes_exactly`),
//! and imported expiries go into a heap merged with the shard's own
//! queue when popping (`gateway::home::expiries`: O(log n) per imported
//! entry, unit-tested). Where to continue: (c) A device that reconnects before its user's mailbox was merged
//! (TLS/deflate devices told 1012 during the device move) is
//! `recovered:false`; moving mailboxes before those devices are told to
//! reconnect would cover them. (d) The merge counts (dropped entries and
//! users) are logged by the successor only, not reported to the CLI.

pub mod mailboxes;
pub mod moves;
pub mod notify;
pub mod resends;
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
/// quiescent by then are drained instead. Also how long its shards have
/// to export their mailboxes.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a successor waits, after the last mailbox arrived, for its
/// shards to merge them all before it acknowledges `MailboxesDone`.
pub const MERGE_TIMEOUT: Duration = Duration::from_secs(20);

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
    /// Set on the *running* process: once its devices moved, after the
    /// successor acknowledged a batch of forwarded pushes, it stops
    /// releasing the replies to them (and to every later request) and
    /// kills itself with SIGKILL: pushes processed by the successor and
    /// never answered, which publishers then resend.
    KillAfterForwarding,
    /// As `KillAfterForwarding`, but it stops itself with SIGINT (closes
    /// its publishers with those requests unanswered and exits).
    SigintAfterForwarding,
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
            "kill-after-forwarding" => Some(DebugFault::KillAfterForwarding),
            "sigint-after-forwarding" => Some(DebugFault::SigintAfterForwarding),
            _ => None,
        }
    }
}
