//! Memory comes back when what the server holds goes, and the overload
//! state follows: against the real binary.

mod common;

use common::Server;
use pushgate::push::client::Client;
use std::time::{Duration, Instant};

/// The server's resident set, from /proc/PID/status.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

fn readyz(server: &Server) -> (u16, String) {
    server.admin("GET", "/readyz", None, "")
}

/// Waits until /readyz answers `status`; panics after `bound`.
fn wait_readyz(server: &Server, status: u16, bound: Duration, why: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (now, body) = readyz(server);
        if now == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "{why}: /readyz still {now} {body} after {bound:?}; RSS {} MiB; log: {:?}",
            rss_bytes(server.pid()) >> 20,
            server.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Mailbox retention of the servers below: long enough that filling over
/// the mark finishes before the first pushes expire, even on a busy
/// machine (a 3 s retention lost that race with both cores loaded).
const RETENTION_MS: u64 = 8_000;
/// Offline users named in one push: few round trips to fill.
const USERS_PER_PUSH: usize = 5_000;
/// How far above its idle RSS the server's high-water mark sits.
const MARK_ABOVE_IDLE_BYTES: u64 = 48 << 20;

/// Pushes to offline users push the server over a small high-water mark:
/// /readyz turns 503 and further pushes to offline users are rejected.
/// Once retention has dropped what they stored, the memory is given back:
/// /readyz turns 200 again within a bound, RSS comes back near where it
/// started, and offline pushes are stored again.
///
/// The load is many offline users with a small push each (a user record,
/// a mailbox, an expiry entry: small allocations), because that is what
/// glibc's malloc kept. Large payloads do not show it: glibc serves and
/// frees them with mmap, or they lie at the top of an arena's heap, which
/// it trims itself. With glibc's malloc (before jemalloc), this test failed
/// at the RSS check: 49 MiB still resident 18 s after everything expired,
/// idle 12 MiB, mark 60 MiB. Its /readyz check alone would not have failed
/// here, as what malloc kept stayed under the 5 % band below the mark; at a
/// million connections (hundreds of MB kept) it does not.
#[test]
fn overload_ends_when_what_was_stored_expires() {
    // The idle RSS of a server like the one under test (debug build, 2
    // shards), to put the mark a fixed distance above it.
    let probe = Server::start(&["--shards", "2"]);
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_bytes(probe.pid());
    drop(probe);
    let mark = idle + MARK_ABOVE_IDLE_BYTES;
    let server = Server::start(&[
        "--shards",
        "2",
        "--mailbox-retention-ms",
        &RETENTION_MS.to_string(),
        "--memory-high-water-bytes",
        &mark.to_string(),
    ]);
    assert_eq!(readyz(&server).0, 200);
    let mut publisher = Client::connect(&server.run_dir).unwrap();

    // Fill until the supervisor (every 250 ms) sees RSS over the mark.
    // Bounded: 400,000 users take well over 48 MiB.
    let mut stored = 0;
    let filling = Instant::now();
    for push in 0..80 {
        let names: Vec<String> = (0..USERS_PER_PUSH)
            .map(|i| format!("away-{}", push * USERS_PER_PUSH + i))
            .collect();
        let users: Vec<&str> = names.iter().map(String::as_str).collect();
        let outcome = publisher
            .push(&users, r#"{"mail":"you have a new message"}"#)
            .unwrap();
        stored += outcome.stored;
        if readyz(&server).0 == 503 {
            break;
        }
    }
    let (status, body) = readyz(&server);
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"ready":false,"reason":"overloaded"}"#),
        "{stored} offline users stored in {:?}; RSS {} MiB, mark {} MiB",
        filling.elapsed(),
        rss_bytes(server.pid()) >> 20,
        mark >> 20
    );
    let refused = publisher.push(&["away-late"], r#"{"n":1}"#).unwrap();
    assert_eq!((refused.stored, refused.rejected), (0, 1), "{refused:?}");

    // Retention drops every stored push RETENTION_MS after it came; the
    // shards expire them on their next ticks and the supervisor gives the
    // memory back within a few rounds. The bound leaves room for a busy
    // machine.
    let bound = Duration::from_millis(RETENTION_MS) + Duration::from_secs(15);
    let took = wait_readyz(&server, 200, bound, "overload did not end");
    assert!(
        rss_bytes(server.pid()) < mark / 100 * 95,
        "ready, so RSS is under 95 % of the mark"
    );
    // And the memory itself came back, not just enough of it to pass the
    // 5 % band: most of what the users took.
    let near_idle = idle + MARK_ABOVE_IDLE_BYTES / 4;
    let start = Instant::now();
    while rss_bytes(server.pid()) > near_idle {
        assert!(
            start.elapsed() < bound,
            "RSS {} MiB after {bound:?}, idle {} MiB: the memory was not given back",
            rss_bytes(server.pid()) >> 20,
            idle >> 20
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = publisher.push(&["away-later"], r#"{"n":2}"#).unwrap();
    assert_eq!((again.stored, again.rejected), (1, 0), "{again:?}");
    server.wait_log("no longer overloaded");
    eprintln!(
        "{stored} offline users stored; ready again {took:?} after the last push; \
         RSS {} MiB, idle {} MiB, mark {} MiB",
        rss_bytes(server.pid()) >> 20,
        idle >> 20,
        mark >> 20
    );
}
