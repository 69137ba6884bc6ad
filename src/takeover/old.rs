//! The running process's side of a take-over: the control socket's thread.
//! It starts a successor when `pushgate upgrade` asks, hands it the
//! listeners, stops accepting once the successor accepts, starts the drain,
//! and takes the listeners back if the successor dies while this process
//! still runs. One take-over at a time; everything here is blocking and off
//! the shards (it talks to them through `AcceptGate` and `Control`).

use super::mailboxes::Packer;
use super::moves::{Moves, Moving};
use super::wire::{
    self, Channel, ListenerMeta, Message, BATCH_RECORDS_MAX, FDS_PER_MESSAGE_MAX, FORMAT_VERSION,
};
use super::{
    ACCEPTING_TIMEOUT, ACK_TIMEOUT, HELLO_TIMEOUT, MERGE_TIMEOUT, MOVE_TIMEOUT, PAUSE_TIMEOUT,
};
use crate::control::Control;
use crate::route::home_shard;
use shard::{AcceptGate, ListenerCopies};
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection to the control socket has to say what it wants.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Mailbox items taken from a shard's outbox at a time.
const MAILBOX_TAKE_MAX: usize = 256;

/// What the control thread needs of the running process.
pub struct OldSide {
    pub socket_path: PathBuf,
    pub gate: AcceptGate,
    pub copies: ListenerCopies,
    pub control: Arc<Control>,
    pub drain_rate_per_s: u32,
    /// Live devices leaving this process (shared with the shards).
    pub moves: Arc<Moves>,
    /// The binary this process was started from (the path, read at start:
    /// a deploy replaces the file behind it) and its arguments.
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// Listens on the control socket and serves it on a thread of its own.
pub fn serve_control(side: OldSide) -> std::io::Result<()> {
    let listener = wire::listen(&side.socket_path)?;
    std::thread::Builder::new()
        .name("takeover".into())
        .spawn(move || side.run(listener))?;
    Ok(())
}

/// Where progress goes: the `pushgate upgrade` that asked, if any.
struct Reporter(Option<Channel>);

impl Reporter {
    fn progress(&self, step: &str, detail: String) {
        tracing::info!(step, "take-over: {detail}");
        if let Some(c) = &self.0 {
            let _ = c.send(
                &Message::Progress {
                    step: step.into(),
                    detail,
                },
                &[],
            );
        }
    }

    fn outcome(&self, ok: bool, message: String, successor_pid: Option<u32>) {
        if ok {
            tracing::info!("take-over: {message}");
        } else {
            tracing::warn!("take-over failed: {message}");
        }
        if let Some(c) = &self.0 {
            let _ = c.send(
                &Message::Outcome {
                    ok,
                    message,
                    successor_pid,
                },
                &[],
            );
        }
    }
}

impl OldSide {
    fn run(self, listener: OwnedFd) {
        let me = effective_uid();
        loop {
            let conn = match wire::accept(&listener, None) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("take-over socket: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if !self.peer_allowed(&conn, me) {
                continue;
            }
            match conn.recv(Some(FIRST_MESSAGE_TIMEOUT)) {
                Ok(Some((Message::Upgrade { drain }, _))) => {
                    self.upgrade(Reporter(Some(conn)), &listener, drain)
                }
                Ok(Some((Message::Hello { format, pid, .. }, _))) => {
                    self.take_over(conn, format, pid, Reporter(None), None, false)
                }
                Ok(Some((other, _))) => {
                    refuse(&conn, format!("unexpected first message {other:?}"))
                }
                Ok(None) => {}
                Err(e) => refuse(&conn, e.to_string()),
            }
        }
    }

    /// Only this process's own user may talk to it (the socket's mode says
    /// so too; this also covers a socket file whose mode was changed).
    fn peer_allowed(&self, conn: &Channel, me: u32) -> bool {
        match conn.peer() {
            Ok((_, uid)) if uid == me => true,
            Ok((pid, uid)) => {
                tracing::warn!(pid, uid, "take-over socket: refused a peer of another user");
                refuse(conn, "not the server's user".into());
                false
            }
            Err(e) => {
                tracing::warn!("take-over socket: SO_PEERCRED failed: {e}");
                false
            }
        }
    }

    /// `pushgate upgrade`: starts the successor and waits for its `Hello`.
    fn upgrade(&self, reporter: Reporter, listener: &OwnedFd, drain: bool) {
        if let Some(why) = self.cannot_hand_over() {
            return reporter.outcome(false, why, None);
        }
        let mut child = match self.spawn_successor() {
            Ok(child) => child,
            Err(e) => {
                let exe = self.exe.display();
                return reporter.outcome(false, format!("starting {exe} failed: {e}"), None);
            }
        };
        let pid = child.id();
        reporter.progress(
            "started",
            format!("successor pid {pid}: {} --takeover", self.exe.display()),
        );
        let deadline = Instant::now() + HELLO_TIMEOUT;
        let me = effective_uid();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let why = format!("the successor exited ({status}) before taking over");
                return reporter.outcome(false, format!("{why}; this process keeps serving"), None);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let why = format!("the successor (pid {pid}) did not connect within {HELLO_TIMEOUT:?}; stopped it; this process keeps serving");
                return reporter.outcome(false, why, None);
            }
            let conn = match wire::accept(listener, Some(Duration::from_millis(100))) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("take-over socket: accept failed: {e}");
                    continue;
                }
            };
            if !self.peer_allowed(&conn, me) {
                continue;
            }
            match conn.recv(Some(FIRST_MESSAGE_TIMEOUT)) {
                Ok(Some((Message::Hello { format, pid, .. }, _))) => {
                    return self.take_over(conn, format, pid, reporter, Some(child), drain);
                }
                Ok(Some((Message::Upgrade { .. }, _))) => {
                    refuse(&conn, "an upgrade is already in progress".into())
                }
                Ok(Some((other, _))) => refuse(&conn, format!("unexpected message {other:?}")),
                Ok(None) => {}
                Err(e) => refuse(&conn, e.to_string()),
            }
        }
    }

    fn cannot_hand_over(&self) -> Option<String> {
        if self.control.listeners_handed_over() {
            return Some(
                "this process already handed over to a successor; upgrade that one".into(),
            );
        }
        if self.control.is_draining() {
            return Some("this process is draining; start the new version fresh instead".into());
        }
        None
    }

    fn spawn_successor(&self) -> std::io::Result<Child> {
        let args = self
            .args
            .iter()
            .filter(|a| a.as_os_str() != "--takeover")
            .cloned();
        Command::new(&self.exe)
            .args(args)
            .arg("--takeover")
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C meant for this process (run
            // in a terminal) must not stop the successor too.
            .process_group(0)
            .spawn()
    }

    /// Steps 2–6 of the conversation (module doc) with a connected
    /// successor; `drain`: the connections are drained, not moved.
    fn take_over(
        &self,
        conn: Channel,
        format: u32,
        pid: u32,
        reporter: Reporter,
        child: Option<Child>,
        drain: bool,
    ) {
        let give_up = |why: String, child: Option<Child>| {
            refuse(&conn, why.clone());
            reporter.outcome(false, format!("{why}; this process keeps serving"), None);
            reap_later(child);
        };
        if format != FORMAT_VERSION {
            let why = format!(
                "the successor (pid {pid}) speaks take-over format {format}, this process {FORMAT_VERSION}"
            );
            return give_up(why, child);
        }
        if let Some(why) = self.cannot_hand_over() {
            return give_up(why, child);
        }
        let copies = match self.copies.duplicate() {
            Ok(Some(copies)) => copies,
            Ok(None) => return give_up("the listeners were already closed".into(), child),
            Err(e) => return give_up(format!("duplicating the listeners: {e}"), child),
        };
        let count = copies.len();
        let history = Message::History {
            epoch: self.moves.epoch(),
            seq_start: self.moves.successor_seq_start(),
        };
        if let Err(e) = conn.send(&history, &[]) {
            return give_up(format!("sending the history: {e}"), child);
        }
        if let Err(e) = send_listeners(&conn, copies) {
            return give_up(format!("sending the listeners: {e}"), child);
        }
        reporter.progress(
            "listeners",
            format!("{count} listening sockets sent to pid {pid}"),
        );
        match conn.recv(Some(ACCEPTING_TIMEOUT)) {
            Ok(Some((Message::Accepting, _))) => {}
            Ok(Some((Message::Refused { reason }, _))) => {
                return give_up(format!("the successor gave up: {reason}"), child)
            }
            Ok(Some((other, _))) => return give_up(format!("unexpected message {other:?}"), child),
            Ok(None) => {
                return give_up(
                    "the successor closed the conversation (did it exit? see its log)".into(),
                    child,
                )
            }
            Err(e) => return give_up(format!("waiting for the successor to accept: {e}"), child),
        }
        reporter.progress("accepting", format!("pid {pid} accepts on every listener"));
        self.gate.pause();
        if !self.gate.wait_paused(PAUSE_TIMEOUT) {
            tracing::warn!("take-over: not every shard confirmed the pause in {PAUSE_TIMEOUT:?}; both processes may accept for a while (harmless)");
        }
        self.control.set_listeners_handed_over(true);
        let supported = shard::connection_moves_supported()
            && super::DebugFault::from_env() != Some(super::DebugFault::NoFixedFdInstall);
        let moving = supported && !drain;
        if !moving {
            // The devices are drained (they reconnect to the successor
            // and resume), not moved; the mailboxes move first, so from
            // now on pushes go to the successor, which stores them for a
            // device still here and replays them when it resumes there.
            self.moves.start_forwarding();
        }
        if let Err(e) = conn.send(&Message::Committed, &[]) {
            // It may have died just now; the watcher below sees the EOF.
            tracing::warn!("take-over: telling the successor it committed failed: {e}");
        }
        if !moving {
            reporter.progress(
                "committed",
                format!(
                    "this process stopped accepting; {}: moving its mailboxes to pid {pid}, \
                     then draining its connections at {}/s onto it",
                    if supported {
                        "asked to drain (--drain)"
                    } else {
                        "this kernel cannot move connections (no IORING_OP_FIXED_FD_INSTALL)"
                    },
                    self.drain_rate_per_s
                ),
            );
            return self.mailboxes_then_drain(&conn, pid, child, &reporter, 0);
        }
        reporter.progress(
            "committed",
            format!("this process stopped accepting; moving its live connections to pid {pid}"),
        );
        let started = Instant::now();
        match self.move_connections(&conn, pid) {
            Ok(Moved {
                moved,
                complete,
                rss_peak,
                batch,
            }) => {
                let ms = started.elapsed().as_millis();
                let memory = format!(
                    "peak RSS while moving: this process {} MiB, pid {pid} {} MiB",
                    rss_peak.0 >> 20,
                    rss_peak.1 >> 20
                );
                let detail = if complete {
                    format!("{moved} live connections moved to pid {pid} in {ms} ms; {memory}")
                } else {
                    format!(
                        "{moved} live connections moved to pid {pid} in {ms} ms; {memory}; the \
                         rest are drained at {}/s (they reconnect and resume)",
                        self.drain_rate_per_s
                    )
                };
                reporter.progress("connections", detail);
                self.mailboxes_then_drain(&conn, pid, child, &reporter, batch);
            }
            Err(why) => {
                // Nothing unacknowledged was lost: it is adopted here again.
                reporter.progress("connections", why.clone());
                self.take_back(pid);
                reporter.outcome(
                    false,
                    format!("{why}; this process took every connection not yet moved back and keeps serving"),
                    None,
                );
                reap_later(child);
            }
        }
    }

    /// Moves the mailboxes (this process forwards every push since the
    /// commit, so they are final), then drains what is left — devices
    /// that could not move, or all of them with `--drain`; publishers —
    /// and forwards what its publishers still send until it exits. A
    /// successor gone meanwhile: everything is taken back.
    fn mailboxes_then_drain(
        &self,
        conn: &Channel,
        pid: u32,
        child: Option<Child>,
        reporter: &Reporter,
        mut batch: u64,
    ) {
        // Before the drain: this process exits once drained, and
        // must not take a mailbox with it.
        let started = Instant::now();
        let detail = match self.move_mailboxes(conn, &mut batch) {
            Ok(users) => format!(
                "{users} users' mailboxes moved to pid {pid} in {} ms; resident \
                 memory now: this process {} MiB, pid {pid} {} MiB",
                started.elapsed().as_millis(),
                rss_bytes(std::process::id()) >> 20,
                rss_bytes(pid) >> 20
            ),
            Err(why) if successor_gone(conn) => {
                // No drain: this process serves again, and still
                // has every mailbox for the devices that come back.
                reporter.progress("mailboxes", format!("mailboxes not moved: {why}"));
                self.take_back(pid);
                reporter.outcome(
                    false,
                    format!(
                        "the successor (pid {pid}) is gone: {why}; this process took \
                         the listeners back and keeps serving, with every mailbox"
                    ),
                    None,
                );
                return reap_later(child);
            }
            Err(why) => format!(
                "mailboxes not moved: {why}; a device that resumes on pid {pid} from \
                 before the upgrade is told recovered:false and refetches"
            ),
        };
        reporter.progress("mailboxes", detail);
        // What is left (publishers; devices that could not move)
        // goes as a drain does; this process exits when empty.
        self.control.start_drain(self.drain_rate_per_s);
        reporter.outcome(true, format!("pid {pid} took over"), Some(pid));
        self.forward_until_gone(conn, pid);
        reap_later(child);
    }

    /// Moves every live device to the successor in acknowledged batches
    /// (module doc, "Connections"). An error: the successor failed or
    /// died; the batch in transit and what was waiting are adopted here
    /// again (`take_back`).
    fn move_connections(&self, conn: &Channel, pid: u32) -> Result<Moved, String> {
        let moves = &self.moves;
        // From now on a device may be on its way: pushes go to the
        // successor, which has (or will have) every device.
        moves.start_forwarding();
        moves.start_export();
        let deadline = Instant::now() + MOVE_TIMEOUT;
        let mut batch = 0u64;
        let mut moved = 0u64;
        let mut rss_peak = (0, 0);
        loop {
            if batch.is_multiple_of(16) {
                rss_peak.0 = rss_peak.0.max(rss_bytes(std::process::id()));
                rss_peak.1 = rss_peak.1.max(rss_bytes(pid));
            }
            self.forward_pushes(conn, &mut batch, false)?;
            // Read before taking: a shard says done only after all it
            // exported is in the outbox.
            let done = moves.all_shards_done();
            let items = moves.take_outbox(BATCH_RECORDS_MAX);
            if items.is_empty() {
                if !moves.is_exporting() {
                    return Ok(Moved {
                        moved,
                        complete: false,
                        rss_peak,
                        batch,
                    });
                }
                if done {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        "take-over: devices still not moved after {MOVE_TIMEOUT:?}; draining them"
                    );
                    take_back_items(moves, moves.stop_export());
                    return Ok(Moved {
                        moved,
                        complete: false,
                        rss_peak,
                        batch,
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            batch += 1;
            let n = items.len() as u64;
            if let Err(why) = send_batch(conn, batch, &items) {
                take_back_items(moves, items);
                return Err(why);
            }
            // Until the Ack our copies keep every socket of the batch
            // open: a successor that dies now loses none of them.
            match conn.recv(Some(ACK_TIMEOUT)) {
                Ok(Some((Message::Ack { batch: b }, _))) if b == batch => moved += n,
                Ok(Some((other, _))) => {
                    take_back_items(moves, items);
                    return Err(format!(
                        "the successor answered {other:?} instead of acknowledging batch {batch}"
                    ));
                }
                Ok(None) => {
                    take_back_items(moves, items);
                    return Err(format!(
                        "the successor died while connections moved ({moved} moved, batch {batch} of {n} not acknowledged)"
                    ));
                }
                Err(e) => {
                    take_back_items(moves, items);
                    return Err(format!("waiting for the successor's acknowledgement: {e}"));
                }
            }
        }
        take_back_items(moves, moves.stop_export());
        if let Err(e) = conn.send(&Message::ConnectionsDone { moved }, &[]) {
            return Err(format!(
                "the successor is gone after the move ({moved} moved; telling it failed: {e})"
            ));
        }
        Ok(Moved {
            moved,
            complete: true,
            rss_peak,
            batch,
        })
    }

    /// Sends every shard's mailboxes (module doc, "Mailboxes"); the number
    /// of users sent. An error (the successor failed, died or was too
    /// slow) costs nothing here: an export only copies, so this process
    /// keeps its mailboxes and drains as before.
    fn move_mailboxes(&self, conn: &Channel, batch: &mut u64) -> Result<u64, String> {
        self.moves.start_mailbox_export();
        let sent = self.send_mailboxes(conn, batch);
        self.moves.stop_mailbox_export();
        sent
    }

    fn send_mailboxes(&self, conn: &Channel, batch: &mut u64) -> Result<u64, String> {
        let moves = &self.moves;
        let deadline = Instant::now() + MOVE_TIMEOUT;
        let mut users = 0;
        let mut bodies = Vec::new();
        for shard in 0..moves.shards() {
            let mut packer = Packer::default();
            loop {
                // Pushes keep arriving; the successor delivers them.
                self.forward_pushes(conn, batch, true)?;
                let (items, last) = moves.take_mailboxes(shard, MAILBOX_TAKE_MAX);
                let idle = items.is_empty();
                for item in items {
                    packer.add(item, &mut bodies);
                }
                if last {
                    packer.flush(&mut bodies);
                }
                for body in bodies.drain(..) {
                    *batch += 1;
                    let msg = Message::Mailboxes {
                        batch: *batch,
                        shard,
                        users: body.users,
                        broadcasts: body.broadcasts,
                    };
                    send_acked(conn, &msg, *batch, ACK_TIMEOUT)?;
                }
                if last {
                    users += packer.users;
                    break;
                }
                if idle {
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "shard {shard} did not export its mailboxes within {MOVE_TIMEOUT:?}"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        *batch += 1;
        let done = Message::MailboxesDone {
            batch: *batch,
            users,
        };
        // Acknowledged once the successor's shards merged them all.
        send_acked(conn, &done, *batch, ACK_TIMEOUT + MERGE_TIMEOUT)?;
        Ok(users)
    }

    /// Sends the pushes waiting to be forwarded, in acknowledged batches.
    /// An error: the successor is gone (the batch in transit is delivered
    /// here by `take_back`, with whatever still waits).
    fn forward_pushes(
        &self,
        conn: &Channel,
        batch: &mut u64,
        after_move: bool,
    ) -> Result<(), String> {
        loop {
            self.moves.set_forward_sending(true);
            let items = self.moves.take_forward();
            if items.is_empty() {
                self.moves.set_forward_sending(false);
                return Ok(());
            }
            *batch += 1;
            if !self.moves.has_forwarded() {
                tracing::info!("take-over: forwarding the pushes received here to the successor");
            }
            self.moves.count_forwarded(items.len());
            let sent = conn.send(
                &Message::Pushes {
                    batch: *batch,
                    items: items.clone(),
                },
                &[],
            );
            let acked = sent.is_ok()
                && matches!(
                    conn.recv(Some(ACK_TIMEOUT)),
                    Ok(Some((Message::Ack { batch: b }, _))) if b == *batch
                );
            if acked {
                self.acknowledged_forward(items.len(), after_move);
            }
            self.moves.set_forward_sending(false);
            if !acked {
                for push in items {
                    self.moves.deliver_here(push);
                }
                return Err(format!(
                    "the successor did not acknowledge forwarded pushes (batch {batch})"
                ));
            }
        }
    }

    /// The successor acknowledged `pushes` forwarded pushes: the replies
    /// to them may go. (Debug faults: stop here instead, leaving them
    /// processed by the successor and unanswered.)
    fn acknowledged_forward(&self, pushes: usize, after_move: bool) {
        let fault = super::DebugFault::from_env();
        let stop = match fault {
            _ if !after_move => None,
            Some(super::DebugFault::KillAfterForwarding) => Some(libc::SIGKILL),
            Some(super::DebugFault::SigintAfterForwarding) => Some(libc::SIGINT),
            _ => None,
        };
        static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if let Some(signal) = stop {
            self.moves.withhold_forward_acks();
            if !STOPPED.swap(true, std::sync::atomic::Ordering::AcqRel) {
                tracing::warn!(
                    pushes,
                    "{}: replies to acknowledged forwarded pushes withheld; stopping this \
                     process with signal {signal}, on purpose",
                    super::DEBUG_ENV
                );
                // SAFETY: kill(2) on this process's own pid with a valid
                // signal number; no memory is involved.
                unsafe { libc::kill(libc::getpid(), signal) };
            }
        }
        self.moves.ack_forwarded(pushes);
    }

    /// After the move: forwards what this process's publishers still send
    /// until the successor is gone (then takes back) or this process exits.
    fn forward_until_gone(&self, conn: &Channel, pid: u32) {
        let mut batch = u64::MAX / 2;
        loop {
            if self.forward_pushes(conn, &mut batch, true).is_err() {
                break;
            }
            match conn.recv(Some(Duration::from_millis(5))) {
                Ok(Some(_)) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.take_back(pid);
    }

    /// The successor is gone while this process runs: accept again, stop
    /// exporting, forwarding and draining, adopt every device waiting to
    /// move and deliver every push waiting to be forwarded.
    fn take_back(&self, pid: u32) {
        for push in self.moves.stop_forwarding() {
            self.moves.deliver_here(push);
        }
        take_back_items(&self.moves, self.moves.stop_export());
        tracing::error!(
            pid,
            "take-over: the successor died while this process still runs; taking the \
             listeners back: accepting again, drain stopped"
        );
        self.control.stop_drain();
        self.control.set_listeners_handed_over(false);
        self.gate.resume();
    }
}

/// How a move ended: `complete` = every device moved (else the rest is
/// left to the drain).
struct Moved {
    moved: u64,
    complete: bool,
    /// The most resident memory seen while moving (bytes): this process,
    /// the successor (read every 16 batches).
    rss_peak: (u64, u64),
    /// The last batch number used.
    batch: u64,
}

/// Resident memory of process `pid` in bytes (0 if unreadable).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Whether the successor's end of the conversation is closed (it exited
/// or was killed). Messages still queued are read and ignored.
fn successor_gone(conn: &Channel) -> bool {
    loop {
        match conn.recv(Some(Duration::ZERO)) {
            Ok(Some(_)) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Ok(None) | Err(_) => return true,
        }
    }
}

/// Sends `msg` (no descriptors) and waits up to `timeout` for `Ack{batch}`.
fn send_acked(conn: &Channel, msg: &Message, batch: u64, timeout: Duration) -> Result<(), String> {
    conn.send(msg, &[])
        .map_err(|e| format!("sending batch {batch}: {e}"))?;
    match conn.recv(Some(timeout)) {
        Ok(Some((Message::Ack { batch: b }, _))) if b == batch => Ok(()),
        Ok(Some((other, _))) => Err(format!(
            "the successor answered {other:?} instead of acknowledging batch {batch}"
        )),
        Ok(None) => Err(format!(
            "the successor closed the conversation (batch {batch} not acknowledged)"
        )),
        Err(e) => Err(format!(
            "waiting for the successor's acknowledgement of batch {batch}: {e}"
        )),
    }
}

/// Sends one batch of moved devices with their sockets attached.
fn send_batch(conn: &Channel, batch: u64, items: &[Moving]) -> Result<(), String> {
    let records = items.iter().map(|(_, r)| r.clone()).collect();
    let fds: Vec<_> = items.iter().map(|(fd, _)| fd.as_fd()).collect();
    conn.send(&Message::Connections { batch, records }, &fds)
        .map_err(|e| format!("sending batch {batch} of connections: {e}"))
}

/// Gives devices that did not reach the successor to their home shards
/// here again: this process adopts them back, with their state.
fn take_back_items(moves: &Moves, items: Vec<Moving>) {
    if !items.is_empty() {
        tracing::warn!(
            connections = items.len(),
            "take-over: taking back connections the successor did not acknowledge"
        );
    }
    for (fd, record) in items {
        let home = home_shard(&record.user, moves.shards());
        moves.push_inbox(home, (fd, record));
    }
}

/// Sends every listener copy, ≤ 253 descriptors a message.
fn send_listeners(conn: &Channel, copies: Vec<shard::ListenerCopy>) -> std::io::Result<()> {
    let chunks: Vec<&[shard::ListenerCopy]> = copies.chunks(FDS_PER_MESSAGE_MAX).collect();
    let last = chunks.len().saturating_sub(1);
    if chunks.is_empty() {
        return conn.send(
            &Message::Listeners {
                listeners: Vec::new(),
                more: false,
            },
            &[],
        );
    }
    for (i, chunk) in chunks.into_iter().enumerate() {
        let listeners = chunk
            .iter()
            .map(|c| ListenerMeta {
                listener: c.listener,
                shard: c.shard,
            })
            .collect();
        let fds: Vec<_> = chunk.iter().map(|c| c.fd.as_fd()).collect();
        conn.send(
            &Message::Listeners {
                listeners,
                more: i != last,
            },
            &fds,
        )?;
    }
    Ok(())
}

fn refuse(conn: &Channel, reason: String) {
    let _ = conn.send(&Message::Refused { reason }, &[]);
}

/// Waits for a started successor on a thread of its own, so it leaves no
/// zombie, and logs how it ended.
fn reap_later(child: Option<Child>) {
    let Some(mut child) = child else { return };
    let _ = std::thread::Builder::new()
        .name("takeover-reap".into())
        .spawn(move || {
            if let Ok(status) = child.wait() {
                tracing::info!(pid = child.id(), "the successor exited: {status}");
            }
        });
}

/// This process's effective uid.
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
