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
