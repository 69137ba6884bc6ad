//! The publisher side of the push scenarios: pushgate's own client library
//! over its Unix sockets, or the peers' control WebSocket.
//!
//! Peer control protocol (bench/peers/README.md): `GET /control` upgrade,
//! then text commands answered in order with `<id> <delivered>`:
//! `B <id>\n<payload>` (broadcast) and `P <id> <user>,<user>,…\n<payload>`
//! (multi-user push).

use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use pushgate::ws::{self, Opcode};
use pushgate_client::Client;

use crate::paced::PacedPushgate;
use crate::proto;
use crate::sources::parse_target;
use crate::sys;
use crate::token::user_id;
use crate::wsclient::Rng;

/// Commands a peer publisher keeps in flight, as pushgate's `push_many`
/// keeps 256 requests per shard.
pub const CONTROL_WINDOW: usize = 256;
const CONTROL_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const CONTROL_FRAME_MAX_BYTES: u64 = 1 << 20;

/// Server totals summed over the replies.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Totals {
    pub delivered: u64,
    pub stored: u64,
    pub rejected: u64,
}

/// A push the scenario wants sent: user indices and the JSON data.
pub struct Item {
    pub users: Vec<u32>,
    pub data: String,
}

pub enum Publisher {
    /// pushgate's client library, and the run directory its sockets are in.
    Pushgate {
        client: Box<Client>,
        run_dir: PathBuf,
    },
    /// One control connection per server process (or thread): every
    /// command goes to each, and their counts add up.
    Peer(Vec<ControlConn>),
}

impl Publisher {
    /// pushgate: its run directory (push sockets); peers: the control
    /// addresses, one per process that takes commands.
    pub fn connect(
        protocol: proto::Protocol,
        run_dir: Option<&Path>,
        controls: &[String],
    ) -> Result<Publisher, String> {
        match protocol {
            proto::Protocol::Pushgate | proto::Protocol::PushgateDeflate => {
                let run_dir =
                    run_dir.ok_or("pushgate's publisher needs --run-dir (its push sockets)")?;
                Client::connect(run_dir)
                    .map(|c| Publisher::Pushgate {
                        client: Box::new(c),
                        run_dir: run_dir.to_owned(),
                    })
                    .map_err(|e| e.to_string())
            }
            _ => {
                if controls.is_empty() {
                    return Err("no control address".to_string());
                }
                let conns = controls
                    .iter()
                    .map(|c| ControlConn::connect(parse_target(c)?))
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Publisher::Peer(conns))
            }
        }
    }

    /// Sends `data` to every connected client; returns what the server said
    /// it delivered.
    pub fn broadcast(&mut self, data: &str) -> Result<u64, String> {
        match self {
            Publisher::Pushgate { client, .. } => client
                .broadcast(data)
                .map(|o| o.delivered)
                .map_err(|e| e.to_string()),
            Publisher::Peer(conns) => {
                let text = format!("B 0\n{data}");
                for conn in conns.iter_mut() {
                    conn.send(&text)?;
                }
                finish_all(conns).map(|t| t.delivered)
            }
        }
    }

    /// Sends every item, pipelined (pushgate: `Client::push_many`, up to 256
    /// requests in flight per shard; peers: up to [`CONTROL_WINDOW`] per
    /// control connection).
    pub fn push_pipelined(
        &mut self,
        items: &mut dyn Iterator<Item = Item>,
    ) -> Result<Totals, String> {
        match self {
            Publisher::Pushgate { client, .. } => {
                let requests = items.map(|item| (names(&item.users), item.data));
                client
                    .push_many(requests)
                    .map(|o| Totals {
                        delivered: o.delivered,
                        stored: o.stored,
                        rejected: o.rejected,
                    })
                    .map_err(|e| e.to_string())
            }
            Publisher::Peer(conns) => {
                let mut text = String::new();
                // Bounded by the iterator, which the scenario bounds in time.
                for item in items {
                    push_text(&mut text, &item);
                    for conn in conns.iter_mut() {
                        conn.send(&text)?;
                    }
                }
                finish_all(conns)
            }
        }
    }

    /// Sends each item the moment the iterator yields it (no batching), for
    /// paced runs, keeping every user's pushes in order. Peers: a command per
    /// item on each control connection, replies read as they come.
    /// pushgate: [`PacedPushgate`], one request per home shard written at
    /// once on that shard's socket, replies read by a thread per shard.
    pub fn push_each(&mut self, items: &mut dyn Iterator<Item = Item>) -> Result<Totals, String> {
        match self {
            Publisher::Pushgate { client, run_dir } => {
                let mut paced = PacedPushgate::connect(run_dir, client.shard_count())?;
                // Bounded by the iterator.
                for item in items {
                    paced.send(&names(&item.users), &item.data)?;
                }
                paced.finish()
            }
            Publisher::Peer(_) => self.push_pipelined(items),
        }
    }
}

/// Waits for every control connection's replies; sums their totals.
fn finish_all(conns: &mut [ControlConn]) -> Result<Totals, String> {
    let mut totals = Totals::default();
    for conn in conns.iter_mut() {
        let t = conn.finish()?;
        totals.delivered += t.delivered;
        totals.stored += t.stored;
        totals.rejected += t.rejected;
    }
    Ok(totals)
}

/// `P 0 bench-1,bench-2,…\n<data>` into `text` (ids are not used: replies
/// come back in order).
fn push_text(text: &mut String, item: &Item) {
    use std::fmt::Write as _;
    text.clear();
    text.push_str("P 0 ");
    for (i, &user) in item.users.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(text, "bench-{user}");
    }
    text.push('\n');
    text.push_str(&item.data);
}

fn names(users: &[u32]) -> Vec<String> {
    users.iter().map(|&i| user_id(u64::from(i))).collect()
}

/// A blocking control WebSocket to a peer, with a reader thread that turns
/// replies into counts.
pub struct ControlConn {
    stream: TcpStream,
    replies: Receiver<Result<u64, String>>,
    outstanding: usize,
    totals: Totals,
    frame: Vec<u8>,
    rng: Rng,
}

impl ControlConn {
    pub fn connect(addr: SocketAddrV4) -> Result<ControlConn, String> {
        let stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(10))
            .map_err(|e| format!("control {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut seed = [0u8; 8];
        sys::random_bytes(&mut seed).map_err(|e| e.to_string())?;
        let mut rng = Rng::new(u64::from_le_bytes(seed));
        let key = rng.websocket_key();
        let request = proto::plain_upgrade_request(&addr.to_string(), &key, "/control");
        (&stream)
            .write_all(&request)
            .map_err(|e| format!("control upgrade: {e}"))?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        // Bounded: the head is at most RESPONSE_HEAD_MAX_BYTES, and each
        // read adds ≥1 byte or fails (10 s timeout).
        let head_bytes = loop {
            match ws::parse_response_head(&head) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(e) => return Err(format!("control upgrade refused: {e:?}")),
            }
            let n = (&stream)
                .read(&mut chunk)
                .map_err(|e| format!("control upgrade: {e}"))?;
            if n == 0 {
                return Err("control upgrade: connection closed".to_string());
            }
            head.extend_from_slice(&chunk[..n]);
        };
        if !ws::accept_matches(&head[..head_bytes], &key) {
            return Err("control upgrade: bad Sec-WebSocket-Accept".to_string());
        }
        let leftover = head[head_bytes..].to_vec();
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        let reader = stream.try_clone().map_err(|e| e.to_string())?;
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || read_replies(reader, leftover, tx));
        Ok(ControlConn {
            stream,
            replies,
            outstanding: 0,
            totals: Totals::default(),
            frame: Vec::new(),
            rng,
        })
    }

    /// Writes one command; waits for replies while the window is full.
    fn send(&mut self, text: &str) -> Result<(), String> {
        // Bounded: each wait answers one of at most CONTROL_WINDOW commands.
        while self.outstanding >= CONTROL_WINDOW {
            self.wait_one()?;
        }
        self.frame.clear();
        let mask = Some(self.rng.mask());
        ws::write_frame(&mut self.frame, true, Opcode::Text, text.as_bytes(), mask);
        (&self.stream)
            .write_all(&self.frame)
            .map_err(|e| format!("control write: {e}"))?;
        self.outstanding += 1;
        Ok(())
    }

    fn wait_one(&mut self) -> Result<(), String> {
        match self.replies.recv_timeout(CONTROL_REPLY_TIMEOUT) {
            Ok(Ok(delivered)) => {
                self.outstanding -= 1;
                self.totals.delivered += delivered;
                Ok(())
            }
            Ok(Err(why)) => Err(why),
            Err(_) => Err(format!(
                "control: no reply within {CONTROL_REPLY_TIMEOUT:?} ({} outstanding)",
                self.outstanding
            )),
        }
    }

    /// Waits for every outstanding reply; returns the totals since the last
    /// call.
    fn finish(&mut self) -> Result<Totals, String> {
        // Bounded by the window.
        while self.outstanding > 0 {
            self.wait_one()?;
        }
        Ok(std::mem::take(&mut self.totals))
    }
}

impl Drop for ControlConn {
    fn drop(&mut self) {
        // Ends the reader thread too.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Parses `<id> <delivered>` replies until the connection ends.
fn read_replies(mut stream: TcpStream, mut buf: Vec<u8>, tx: mpsc::Sender<Result<u64, String>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    // Bounded by the connection: ends at EOF, an error, or a closed channel.
    loop {
        let mut used = 0;
        // Bounded: each pass consumes one frame of `buf`.
        loop {
            match ws::parse_server_frame(&buf[used..], CONTROL_FRAME_MAX_BYTES) {
                Ok(Some(frame)) => {
                    used += frame.frame_bytes;
                    if frame.opcode != Opcode::Text {
                        continue;
                    }
                    let text = String::from_utf8_lossy(frame.payload);
                    let reply = match text.split_once(' ') {
                        Some((_, rest)) if rest.starts_with("error") => {
                            Err(format!("peer refused a command: {rest}"))
                        }
                        Some((_, n)) => n
                            .trim()
                            .parse::<u64>()
                            .map_err(|_| format!("control reply {text:?}")),
                        None => Err(format!("control reply {text:?}")),
                    };
                    if tx.send(reply).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(format!("control: {}", e.reason)));
                    return;
                }
            }
        }
        buf.drain(..used);
        match stream.read(&mut chunk) {
            Ok(0) => {
                let _ = tx.send(Err("control connection closed by the peer".to_string()));
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Err(format!("control read: {e}")));
                return;
            }
        }
    }
}
