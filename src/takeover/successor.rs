//! The successor's side of a take-over (`serve --takeover`): connect to
//! the running process, receive its listeners, start on them, say so, wait
//! for the commit, then keep the conversation open so each process learns
//! when the other is gone (module doc, steps 2–6).

use super::mailboxes::Assembler;
use super::moves::{Moves, INBOX_MAX, MAILBOX_INBOX_MAX};
use super::wire::{self, Channel, Message, FORMAT_VERSION};
use super::{DebugFault, ACCEPTING_TIMEOUT, MERGE_TIMEOUT};
use crate::route::home_shard;
use shard::InheritedListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long the successor waits for the running process's answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The running process being taken over, after it sent its listeners.
pub struct Predecessor {
    conn: Channel,
    pub pid: u32,
    /// The history to continue (epoch, first seq), as the running process
    /// said (`Message::History`).
    pub history: Option<(u64, u64)>,
    fault: Option<DebugFault>,
}

/// Connects to the process serving `run_dir` and receives its listeners.
/// An error says why in words for the operator; the running process keeps
/// everything.
pub fn connect(
    run_dir: &Path,
    shards: usize,
) -> Result<(Predecessor, Vec<InheritedListener>), String> {
    let path = super::socket_path(run_dir);
    let conn = wire::connect(&path).map_err(|e| {
        format!(
            "--takeover: no running pushgate to take over at {} ({e}); start without --takeover",
            path.display()
        )
    })?;
    let (pid, _) = conn
        .peer()
        .map_err(|e| format!("--takeover: SO_PEERCRED: {e}"))?;
    let hello = Message::Hello {
        format: FORMAT_VERSION,
        pid: std::process::id(),
        shards,
    };
    conn.send(&hello, &[])
        .map_err(|e| format!("--takeover: {e}"))?;
    let mut inherited = Vec::new();
    let mut history = None;
    loop {
        let (msg, fds) = match conn.recv(Some(ANSWER_TIMEOUT)) {
            Ok(Some(m)) => m,
            Ok(None) => return Err(format!("--takeover: pid {pid} closed the conversation")),
            Err(e) => {
                let why = format!("--takeover: reading pid {pid}'s answer: {e}");
                let _ = conn.send(
                    &Message::Refused {
                        reason: why.clone(),
                    },
                    &[],
                );
                return Err(why);
            }
        };
        match msg {
            Message::Listeners { listeners, more } if listeners.len() == fds.len() => {
                inherited.extend(listeners.into_iter().zip(fds).map(|(meta, fd)| {
                    InheritedListener {
                        listener: meta.listener,
                        fd,
                    }
                }));
                if !more {
                    break;
                }
            }
            Message::History { epoch, seq_start } => history = Some((epoch, seq_start)),
            Message::Refused { reason } => {
                return Err(format!("--takeover: pid {pid} refused: {reason}"))
            }
            other => {
                let why = format!("--takeover: unexpected answer from pid {pid}: {other:?}");
                let _ = conn.send(
                    &Message::Refused {
                        reason: why.clone(),
                    },
                    &[],
                );
                return Err(why);
            }
        }
    }
    tracing::info!(
        pid,
        sockets = inherited.len(),
        "take-over: received the listeners"
    );
    let fault = DebugFault::from_env();
    if fault == Some(DebugFault::ExitBeforeAccepting) {
        tracing::warn!("{}: exiting before accepting, on purpose", super::DEBUG_ENV);
        std::process::exit(1);
    }
    Ok((
        Predecessor {
            conn,
            pid,
            history,
            fault,
        },
        inherited,
    ))
}

impl Predecessor {
    /// This process could not start on the listeners: tell the running
    /// process, which keeps them.
    pub fn give_up(self, reason: &str) {
        let _ = self.conn.send(
            &Message::Refused {
                reason: reason.into(),
            },
            &[],
        );
    }

    /// Says this process accepts on every listener; waits for the running
    /// process to stop accepting (`Committed`). Then, on a thread of its
    /// own, receives the live devices it moves (`Connections`), gives each
    /// to its user's home shard here (`moves`) and acknowledges each batch,
    /// until the old process exits.
    pub fn accepting(self, moves: Arc<Moves>) -> Result<(), String> {
        let pid = self.pid;
        // From now on a publisher may push here directly what the old
        // process forwards too (it resends after the old one died):
        // remember direct pushes until the old process is gone.
        moves.resends.set_recording(true);
        let recording = RecordingUntilGone(moves.clone());
        self.conn
            .send(&Message::Accepting, &[])
            .map_err(|e| format!("take-over: telling pid {pid} we accept: {e}"))?;
        match self.conn.recv(Some(ACCEPTING_TIMEOUT + ANSWER_TIMEOUT)) {
            Ok(Some((Message::Committed, _))) => {}
            Ok(Some((other, _))) => {
                return Err(format!(
                    "take-over: unexpected answer from pid {pid}: {other:?}"
                ))
            }
            Ok(None) => {
                // It is gone (crashed, killed): the listeners are ours alone.
                tracing::warn!(
                    pid,
                    "take-over: the previous process exited before committing; serving alone"
                );
                return Ok(());
            }
            Err(e) => return Err(format!("take-over: waiting for pid {pid}: {e}")),
        }
        if self.fault == Some(DebugFault::ExitAfterCommit) {
            tracing::warn!("{}: exiting after the commit, on purpose", super::DEBUG_ENV);
            std::process::exit(1);
        }
        let conn = self.conn;
        let fault = self.fault;
        std::thread::Builder::new()
            .name("takeover-old".into())
            .spawn(move || {
                receive_connections(&conn, pid, &moves, fault);
                tracing::info!(pid, "take-over: the previous process exited");
                drop(recording);
            })
            .map_err(|e| format!("take-over: {e}"))?;
        Ok(())
    }
}

/// Keeps the successor remembering direct pushes
/// (`SharedResends::set_recording`) until dropped: when the previous
/// process is gone, or the hand-over failed.
struct RecordingUntilGone(Arc<Moves>);

impl Drop for RecordingUntilGone {
    fn drop(&mut self) {
        self.0.resends.set_recording(false);
    }
}

/// Receives moved devices, the pushes the old process forwards and its
/// mailboxes until it closes the conversation.
/// Each batch is handed to the home shards' inboxes (route hash over this
/// process's shard count) and then acknowledged: from the `Ack` on, the
/// old process closes its copies. While the shards have not taken what
/// came, the next `Ack` waits (bounded: `INBOX_MAX`).
fn receive_connections(conn: &Channel, pid: u32, moves: &Moves, fault: Option<DebugFault>) {
    let mut moved = 0u64;
    let mut mailboxes = Assembler::default();
    loop {
        let (msg, fds) = match conn.recv(None) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(pid, "take-over: reading from the previous process: {e}");
                return;
            }
        };
        match msg {
            Message::Connections { batch, records } if records.len() == fds.len() => {
                if fault == Some(DebugFault::ExitMidMove) && moved > 0 {
                    tracing::warn!("{}: exiting mid-move, on purpose", super::DEBUG_ENV);
                    std::process::exit(1);
                }
                while moves.inbox_len() >= INBOX_MAX {
                    std::thread::sleep(Duration::from_millis(1));
                }
                moved += records.len() as u64;
                for (record, fd) in records.into_iter().zip(fds) {
                    let home = home_shard(&record.user, moves.shards());
                    moves.push_inbox(home, (fd, record));
                }
                if let Err(e) = conn.send(&Message::Ack { batch }, &[]) {
                    tracing::warn!(pid, "take-over: acknowledging batch {batch}: {e}");
                    return;
                }
            }
            Message::Pushes { batch, items } => {
                // Delivered by the home shards on their next tick; a device
                // still on its way is replayed them once adopted. One its
                // publisher already resent here (the old process died
                // before answering it) was delivered then: skipped.
                let named: Vec<_> = items
                    .iter()
                    .map(|p| (p.origin, p.users.len() as u32))
                    .collect();
                let keep = moves.resends.forwarded(&named);
                let mut skipped = 0usize;
                for (push, keep) in items.into_iter().zip(keep) {
                    if keep {
                        moves.deliver_here(push);
                    } else {
                        skipped += 1;
                    }
                }
                if skipped > 0 {
                    tracing::info!(
                        pid,
                        skipped,
                        "take-over: forwarded pushes already resent here by their publishers; \
                         not delivered again"
                    );
                }
                if let Err(e) = conn.send(&Message::Ack { batch }, &[]) {
                    tracing::warn!(pid, "take-over: acknowledging pushes {batch}: {e}");
                    return;
                }
            }
            Message::ConnectionsDone { moved: total } => {
                tracing::info!(pid, moved = total, "take-over: every device moved here");
            }
            Message::Mailboxes {
                batch,
                shard,
                users,
                broadcasts,
            } => {
                let mut arrived = Vec::new();
                if let Err(why) = mailboxes.receive(shard, users, broadcasts, &mut arrived) {
                    tracing::warn!(pid, "take-over: {why}; not acknowledged");
                    let _ = conn.send(&Message::Refused { reason: why }, &[]);
                    continue;
                }
                // Bounded: the next batch waits while the shards have not
                // merged what came.
                while moves.mailboxes_unmerged() >= MAILBOX_INBOX_MAX {
                    std::thread::sleep(Duration::from_millis(1));
                }
                for user in arrived {
                    let home = home_shard(&user.user.name, moves.shards());
                    moves.push_mailbox_in(home, user);
                }
                if let Err(e) = conn.send(&Message::Ack { batch }, &[]) {
                    tracing::warn!(pid, "take-over: acknowledging mailboxes {batch}: {e}");
                    return;
                }
            }
            Message::MailboxesDone { batch, users } => {
                // Acknowledged once merged: from then on a device resuming
                // here from before the upgrade finds its mailbox.
                let deadline = std::time::Instant::now() + MERGE_TIMEOUT;
                while moves.mailboxes_unmerged() > 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let counts = moves.merge_counts();
                tracing::info!(
                    pid,
                    users_sent = users,
                    users = counts.users,
                    entries = counts.entries,
                    entries_dropped = counts.entries_dropped,
                    users_dropped = counts.users_dropped,
                    unmerged = moves.mailboxes_unmerged(),
                    "take-over: the previous process's mailboxes merged here"
                );
                if moves.mailboxes_unmerged() > 0 {
                    // Not acknowledged: the old process says so; what
                    // arrives later is still merged.
                    continue;
                }
                if let Err(e) = conn.send(&Message::Ack { batch }, &[]) {
                    tracing::warn!(pid, "take-over: acknowledging the mailboxes: {e}");
                    return;
                }
            }
            other => {
                tracing::warn!(pid, "take-over: unexpected message {other:?}; ignored");
            }
        }
    }
}
