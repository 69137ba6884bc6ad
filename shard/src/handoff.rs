//! Handoff bookkeeping: which of this shard's connections are on their way
//! to another shard, and which handed-in connections still wait for their
//! other half. Pure: tokens, slots and `now` in, decisions out; the reactor
//! does the ring operations.
//!
//! A handed-in connection arrives in two halves, in either order: its fd
//! (a HandoffIn completion posted by the sender's MsgRingSendFd) and its app
//! state (an `Envelope::Handoff` on the mesh), matched by a token.

use crate::ConnId;
use std::collections::HashMap;

/// A half whose other half did not arrive within this long is dropped.
pub(crate) const STALE_MS: u64 = 10_000;

/// Bits of a token below the sending shard's id.
const SEQ_BITS: u32 = 40;

struct PendingIn<M> {
    /// The fixed-file slot the fd landed in.
    slot: Option<u32>,
    msg: Option<M>,
    since_ms: u64,
}

pub(crate) struct Handoffs<M> {
    /// Outgoing, until the fd has left: destination shard and token.
    out: HashMap<ConnId, (usize, u64)>,
    /// Incoming, by token.
    pending_in: HashMap<u64, PendingIn<M>>,
    seq: u64,
}

impl<M> Handoffs<M> {
    pub(crate) fn new() -> Handoffs<M> {
        Handoffs {
            out: HashMap::new(),
            pending_in: HashMap::new(),
            seq: 0,
        }
    }

    /// A token no other live handoff in the process uses: the sending
    /// shard in the top bits, a sequence below (wraps after 2^40).
    pub(crate) fn next_token(&mut self, shard_id: usize) -> u64 {
        let token = ((shard_id as u64) << SEQ_BITS) | (self.seq & ((1 << SEQ_BITS) - 1));
        self.seq += 1;
        token
    }

    /// `id` is leaving for shard `to` under `token`.
    pub(crate) fn start_out(&mut self, id: ConnId, to: usize, token: u64) {
        self.out.insert(id, (to, token));
    }

    /// Where `id` is going, and its token.
    pub(crate) fn out_target(&self, id: ConnId) -> Option<(usize, u64)> {
        self.out.get(&id).copied()
    }

    /// `id` has left (or its handoff failed): forgets it, returning where it
    /// was going.
    pub(crate) fn end_out(&mut self, id: ConnId) -> Option<(usize, u64)> {
        self.out.remove(&id)
    }

    fn pending(&mut self, token: u64, now_ms: u64) -> &mut PendingIn<M> {
        self.pending_in.entry(token).or_insert(PendingIn {
            slot: None,
            msg: None,
            since_ms: now_ms,
        })
    }

    /// The fd of handoff `token` landed in fixed-file `slot`.
    pub(crate) fn fd_arrived(&mut self, token: u64, slot: u32, now_ms: u64) {
        self.pending(token, now_ms).slot = Some(slot);
    }

    /// The app state of handoff `token` arrived.
    pub(crate) fn state_arrived(&mut self, token: u64, msg: M, now_ms: u64) {
        self.pending(token, now_ms).msg = Some(msg);
    }

    /// Both halves of handoff `token`, once both are here (then forgotten).
    pub(crate) fn take_ready(&mut self, token: u64) -> Option<(u32, M)> {
        let ready = self
            .pending_in
            .get(&token)
            .is_some_and(|p| p.slot.is_some() && p.msg.is_some());
        if !ready {
            return None;
        }
        let p = self.pending_in.remove(&token).expect("checked above");
        Some((p.slot?, p.msg?))
    }

    /// The sender gave up on handoff `token`: forgets it, returning the
    /// slot to close if its fd came anyway.
    pub(crate) fn cancel_in(&mut self, token: u64) -> Option<u32> {
        self.pending_in.remove(&token)?.slot
    }

    /// Forgets every half older than `STALE_MS`, calling `dropped` with
    /// its token and the slot to close, if its fd had come.
    pub(crate) fn sweep_stale(&mut self, now_ms: u64, mut dropped: impl FnMut(u64, Option<u32>)) {
        if self.pending_in.is_empty() {
            return;
        }
        self.pending_in.retain(|&token, p| {
            let stale = now_ms.saturating_sub(p.since_ms) > STALE_MS;
            if stale {
                dropped(token, p.slot);
            }
            !stale
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_match_in_either_order() {
        let mut h = Handoffs::<&str>::new();
        h.fd_arrived(1, 10, 0);
        assert_eq!(h.take_ready(1), None, "the state is still on its way");
        h.state_arrived(1, "a", 5);
        assert_eq!(h.take_ready(1), Some((10, "a")));
        assert_eq!(h.take_ready(1), None, "taken once");

        h.state_arrived(2, "b", 0);
        assert_eq!(h.take_ready(2), None, "the fd is still on its way");
        h.fd_arrived(2, 11, 5);
        assert_eq!(h.take_ready(2), Some((11, "b")));
    }

    #[test]
    fn a_cancel_returns_the_slot_only_if_the_fd_came() {
        let mut h = Handoffs::<&str>::new();
        h.state_arrived(1, "a", 0);
        assert_eq!(h.cancel_in(1), None);
        h.fd_arrived(2, 12, 0);
        assert_eq!(h.cancel_in(2), Some(12));
        assert_eq!(h.cancel_in(2), None, "forgotten");
    }

    #[test]
    fn halves_older_than_the_bound_are_dropped() {
        let mut h = Handoffs::<&str>::new();
        h.fd_arrived(1, 10, 0);
        h.state_arrived(2, "b", 0);
        h.fd_arrived(3, 13, 5_000);
        let mut dropped = Vec::new();
        h.sweep_stale(STALE_MS, |t, s| dropped.push((t, s)));
        assert!(dropped.is_empty(), "not older than the bound yet");
        h.sweep_stale(STALE_MS + 1, |t, s| dropped.push((t, s)));
        dropped.sort();
        assert_eq!(dropped, vec![(1, Some(10)), (2, None)]);
        h.state_arrived(3, "c", STALE_MS + 1);
        assert_eq!(h.take_ready(3), Some((13, "c")), "the young one stays");
    }

    #[test]
    fn tokens_carry_the_shard_and_do_not_repeat() {
        let mut h = Handoffs::<()>::new();
        let a = h.next_token(3);
        let b = h.next_token(3);
        assert_ne!(a, b);
        assert_eq!(a >> SEQ_BITS, 3);
        let mut other = Handoffs::<()>::new();
        assert_ne!(
            other.next_token(4),
            a,
            "another shard's first token differs"
        );
    }

    #[test]
    fn outgoing_is_remembered_until_it_ends() {
        let mut h = Handoffs::<()>::new();
        let id = ConnId::for_tests(1, 1);
        h.start_out(id, 2, 77);
        assert_eq!(h.out_target(id), Some((2, 77)));
        assert_eq!(h.end_out(id), Some((2, 77)));
        assert_eq!(h.out_target(id), None);
    }
}
