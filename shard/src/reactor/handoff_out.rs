//! A connection leaving for another shard: its app state goes ahead over
//! the mesh, its descriptor follows with MsgRingSendFd once nothing is
//! queued; halves that never met are swept.

use super::Reactor;
use crate::conn::*;
use crate::mesh::Envelope;
use crate::op::{self, Tag};
use crate::ConnId;
use io_uring::{opcode, types};

impl<M> Reactor<M> {
    /// Starts moving `id` to shard `to`. The app state already went ahead
    /// (Envelope::Handoff); the fd follows when the send queue is empty.
    pub(crate) fn start_handoff(&mut self, id: ConnId, to: usize, msg: M) -> Result<(), M> {
        let Ok(tls) = self.tls.take_for_handoff(id) else {
            return Err(msg); // still handshaking: cannot move
        };
        let token = self.handoffs.next_token(self.shard_id);
        if let Err(envelope) = self.mesh.send(to, Envelope::Handoff { token, msg, tls }) {
            match envelope {
                Envelope::Handoff { msg, tls, .. } => {
                    self.tls.put_back(id, tls);
                    return Err(msg);
                }
                _ => unreachable!("sent a Handoff"),
            }
        }
        let conn = self.conn_mut(id).expect("caller checked the connection");
        conn.phase = Phase::HandingOff;
        conn.timer.deadline_tick = 0;
        conn.clear(WANT_DRAINED);
        let idle = conn.queued_bytes() == 0 && !conn.has(SEND_IN_FLIGHT);
        self.handoffs.start_out(id, to, token);
        if idle {
            self.submit_handoff(id);
        }
        Ok(())
    }

    pub(super) fn submit_handoff(&mut self, id: ConnId) {
        let Some((to, token)) = self.handoffs.out_target(id) else {
            return;
        };
        let ring_fd = self.mesh.peers[to].ring_fd;
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.phase = Phase::HandedOff;
        conn.set(HANDOFF_IN_FLIGHT);
        let entry = opcode::MsgRingSendFd::new(
            types::Fd(ring_fd),
            types::Fixed(conn.slot),
            types::DestinationSlot::auto_target(),
            op::encode(Tag::HandoffIn, token),
        )
        .build()
        .user_data(op::encode_conn(Tag::HandoffOut, id));
        self.ring.push(entry);
    }

    /// Closes a fixed slot that belongs to no connection (e.g. a handed-in
    /// fd whose state never came).
    pub(super) fn close_slot(&mut self, slot: u32) {
        let entry = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(op::encode(Tag::Ignore, 0));
        self.ring.push(entry);
    }

    /// Drops handed-in halves whose other half never came (closing the
    /// fd of those whose fd came).
    pub(crate) fn sweep_stale_handoffs(&mut self) {
        let mut slots = Vec::new();
        self.handoffs.sweep_stale(self.now_ms, |token, slot| {
            tracing::warn!(token, "handed-in connection incomplete after 10 s; dropped");
            slots.extend(slot);
        });
        for slot in slots {
            self.close_slot(slot);
        }
    }
}
