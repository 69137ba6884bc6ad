//! The take-over control socket: a Unix SOCK_SEQPACKET socket, so every
//! message arrives whole and with exactly the descriptors sent with it
//! (SCM_RIGHTS). A message is one JSON object, `op` naming its kind; a
//! message that does not parse is answered with `Refused` and ends the
//! conversation (so an older or newer peer is told, not misread).

use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

/// The take-over format this binary speaks. A peer with another is refused
/// (the old process keeps everything) until both sides understand it.
/// 2: live connections move (`History`, `Connections`, `Ack`,
/// `ConnectionsDone`). 3: mailboxes move (`Mailboxes`, `MailboxesDone`).
pub const FORMAT_VERSION: u32 = 3;
/// SCM_RIGHTS carries at most this many descriptors per message (the
/// kernel's SCM_MAX_FD).
pub const FDS_PER_MESSAGE_MAX: usize = 253;
/// The largest message either side sends or accepts.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// One listening socket sent to a successor (its descriptor travels in the
/// same message, at the same position).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerMeta {
    /// Index into the runtime's listeners (client, push, admin, console).
    pub listener: usize,
    /// The shard of the old process that accepted on it.
    pub shard: usize,
}

/// How a moved device is spoken to (`gateway::sessions::Wire`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireKind {
    WebSocket,
    WebSocketTextPing,
    Sse,
}

/// The state of one live device connection sent to a successor (its
/// descriptor travels in the same message, at the same position). What is
/// not here is not needed: unsent bytes were flushed before the freeze; a
/// device with a partial inbound frame or a replay under way is not
/// frozen (it moves later, or is closed with 1012 and resumes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    pub user: String,
    /// Came in on a sleeping-console listener (its liveness profile).
    pub console: bool,
    pub wire: WireKind,
    /// Milliseconds since the device last sent a byte (its liveness).
    pub idle_ms: u64,
    /// The newest seq it was sent: the successor replays what is newer.
    pub seq: u64,
}

/// A push the running process received after its devices started moving:
/// the successor delivers it (`users` empty: a broadcast).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedPush {
    pub users: Vec<String>,
    /// The notification's JSON text, as the publisher sent it.
    pub data: String,
    /// The publisher's name for the request (`Request::PushOnce`), so the
    /// successor answers a resend of it instead of delivering it again
    /// ([`super::resends`]). Absent from a plain push; a successor that
    /// does not know the field ignores it (serde skips unknown fields), so
    /// the format version stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<super::resends::RequestKey>,
}

/// One stored push as it travels (`gateway::home::MovedEntry`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    pub seq: u64,
    /// Milliseconds since it was stored (the two processes' clocks differ).
    pub age_ms: u64,
    /// The notification's JSON text.
    pub data: String,
}

/// A user's mailbox, or a part of it (`more`: the next part, with the
/// next-newer entries, is the first user of the next `Mailboxes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMailbox {
    pub name: String,
    /// Every push to this user with seq ≤ this is gone.
    pub floor_seq: u64,
    /// Oldest first.
    pub entries: Vec<StoredEntry>,
    #[serde(default)]
    pub more: bool,
}

/// A part of one old shard's broadcast log: the successor appends the
/// parts (floor: the highest) before any user of that shard arrives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastLog {
    pub floor_seq: u64,
    /// Oldest first.
    pub entries: Vec<StoredEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Message {
    /// `pushgate upgrade` → running process: start a successor and hand
    /// over; `drain`: move only the listeners and drain the connections
    /// (the fallback an operator may choose, as before live moves).
    Upgrade {
        #[serde(default)]
        drain: bool,
    },
    /// Running process → `pushgate upgrade`: a step done.
    Progress { step: String, detail: String },
    /// Running process → `pushgate upgrade`: how it ended.
    Outcome {
        ok: bool,
        message: String,
        successor_pid: Option<u32>,
    },
    /// Successor → running process: the first message.
    Hello {
        format: u32,
        pid: u32,
        shards: usize,
    },
    /// Either side: no (the reason is logged by both).
    Refused { reason: String },
    /// Running process → successor: listening sockets, descriptors attached
    /// in the same order; `more` = another `Listeners` message follows.
    Listeners {
        listeners: Vec<ListenerMeta>,
        more: bool,
    },
    /// Running process → successor, before `Listeners`: continue this
    /// history — the same epoch, seqs from `seq_start` (above every seq the
    /// running process gave or will give), so a moved device sees its seqs
    /// keep increasing.
    History { epoch: u64, seq_start: u64 },
    /// Successor → running process: accepting on every inherited socket.
    Accepting,
    /// Running process → successor: it no longer accepts; the listeners are
    /// the successor's. The connection stays open until one side exits, so
    /// each learns when the other is gone.
    Committed,
    /// Running process → successor, after `Committed`: live devices, their
    /// descriptors attached in the same order (≤ 253; ≤ `BATCH_RECORDS_MAX`).
    /// The sender keeps its copies until `Ack{batch}`.
    Connections {
        batch: u64,
        records: Vec<ConnectionRecord>,
    },
    /// Running process → successor: pushes its publishers sent after its
    /// devices started moving, for the successor to deliver (acknowledged
    /// like a batch of connections).
    Pushes {
        batch: u64,
        items: Vec<ForwardedPush>,
    },
    /// Successor → running process: batch `batch` is received; its
    /// descriptors (or pushes) are the successor's; for `MailboxesDone`:
    /// every mailbox is merged.
    Ack { batch: u64 },
    /// Running process → successor: every device moved (`moved` in all).
    ConnectionsDone { moved: u64 },
    /// Running process → successor, after `ConnectionsDone`: mailboxes of
    /// the users its shard `shard` homed, that shard's broadcast log
    /// first (≤ `MAILBOX_BATCH_BYTES_MAX` of entries and names, no
    /// descriptors; acknowledged like a batch of connections).
    Mailboxes {
        batch: u64,
        shard: usize,
        users: Vec<UserMailbox>,
        #[serde(default)]
        broadcasts: Option<BroadcastLog>,
    },
    /// Running process → successor: every mailbox was sent (`users` in
    /// all). The successor acknowledges once its shards merged them all,
    /// so a device that resumes after the upgrade's outcome finds them.
    MailboxesDone { batch: u64, users: u64 },
}

/// The JSON text of the pushes in one `Pushes` message, at most (one
/// push's data at most `FORWARD_DATA_BYTES_MAX`).
pub const FORWARD_BATCH_BYTES_MAX: usize = 48 * 1024;
/// A push larger than this is not forwarded during a live upgrade: it is
/// refused (retryable), not lost.
pub const FORWARD_DATA_BYTES_MAX: usize = 16 * 1024;

/// The JSON text of the entries and user names in one `Mailboxes` message,
/// at most (as escaped in it), leaving room for the envelope.
pub const MAILBOX_BATCH_BYTES_MAX: usize = 56 * 1024;
/// One stored push travels if its JSON, escaped, is at most this;
/// a larger one stays behind and raises its user's (or the broadcast
/// log's) floor over it, so a resume across it is `recovered:false`.
pub const MAILBOX_ENTRY_BYTES_MAX: usize = 48 * 1024;

/// Records in one `Connections` message: 128 of the longest user IDs (256
/// bytes) stay well inside `MESSAGE_BYTES_MAX`.
pub const BATCH_RECORDS_MAX: usize = 128;

/// A connected control socket.
pub struct Channel {
    fd: OwnedFd,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = check(unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_un(path: &Path) -> io::Result<libc::sockaddr_un> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= sun.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {} is too long", path.display()),
        ));
    }
    sun.sun_family = libc::AF_UNIX as _;
    for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(sun)
}

const SUN_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;

/// Waits up to `timeout` (None: forever) for `fd` to be readable.
fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    loop {
        // SAFETY: pfd is one live pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(n > 0);
    }
}

/// The control socket a running process listens on (replacing a stale
/// file), mode 0600: only its own user may upgrade it.
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = seqpacket_socket()?;
    let sun = sockaddr_un(path)?;
    // SAFETY: sun is a valid sockaddr_un of SUN_LEN bytes.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            SUN_LEN,
        )
    })?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    // SAFETY: plain listen(2) on a socket we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), 8) })?;
    Ok(fd)
}

/// Accepts one connection within `timeout` (None: waits forever).
pub fn accept(listener: &OwnedFd, timeout: Option<Duration>) -> io::Result<Option<Channel>> {
    if !wait_readable(listener.as_raw_fd(), timeout)? {
        return Ok(None);
    }
    // SAFETY: accept4 without an address; the result is checked.
    let fd = check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(Some(Channel {
        fd: unsafe { OwnedFd::from_raw_fd(fd) },
    }))
}

/// Connects to the control socket at `path`.
pub fn connect(path: &Path) -> io::Result<Channel> {
    let fd = seqpacket_socket()?;
    let sun = sockaddr_un(path)?;
    // SAFETY: sun is a valid sockaddr_un of SUN_LEN bytes.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sun as *const libc::sockaddr_un).cast(),
            SUN_LEN,
        )
    })?;
    Ok(Channel { fd })
}

impl Channel {
    /// The peer's process id and user id (SO_PEERCRED).
    pub fn peer(&self) -> io::Result<(u32, u32)> {
        // SAFETY: all-zero is a valid ucred.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: cred and len describe a live buffer of len bytes.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        })?;
        Ok((cred.pid as u32, cred.uid))
    }

    /// Sends one message with `fds` attached (at most
    /// `FDS_PER_MESSAGE_MAX`).
    pub fn send(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        assert!(
            fds.len() <= FDS_PER_MESSAGE_MAX,
            "SCM_RIGHTS carries at most 253"
        );
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        if body.len() > MESSAGE_BYTES_MAX {
            return Err(io::Error::other("take-over message too large"));
        }
        let mut iov = libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        };
        let fd_bytes = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
        // u64 words: cmsghdr alignment.
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: all-zero is a valid msghdr.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        if !fds.is_empty() {
            hdr.msg_control = control.as_mut_ptr().cast();
            hdr.msg_controllen = space as _;
            // SAFETY: msg_control holds `space` (CMSG_SPACE) zeroed, aligned
            // bytes for one cmsghdr and every descriptor: CMSG_FIRSTHDR is
            // non-null and CMSG_DATA has room for fd_bytes.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&hdr);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        // SAFETY: hdr points at live iov/control buffers for the call.
        let sent = check(unsafe {
            libc::sendmsg(self.fd.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) as libc::c_int
        })?;
        if sent as usize != body.len() {
            return Err(io::Error::other("take-over message sent in part"));
        }
        Ok(())
    }

    /// Receives one message and the descriptors attached to it, waiting up
    /// to `timeout` (None: forever). `Ok(None)`: the peer closed (or the
    /// time ran out: `TimedOut` error instead).
    pub fn recv(&self, timeout: Option<Duration>) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        if !wait_readable(self.fd.as_raw_fd(), timeout)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no take-over message in time",
            ));
        }
        let mut body = vec![0u8; MESSAGE_BYTES_MAX];
        let mut iov = libc::iovec {
            iov_base: body.as_mut_ptr().cast(),
            iov_len: body.len(),
        };
        let fd_bytes = (FDS_PER_MESSAGE_MAX * std::mem::size_of::<RawFd>()) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: all-zero is a valid msghdr.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: hdr points at live iov/control buffers for the call.
        let n = check(unsafe {
            libc::recvmsg(self.fd.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) as libc::c_int
        })? as usize;
        let fds = received_fds(&hdr);
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        if hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(io::Error::other(
                "take-over message truncated (too large or too many descriptors)",
            ));
        }
        let msg = serde_json::from_slice(&body[..n]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("take-over message not understood: {e}"),
            )
        })?;
        Ok(Some((msg, fds)))
    }
}

/// Takes ownership of every descriptor the kernel installed for `hdr`.
fn received_fds(hdr: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: recvmsg filled hdr's control buffer with well-formed cmsghdrs
    // that the CMSG_* walk stays within; each SCM_RIGHTS descriptor is new
    // here and owned by nobody else, so OwnedFd may take it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize - header) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    fds
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pair() -> (Channel, Channel) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors socketpair writes.
        check(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })
        .unwrap();
        // SAFETY: both are fresh and owned by nobody else.
        unsafe {
            (
                Channel {
                    fd: OwnedFd::from_raw_fd(fds[0]),
                },
                Channel {
                    fd: OwnedFd::from_raw_fd(fds[1]),
                },
            )
        }
    }

    #[test]
    fn a_message_arrives_whole_with_its_descriptors() {
        let (a, b) = pair();
        let files: Vec<std::fs::File> = (0..FDS_PER_MESSAGE_MAX)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        let msg = Message::Listeners {
            listeners: vec![
                ListenerMeta {
                    listener: 0,
                    shard: 1
                };
                FDS_PER_MESSAGE_MAX
            ],
            more: false,
        };
        a.send(&msg, &fds).unwrap();
        a.send(&Message::Accepting, &[]).unwrap();
        let (got, got_fds) = b.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
        assert_eq!(got, msg);
        assert_eq!(got_fds.len(), FDS_PER_MESSAGE_MAX);
        let (got, got_fds) = b.recv(Some(Duration::from_secs(5))).unwrap().unwrap();
        assert_eq!(got, Message::Accepting);
        assert!(got_fds.is_empty());
        drop(a);
        assert!(b.recv(Some(Duration::from_secs(5))).unwrap().is_none());
    }

    #[test]
    fn a_full_batch_of_the_longest_users_fits_in_one_message() {
        let record = ConnectionRecord {
            user: "é".repeat(crate::auth::USER_ID_BYTES_MAX / 2),
            console: true,
            wire: WireKind::WebSocketTextPing,
            idle_ms: u64::MAX,
            seq: u64::MAX,
        };
        let msg = Message::Connections {
            batch: u64::MAX,
            records: vec![record; BATCH_RECORDS_MAX],
        };
        let body = serde_json::to_vec(&msg).unwrap();
        assert!(body.len() <= MESSAGE_BYTES_MAX, "{}", body.len());
        const { assert!(BATCH_RECORDS_MAX <= FDS_PER_MESSAGE_MAX) };
    }

    #[test]
    fn a_full_batch_of_mailboxes_fits_in_one_message() {
        // The worst case as counted: every byte escaped to two.
        let data = "\"".repeat(MAILBOX_ENTRY_BYTES_MAX / 2 - 64);
        let entry = StoredEntry {
            seq: u64::MAX,
            age_ms: u64::MAX,
            data,
        };
        assert!(crate::takeover::mailboxes::entry_bytes(&entry) <= MAILBOX_ENTRY_BYTES_MAX);
        let msg = Message::Mailboxes {
            batch: u64::MAX,
            shard: usize::MAX,
            users: vec![UserMailbox {
                name: "\"".repeat(crate::auth::USER_ID_BYTES_MAX),
                floor_seq: u64::MAX,
                entries: vec![entry],
                more: true,
            }],
            broadcasts: Some(BroadcastLog {
                floor_seq: u64::MAX,
                entries: Vec::new(),
            }),
        };
        let body = serde_json::to_vec(&msg).unwrap();
        assert!(body.len() <= MESSAGE_BYTES_MAX, "{}", body.len());
        const { assert!(MAILBOX_ENTRY_BYTES_MAX + 8 * 1024 <= MAILBOX_BATCH_BYTES_MAX) };
        const { assert!(MAILBOX_BATCH_BYTES_MAX + 4 * 1024 <= MESSAGE_BYTES_MAX) };
    }

    #[test]
    fn an_unknown_message_is_an_error_not_a_guess() {
        let (a, b) = pair();
        let body = br#"{"op":"sessions","format":2}"#;
        // SAFETY: body is live for the call.
        let n = unsafe { libc::send(a.fd.as_raw_fd(), body.as_ptr().cast(), body.len(), 0) };
        assert_eq!(n as usize, body.len());
        let err = b.recv(Some(Duration::from_secs(5))).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(b.recv(Some(Duration::ZERO)).is_err(), "nothing else queued");
    }
}
