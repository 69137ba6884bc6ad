//! A push's compressed form for devices that negotiated permessage-deflate:
//! the shard's one compressor (no context takeover, so one serves every
//! connection), and the threshold under which a message goes plain.
//!
//! A push is compressed at most once per fan-out on a shard, and only if
//! some recipient negotiated deflate ([`Deflated`]); a replay compresses
//! each message it sends (replays are rare, and keeping a compressed copy
//! in every mailbox entry would cost memory for all of them).

use super::home::StoredPush;
use crate::ws::deflate::Deflater;
use crate::ws::frame::{parse_header, Role};
use bytes::Bytes;

pub struct PushDeflater {
    /// Made by the first push compressed on the shard: a shard on which no
    /// device negotiated deflate never holds one.
    deflater: Option<Deflater>,
    threshold_bytes: usize,
}

impl PushDeflater {
    pub fn new(threshold_bytes: usize) -> PushDeflater {
        PushDeflater {
            deflater: None,
            threshold_bytes,
        }
    }

    /// The push as one compressed frame, or `None` when it should go plain:
    /// its message is under the threshold, or compressing did not make it
    /// smaller.
    pub fn frame(&mut self, push: &StoredPush) -> Option<Bytes> {
        let parts = push.parts();
        // `head` is the frame header and the message's first bytes.
        let (_, header_bytes) = parse_header(&parts[0], Role::Client).ok()??;
        let prefix = &parts[0][header_bytes..];
        let message_bytes = prefix.len() + parts[1].len() + parts[2].len();
        if message_bytes < self.threshold_bytes {
            return None;
        }
        let frame = self
            .deflater
            .get_or_insert_with(Deflater::default)
            .text_frame(&[prefix, &parts[1], &parts[2]]);
        (frame.len() < push.wire_bytes()).then(|| Bytes::from(frame))
    }
}

/// One push's compressed frame on one shard, built by the first recipient
/// that wants it and shared by the others.
#[derive(Default)]
pub struct Deflated(Option<Option<Bytes>>);

impl Deflated {
    pub fn get(&mut self, deflater: &mut PushDeflater, push: &StoredPush) -> Option<Bytes> {
        self.0.get_or_insert_with(|| deflater.frame(push)).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::deflate::Inflater;
    use crate::ws::frame::{parse_header_allowing, RSV1};
    use std::cell::Cell;
    use std::rc::Rc;

    fn push(payload: &str) -> StoredPush {
        StoredPush::new(9, 0, Bytes::from(payload.to_owned()), Rc::new(Cell::new(0)))
    }

    fn plain_message(p: &StoredPush) -> Vec<u8> {
        let wire: Vec<u8> = p.parts().iter().flat_map(|b| b.to_vec()).collect();
        let (_, n) = parse_header(&wire, Role::Client).unwrap().unwrap();
        wire[n..].to_vec()
    }

    #[test]
    fn a_push_over_the_threshold_is_one_compressed_frame_of_the_same_message() {
        let data = format!("[{}]", r#"{"k":"value","n":12345},"#.repeat(80) + "0");
        let p = push(&data);
        let frame = PushDeflater::new(1024).frame(&p).expect("compressed");
        assert!(
            frame.len() < p.wire_bytes() / 3,
            "{} vs {}",
            frame.len(),
            p.wire_bytes()
        );
        let (header, n) = parse_header_allowing(&frame, Role::Client, RSV1)
            .unwrap()
            .unwrap();
        assert_eq!(header.rsv, RSV1);
        let mut message = Vec::new();
        Inflater::default()
            .inflate(&frame[n..], 1 << 20, |c| {
                message.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
        assert_eq!(message, plain_message(&p));
    }

    #[test]
    fn small_pushes_go_plain() {
        let mut deflater = PushDeflater::new(1024);
        assert_eq!(deflater.frame(&push(r#"{"x":1}"#)), None);
        assert!(deflater.deflater.is_none(), "nothing made for a small push");
        // Threshold 0 compresses everything that shrinks.
        let long = format!("\"{}\"", "a".repeat(200));
        assert!(PushDeflater::new(0).frame(&push(&long)).is_some());
    }

    #[test]
    fn a_fanout_compresses_once() {
        let mut deflater = PushDeflater::new(0);
        let p = push(&format!("\"{}\"", "a".repeat(2000)));
        let mut deflated = Deflated::default();
        let a = deflated.get(&mut deflater, &p).unwrap();
        let b = deflated.get(&mut deflater, &p).unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "one frame for every recipient");
    }
}
