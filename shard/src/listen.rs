//! Listening sockets. Each shard gets its own socket on the same address
//! (SO_REUSEPORT), so the kernel spreads new connections over the shards and
//! no accept lock is shared.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// A listener every shard opens.
#[derive(Clone, Debug)]
pub enum ListenerSpec {
    /// TCP on `addr`; port 0 picks one port for all shards.
    Tcp {
        addr: SocketAddr,
        backlog: i32,
        /// Options set on the listener, inherited by accepted sockets (an
        /// accepted direct descriptor cannot be given options afterwards).
        options: Vec<SocketOption>,
    },
    /// A Unix stream socket per shard: `{shard}` in the path is replaced by
    /// the shard number. An existing socket file is replaced.
    Unix {
        path_template: PathBuf,
        mode: u32,
        backlog: i32,
    },
}

/// A `setsockopt(level, name, value)` with an int value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOption {
    pub level: i32,
    pub name: i32,
    pub value: i32,
}

impl ListenerSpec {
    pub fn unix_path(template: &std::path::Path, shard: usize) -> PathBuf {
        PathBuf::from(
            template
                .to_string_lossy()
                .replace("{shard}", &shard.to_string()),
        )
    }

    /// The shard number in `path` made from `template`, if it was.
    pub fn unix_shard_of(template: &std::path::Path, path: &std::path::Path) -> Option<usize> {
        let template = template.to_string_lossy();
        let (prefix, suffix) = template.split_once("{shard}")?;
        let path = path.to_string_lossy();
        let number = path.strip_prefix(prefix)?.strip_suffix(suffix)?;
        number
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| number.parse().ok())
            .flatten()
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn set_option(fd: RawFd, opt: SocketOption) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    check(unsafe {
        libc::setsockopt(
            fd,
            opt.level,
            opt.name,
            (&opt.value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn socket(domain: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = check(unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as _;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as _;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The address a bound socket got (to learn the port when asked for 0).
pub(crate) fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len are live and describe a buffer of len bytes.
    check(unsafe {
        libc::getsockname(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len)
    })?;
    match storage.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family says so).
            let sin = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in) };
            Ok(SocketAddr::from((
                sin.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family says so).
            let sin6 = unsafe { &*(&storage as *const _ as *const libc::sockaddr_in6) };
            Ok(SocketAddr::from((
                sin6.sin6_addr.s6_addr,
                u16::from_be(sin6.sin6_port),
            )))
        }
        _ => Err(io::Error::other("not an inet socket")),
    }
}

/// The path a bound Unix socket listens on.
pub(crate) fn unix_path(fd: RawFd) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: sun and len are live and describe a buffer of len bytes.
    check(unsafe { libc::getsockname(fd, (&mut sun as *mut libc::sockaddr_un).cast(), &mut len) })?;
    if sun.sun_family as i32 != libc::AF_UNIX {
        return Err(io::Error::other("not a Unix socket"));
    }
    let bytes: Vec<u8> = sun
        .sun_path
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
}

pub(crate) fn open_tcp(
    addr: SocketAddr,
    backlog: i32,
    options: &[SocketOption],
) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let fd = socket(domain)?;
    let raw = fd.as_raw_fd();
    for opt in [
        SocketOption {
            level: libc::SOL_SOCKET,
            name: libc::SO_REUSEADDR,
            value: 1,
        },
        SocketOption {
            level: libc::SOL_SOCKET,
            name: libc::SO_REUSEPORT,
            value: 1,
        },
    ]
    .iter()
    .chain(options)
    {
        set_option(raw, *opt)?;
    }
    let (storage, len) = sockaddr_of(&addr);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    check(unsafe { libc::bind(raw, &storage as *const _ as *const libc::sockaddr, len) })?;
    // SAFETY: plain listen(2) on a socket we own.
    check(unsafe { libc::listen(raw, backlog) })?;
    Ok(fd)
}

pub(crate) fn open_unix(path: &std::path::Path, mode: u32, backlog: i32) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= sun.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unix socket path {} is {} bytes; the limit is {}",
                path.display(),
                bytes.len(),
                sun.sun_path.len() - 1
            ),
        ));
    }
    sun.sun_family = libc::AF_UNIX as _;
    for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = socket(libc::AF_UNIX)?;
    let raw = fd.as_raw_fd();
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: sun is a valid, NUL-terminated sockaddr_un.
    check(unsafe { libc::bind(raw, (&sun as *const libc::sockaddr_un).cast(), len) })?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    // SAFETY: plain listen(2) on a socket we own.
    check(unsafe { libc::listen(raw, backlog) })?;
    Ok(fd)
}
