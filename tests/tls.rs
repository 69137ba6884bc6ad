//! TLS on `tls_listen` against the real binary: a Rust client over rustls
//! (WebSocket, SSE, the SDK over https), Python `websockets` and Node `ws`
//! over wss, bad input on the TLS port (plain HTTP, a record that is not
//! TLS, a TLS 1.2-only client), a burst of handshakes, certificate reload
//! on SIGHUP with a connection kept across it, and start-up refusals;
//! then a hostile probe, each part beside a plain and a TLS bystander that
//! keep getting pushes: a flood of ClientHellos that never finish, a
//! slowloris ClientHello, a silent half record, malformed records after
//! the handshake, a TLS client that stops reading, and close_notify.
//! Test certificates are made here with `rcgen`.

mod common;

use common::Server;
use pushgate::push::client::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

type TlsStream = StreamOwned<ClientConnection, TcpStream>;
type TlsWs = tungstenite::WebSocket<TlsStream>;

/// A self-signed certificate for localhost / 127.0.0.1 in a temp dir.
struct TestCert {
    dir: PathBuf,
    cert_pem: String,
}

impl TestCert {
    fn new(name: &str) -> TestCert {
        let dir = std::env::temp_dir().join(format!(
            "pushgate-tls-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = TestCert {
            dir,
            cert_pem: String::new(),
        };
        cert.regenerate()
    }

    /// A new key and certificate in the same files.
    fn regenerate(mut self) -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        self.cert_pem = made.cert.pem();
        std::fs::write(self.cert_file(), &self.cert_pem).unwrap();
        std::fs::write(self.key_file(), made.signing_key.serialize_pem()).unwrap();
        self
    }

    fn cert_file(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    fn key_file(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn flags(&self) -> Vec<String> {
        vec![
            "--tls-listen".into(),
            "127.0.0.1:0".into(),
            "--tls-cert-file".into(),
            self.cert_file().display().to_string(),
            "--tls-key-file".into(),
            self.key_file().display().to_string(),
        ]
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        client_config_trusting(&self.cert_pem, false)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_config_trusting(cert_pem: &str, tls12_only: bool) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn start(cert: &TestCert) -> (Server, SocketAddr) {
    let flags = cert.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(&flags);
    server.wait_log("tls_addr=");
    let addr = server
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split("tls_addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("the TLS address is logged");
    (server, addr)
}

/// A TLS connection with its handshake done (or the handshake's error).
fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsStream, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

fn wss_connect(
    server: &Server,
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    user: &str,
) -> (TlsWs, Value) {
    use tungstenite::client::IntoClientRequest;
    let stream = tls_connect(addr, config).expect("TLS handshake");
    let mut request = format!("wss://localhost:{}/ws", addr.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", server.token(user)).parse().unwrap(),
    );
    let (mut ws, response) = tungstenite::client(request, stream).expect("upgrade over TLS");
    assert_eq!(response.status(), 101);
    let welcome = match ws.read().unwrap() {
        tungstenite::Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected the welcome, got {other:?}"),
    };
    (ws, welcome)
}

fn next_push(ws: &mut TlsWs) -> (u64, Value) {
    loop {
        match ws.read().expect("a push") {
            tungstenite::Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["type"], "push", "{v}");
                return (v["seq"].as_u64().unwrap(), v["data"].clone());
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected a push, got {other:?}"),
        }
    }
}

fn push(server: &Server, user: &str, data: &str) {
    let mut client = Client::connect(&server.run_dir).expect("push client");
    let outcome = client.push(&[user], data).expect("push");
    assert_eq!(outcome.delivered, 1, "{outcome:?}");
}

/// One HTTP/1.1 GET over TLS; the response up to EOF or `until` appears.
fn https_get(addr: SocketAddr, config: Arc<ClientConfig>, path: &str, until: &str) -> String {
    let mut stream = tls_connect(addr, config).expect("TLS handshake");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    stream.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!(
                "reading {path}: {e}; so far {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
        if !until.is_empty() && String::from_utf8_lossy(&got).contains(until) {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn rust_client_websocket_sse_and_sdk_over_tls() {
    let cert = TestCert::new("rust");
    let (server, tls_addr) = start(&cert);
    let (mut ws, welcome) = wss_connect(&server, tls_addr, cert.client_config(), "alice");
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"], "alice");
    // The plain listener still speaks plain WebSocket, side by side.
    let (mut plain, _) = common::ws_connect(&server, "bob", false, None);

    push(&server, "alice", r#"{"n":1}"#);
    // Larger than one TLS record (16 KiB): sealed as several.
    let big = format!("\"{}\"", "x".repeat(50_000));
    push(&server, "alice", &big);
    push(&server, "alice", r#"{"n":3}"#);
    assert_eq!(next_push(&mut ws), (1, serde_json::json!({"n": 1})));
    let (seq, data) = next_push(&mut ws);
    assert_eq!((seq, data.as_str().map(str::len)), (2, Some(50_000)));
    assert_eq!(next_push(&mut ws), (3, serde_json::json!({"n": 3})));
    push(&server, "bob", r#"{"plain":true}"#);
    assert_eq!(
        common::next_push(&mut plain).1,
        serde_json::json!({"plain": true})
    );

    // A client message over TLS (a ping) is answered.
    ws.send(tungstenite::Message::Ping(b"hi".to_vec().into()))
        .unwrap();
    loop {
        match ws.read().unwrap() {
            tungstenite::Message::Pong(p) => {
                assert_eq!(&p[..], b"hi");
                break;
            }
            tungstenite::Message::Ping(_) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("closing over TLS: {e}"),
        }
    }

    // SSE over https.
    let token = server.token("carol");
    let sse = https_get(
        tls_addr,
        cert.client_config(),
        &format!("/sse?token={token}"),
        "\"type\":\"welcome\"",
    );
    assert!(sse.starts_with("HTTP/1.1 200 OK"), "{sse}");
    assert!(sse.contains("text/event-stream"), "{sse}");

    // The SDK over https.
    let sdk = https_get(tls_addr, cert.client_config(), "/pushgate.js", "");
    assert!(
        sdk.starts_with("HTTP/1.1 200"),
        "{}",
        &sdk[..sdk.len().min(200)]
    );
    assert!(sdk.contains("export function connect"), "the SDK's text");

    // Counted: alice's, carol's and the SDK's handshakes, at least.
    let metrics = server.admin("GET", "/metrics", None, "").1;
    let handshakes: u64 = metrics
        .lines()
        .filter(|l| l.contains("ring_tls_handshakes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(handshakes >= 3, "{metrics}");
}

#[test]
fn bad_input_on_the_tls_port_is_refused_and_harms_no_one() {
    let cert = TestCert::new("bad");
    let (server, tls_addr) = start(&cert);
    let (mut bystander, _) = wss_connect(&server, tls_addr, cert.client_config(), "bystander");

    // Plain HTTP on the TLS port: a 400 that says what to do.
    let mut raw = TcpStream::connect(tls_addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    raw.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("use https:// or wss://"), "{reply}");

    // A handshake record with garbage inside: a fatal alert, then the close.
    let mut raw = TcpStream::connect(tls_addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&[22, 3, 1, 0, 6, 1, 0, 0, 2, 0xde, 0xad])
        .unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&21), "an alert record: {reply:?}");

    // Bytes that are no TLS record at all.
    let mut raw = TcpStream::connect(tls_addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&[0xff; 64]).unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert!(reply.is_empty() || reply[0] == 21, "{reply:?}");

    // A TLS 1.2-only client: refused (the gateway speaks TLS 1.3).
    let err = tls_connect(tls_addr, client_config_trusting(&cert.cert_pem, true))
        .expect_err("TLS 1.2 is refused");
    assert!(
        err.to_lowercase().contains("protocol") || err.contains("alert"),
        "{err}"
    );

    // A client that does not trust the certificate gives up; the server logs it.
    let other = TestCert::new("other");
    assert!(tls_connect(tls_addr, other.client_config()).is_err());

    server.wait_log("TLS connection refused or ended");
    assert!(server.log_contains("plain HTTP request on the TLS port"));

    // The bystander saw none of it.
    push(&server, "bystander", r#"{"still":"here"}"#);
    assert_eq!(
        next_push(&mut bystander),
        (1, serde_json::json!({"still": "here"}))
    );
}

#[test]
fn a_burst_of_handshakes_all_complete() {
    let cert = TestCert::new("burst");
    let (server, tls_addr) = start(&cert);
    let server = Arc::new(server);
    // More ClientHellos at once than one round's handshake budget (16).
    let threads: Vec<_> = (0..48)
        .map(|i| {
            let server = server.clone();
            let config = cert.client_config();
            std::thread::spawn(move || {
                let (mut ws, welcome) = wss_connect(&server, tls_addr, config, &format!("u{i}"));
                assert_eq!(welcome["type"], "welcome");
                let _ = ws.close(None);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("every handshake completes");
    }
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_connections() {
    let cert = TestCert::new("reload");
    let first = cert.client_config();
    let (server, tls_addr) = start(&cert);
    let (mut kept, _) = wss_connect(&server, tls_addr, first.clone(), "kept");

    let cert = cert.regenerate();
    let second = cert.client_config();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    server.wait_log("TLS certificate reloaded");
    let (_new, welcome) = wss_connect(&server, tls_addr, second.clone(), "new");
    assert_eq!(welcome["type"], "welcome");
    assert!(
        tls_connect(tls_addr, first.clone()).is_err(),
        "new handshakes present the new certificate"
    );

    // A bad file keeps the old certificate, and says so.
    std::fs::write(cert.cert_file(), "not a certificate").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    server.wait_log("TLS certificate NOT reloaded");
    let (_again, welcome) = wss_connect(&server, tls_addr, second, "again");
    assert_eq!(welcome["type"], "welcome");

    // The connection made before both reloads carries on.
    push(&server, "kept", r#"{"after":"reload"}"#);
    assert_eq!(
        next_push(&mut kept),
        (1, serde_json::json!({"after": "reload"}))
    );
}

fn serve_status(args: &[&str]) -> (i32, String) {
    let run_dir = std::env::temp_dir().join(format!("pushgate-tls-start-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--run-dir")
        .arg(&run_dir)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&run_dir);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn start_up_with_a_bad_certificate_says_what_to_do() {
    let cert = TestCert::new("startup");
    let missing = cert.dir.join("missing.pem");
    let key = cert.key_file();
    let (code, err) = serve_status(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        missing.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tls_cert_file") && err.contains("PEM"),
        "{err}"
    );

    // A key of another certificate.
    let other = TestCert::new("startup-other");
    let (code, err) = serve_status(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert-file",
        cert.cert_file().to_str().unwrap(),
        "--tls-key-file",
        other.key_file().to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not belong"), "{err}");

    // tls_listen alone.
    let (code, err) = serve_status(&["--tls-listen", "127.0.0.1:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("go together"), "{err}");
}

// --- Python `websockets` and Node `ws` over wss ---

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn interop_available(program: &str, check: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(check)
        .current_dir(interop_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("PUSHGATE_INTEROP_REQUIRED").is_none(),
            "{program} interop required but not available (scripts/ci-deps.sh)"
        );
        eprintln!("skipping: {program} client not available (scripts/ci-deps.sh)");
    }
    ok
}

/// Runs an interop client over wss; it trusts the test certificate through
/// the variable each runtime reads (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`).
fn interop_over_wss(program: &str, script: &str, ca_env: &str) {
    let cert = TestCert::new(program);
    let (server, tls_addr) = start(&cert);
    let token = server.token("interop");
    let mut child = Command::new(program)
        .arg(interop_dir().join(script))
        .arg(format!("wss://localhost:{}/ws", tls_addr.port()))
        .arg("header")
        .args([
            "--token",
            &token,
            "--count",
            "2",
            "--timeout",
            "20",
            "--grace-ms",
            "300",
        ])
        .env(ca_env, cert.cert_file())
        .current_dir(interop_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let welcome: Value = serde_json::from_str(&lines.next().expect("welcome").unwrap()).unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    push(&server, "interop", r#"{"k":1}"#);
    push(&server, "interop", &format!("\"{}\"", "y".repeat(40_000)));
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{program}: {status} {stderr} {rest:?}");
    assert_eq!(rest.len(), 3, "{rest:?}");
    assert_eq!(rest[0]["data"], serde_json::json!({"k": 1}));
    assert_eq!(rest[1]["data"].as_str().map(str::len), Some(40_000));
    assert_eq!(rest[2], serde_json::json!({"type": "closed", "code": 1000}));
}

#[test]
fn python_websockets_over_wss() {
    if interop_available("python3", &["-c", "import websockets"]) {
        interop_over_wss("python3", "client.py", "SSL_CERT_FILE");
    }
}

#[test]
fn node_ws_over_wss() {
    if interop_available("node", &["-e", "require('ws')"]) {
        interop_over_wss("node", "client.mjs", "NODE_EXTRA_CA_CERTS");
    }
}

#[test]
fn a_handshake_that_never_finishes_is_closed_at_the_handshake_timeout() {
    let cert = TestCert::new("timeout");
    let flags = cert.flags();
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend(["--handshake-timeout-ms", "500"]);
    let server = Server::start(&flags);
    server.wait_log("tls_addr=");
    let tls_addr: SocketAddr = server
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split("tls_addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    let started = std::time::Instant::now();
    // Silent after connecting, and silent after half a ClientHello.
    let mut silent = TcpStream::connect(tls_addr).unwrap();
    let mut half = TcpStream::connect(tls_addr).unwrap();
    half.write_all(&[22, 3, 1, 0, 200, 1, 0]).unwrap();
    for s in [&mut silent, &mut half] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty(), "no plain-text 408 on a TLS port: {buf:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_drain_closes_tls_devices_with_1012() {
    let cert = TestCert::new("drain");
    let (server, tls_addr) = start(&cert);
    let (mut ws, _) = wss_connect(&server, tls_addr, cert.client_config(), "draining");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1012);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("expected close 1012 over TLS, got {e}"),
        }
    }
    // The TLS listener no longer accepts.
    server.wait_log("drain");
    let refused = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        tls_connect(tls_addr, cert.client_config()).is_err()
    });
    assert!(refused, "the TLS listener closed while draining");
}

// ------------------------------------------------------------ hostile probe
//
// Each probe runs beside two bystanders, a plain and a TLS device, that must
// keep getting their pushes. Deadlines are generous and every wait is for a
// condition (a close, a metric), so a busy 2-core machine slows the probes
// down without failing them.

/// A server with a TLS listener and these extra flags; its TLS address.
fn start_with(cert: &TestCert, extra: &[&str]) -> (Server, SocketAddr) {
    let flags = cert.flags();
    let mut flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    flags.extend_from_slice(extra);
    let server = Server::start(&flags);
    server.wait_log("tls_addr=");
    let addr = server
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split("tls_addr=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("the TLS address is logged");
    (server, addr)
}

/// A plain and a TLS device that must keep receiving while a probe runs.
struct Bystanders {
    plain: common::Ws,
    tls: TlsWs,
    pushes: u64,
}

impl Bystanders {
    fn start(server: &Server, tls_addr: SocketAddr, cert: &TestCert) -> Bystanders {
        let (plain, _) = common::ws_connect(server, "plain-bystander", false, None);
        let (tls, _) = wss_connect(server, tls_addr, cert.client_config(), "tls-bystander");
        Bystanders {
            plain,
            tls,
            pushes: 0,
        }
    }

    /// One push to each; both arrive.
    fn still_receiving(&mut self, server: &Server) {
        self.pushes += 1;
        let data = format!(r#"{{"n":{}}}"#, self.pushes);
        let want: Value = serde_json::from_str(&data).unwrap();
        push(server, "plain-bystander", &data);
        push(server, "tls-bystander", &data);
        assert_eq!(
            common::next_push(&mut self.plain).1,
            want,
            "plain bystander"
        );
        assert_eq!(next_push(&mut self.tls).1, want, "TLS bystander");
    }
}

fn metric(server: &Server, name: &str) -> u64 {
    let (status, text) = server.admin("GET", "/metrics", None, "");
    assert_eq!(status, 200, "{text}");
    let prefix = format!("pushgate_{name}");
    text.lines()
        .filter(|l| {
            l.strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn eventually(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vm_rss_kb(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// What a rustls TLS 1.3 client sends first: its ClientHello records.
fn client_hello() -> Vec<u8> {
    let config = client_config_trusting(&TestCert::new("hello").cert_pem, false);
    let mut client =
        ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

/// Reads until the server closes (EOF or reset) or `deadline` passes;
/// returns the bytes and whether it closed.
fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> (Vec<u8>, bool) {
    let start = std::time::Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

#[test]
fn a_flood_of_client_hellos_that_never_finish_is_bounded_and_memory_returns() {
    let cert = TestCert::new("flood");
    // Two shards, each with at most 16 upgrades (TLS handshakes) in progress;
    // a handshake that does not finish in 3 s is closed.
    let (server, tls_addr) = start_with(
        &cert,
        &[
            "--shards",
            "2",
            "--handshakes-max",
            "16",
            "--handshake-timeout-ms",
            "3000",
        ],
    );
    let mut bystanders = Bystanders::start(&server, tls_addr, &cert);
    bystanders.still_receiving(&server);
    let baseline_open = metric(&server, "ring_connections_open");
    let rss_before_kb = vm_rss_kb(&server);

    // 400 ClientHellos that never get a Finished.
    let hello = client_hello();
    let opened_at = std::time::Instant::now();
    let mut flood: Vec<TcpStream> = (0..400)
        .filter_map(|_| {
            let mut s = TcpStream::connect(tls_addr).ok()?;
            let _ = s.write_all(&hello);
            Some(s)
        })
        .collect();
    let open_s = opened_at.elapsed().as_secs_f64();
    assert!(flood.len() >= 300, "{} connected", flood.len());
    bystanders.still_receiving(&server);

    // Every one is closed: over the cap at once, the rest at the timeout.
    let mut flights = 0;
    for s in &mut flood {
        let (got, closed) = read_until_closed(s, Duration::from_secs(30));
        assert!(closed, "a never-finishing handshake is closed");
        if !got.is_empty() {
            assert_eq!(got[0], 22, "a server flight, no plain text: {got:?}");
            flights += 1;
        }
    }
    // Only admitted handshakes got a flight: 16 per shard per timeout period
    // the opening took (the cap frees a slot only when one times out).
    let periods = 1 + (open_s / 3.0) as usize;
    assert!(
        flights <= 2 * 16 * periods,
        "{flights} handshakes ran at once over a cap of 2 × 16 ({open_s:.1} s to open)"
    );
    assert!(flights > 0, "some handshakes were admitted");
    drop(flood);

    // Connections and memory return.
    let back = eventually(Duration::from_secs(20), || {
        metric(&server, "ring_connections_open") <= baseline_open
    });
    assert!(back, "connections open went back to {baseline_open}");
    let mut rss_after_kb = 0;
    let returned = eventually(Duration::from_secs(20), || {
        rss_after_kb = vm_rss_kb(&server);
        rss_after_kb < rss_before_kb + 16 * 1024
    });
    assert!(
        returned,
        "resident set {rss_before_kb} kB before the flood, {rss_after_kb} kB after"
    );
    bystanders.still_receiving(&server);
}

#[test]
fn a_slowloris_client_hello_and_a_silent_16_kb_record_are_closed_at_the_timeout() {
    let cert = TestCert::new("slow");
    let (server, tls_addr) = start_with(&cert, &["--handshake-timeout-ms", "1000"]);
    let mut bystanders = Bystanders::start(&server, tls_addr, &cert);

    // A ClientHello one byte per 100 ms (~25 s for the whole of it).
    let hello = client_hello();
    let mut trickle = TcpStream::connect(tls_addr).unwrap();
    let mut writer = trickle.try_clone().unwrap();
    let started = std::time::Instant::now();
    let trickler = std::thread::spawn(move || {
        for b in hello {
            if writer.write_all(&[b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // After the handshake: a record header announcing 16 KB, then silence
    // (the app still waits for the upgrade request).
    let mut silent = tls_connect(tls_addr, cert.client_config()).expect("TLS handshake");
    silent.sock.write_all(&[23, 3, 3, 0x40, 0x00]).unwrap();

    bystanders.still_receiving(&server);
    let (got, closed) = read_until_closed(&mut trickle, Duration::from_secs(20));
    assert!(closed, "the slowloris handshake is closed");
    assert!(got.is_empty(), "no flight for half a ClientHello: {got:?}");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(20),
        "closed after {elapsed:?}, not when the ClientHello ended"
    );
    trickler.join().unwrap();

    let (got, closed) = read_until_closed(&mut silent.sock, Duration::from_secs(20));
    assert!(
        closed,
        "a silent half record is closed at the handshake timeout"
    );
    assert!(got.is_empty() || got[0] == 23, "only TLS records: {got:?}");
    bystanders.still_receiving(&server);
}

/// What a TLS client reads after sending `bytes` raw on an established
/// connection: the error its TLS stack reports (a fatal alert from the
/// server) before the close.
fn alert_after(addr: SocketAddr, config: Arc<ClientConfig>, bytes: &[u8]) -> String {
    let mut stream = tls_connect(addr, config).expect("TLS handshake");
    stream.sock.write_all(bytes).unwrap();
    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(n) => panic!("read {n} bytes instead of an alert"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_records_after_the_handshake_get_an_alert_and_a_close() {
    let cert = TestCert::new("records");
    let (server, tls_addr) = start(&cert);
    let mut bystanders = Bystanders::start(&server, tls_addr, &cert);
    let failures_before = metric(&server, "ring_tls_failures_total");

    // A header announcing more than 2^14 + 256 bytes.
    let err = alert_after(tls_addr, cert.client_config(), &[23, 3, 3, 0x48, 0x01]);
    assert!(err.contains("RecordOverflow"), "{err}");
    // A record that does not authenticate.
    let garbage: Vec<u8> = [&[23u8, 3, 3, 0, 64][..], &[0xab; 64]].concat();
    let err = alert_after(tls_addr, cert.client_config(), &garbage);
    assert!(err.contains("BadRecordMac"), "{err}");
    // A plaintext alert after the handshake (TLS 1.3 protects all records).
    let err = alert_after(tls_addr, cert.client_config(), &[21, 3, 3, 0, 2, 2, 40]);
    assert!(err.contains("UnexpectedMessage"), "{err}");
    // Not a TLS record at all.
    let err = alert_after(tls_addr, cert.client_config(), &[0xff; 16]);
    assert!(err.contains("UnexpectedMessage"), "{err}");

    let counted = eventually(Duration::from_secs(10), || {
        metric(&server, "ring_tls_failures_total") >= failures_before + 4
    });
    assert!(counted, "each refusal is counted");
    assert!(server.log_contains("record too long"));
    assert!(server.log_contains("record failed authentication"));
    bystanders.still_receiving(&server);
}

#[test]
fn a_tls_client_that_stops_reading_is_cut_as_a_slow_consumer() {
    let cert = TestCert::new("slowconsumer");
    let (server, tls_addr) = start(&cert);
    let mut bystanders = Bystanders::start(&server, tls_addr, &cert);
    let (mut victim, _) = wss_connect(&server, tls_addr, cert.client_config(), "victim");

    // Up to 20 MB in 16 KiB notifications to a client that reads nothing.
    let mut publisher = Client::connect(&server.run_dir).unwrap();
    let pad = "x".repeat(16 * 1024);
    let mut cut = false;
    for i in 0..1280 {
        let outcome = publisher
            .push(&["victim"], &format!(r#"{{"i":{i},"pad":"{pad}"}}"#))
            .unwrap();
        assert_eq!(outcome.delivered + outcome.stored, 1, "{outcome:?}");
        if outcome.stored == 1 {
            cut = true;
            break;
        }
    }
    assert!(cut, "the victim was never cut");
    assert!(metric(&server, "slow_consumer_closes_total") >= 1);
    // What the victim reads now: some pushes, then 1013, then the end.
    victim
        .get_mut()
        .sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let code = loop {
        match victim.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("expected close 1013 over TLS, got {e}"),
        }
    };
    assert_eq!(code, Some(1013));
    bystanders.still_receiving(&server);
}

#[test]
fn close_notify_is_answered_with_close_notify() {
    let cert = TestCert::new("closenotify");
    let (server, tls_addr) = start(&cert);
    let mut bystanders = Bystanders::start(&server, tls_addr, &cert);

    // Before any HTTP: the client's close_notify, ours back, then the end.
    let mut stream = tls_connect(tls_addr, cert.client_config()).expect("TLS handshake");
    stream.conn.send_close_notify();
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut stream.sock).unwrap();
    }
    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    // rustls reads 0 only after the peer's close_notify (a bare TCP close
    // would be an UnexpectedEof error).
    assert_eq!(stream.read(&mut buf).expect("a clean TLS close"), 0);

    // On an upgraded device: same, and the gateway sees the device go.
    let (mut ws, _) = wss_connect(&server, tls_addr, cert.client_config(), "leaving");
    let tls = ws.get_mut();
    tls.conn.send_close_notify();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut tls.sock).unwrap();
    }
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let clean = loop {
        match tls.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => panic!("expected our close_notify, got {e}"),
        }
    };
    assert!(clean);
    let gone = eventually(Duration::from_secs(10), || {
        let mut client = Client::connect(&server.run_dir).unwrap();
        !client.presence("leaving").unwrap().online
    });
    assert!(gone, "the device is gone after its close_notify");
    bystanders.still_receiving(&server);
}
