//! The shard's listening sockets: arming and cancelling multishot
//! accepts, the accept gate of a live upgrade, the accept-queue watch,
//! closing listeners.

use super::Reactor;
use crate::accept_watch;
use crate::op::{self, Tag};
use crate::stats::ShardStats;
use crate::takeover::GateStep;
use io_uring::{opcode, types};
use std::os::fd::AsRawFd;

impl<M> Reactor<M> {
    /// Arms the multishot accept of the socket at `position` in
    /// `listeners`, unless the accept gate holds this shard paused.
    pub(super) fn arm_accept(&mut self, position: usize) {
        if self.gate_follower.is_paused() {
            return;
        }
        let state = &mut self.listeners[position];
        let Some(fd) = state.fd.as_ref() else { return };
        if state.accept_armed {
            return;
        }
        state.accept_armed = true;
        let entry = opcode::AcceptMulti::new(types::Fd(fd.as_raw_fd()))
            .allocate_file_index(true)
            .build()
            .user_data(op::encode(Tag::Accept, position as u64));
        self.ring.push(entry);
    }

    /// The listener index (into `RuntimeConfig::listeners`) of the socket
    /// at `position`.
    pub(crate) fn listener_index(&self, position: usize) -> usize {
        self.listeners[position].listener
    }

    /// Once a second: renews any armed accept whose socket has connections
    /// waiting and accepted none since the last check (see `accept_watch`).
    pub(crate) fn watch_accept_queues(&mut self) {
        if self.now_ms < self.accept_watch_at_ms {
            return;
        }
        self.accept_watch_at_ms = self.now_ms + accept_watch::CHECK_INTERVAL_MS;
        for position in 0..self.listeners.len() {
            let state = &mut self.listeners[position];
            let queued = match (&state.fd, state.accept_armed) {
                (Some(fd), true) => accept_watch::accept_queue_len(fd.as_raw_fd()),
                _ => None,
            };
            let Some(queued) = queued else {
                state.watch.reset();
                continue;
            };
            if state.watch.check(queued) {
                tracing::warn!(
                    shard = self.shard_id,
                    listener = state.listener,
                    queued,
                    "connections wait in an accept queue while this shard's accept sleeps: accepting afresh"
                );
                ShardStats::add(&self.stats.accept_renewals_total, 1);
                self.cancel_accept(position);
            }
        }
    }

    pub(super) fn cancel_accept(&mut self, position: usize) {
        if self.listeners[position].accept_armed {
            let entry = opcode::AsyncCancel::new(op::encode(Tag::Accept, position as u64))
                .build()
                .user_data(op::encode(Tag::Ignore, 0));
            self.ring.push(entry);
        }
    }

    /// Follows the runtime's accept gate, once per round: a pause cancels
    /// every armed accept (the sockets stay open), a resume arms them again.
    pub(crate) fn follow_accept_gate(&mut self) {
        let armed = self.listeners.iter().any(|l| l.accept_armed);
        match self.gate_follower.step(&self.gate, armed) {
            GateStep::Nothing => {}
            GateStep::Pause => {
                tracing::debug!(shard = self.shard_id, "accepting paused (live upgrade)");
                for i in 0..self.listeners.len() {
                    self.cancel_accept(i);
                }
            }
            GateStep::Renew => {
                tracing::debug!(shard = self.shard_id, "accepts renewed");
                for i in 0..self.listeners.len() {
                    self.cancel_accept(i);
                }
            }
            GateStep::Resume => {
                tracing::debug!(shard = self.shard_id, "accepting resumed");
                if !self.stopping && !self.accept_paused {
                    for i in 0..self.listeners.len() {
                        self.arm_accept(i);
                    }
                }
            }
        }
    }

    pub(super) fn resume_accepts(&mut self) {
        if self.accept_paused && !self.stopping {
            self.accept_paused = false;
            for i in 0..self.listeners.len() {
                self.arm_accept(i);
            }
        }
    }

    /// Stops accepting on listener `listener` (every socket of this shard
    /// that serves it): cancels its multishot accept and closes its socket
    /// (connections still in its backlog are reset by the kernel, unless
    /// another process holds the same socket; SO_REUSEPORT siblings of a
    /// successor keep accepting).
    pub(crate) fn close_listener(&mut self, listener: usize) {
        for position in 0..self.listeners.len() {
            if self.listeners[position].listener == listener {
                self.close_socket(position);
            }
        }
    }

    pub(super) fn close_socket(&mut self, position: usize) {
        self.cancel_accept(position);
        self.listeners[position].fd = None;
    }

    pub(super) fn close_listeners(&mut self) {
        for position in 0..self.listeners.len() {
            self.close_socket(position);
        }
    }
}
