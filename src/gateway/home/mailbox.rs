//! A user's recent notifications, kept so a device that reconnects with
//! `since` gets what it missed. Pure: pushes and `now` in, pushes out.
//!
//! A stored push is shared (`Rc`) by every recipient on the shard, so a
//! mailbox entry costs one pointer per user; the payload bytes are shared by
//! every recipient on every shard.

use bytes::Bytes;
use std::cell::{Cell, OnceCell};
use std::collections::VecDeque;
use std::rc::Rc;

/// One push as sent on this shard: `head` (WebSocket header and the
/// `{"type":"push","seq":N,"data":` prefix) + `payload` + `}`.
pub struct StoredPush {
    pub seq: u64,
    pub stored_at_ms: u64,
    pub head: Bytes,
    pub payload: Bytes,
    /// The same push as a Server-Sent Event (`crate::sse::push_event`),
    /// built by the first SSE recipient and shared by the others; never
    /// built on a shard without SSE devices.
    sse: OnceCell<Bytes>,
    /// The shard's count of stored bytes: this push adds its wire size on
    /// creation and takes it back when the last mailbox lets it go.
    ledger: Rc<Cell<u64>>,
}

impl Drop for StoredPush {
    fn drop(&mut self) {
        let sse_bytes = self.sse.get().map_or(0, Bytes::len);
        self.ledger
            .set(self.ledger.get() - (self.wire_bytes() + sse_bytes) as u64);
    }
}

pub type SharedPush = Rc<StoredPush>;

/// The closing brace after the payload.
pub const PUSH_TAIL: Bytes = Bytes::from_static(b"}");

impl StoredPush {
    /// Builds the frame once for every recipient on this shard and counts
    /// its bytes in `ledger` while it lives.
    pub fn new(seq: u64, stored_at_ms: u64, payload: Bytes, ledger: Rc<Cell<u64>>) -> StoredPush {
        let prefix = format!(r#"{{"type":"push","seq":{seq},"data":"#);
        let body_len = prefix.len() + payload.len() + PUSH_TAIL.len();
        let mut header = [0u8; 10];
        let header_len = crate::ws::writer::text_header(body_len as u64, &mut header);
        let mut head = Vec::with_capacity(header_len + prefix.len());
        head.extend_from_slice(&header[..header_len]);
        head.extend_from_slice(prefix.as_bytes());
        let push = StoredPush {
            seq,
            stored_at_ms,
            head: Bytes::from(head),
            payload,
            sse: OnceCell::new(),
            ledger,
        };
        push.ledger
            .set(push.ledger.get() + push.wire_bytes() as u64);
        push
    }

    /// The chunks to queue on a connection, in order.
    pub fn parts(&self) -> [Bytes; 3] {
        [self.head.clone(), self.payload.clone(), PUSH_TAIL]
    }

    /// The push as a Server-Sent Event of this shard's `epoch` (the same on
    /// every call): built once, then shared. Its bytes count as stored
    /// while the push lives.
    pub fn sse_event(&self, epoch: u64) -> Bytes {
        self.sse
            .get_or_init(|| {
                let event = crate::sse::push_event(epoch, self.seq, &self.payload);
                self.ledger.set(self.ledger.get() + event.len() as u64);
                Bytes::from(event)
            })
            .clone()
    }

    pub fn wire_bytes(&self) -> usize {
        self.head.len() + self.payload.len() + PUSH_TAIL.len()
    }
}

#[derive(Default)]
pub struct Mailbox {
    entries: VecDeque<SharedPush>,
}

impl Mailbox {
    /// Stores a push; if that makes more than `entries_max`, the oldest is
    /// dropped and its seq returned (it can no longer be replayed).
    pub fn store(&mut self, push: SharedPush, entries_max: usize) -> Option<u64> {
        self.entries.push_back(push);
        if self.entries.len() > entries_max {
            return self.entries.pop_front().map(|p| p.seq);
        }
        None
    }

    /// Puts `older` (oldest first, every seq below this mailbox's) before
    /// the entries here: a predecessor's mailbox after a live upgrade.
    pub fn prepend(&mut self, older: Vec<SharedPush>) {
        debug_assert!(older.windows(2).all(|w| w[0].seq < w[1].seq));
        debug_assert!(older
            .last()
            .zip(self.entries.front())
            .is_none_or(|(a, b)| a.seq < b.seq));
        for push in older.into_iter().rev() {
            self.entries.push_front(push);
        }
    }

    /// Drops `push` if it is the oldest entry (expiry runs oldest first);
    /// returns its seq if dropped.
    pub fn expire(&mut self, push: &SharedPush) -> Option<u64> {
        if self.entries.front().is_some_and(|p| Rc::ptr_eq(p, push)) {
            return self.entries.pop_front().map(|p| p.seq);
        }
        None
    }

    /// Entries with seq greater than `seq`, oldest first.
    pub fn after(&self, seq: u64) -> impl Iterator<Item = &SharedPush> {
        let start = self.entries.partition_point(|p| p.seq <= seq);
        self.entries.range(start..)
    }

    pub fn oldest(&self) -> Option<&SharedPush> {
        self.entries.front()
    }

    pub fn last_seq(&self) -> Option<u64> {
        self.entries.back().map(|p| p.seq)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Entries after `seq` of two mailboxes (a user's and the shard's
/// broadcasts), merged in seq order. Seqs come from one counter per shard,
/// so the two never share a seq.
pub fn merged_after<'a>(
    a: Option<&'a Mailbox>,
    b: &'a Mailbox,
    seq: u64,
) -> impl Iterator<Item = &'a SharedPush> {
    let mut a = a.into_iter().flat_map(move |m| m.after(seq)).peekable();
    let mut b = b.after(seq).peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x.seq < y.seq => a.next(),
        (Some(_), Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(seq: u64) -> SharedPush {
        Rc::new(StoredPush::new(
            seq,
            seq * 10,
            Bytes::from_static(b"{\"x\":1}"),
            Rc::default(),
        ))
    }

    #[test]
    fn stored_bytes_are_counted_while_a_push_lives() {
        let ledger = Rc::new(Cell::new(0));
        let a = Rc::new(StoredPush::new(
            1,
            0,
            Bytes::from_static(b"1"),
            ledger.clone(),
        ));
        let b = Rc::new(StoredPush::new(
            2,
            0,
            Bytes::from_static(b"22"),
            ledger.clone(),
        ));
        assert_eq!(ledger.get() as usize, a.wire_bytes() + b.wire_bytes());
        let shared = a.clone();
        drop(a);
        assert_eq!(ledger.get() as usize, shared.wire_bytes() + b.wire_bytes());
        drop((shared, b));
        assert_eq!(ledger.get(), 0);
    }

    #[test]
    fn sse_event_is_built_once_shared_and_counted() {
        let ledger = Rc::new(Cell::new(0));
        let p = StoredPush::new(7, 0, Bytes::from_static(b"[1,\n2]"), ledger.clone());
        let ws_only = ledger.get();
        let a = p.sse_event(77);
        let b = p.sse_event(77);
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "one allocation for every SSE recipient"
        );
        assert_eq!(&a[..], &crate::sse::push_event(77, 7, b"[1,\n2]")[..]);
        assert_eq!(ledger.get(), ws_only + a.len() as u64);
        drop(p);
        assert_eq!(ledger.get(), 0);
    }

    #[test]
    fn stored_push_stays_small() {
        // It lives once per push per shard; the SSE cell adds one `Bytes`.
        assert!(std::mem::size_of::<StoredPush>() <= 128);
    }

    #[test]
    fn frame_is_the_documented_json() {
        let p = push(42);
        let mut wire = Vec::new();
        for part in p.parts() {
            wire.extend_from_slice(&part);
        }
        assert_eq!(wire[0], 0x81, "final text frame");
        let body = &wire[2..];
        assert_eq!(wire[1] as usize, body.len());
        assert_eq!(body, br#"{"type":"push","seq":42,"data":{"x":1}}"#);
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["seq"], 42);
        assert_eq!(p.wire_bytes(), wire.len());
    }

    #[test]
    fn bounded_by_count_and_replays_after_a_seq() {
        let mut m = Mailbox::default();
        for seq in [3, 5, 8] {
            assert_eq!(m.store(push(seq), 3), None);
        }
        assert_eq!(m.store(push(9), 3), Some(3));
        let after: Vec<u64> = m.after(5).map(|p| p.seq).collect();
        assert_eq!(after, vec![8, 9]);
        assert_eq!(m.after(0).count(), 3);
        assert_eq!(m.after(9).count(), 0);
        assert_eq!(m.last_seq(), Some(9));
    }

    #[test]
    fn merge_interleaves_by_seq() {
        let (mut user, mut shard) = (Mailbox::default(), Mailbox::default());
        for seq in [2, 5, 6] {
            user.store(push(seq), 8);
        }
        for seq in [1, 3, 4, 7] {
            shard.store(push(seq), 8);
        }
        let seqs = |after| {
            merged_after(Some(&user), &shard, after)
                .map(|p| p.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(0), vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(seqs(4), vec![5, 6, 7]);
        assert_eq!(
            merged_after(None, &shard, 2)
                .map(|p| p.seq)
                .collect::<Vec<_>>(),
            vec![3, 4, 7]
        );
    }

    #[test]
    fn expiry_only_takes_the_matching_oldest() {
        let mut m = Mailbox::default();
        let (a, b) = (push(1), push(2));
        m.store(a.clone(), 8);
        m.store(b.clone(), 8);
        assert_eq!(m.expire(&b), None, "not the oldest");
        assert_eq!(m.expire(&a), Some(1));
        assert_eq!(m.expire(&b), Some(2));
        assert!(m.is_empty());
    }
}
