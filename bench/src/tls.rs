//! TLS measurements (blocking clients on threads: simple, and the numbers
//! are the server's, read from /proc):
//!
//! - `tls-idle`: N idle upgraded connections over TLS (or plain, for the
//!   baseline in the same tool): the server's user-space RSS and the
//!   kernel's share per connection. The client keeps only its TCP socket
//!   after the welcome (its TLS state is dropped), so the client's own
//!   memory does not matter and the server sees an idle connection.
//! - `tls-handshakes`: TLS handshakes (connect, handshake, RST) as fast as
//!   the client threads go, for a time: handshakes/s, and the server's CPU
//!   per handshake (/proc/<pid>/stat), from which handshakes/s per core.
//!   Same client for every server: TLS 1.3, TLS_AES_128_GCM_SHA256, X25519
//!   only, so each server does the same work.

use crate::idle::server_rss_bytes;
use crate::kmem::{KernelMemory, KernelReading};
use crate::procfs;
use crate::token;
use clap::Args;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct TlsIdleArgs {
    /// The server's listener (TLS unless --plain).
    #[arg(long)]
    pub target: SocketAddr,
    /// Speak plain WebSocket (the baseline).
    #[arg(long)]
    pub plain: bool,
    /// PEM certificate the client trusts.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub conns: u64,
    #[arg(long)]
    pub server_pid: u32,
    /// The server's --run-dir (for its token secret).
    #[arg(long)]
    pub run_dir: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub threads: u64,
    #[arg(long, default_value_t = 256)]
    pub warmup: u64,
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct TlsHandshakesArgs {
    /// The server's TLS listener.
    #[arg(long)]
    pub target: SocketAddr,
    /// PEM certificate the client trusts.
    #[arg(long)]
    pub cert: PathBuf,
    /// The server process (its CPU time is read).
    #[arg(long)]
    pub server_pid: u32,
    /// The server's name in the report.
    #[arg(long)]
    pub server_name: String,
    #[arg(long, default_value_t = 2)]
    pub threads: u64,
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub struct TlsIdleReport {
    pub tls: bool,
    pub conns: u64,
    pub failed: u64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub user_space_per_conn_bytes: f64,
    pub kernel: KernelMemory,
    pub loadavg: Option<[f64; 3]>,
}

#[derive(Serialize, Debug)]
pub struct TlsHandshakesReport {
    pub server: String,
    pub threads: u64,
    pub secs: f64,
    pub handshakes: u64,
    pub failed: u64,
    pub handshakes_per_s: f64,
    pub server_cpu_s: f64,
    pub server_cpu_us_per_handshake: f64,
    /// 1 / CPU per handshake: what one fully busy core would do.
    pub handshakes_per_s_per_core: f64,
    pub loadavg: Option<[f64; 3]>,
}

fn client_config(cert: &std::path::Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).map_err(|e| format!("{}: {e}", cert.display()))? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![rustls::crypto::ring::kx_group::X25519],
        ..rustls::crypto::ring::default_provider()
    };
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Connects and finishes the TLS handshake.
fn handshake(
    target: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<(ClientConnection, TcpStream), String> {
    let mut tcp = TcpStream::connect(target).map_err(|e| format!("connect: {e}"))?;
    // As browsers do: the Finished and the request are separate writes.
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let mut conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok((conn, tcp))
}

/// Closes with a RST, so the client's port is not held in TIME_WAIT.
fn close_abortively(tcp: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a valid linger struct.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// One upgraded connection that got its welcome; only its socket is kept.
fn open_idle(
    args: &TlsIdleArgs,
    config: Option<&Arc<ClientConfig>>,
    token: &str,
) -> Result<TcpStream, String> {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let welcome = |got: &[u8]| got.windows(9).any(|w| w == b"\"welcome\"");
    match config {
        Some(config) => {
            let (mut conn, mut tcp) = handshake(args.target, config)?;
            let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
            stream
                .write_all(request.as_bytes())
                .map_err(|e| e.to_string())?;
            while !welcome(&got) {
                let n = stream
                    .read(&mut buf)
                    .map_err(|e| format!("reading the welcome: {e}"))?;
                if n == 0 {
                    return Err("closed before the welcome".into());
                }
                got.extend_from_slice(&buf[..n]);
            }
            drop(conn);
            Ok(tcp)
        }
        None => {
            let mut tcp = TcpStream::connect(args.target).map_err(|e| e.to_string())?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            tcp.set_read_timeout(Some(Duration::from_secs(20)))
                .map_err(|e| e.to_string())?;
            tcp.write_all(request.as_bytes())
                .map_err(|e| e.to_string())?;
            while !welcome(&got) {
                let n = tcp.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed before the welcome".into());
                }
                got.extend_from_slice(&buf[..n]);
            }
            Ok(tcp)
        }
    }
}

/// Opens `count` connections from `first` on `threads` threads.
fn open_many(
    args: &TlsIdleArgs,
    config: Option<&Arc<ClientConfig>>,
    first: u64,
    count: u64,
) -> (Vec<TcpStream>, u64) {
    let secret = token::read_secret(&token::secret_file_in_run_dir(&args.run_dir).expect("secret"))
        .expect("secret");
    let secret = Arc::new(secret);
    let per = count.div_ceil(args.threads.max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let secret = secret.clone();
                s.spawn(move || {
                    let mut held = Vec::new();
                    let mut failed = 0;
                    let from = first + t * per;
                    let to = (from + per).min(first + count);
                    for i in from..to {
                        let tok = token::mint(&secret, i, token::now_unix_s());
                        match open_idle(args, config, &tok) {
                            Ok(tcp) => held.push(tcp),
                            Err(e) => {
                                if failed == 0 {
                                    eprintln!("tls-idle: connection {i}: {e}");
                                }
                                failed += 1;
                            }
                        }
                    }
                    (held, failed)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut failed = 0;
        for h in handles {
            let (held, f) = h.join().expect("client thread");
            all.extend(held);
            failed += f;
        }
        (all, failed)
    })
}

pub fn run_idle(args: TlsIdleArgs) -> Result<bool, String> {
    let config = match (&args.cert, args.plain) {
        (_, true) => None,
        (Some(cert), false) => Some(client_config(cert)?),
        (None, false) => return Err("--cert is needed unless --plain".into()),
    };
    let pids = [args.server_pid];
    if args.warmup > 0 {
        let (warm, _) = open_many(&args, config.as_ref(), args.conns + 1, args.warmup);
        drop(warm);
    }
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    let rss_before = server_rss_bytes(&pids)?;
    let kernel_before = KernelReading::read();
    let (held, failed) = open_many(&args, config.as_ref(), 0, args.conns);
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    let rss_after = server_rss_bytes(&pids)?;
    let kernel_after = KernelReading::read();
    let n = held.len() as u64;
    let report = TlsIdleReport {
        tls: !args.plain,
        conns: n,
        failed,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        user_space_per_conn_bytes: (rss_after as f64 - rss_before as f64) / n.max(1) as f64,
        kernel: KernelMemory::between(&kernel_before, &kernel_after, n),
        loadavg: procfs::loadavg(),
    };
    drop(held);
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).map_err(|e| e.to_string())?;
    }
    Ok(failed == 0)
}

pub fn run_handshakes(args: TlsHandshakesArgs) -> Result<bool, String> {
    let config = client_config(&args.cert)?;
    // Warm up (code paged in, allocator grown) before the measured time.
    for _ in 0..50 {
        let (_, tcp) = handshake(args.target, &config)?;
        close_abortively(tcp);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu_before = procfs::cpu_seconds(args.server_pid).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let threads: Vec<_> = (0..args.threads)
        .map(|_| {
            let (stop, done, failed, config) =
                (stop.clone(), done.clone(), failed.clone(), config.clone());
            let target = args.target;
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match handshake(target, &config) {
                        Ok((_, tcp)) => {
                            close_abortively(tcp);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = procfs::cpu_seconds(args.server_pid).map_err(|e| e.to_string())? - cpu_before;
    let handshakes = done.load(Ordering::Relaxed);
    let us_per = cpu * 1e6 / handshakes.max(1) as f64;
    let report = TlsHandshakesReport {
        server: args.server_name.clone(),
        threads: args.threads,
        secs,
        handshakes,
        failed: failed.load(Ordering::Relaxed),
        handshakes_per_s: handshakes as f64 / secs,
        server_cpu_s: cpu,
        server_cpu_us_per_handshake: us_per,
        handshakes_per_s_per_core: 1e6 / us_per.max(1e-9),
        loadavg: procfs::loadavg(),
    };
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).map_err(|e| e.to_string())?;
    }
    Ok(report.failed == 0)
}
