//! Moving live connections between runtimes with `Ctx::export` and
//! `Ctx::adopt`, over real rings and sockets: what a live upgrade does
//! between two processes (there the descriptor also crosses SCM_RIGHTS).

use bytes::Bytes;
use shard::{App, CloseReason, ConnId, Ctx, ListenerSpec, Runtime, RuntimeConfig};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config() -> RuntimeConfig {
    RuntimeConfig {
        shards: 1,
        connections_per_shard_max: 1024,
        recv_buffer_count: 64,
        mesh_queue_len: 1024,
        timer_tick_ms: 5,
        stop_grace_ms: 1000,
        close_linger_ms: 500,
        pin_threads: false,
        // The blob and the echoes behind it wait here for a slow reader.
        send_queue_bytes_max: 4 << 20,
        listeners: vec![ListenerSpec::Tcp {
            addr: "127.0.0.1:0".parse().unwrap(),
            backlog: 1024,
            options: vec![],
        }],
        ..RuntimeConfig::default()
    }
}

/// Sockets in transit from the old runtime to the new, with the bytes the
/// old one was owed nothing for (the state record of the test).
type Transit = Arc<Mutex<Vec<(OwnedFd, Vec<u8>)>>>;

/// Echoes each read as `<name>:<bytes>;`. On a read containing `MOVE` it
/// first sends `blob` (so the export must wait for it to leave), then
/// exports; the exported socket goes into `out`. Adopts whatever arrives
/// in `inbox` (on each tick) and greets it with `<name>:adopted;`.
struct Mover {
    name: &'static str,
    blob: Bytes,
    out: Transit,
    inbox: Transit,
    closed: Arc<Mutex<Vec<CloseReason>>>,
}

impl App for Mover {
    type Msg = Vec<u8>;
    fn on_accept(&mut self, ctx: &mut Ctx<'_, Vec<u8>>, conn: ConnId, _: usize) {
        ctx.stream(conn);
    }
    fn on_data(&mut self, ctx: &mut Ctx<'_, Vec<u8>>, conn: ConnId, data: &mut [u8]) {
        let reply = format!("{}:{};", self.name, String::from_utf8_lossy(data));
        ctx.send(conn, &[Bytes::from(reply)]).unwrap();
        if data.windows(4).any(|w| w == b"MOVE") {
            ctx.send(conn, std::slice::from_ref(&self.blob)).unwrap();
            ctx.export(conn).unwrap();
        }
    }
    fn on_timer(&mut self, _: &mut Ctx<'_, Vec<u8>>, _: ConnId) {}
    fn on_close(&mut self, _: &mut Ctx<'_, Vec<u8>>, _: ConnId, r: CloseReason) {
        self.closed.lock().unwrap().push(r);
    }
    fn on_message(&mut self, _: &mut Ctx<'_, Vec<u8>>, _: usize, _: Vec<u8>) {}
    fn on_handoff(&mut self, _: &mut Ctx<'_, Vec<u8>>, _: ConnId, _: Vec<u8>) {}
    fn on_exported(&mut self, _: &mut Ctx<'_, Vec<u8>>, _: ConnId, fd: OwnedFd) {
        self.out.lock().unwrap().push((fd, b"state".to_vec()));
    }
    fn on_adopted(&mut self, ctx: &mut Ctx<'_, Vec<u8>>, conn: ConnId, msg: Vec<u8>) {
        let hello = format!("{}:adopted {};", self.name, String::from_utf8_lossy(&msg));
        ctx.send(conn, &[Bytes::from(hello)]).unwrap();
    }
    fn on_adopt_failed(&mut self, _: &mut Ctx<'_, Vec<u8>>, _: OwnedFd, _: Vec<u8>, e: i32) {
        panic!("adopt failed: errno {e}");
    }
    fn on_tick(&mut self, ctx: &mut Ctx<'_, Vec<u8>>) {
        let arrived = std::mem::take(&mut *self.inbox.lock().unwrap());
        for (fd, msg) in arrived {
            if ctx.adopt(fd, msg).is_err() {
                panic!("adopt refused");
            }
        }
    }
}

/// Reads until `want` has appeared in what was read (or 10 s pass).
fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 65536];
    while !got.windows(want.len()).any(|w| w == want) {
        assert!(Instant::now() < deadline, "timed out waiting for {want:?}");
        match s.read(&mut buf) {
            Ok(0) => panic!("EOF before {:?}", String::from_utf8_lossy(want)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn connections_move_to_another_runtime_without_a_byte_lost_or_doubled() {
    if !shard::connection_moves_supported() {
        eprintln!("skipped: this kernel has no IORING_OP_FIXED_FD_INSTALL");
        return;
    }
    let transit: Transit = Arc::default();
    let closed = Arc::new(Mutex::new(Vec::new()));
    // Larger than a socket buffer: the export must wait for it to leave.
    let blob = Bytes::from(vec![b'.'; 512 * 1024]);
    let (old_out, old_closed) = (transit.clone(), closed.clone());
    let (blob_a, blob_b) = (blob.clone(), blob.clone());
    let old = Runtime::start(config(), move |_| Mover {
        name: "A",
        blob: blob_a.clone(),
        out: old_out.clone(),
        inbox: Arc::default(),
        closed: old_closed.clone(),
    })
    .unwrap();
    let (new_in, new_closed) = (transit.clone(), closed.clone());
    let new = Runtime::start(config(), move |_| Mover {
        name: "B",
        blob: blob_b.clone(),
        out: Arc::default(),
        inbox: new_in.clone(),
        closed: new_closed.clone(),
    })
    .unwrap();
    let addr = old.tcp_addr(0).unwrap();
    const CLIENTS: usize = 50;
    let mut clients: Vec<(TcpStream, Vec<u8>)> = (0..CLIENTS)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            (s, Vec::new())
        })
        .collect();
    for (i, (s, got)) in clients.iter_mut().enumerate() {
        s.write_all(format!("hello{i}").as_bytes()).unwrap();
        read_until(s, got, format!("A:hello{i};").as_bytes());
        // Bytes right behind the MOVE reach one of the two, once.
        s.write_all(b"MOVE").unwrap();
        std::thread::sleep(Duration::from_millis(1));
        s.write_all(format!("after{i}").as_bytes()).unwrap();
    }
    for (i, (s, got)) in clients.iter_mut().enumerate() {
        read_until(s, got, b"B:adopted state;");
        let after = format!("after{i};");
        read_until(s, got, after.as_bytes());
        s.write_all(format!("later{i}").as_bytes()).unwrap();
        read_until(s, got, format!("B:later{i};").as_bytes());
        assert_eq!(count(got, after.as_bytes()), 1, "client {i}: {got:?}");
        assert_eq!(count(got, b"MOVE"), 1);
        let dots = got.iter().filter(|&&b| b == b'.').count();
        assert_eq!(dots, blob.len(), "the blob, whole and once");
        // Everything A sent came before B's greeting: A flushed first.
        let greeting = got
            .windows(b"B:adopted".len())
            .position(|w| w == b"B:adopted")
            .unwrap();
        let last_dot = got.iter().rposition(|&b| b == b'.').unwrap();
        assert!(last_dot < greeting, "client {i}: A's bytes after B's");
    }
    assert!(closed.lock().unwrap().is_empty(), "{:?}", closed.lock());
    let moved: u64 = new.stats()[0].snapshot().connections_open;
    assert_eq!(moved, CLIENTS as u64);
    assert_eq!(old.stats()[0].snapshot().connections_open, 0);
    drop(clients);
    for rt in [old, new] {
        rt.stopper().stop();
        rt.join().unwrap();
    }
}
