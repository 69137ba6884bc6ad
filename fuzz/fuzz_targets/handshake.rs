//! Arbitrary bytes as an upgrade request: parsing, validating and building
//! the responses must not panic, and a request parsed from a prefix must be
//! the one parsed from the whole.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pushgate::ws::{parse_request, query_param, response_101, validate_upgrade, HandshakeLimits};

fuzz_target!(|data: &[u8]| {
    let limits = HandshakeLimits {
        header_bytes_max: 1024,
        headers_max: 16,
    };
    let Ok(Some((request, consumed))) = parse_request(data, &limits) else {
        if let Err(error) = parse_request(data, &limits) {
            assert!(matches!(error.http_status(), 400 | 431));
            let _response = error.response();
        }
        return;
    };
    assert!(consumed <= data.len() && consumed <= limits.header_bytes_max);
    // The head alone parses to the same request: bytes after it do not matter.
    let again = parse_request(&data[..consumed], &limits);
    assert_eq!(again, Ok(Some((request.clone(), consumed))));
    let _ = query_param(&request.query, "token");
    let _ = query_param(&request.query, "since");
    match validate_upgrade(&request) {
        Ok(accept) => {
            let _response = response_101(&accept, request.ws_protocols.first().map(String::as_str));
        }
        Err(error) => {
            let _response = error.response();
        }
    }
});
