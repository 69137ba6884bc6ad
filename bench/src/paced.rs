//! Paced pushes to pushgate that keep every user's order: one push socket
//! per shard, each push's request to a home shard written on that shard's
//! socket the moment the push is due (no batching), its reply read by a
//! thread per shard.
//!
//! A user's pushes all go to its home shard, over one socket, in the order
//! they were made, and the server answers (and delivers) a socket's requests
//! in order: a client that sees a user's pushes out of order has found a
//! server bug, not a publisher artefact. (A pool of publishing threads,
//! each with its own client, could not promise that.)

use std::io::Read;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pushgate_client::client::{group_by_home_shard, shard_socket_path};
use pushgate_client::wire::{self, FrameSplitter, Reply, Request};

use crate::publish::Totals;

/// Requests awaiting a reply per shard before the sender waits: a bound on
/// what a slow server makes the publisher hold, far above what a paced run
/// has in flight while the server keeps up.
const OUTSTANDING_MAX: u64 = 8192;
/// A reply must come within this long of the sender starting to wait.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply frame accepted (replies to pushes are a few dozen bytes).
const REPLY_BODY_BYTES_MAX: usize = 1 << 20;
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What a shard's reader thread and the sender share.
#[derive(Default)]
struct Shared {
    outstanding: u64,
    totals: Totals,
    /// The first error; the link is unusable after it.
    error: Option<String>,
}

struct Link {
    writer: UnixStream,
    state: Arc<(Mutex<Shared>, Condvar)>,
    reader: Option<JoinHandle<()>>,
}

impl Link {
    fn open(run_dir: &Path, shard: usize) -> Result<Link, String> {
        let path = shard_socket_path(run_dir, shard);
        let writer = UnixStream::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        writer
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let reader = writer.try_clone().map_err(|e| e.to_string())?;
        let state = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let shared = state.clone();
        let thread = std::thread::spawn(move || read_replies(reader, &shared));
        Ok(Link {
            writer,
            state,
            reader: Some(thread),
        })
    }

    /// Waits (bounded) until `ready(shared)`; an error on the link ends it.
    fn wait(&self, ready: impl Fn(&Shared) -> bool, what: &str) -> Result<(), String> {
        let (lock, signal) = &*self.state;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut shared = lock.lock().map_err(|_| "poisoned".to_string())?;
        // Bounded by the deadline.
        loop {
            if let Some(e) = &shared.error {
                return Err(e.clone());
            }
            if ready(&shared) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "pushgate: no reply within {REPLY_TIMEOUT:?} while {what} ({} outstanding)",
                    shared.outstanding
                ));
            }
            shared = signal
                .wait_timeout(shared, left)
                .map_err(|_| "poisoned".to_string())?
                .0;
        }
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        self.wait(|s| s.outstanding < OUTSTANDING_MAX, "sending")?;
        self.state.0.lock().map_err(|_| "poisoned")?.outstanding += 1;
        self.writer
            .write_all(frame)
            .map_err(|e| format!("pushgate push socket: {e}"))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Ends the reader thread too.
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        if let Some(thread) = self.reader.take() {
            let _ = thread.join();
        }
    }
}

/// Reads replies until the socket ends, counting them into `state`.
fn read_replies(mut stream: UnixStream, state: &(Mutex<Shared>, Condvar)) {
    let (lock, signal) = state;
    let fail = |why: String| {
        if let Ok(mut shared) = lock.lock() {
            shared.error.get_or_insert(why);
        }
        signal.notify_all();
    };
    let mut splitter = FrameSplitter::default();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    // Bounded by the connection: ends at EOF or an error.
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return fail("pushgate closed the push socket".to_string()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(format!("pushgate push socket: {e}")),
        };
        let mut problem = None;
        let fed = splitter.feed(&chunk[..n], REPLY_BODY_BYTES_MAX, |body| {
            let Ok(mut shared) = lock.lock() else { return };
            match wire::decode_reply(body) {
                Ok(Reply::Pushed {
                    delivered,
                    stored,
                    rejected,
                    ..
                }) => {
                    shared.outstanding = shared.outstanding.saturating_sub(1);
                    shared.totals.delivered += u64::from(delivered);
                    shared.totals.stored += u64::from(stored);
                    shared.totals.rejected += u64::from(rejected);
                }
                Ok(Reply::Error { message, .. }) => {
                    problem.get_or_insert(format!("pushgate refused a push: {message}"));
                }
                Ok(other) => {
                    problem.get_or_insert(format!("pushgate: unexpected reply {other:?}"));
                }
                Err(e) => {
                    problem.get_or_insert(format!("pushgate reply: {e}"));
                }
            }
        });
        signal.notify_all();
        if let Err(e) = fed {
            return fail(format!("pushgate reply: {e}"));
        }
        if let Some(why) = problem {
            return fail(why);
        }
    }
}

/// The publisher of a paced pushgate run.
pub struct PacedPushgate {
    links: Vec<Link>,
    next_id: u64,
}

impl PacedPushgate {
    pub fn connect(run_dir: &Path, shard_count: usize) -> Result<PacedPushgate, String> {
        let links = (0..shard_count)
            .map(|shard| Link::open(run_dir, shard))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(PacedPushgate { links, next_id: 1 })
    }

    /// Writes the push's request to each home shard of `users` now.
    pub fn send(&mut self, users: &[String], data: &str) -> Result<(), String> {
        for (shard, group) in group_by_home_shard(users.iter().cloned(), self.links.len()) {
            let id = self.next_id;
            self.next_id += 1;
            let frame = wire::encode_request(&Request::Push {
                id,
                users: group,
                data: data.to_owned(),
            });
            self.links[shard].send(&frame)?;
        }
        Ok(())
    }

    /// Waits for every reply; returns the totals.
    pub fn finish(self) -> Result<Totals, String> {
        let mut totals = Totals::default();
        for link in &self.links {
            link.wait(|s| s.outstanding == 0, "finishing")?;
            let shared = link.state.0.lock().map_err(|_| "poisoned")?;
            totals.delivered += shared.totals.delivered;
            totals.stored += shared.totals.stored;
            totals.rejected += shared.totals.rejected;
        }
        Ok(totals)
    }
}
