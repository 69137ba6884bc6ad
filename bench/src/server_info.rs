//! What a result says about the server it measured: every process that is
//! part of it (the one started, its children — Node's cluster workers — and
//! any extra, such as socket.io's redis-server), each with its exact command
//! line, and the run's labels from the bench script (`--meta key=value`:
//! repeat number, order, load average, listen backlog, cool-down).

use std::collections::BTreeMap;

use clap::Args;
use serde::{Deserialize, Serialize};

/// Labels of one run, given by the caller.
#[derive(Args, Debug, Clone, Default)]
pub struct MetaArgs {
    /// A label for the report, `KEY=VALUE`; repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
}

impl MetaArgs {
    pub fn map(&self) -> BTreeMap<String, String> {
        self.meta.iter().cloned().collect()
    }
}

/// `KEY=VALUE` with a non-empty key of `[A-Za-z0-9_.-]`.
pub fn parse_meta(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("--meta {text:?}: want KEY=VALUE"))?;
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !key_ok {
        return Err(format!("--meta {text:?}: the key must be [A-Za-z0-9_.-]+"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// One process of the server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerProcess {
    pub pid: u32,
    pub ppid: u32,
    /// Its argv, as /proc/PID/cmdline has it.
    pub cmdline: Vec<String>,
}

/// Every process of a server, and the run's labels.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerInfo {
    pub processes: Vec<ServerProcess>,
    pub meta: BTreeMap<String, String>,
}

impl ServerInfo {
    /// `pid` and its descendants, then `extra` (and theirs).
    pub fn read(pid: u32, extra: &[u32], meta: &MetaArgs) -> ServerInfo {
        let processes = server_pids(pid, extra)
            .into_iter()
            .filter_map(|pid| {
                let ppid = parent_of(pid)?;
                let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = raw
                    .split(|&b| b == 0)
                    .filter(|part| !part.is_empty())
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect();
                Some(ServerProcess { pid, ppid, cmdline })
            })
            .collect();
        ServerInfo {
            processes,
            meta: meta.map(),
        }
    }
}

/// The parent of `pid` from /proc/PID/stat (after the command name, which
/// may hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ppid(&stat)
}

pub fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // State, then ppid.
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every (pid, ppid) on the machine.
fn all_parents() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    // Bounded by the machine's process count.
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect()
}

/// `roots` and all their descendants, in a stable order (roots first, then
/// by pid); the threads of a process are not processes and are not listed.
pub fn tree(roots: &[u32], parents: &[(u32, u32)]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    for &root in roots {
        if !out.contains(&root) {
            out.push(root);
        }
    }
    let mut frontier = out.clone();
    // Bounded: each pass adds only pids not yet listed, from a finite table.
    while !frontier.is_empty() {
        let mut children: Vec<u32> = parents
            .iter()
            .filter(|(pid, ppid)| frontier.contains(ppid) && !out.contains(pid))
            .map(|&(pid, _)| pid)
            .collect();
        children.sort_unstable();
        children.dedup();
        out.extend(&children);
        frontier = children;
    }
    out
}

/// The processes whose CPU and memory count as the server's.
pub fn server_pids(pid: u32, extra: &[u32]) -> Vec<u32> {
    let mut roots = vec![pid];
    roots.extend_from_slice(extra);
    tree(&roots, &all_parents())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_labels() {
        assert_eq!(
            parse_meta("run=2").unwrap(),
            ("run".to_string(), "2".to_string())
        );
        assert_eq!(
            parse_meta("load=0.1 0.2=x").unwrap(),
            ("load".to_string(), "0.1 0.2=x".to_string())
        );
        assert!(parse_meta("noequals").is_err());
        assert!(parse_meta("=v").is_err());
        assert!(parse_meta("a b=v").is_err());
    }

    #[test]
    fn trees_include_descendants_once() {
        let parents = [(10, 1), (11, 10), (12, 10), (13, 11), (20, 1), (21, 20)];
        assert_eq!(tree(&[10], &parents), vec![10, 11, 12, 13]);
        assert_eq!(tree(&[10, 20], &parents), vec![10, 20, 11, 12, 21, 13]);
        assert_eq!(tree(&[10, 11], &parents), vec![10, 11, 12, 13]);
        assert_eq!(tree(&[99], &parents), vec![99]);
    }

    #[test]
    fn stat_parent() {
        assert_eq!(parse_stat_ppid("42 (a) b) S 7 42 42 0"), Some(7));
        assert_eq!(parse_stat_ppid("garbage"), None);
        let me = ServerInfo::read(std::process::id(), &[], &MetaArgs::default());
        assert_eq!(me.processes[0].pid, std::process::id());
        assert!(!me.processes[0].cmdline.is_empty());
    }
}
