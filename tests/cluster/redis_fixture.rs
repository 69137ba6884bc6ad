//! Real `redis-server` processes for the several-hosts tests: a standalone
//! server, or a 3-master + 3-replica cluster made by `redis-cli --cluster
//! create`, each on loopback ports in its own temporary directory, killed
//! when dropped. Without redis-server the tests skip with a message, unless
//! PUSHGATE_REDIS_REQUIRED=1 (CI) makes that a failure.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether redis-server and redis-cli are here; prints why a test skips.
pub fn available(test: &str) -> bool {
    let found = ["redis-server", "redis-cli"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        assert!(
            std::env::var("PUSHGATE_REDIS_REQUIRED").as_deref() != Ok("1"),
            "{test}: redis-server / redis-cli not found and PUSHGATE_REDIS_REQUIRED=1 \
             (apt-get install redis-server, or scripts/ci-deps.sh)"
        );
        eprintln!(
            "{test}: skipped: redis-server / redis-cli not found (apt-get install redis-server)"
        );
    }
    found
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pushgate-redis-{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port free now (and, for cluster nodes, its bus port + 10000).
fn free_port(with_bus: bool) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !with_bus {
            return port;
        }
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Runs `redis-cli -p PORT args…`; its stdout, or `None` if it failed.
pub fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits for `ok` with a generous deadline (the machine may be busy).
pub fn wait_for(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
    /// Addresses it listens on besides 127.0.0.1.
    also_bind: Vec<String>,
}

impl RedisServer {
    /// A standalone server, no persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_binding(&[])
    }

    /// A standalone server that also listens on `also_bind` (addresses of
    /// this machine, e.g. one end of a veth pair).
    pub fn start_binding(also_bind: &[&str]) -> RedisServer {
        let dir = temp_dir("standalone");
        let mut server = RedisServer {
            child: None,
            port: free_port(false),
            dir,
            cluster: false,
            also_bind: also_bind.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(&self.also_bind)
            .args(["--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join(format!("redis-{port}.log")));
        if self.cluster {
            command
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                // A replica syncs at once (the default waits 5 s for more
                // replicas), so a failover test finds it in sync.
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_for(
            &format!("redis-server on port {port}"),
            Duration::from_secs(20),
            || cli(port, &["ping"]).is_some_and(|o| o.contains("PONG")),
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: what a crashed or unreachable Redis looks like to clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (SIGSTOP: a Redis that accepts connections and
    /// answers nothing, as a hung or partitioned one; SIGCONT: back).
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("redis-server is running");
        // SAFETY: kill(2) on our own child's pid, which it still is (not
        // waited for yet).
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", child.id());
        if signal == libc::SIGSTOP {
            // Returns once it is stopped: nothing it answers after this.
            let stat = format!("/proc/{}/stat", child.id());
            wait_for("redis-server stopped", Duration::from_secs(10), || {
                std::fs::read_to_string(&stat).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T'))
                })
            });
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three masters and three replicas on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = temp_dir("cluster");
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                let mut node = RedisServer {
                    child: None,
                    port: free_port(true),
                    dir: dir.clone(),
                    cluster: true,
                    also_bind: Vec::new(),
                };
                node.spawn();
                node
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            let port = node.port;
            wait_for(
                &format!("cluster_state:ok on {port}"),
                Duration::from_secs(60),
                || cli(port, &["cluster", "info"]).is_some_and(|o| o.contains("cluster_state:ok")),
            );
        }
        // A replica that never synced cannot take over: wait for every
        // replication link.
        for node in &cluster.nodes {
            let port = node.port;
            wait_for(
                &format!("replication in sync on {port}"),
                Duration::from_secs(60),
                || {
                    cli(port, &["info", "replication"]).is_some_and(|o| {
                        o.contains("role:master") || o.contains("master_link_status:up")
                    })
                },
            );
        }
        cluster
    }

    /// One seed, as `host:port`.
    pub fn seed(&self) -> String {
        format!("127.0.0.1:{}", self.nodes[0].port)
    }

    /// Each master's slot ranges, from `CLUSTER NODES`.
    pub fn master_ranges(&self) -> Vec<Vec<(u16, u16)>> {
        let nodes = cli(self.nodes[0].port, &["cluster", "nodes"]).unwrap();
        nodes
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(2)
                    .is_some_and(|f| f.contains("master"))
            })
            .map(|l| {
                l.split_whitespace()
                    .skip(8)
                    .filter_map(|range| {
                        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                        Some((lo.parse().ok()?, hi.parse().ok()?))
                    })
                    .collect()
            })
            .collect()
    }

    /// The node serving `key`'s slot as master.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = cli(self.nodes[0].port, &["cluster", "keyslot", key])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        for node in &self.nodes {
            let info = cli(node.port, &["cluster", "nodes"]).unwrap_or_default();
            for line in info.lines().filter(|l| l.contains("myself,master")) {
                for range in line.split_whitespace().skip(8) {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                        if (lo..=hi).contains(&slot) {
                            return node.port;
                        }
                    }
                }
            }
        }
        panic!("no master owns slot {slot}");
    }
}
