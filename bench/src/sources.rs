//! Source addresses for the client sockets. Only 127.0.0.0/8 is accepted:
//! this tool opens tens of thousands of connections and must never aim them
//! off the box.

use std::net::{Ipv4Addr, SocketAddrV4};

/// More source addresses than this buys nothing: each gives ~28k ports per
/// target already.
pub const SOURCES_MAX: usize = 1 << 16;

/// `A` or `A-B` (inclusive), both in 127.0.0.0/8.
pub fn parse_sources(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let first: Ipv4Addr = first
        .parse()
        .map_err(|e| format!("source {first:?}: {e}"))?;
    let last: Ipv4Addr = last.parse().map_err(|e| format!("source {last:?}: {e}"))?;
    for ip in [first, last] {
        if !ip.is_loopback() {
            return Err(format!("source {ip} is outside 127.0.0.0/8"));
        }
    }
    let (lo, hi) = (u32::from(first), u32::from(last));
    if lo > hi {
        return Err(format!("source range {first}-{last} is backwards"));
    }
    let count = (hi - lo) as usize + 1;
    if count > SOURCES_MAX {
        return Err(format!(
            "source range has {count} addresses, at most {SOURCES_MAX}"
        ));
    }
    Ok((lo..=hi).map(Ipv4Addr::from).collect())
}

/// An IPv4 loopback `host:port`.
pub fn parse_target(text: &str) -> Result<SocketAddrV4, String> {
    let addr: SocketAddrV4 = text
        .parse()
        .map_err(|e| format!("target {text:?}: {e} (want 127.x.y.z:port)"))?;
    if !addr.ip().is_loopback() {
        return Err(format!("target {addr} is outside 127.0.0.0/8"));
    }
    if addr.port() == 0 {
        return Err(format!("target {addr} has no port"));
    }
    Ok(addr)
}

/// The source for the connection of global user `index`: rotating by the
/// global index spreads every worker's slice over all addresses.
pub fn source_for(sources: &[Ipv4Addr], index: u64) -> Ipv4Addr {
    sources[(index % sources.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = parse_sources("127.0.0.2-127.0.0.60").unwrap();
        assert_eq!(r.len(), 59);
        assert_eq!(r[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(r[58], Ipv4Addr::new(127, 0, 0, 60));
        assert_eq!(
            parse_sources("127.0.0.9").unwrap(),
            vec![Ipv4Addr::new(127, 0, 0, 9)]
        );
        assert_eq!(parse_sources("127.0.0.255-127.0.1.0").unwrap().len(), 2);
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("10.0.0.1").is_err());
        assert!(parse_sources("127.0.0.1-128.0.0.1").is_err());
        assert!(parse_sources("127.0.0.0-127.255.255.255").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("127.0.0.1:8080").unwrap().port(), 8080);
        assert!(parse_target("192.168.1.1:80").is_err());
        assert!(parse_target("127.0.0.1:0").is_err());
        assert!(parse_target("localhost:80").is_err());
    }

    #[test]
    fn rotation() {
        let s = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        let picked: Vec<_> = (0..4).map(|i| source_for(&s, i).octets()[3]).collect();
        assert_eq!(picked, vec![2, 3, 4, 2]);
    }
}
