//! A stand-in pushgate built on tungstenite, shared by the integration tests.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http;
use tungstenite::{Message, WebSocket};

pub const WELCOME: &str = r#"{"type":"welcome","user":"x","epoch":1,"seq":0}"#;
/// No test may hang: the stand-in gives up on a silent peer after this.
pub const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Upgrade (401 without an Authorization header) and send the welcome.
    Welcome,
    /// Welcome, then ping and wait for the matching pong.
    WelcomeThenPing,
    /// Refuse the upgrade with 401.
    Reject,
    /// Accept TCP and never answer.
    Silent,
}

/// What the stand-in saw.
#[derive(Default)]
pub struct Seen {
    pub authorizations: Vec<String>,
    pub peer_ips: BTreeSet<Ipv4Addr>,
    pub pongs_matching: usize,
}

pub struct StandIn {
    pub addr: SocketAddrV4,
    pub release: mpsc::Sender<()>,
    pub handle: JoinHandle<Seen>,
}

impl StandIn {
    /// Serves `conns` connections one after another, then keeps them open
    /// until released.
    // tungstenite's `Callback` fixes the closure's large `ErrorResponse`.
    #[allow(clippy::result_large_err)]
    pub fn start(conns: usize, behaviour: Behaviour) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = match listener.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("not v4: {other}"),
        };
        let (release, released) = mpsc::channel::<()>();
        let handle = thread::spawn(move || {
            let mut seen = Seen::default();
            let mut open: Vec<WebSocket<TcpStream>> = Vec::new();
            let mut silent: Vec<TcpStream> = Vec::new();
            for i in 0..conns {
                let (stream, peer) = listener.accept().unwrap();
                if let std::net::SocketAddr::V4(peer) = peer {
                    seen.peer_ips.insert(*peer.ip());
                }
                stream.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
                if behaviour == Behaviour::Silent {
                    silent.push(stream);
                    continue;
                }
                let mut authorization = None;
                let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                    authorization = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    if behaviour == Behaviour::Reject || authorization.is_none() {
                        let refusal = http::Response::builder()
                            .status(http::StatusCode::UNAUTHORIZED)
                            .body(None)
                            .unwrap();
                        return Err(refusal);
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
                    continue;
                };
                seen.authorizations.extend(authorization);
                ws.send(Message::text(WELCOME)).unwrap();
                if behaviour == Behaviour::WelcomeThenPing {
                    let payload = format!("ping-{i}");
                    ws.send(Message::Ping(payload.clone().into_bytes().into()))
                        .unwrap();
                    // Bounded by the read timeout: a missing pong fails the read.
                    loop {
                        match ws.read() {
                            Ok(Message::Pong(p)) => {
                                if p.as_ref() == payload.as_bytes() {
                                    seen.pongs_matching += 1;
                                }
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => break,
                        }
                    }
                }
                open.push(ws);
            }
            let _ = released.recv_timeout(SERVER_IO_TIMEOUT);
            drop(open);
            drop(silent);
            seen
        });
        StandIn {
            addr,
            release,
            handle,
        }
    }

    pub fn finish(self) -> Seen {
        let _ = self.release.send(());
        self.handle.join().unwrap()
    }
}

/// A secret file as the server writes it: 64 hex characters and a newline.
pub fn secret_file(name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "pushgate-bench-{}-{name}.secret",
        std::process::id()
    ));
    std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
    path
}
