//! Drip drain: once `Control` says draining, each shard stops accepting
//! clients (its push and admin sockets stay), then closes its share of the
//! drain rate every tick with 1012 ("service restart") so devices reconnect
//! to the successor a few at a time instead of all at once. Pushes keep
//! flowing to devices not yet closed. When a shard has no client left it
//! reports to `Control`; the main thread exits when all have.

use super::{
    Gateway, GatewayStats, Msg, ADMIN, CLIENT_LISTENER, CONSOLE_LISTENER, HANDSHAKE, PUBLISHER,
    VACANT,
};
use crate::ws::close::CloseCode;
use shard::{ConnId, Ctx};

/// Slots scanned per tick looking for connections to close, so one tick
/// stays short even on a sparse table.
const DRAIN_SCAN_SLOTS_PER_TICK_MAX: usize = 100_000;

#[derive(Default)]
pub(super) struct DrainState {
    started_at_ms: Option<u64>,
    /// Connections this shard may close so far (fractions carry over).
    closes_allowed: f64,
    /// Where the scan for open connections continues.
    cursor: usize,
    reported: bool,
}

impl Gateway {
    pub(super) fn drain_step(&mut self, ctx: &mut Ctx<'_, Msg>) {
        if !self.shared.control.is_draining() || self.drain.reported {
            return;
        }
        let now = ctx.now_ms();
        let last = *self.drain.started_at_ms.get_or_insert_with(|| {
            tracing::info!(
                shard = ctx.shard_id(),
                devices = self.devices_online,
                "drain: no longer accepting clients"
            );
            ctx.close_listener(CLIENT_LISTENER);
            ctx.close_listener(CONSOLE_LISTENER);
            now
        });
        let rate_per_shard =
            self.shared.control.drain_rate_per_s() as f64 / ctx.shard_count() as f64;
        // Fractions carry over between ticks, so any rate is honoured.
        self.drain.closes_allowed += rate_per_shard * now.saturating_sub(last) as f64 / 1000.0;
        self.drain.started_at_ms = Some(now);
        let mut to_close = Vec::new();
        let slots = self.slots.len();
        for _ in 0..DRAIN_SCAN_SLOTS_PER_TICK_MAX.min(slots) {
            if self.drain.closes_allowed < 1.0 + to_close.len() as f64 {
                break;
            }
            let i = self.drain.cursor % slots.max(1);
            self.drain.cursor = self.drain.cursor.wrapping_add(1);
            let user = self.slots[i].user;
            if matches!(user, VACANT | HANDSHAKE | PUBLISHER | ADMIN) {
                continue;
            }
            if let Some(conn) = self
                .users
                .get(user)
                .and_then(|u| u.devices().find(|c| c.index() == i))
            {
                to_close.push(conn);
            }
        }
        self.drain.closes_allowed -= to_close.len() as f64;
        for conn in to_close {
            self.drain_close(ctx, conn);
        }
        if self.devices_online == 0 && self.handshakes.is_empty() {
            self.drain.reported = true;
            tracing::info!(shard = ctx.shard_id(), "drain: shard empty");
            self.shared.control.shard_drained();
        }
    }

    fn drain_close(&mut self, ctx: &mut Ctx<'_, Msg>, conn: ConnId) {
        GatewayStats::add(&self.stats().drain_closes_total, 1);
        self.close_ws(
            ctx,
            conn,
            CloseCode::SERVICE_RESTART,
            "server restarting; reconnect",
        );
    }
}
