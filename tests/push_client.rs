//! The push client library against the real gateway, started in this
//! process (milliseconds): routing straight to home shards, sums, windowing,
//! and what is refused before sending. The client's own tests (pure parts,
//! a fake shard socket for what the real server never does) live with it in
//! `client/`; these need the server, which the client crate does not depend
//! on.

use pushgate::auth::Secret;
use pushgate::config::Config;
use pushgate::push::client::{
    group_by_home_shard, shard_socket_path, Client, ClientError, PushOutcome,
    FRAME_BODY_BYTES_MAX_DEFAULT, PUSH_WINDOW_REQUESTS_DEFAULT,
};
use pushgate::push::wire::{self, Reply, Request};
use pushgate::route::home_shard;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn temp_run_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pgpc-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn quick_client(dir: &Path) -> Client {
    Client::connect_with_io_timeout(dir, Duration::from_secs(5)).unwrap()
}

/// One request on a fresh socket to `shard`, whichever shard is the home of
/// its users: what the client never does.
fn round_trip(run_dir: &Path, shard: usize, request: &Request) -> Reply {
    let mut socket = UnixStream::connect(shard_socket_path(run_dir, shard)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.write_all(&wire::encode_request(request)).unwrap();
    let mut length = [0u8; wire::LENGTH_BYTES];
    socket.read_exact(&mut length).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(length) as usize];
    socket.read_exact(&mut body).unwrap();
    wire::decode_reply(&body).unwrap()
}

/// `pushgate serve` minus the signal handling: the real shards and gateway
/// on a fresh run dir. Stopped, and the dir removed, on drop.
struct RealGateway {
    runtime: Option<shard::Runtime>,
    run_dir: PathBuf,
}

impl RealGateway {
    fn start(shards: usize) -> RealGateway {
        RealGateway::start_with_frame_limit(shards, Config::default().push_frame_bytes_max)
    }

    fn start_with_frame_limit(shards: usize, push_frame_bytes_max: usize) -> RealGateway {
        let run_dir = temp_run_dir();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            shards,
            run_dir: run_dir.clone(),
            push_frame_bytes_max,
            // Small rings and tables: these tests open a handful of sockets.
            connections_per_shard_max: 64,
            recv_buffer_count: 64,
            ring_sq_entries: 64,
            ring_cq_entries: 256,
            ..Config::default()
        };
        let secret = Secret::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec());
        let (runtime, _control) =
            pushgate::server::start(&config, secret).expect("the gateway starts");
        RealGateway {
            runtime: Some(runtime),
            run_dir,
        }
    }

    /// Messages each shard has taken from the others so far. A request the
    /// client sent to the shard holding its users costs none; one sent
    /// anywhere else is forwarded and answered through the mesh.
    fn mesh_messages_in(&self) -> Vec<u64> {
        let runtime = self.runtime.as_ref().expect("running until dropped");
        runtime
            .stats()
            .iter()
            .map(|s| s.snapshot().mesh_messages_in_total)
            .collect()
    }
}

impl Drop for RealGateway {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.stopper().stop();
            let _ = runtime.join();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

#[test]
fn pushes_and_presence_go_straight_to_home_shards_and_counts_sum() {
    let gateway = RealGateway::start(3);
    let mut client = quick_client(&gateway.run_dir);
    assert_eq!(client.shard_count(), 3);
    // Taken after connect: its status request fans out through the mesh.
    let mesh_before = gateway.mesh_messages_in();

    let users: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    assert_eq!(
        group_by_home_shard(users.iter().map(String::as_str), 3).len(),
        3,
        "30 users reach every shard"
    );
    let mut refs: Vec<&str> = users.iter().map(String::as_str).collect();
    refs.push(""); // not a user ID: its home shard rejects it
    let outcome = client.push(&refs, r#"{"n":1}"#).unwrap();
    let counts = (outcome.delivered, outcome.stored, outcome.rejected);
    assert_eq!(counts, (0, 30, 1), "all offline, one invalid");
    let presence = client.presence("user-1").unwrap();
    assert_eq!((presence.online, presence.devices), (false, 0));
    assert_eq!(
        gateway.mesh_messages_in(),
        mesh_before,
        "every part went to the shard holding its users: nothing was forwarded"
    );

    // The check above can fail: a presence request sent to a shard that is
    // not the user's home is forwarded, and the counters move.
    let away = users.iter().find(|u| home_shard(u, 3) != 0).unwrap();
    let request = Request::Presence {
        id: 1,
        user: away.clone(),
    };
    assert!(matches!(
        round_trip(&gateway.run_dir, 0, &request),
        Reply::Presence { online: false, .. }
    ));
    assert_ne!(gateway.mesh_messages_in(), mesh_before);

    let status = client.status().unwrap();
    let numbers: Vec<u32> = status.iter().map(|s| s.shard).collect();
    assert_eq!(numbers, [0, 1, 2]);
    assert_eq!(status.iter().map(|s| s.mailboxes).sum::<u64>(), 30);
}

#[test]
fn push_many_fills_its_window_and_sums_every_reply() {
    let gateway = RealGateway::start(2);
    let mut client = quick_client(&gateway.run_dir);
    let mesh_before = gateway.mesh_messages_in();
    // Enough items that each shard's window fills several times over.
    let item_count = 4 * PUSH_WINDOW_REQUESTS_DEFAULT;
    let mut items: Vec<(Vec<String>, String)> = (0..item_count)
        .map(|i| {
            let users = (0..i % 4 + 1).map(|j| format!("u{i}-{j}")).collect();
            (users, format!("{{\"i\":{i}}}"))
        })
        .collect();
    items.insert(7, (Vec::new(), "1".to_owned())); // no users: skipped
    items.push((vec!["u0-0".to_owned(), "".to_owned()], "2".to_owned()));
    let distinct_users = items[..items.len() - 1]
        .iter()
        .map(|(users, _)| users.len() as u64)
        .sum::<u64>();

    let outcome = client.push_many(items).unwrap();
    let counts = (outcome.delivered, outcome.stored, outcome.rejected);
    assert_eq!(counts, (0, distinct_users + 1, 1));
    assert_eq!(gateway.mesh_messages_in(), mesh_before, "nothing forwarded");
    // Were a reply to a push left unread, this would read it as the status
    // reply and fail on its id.
    let status = client.status().unwrap();
    let mailboxes: u64 = status.iter().map(|s| s.mailboxes).sum();
    assert_eq!(mailboxes, distinct_users, "each user stored for");
    assert_eq!(
        client.push_many(Vec::new()).unwrap(),
        PushOutcome::default()
    );
}

#[test]
fn bad_data_and_oversized_pushes_send_nothing() {
    let gateway = RealGateway::start(1);
    let mut client = quick_client(&gateway.run_dir);
    // Each refused here, by the client (InvalidData, TooLarge), not by the
    // server (Server); each names its own user, so a mailbox shows any that
    // went out.
    let err = client.push(&["oops"], "{oops").unwrap_err();
    assert!(matches!(err, ClientError::InvalidData(_)), "{err}");
    assert!(matches!(
        client.broadcast(""),
        Err(ClientError::InvalidData(_))
    ));

    let huge = format!("\"{}\"", "x".repeat(FRAME_BODY_BYTES_MAX_DEFAULT));
    let err = client.push(&["huge"], &huge).unwrap_err();
    assert!(err.to_string().contains("send a smaller payload"), "{err}");
    client.set_frame_body_bytes_max(2000);
    let err = client.broadcast(&huge[..3000]).unwrap_err(); // not JSON: size first
    let message = err.to_string();
    assert!(message.contains("is 3000 bytes, over the push socket's frame limit of 2000"));
    client.set_frame_body_bytes_max(FRAME_BODY_BYTES_MAX_DEFAULT);

    let many_users: Vec<String> = (0..100_000).map(|i| format!("user-number-{i}")).collect();
    let refs: Vec<&str> = many_users.iter().map(String::as_str).collect();
    let err = client.push(&refs, "1").unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("split the users"), "{err}");

    let err = client
        .push_many(vec![
            (vec!["a".to_owned()], "1".to_owned()),
            (vec!["b".to_owned()], "nope".to_owned()),
            (vec!["c".to_owned()], "1".to_owned()),
        ])
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("push 2: data is not one JSON value"),
        "{message}"
    );
    assert!(
        message.ends_with("the 1 pushes before it were sent)"),
        "{message}"
    );

    // Only push_many's first item reached the server: "a" has a mailbox.
    let status = client.status().unwrap();
    assert_eq!(status[0].mailboxes, 1);
    assert_eq!(client.presence("a").unwrap().devices, 0);
}

#[test]
fn a_frame_over_the_servers_limit_gets_the_servers_reason_then_the_client_reconnects() {
    let gateway = RealGateway::start_with_frame_limit(1, 4096);
    let mut client = quick_client(&gateway.run_dir);
    // The client was not told the server's limit, so it sends the frame; the
    // server cannot read it, so it answers with an error of id 0 (it cannot
    // name the request) and hangs up. That error is still the answer.
    let big = format!("\"{}\"", "x".repeat(10_000));
    let err = client.push(&["a"], &big).unwrap_err();
    assert!(
        matches!(&err, ClientError::Server(m) if m.contains("bad push frame")),
        "{err}"
    );
    assert_eq!(client.push(&["a"], "1").unwrap().stored, 1);
}
