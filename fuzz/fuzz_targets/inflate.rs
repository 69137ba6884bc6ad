//! Arbitrary bytes on a connection that negotiated permessage-deflate: the
//! frame reader with the shard's inflater (whole and split), and the bytes
//! inflated as one compressed message under a bound (never past it; what
//! inflates survives a round trip).
//!
//! The first two bytes of the input pick the split point and the limits; the
//! rest is the stream. The body is in `../bodies.rs`, shared with the stable
//! smoke fuzzer (`tests/fuzz_smoke.rs`).

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bodies::inflate(data);
});
