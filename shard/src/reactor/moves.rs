//! Connections that leave this process or arrive from another one (a live
//! upgrade): a connection is *exported* by turning its direct descriptor
//! into a regular one (IORING_OP_FIXED_FD_INSTALL) at a quiescent point,
//! and a regular descriptor is *adopted* by putting it into this ring's
//! fixed-file table (IORING_OP_FILES_UPDATE with an allocated slot).
//!
//! Quiescent means: no recv armed (the multishot recv is cancelled and its
//! last completion reaped, so every byte the kernel handed us reached the
//! app, and every later byte stays in the socket for the next owner), no
//! send in flight and nothing queued (unsent bytes are flushed first: a
//! queue of frames mid-write means nothing to another process). Pushes
//! that the app queues meanwhile are flushed too; the install waits.

use super::Reactor;
use crate::conn::*;
use crate::op::{self, Tag};
use crate::ConnId;
use io_uring::{opcode, types};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `IORING_FILE_INDEX_ALLOC`: let the kernel pick a free slot and write its
/// index back into the array.
const FILE_INDEX_ALLOC: i32 = -1;

/// Why a connection cannot be exported now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportError {
    /// The kernel lacks IORING_OP_FIXED_FD_INSTALL or FILES_UPDATE.
    Unsupported,
    /// The connection is gone, closing, being handed off or already
    /// exporting.
    NotOpen,
    /// Part of its state lives in this shard only (a TLS connection's
    /// record keys and sequence numbers): it cannot move; close it so it
    /// reconnects instead.
    KeptHere,
}

/// How an export ended (a FIXED_FD_INSTALL completion).
pub(crate) enum Exported {
    /// A stale completion: nothing to tell the app.
    Gone,
    /// The connection left the shard: here is its regular descriptor; the
    /// fixed slot is being closed.
    Moved(OwnedFd),
    /// The install failed with this errno: the connection stays, receiving
    /// again.
    Failed(i32),
    /// The app closed the connection meanwhile: the installed descriptor
    /// was closed too.
    Dropped,
}

/// How an adoption ended (a FILES_UPDATE completion).
pub(crate) enum Adopted<M> {
    Gone,
    /// The descriptor lives in this ring as connection `ConnId` (streaming).
    Open(ConnId, M),
    /// It could not be adopted (errno); the descriptor and state go back.
    Failed(OwnedFd, M, i32),
}

struct PendingAdopt<M> {
    /// The array FILES_UPDATE reads the descriptor from and writes the
    /// allocated slot back into: boxed, so its address holds until the
    /// completion.
    fds: Box<[RawFd; 1]>,
    /// Kept open until the completion: the ring takes its own reference.
    fd: OwnedFd,
    msg: M,
}

/// Adoptions in flight, by token. Bounded by the caller (a take-over
/// adopts one batch of ≤ 253 descriptors at a time).
pub(crate) struct Adopts<M> {
    pending: HashMap<u64, PendingAdopt<M>>,
    next_token: u64,
}

impl<M> Adopts<M> {
    pub(crate) fn new() -> Adopts<M> {
        Adopts {
            pending: HashMap::new(),
            next_token: 0,
        }
    }
}

impl<M> Reactor<M> {
    /// Starts exporting `id` (see the module doc). The app keeps owning it
    /// until `on_exported`; sends and closes work as usual meanwhile.
    pub(crate) fn start_export(&mut self, id: ConnId) -> Result<(), ExportError> {
        if !crate::takeover::connection_moves_supported() {
            return Err(ExportError::Unsupported);
        }
        let Some(conn) = self.conn_mut(id) else {
            return Err(ExportError::NotOpen);
        };
        if conn.phase != Phase::Open || conn.has(EXPORTING) {
            return Err(ExportError::NotOpen);
        }
        if conn.has(TLS) {
            return Err(ExportError::KeptHere);
        }
        conn.set(EXPORTING);
        if conn.has(RECV_ARMED) {
            let entry = opcode::AsyncCancel::new(op::encode_conn(Tag::Recv, id))
                .build()
                .user_data(op::encode(Tag::Ignore, 0));
            self.ring.push(entry);
        }
        self.maybe_install(id);
        Ok(())
    }

    /// Installs the descriptor of an exporting connection once it is
    /// quiescent; called after each of its recv and send completions.
    pub(crate) fn maybe_install(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.phase != Phase::Open
            || !conn.has(EXPORTING)
            || conn.has(INSTALL_IN_FLIGHT | RECV_ARMED | SEND_IN_FLIGHT | SEND_READY)
            || conn.queued_bytes() > 0
        {
            return;
        }
        conn.set(INSTALL_IN_FLIGHT);
        // file_flags 0: the new descriptor is close-on-exec.
        let entry = opcode::FixedFdInstall::new(types::Fixed(conn.slot), 0)
            .build()
            .user_data(op::encode_conn(Tag::Export, id));
        self.ring.push(entry);
    }

    /// The FIXED_FD_INSTALL of `id` completed with `res` (the new
    /// descriptor, or -errno).
    pub(crate) fn export_completed(&mut self, id: ConnId, res: i32) -> Exported {
        let installed = (res >= 0).then(|| {
            // SAFETY: a successful FIXED_FD_INSTALL returns a descriptor
            // new in this process's table that nothing else owns.
            unsafe { OwnedFd::from_raw_fd(res) }
        });
        let shard = self.shard_id;
        let Some(conn) = self.conn_mut(id) else {
            return Exported::Gone;
        };
        conn.clear(INSTALL_IN_FLIGHT);
        let Some(fd) = installed else {
            conn.clear(EXPORTING);
            tracing::warn!(
                shard,
                errno = -res,
                "installing a connection's descriptor failed; it stays here"
            );
            if conn.phase == Phase::Open {
                self.arm_recv(id);
            } else {
                self.maybe_free(id);
            }
            return Exported::Failed(-res);
        };
        if conn.phase != Phase::Open {
            drop(fd);
            self.maybe_free(id);
            return Exported::Dropped;
        }
        // The regular descriptor holds the socket now; the slot goes.
        conn.clear(EXPORTING | WANT_DRAINED);
        conn.phase = Phase::Closed;
        conn.timer.deadline_tick = 0;
        conn.set(CLOSE_IN_FLIGHT);
        let slot = conn.slot;
        self.push_close(id, slot);
        Exported::Moved(fd)
    }

    /// Starts adopting `fd` (a connected socket from another process) with
    /// `msg` as its state; `App::on_adopted` follows.
    pub(crate) fn start_adopt(&mut self, fd: OwnedFd, msg: M) -> Result<(), (OwnedFd, M)> {
        if self.stopping || !crate::takeover::connection_moves_supported() {
            return Err((fd, msg));
        }
        let token = self.adopts.next_token;
        self.adopts.next_token += 1;
        let mut fds = Box::new([fd.as_raw_fd()]);
        // `Ring::push`'s contract: the array the kernel reads the
        // descriptor from and writes the slot into stays alive (boxed, in
        // `adopts.pending`, dropped after the ring) until the completion;
        // so does `fd`, so the number cannot name another file meanwhile.
        let entry = opcode::FilesUpdate::new(fds.as_mut_ptr().cast_const(), 1)
            .offset(FILE_INDEX_ALLOC)
            .build()
            .user_data(op::encode(Tag::Adopt, token));
        self.adopts
            .pending
            .insert(token, PendingAdopt { fds, fd, msg });
        self.ring.push(entry);
        Ok(())
    }

    /// The FILES_UPDATE of adoption `token` completed with `res` (1: the
    /// descriptor is in the table).
    pub(crate) fn adopt_completed(&mut self, token: u64, res: i32) -> Adopted<M> {
        let Some(p) = self.adopts.pending.remove(&token) else {
            return Adopted::Gone;
        };
        if res != 1 {
            let errno = if res < 0 { -res } else { libc::EIO };
            return Adopted::Failed(p.fd, p.msg, errno);
        }
        // SAFETY: the kernel wrote the allocated slot into the boxed array
        // before posting the completion we are handling; nothing else
        // writes it any more.
        let slot = unsafe { std::ptr::read_volatile(p.fds.as_ptr()) } as u32;
        // The ring holds its own reference now; ours closes.
        drop(p.fd);
        if self.stopping {
            self.close_slot(slot);
            return Adopted::Gone;
        }
        let id = self.insert(slot, STREAMING);
        Adopted::Open(id, p.msg)
    }
}
