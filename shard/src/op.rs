//! What a completion belongs to, packed into the 64-bit `user_data` of its
//! submission: a tag in the top byte, the rest is the tag's payload.
//!
//! Connection ops carry the slab index and a 24-bit generation, so a
//! completion that arrives after its connection was closed and its slot reused
//! is recognised as stale and ignored.

use crate::ConnId;

const TAG_SHIFT: u32 = 56;
const PAYLOAD_MASK: u64 = (1 << TAG_SHIFT) - 1;
pub(crate) const GEN_MASK: u32 = (1 << 24) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Tag {
    /// Multishot accept on listener `payload`.
    Accept = 1,
    Recv = 2,
    Send = 3,
    Shutdown = 4,
    Close = 5,
    /// Cancellations and other fire-and-forget ops whose result we do not need.
    Ignore = 6,
    /// Read of this shard's eventfd: another thread queued messages.
    Wake = 7,
    /// Our MsgRingSendFd completed: the fd now lives in the other ring.
    HandoffOut = 8,
    /// Posted into our ring by another shard's MsgRingSendFd: payload = token.
    HandoffIn = 9,
    /// Our FIXED_FD_INSTALL of an exported connection completed.
    Export = 10,
    /// Our FILES_UPDATE of an adopted descriptor completed: payload = token.
    Adopt = 11,
}

impl Tag {
    fn from_u8(v: u8) -> Option<Tag> {
        Some(match v {
            1 => Tag::Accept,
            2 => Tag::Recv,
            3 => Tag::Send,
            4 => Tag::Shutdown,
            5 => Tag::Close,
            6 => Tag::Ignore,
            7 => Tag::Wake,
            8 => Tag::HandoffOut,
            9 => Tag::HandoffIn,
            10 => Tag::Export,
            11 => Tag::Adopt,
            _ => return None,
        })
    }
}

pub(crate) fn encode(tag: Tag, payload: u64) -> u64 {
    debug_assert!(payload <= PAYLOAD_MASK);
    ((tag as u64) << TAG_SHIFT) | (payload & PAYLOAD_MASK)
}

pub(crate) fn encode_conn(tag: Tag, conn: ConnId) -> u64 {
    encode(
        tag,
        ((conn.gen.get() & GEN_MASK) as u64) << 32 | conn.index as u64,
    )
}

pub(crate) fn decode(user_data: u64) -> Option<(Tag, u64)> {
    Tag::from_u8((user_data >> TAG_SHIFT) as u8).map(|t| (t, user_data & PAYLOAD_MASK))
}

pub(crate) fn decode_conn(payload: u64) -> ConnId {
    ConnId::new(payload as u32, (payload >> 32) as u32 & GEN_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_ops_round_trip() {
        let conn = ConnId::new(u32::MAX - 3, GEN_MASK);
        for tag in [Tag::Recv, Tag::Send, Tag::Close, Tag::Shutdown] {
            let (t, p) = decode(encode_conn(tag, conn)).unwrap();
            assert_eq!(t, tag);
            assert_eq!(decode_conn(p), conn);
        }
        assert_eq!(decode(0), None);
    }
}
