//! Readings from /proc: the server's memory and descriptors, and the kernel's
//! socket counters. Parsers take the file's text so tests need no /proc.

use std::io::{self, Read};
use std::path::Path;

use serde::Serialize;

/// /proc files here are a few KiB; the cap keeps a surprise from growing us.
const PROC_FILE_MAX_BYTES: u64 = 1 << 20;

fn read_proc(path: impl AsRef<Path>) -> io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(PROC_FILE_MAX_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// `VmRSS` of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = read_proc(format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, "VmRSS:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in status"))
}

/// A `Key:   123 kB` line of /proc/PID/status.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// CPU time `pid` has used so far (user + system), in seconds, from
/// /proc/PID/stat. Threads included; children not.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = read_proc(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?;
    Ok(ticks as f64 / crate::sys::clock_ticks_per_s() as f64)
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command
/// name (field 2) may hold spaces and parentheses: fields are counted after
/// the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11); // field 3 is the first here
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// How many descriptors `pid` has open: with io_uring direct descriptors this
/// is far below the connection count, which is the point of the idle test.
pub fn open_fd_count(pid: u32) -> io::Result<u64> {
    // Bounded by the process's own descriptor limit.
    let mut count = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        entry?;
        count += 1;
    }
    Ok(count)
}

/// The soft `Max open files` of `pid`.
pub fn open_files_limit(pid: u32) -> io::Result<u64> {
    let limits = read_proc(format!("/proc/{pid}/limits"))?;
    parse_open_files_limit(&limits)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Max open files in limits"))
}

pub fn parse_open_files_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The TCP line of /proc/net/sockstat (namespace-wide: on loopback it counts
/// both ends of every connection).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SockStat {
    pub sockets_used: i64,
    pub tcp_inuse: i64,
    pub tcp_orphan: i64,
    pub tcp_tw: i64,
    pub tcp_alloc: i64,
    pub tcp_mem_pages: i64,
}

impl SockStat {
    pub fn read() -> io::Result<Self> {
        Ok(Self::parse(&read_proc("/proc/net/sockstat")?))
    }

    pub fn parse(text: &str) -> Self {
        let mut stat = SockStat::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(section) = words.next() else {
                continue;
            };
            let fields: Vec<&str> = words.collect();
            for pair in fields.chunks(2) {
                let [name, value] = pair else { continue };
                let Ok(value) = value.parse::<i64>() else {
                    continue;
                };
                match (section, *name) {
                    ("sockets:", "used") => stat.sockets_used = value,
                    ("TCP:", "inuse") => stat.tcp_inuse = value,
                    ("TCP:", "orphan") => stat.tcp_orphan = value,
                    ("TCP:", "tw") => stat.tcp_tw = value,
                    ("TCP:", "alloc") => stat.tcp_alloc = value,
                    ("TCP:", "mem") => stat.tcp_mem_pages = value,
                    _ => {}
                }
            }
        }
        stat
    }

    pub fn delta(&self, before: &SockStat) -> SockStat {
        SockStat {
            sockets_used: self.sockets_used - before.sockets_used,
            tcp_inuse: self.tcp_inuse - before.tcp_inuse,
            tcp_orphan: self.tcp_orphan - before.tcp_orphan,
            tcp_tw: self.tcp_tw - before.tcp_tw,
            tcp_alloc: self.tcp_alloc - before.tcp_alloc,
            tcp_mem_pages: self.tcp_mem_pages - before.tcp_mem_pages,
        }
    }
}

/// Accept-queue overflow counters: a burst that overruns the server's listen
/// backlog shows up here long before it shows up as failures (SYN retries
/// turn into ~1 s handshake latency instead).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ListenStat {
    pub listen_overflows: i64,
    pub listen_drops: i64,
}

impl ListenStat {
    pub fn read() -> io::Result<Self> {
        Ok(Self::parse(&read_proc("/proc/net/netstat")?))
    }

    /// /proc/net/netstat is pairs of lines: `TcpExt: Name…` then `TcpExt: 1…`.
    pub fn parse(text: &str) -> Self {
        let mut stat = ListenStat::default();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let (Some(names), Some(values)) = (
                pair[0].strip_prefix("TcpExt:"),
                pair[1].strip_prefix("TcpExt:"),
            ) else {
                continue;
            };
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                let Ok(value) = value.parse::<i64>() else {
                    continue;
                };
                match name {
                    "ListenOverflows" => stat.listen_overflows = value,
                    "ListenDrops" => stat.listen_drops = value,
                    _ => {}
                }
            }
            break;
        }
        stat
    }

    pub fn delta(&self, before: &ListenStat) -> ListenStat {
        ListenStat {
            listen_overflows: self.listen_overflows - before.listen_overflows,
            listen_drops: self.listen_drops - before.listen_drops,
        }
    }
}

/// TCP segments received and sent, namespace-wide (/proc/net/snmp, what
/// `nstat` shows as TcpInSegs/TcpOutSegs). Over loopback every segment is
/// counted once sent and once received, by both ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TcpSegs {
    pub in_segs: u64,
    pub out_segs: u64,
}

impl TcpSegs {
    pub fn read() -> io::Result<Self> {
        Ok(Self::parse(&read_proc("/proc/net/snmp")?))
    }

    /// /proc/net/snmp is pairs of lines: `Tcp: Name…` then `Tcp: 1…`.
    pub fn parse(text: &str) -> Self {
        let mut segs = TcpSegs::default();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let (Some(names), Some(values)) =
                (pair[0].strip_prefix("Tcp:"), pair[1].strip_prefix("Tcp:"))
            else {
                continue;
            };
            for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
                match (name, value.parse::<u64>()) {
                    ("InSegs", Ok(v)) => segs.in_segs = v,
                    ("OutSegs", Ok(v)) => segs.out_segs = v,
                    _ => {}
                }
            }
            break;
        }
        segs
    }

    /// Segments sent between two readings (each was also received: loopback).
    pub fn sent_since(&self, before: &TcpSegs) -> u64 {
        self.out_segs.saturating_sub(before.out_segs)
    }
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = read_proc("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_tcp_segments() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm ActiveOpens InSegs OutSegs RetransSegs\n\
                    Tcp: 1 5 1000 1200 3\n";
        let segs = TcpSegs::parse(text);
        assert_eq!(
            segs,
            TcpSegs {
                in_segs: 1000,
                out_segs: 1200
            }
        );
        assert_eq!(segs.sent_since(&TcpSegs::default()), 1200);
        TcpSegs::read().unwrap();
        assert!(loadavg().is_some());
    }

    #[test]
    fn status_vmrss() {
        let status =
            "Name:\tpushgate\nVmPeak:\t  9000 kB\nVmRSS:\t    2144 kB\nRssAnon:\t     156 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(2144));
        assert_eq!(parse_status_kib(status, "RssAnon:"), Some(156));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn stat_cpu_ticks_skip_odd_command_names() {
        let stat = "1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 1000 10";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
    }

    #[test]
    fn limits_open_files() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95577                95577                processes \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(20000));
    }

    #[test]
    fn sockstat_tcp_line() {
        let text =
            "sockets: used 12\nTCP: inuse 5 orphan 1 tw 2 alloc 7 mem 3\nUDP: inuse 0 mem 0\n";
        let stat = SockStat::parse(text);
        assert_eq!(
            stat,
            SockStat {
                sockets_used: 12,
                tcp_inuse: 5,
                tcp_orphan: 1,
                tcp_tw: 2,
                tcp_alloc: 7,
                tcp_mem_pages: 3
            }
        );
        assert_eq!(stat.delta(&stat), SockStat::default());
    }

    #[test]
    fn netstat_listen_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
                    TcpExt: 0 17 19 4\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            ListenStat::parse(text),
            ListenStat {
                listen_overflows: 17,
                listen_drops: 19
            }
        );
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(open_fd_count(pid).unwrap() >= 3);
        assert!(open_files_limit(pid).unwrap() > 0);
        SockStat::read().unwrap();
        ListenStat::read().unwrap();
    }
}
