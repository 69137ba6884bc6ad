//! Arbitrary bytes as what a client sends before its TLS handshake ends:
//! the shard's handshake (rustls behind it) must end in an alert, the
//! plain-HTTP 400 or a close, never a panic, within its input bound, and
//! whole and split runs must end the same way. The body is in
//! `../bodies.rs`, shared with the stable smoke fuzzer
//! (`tests/fuzz_smoke.rs`).

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bodies::tls_handshake(data);
});
