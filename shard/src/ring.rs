//! One io_uring per shard: set-up with the flags this design relies on,
//! submission with a backlog for when the SQ is full, and waiting with a
//! timeout. Start-up failures are turned into sentences an operator can act on.

use io_uring::{squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

pub(crate) struct Ring {
    uring: IoUring,
    /// Entries that did not fit in the SQ; pushed first on the next round.
    backlog: VecDeque<squeue::Entry>,
    backlog_max: usize,
    /// Submitted ops whose final completion has not arrived.
    in_flight: usize,
}

/// Ring set-up: one issuer (the shard thread), task work deferred to our
/// own wait (no IPIs), and a flag telling us when deferred work is pending.
pub(crate) fn build(sq_entries: u32, cq_entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        // Without it, io-uring 0.7.15's submit_and_wait(0) skips GETEVENTS
        // and deferred completions (e.g. accepts) never run.
        .setup_taskrun_flag()
        .setup_cqsize(cq_entries)
        .setup_submit_all()
        .build(sq_entries)
}

/// Explains a failed ring set-up or registration in words an operator can act on.
pub(crate) fn explain(e: &io::Error, what: &str, sq_entries: u32, cq_entries: u32) -> String {
    let errno = e.raw_os_error().unwrap_or(0);
    let memlock = rlimit(libc::RLIMIT_MEMLOCK);
    match errno {
        libc::ENOSYS => format!(
            "{what}: this kernel has no io_uring (ENOSYS). pushgate needs Linux 6.1 or newer with CONFIG_IO_URING."
        ),
        libc::EPERM | libc::EACCES => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into());
            format!(
                "{what}: io_uring is not permitted ({e}). kernel.io_uring_disabled = {disabled}: \
                 set it to 0 (`sysctl -w kernel.io_uring_disabled=0`), or, in a container, \
                 use a seccomp profile that allows io_uring_setup/io_uring_enter/io_uring_register."
            )
        }
        libc::ENOMEM => format!(
            "{what}: not enough locked memory ({e}). io_uring rings and buffer rings are charged \
             to RLIMIT_MEMLOCK, now {} KiB; each shard needs about {} KiB. Raise it \
             (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`) or grant CAP_IPC_LOCK, \
             or use fewer --shards / smaller ring_sq_entries and ring_cq_entries.",
            memlock.0 / 1024,
            ring_bytes_estimate(sq_entries, cq_entries) / 1024
        ),
        libc::EINVAL => format!(
            "{what}: the kernel rejected the io_uring set-up ({e}). pushgate needs Linux 6.1 or \
             newer (SINGLE_ISSUER, DEFER_TASKRUN, multishot accept/recv, buffer rings)."
        ),
        libc::EMFILE | libc::ENFILE => format!(
            "{what}: too many open files ({e}). The open-file limit is {}; raise it \
             (`ulimit -n`, systemd `LimitNOFILE=`) or lower connections_per_shard_max.",
            rlimit(libc::RLIMIT_NOFILE).0
        ),
        _ => format!("{what}: {e}"),
    }
}

/// Rough locked-memory charge of one ring (SQEs, CQEs, SQ array, headers).
pub(crate) fn ring_bytes_estimate(sq_entries: u32, cq_entries: u32) -> u64 {
    sq_entries as u64 * (64 + 4) + cq_entries as u64 * 16 + 2 * 4096
}

/// (soft, hard) limit of a resource.
pub(crate) fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live struct we pass.
    unsafe { libc::getrlimit(resource, &mut lim) };
    (lim.rlim_cur, lim.rlim_max)
}

impl Ring {
    pub(crate) fn new(uring: IoUring) -> Ring {
        Ring {
            uring,
            backlog: VecDeque::new(),
            backlog_max: 0,
            in_flight: 0,
        }
    }

    pub(crate) fn fd(&self) -> i32 {
        self.uring.as_raw_fd()
    }

    /// Queues an op. The caller keeps every buffer the entry points at alive
    /// until the op's final completion.
    pub(crate) fn push(&mut self, entry: squeue::Entry) {
        self.in_flight += 1;
        if self.backlog.is_empty() && self.try_push(&entry) {
            return;
        }
        // SQ full even after a submit: keep order by queueing behind the backlog.
        self.backlog.push_back(entry);
        self.backlog_max = self.backlog_max.max(self.backlog.len());
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: the caller of `push` guarantees the entry's buffers outlive
        // the op (see `push`).
        if unsafe { self.uring.submission().push(entry) }.is_ok() {
            return true;
        }
        // The SQ is full: hand it to the kernel and try once more.
        let _ = self.uring.submit();
        // SAFETY: as above.
        unsafe { self.uring.submission().push(entry) }.is_ok()
    }

    /// Moves backlog entries into the SQ while there is room.
    pub(crate) fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            if !self.try_push(&entry) {
                self.backlog.push_front(entry);
                return;
            }
        }
    }

    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// The longest the backlog has been.
    pub(crate) fn backlog_max(&self) -> usize {
        self.backlog_max
    }

    /// Submitted ops whose final completion has not arrived.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The final completion of one of our ops arrived.
    pub(crate) fn op_completed(&mut self) {
        self.in_flight -= 1;
    }

    /// Appends every completion now in the CQ to `out` as
    /// (user_data, result, flags), emptying the CQ.
    pub(crate) fn collect_completions(&mut self, out: &mut Vec<(u64, i32, u32)>) {
        let mut cq = self.uring.completion();
        cq.sync();
        out.extend(cq.map(|c| (c.user_data(), c.result(), c.flags())));
    }

    /// Submits queued entries and waits for at least one completion or the
    /// timeout. Zero timeout = submit and reap what is ready.
    pub(crate) fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        let result = if timeout.is_zero() {
            self.uring.submit_and_wait(0)
        } else {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.uring.submitter().submit_with_args(1, &args)
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // Timed out, interrupted, or the CQ is overflowing: all mean
                // "go and reap completions".
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                    Ok(())
                }
                _ => Err(e),
            },
        }
    }
}
