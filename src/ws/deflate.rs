//! permessage-deflate's codec (RFC 7692 §7.2), without context takeover:
//! one [`Deflater`] and one [`Inflater`] per shard, reset for every
//! message, so no connection holds a compression context (a context that
//! survives messages is hundreds of KB; a million of them is out of the
//! question).
//!
//! A message is compressed as raw DEFLATE ending in an empty stored block
//! (a sync flush), whose `00 00 ff ff` tail is left off the wire (§7.2.1);
//! the receiver puts it back before inflating (§7.2.2). Inflating is
//! bounded: the caller's `bytes_max` is checked as output comes, and no more
//! than `bytes_max + 1` bytes are ever produced, so a zip bomb costs the
//! bytes it arrived in, never its inflated size.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{encode_header, Opcode, RSV1};
use super::{CloseCode, ProtocolError};

/// The tail of a sync flush, stripped by the sender (§7.2.1).
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Inflated bytes handed out at a time: the inflater's one buffer.
pub const INFLATE_CHUNK_BYTES: usize = 16 * 1024;

/// The inflated message is over the limit (checked while inflating).
pub const INFLATED_TOO_BIG: ProtocolError = ProtocolError {
    code: CloseCode::TOO_BIG,
    reason: "message too big once inflated",
};

/// The compressed bytes are not DEFLATE.
pub const NOT_DEFLATE: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "compressed message is not valid DEFLATE data",
};

/// Compresses whole messages, each on its own (no context takeover).
pub struct Deflater {
    state: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        // Level 6 (zlib's default): a push is compressed once for all its
        // recipients, so the time spent is small next to the sends.
        Self {
            state: Compress::new(Compression::default(), false),
        }
    }
}

impl Deflater {
    /// Appends the compressed form of the message `parts` (concatenated) to
    /// `out`, as it goes on the wire: raw DEFLATE, tail stripped.
    pub fn compress(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) {
        self.state.reset();
        let start = out.len();
        for (index, part) in parts.iter().enumerate() {
            let last = index + 1 == parts.len();
            let flush = if last {
                FlushCompress::Sync
            } else {
                FlushCompress::None
            };
            let mut input = *part;
            // Each round either takes input or fills the room it was given
            // (at least 64 bytes); the output of `n` bytes is at most
            // `n + 5 bytes per stored block + the flush`, so this ends.
            loop {
                out.reserve(input.len() / 2 + 64);
                let taken_before = self.state.total_in();
                self.state
                    .compress_vec(input, out, flush)
                    .expect("raw DEFLATE into memory cannot fail");
                let taken = (self.state.total_in() - taken_before) as usize;
                input = &input[taken..];
                // Done with the part once it is all taken and, for the
                // last, the flush has finished (it left room unused).
                if input.is_empty() && (!last || out.len() < out.capacity()) {
                    break;
                }
            }
        }
        if parts.is_empty() {
            self.state
                .compress_vec(&[], out, FlushCompress::Sync)
                .expect("raw DEFLATE into memory cannot fail");
        }
        if out[start..].ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
    }
}

impl Deflater {
    /// The text message `parts` (concatenated) as one compressed frame,
    /// ready to send: FIN, RSV1 (§6: set on a compressed message's first
    /// frame), text, the compressed payload.
    pub fn text_frame(&mut self, parts: &[&[u8]]) -> Vec<u8> {
        let mut payload = Vec::new();
        self.compress(parts, &mut payload);
        let mut header = [0u8; 10];
        let header_len = encode_header(true, Opcode::Text, payload.len() as u64, &mut header);
        header[0] |= RSV1 << 4;
        let mut frame = Vec::with_capacity(header_len + payload.len());
        frame.extend_from_slice(&header[..header_len]);
        frame.extend_from_slice(&payload);
        frame
    }
}

/// Inflates whole messages, each on its own, within a size bound.
pub struct Inflater {
    state: Decompress,
    chunk: Box<[u8]>,
}

impl Default for Inflater {
    fn default() -> Self {
        Self {
            state: Decompress::new(false),
            chunk: vec![0; INFLATE_CHUNK_BYTES].into_boxed_slice(),
        }
    }
}

impl Inflater {
    /// Inflates one message's compressed bytes (all its frames' payloads
    /// together, tail stripped), handing the output to `on_chunk` in
    /// pieces of at most [`INFLATE_CHUNK_BYTES`]; returns its inflated size.
    ///
    /// [`INFLATED_TOO_BIG`] (1009) as soon as the output passes
    /// `bytes_max`; [`NOT_DEFLATE`] (1007) for bytes that are not DEFLATE;
    /// `on_chunk`'s own error stops inflating and is returned.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        bytes_max: u64,
        mut on_chunk: impl FnMut(&[u8]) -> Result<(), ProtocolError>,
    ) -> Result<u64, ProtocolError> {
        self.state.reset(false);
        let mut produced: u64 = 0;
        for mut input in [compressed, &SYNC_TAIL[..]] {
            // Each round takes input or writes output, and both are bounded
            // (the input's length, `bytes_max + 1`), so this ends.
            loop {
                // Never inflate past one byte over the bound.
                let room = (bytes_max - produced + 1).min(INFLATE_CHUNK_BYTES as u64) as usize;
                let (in_before, out_before) = (self.state.total_in(), self.state.total_out());
                let status = self
                    .state
                    .decompress(input, &mut self.chunk[..room], FlushDecompress::Sync)
                    .map_err(|_| NOT_DEFLATE)?;
                let taken = (self.state.total_in() - in_before) as usize;
                let written = (self.state.total_out() - out_before) as usize;
                input = &input[taken..];
                produced += written as u64;
                if produced > bytes_max {
                    return Err(INFLATED_TOO_BIG);
                }
                if written > 0 {
                    on_chunk(&self.chunk[..written])?;
                }
                if status == Status::StreamEnd {
                    // A final block (BFINAL) ends the message (§7.2.3.4
                    // allows one); the tail we appended is not needed.
                    return Ok(produced);
                }
                if written < room && (input.is_empty() || taken == 0) {
                    break; // all taken that can be, all written out
                }
            }
        }
        Ok(produced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflate(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Deflater::default().compress(&[message], &mut out);
        out
    }

    fn inflate(compressed: &[u8], bytes_max: u64) -> Result<Vec<u8>, ProtocolError> {
        let mut out = Vec::new();
        let n = Inflater::default().inflate(compressed, bytes_max, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        assert_eq!(n as usize, out.len());
        Ok(out)
    }

    fn json(bytes: usize) -> Vec<u8> {
        let mut s = String::from("[");
        let mut i = 0;
        while s.len() < bytes {
            s.push_str(&format!(r#"{{"id":{i},"name":"user-{i}","online":true}},"#));
            i += 1;
        }
        s.push_str("0]");
        s.into_bytes()
    }

    #[test]
    fn rfc_7692_example_hello() {
        // §7.2.3.1: "Hello" compressed without context takeover.
        let wire = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&wire, 100).unwrap(), b"Hello");
        // §7.2.3.3: the same in a stored (uncompressed) block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate(&stored, 100).unwrap(), b"Hello");
        // §7.2.3.4: with BFINAL set, and the tail then dropped.
        let final_block = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&final_block, 100).unwrap(), b"Hello");
    }

    #[test]
    fn compressed_messages_round_trip_with_the_tail_stripped() {
        let mut deflater = Deflater::default();
        for message in [&b""[..], b"a", b"Hello", &json(2048), &json(100_000)] {
            let mut out = Vec::new();
            deflater.compress(&[message], &mut out);
            assert!(!out.ends_with(&SYNC_TAIL), "tail stripped");
            assert_eq!(inflate(&out, 1 << 20).unwrap(), message);
        }
        let big = json(2048);
        assert!(deflate(&big).len() < big.len() / 3, "JSON compresses well");
    }

    #[test]
    fn a_text_frame_has_rsv1_and_its_length() {
        let body = json(2048);
        let frame = Deflater::default().text_frame(&[&body]);
        let (header, header_bytes) =
            crate::ws::frame::parse_header_allowing(&frame, crate::ws::Role::Client, RSV1)
                .unwrap()
                .unwrap();
        assert!(header.fin && header.rsv == RSV1 && header.opcode == Opcode::Text);
        assert_eq!(header.payload_len as usize, frame.len() - header_bytes);
        assert_eq!(inflate(&frame[header_bytes..], 1 << 20).unwrap(), body);
    }

    #[test]
    fn a_message_in_parts_compresses_as_one() {
        let body = json(3000);
        let mut out = Vec::new();
        let (a, rest) = body.split_at(17);
        let (b, c) = rest.split_at(1000);
        Deflater::default().compress(&[a, b, c], &mut out);
        assert_eq!(inflate(&out, 1 << 20).unwrap(), body);
        assert_eq!(out, deflate(&body), "the same bytes as compressed whole");
    }

    #[test]
    fn each_message_is_compressed_and_inflated_on_its_own() {
        // No context takeover: the second message does not refer to the
        // first, so it inflates alone, and a reused inflater is clean.
        let mut deflater = Deflater::default();
        let mut inflater = Inflater::default();
        let body = json(4000);
        let (mut first, mut second) = (Vec::new(), Vec::new());
        deflater.compress(&[&body], &mut first);
        deflater.compress(&[&body], &mut second);
        assert_eq!(first, second);
        for wire in [&first, &second] {
            let mut out = Vec::new();
            inflater
                .inflate(wire, 1 << 20, |c| {
                    out.extend_from_slice(c);
                    Ok(())
                })
                .unwrap();
            assert_eq!(out, body);
        }
    }

    #[test]
    fn the_bound_is_checked_while_inflating() {
        let bomb = deflate(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 20_000, "10 MiB of zeros is a small message");
        let mut handed_out = 0usize;
        let result = Inflater::default().inflate(&bomb, 65_536, |chunk| {
            handed_out += chunk.len();
            Ok(())
        });
        assert_eq!(result, Err(INFLATED_TOO_BIG));
        assert!(handed_out <= 65_536, "never past the bound: {handed_out}");
        // Exactly at the bound is fine; one byte over is not.
        let exact = deflate(&vec![7u8; 1000]);
        assert_eq!(inflate(&exact, 1000).unwrap().len(), 1000);
        assert_eq!(inflate(&exact, 999), Err(INFLATED_TOO_BIG));
        assert_eq!(inflate(&deflate(b""), 0).unwrap(), b"");
    }

    #[test]
    fn bad_data_is_1007_and_the_inflater_recovers() {
        let mut inflater = Inflater::default();
        // BTYPE 11 is reserved.
        let bad = [0xff, 0xff, 0xff];
        assert_eq!(inflater.inflate(&bad, 100, |_| Ok(())), Err(NOT_DEFLATE));
        let mut out = Vec::new();
        inflater
            .inflate(&deflate(b"after"), 100, |c| {
                out.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
        assert_eq!(out, b"after");
    }

    #[test]
    fn the_callers_error_stops_inflating() {
        let stop = ProtocolError::protocol("stop");
        let body = json(100_000);
        let mut calls = 0;
        let result = Inflater::default().inflate(&deflate(&body), 1 << 20, |_| {
            calls += 1;
            Err(stop)
        });
        assert_eq!((result, calls), (Err(stop), 1));
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let wire = deflate(&json(5000));
        for end in 0..=wire.len() {
            let _ = inflate(&wire[..end], 1 << 20);
        }
        let mut x = 0x2545_f491_u32;
        for _ in 0..200 {
            let junk: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = inflate(&junk, 4096);
        }
    }
}
