//! The few syscalls std does not offer: epoll, a nonblocking connect from a
//! chosen source address, the monotonic clock shared between processes, and
//! the kernel's random bytes. Everything else goes through std types.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Turns a libc `-1` return into the thread's `errno`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An epoll instance, level-triggered throughout: a load generator that
/// re-polls a ready socket costs a wake-up, a lost edge costs a connection.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative return is a
        // fresh descriptor that nothing else owns, so OwnedFd may take it.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: see above — `fd` is valid, open and owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: both descriptors are open for the duration of the call (the
        // borrow guarantees `fd`, `self` owns the epoll fd) and `event` is a
        // valid, initialised epoll_event that outlives the call.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut event) })?;
        Ok(())
    }

    pub fn add(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` (-1: forever). An interrupted wait reports
    /// no events rather than an error, so callers simply loop.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let capacity = libc::c_int::try_from(events.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `events` is a valid writable buffer of at least `capacity`
        // epoll_event entries, borrowed mutably for the whole call.
        let ret = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr(),
                capacity,
                timeout_ms,
            )
        };
        match check(ret) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

fn sockaddr_v4(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Opens a nonblocking TCP socket bound to `source_ip` with the port left to
/// connect() and starts connecting it to `target`. Whether the connect is
/// still in progress (EINPROGRESS) or done at once, writability then SO_ERROR
/// tell its outcome.
///
/// `IP_BIND_ADDRESS_NO_PORT` defers the port choice to connect(), where the
/// kernel picks per 4-tuple: without it bind(ip, 0) reserves a port per source
/// address and TIME_WAIT from the previous run starves the next one.
pub fn connect_from(
    source_ip: Ipv4Addr,
    target: SocketAddrV4,
) -> Result<TcpStream, (&'static str, io::Error)> {
    // SAFETY: socket() takes no pointers; a non-negative return is a fresh
    // descriptor owned by no one else.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
    .map_err(|e| ("socket", e))?;
    // SAFETY: `fd` was just returned by socket() and is owned only here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    let one: libc::c_int = 1;
    // SAFETY: `fd` is an open socket; the option value points at a live c_int
    // whose exact size is passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map_err(|e| ("setsockopt IP_BIND_ADDRESS_NO_PORT", e))?;

    let source = sockaddr_v4(SocketAddrV4::new(source_ip, 0));
    // SAFETY: `fd` is an open socket; `source` is a valid sockaddr_in and the
    // length passed is its size.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&source as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map_err(|e| ("bind", e))?;

    let dest = sockaddr_v4(target);
    // SAFETY: as for bind: open socket, valid sockaddr_in, its exact size.
    let ret = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&dest as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    match check(ret) {
        Ok(_) => Ok(TcpStream::from(fd)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(("connect", e)),
    }
}

/// Makes the socket's close abortive (SO_LINGER on, 0 s): close sends a
/// reset and the socket is gone at once, leaving no TIME_WAIT behind. The
/// load generator closes its connections this way when a run ends, so the
/// next run does not start among tens of thousands of TIME_WAIT sockets.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is open for the call (the borrow guarantees it); the
    // option value points at a live linger whose exact size is passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds. Unlike `Instant` it can be compared
/// between processes, so the parent can span the workers' first connect to
/// their last handshake.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Fills `buf` from the kernel's CSPRNG (used only to seed a fast generator).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    // Bounded: each successful call makes progress; getrandom of ≤256 bytes
    // from the urandom source is documented never to return short.
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid writable region of exactly `rest.len()`
        // bytes, borrowed mutably for the call.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += ret as usize;
    }
    Ok(())
}

/// The soft RLIMIT_NOFILE of this process.
pub fn open_files_soft_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call's duration.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    Ok(limit.rlim_cur)
}

/// The page size sockstat's `mem` counts in.
pub fn page_size_bytes() -> u64 {
    // SAFETY: sysconf takes no pointers and has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// The unit of /proc/PID/stat's CPU times.
pub fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf takes no pointers and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}
