//! The shard's side of TLS connections: bytes in through the `tls` part,
//! its handshake records and alerts queued raw, its counters.

use super::Reactor;
use crate::stats::ShardStats;
use crate::tls;
use crate::ConnId;
use bytes::Bytes;

impl<M> Reactor<M> {
    /// Bytes received on a TLS connection (the caller checked the flag):
    /// opened, or fed to its handshake, whose records are queued here.
    pub(crate) fn tls_input(&mut self, id: ConnId, buf: &mut [u8]) -> tls::Input {
        let mut out = Vec::new();
        let mut input = self.tls.input(id, buf, &mut out);
        self.after_tls(id, out, &mut input);
        input
    }

    /// A new round: the handshake budget is full again.
    pub(crate) fn tls_new_round(&mut self) {
        self.tls.new_round();
    }

    /// Handshakes that wait for budget, oldest first.
    pub(crate) fn tls_take_deferred(&mut self) -> Vec<ConnId> {
        self.tls.take_deferred()
    }

    pub(crate) fn tls_has_deferred(&self) -> bool {
        self.tls.has_deferred()
    }

    /// Continues a deferred handshake of a connection still open.
    pub(crate) fn tls_resume(&mut self, id: ConnId) -> tls::Input {
        if !self.is_open(id) {
            return tls::Input::Nothing;
        }
        let mut out = Vec::new();
        let mut input = self.tls.resume(id, &mut out);
        self.after_tls(id, out, &mut input);
        input
    }

    pub(super) fn after_tls(&mut self, id: ConnId, out: Vec<u8>, input: &mut tls::Input) {
        if !out.is_empty() {
            self.enqueue_raw(id, &[Bytes::from(out)]);
        }
        if let tls::Input::Ended { failure, reply } = input {
            if let Some(reason) = failure {
                ShardStats::add(&self.stats.tls_failures_total, 1);
                tracing::info!(shard = self.shard_id, reason = %reason, "TLS connection refused or ended");
            }
            let reply = std::mem::take(reply);
            if !reply.is_empty() {
                self.enqueue_raw(id, &[Bytes::from(reply)]);
            }
            self.tls.remove(id);
        }
        let established = self.tls.take_established();
        if established > 0 {
            ShardStats::add(&self.stats.tls_handshakes_total, established);
        }
    }
}
