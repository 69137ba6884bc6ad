//! The cargo-fuzz targets' bodies (`fuzz/bodies.rs`) run on stable under
//! `cargo test`, so CI fuzzes something on every run even without nightly
//! or libFuzzer.
//!
//! Inputs come from a deterministic PRNG (xorshift64*, seeded; no crates):
//! some are random bytes, most are structured mutations of valid inputs —
//! WebSocket frame streams, upgrade requests, push-socket frames — with bits
//! flipped, boundary values written, bytes truncated, duplicated, deleted,
//! inserted or spliced from another valid input. About 70,000 inputs per
//! target by default.
//!
//! Knobs (environment):
//! - `FUZZ_SMOKE_ITERATIONS`: inputs per target (default 70,000).
//! - `FUZZ_SMOKE_SECONDS`: run each target for this long instead (what
//!   `scripts/fuzz.sh` uses when nightly or cargo-fuzz is missing).
//! - `FUZZ_SMOKE_SEED`: PRNG seed (default fixed, so CI is reproducible).
//! - `FUZZ_SEED_DIR` with `--ignored write_seed_corpus`: write the valid
//!   inputs as seed corpora for cargo-fuzz (`<dir>/<target>/seed-N`).
//!
//! A failing input is written to `$CARGO_TARGET_TMPDIR/fuzz-smoke-<target>.bin`
//! and its path printed; replay it with `cargo +nightly fuzz run <target> <file>`.

#[path = "../fuzz/bodies.rs"]
mod bodies;
mod common;

use common::client_frame as frame;
use pushgate::push::wire::{self, Reply, Request, ShardStatus};
use pushgate::ws::deflate::Deflater;
use pushgate::ws::{self, CloseCode, Opcode};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

const ITERATIONS_DEFAULT: u64 = 70_000;
const SEED_DEFAULT: u64 = 0x9e37_79b9_7f4a_7c15;
/// Inputs longer than this are cut, to keep each run short.
const INPUT_BYTES_MAX: usize = 4096;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number")))
}

/// Values that sit on a boundary somewhere: lengths 125/126/127, 2^16,
/// 2^31, 2^63, all-ones.
const INTERESTING_U64: [u64; 14] = [
    0,
    1,
    0x7d,
    0x7e,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 62,
    1 << 63,
    u64::MAX,
];

/// One to four structured mutations of `input`; `others` are spliced from.
fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(11) {
            // Flip one bit.
            0 if len > 0 => {
                let at = rng.below(len);
                out[at] ^= 1 << rng.below(8);
            }
            // A boundary byte.
            1 if len > 0 => {
                let at = rng.below(len);
                out[at] = INTERESTING_U64[rng.below(INTERESTING_U64.len())] as u8;
            }
            // Truncate.
            2 => out.truncate(rng.below(len + 1)),
            // Duplicate a slice in place.
            3 if len > 0 => {
                let start = rng.below(len);
                let end = start + 1 + rng.below(len - start);
                let copy = out[start..end].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, copy);
            }
            // Delete a slice.
            4 if len > 0 => {
                let start = rng.below(len);
                let end = start + 1 + rng.below((len - start).min(16));
                out.drain(start..end);
            }
            // Insert random bytes.
            5 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes = rng.bytes(n);
                out.splice(at..at, bytes);
            }
            // A boundary integer, 2, 4 or 8 bytes, either byte order.
            6 => {
                let width = [2, 4, 8][rng.below(3)];
                if len >= width {
                    let at = rng.below(len - width + 1);
                    let value = INTERESTING_U64[rng.below(INTERESTING_U64.len())];
                    let bytes = if rng.below(2) == 0 {
                        value.to_le_bytes()
                    } else {
                        value.to_be_bytes()
                    };
                    let bytes = if bytes[0] == 0 && width < 8 && rng.below(2) == 0 {
                        &bytes[8 - width..]
                    } else {
                        &bytes[..width]
                    };
                    out[at..at + width].copy_from_slice(bytes);
                }
            }
            // Splice: our head, another input's tail.
            7 if !others.is_empty() => {
                let other = &others[rng.below(others.len())];
                out.truncate(rng.below(len + 1));
                let from = rng.below(other.len() + 1);
                out.extend_from_slice(&other[from..]);
            }
            // The whole input twice.
            8 => out.extend_from_within(..),
            // Swap two bytes.
            9 if len > 1 => {
                let (a, b) = (rng.below(len), rng.below(len));
                out.swap(a, b);
            }
            // A random byte anywhere.
            _ if len > 0 => {
                let at = rng.below(len);
                out[at] = rng.next() as u8;
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out.truncate(INPUT_BYTES_MAX);
    out
}

// ------------------------------------------------------------ valid inputs

/// `[split, limits]` + a stream of client frames.
fn frame_reader_seeds() -> Vec<Vec<u8>> {
    let close = |code: u16, reason: &str| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        frame(0x88, &p)
    };
    let streams: Vec<Vec<u8>> = vec![
        frame(0x81, b"hello"),
        frame(0x82, &[0xab; 200]),
        frame(0x82, &[0x01; 1000]),
        [frame(0x01, "h\u{e9}".as_bytes()), frame(0x80, b"llo")].concat(),
        // "é" split inside its two bytes across fragments.
        [frame(0x01, &[b'a', 0xc3]), frame(0x80, &[0xa9, b'b'])].concat(),
        [
            frame(0x01, b"frag"),
            frame(0x89, b"ping inside"),
            frame(0x00, b"ment"),
            frame(0x80, b"ed"),
        ]
        .concat(),
        [frame(0x89, b"ping"), frame(0x8a, b"pong")].concat(),
        close(1000, "bye"),
        frame(0x88, b""),
        [
            frame(0x81, b"before close"),
            close(1001, ""),
            frame(0x81, b"after"),
        ]
        .concat(),
        frame(0x81, &[0xff, 0xfe]),
        // Unmasked, and a header announcing 70,000 bytes with 16 present.
        [vec![0x81, 0x03], b"abc".to_vec()].concat(),
        frame(0x82, &[0x11; 70_000])[..30].to_vec(),
        [frame(0x82, b""), frame(0x81, b""), frame(0x8a, b"")].concat(),
    ];
    reader_seeds(streams)
}

/// `[split, limits]` + a stream of server frames, for a client's reader.
fn client_frame_reader_seeds() -> Vec<Vec<u8>> {
    use ws::{close_frame, encode_frame, ping_frame, pong_frame};
    let fragment = |fin: bool, opcode: Opcode, payload: &[u8]| {
        let mut out = Vec::new();
        ws::write_frame(&mut out, fin, opcode, payload, None);
        out
    };
    let streams: Vec<Vec<u8>> = vec![
        encode_frame(
            Opcode::Text,
            br#"{"type":"welcome","user":"alice","epoch":1,"seq":0}"#,
        ),
        encode_frame(Opcode::Text, br#"{"type":"push","seq":7,"data":{"hi":1}}"#),
        encode_frame(Opcode::Binary, &[0xab; 200]),
        encode_frame(Opcode::Binary, &[0x01; 1000]),
        [
            fragment(false, Opcode::Text, "h\u{e9}".as_bytes()),
            fragment(true, Opcode::Continuation, b"llo"),
        ]
        .concat(),
        // "é" split inside its two bytes across fragments.
        [
            fragment(false, Opcode::Text, &[b'a', 0xc3]),
            fragment(true, Opcode::Continuation, &[0xa9, b'b']),
        ]
        .concat(),
        [
            fragment(false, Opcode::Text, b"frag"),
            ping_frame(b"ping inside"),
            fragment(false, Opcode::Continuation, b"ment"),
            fragment(true, Opcode::Continuation, b"ed"),
        ]
        .concat(),
        [ping_frame(b""), pong_frame(b"pong")].concat(),
        close_frame(CloseCode::SERVICE_RESTART, "draining"),
        encode_frame(Opcode::Close, b""),
        [
            encode_frame(Opcode::Text, b"before close"),
            close_frame(CloseCode::GOING_AWAY, ""),
            encode_frame(Opcode::Text, b"after"),
        ]
        .concat(),
        encode_frame(Opcode::Text, &[0xff, 0xfe]),
        // Masked (a client's frame), and a header announcing 70,000 bytes
        // with 20 present.
        frame(0x81, b"abc"),
        encode_frame(Opcode::Binary, &[0x11; 70_000])[..30].to_vec(),
        [
            encode_frame(Opcode::Binary, b""),
            encode_frame(Opcode::Text, b""),
            encode_frame(Opcode::Pong, b""),
        ]
        .concat(),
    ];
    reader_seeds(streams)
}

/// `[split, limits]` + client frames on a connection that negotiated
/// permessage-deflate: compressed messages (RSV1), whole and fragmented,
/// among plain ones and pings; a zip bomb; and bare DEFLATE streams (the
/// body also inflates the stream as one message).
fn inflate_seeds() -> Vec<Vec<u8>> {
    let deflate = |message: &[u8]| {
        let mut out = Vec::new();
        Deflater::default().compress(&[message], &mut out);
        out
    };
    let json: Vec<u8> = (0..60)
        .flat_map(|i| format!(r#"{{"id":{i},"name":"user-{i}"}},"#).into_bytes())
        .collect();
    let hello = deflate(b"Hello");
    let big = deflate(&json);
    let streams: Vec<Vec<u8>> = vec![
        frame(0xc1, &hello),
        frame(0xc2, &big),
        [
            frame(0x41, &big[..10]),
            frame(0x89, b"p"),
            frame(0x80, &big[10..]),
        ]
        .concat(),
        [
            frame(0x41, &hello[..3]),
            frame(0x00, &hello[3..5]),
            frame(0x80, &hello[5..]),
        ]
        .concat(),
        [
            frame(0x81, b"plain"),
            frame(0xc1, &hello),
            frame(0x81, b"again"),
        ]
        .concat(),
        frame(0xc1, &deflate(&[b'a'; 100_000])),
        frame(0xc1, &deflate(b"ok \xff")),
        frame(0xc1, &[]),
        frame(0xc9, b""),
        [frame(0x41, &hello[..3]), frame(0xc0, &hello[3..])].concat(),
        hello.clone(),
        big.clone(),
        deflate(&[0u8; 5000]),
        // RFC 7692 §7.2.3.3 (stored block) and §7.2.3.4 (BFINAL).
        vec![
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ],
        vec![0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
    ];
    reader_seeds(streams)
}

/// Each stream behind each of three `[split, limits]` prefixes.
fn reader_seeds(streams: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        for limits in [255u8, 64, 2] {
            seeds.push([vec![(i * 37) as u8, limits], stream.clone()].concat());
        }
    }
    seeds
}

/// A client's upgrade request, with a `Connection` list of two tokens.
fn upgrade(target: &str, headers: &str) -> String {
    ws::upgrade_request("localhost:8080", target, common::KEY, headers)
        .replace("Connection: Upgrade", "Connection: keep-alive, Upgrade")
}

fn handshake_seeds() -> Vec<Vec<u8>> {
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.c2ln";
    let requests = vec![
        upgrade(&format!("/ws?token={token}"), ""),
        upgrade(
            "/ws?since=1795441991863:42",
            &format!("Authorization: Bearer {token}\r\n"),
        ),
        upgrade(
            "/ws?token=a%20b&x=%ff",
            "Sec-WebSocket-Protocol: chat, superchat\r\nOrigin: https://example.com\r\n",
        ),
        upgrade("/other", "Cookie: a=b\r\n"),
        upgrade("/ws", "Sec-WebSocket-Version: 13\r\n"),
        upgrade("/ws", "").replace("HTTP/1.1", "HTTP/1.0"),
        upgrade("/ws", "").replace("GET", "POST"),
        upgrade("/ws", "").replace("Version: 13", "Version: 8"),
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        format!(
            "{}{}",
            upgrade("/ws", ""),
            String::from_utf8_lossy(&frame(0x81, b"pipelined"))
        ),
    ];
    requests.into_iter().map(String::into_bytes).collect()
}

fn sample_requests() -> Vec<Request> {
    vec![
        Request::Push {
            id: 1,
            users: vec!["alice".into(), "bob".into(), "a-much-longer-user-id".into()],
            data: r#"{"hi":1,"list":[1,2,3]}"#.into(),
        },
        Request::Push {
            id: u64::MAX,
            users: vec![],
            data: String::new(),
        },
        Request::Broadcast {
            id: 2,
            data: "\"maintenance\"".into(),
        },
        Request::Presence {
            id: 3,
            user: "\u{fc}n\u{ef}code".into(),
        },
        Request::Status { id: 4 },
        Request::Drain {
            id: 5,
            rate_per_s: 1000,
            confirm: pushgate::push::wire::DRAIN_CONFIRM.into(),
        },
    ]
}

fn sample_replies() -> Vec<Reply> {
    vec![
        Reply::Pushed {
            id: 1,
            delivered: 2,
            stored: 1,
            rejected: 0,
        },
        Reply::Presence {
            id: 3,
            online: true,
            devices: 2,
        },
        Reply::Status {
            id: 4,
            shards: vec![
                ShardStatus {
                    shard: 0,
                    connections: 5,
                    users_online: 4,
                    mailboxes: 1,
                },
                ShardStatus {
                    shard: 1,
                    connections: 0,
                    users_online: 0,
                    mailboxes: 0,
                },
            ],
        },
        Reply::Draining {
            id: 5,
            rate_per_s: 10,
        },
        Reply::Error {
            id: 0,
            message: "bad push frame".into(),
        },
    ]
}

/// `[split, limit]` + push-socket frames: each request and reply alone,
/// and all of them pipelined.
fn push_decoder_seeds() -> Vec<Vec<u8>> {
    let mut streams: Vec<Vec<u8>> = sample_requests()
        .iter()
        .map(wire::encode_request)
        .chain(sample_replies().iter().map(wire::encode_reply))
        .collect();
    streams.push(
        sample_requests()
            .iter()
            .flat_map(wire::encode_request)
            .collect(),
    );
    streams.push(
        sample_replies()
            .iter()
            .flat_map(wire::encode_reply)
            .collect(),
    );
    let mut seeds = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        for limit in [255u8, 1] {
            seeds.push([vec![(i * 53) as u8, limit], stream.clone()].concat());
        }
    }
    seeds
}

/// `[split, mode]` + a record program (mode even, see `tls_program` in
/// fuzz/bodies.rs) or a raw record stream (mode odd).
fn tls_records_seeds() -> Vec<Vec<u8>> {
    let mut programs: Vec<Vec<u8>> = vec![
        // Application data, with and without padding, one and several.
        [&[0x01, 5][..], b"hello"].concat(),
        [&[0x0d, 3][..], b"abc", &[0x01, 0], &[0x01, 2], b"hi"].concat(),
        // close_notify, a fatal alert, a KeyUpdate, an unknown inner type.
        [&[0x01, 2][..], b"ok", &[0x02, 21, 2, 1, 0]].concat(),
        vec![0x02, 21, 2, 2, 40],
        vec![0x02, 22, 5, 24, 0, 0, 1, 0],
        vec![0x02, 99, 1, b'x'],
        // No content type at all (all padding).
        vec![0x02, 0, 0],
        // A replayed record, a record at the plaintext limit and over it.
        [&[0x01, 1][..], b"a", &[0x81, 1], b"b"].concat(),
        vec![0x3f, 0x00, 0x01, 1, b'z'],
        vec![0x43, 0x01],
        // Garbage: a header announcing 16 KB then nothing, a plaintext
        // alert, change_cipher_spec, a bad version, a record too long.
        vec![0x00, 5, 23, 3, 3, 0x40, 0x00],
        vec![0x00, 7, 21, 3, 3, 0, 2, 1, 0],
        [&[0x01, 2][..], b"ok", &[0x00, 6, 20, 3, 3, 0, 1, 1]].concat(),
        vec![0x00, 5, 23, 2, 0, 0, 20],
        vec![0x00, 5, 23, 3, 3, 0x48, 0x01],
        // A record cut short, then the rest of the stream.
        [&[0x01, 4][..], b"abcd", &[0x00, 3, 23, 3, 3]].concat(),
    ];
    // The raw stream of a valid program, for the odd mode.
    let raw: Vec<u8> = [
        pushgate::tls::fuzzing::seal_client_record(0, b"raw\x17"),
        pushgate::tls::fuzzing::seal_client_record(1, b"stream\x17\0\0"),
    ]
    .concat();
    let mut seeds = Vec::new();
    for (i, program) in programs.drain(..).enumerate() {
        for split in [0u8, (i * 41) as u8, 255] {
            seeds.push([vec![split, 0], program.clone()].concat());
        }
    }
    for split in [0u8, 100, 200] {
        seeds.push([vec![split, 1], raw.clone()].concat());
    }
    seeds
}

/// `[split]` + what TLS clients send first: rustls ClientHellos (TLS 1.3,
/// TLS 1.2 only), one cut into one-byte handshake records, with a
/// change_cipher_spec and garbage after, and a plain HTTP request.
fn tls_handshake_seeds() -> Vec<Vec<u8>> {
    use rustls::pki_types::ServerName;
    use std::sync::Arc;
    let hello = |versions: &[&'static rustls::SupportedProtocolVersion]| {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut client = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        out
    };
    let tls13 = hello(&[&rustls::version::TLS13]);
    let tls12 = hello(&[&rustls::version::TLS12]);
    // The ClientHello's handshake message, one byte per record.
    let fragmented: Vec<u8> = tls13[5..]
        .iter()
        .flat_map(|&b| [22, 3, 1, 0, 1, b])
        .collect();
    let streams = vec![
        tls13.clone(),
        tls12,
        fragmented,
        [&tls13[..], &[20, 3, 3, 0, 1, 1]].concat(),
        [&tls13[..], &[23, 3, 3, 0, 20], &[0xab; 20]].concat(),
        tls13[..tls13.len() / 2].to_vec(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![22, 3, 1, 0, 6, 1, 0, 0, 2, 0xde, 0xad],
    ];
    let mut seeds = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        for split in [0u8, (i * 67) as u8, 255] {
            seeds.push([vec![split], stream.clone()].concat());
        }
    }
    seeds
}

// ------------------------------------------------------------ the driver

struct Report {
    runs: u64,
    deep: u64,
}

/// Runs `body` over seeds, random bytes and mutations; a panic writes the
/// input out and fails the test with its path.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, body: fn(&[u8]) -> usize) -> Report {
    let seed = env_u64("FUZZ_SMOKE_SEED").unwrap_or(SEED_DEFAULT);
    let mut rng = Rng::new(
        seed ^ name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
    );
    let deadline = env_u64("FUZZ_SMOKE_SECONDS").map(|s| Instant::now() + Duration::from_secs(s));
    let iterations = env_u64("FUZZ_SMOKE_ITERATIONS").unwrap_or(ITERATIONS_DEFAULT);
    let mut report = Report { runs: 0, deep: 0 };
    // Inputs that got deep are mutated further, so mutations stack up.
    let mut pool = seeds.clone();
    loop {
        match deadline {
            Some(deadline) if report.runs.is_multiple_of(1024) && Instant::now() >= deadline => {
                break
            }
            None if report.runs >= iterations => break,
            _ => {}
        }
        let input = match report.runs {
            n if (n as usize) < seeds.len() => seeds[n as usize].clone(),
            _ if rng.below(10) == 0 => {
                let n = rng.below(300);
                rng.bytes(n)
            }
            _ => {
                let base = &pool[rng.below(pool.len())];
                mutate(&mut rng, base, &seeds)
            }
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| body(&input)));
        report.runs += 1;
        match outcome {
            Ok(depth) if depth > 0 => {
                report.deep += 1;
                if pool.len() < 4096 && rng.below(16) == 0 {
                    pool.push(input);
                }
            }
            Ok(_) => {}
            Err(panic) => {
                let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("fuzz-smoke-{name}.bin"));
                let _ = std::fs::write(&path, &input);
                let hex: String = input.iter().take(256).map(|b| format!("{b:02x}")).collect();
                eprintln!(
                    "{name}: input {} (seed {seed:#x}) panicked; {} bytes written to {}\n\
                     first bytes: {hex}\nreplay: cargo +nightly fuzz run {name} {}",
                    report.runs,
                    input.len(),
                    path.display(),
                    path.display()
                );
                resume_unwind(panic);
            }
        }
    }
    eprintln!(
        "{name}: {} inputs (seed {seed:#x}), {} got past the first parse",
        report.runs, report.deep
    );
    report
}

/// At least `percent` % of the inputs reached the interesting code, so the
/// mutations are not all rejected at the first byte.
fn assert_deep(report: &Report, percent: u64) {
    assert!(
        report.deep * 100 >= report.runs * percent,
        "only {} of {} inputs went deep",
        report.deep,
        report.runs
    );
}

#[test]
fn frame_reader_smoke() {
    let report = fuzz("frame_reader", frame_reader_seeds(), bodies::frame_reader);
    assert_deep(&report, 30);
}

#[test]
fn client_frame_reader_smoke() {
    let report = fuzz(
        "client_frame_reader",
        client_frame_reader_seeds(),
        bodies::client_frame_reader,
    );
    assert_deep(&report, 30);
}

#[test]
fn inflate_smoke() {
    let report = fuzz("inflate", inflate_seeds(), bodies::inflate);
    assert_deep(&report, 30);
}

#[test]
fn handshake_smoke() {
    let report = fuzz("handshake", handshake_seeds(), bodies::handshake);
    assert_deep(&report, 20);
}

#[test]
fn push_decoder_smoke() {
    let report = fuzz("push_decoder", push_decoder_seeds(), bodies::push_decoder);
    assert_deep(&report, 10);
}

#[test]
fn tls_records_smoke() {
    let report = fuzz("tls_records", tls_records_seeds(), bodies::tls_records);
    assert_deep(&report, 20);
}

#[test]
fn tls_handshake_smoke() {
    let report = fuzz(
        "tls_handshake",
        tls_handshake_seeds(),
        bodies::tls_handshake,
    );
    assert_deep(&report, 10);
}

/// The valid inputs above as seed corpora for cargo-fuzz (run by
/// `scripts/fuzz.sh`): `FUZZ_SEED_DIR=DIR cargo test --test fuzz_smoke --
/// --ignored write_seed_corpus`.
#[test]
#[ignore = "writes files; run by scripts/fuzz.sh"]
fn write_seed_corpus() {
    let dir = std::env::var("FUZZ_SEED_DIR").expect("FUZZ_SEED_DIR");
    for (name, seeds) in [
        ("frame_reader", frame_reader_seeds()),
        ("client_frame_reader", client_frame_reader_seeds()),
        ("handshake", handshake_seeds()),
        ("push_decoder", push_decoder_seeds()),
        ("inflate", inflate_seeds()),
        ("tls_records", tls_records_seeds()),
        ("tls_handshake", tls_handshake_seeds()),
    ] {
        let target_dir = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&target_dir).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}
