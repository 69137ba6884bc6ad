//! Kernel memory per connection: what /proc/slabinfo, /proc/meminfo's
//! `Slab:` and /proc/net/sockstat's TCP `mem` pages grow by while a run's
//! connections are open, and how much of it is the server's end.
//!
//! Over loopback the kernel holds both ends of every connection, so the
//! growth is split: the load generator's end of each connection is one TCP
//! socket (`TCP`, `sock_inode_cache`, `filp`, `dentry`, and `lsm_inode_cache`
//! where an LSM keeps an inode blob) plus its epoll entry (`eventpoll_epi`,
//! `eventpoll_pwq`), at the sizes this kernel's slabinfo gives; everything
//! else the connections added is the server's end (its sockets, its epoll
//! entries or io_uring requests, its socket buffers). The client end is the
//! same for every server, so differences between servers do not depend on
//! this split. Other activity on the machine shows up as noise.

use std::collections::BTreeMap;
use std::io;

use serde::Serialize;

use crate::procfs::SockStat;

/// Caches whose objects one socket of the load generator holds, one each.
const CLIENT_SOCKET_CACHES: [&str; 5] = [
    "TCP",
    "sock_inode_cache",
    "filp",
    "dentry",
    "lsm_inode_cache",
];
/// The load generator's epoll entry per connection: an epitem and its wait
/// queue hook (merged into a generic cache on some kernels, whence the
/// fallback size: `struct eppoll_entry` rounded to its kmalloc class).
const CLIENT_EPOLL_CACHES: [(&str, u64); 2] = [("eventpoll_epi", 128), ("eventpoll_pwq", 64)];
/// Caches listed in a report, largest growth first.
const TOP_CACHES: usize = 12;

/// One reading of /proc/slabinfo: cache → (active objects, object size).
#[derive(Debug, Clone, Default)]
pub struct Slabs(pub BTreeMap<String, (u64, u64)>);

impl Slabs {
    /// Needs root (slabinfo is 0400); `Ok(None)` where it cannot be read.
    pub fn read() -> Option<Slabs> {
        std::fs::read_to_string("/proc/slabinfo")
            .ok()
            .map(|text| Slabs::parse(&text))
    }

    pub fn parse(text: &str) -> Slabs {
        let mut slabs = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.starts_with("slabinfo") {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(active), Some(_total), Some(size)) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                continue;
            };
            if let (Ok(active), Ok(size)) = (active.parse(), size.parse()) {
                slabs.insert(name.to_string(), (active, size));
            }
        }
        Slabs(slabs)
    }

    fn size_of(&self, cache: &str) -> Option<u64> {
        self.0.get(cache).map(|&(_, size)| size)
    }

    /// Bytes the load generator's end of one connection holds.
    pub fn client_end_bytes(&self) -> u64 {
        let sockets: u64 = CLIENT_SOCKET_CACHES
            .iter()
            .filter_map(|c| self.size_of(c))
            .sum();
        let epoll: u64 = CLIENT_EPOLL_CACHES
            .iter()
            .map(|&(c, fallback)| self.size_of(c).unwrap_or(fallback))
            .sum();
        sockets + epoll
    }
}

/// `Slab:` of /proc/meminfo, bytes.
fn meminfo_slab_bytes() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    crate::procfs::parse_status_kib(&text, "Slab:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Slab: in meminfo"))
}

/// What is read before and after.
#[derive(Debug, Clone)]
pub struct KernelReading {
    slabs: Option<Slabs>,
    meminfo_slab_bytes: Option<u64>,
    sockstat: SockStat,
}

impl KernelReading {
    pub fn read() -> KernelReading {
        KernelReading {
            slabs: Slabs::read(),
            meminfo_slab_bytes: meminfo_slab_bytes().ok(),
            sockstat: SockStat::read().unwrap_or_default(),
        }
    }
}

/// A cache's growth.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CacheDelta {
    pub cache: String,
    pub objects: i64,
    pub bytes: i64,
}

/// Kernel memory the connections added, both ends and the server's.
#[derive(Debug, Clone, Serialize)]
pub struct KernelMemory {
    /// Σ over slab caches of Δ active objects × object size (needs root).
    pub slab_delta_bytes: Option<i64>,
    /// Δ `Slab:` of /proc/meminfo, a cross-check of the above.
    pub meminfo_slab_delta_bytes: Option<i64>,
    /// Δ TCP `mem` of /proc/net/sockstat × page size: socket buffers.
    pub tcp_mem_delta_bytes: i64,
    /// slab + socket buffers, both ends of every connection.
    pub both_ends_bytes: Option<i64>,
    pub connections: u64,
    /// The load generator's end of one connection (see the module doc).
    pub client_end_per_conn_bytes: Option<f64>,
    /// (both ends − client ends) / connections.
    pub server_end_per_conn_bytes: Option<f64>,
    pub top_caches: Vec<CacheDelta>,
}

impl KernelMemory {
    pub fn between(before: &KernelReading, after: &KernelReading, connections: u64) -> Self {
        let page = crate::sys::page_size_bytes() as i64;
        let tcp_mem_delta_bytes =
            (after.sockstat.tcp_mem_pages - before.sockstat.tcp_mem_pages) * page;
        let deltas = match (&before.slabs, &after.slabs) {
            (Some(b), Some(a)) => Some(cache_deltas(b, a)),
            _ => None,
        };
        let slab_delta_bytes = deltas.as_ref().map(|d| d.iter().map(|c| c.bytes).sum());
        let both_ends_bytes = slab_delta_bytes.map(|s: i64| s + tcp_mem_delta_bytes);
        let client_end = after.slabs.as_ref().map(Slabs::client_end_bytes);
        let per = |bytes: f64| (connections > 0).then(|| bytes / connections as f64);
        let server_end_per_conn_bytes = match (both_ends_bytes, client_end) {
            (Some(both), Some(client)) => per(both as f64 - client as f64 * connections as f64),
            _ => None,
        };
        let mut top_caches = deltas.unwrap_or_default();
        top_caches.sort_by_key(|c| std::cmp::Reverse(c.bytes.abs()));
        top_caches.truncate(TOP_CACHES);
        KernelMemory {
            slab_delta_bytes,
            meminfo_slab_delta_bytes: match (before.meminfo_slab_bytes, after.meminfo_slab_bytes) {
                (Some(b), Some(a)) => Some(a as i64 - b as i64),
                _ => None,
            },
            tcp_mem_delta_bytes,
            both_ends_bytes,
            connections,
            client_end_per_conn_bytes: client_end.map(|c| c as f64),
            server_end_per_conn_bytes,
            top_caches,
        }
    }
}

fn cache_deltas(before: &Slabs, after: &Slabs) -> Vec<CacheDelta> {
    after
        .0
        .iter()
        .filter_map(|(name, &(active, size))| {
            let was = before.0.get(name).map_or(0, |&(a, _)| a);
            let objects = active as i64 - was as i64;
            (objects != 0).then(|| CacheDelta {
                cache: name.clone(),
                objects,
                bytes: objects * size as i64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> ...\n";

    fn slabs(rows: &[(&str, u64, u64)]) -> Slabs {
        let mut text = HEAD.to_string();
        for (name, active, size) in rows {
            text.push_str(&format!(
                "{name} {active} {active} {size} 16 1 : tunables 0 0 0 : slabdata 1 1 0\n"
            ));
        }
        Slabs::parse(&text)
    }

    #[test]
    fn parses_slabinfo_lines() {
        let s = slabs(&[("TCP", 66, 2368), ("filp", 614, 192)]);
        assert_eq!(s.0["TCP"], (66, 2368));
        assert_eq!(s.0.len(), 2);
    }

    #[test]
    fn client_end_is_one_socket_and_one_epoll_entry() {
        let s = slabs(&[
            ("TCP", 1, 2368),
            ("sock_inode_cache", 1, 832),
            ("filp", 1, 192),
            ("dentry", 1, 192),
            ("eventpoll_epi", 1, 128),
        ]);
        // No lsm_inode_cache; eventpoll_pwq merged away: 64 assumed.
        assert_eq!(s.client_end_bytes(), 2368 + 832 + 192 + 192 + 128 + 64);
    }

    #[test]
    fn server_end_is_the_growth_less_the_client_ends() {
        let sizes = [
            ("TCP", 2368),
            ("sock_inode_cache", 832),
            ("filp", 192),
            ("dentry", 192),
            ("eventpoll_epi", 128),
            ("eventpoll_pwq", 64),
            ("io_kiocb", 256),
        ];
        let rows = |n: u64, server_kiocbs: u64| -> Vec<(&str, u64, u64)> {
            sizes
                .iter()
                .map(|&(c, size)| {
                    let count = match c {
                        "eventpoll_epi" | "eventpoll_pwq" => n,
                        "io_kiocb" => server_kiocbs,
                        _ => 2 * n, // both ends
                    };
                    (c, 100 + count, size)
                })
                .collect()
        };
        let reading = |slabs: Slabs| KernelReading {
            slabs: Some(slabs),
            meminfo_slab_bytes: None,
            sockstat: SockStat::default(),
        };
        let before = reading(slabs(&rows(0, 0)));
        let after = reading(slabs(&rows(1000, 1000)));
        let k = KernelMemory::between(&before, &after, 1000);
        let socket = 2368.0 + 832.0 + 192.0 + 192.0;
        assert_eq!(k.client_end_per_conn_bytes, Some(socket + 128.0 + 64.0));
        assert_eq!(k.server_end_per_conn_bytes, Some(socket + 256.0));
        assert_eq!(k.top_caches[0].cache, "TCP");
        assert_eq!(k.top_caches[0].objects, 2000);
    }
}
