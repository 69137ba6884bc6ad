//! A network namespace for one pushgate host, joined to the root namespace
//! by two veth pairs: one that carries its Redis traffic, one that carries
//! its devices and admin API. Cutting the Redis pair (`ip link set … down`
//! on the root end) partitions the host from Redis while its devices stay
//! connected — what one host behind a failed link or switch port sees,
//! and the case where a host must say "not ready" and refuse pushes
//! rather than keep taking them. Packets on the cut link are dropped, not
//! refused: the host's Redis connections hang (no RST), as in a real
//! partition.
//!
//! Names and addresses are unique per process and guard (10.a.b.0/30 for
//! Redis, 10.a.b.4/30 for devices); everything is removed on drop, also
//! when the test fails.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
    /// Root-namespace ends of the pairs (deleting one end deletes both).
    redis_link: String,
    client_link: String,
    /// Redis listens here (root end of the Redis pair).
    pub redis_root_ip: String,
    /// The host listens here (namespace end of the client pair).
    pub client_ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Makes the namespace and its links, or says why it cannot (not root,
    /// no `ip`, a kernel without veth): the test then skips, unless
    /// PUSHGATE_REDIS_REQUIRED=1 (CI), where that is a failure.
    pub fn create(test: &str) -> Option<NetNs> {
        let id = std::process::id() * 4 + NEXT.fetch_add(1, Relaxed) % 4;
        let (a, b) = (64 + (id >> 8) % 128, id % 256);
        let ns = NetNs {
            name: format!("pgfail-{id}"),
            redis_link: format!("pgr{id}"),
            client_link: format!("pgc{id}"),
            redis_root_ip: format!("10.{a}.{b}.1"),
            client_ns_ip: format!("10.{a}.{b}.6"),
        };
        match ns.build(a, b) {
            Ok(()) => Some(ns),
            Err(why) => {
                assert!(
                    std::env::var("PUSHGATE_REDIS_REQUIRED").as_deref() != Ok("1"),
                    "{test}: cannot make a network namespace and veth pairs ({why}) and \
                     PUSHGATE_REDIS_REQUIRED=1: run the tests as root (CAP_NET_ADMIN) with \
                     iproute2 installed"
                );
                eprintln!(
                    "{test}: skipped: cannot make a network namespace and veth pairs ({why}); \
                     it needs root (CAP_NET_ADMIN) and iproute2"
                );
                None
            }
        }
    }

    fn build(&self, a: u32, b: u32) -> Result<(), String> {
        let ns = self.name.as_str();
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        for (link, root, inside) in [(&self.redis_link, 1, 2), (&self.client_link, 5, 6)] {
            let peer = format!("{link}n");
            ip(&["link", "add", link, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", ns])?;
            ip(&["addr", "add", &format!("10.{a}.{b}.{root}/30"), "dev", link])?;
            ip(&["link", "set", link, "up"])?;
            let addr = format!("10.{a}.{b}.{inside}/30");
            ip(&["-n", ns, "addr", "add", &addr, "dev", &peer])?;
            ip(&["-n", ns, "link", "set", &peer, "up"])?;
        }
        Ok(())
    }

    /// The command a process runs under to live in the namespace.
    pub fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }

    /// Cuts (false) or restores (true) the link that carries the host's
    /// Redis traffic.
    pub fn set_redis_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.redis_link, state]).unwrap();
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.redis_link]);
        let _ = ip(&["link", "del", &self.client_link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
