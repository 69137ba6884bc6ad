//! `peer-tokio-tungstenite`: the idiomatic Rust WebSocket server that
//! pushgate is compared with — one tokio task per connection, an unbounded
//! mpsc channel per connection, a registry `user → sender` under a mutex.
//!
//! It speaks the bench's peer protocol (bench/peers/README.md):
//!
//! - `GET /ws?user=<id>` upgrades a client; the server sends
//!   `{"type":"welcome","user":"<id>"}` once the user is registered, then
//!   only what is pushed to it.
//! - `GET /control` upgrades the publisher's control connection. Each text
//!   message is a command, answered in order with `<id> <delivered>`:
//!   `B <id>\n<payload>` sends payload to every client;
//!   `P <id> <user>,<user>,…\n<payload>` sends it to each listed user.
//!
//! `--read-buffer-bytes 4096` is the "4 KiB read buffers" configuration;
//! without it tungstenite's defaults (128 KiB read buffer) apply.
//! `--backlog N` sets the listen backlog (tokio's `TcpListener::bind` uses
//! 1,024); the kernel caps it at net.core.somaxconn. The runtime has one
//! worker thread per core (tokio's default) unless `--threads` says.
//!
//! Runs until SIGTERM/SIGINT (the default action: the process just exits).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Registry = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>;

struct Args {
    listen: SocketAddr,
    read_buffer_bytes: Option<usize>,
    threads: Option<usize>,
    backlog: u32,
}

/// What `TcpListener::bind` would use.
const BACKLOG_DEFAULT: u32 = 1024;

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:8090".parse().expect("valid default"),
        read_buffer_bytes: None,
        threads: None,
        backlog: BACKLOG_DEFAULT,
    };
    let mut it = std::env::args().skip(1);
    // Bounded by the argument count.
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let text = value()?;
                let addr: SocketAddr = text.parse().map_err(|e| format!("--listen {text}: {e}"))?;
                if !addr.ip().is_loopback() {
                    return Err(format!("--listen {addr}: loopback only"));
                }
                args.listen = addr;
            }
            "--read-buffer-bytes" => {
                let n: usize = value()?
                    .parse()
                    .map_err(|e| format!("--read-buffer-bytes: {e}"))?;
                args.read_buffer_bytes = (n > 0).then_some(n);
            }
            "--backlog" => {
                let n: u32 = value()?.parse().map_err(|e| format!("--backlog: {e}"))?;
                if n == 0 {
                    return Err("--backlog: want at least 1".to_string());
                }
                args.backlog = n;
            }
            "--threads" => {
                let n: usize = value()?.parse().map_err(|e| format!("--threads: {e}"))?;
                args.threads = (n > 0).then_some(n);
            }
            "-h" | "--help" => {
                println!(
                    "peer-tokio-tungstenite [--listen 127.0.0.1:PORT] [--read-buffer-bytes N] [--threads N] [--backlog N]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("peer-tokio-tungstenite: {message}");
            std::process::exit(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = args.threads {
        builder.worker_threads(n);
    }
    let runtime = builder.build().expect("tokio runtime");
    if let Err(e) = runtime.block_on(serve(args)) {
        eprintln!("peer-tokio-tungstenite: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: Args) -> std::io::Result<()> {
    let socket = if args.listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As TcpListener::bind does, but with the backlog asked for.
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    let listener: TcpListener = socket.listen(args.backlog)?;
    let mut config = WebSocketConfig::default();
    if let Some(n) = args.read_buffer_bytes {
        config = config.read_buffer_size(n);
    }
    // The address on stdout (port 0 picks one), the rest on stderr.
    let local = listener.local_addr()?;
    println!("listening {local}");
    eprintln!(
        "peer-tokio-tungstenite listening on {local} (read buffer {} B, backlog {})",
        config.read_buffer_size, args.backlog
    );
    let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
    // Bounded by the process's life: the bench stops it with SIGTERM.
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: say so, back off, keep serving the rest.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, registry.clone(), config));
    }
}

/// What the upgrade request asked for.
enum Route {
    Client(String),
    Control,
}

fn route(request: &Request) -> Option<Route> {
    let uri = request.uri();
    match uri.path() {
        "/control" => Some(Route::Control),
        "/ws" => uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("user="))
            .filter(|user| !user.is_empty())
            .map(|user| Route::Client(user.to_string())),
        _ => None,
    }
}

async fn connection(stream: TcpStream, registry: Registry, config: WebSocketConfig) {
    let mut routed = None;
    // tungstenite's callback type fixes the large error type.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        routed = route(request);
        if routed.is_some() {
            Ok(response)
        } else {
            let mut refusal = ErrorResponse::new(Some("want /ws?user=ID or /control".into()));
            *refusal.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            Err(refusal)
        }
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    match routed {
        Some(Route::Client(user)) => client(ws, user, registry).await,
        Some(Route::Control) => control(ws, registry).await,
        None => {}
    }
}

async fn client(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    user: String,
    registry: Registry,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    registry
        .lock()
        .expect("registry lock")
        .insert(user.clone(), tx.clone());
    let welcome = format!(r#"{{"type":"welcome","user":"{user}"}}"#);
    if ws.send(Message::text(welcome)).await.is_ok() {
        // Bounded by the connection's life.
        loop {
            tokio::select! {
                outgoing = rx.recv() => match outgoing {
                    Some(message) => {
                        if ws.send(message).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                incoming = ws.next() => match incoming {
                    // Pings are answered by tungstenite on the next write.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    let mut users = registry.lock().expect("registry lock");
    // Only our own entry: a newer connection of the same user replaced it.
    if users.get(&user).is_some_and(|t| t.same_channel(&tx)) {
        users.remove(&user);
    }
}

/// One control command: `B <id>\n<payload>` or `P <id> <u>,<u>…\n<payload>`.
fn run_command(text: &Utf8Bytes, registry: &Registry) -> Result<String, String> {
    let bytes: Bytes = Bytes::from(text.clone());
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no newline after the command line")?;
    let head = std::str::from_utf8(&bytes[..newline]).map_err(|e| e.to_string())?;
    let payload = Utf8Bytes::try_from(bytes.slice(newline + 1..)).map_err(|e| e.to_string())?;
    let mut words = head.split(' ');
    let op = words.next().unwrap_or("");
    let id = words.next().ok_or("no id")?;
    let users = registry.lock().expect("registry lock");
    let mut delivered = 0u64;
    match op {
        "B" => {
            for tx in users.values() {
                if tx.send(Message::Text(payload.clone())).is_ok() {
                    delivered += 1;
                }
            }
        }
        "P" => {
            for user in words.next().unwrap_or("").split(',') {
                if let Some(tx) = users.get(user) {
                    if tx.send(Message::Text(payload.clone())).is_ok() {
                        delivered += 1;
                    }
                }
            }
        }
        other => return Err(format!("unknown command {other:?}")),
    }
    Ok(format!("{id} {delivered}"))
}

async fn control(mut ws: tokio_tungstenite::WebSocketStream<TcpStream>, registry: Registry) {
    // Bounded by the connection's life.
    while let Some(Ok(message)) = ws.next().await {
        let reply = match message {
            Message::Text(text) => match run_command(&text, &registry) {
                Ok(reply) => reply,
                Err(why) => format!("0 error {why}"),
            },
            Message::Close(_) => break,
            _ => continue,
        };
        if ws.send(Message::text(reply)).await.is_err() {
            break;
        }
    }
}
