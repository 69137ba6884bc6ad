//! `pushgate-bench environment`: what a results directory was measured
//! with — the machine, its load, the kernel settings that shape the
//! numbers, and the version of every runtime and library involved (Rust
//! toolchain and crates from Cargo.lock, Node and the peers' npm packages as
//! installed, redis-server, the git commit). `report` embeds it in every
//! scenario's JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use serde::Serialize;

use crate::machine::{self, Machine};
use crate::server_info::MetaArgs;

/// Crates whose versions matter to the comparison.
const CRATES: [&str; 8] = [
    "tokio",
    "tokio-tungstenite",
    "tungstenite",
    "io-uring",
    "tikv-jemallocator",
    "rkyv",
    "hdrhistogram",
    "libc",
];
/// The peers' npm packages (and what they pull in that matters).
const NPM_PACKAGES: [&str; 7] = [
    "ws",
    "socket.io",
    "engine.io",
    "socket.io-adapter",
    "@socket.io/redis-adapter",
    "redis",
    "@trufflesuite/uws-js-unofficial",
];
/// Kernel settings read from /proc/sys.
const SYSCTLS: [&str; 9] = [
    "net/core/somaxconn",
    "net/ipv4/tcp_max_syn_backlog",
    "net/ipv4/tcp_tw_reuse",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/tcp_mem",
    "net/ipv4/tcp_rmem",
    "net/ipv4/tcp_wmem",
    "fs/nr_open",
    "kernel/osrelease",
];

#[derive(Args, Debug, Clone)]
pub struct EnvironmentArgs {
    /// The repository (Cargo.lock, git).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The Node peers' directory (node_modules).
    #[arg(long, default_value = "bench/peers/node")]
    pub peers_dir: PathBuf,
    #[arg(long)]
    pub json: PathBuf,
    #[command(flatten)]
    pub meta: MetaArgs,
}

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub machine: Machine,
    pub loadavg: Option<[f64; 3]>,
    pub sysctl: BTreeMap<String, String>,
    /// `--version` of each tool (first line), or why not.
    pub tools: BTreeMap<String, String>,
    pub git_commit: Option<String>,
    /// Files changed against the commit (`git status --porcelain`).
    pub git_changed_files: Option<usize>,
    pub crates: BTreeMap<String, Vec<String>>,
    /// Installed versions (node_modules/NAME/package.json).
    pub npm: BTreeMap<String, String>,
    /// The uWebSockets.js native binary this Node loads.
    pub uws_binary: Option<String>,
    pub meta: BTreeMap<String, String>,
}

fn first_line(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Ok(out) => format!("exit {}", out.status),
        Err(e) => format!("not found ({e})"),
    }
}

/// `name` → versions, from Cargo.lock's `[[package]]` blocks.
pub fn lock_versions(lock: &str, wanted: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut name: Option<&str> = None;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            name = None;
        } else if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"'));
        } else if let (Some(n), Some(v)) = (name, line.strip_prefix("version = ")) {
            if wanted.contains(&n) {
                out.entry(n.to_string())
                    .or_default()
                    .push(v.trim_matches('"').to_string());
            }
            name = None;
        }
    }
    out
}

fn npm_versions(peers_dir: &Path) -> BTreeMap<String, String> {
    NPM_PACKAGES
        .iter()
        .filter_map(|name| {
            let path = peers_dir
                .join("node_modules")
                .join(name)
                .join("package.json");
            let text = std::fs::read_to_string(path).ok()?;
            let value: serde_json::Value = serde_json::from_str(&text).ok()?;
            Some((name.to_string(), value["version"].as_str()?.to_string()))
        })
        .collect()
}

pub fn run(args: EnvironmentArgs) -> Result<(), String> {
    let sysctl = SYSCTLS
        .iter()
        .filter_map(|key| {
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok()?;
            Some((
                key.replace('/', "."),
                value.split_whitespace().collect::<Vec<_>>().join(" "),
            ))
        })
        .collect();
    let mut tools = BTreeMap::new();
    for (name, program, flag) in [
        ("rustc", "rustc", "--version"),
        ("cargo", "cargo", "--version"),
        ("node", "node", "--version"),
        ("npm", "npm", "--version"),
        ("redis-server", "redis-server", "--version"),
    ] {
        tools.insert(name.to_string(), first_line(program, &[flag]));
    }
    let repo = args.repo.to_string_lossy().to_string();
    let git_commit =
        Some(first_line("git", &["-C", &repo, "rev-parse", "HEAD"])).filter(|c| c.len() == 40);
    let git_changed_files = Command::new("git")
        .args(["-C", &repo, "status", "--porcelain"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count());
    let lock = std::fs::read_to_string(args.repo.join("Cargo.lock")).unwrap_or_default();
    let node_abi = first_line("node", &["-p", "process.versions.modules"]);
    let uws_binary = node_abi
        .parse::<u32>()
        .ok()
        .map(|abi| format!("uws_linux_x64_{abi}.node"));
    let env = Environment {
        machine: Machine::read(),
        loadavg: crate::procfs::loadavg(),
        sysctl,
        tools,
        git_commit,
        git_changed_files,
        crates: lock_versions(&lock, &CRATES),
        npm: npm_versions(&args.peers_dir),
        uws_binary,
        meta: args.meta.map(),
    };
    machine::write_json(&args.json, &env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_lock_versions() {
        let lock = "version = 4\n\n[[package]]\nname = \"tokio\"\nversion = \"1.54.1\"\n\
                    source = \"x\"\n\n[[package]]\nname = \"other\"\nversion = \"9\"\n\n\
                    [[package]]\nname = \"tungstenite\"\nversion = \"0.27.0\"\n\n\
                    [[package]]\nname = \"tungstenite\"\nversion = \"0.30.0\"\n";
        let v = lock_versions(lock, &["tokio", "tungstenite"]);
        assert_eq!(v["tokio"], vec!["1.54.1"]);
        assert_eq!(v["tungstenite"], vec!["0.27.0", "0.30.0"]);
        assert!(!v.contains_key("other"));
    }
}
