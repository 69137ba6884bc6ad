//! Faults end the process: a panic on any thread (a shard, the supervisor,
//! the signal thread) exits non-zero with a log line naming the thread and
//! the panic, so the service manager restarts the server. The panics come
//! from the debug-only PUSHGATE_DEBUG_PANIC hook. Also: SIGTERM during a
//! drain keeps the drain's rate and logs once; a second signal exits.
//!
//! Every wait polls for a condition under a generous deadline, so a busy
//! machine makes these tests slower, not flaky.

mod common;

use common::{ws_connect, Server};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FAULT_ENV: &str = "PUSHGATE_DEBUG_PANIC";
/// What `serve` exits with after a panic (server::PANIC_EXIT_STATUS).
const PANIC_EXIT_STATUS: i32 = pushgate::server::PANIC_EXIT_STATUS;
/// The longest any condition here is waited for.
const PATIENCE: Duration = Duration::from_secs(120);

/// Polls `done` every 20 ms until it holds; fails with `what` after PATIENCE.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `pushgate serve` started with `fault` in PUSHGATE_DEBUG_PANIC (or the
/// variable removed), its stderr collected line by line.
struct Faulty {
    child: Child,
    run_dir: std::path::PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    /// Ends when stderr closes, i.e. when the process is gone.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Faulty {
    fn start(fault: Option<&str>) -> Faulty {
        let run_dir = std::env::temp_dir().join(format!(
            "pushgate-fault-{}-{}",
            std::process::id(),
            fault.unwrap_or("none").replace(':', "-")
        ));
        let mut command = Command::new(env!("CARGO_BIN_EXE_pushgate"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen"])
            .args(["127.0.0.1:0", "--shards", "2", "--run-dir"])
            .arg(&run_dir)
            .args(["--connections-per-shard-max", "2000"])
            .args(["--recv-buffer-count", "256"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove(FAULT_ENV)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(fault) = fault {
            command.env(FAULT_ENV, fault);
        }
        let mut child = command.spawn().expect("spawn pushgate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Faulty {
            child,
            run_dir,
            log,
            reader: Some(reader),
        }
    }

    fn stderr(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit on its own; returns its status, and
    /// everything it wrote to stderr.
    fn wait_exit(&mut self) -> (ExitStatus, String) {
        let mut status = None;
        wait_until("the server to exit", || {
            status = self.exited();
            status.is_some()
        });
        // The process is gone, so its stderr is closed: the reader ends
        // once it has every line.
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status.unwrap(), self.stderr())
    }

    fn wait_listening(&self) {
        wait_until("the server to listen", || {
            self.log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("pushgate listening"))
        });
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// The exit status and the log lines that must follow a panic on `thread`.
fn assert_panic_exit(status: ExitStatus, stderr: &str, thread: &str, message: &str) {
    assert_eq!(status.code(), Some(PANIC_EXIT_STATUS), "{stderr}");
    assert!(stderr.contains(message), "no panic message: {stderr}");
    assert!(
        stderr.contains(&format!("thread {thread} panicked: exiting with status 70")),
        "no line naming the thread: {stderr}"
    );
    assert!(
        stderr.contains("location=src/server.rs:"),
        "no location: {stderr}"
    );
}

#[test]
fn a_panic_on_a_shard_thread_stops_the_process() {
    let mut server = Faulty::start(Some("shard:1"));
    let (status, stderr) = server.wait_exit();
    assert_panic_exit(status, &stderr, "shard-1", "shard 1 panics on purpose");
    // The standard panic report names the thread too.
    assert!(stderr.contains("thread 'shard-1'"), "{stderr}");
}

#[test]
fn a_panic_on_the_supervisor_stops_the_process() {
    let mut server = Faulty::start(Some("supervisor"));
    let (status, stderr) = server.wait_exit();
    assert_panic_exit(
        status,
        &stderr,
        "supervisor",
        "the supervisor panics on purpose",
    );
}

#[test]
fn a_panic_on_the_signal_thread_stops_the_process() {
    let mut server = Faulty::start(Some("signals"));
    server.wait_listening();
    server.signal(libc::SIGTERM);
    let (status, stderr) = server.wait_exit();
    assert_panic_exit(
        status,
        &stderr,
        "signals",
        "the signal thread panics on purpose",
    );
}

#[test]
fn a_fault_that_names_no_thread_is_refused_at_start() {
    let mut server = Faulty::start(Some("shard:9"));
    let (status, stderr) = server.wait_exit();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("shard:<0..2>, supervisor or signals"),
        "{stderr}"
    );
}

/// Without the variable the hook does nothing: the server outlives the
/// fault delay (1 s) several times over, then stops cleanly on SIGINT.
#[test]
fn without_the_variable_nothing_panics() {
    let mut server = Faulty::start(None);
    server.wait_listening();
    let watched_from = Instant::now();
    while watched_from.elapsed() < Duration::from_secs(4) {
        assert!(server.exited().is_none(), "exited: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.signal(libc::SIGINT);
    let (status, stderr) = server.wait_exit();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(FAULT_ENV), "{stderr}");
}

/// The rate logged on the "SIGTERM: draining" line.
fn logged_rate(line: &str) -> u32 {
    let rest = line
        .split("rate_per_s=")
        .nth(1)
        .unwrap_or_else(|| panic!("no rate in {line:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

fn lines_with(server: &Server, needle: &str) -> Vec<String> {
    let log = server.log.lock().unwrap();
    log.iter().filter(|l| l.contains(needle)).cloned().collect()
}

/// `pushgate drain --rate 1` then SIGTERM: the drain goes on at 1/s (not
/// the configured 1000/s) and "SIGTERM: draining" is logged once. Before
/// the fix the supervisor logged it every 250 ms and each time reset the
/// rate to the configured one, closing everyone at once.
#[test]
fn sigterm_during_a_drain_keeps_its_rate_and_logs_once() {
    const DEVICES: usize = 4;
    let server = Server::start(&["--shards", "1", "--drain-rate-per-s", "1000"]);
    let readers: Vec<_> = (0..DEVICES)
        .map(|i| {
            let (mut ws, _) = ws_connect(&server, &format!("u{i}"), false, None);
            if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = ws.get_mut() {
                tcp.set_read_timeout(Some(PATIENCE)).unwrap();
            }
            std::thread::spawn(move || loop {
                match ws.read() {
                    Ok(tungstenite::Message::Close(_)) => return Instant::now(),
                    Ok(_) => {}
                    Err(e) => panic!("expected a close frame, got {e}"),
                }
            })
        })
        .collect();
    let before_drain = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .args(["drain", "--rate", "1", "--run-dir"])
        .arg(&server.run_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: kill(2) on the server's pid, our child.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    wait_until("the SIGTERM log line", || {
        !lines_with(&server, "SIGTERM: draining").is_empty()
    });
    let last_close = readers
        .into_iter()
        .map(|r| r.join().unwrap())
        .max()
        .unwrap();
    // At 1/s the 4th close comes about 4 s after the drain began; the
    // configured 1000/s would close them all within a tick of the SIGTERM.
    let took = last_close - before_drain;
    assert!(
        took >= Duration::from_millis(2500),
        "{DEVICES} closes took {took:?}: the SIGTERM reset the drain rate"
    );
    wait_until("the drain to complete", || {
        !lines_with(&server, "drain complete").is_empty()
    });
    let lines = lines_with(&server, "SIGTERM: draining");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(logged_rate(&lines[0]), 1, "{lines:?}");
}

/// A second SIGTERM during the drain it started exits at once (status 1),
/// without waiting for the drain.
#[test]
fn a_second_sigterm_exits_at_once() {
    let server = Server::start(&["--shards", "1", "--drain-rate-per-s", "1"]);
    // At 1/s, these would keep a drain going for about 5 s.
    let _devices: Vec<_> = (0..5)
        .map(|i| ws_connect(&server, &format!("u{i}"), false, None).0)
        .collect();
    // SAFETY: kill(2) on the server's pid, our child.
    unsafe { libc::kill(server.pid(), libc::SIGTERM) };
    wait_until("the SIGTERM log line", || {
        !lines_with(&server, "SIGTERM: draining").is_empty()
    });
    let log = server.log.clone();
    let status = server.terminate();
    let log = log.lock().unwrap();
    assert_eq!(status.code(), Some(1), "{log:?}");
    assert!(
        log.iter().any(|l| l.contains("second signal: exiting now")),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("drain complete")), "{log:?}");
}
