//! Notices an armed accept that is not being woken: connections wait in
//! its listening socket's accept queue while nothing is accepted. Pure: the
//! queue length read once a check in, "renew" out.
//!
//! Why: io_uring's accept waits on a listening socket with an exclusive
//! poll. When two processes' rings wait on one socket — a live upgrade,
//! until the old process has stopped accepting, or after a successor died
//! and its ring is still being torn down — a wake-up can be lost, and seen
//! under CPU load it stays lost: the shard sleeps with its accept armed
//! while the queue grows. Cancelling the accept and arming it afresh tries
//! at once and waits cleanly. The watch costs one `getsockopt(TCP_INFO)`
//! per TCP listener per check (once a second).

/// How often each listener is checked.
pub(crate) const CHECK_INTERVAL_MS: u64 = 1_000;
/// Checks in a row that must find the queue not empty with no accept in
/// between before the accept is renewed (a busy shard may take a while to
/// reap a completion; it never takes a second with nothing accepted).
const STUCK_CHECKS: u8 = 2;

#[derive(Debug, Default)]
pub(crate) struct AcceptWatch {
    /// Accepts completed since the last check.
    accepted: bool,
    /// Checks in a row that found waiting connections and no accept.
    stuck_checks: u8,
}

impl AcceptWatch {
    /// An accept on this socket completed with a connection.
    pub(crate) fn accepted(&mut self) {
        self.accepted = true;
    }

    /// One check: `queued` connections wait in the socket's accept queue
    /// while its accept is armed. True: renew the accept.
    pub(crate) fn check(&mut self, queued: u32) -> bool {
        let stuck = queued > 0 && !std::mem::take(&mut self.accepted);
        self.stuck_checks = if stuck { self.stuck_checks + 1 } else { 0 };
        if self.stuck_checks >= STUCK_CHECKS {
            self.stuck_checks = 0;
            return true;
        }
        false
    }

    /// The accept was cancelled or not armed: start counting afresh.
    pub(crate) fn reset(&mut self) {
        *self = AcceptWatch::default();
    }
}

/// Connections waiting in the accept queue of listening TCP socket `fd`;
/// `None` if it is not a TCP socket (a Unix listener) or the call failed.
pub(crate) fn accept_queue_len(fd: std::os::fd::RawFd) -> Option<u32> {
    // SAFETY: an all-zero `tcp_info` is a valid value (integers only).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is a descriptor the caller owns for the duration of the
    // call; `info` and `len` are valid for writes of `len` bytes, and the
    // kernel writes at most `len` bytes and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // For a socket in LISTEN (state 10, include/net/tcp_states.h), the
    // kernel reports its accept queue's length in `tcpi_unacked` (and the
    // backlog in `tcpi_sacked`).
    const TCP_LISTEN: u8 = 10;
    (rc == 0 && info.tcpi_state == TCP_LISTEN).then_some(info.tcpi_unacked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_that_stands_still_for_two_checks_renews_the_accept() {
        let mut w = AcceptWatch::default();
        assert!(!w.check(3));
        assert!(w.check(3));
        // Counting starts again after a renewal.
        assert!(!w.check(3));
        assert!(w.check(1));
    }

    #[test]
    fn an_accept_in_between_or_an_empty_queue_is_not_stuck() {
        let mut w = AcceptWatch::default();
        assert!(!w.check(5));
        w.accepted();
        assert!(!w.check(5), "accepting: just busy");
        assert!(!w.check(0));
        assert!(!w.check(2));
        w.reset();
        assert!(!w.check(2), "reset forgets the first sighting");
    }

    #[test]
    fn reads_the_accept_queue_of_a_tcp_listener_and_not_of_a_unix_one() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(accept_queue_len(listener.as_raw_fd()), Some(0));
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        // The handshake completes in the kernel; nothing accepts.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while accept_queue_len(listener.as_raw_fd()) != Some(2) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let dir = std::env::temp_dir().join(format!("accept-watch-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix = std::os::unix::net::UnixListener::bind(&dir).unwrap();
        assert_eq!(accept_queue_len(unix.as_raw_fd()), None);
        let _ = std::fs::remove_file(&dir);
    }
}
