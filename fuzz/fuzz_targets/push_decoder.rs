//! Arbitrary bytes as a push-socket stream (`pushgate::push::wire`): the
//! FrameSplitter fed whole, split at an arbitrary point and byte by byte
//! gives the same bodies and error; `decode_request` / `decode_reply` never
//! panic, and what decodes round-trips.
//!
//! The first two bytes of the input pick the split point and the frame
//! limit; the rest is the stream. The body is in `../bodies.rs`, shared with
//! the stable smoke fuzzer (`tests/fuzz_smoke.rs`).

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bodies::push_decoder(data);
});
