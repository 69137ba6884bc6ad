//! The bytes an attacker controls after the TLS handshake: a record stream
//! (valid records of fixed test keys among garbage) opened by the shard's
//! record layer whole, split and byte by byte must not panic, must hold at
//! most one record between receives, must refuse garbage with an error,
//! and the runs must agree. The body is in `../bodies.rs`, shared with the
//! stable smoke fuzzer (`tests/fuzz_smoke.rs`).

#![no_main]

#[path = "../bodies.rs"]
mod bodies;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bodies::tls_records(data);
});
