//! The successor's side of a take-over (`serve --takeover`): connect to
//! the running process, receive its listeners, start on them, say so, wait
//! for the commit, then keep the conversation open so each process learns
//! when the other is gone (module doc, steps 2–6).

use super::wire::{self, Channel, Message, FORMAT_VERSION};
use super::{DebugFault, ACCEPTING_TIMEOUT};
use shard::InheritedListener;
use std::path::Path;
use std::time::Duration;

/// How long the successor waits for the running process's answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The running process being taken over, after it sent its listeners.
pub struct Predecessor {
    conn: Channel,
    pub pid: u32,
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
    Ok((Predecessor { conn, pid, fault }, inherited))
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
    /// process to stop accepting (`Committed`). Then keeps the conversation
    /// open on a thread of its own until the old process exits.
    pub fn accepting(self) -> Result<(), String> {
        let pid = self.pid;
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
        std::thread::Builder::new()
            .name("takeover-old".into())
            .spawn(move || {
                while let Ok(Some(_)) = conn.recv(None) {}
                tracing::info!(pid, "take-over: the previous process exited");
            })
            .map_err(|e| format!("take-over: {e}"))?;
        Ok(())
    }
}
