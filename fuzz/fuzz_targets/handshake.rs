//! Arbitrary bytes as an upgrade request: parsing, validating and building
//! the responses must not panic, and a request parsed from a prefix must be
//! the one parsed from the whole. The body is in `../bodies.rs`, shared with
//! the stable smoke fuzzer (`tests/fuzz_smoke.rs`).

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bodies::handshake(data);
});
