//! Drives the idle worker in-process against a stand-in server built on
//! tungstenite: every connection must be upgraded, authenticated and
//! welcomed, and every failure must be counted under its reason.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::thread;
use std::time::Duration;

use common::{secret_file, Behaviour, StandIn};
use pushgate_bench::sources::parse_sources;
use pushgate_bench::token;
use pushgate_bench::worker::{EstablishReport, Worker, WorkerConfig};

fn config(target: SocketAddrV4, count: u64) -> WorkerConfig {
    let mut config = WorkerConfig::new(
        target,
        parse_sources("127.0.0.2-127.0.0.5").unwrap(),
        1000,
        count,
    );
    // Smaller than the connection count, so the in-flight limit is exercised.
    config.inflight_max = 16;
    config.handshake_timeout_ms = 3000;
    config
}

fn establish(worker: &mut Worker, secret_name: &str) -> EstablishReport {
    let path = secret_file(secret_name);
    let secret = token::read_secret(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let now_unix_s = token::now_unix_s();
    worker
        .establish(&mut |index| token::mint(&secret, index, now_unix_s))
        .unwrap()
}

fn assert_failures(report: &EstablishReport, reason_prefix: &str, count: u64) {
    assert_eq!(report.established, 0, "{report:?}");
    assert_eq!(report.failed, count, "{report:?}");
    let matching: u64 = report
        .failures
        .0
        .iter()
        .filter(|(why, _)| why.starts_with(reason_prefix))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(matching, count, "{report:?}");
}

#[test]
fn establishes_fifty_welcomed_connections_as_distinct_users() {
    const CONNS: u64 = 50;
    let server = StandIn::start(CONNS as usize, Behaviour::Welcome);
    let mut worker = Worker::new(config(server.addr, CONNS), None).unwrap();
    let report = establish(&mut worker, "fifty");
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(report.established, CONNS);
    assert_eq!(worker.held(), CONNS);
    assert_eq!(report.latency_us.iter().map(|(_, n)| n).sum::<u64>(), CONNS);
    assert!(report.done_mono_ns >= report.first_connect_mono_ns);
    let seen = server.finish();
    assert_eq!(seen.authorizations.len(), CONNS as usize);
    assert!(seen.authorizations.iter().all(|a| a.starts_with("Bearer ")));
    let distinct: BTreeSet<&String> = seen.authorizations.iter().collect();
    assert_eq!(
        distinct.len(),
        CONNS as usize,
        "one user, one token per connection"
    );
    let expected: BTreeSet<Ipv4Addr> = (2..=5).map(|d| Ipv4Addr::new(127, 0, 0, d)).collect();
    assert_eq!(seen.peer_ips, expected, "sources rotate over the range");
}

#[test]
fn answers_pings_while_held_and_stops_when_stdin_closes() {
    const CONNS: u64 = 4;
    let server = StandIn::start(CONNS as usize, Behaviour::WelcomeThenPing);
    let (stop_reader, stop_writer) = std::io::pipe().unwrap();
    let stop = File::from(std::os::fd::OwnedFd::from(stop_reader));
    let mut worker = Worker::new(config(server.addr, CONNS), Some(stop)).unwrap();
    let held = thread::spawn(move || {
        let report = establish(&mut worker, "ping");
        let hold = worker.hold().unwrap();
        (report, hold)
    });
    // The stand-in returns its log only after every pong arrived (or timed
    // out); only then is the worker told to stop.
    let _ = server.release.send(());
    let seen = server.handle.join().unwrap();
    drop(stop_writer);
    let (report, hold) = held.join().unwrap();
    assert_eq!(report.established, CONNS, "{:?}", report.failures);
    assert_eq!(seen.pongs_matching, CONNS as usize);
    assert_eq!(hold.pings_answered, CONNS);
    assert_eq!(hold.pongs_unsent, 0);
}

#[test]
fn rejected_upgrade_counts_with_its_status_line() {
    let server = StandIn::start(5, Behaviour::Reject);
    let mut worker = Worker::new(config(server.addr, 5), None).unwrap();
    let report = establish(&mut worker, "reject");
    assert_failures(&report, "status: HTTP/1.1 401 Unauthorized", 5);
    server.finish();
}

#[test]
fn silent_server_counts_timeouts() {
    let server = StandIn::start(3, Behaviour::Silent);
    let mut cfg = config(server.addr, 3);
    cfg.handshake_timeout_ms = 200;
    let mut worker = Worker::new(cfg, None).unwrap();
    let report = establish(&mut worker, "silent");
    assert_failures(&report, "timeout 200 ms (response)", 3);
    server.finish();
}

#[test]
fn closed_port_counts_connect_refused() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let mut worker = Worker::new(config(target, 3), None).unwrap();
    let report = establish(&mut worker, "refused");
    assert_failures(&report, "connect refused", 3);
}

#[test]
fn stop_during_establish_counts_the_unfinished() {
    let server = StandIn::start(2, Behaviour::Silent);
    let (stop_reader, stop_writer) = std::io::pipe().unwrap();
    let stop = File::from(std::os::fd::OwnedFd::from(stop_reader));
    let mut cfg = config(server.addr, 5);
    cfg.inflight_max = 2;
    let mut worker = Worker::new(cfg, Some(stop)).unwrap();
    let stopper = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        drop(stop_writer);
    });
    let report = establish(&mut worker, "stop");
    stopper.join().unwrap();
    assert_eq!(report.established, 0);
    assert_eq!(
        report.failures.0.get("stopped mid-handshake"),
        Some(&2),
        "{report:?}"
    );
    assert_eq!(
        report.failures.0.get("stopped before connecting"),
        Some(&3),
        "{report:?}"
    );
    server.finish();
}
