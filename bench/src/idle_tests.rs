//! Tests of the idle command's pure parts: slicing, rate parsing, the worker message format.

use super::*;

#[test]
fn split_covers_every_index_once() {
    assert_eq!(split(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
    assert_eq!(split(19_000, 2), vec![(0, 9_500), (9_500, 9_500)]);
    let slices = split(40_000, 8);
    assert_eq!(slices.iter().map(|s| s.1).sum::<u64>(), 40_000);
    assert!(slices.iter().all(|s| s.1 <= CONNS_PER_WORKER_MAX));
}

#[test]
fn rates() {
    assert_eq!(parse_rate("5000/s"), Ok(5000.0));
    assert_eq!(parse_rate("250"), Ok(250.0));
    assert!(parse_rate("0").is_err());
    assert!(parse_rate("fast").is_err());
}

#[test]
fn worker_messages_round_trip() {
    let line = serde_json::to_string(&WorkerMessage::Error {
        message: "x".to_string(),
    })
    .unwrap();
    assert_eq!(line, r#"{"kind":"error","message":"x"}"#);
    let back: WorkerMessage = serde_json::from_str(&line).unwrap();
    assert!(matches!(back, WorkerMessage::Error { .. }));
}

#[test]
fn last_warning_finds_the_servers_complaint_without_colours() {
    let log =
        "\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m fixed-file table full: accepting paused\n\
               2026 INFO stopped\n";
    assert_eq!(
        last_warning(log).unwrap(),
        "2026  WARN fixed-file table full: accepting paused"
    );
    assert_eq!(last_warning("all good\n"), None);
}

#[test]
fn failures_are_classified() {
    let mut t = Tally::default();
    t.add_n("eof before response".to_string(), 10);
    let c = classify(&t, true, Some(20_000), Some(20_000));
    assert!(c.starts_with("server fd limit"), "{c}");
    let mut t = Tally::default();
    t.add_n("status: HTTP/1.1 503 Service Unavailable".to_string(), 3);
    assert!(classify(&t, true, Some(10), Some(20_000)).starts_with("server refusal: 503"));
    let mut t = Tally::default();
    t.add_n(
        "connect: Cannot assign requested address (os error 99)".to_string(),
        1,
    );
    assert!(classify(&t, true, None, None).starts_with("client port exhaustion"));
    assert_eq!(classify(&t, false, None, None), "server exited");
}
