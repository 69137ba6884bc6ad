//! Pushes to a running pushgate: `cargo run -p pushgate-client --example push -- RUN_DIR`.

use std::path::PathBuf;
use std::time::Duration;

use pushgate_client::{Client, ClientError};

fn main() -> Result<(), ClientError> {
    // The server's run directory (its `--run-dir`), where shard-<i>.sock are.
    let run_dir = PathBuf::from(std::env::args().nth(1).unwrap_or("/run/pushgate".into()));

    // Asks shard 0 for the shard count. Every read and write then gives up
    // after 2 s (the default is 10 s) with ClientError::Timeout.
    let mut client = Client::connect_with_io_timeout(&run_dir, Duration::from_secs(2))?;

    // One JSON value to every device of each user. The users are grouped by
    // home shard, and each group goes straight to its shard's socket.
    let outcome = client.push(&["alice", "bob"], r#"{"hi":1}"#)?;
    println!(
        "delivered {} (online), stored {} (offline, kept for resume), rejected {}",
        outcome.delivered, outcome.stored, outcome.rejected
    );

    // Many pushes, pipelined: up to 256 requests in flight per shard, counts summed.
    let items = (0..1000).map(|i| (vec![format!("user-{i}")], format!(r#"{{"n":{i}}}"#)));
    let outcome = client.push_many(items)?;
    println!("push_many: {} stored", outcome.stored);

    // Every connected user, each device once.
    client.broadcast(r#""maintenance at 03:00""#)?;

    let presence = client.presence("alice")?;
    println!(
        "alice: online {} on {} devices",
        presence.online, presence.devices
    );

    for shard in client.status()? {
        println!(
            "shard {}: {} connections, {} users online, {} mailboxes",
            shard.shard, shard.connections, shard.users_online, shard.mailboxes
        );
    }
    Ok(())
}
