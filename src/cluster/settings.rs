//! The Redis settings of a `serve` config, checked once: which Redis
//! (standalone or cluster seeds), this host's `host_id`, credentials and
//! timings. Pure: the config in, [`ClusterSettings`] or the rules broken out.

use crate::config::Config;
use redis::IntoConnectionInfo;
use std::path::PathBuf;

/// Longest `host_id`: it is part of Redis keys and log lines.
pub const HOST_ID_BYTES_MAX: usize = 64;
/// Shortest `redis_host_ttl_ms`: heartbeats go every third of it, and a
/// shorter one would turn a slow Redis call into a lost claim.
pub const HOST_TTL_MS_MIN: u64 = 1_000;
/// The shortest `redis_check_interval_ms`: rounds closer than this would
/// mostly re-read what the last round read.
pub const CHECK_INTERVAL_MS_MIN: u64 = 100;
/// Cluster seed nodes accepted at most (the client asks any of them for the
/// slot map; a handful is plenty).
pub const REDIS_NODES_MAX: usize = 64;

/// Where Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One standalone server: `redis://…` or `redis+unix://…`.
    Standalone(String),
    /// Redis Cluster seed nodes, each as a `redis://host:port` URL.
    Cluster(Vec<String>),
}

/// A validated Redis configuration: present only when `redis_url` or
/// `redis_nodes` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    pub target: RedisTarget,
    /// This host's stable, unique name in the fleet.
    pub host_id: String,
    /// Redis ACL user, sent with AUTH.
    pub username: Option<String>,
    /// File whose first line is the Redis password, read at start.
    pub password_file: Option<PathBuf>,
    /// How long this host's claim on `host_id` outlives its last heartbeat.
    pub host_ttl_ms: u64,
    /// Connect and response timeout of each Redis call.
    pub timeout_ms: u64,
    /// The least time between the starts of two rounds of each shard's
    /// history check (`gateway/history_check.rs`).
    pub check_interval_ms: u64,
    /// How long pushes stay in Redis for a resume (the mailbox settings).
    pub history: super::history::HistoryLimits,
}

impl ClusterSettings {
    /// The Redis settings of `config`: `Ok(None)` for a single host (no
    /// Redis), else the settings or every rule they break.
    pub fn from_config(config: &Config) -> Result<Option<ClusterSettings>, Vec<String>> {
        let mut problems = Vec::new();
        let target = match (&config.redis_url, config.redis_nodes.is_empty()) {
            (None, true) => None,
            (Some(_), false) => {
                problems.push(
                    "redis_url (one standalone Redis) and redis_nodes (Redis Cluster seeds) \
                     cannot both be set; choose one"
                        .to_owned(),
                );
                None
            }
            (Some(url), true) => match check_url("redis_url", url) {
                Ok(()) => Some(RedisTarget::Standalone(url.clone())),
                Err(problem) => {
                    problems.push(problem);
                    None
                }
            },
            (None, false) => {
                if config.redis_nodes.len() > REDIS_NODES_MAX {
                    problems.push(format!(
                        "redis_nodes lists {} nodes; give at most {REDIS_NODES_MAX} seeds \
                         (the client learns the rest of the cluster from them)",
                        config.redis_nodes.len()
                    ));
                }
                let mut urls = Vec::new();
                for node in &config.redis_nodes {
                    let url = node_url(node);
                    match check_url("redis_nodes", &url) {
                        Ok(()) => urls.push(url),
                        Err(problem) => problems.push(problem),
                    }
                }
                Some(RedisTarget::Cluster(urls))
            }
        };
        let redis_asked = config.redis_url.is_some() || !config.redis_nodes.is_empty();
        match (&config.host_id, redis_asked) {
            (None, true) => problems.push(
                "host_id is required with redis_url or redis_nodes: a stable name for this \
                 host, unique in the fleet (e.g. its hostname)"
                    .to_owned(),
            ),
            (Some(_), false) => problems.push(
                "host_id names this host in a fleet sharing Redis; set redis_url or \
                 redis_nodes too, or leave host_id out for a single host"
                    .to_owned(),
            ),
            (Some(id), true) => {
                if let Err(why) = check_host_id(id) {
                    problems.push(format!("host_id ({id:?}) {why}"));
                }
            }
            (None, false) => {}
        }
        if !redis_asked {
            for (key, set) in [
                ("redis_username", config.redis_username.is_some()),
                ("redis_password_file", config.redis_password_file.is_some()),
            ] {
                if set {
                    problems.push(format!(
                        "{key} is set but no Redis is: set redis_url or redis_nodes"
                    ));
                }
            }
        }
        if config.redis_host_ttl_ms < HOST_TTL_MS_MIN {
            problems.push(format!(
                "redis_host_ttl_ms ({}) must be at least {HOST_TTL_MS_MIN}",
                config.redis_host_ttl_ms
            ));
        }
        if config.redis_timeout_ms == 0 || config.redis_timeout_ms * 3 > config.redis_host_ttl_ms {
            problems.push(format!(
                "redis_timeout_ms ({}) must be greater than 0 and at most a third of \
                 redis_host_ttl_ms ({}): a heartbeat that may take longer than its interval \
                 lets the host's claim lapse",
                config.redis_timeout_ms, config.redis_host_ttl_ms
            ));
        }
        if config.redis_check_interval_ms < CHECK_INTERVAL_MS_MIN {
            problems.push(format!(
                "redis_check_interval_ms ({}) must be at least {CHECK_INTERVAL_MS_MIN}",
                config.redis_check_interval_ms
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(target.map(|target| ClusterSettings {
            target,
            host_id: config.host_id.clone().unwrap_or_default(),
            username: config.redis_username.clone(),
            password_file: config.redis_password_file.clone(),
            host_ttl_ms: config.redis_host_ttl_ms,
            timeout_ms: config.redis_timeout_ms,
            check_interval_ms: config.redis_check_interval_ms,
            history: super::history::HistoryLimits {
                retention_ms: config.mailbox_retention_ms,
                entries_max: config.mailbox_entries_max,
            },
        }))
    }

    /// Heartbeats renew the claim three times per TTL, so one lost or slow
    /// heartbeat does not let it lapse.
    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.host_ttl_ms / 3
    }

    /// Where Redis is, for log lines: no password.
    pub fn describe_target(&self) -> String {
        match &self.target {
            RedisTarget::Standalone(url) => redact(url),
            RedisTarget::Cluster(urls) => format!(
                "cluster seeds {}",
                urls.iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// A host_id is 1 to 64 of `A-Z a-z 0-9 . _ -`: safe inside a Redis key's
/// hash tag (no braces) and in log lines.
pub fn check_host_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > HOST_ID_BYTES_MAX {
        return Err(format!("must be 1 to {HOST_ID_BYTES_MAX} characters"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "has {bad:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// A seed given as `host:port` becomes `redis://host:port`.
fn node_url(node: &str) -> String {
    if node.contains("://") {
        node.to_owned()
    } else {
        format!("redis://{node}")
    }
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    let shown = redact(url);
    if url.starts_with("rediss://") || url.starts_with("valkeys://") {
        return Err(format!(
            "{key} ({shown}) asks for TLS to Redis, which this build does not have yet; \
             use redis:// on a trusted network (or a TLS tunnel such as stunnel)"
        ));
    }
    if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
        return Err(format!(
            "{key} ({shown}) must start with redis:// (or redis+unix:// for a Unix socket)"
        ));
    }
    url.into_connection_info()
        .map(drop)
        .map_err(|e| format!("{key} ({shown}) is not a Redis URL: {e}"))
}

/// The URL with any user:password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: impl FnOnce(&mut Config)) -> Result<Option<ClusterSettings>, Vec<String>> {
        let mut config = Config::default();
        edit(&mut config);
        ClusterSettings::from_config(&config)
    }

    fn problems(edit: impl FnOnce(&mut Config)) -> String {
        with(edit).unwrap_err().join("; ")
    }

    #[test]
    fn no_redis_is_a_single_host() {
        assert_eq!(with(|_| {}), Ok(None));
    }

    #[test]
    fn standalone_and_cluster_targets() {
        let s = with(|c| {
            c.redis_url = Some("redis://127.0.0.1:6379/0".into());
            c.host_id = Some("host-a".into());
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            s.target,
            RedisTarget::Standalone("redis://127.0.0.1:6379/0".into())
        );
        assert_eq!(s.heartbeat_interval_ms(), 5_000);
        let s = with(|c| {
            c.redis_nodes = vec!["127.0.0.1:7000".into(), "redis://10.0.0.2:7001".into()];
            c.host_id = Some("h1".into());
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            s.target,
            RedisTarget::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://10.0.0.2:7001".into()
            ])
        );
        assert_eq!(
            s.describe_target(),
            "cluster seeds redis://127.0.0.1:7000, redis://10.0.0.2:7001"
        );
    }

    #[test]
    fn each_rule_is_named() {
        let both = problems(|c| {
            c.redis_url = Some("redis://a:1".into());
            c.redis_nodes = vec!["b:2".into()];
            c.host_id = Some("h".into());
        });
        assert!(both.contains("cannot both be set"), "{both}");
        let no_id = problems(|c| c.redis_url = Some("redis://a:1".into()));
        assert!(no_id.contains("host_id is required"), "{no_id}");
        let id_alone = problems(|c| c.host_id = Some("h".into()));
        assert!(
            id_alone.contains("set redis_url or redis_nodes too"),
            "{id_alone}"
        );
        let bad_id = problems(|c| {
            c.redis_url = Some("redis://a:1".into());
            c.host_id = Some("a{b}".into());
        });
        assert!(bad_id.contains("has '{'"), "{bad_id}");
        let tls = problems(|c| {
            c.redis_url = Some("rediss://u:secret@a:1".into());
            c.host_id = Some("h".into());
        });
        assert!(tls.contains("TLS to Redis"), "{tls}");
        assert!(!tls.contains("secret"), "the password is not shown: {tls}");
        let scheme = problems(|c| {
            c.redis_nodes = vec!["http://a:1".into()];
            c.host_id = Some("h".into());
        });
        assert!(scheme.contains("must start with redis://"), "{scheme}");
        let timing = problems(|c| {
            c.redis_url = Some("redis://a:1".into());
            c.host_id = Some("h".into());
            c.redis_host_ttl_ms = 3_000;
            c.redis_timeout_ms = 2_000;
        });
        assert!(timing.contains("at most a third"), "{timing}");
        let check = problems(|c| {
            c.redis_url = Some("redis://a:1".into());
            c.host_id = Some("h".into());
            c.redis_check_interval_ms = 99;
        });
        assert!(
            check.contains("redis_check_interval_ms (99) must be at least 100"),
            "{check}"
        );
        let password_alone =
            problems(|c| c.redis_password_file = Some(PathBuf::from("/run/secrets/redis")));
        assert!(
            password_alone.contains("redis_password_file is set but no Redis"),
            "{password_alone}"
        );
    }

    #[test]
    fn host_ids() {
        for ok in ["a", "host-1.example_2", &"x".repeat(64)] {
            assert_eq!(check_host_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", &"x".repeat(65), "a b", "a:b", "ü"] {
            assert!(check_host_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn redacts_credentials_only() {
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://:p@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            redact("redis+unix:///run/redis.sock"),
            "redis+unix:///run/redis.sock"
        );
    }
}
