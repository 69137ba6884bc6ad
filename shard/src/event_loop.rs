//! The shard's loop: submit, wait, collect completions, run each through
//! the reactor and the app, then timers and the inbox. The reactor does the
//! part of every completion that needs no app and says what the app should
//! hear; this file makes those calls, and only it borrows the app.

use crate::buf_ring::BufRing;
use crate::conn::TLS;
use crate::ctx::Ctx;
use crate::op::{self, Tag};
use crate::reactor::{Adopted, Exported, Inbound, Reactor, Received, Sent};
use crate::tls;
use crate::{App, CloseReason, ConnId};
use io_uring::cqueue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Inbox messages handled per round, so a flood from other shards cannot
/// starve this shard's own sockets.
const MESH_BATCH_MAX: usize = 4096;
/// After the stop grace period, how long to wait for cancelled ops.
const STOP_DRAIN_MS: u64 = 2000;

pub(crate) struct Shard<A: App> {
    // Field order is drop order: the ring (inside `r`) must go before the
    // memory it may write into (`bufs`).
    r: Reactor<A::Msg>,
    bufs: BufRing,
    app: A,
    /// This round's completions: (user_data, result, flags).
    cqes: Vec<(u64, i32, u32)>,
    /// Slab indexes whose deadline passed this tick.
    fired: Vec<u32>,
    stop: Arc<AtomicBool>,
    mesh_pending: bool,
    stop_deadline_ms: Option<u64>,
    aborted_all: bool,
}

impl<A: App> Shard<A> {
    pub(crate) fn new(r: Reactor<A::Msg>, bufs: BufRing, app: A, stop: Arc<AtomicBool>) -> Self {
        Shard {
            r,
            bufs,
            app,
            cqes: Vec::new(),
            fired: Vec::new(),
            stop,
            mesh_pending: true,
            stop_deadline_ms: None,
            aborted_all: false,
        }
    }

    pub(crate) fn run(mut self) -> std::io::Result<()> {
        self.r.arm_initial();
        let result = self.run_loop();
        let bufs = &mut self.bufs;
        self.r
            .cancel_all_and_reap(STOP_DRAIN_MS, |bid| bufs.recycle(bid));
        result
    }

    fn run_loop(&mut self) -> std::io::Result<()> {
        loop {
            self.r.count_loop_iteration();
            if !self.r.is_stopping() && self.stop.load(Ordering::Acquire) {
                self.begin_stop();
            }
            if let Some(deadline) = self.stop_deadline_ms {
                if self.r.connection_count() == 0 {
                    return Ok(());
                }
                if self.r.now_ms() >= deadline && !self.aborted_all {
                    self.abort_all();
                }
                if self.r.now_ms() >= deadline + STOP_DRAIN_MS {
                    tracing::warn!(
                        shard = self.r.shard_id(),
                        left = self.r.connection_count(),
                        "connections still closing at exit"
                    );
                    return Ok(());
                }
            }
            self.r
                .submit_and_wait(self.mesh_pending || self.r.tls_has_deferred())?;
            self.r.tls_new_round();
            if self.r.tls_has_deferred() {
                self.run_deferred_tls();
            }

            // Completions are collected before any handler runs, so handlers
            // may submit freely without the CQ changing under us.
            self.cqes.clear();
            self.r.collect_completions(&mut self.cqes);
            let cqes = std::mem::take(&mut self.cqes);
            for &(user_data, res, flags) in &cqes {
                self.dispatch(user_data, res, flags);
            }
            self.cqes = cqes;

            self.r.rearm_starved();
            self.r.follow_accept_gate();
            if self.mesh_pending {
                self.mesh_pending = self.drain_inbox();
            }
            if self.r.timer_tick_due() {
                self.run_timers();
            }
            self.r.record_sq_backlog();
        }
    }

    fn dispatch(&mut self, user_data: u64, res: i32, flags: u32) {
        let Some((tag, payload)) = op::decode(user_data) else {
            tracing::error!(user_data, "completion with unknown tag");
            return;
        };
        self.r.completion_arrived(tag, flags);
        match tag {
            Tag::Accept => self.on_accept(payload as usize, res, flags),
            Tag::Recv => self.on_recv(op::decode_conn(payload), res, flags),
            Tag::Send => self.on_send(op::decode_conn(payload), res),
            Tag::Shutdown => self.r.shutdown_completed(op::decode_conn(payload)),
            Tag::Close => self.r.close_completed(op::decode_conn(payload)),
            Tag::Ignore => {}
            Tag::Wake => {
                self.r.woken();
                self.mesh_pending = true;
            }
            Tag::HandoffOut => self.on_handoff_out(op::decode_conn(payload), res),
            Tag::HandoffIn => self.on_handoff_in(payload, res),
            Tag::Export => self.on_export(op::decode_conn(payload), res),
            Tag::Adopt => self.on_adopt(payload, res),
        }
    }

    /// An accept completed on the socket at `position` of this shard's
    /// listeners; the app hears the listener's index.
    fn on_accept(&mut self, position: usize, res: i32, flags: u32) {
        if let Some(id) = self.r.accept_completed(position, res, cqueue::more(flags)) {
            let listener = self.r.listener_index(position);
            self.app
                .on_accept(&mut Ctx { r: &mut self.r }, id, listener);
            self.r.arm_recv_if_open(id);
        }
        self.r.rearm_accept(position);
    }

    fn on_recv(&mut self, id: ConnId, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        match self.r.recv_completed(id, res, cqueue::more(flags)) {
            Received::Gone => {
                if let Some(bid) = bid {
                    self.bufs.recycle(bid);
                }
                return;
            }
            Received::Data { deliver } => {
                let bid = bid.expect("recv with buffer select returned no buffer");
                if self.r.conn(id).is_some_and(|c| c.has(TLS)) {
                    if deliver {
                        let data = self.bufs.buffer_mut(bid, res as usize);
                        match self.r.tls_input(id, data) {
                            tls::Input::Nothing => {}
                            tls::Input::InPlace(0) => {}
                            tls::Input::InPlace(n) => {
                                self.app
                                    .on_data(&mut Ctx { r: &mut self.r }, id, &mut data[..n])
                            }
                            tls::Input::Owned(mut plain) => {
                                if !plain.is_empty() {
                                    self.app
                                        .on_data(&mut Ctx { r: &mut self.r }, id, &mut plain)
                                }
                            }
                            tls::Input::Ended { failure, .. } => {
                                self.end_tls(id, failure.is_some())
                            }
                        }
                    }
                } else if deliver {
                    let data = self.bufs.buffer_mut(bid, res as usize);
                    self.app.on_data(&mut Ctx { r: &mut self.r }, id, data);
                }
                self.bufs.recycle(bid);
            }
            Received::Ended(tell_app) => {
                if let Some(reason) = tell_app {
                    self.app.on_close(&mut Ctx { r: &mut self.r }, id, reason);
                }
                self.r.final_close(id);
            }
            Received::Nothing => {}
        }
        self.r.after_recv(id);
        self.r.maybe_install(id);
    }

    /// Handshakes that waited for this round's budget, oldest first (a
    /// ClientHello over the budget leaves output nothing else can).
    fn run_deferred_tls(&mut self) {
        for id in self.r.tls_take_deferred() {
            match self.r.tls_resume(id) {
                tls::Input::Ended { failure, .. } => self.end_tls(id, failure.is_some()),
                tls::Input::Owned(mut plain) if !plain.is_empty() => {
                    self.app
                        .on_data(&mut Ctx { r: &mut self.r }, id, &mut plain)
                }
                _ => {}
            }
        }
    }

    /// A TLS connection failed (bad handshake or record) or the client sent
    /// close_notify: the app hears it, and the reply (alert, 400 or our
    /// close_notify) is flushed before the close.
    fn end_tls(&mut self, id: ConnId, failed: bool) {
        if !self.r.is_open(id) {
            return;
        }
        let reason = if failed {
            CloseReason::Error(libc::EPROTO)
        } else {
            CloseReason::PeerClosed
        };
        self.app.on_close(&mut Ctx { r: &mut self.r }, id, reason);
        self.r.start_close(id, None);
    }

    fn on_send(&mut self, id: ConnId, res: i32) {
        match self.r.send_completed(id, res) {
            Sent::Gone => return,
            Sent::Progress => {}
            Sent::Failed { errno, app_owned } => {
                if app_owned {
                    self.app
                        .on_close(&mut Ctx { r: &mut self.r }, id, CloseReason::Error(errno));
                }
                self.r.final_close(id);
            }
            Sent::HandoffFailed(errno) => {
                self.fail_handoff(id, errno);
                return;
            }
        }
        if self.r.after_send(id) {
            self.app.on_drained(&mut Ctx { r: &mut self.r }, id);
        }
        self.r.maybe_install(id);
    }

    /// The descriptor of an exporting connection was installed (or not).
    fn on_export(&mut self, id: ConnId, res: i32) {
        match self.r.export_completed(id, res) {
            Exported::Moved(fd) => self.app.on_exported(&mut Ctx { r: &mut self.r }, id, fd),
            Exported::Failed(errno) => {
                self.app
                    .on_export_failed(&mut Ctx { r: &mut self.r }, id, errno)
            }
            Exported::Gone | Exported::Dropped => {}
        }
    }

    /// A descriptor from another process entered the table (or not).
    fn on_adopt(&mut self, token: u64, res: i32) {
        match self.r.adopt_completed(token, res) {
            Adopted::Open(id, msg) => {
                self.app.on_adopted(&mut Ctx { r: &mut self.r }, id, msg);
                self.r.arm_recv_if_open(id);
            }
            Adopted::Failed(fd, msg, errno) => {
                self.app
                    .on_adopt_failed(&mut Ctx { r: &mut self.r }, fd, msg, errno)
            }
            Adopted::Gone => {}
        }
    }

    fn on_handoff_out(&mut self, id: ConnId, res: i32) {
        if let Err(errno) = self.r.handoff_out_completed(id, res) {
            self.fail_handoff(id, errno);
        }
    }

    fn fail_handoff(&mut self, id: ConnId, errno: i32) {
        self.r.abandon_handoff(id, errno);
        self.app.on_close(
            &mut Ctx { r: &mut self.r },
            id,
            CloseReason::HandoffFailed(errno),
        );
        self.r.final_close(id);
        self.r.maybe_free(id);
    }

    fn on_handoff_in(&mut self, token: u64, res: i32) {
        if !self.r.handoff_fd_arrived(token, res) {
            return;
        }
        if let Some((id, msg)) = self.r.take_ready_handoff(token) {
            self.deliver_handoff(id, msg);
        }
        // The state usually arrived first and waits in the inbox.
        self.mesh_pending = true;
    }

    fn deliver_handoff(&mut self, id: ConnId, msg: A::Msg) {
        self.app.on_handoff(&mut Ctx { r: &mut self.r }, id, msg);
        self.r.arm_recv_if_open(id);
    }

    /// Handles up to MESH_BATCH_MAX messages; true if more are waiting.
    fn drain_inbox(&mut self) -> bool {
        for _ in 0..MESH_BATCH_MAX {
            match self.r.next_inbound() {
                None => return false,
                Some(Inbound::Message { from, msg }) => {
                    self.app.on_message(&mut Ctx { r: &mut self.r }, from, msg)
                }
                Some(Inbound::Handoff { id, msg }) => self.deliver_handoff(id, msg),
                Some(Inbound::Handled) => {}
            }
        }
        true
    }

    fn run_timers(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.r.advance_timers(&mut fired);
        for index in fired.drain(..) {
            if let Some(id) = self.r.timer_fired(index) {
                self.app.on_timer(&mut Ctx { r: &mut self.r }, id);
            }
        }
        self.fired = fired;
        self.app.on_tick(&mut Ctx { r: &mut self.r });
        self.r.sweep_stale_handoffs();
        self.r.watch_accept_queues();
    }

    fn begin_stop(&mut self) {
        self.stop_deadline_ms = Some(self.r.begin_stop());
        self.app.on_stop(&mut Ctx { r: &mut self.r });
    }

    fn abort_all(&mut self) {
        self.aborted_all = true;
        for id in self.r.conn_ids() {
            if self.r.is_open(id) {
                self.app
                    .on_close(&mut Ctx { r: &mut self.r }, id, CloseReason::Stopped);
            }
            self.r.final_close(id);
            self.r.maybe_free(id);
        }
    }
}
