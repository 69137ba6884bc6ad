//! A real `pushgate serve` process for integration tests, and clients.
#![allow(dead_code)]

use pushgate::auth::{self, Secret};
use pushgate::ws;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub run_dir: PathBuf,
    pub secret: Secret,
    /// Every line the server logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

pub fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn temp_dir() -> PathBuf {
    let base = std::env::temp_dir().join(format!(
        "pushgate-test-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&base).unwrap();
    base
}

/// How [`Server::launch`] starts a server.
pub struct Launch<'a> {
    /// Flags after the defaults.
    pub extra: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
    /// The address the client and admin listeners bind (port 0).
    pub listen_ip: &'a str,
    /// A command the binary runs under, with its arguments (e.g. `ip netns
    /// exec NAME`, which execs it: the child's pid stays the server's).
    pub wrapper: &'a [&'a str],
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            extra: &[],
            env: &[],
            listen_ip: "127.0.0.1",
            wrapper: &[],
        }
    }
}

impl Server {
    /// Starts the binary on an ephemeral loopback port with extra flags.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    /// `start` with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(&Launch {
            extra,
            env,
            ..Launch::default()
        })
    }

    /// Starts the binary as `launch` says.
    pub fn launch(launch: &Launch<'_>) -> Server {
        let run_dir = temp_dir();
        let listen = format!("{}:0", launch.listen_ip);
        let (program, prefix): (&str, &[&str]) = match launch.wrapper.split_first() {
            Some((program, args)) => (program, args),
            None => (env!("CARGO_BIN_EXE_pushgate"), &[]),
        };
        let mut command = Command::new(program);
        if !launch.wrapper.is_empty() {
            command.args(prefix).arg(env!("CARGO_BIN_EXE_pushgate"));
        }
        let mut child = command
            .args(["serve", "--listen", &listen, "--admin-listen", &listen])
            .arg("--run-dir")
            .arg(&run_dir)
            .args([
                "--connections-per-shard-max",
                "2000",
                "--recv-buffer-count",
                "256",
            ])
            .args(launch.extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(launch.env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn pushgate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("ws://").nth(1) {
                        if let Some(addr) = rest.split('/').next() {
                            let _ = addr_tx.send(addr.to_string());
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let addr = match addr_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {:?}", log.lock().unwrap());
            }
        };
        let admin_addr = Self::logged_addr(&log, "admin=").expect("the admin address is logged");
        let secret = Secret::load_or_create(&run_dir, None).unwrap();
        Server {
            child,
            addr,
            admin_addr,
            run_dir,
            secret,
            log,
        }
    }

    /// The address logged after `key` (e.g. `admin=`, `console=`).
    fn logged_addr(log: &Mutex<Vec<String>>, key: &str) -> Option<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = log.lock().unwrap().iter().find_map(|line| {
                let rest = line.split(key).nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            });
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The sleeping-console listener, when started with --console-listen.
    pub fn console_addr(&self) -> SocketAddr {
        Self::logged_addr(&self.log, "console=").expect("the console address is logged")
    }

    /// One admin HTTP request; returns (status, body).
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        let mut stream = TcpStream::connect(self.admin_addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    pub fn admin_token(&self) -> String {
        auth::mint_admin(&self.secret, 600, now_unix_s())
    }

    pub fn token(&self, user: &str) -> String {
        auth::mint(&self.secret, user, 600, now_unix_s())
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits until the log has a line containing `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log_contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}: {:?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM (a drip drain) and waits for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// Sends `signal` and waits (10 s at most) for the exit status.
    pub fn signal_and_wait(mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A raw TCP client for sending exactly the bytes a test wants.
pub struct Raw {
    pub stream: TcpStream,
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An upgrade request for `path_and_query` with key [`KEY`]; `headers` are
/// whole header lines (each ending in CRLF) added after the required ones.
pub fn upgrade_request(path_and_query: &str, headers: &str) -> String {
    ws::upgrade_request("localhost", path_and_query, KEY, headers)
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Raw { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads until the peer closes; returns everything.
    pub fn read_all(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.stream.read_to_end(&mut out);
        out
    }

    /// Reads the HTTP response head (up to CRLFCRLF) and returns it.
    pub fn read_head(&mut self) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = self.stream.read(&mut byte).unwrap();
            assert!(
                n == 1,
                "closed before the response head ended: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// Upgrades with a header token and returns the welcome's JSON text.
    pub fn upgraded(server: &Server, user: &str) -> (Raw, String) {
        let mut raw = Raw::connect(server.addr);
        let token = server.token(user);
        raw.send(upgrade_request("/ws", &format!("Authorization: Bearer {token}\r\n")).as_bytes());
        let head = raw.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let (opcode, payload) = raw.read_frame();
        assert_eq!(opcode, 1);
        (raw, String::from_utf8(payload).unwrap())
    }

    /// Reads one server frame: (opcode, payload). Reads no byte past it,
    /// and fails on a frame that breaks the client's rules (a masked one).
    pub fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let mut header = Vec::with_capacity(ws::frame::FRAME_HEADER_BYTES_MAX);
        // Bounded: a header is at most 14 bytes, one read each.
        let (parsed, _) = loop {
            match ws::parse_header(&header, ws::Role::Client) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {
                    let mut byte = [0u8; 1];
                    self.stream.read_exact(&mut byte).unwrap();
                    header.push(byte[0]);
                }
                Err(e) => panic!("bad server frame header {header:02x?}: {e}"),
            }
        };
        let mut payload = vec![0; parsed.payload_len as usize];
        self.stream.read_exact(&mut payload).unwrap();
        (parsed.opcode.bits(), payload)
    }

    /// Reads frames until a close frame; returns its status code.
    pub fn read_close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.read_frame();
            if opcode == 8 {
                assert!(payload.len() >= 2, "close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

/// A masked client frame with the given first byte (FIN, RSV, opcode): the
/// codec's frame with its first byte replaced, since tests also send what
/// the codec never would (reserved bits and opcodes, long control frames).
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    ws::write_frame(
        &mut frame,
        true,
        ws::Opcode::Binary,
        payload,
        Some([0x37, 0xfa, 0x21, 0x3d]),
    );
    frame[0] = first_byte;
    frame
}

pub type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

/// A tungstenite client: upgrades with a header token (or `?token=` when
/// `via_query`), optional `since`, and returns the welcome as JSON.
pub fn ws_connect(
    server: &Server,
    user: &str,
    via_query: bool,
    since: Option<&str>,
) -> (Ws, serde_json::Value) {
    use tungstenite::client::IntoClientRequest;
    let token = server.token(user);
    let mut query = Vec::new();
    if via_query {
        query.push(format!("token={token}"));
    }
    if let Some(since) = since {
        query.push(format!("since={since}"));
    }
    let url = format!("ws://{}/ws?{}", server.addr, query.join("&"));
    let mut request = url.into_client_request().unwrap();
    if !via_query {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (mut ws, response) = tungstenite::connect(request).expect("upgrade");
    assert_eq!(response.status(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    let welcome = match ws.read().unwrap() {
        tungstenite::Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected welcome, got {other:?}"),
    };
    (ws, welcome)
}

/// Reads the next push notification: (seq, data).
pub fn next_push(ws: &mut Ws) -> (u64, serde_json::Value) {
    loop {
        match ws.read().expect("a push") {
            tungstenite::Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["type"], "push", "{v}");
                return (v["seq"].as_u64().unwrap(), v["data"].clone());
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected a push, got {other:?}"),
        }
    }
}

/// Asserts nothing arrives within `wait`.
pub fn assert_quiet(ws: &mut Ws, wait: Duration) {
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_mut() {
        tcp.set_read_timeout(Some(wait)).unwrap();
    }
    match ws.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_mut() {
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
}
