//! Tests of the push client. The pure parts (grouping, JSON checks, NDJSON
//! reading, reply checks) on their own, and, against a fake shard socket,
//! what the real server never does: replies out of step or of the wrong
//! kind, errors, silence, hanging up between calls, odd status replies.
//! Routing, sums, windowing and what is refused before sending are tested
//! against the real gateway in the server's `tests/push_client.rs`: this
//! crate does not depend on the server.

use super::conn::check_reply;
use super::*;
use std::io::Cursor;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};

const LINE: usize = 4 * FRAME_BODY_BYTES_MAX_DEFAULT;

fn temp_run_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pgc-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn quick_client(dir: &Path) -> Client {
    Client::connect_with_io_timeout(dir, Duration::from_secs(5)).unwrap()
}

// ---- a stand-in for a push socket that misbehaves ----

/// What the fake shard does with one request.
enum Answer {
    Send(Reply),
    /// Send the reply, then hang up, as a restarting server would.
    SendAndClose(Reply),
    Silent,
}

/// Serves `<dir>/shard-<shard>.sock` on a thread, `connections` of them one
/// after another, answering each request with `answer`.
fn fake_shard(
    dir: &Path,
    shard: usize,
    connections: usize,
    answer: impl Fn(&Request) -> Answer + Send + 'static,
) {
    let listener = UnixListener::bind(shard_socket_path(dir, shard)).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let mut stream = stream.unwrap();
            let mut splitter = wire::FrameSplitter::default();
            let mut buf = [0u8; 4096];
            'conn: loop {
                let n = match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut requests = Vec::new();
                splitter
                    .feed(&buf[..n], FRAME_BODY_BYTES_MAX_DEFAULT, |body| {
                        requests.push(wire::decode_request(body).unwrap())
                    })
                    .unwrap();
                for request in requests {
                    match answer(&request) {
                        Answer::Send(reply) => {
                            let _ = stream.write_all(&wire::encode_reply(&reply));
                        }
                        Answer::SendAndClose(reply) => {
                            let _ = stream.write_all(&wire::encode_reply(&reply));
                            break 'conn;
                        }
                        Answer::Silent => {}
                    }
                }
            }
        }
    });
}

/// What a healthy one-shard server answers, so a fake can misbehave on
/// some requests only: every user online, each push delivered to one.
fn normal(request: &Request) -> Answer {
    Answer::Send(match request {
        Request::Status { id } => Reply::Status {
            id: *id,
            shards: vec![ShardStatus {
                shard: 0,
                connections: 1,
                users_online: 1,
                mailboxes: 0,
            }],
        },
        Request::Push { id, .. } | Request::PushOnce { id, .. } | Request::Broadcast { id, .. } => {
            Reply::Pushed {
                id: *id,
                delivered: 1,
                stored: 0,
                rejected: 0,
            }
        }
        Request::Presence { id, .. } => Reply::Presence {
            id: *id,
            online: true,
            devices: 1,
        },
        Request::Drain { id, rate_per_s, .. } => Reply::Draining {
            id: *id,
            rate_per_s: *rate_per_s,
        },
    })
}

// ---- pure parts ----

#[test]
fn users_are_grouped_by_home_shard_in_given_order() {
    // Homes with 16 shards, pinned in route.rs: alice 4, "" 6, a 11, user-42 13.
    let groups = group_by_home_shard(["user-42", "alice", "a", "", "alice"], 16);
    let expected: Vec<(usize, Vec<String>)> = vec![
        (4, vec!["alice".into(), "alice".into()]),
        (6, vec!["".into()]),
        (11, vec!["a".into()]),
        (13, vec!["user-42".into()]),
    ];
    assert_eq!(groups, expected);
    assert_eq!(
        group_by_home_shard(["b", "a"], 1),
        vec![(0, vec!["b".to_owned(), "a".to_owned()])]
    );
    assert!(group_by_home_shard(Vec::<String>::new(), 4).is_empty());
}

#[test]
fn data_must_be_one_json_value() {
    for good in [r#"{"a":1}"#, " 1 ", r#""text""#, "null", "[1,{\"b\":[]}]\n"] {
        check_data(good).unwrap_or_else(|e| panic!("{good:?} refused: {e}"));
    }
    for bad in ["", "not json", r#"{"a":1} x"#, "1 2", "{", "{'a':1}"] {
        let err = check_data(bad).unwrap_err();
        assert!(
            matches!(&err, ClientError::InvalidData(m) if m.starts_with("data is not one JSON value")),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn ndjson_lines_parse_or_say_why() {
    let (users, data) =
        parse_push_line(r#" {"users":["a","b"], "data": { "x" : [1, 2.5, "ü"] }}  "#)
            .unwrap()
            .unwrap();
    assert_eq!(users, ["a", "b"]);
    assert_eq!(
        data, r#"{ "x" : [1, 2.5, "ü"] }"#,
        "as written, not rebuilt"
    );
    // What a rebuilt `Value` would change: precision, float text, escapes.
    let exact = r#"{"n":123456789012345678901234567890,"f":1.10,"e":1E+2,"s":"\u00fc"}"#;
    let line = format!(r#"{{"users":["a"],"data":{exact}}}"#);
    assert_eq!(parse_push_line(&line).unwrap().unwrap().1, exact);
    assert_eq!(
        parse_push_line(r#"{"data":null,"users":["a"]}"#).unwrap(),
        Some((vec!["a".to_owned()], "null".to_owned()))
    );
    assert_eq!(parse_push_line("").unwrap(), None);
    assert_eq!(parse_push_line(" \t\r\n").unwrap(), None);
    for (bad, says) in [
        ("not json", "expected"),
        (r#"{"users":["a"]}"#, "missing field `data`"),
        (r#"{"data":1}"#, "missing field `users`"),
        (
            r#"{"users":["a"],"data":1,"user":"b"}"#,
            "unknown field `user`",
        ),
        (r#"{"users":[],"data":1}"#, "\"users\" is empty"),
        (r#"{"users":[1],"data":1}"#, "invalid type"),
        (r#"{"users":"a","data":1}"#, "invalid type"),
        (r#"{"users":["a"],"data":1} trailing"#, "trailing"),
        (r#"{"users":["a"],"data":{"k":}}"#, "expected value"),
    ] {
        let err = parse_push_line(bad).unwrap_err();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}

#[test]
fn ndjson_stream_skips_blank_lines_and_stops_at_a_bad_one_naming_it() {
    let input = concat!(
        "{\"users\":[\"a\"],\"data\":1}\n",
        "\n",
        "   \r\n",
        "{\"users\":[\"b\",\"c\"],\"data\":{\"k\":true}}\r\n",
        "{\"users\":[\"d\"]}\n",
        "{\"users\":[\"never\"],\"data\":1}\n",
    );
    let mut pushes = NdjsonPushes::new(Cursor::new(input), LINE);
    let items: Vec<_> = (&mut pushes).collect();
    assert_eq!(
        items,
        vec![
            (vec!["a".to_owned()], "1".to_owned()),
            (
                vec!["b".to_owned(), "c".to_owned()],
                r#"{"k":true}"#.to_owned()
            ),
        ]
    );
    assert_eq!(pushes.items, 2);
    let err = pushes.error.take().unwrap().to_string();
    assert!(err.starts_with("line 5: missing field `data`"), "{err}");
    assert_eq!(pushes.next(), None, "nothing after a bad line");

    let mut clean = NdjsonPushes::new(Cursor::new("\n{\"users\":[\"a\"],\"data\":[]}"), LINE);
    assert_eq!(clean.by_ref().count(), 1, "last line without a newline");
    assert!(clean.error.is_none());
}

#[test]
fn ndjson_refuses_long_and_non_utf8_lines() {
    let line_ok = format!("{{\"users\":[\"a\"],\"data\":\"{}\"}}", "x".repeat(71));
    assert_eq!(line_ok.len(), 96);
    let long = format!("{line_ok}\n{line_ok} \n");
    let mut pushes = NdjsonPushes::new(Cursor::new(long), 96);
    assert!(
        pushes.next().is_some(),
        "a line of exactly the limit is fine"
    );
    assert_eq!(pushes.next(), None);
    let err = pushes.error.unwrap().to_string();
    assert!(err.starts_with("line 2: is longer than"), "{err}");

    let mut pushes = NdjsonPushes::new(Cursor::new(b"\n\n\xff\xfe\n".to_vec()), LINE);
    assert_eq!(pushes.next(), None);
    assert_eq!(pushes.error.unwrap().to_string(), "line 3: is not UTF-8");
}

#[test]
fn check_reply_refuses_errors_and_other_ids() {
    let pushed = |id| Reply::Pushed {
        id,
        delivered: 1,
        stored: 0,
        rejected: 0,
    };
    assert_eq!(check_reply(5, pushed(5)).unwrap(), pushed(5));
    let err = check_reply(5, pushed(6)).unwrap_err().to_string();
    assert!(err.contains("answered request 6 while request 5"), "{err}");
    for id in [5, 0] {
        let error = Reply::Error {
            id,
            message: "users list too long".into(),
        };
        let err = check_reply(5, error).unwrap_err();
        assert!(matches!(&err, ClientError::Server(m) if m == "users list too long"));
    }
    let err = check_reply(
        5,
        Reply::Error {
            id: 9,
            message: "boom".into(),
        },
    )
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("boom")),
        "{err}"
    );
}

// ---- no server at all ----

#[test]
fn no_server_is_reported_with_what_to_run() {
    let dir = temp_run_dir();
    let err = Client::connect(&dir).err().expect("no socket, no client");
    assert!(matches!(err, ClientError::NotRunning { .. }));
    let message = err.to_string();
    assert!(message.contains("shard-0.sock does not exist"), "{message}");
    assert!(
        message.contains("is `pushgate serve --run-dir"),
        "{message}"
    );
    // A socket file nobody listens on (a server that stopped) is the same to
    // the user.
    drop(UnixListener::bind(shard_socket_path(&dir, 0)).unwrap());
    assert!(matches!(
        Client::connect(&dir),
        Err(ClientError::NotRunning { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- against a fake shard, for what the real server never does ----

#[test]
fn mismatched_ids_and_server_errors_fail_the_call_and_the_next_call_reconnects() {
    let dir = temp_run_dir();
    fake_shard(&dir, 0, 4, |request| match request {
        Request::PushOnce { id, users, .. } if users[0] == "wrong-id" => {
            Answer::Send(Reply::Pushed {
                id: id + 1,
                delivered: 1,
                stored: 0,
                rejected: 0,
            })
        }
        Request::PushOnce { id, users, .. } if users[0] == "refused" => {
            Answer::Send(Reply::Error {
                id: *id,
                message: "the push queue is full".into(),
            })
        }
        Request::PushOnce { id, users, .. } if users[0] == "presence-reply" => {
            Answer::Send(Reply::Presence {
                id: *id,
                online: false,
                devices: 0,
            })
        }
        other => normal(other),
    });
    let mut client = quick_client(&dir);

    let err = client.push(&["wrong-id"], "1").unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err}");
    let message = err.to_string();
    // Request ids start at a random number (see `Client::next_id`).
    let numbers: Vec<u64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        message.contains("the server answered request ")
            && numbers.len() == 2
            && numbers[0] == numbers[1] + 1,
        "{message}"
    );

    let err = client.push(&["refused"], "1").unwrap_err();
    assert!(matches!(err, ClientError::Server(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "the server refused the request: the push queue is full"
    );

    let err = client.push(&["presence-reply"], "1").unwrap_err();
    assert!(err.to_string().contains("expected a Pushed reply"), "{err}");

    // Each failure dropped its connection (the fake serves them one after
    // another, so it only reaches a new one once the old is gone): this is
    // the 4th.
    assert_eq!(client.push(&["fine"], "1").unwrap().delivered, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_silent_server_times_out() {
    let dir = temp_run_dir();
    fake_shard(&dir, 0, 1, |request| match request {
        Request::Status { .. } => normal(request),
        _ => Answer::Silent,
    });
    let mut client = Client::connect_with_io_timeout(&dir, Duration::from_millis(100)).unwrap();
    let err = client.presence("a").unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(
        err.to_string().contains("did not answer within 100 ms"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_idle_connection_the_server_closed_is_reopened() {
    let dir = temp_run_dir();
    fake_shard(&dir, 0, 2, |request| match request {
        Request::Presence { user, .. } if user == "bye" => match normal(request) {
            Answer::Send(reply) => Answer::SendAndClose(reply),
            other => other,
        },
        _ => normal(request),
    });
    let mut client = quick_client(&dir);
    assert!(client.presence("bye").unwrap().online);
    // Give the close time to land, so the write below would hit it.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(client.push(&["a"], "1").unwrap().delivered, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn status_gaps_count_by_the_highest_shard_but_repeats_are_refused() {
    let fake_status = |numbers: Vec<u32>| {
        let dir = temp_run_dir();
        fake_shard(&dir, 0, 1, move |request| {
            let Request::Status { id } = request else {
                return Answer::Silent;
            };
            let shards = numbers
                .iter()
                .map(|&shard| ShardStatus {
                    shard,
                    connections: 0,
                    users_online: 0,
                    mailboxes: 0,
                })
                .collect();
            Answer::Send(Reply::Status { id: *id, shards })
        });
        dir
    };
    // Shard 1 did not answer the server in time: still 3 shards.
    let dir = fake_status(vec![2, 0]);
    assert_eq!(quick_client(&dir).shard_count(), 3);
    std::fs::remove_dir_all(&dir).unwrap();

    for (numbers, listed) in [
        (vec![0, 1, 1], "[0, 1, 1]"),
        (vec![], "[]"),
        (vec![0, SHARDS_MAX as u32], "[0, 1024]"),
    ] {
        let dir = fake_status(numbers);
        let err = Client::connect(&dir).err().unwrap().to_string();
        assert!(
            err.contains(&format!("lists shards {listed}; expected")),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

// ---- a server that closes with requests unanswered (a drain, an upgrade) ----

/// Serves one connection on `listener`: answers the first `answer_first`
/// push requests it reads (others normally), then closes with the rest of
/// what it read unanswered, as a draining server drops what it did not
/// process. Returns the users of every push it answered, in order.
fn serve_then_close(listener: &UnixListener, answer_first: Option<usize>) -> Vec<String> {
    let (mut stream, _) = listener.accept().unwrap();
    let mut splitter = wire::FrameSplitter::default();
    let mut buf = [0u8; 4096];
    let mut answered = Vec::new();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return answered,
            Ok(n) => n,
        };
        let mut requests = Vec::new();
        splitter
            .feed(&buf[..n], FRAME_BODY_BYTES_MAX_DEFAULT, |body| {
                requests.push(wire::decode_request(body).unwrap())
            })
            .unwrap();
        for request in requests {
            if let Request::PushOnce { users, .. } = &request {
                if answer_first.is_some_and(|k| answered.len() >= k) {
                    return answered; // closes with the rest unanswered
                }
                answered.push(users[0].clone());
            }
            if let Answer::Send(reply) = normal(&request) {
                stream.write_all(&wire::encode_reply(&reply)).unwrap();
            }
        }
    }
}

#[test]
fn a_close_with_requests_unanswered_resends_exactly_those_in_order() {
    let dir = temp_run_dir();
    let listener = UnixListener::bind(shard_socket_path(&dir, 0)).unwrap();
    let server = std::thread::spawn(move || {
        // Status, then 300 pushes answered of those read; then a successor
        // on the same socket answers everything.
        let first = serve_then_close(&listener, Some(300));
        let second = serve_then_close(&listener, None);
        (first, second)
    });
    let mut client = quick_client(&dir);
    let items = (0..2_000).map(|i| (vec![format!("u{i}")], i.to_string()));
    let outcome = client.push_many(items).unwrap();
    assert_eq!(outcome.delivered, 2_000);
    assert_eq!(client.reconnects(), 1);
    drop(client);
    let (first, second) = server.join().unwrap();
    let all: Vec<String> = first.into_iter().chain(second).collect();
    let expected: Vec<String> = (0..2_000).map(|i| format!("u{i}")).collect();
    assert_eq!(all, expected, "each push processed once, in order");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_single_push_is_resent_after_a_close_without_its_reply() {
    let dir = temp_run_dir();
    let listener = UnixListener::bind(shard_socket_path(&dir, 0)).unwrap();
    let server = std::thread::spawn(move || {
        let first = serve_then_close(&listener, Some(0));
        let second = serve_then_close(&listener, None);
        (first, second)
    });
    let mut client = quick_client(&dir);
    assert_eq!(client.push(&["a"], "1").unwrap().delivered, 1);
    drop(client);
    let (first, second) = server.join().unwrap();
    assert!(first.is_empty());
    assert_eq!(second, ["a"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_socket_that_cannot_be_reopened_fails_with_what_was_unanswered() {
    let dir = temp_run_dir();
    let socket = shard_socket_path(&dir, 0);
    let listener = UnixListener::bind(&socket).unwrap();
    let server = std::thread::spawn(move || {
        let first = serve_then_close(&listener, Some(0));
        // Nobody serves the path any more.
        std::fs::remove_file(&socket).unwrap();
        first
    });
    let mut client = quick_client(&dir);
    let err = client.push(&["a"], "1").unwrap_err();
    assert!(
        matches!(err, ClientError::Reconnect { unanswered: 1, .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("closed with 1 requests unanswered"));
    server.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
