//! Real gateways on a port the test chooses, sharing one secret, so a
//! restarted server or a successor lands where clients reconnect and the
//! tokens they hold stay valid; and a proxy that refuses WebSocket upgrades
//! (a network that breaks WebSocket). For tests/browser.rs and tests/sdk.rs
//! (`#[path]` modules: tests/common's `Server` always picks its own port).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A directory of its own under the system temp dir.
pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pushgate-{what}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port free right now (the kernel's pick; a gateway binds it
/// next, with SO_REUSEPORT, so a successor can share it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A secret file (mode 0600) every gateway of a test shares; returns its
/// path and text (what tokens are signed with).
pub fn shared_secret(dir: &Path) -> (PathBuf, String) {
    let mut random = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .expect("/dev/urandom");
    let text: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join("secret");
    std::fs::write(&path, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, text)
}

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub run_dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// `pushgate serve` on 127.0.0.1:`port` with `secret`; returns once it
    /// listens.
    pub fn start(port: u16, secret: &Path, extra: &[&str]) -> Gateway {
        let run_dir = temp_dir("run");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0", "--run-dir"])
            .arg(&run_dir)
            .arg("--secret-file")
            .arg(secret)
            .args(["--recv-buffer-count", "256"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pushgate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let found = |key: &str| -> Option<String> {
            log.lock().unwrap().iter().find_map(|line| {
                let rest = line.split(key).nth(1)?;
                Some(
                    rest.split(|c: char| c == '/' || c.is_whitespace())
                        .next()?
                        .to_string(),
                )
            })
        };
        loop {
            if let (Some(addr), Some(admin)) = (found("ws://"), found("admin=")) {
                return Gateway {
                    child,
                    addr: addr.parse().unwrap(),
                    admin_addr: admin.parse().unwrap(),
                    run_dir,
                    log,
                };
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("gateway did not start: {:?}", log.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One push through the real client library: (delivered, stored).
    pub fn push(&self, users: &[&str], data: &str) -> (u64, u64) {
        let mut client =
            pushgate::push::client::Client::connect(&self.run_dir).expect("push client");
        let outcome = client.push(users, data).expect("push");
        (outcome.delivered, outcome.stored)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGKILL: the process vanishes without a goodbye, as in a crash.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A proxy on a loopback port of its own that passes plain HTTP to
/// 127.0.0.1:`upstream` (streaming both ways) and answers every WebSocket
/// upgrade with 403, as some corporate proxies do. Its threads live as long
/// as the test process; returns its port.
pub fn start_proxy_refusing_upgrades(upstream: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            std::thread::spawn(move || proxy_one(client, upstream));
        }
    });
    port
}

/// Request heads larger than this are dropped (the gateway's own limit is 8 KiB).
const PROXY_HEAD_BYTES_MAX: usize = 16 * 1024;

fn proxy_one(mut client: TcpStream, upstream: u16) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&byte[..n]),
        }
        if head.len() > PROXY_HEAD_BYTES_MAX {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if text.contains("\r\nupgrade: websocket") {
        let _ = client.write_all(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 23\r\nConnection: close\r\n\r\nWebSocket not allowed.\n",
        );
        return;
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        let _ = client.write_all(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    };
    if server.write_all(&head).is_err() {
        return;
    }
    let (Ok(mut client_r), Ok(mut server_w)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut server_w);
        let _ = server_w.shutdown(Shutdown::Write);
    });
    // Server → client, as bytes arrive (io::copy writes each read at once).
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    let _ = up.join();
}
