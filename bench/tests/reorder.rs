//! A server that delivers a user's pushes out of order fails the run: a
//! stand-in peer swaps every two pushes before sending them, and
//! `pushgate-bench homing` must count the reordering and exit 1 (the CI
//! bench smoke relies on it).

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::{Message, WebSocket};

type Clients = Arc<Mutex<HashMap<String, WebSocket<TcpStream>>>>;

/// Speaks the peer protocol (bench/peers/README.md), but holds each push
/// back and sends it after the next one.
fn swapping_peer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let clients: Clients = Arc::default();
    std::thread::spawn(move || {
        // Bounded by the test process's life.
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let clients = clients.clone();
            std::thread::spawn(move || serve(stream, &clients));
        }
    });
    addr
}

#[allow(clippy::result_large_err)] // tungstenite's callback type fixes it
fn serve(stream: TcpStream, clients: &Clients) {
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        path = req.uri().to_string();
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
        return;
    };
    if let Some(user) = path.strip_prefix("/ws?user=") {
        let welcome = format!(r#"{{"type":"welcome","user":"{user}"}}"#);
        ws.send(Message::text(welcome)).unwrap();
        clients.lock().unwrap().insert(user.to_string(), ws);
        return;
    }
    let mut held: Option<(Vec<String>, String)> = None;
    // Bounded by the control connection's life.
    while let Ok(message) = ws.read() {
        let Message::Text(text) = message else {
            continue;
        };
        let (head, payload) = text.split_once('\n').unwrap();
        let words: Vec<&str> = head.split(' ').collect();
        let users: Vec<String> = words[2].split(',').map(str::to_string).collect();
        let delivered = users.len();
        let push = (users, payload.to_string());
        match held.take() {
            None => held = Some(push),
            Some(earlier) => {
                let mut clients = clients.lock().unwrap();
                for (users, payload) in [push, earlier] {
                    for user in &users {
                        if let Some(c) = clients.get_mut(user) {
                            c.send(Message::text(payload.clone())).unwrap();
                        }
                    }
                }
            }
        }
        ws.send(Message::text(format!("{} {delivered}", words[1])))
            .unwrap();
    }
}

#[test]
fn a_reordering_server_fails_the_homing_run() {
    let addr = swapping_peer();
    let json = std::env::temp_dir().join(format!(
        "pushgate-bench-reorder-{}.json",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate-bench"))
        .args(["homing", "--target", &addr, "--protocol", "peer"])
        .args(["--server-pid", &std::process::id().to_string()])
        .args([
            "--sources",
            "127.0.0.2-127.0.0.5",
            "--conns",
            "8",
            "--fanout",
            "8",
        ])
        .args(["--duration-s", "0.3", "--warmup-s", "0", "--drain-s", "2"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(r["reordered"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["ok"], false);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_file(&json);
}
