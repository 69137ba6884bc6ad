//! Arbitrary bytes into a client's FrameReader (the reader of unmasked
//! server frames), whole and split at an arbitrary point: no panic, and both
//! runs give the same events and result.
//!
//! The first two bytes of the input pick the split point and the limits; the
//! rest is the stream. The body is in `../bodies.rs`, shared with the stable
//! smoke fuzzer (`tests/fuzz_smoke.rs`).

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bodies::client_frame_reader(data);
});
