//! A host's claim on its `host_id`: one Redis key per host, holding a value
//! unique to this process, with a TTL that heartbeats renew.
//!
//! - At start, `SET NX PX` takes the key; if another process holds it, the
//!   start waits up to the TTL for that claim to lapse (a host that was
//!   killed leaves its claim until then) and, if it is still renewed,
//!   refuses to start: two processes with one `host_id` would mix up what
//!   Redis says about that host.
//! - Every heartbeat renews the claim only if it is still this process's;
//!   a claim that lapsed while Redis was unreachable or restarted empty is
//!   taken again, one that another process took meanwhile is reported.
//! - A clean stop deletes the claim (only if it is still ours), so the host
//!   can be restarted at once.
//!
//! Each step is one Lua script, so it is atomic on the Redis node that
//! holds the key.

use redis::Script;

/// The key of `host_id`'s claim. The hash tag keeps it in one slot.
pub fn key(host_id: &str) -> String {
    format!("pushgate:host:{{{host_id}}}")
}

/// What this process writes into its claim: a random token (so two
/// processes never hold equal values) and what an operator needs to find
/// the other process when a duplicate is refused.
pub fn holder_value(token: u64, pid: u32, hostname: &str, started_unix_ms: u64) -> String {
    format!("instance {token:016x}, pid {pid} on {hostname}, started at unix ms {started_unix_ms}")
}

/// KEYS[1] claim key; ARGV[1] our value, ARGV[2] TTL ms.
/// → {1, ours} taken, or {0, holder} held by another.
pub fn claim_script() -> Script {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1])}
",
    )
}

/// KEYS[1] claim key; ARGV[1] our value, ARGV[2] TTL ms.
/// → {1, ''} renewed, {2, ''} lapsed and taken again, {0, holder} another
/// process holds it.
pub fn renew_script() -> Script {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, ''}
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {2, ''}
end
return {0, holder}
",
    )
}

/// KEYS[1] claim key; ARGV[1] our value. → 1 deleted, 0 not ours.
pub fn release_script() -> Script {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
}

/// The answer to a claim at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    Ours,
    Held { holder: String },
}

impl Claimed {
    pub fn from_reply((code, holder): (i64, String)) -> Claimed {
        match code {
            1 => Claimed::Ours,
            _ => Claimed::Held { holder },
        }
    }
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewed {
    /// Still ours; its TTL starts again.
    Kept,
    /// It had lapsed (Redis unreachable for longer than the TTL, or a Redis
    /// that restarted empty) and nobody else had it: ours again.
    Retaken,
    /// Another process claimed this host_id after ours lapsed.
    Lost { holder: String },
}

impl Renewed {
    pub fn from_reply((code, holder): (i64, String)) -> Renewed {
        match code {
            1 => Renewed::Kept,
            2 => Renewed::Retaken,
            _ => Renewed::Lost { holder },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_hash_tagged_by_host() {
        assert_eq!(key("web-1"), "pushgate:host:{web-1}");
    }

    #[test]
    fn replies_decode() {
        assert_eq!(Claimed::from_reply((1, "x".into())), Claimed::Ours);
        assert_eq!(
            Claimed::from_reply((0, "other".into())),
            Claimed::Held {
                holder: "other".into()
            }
        );
        assert_eq!(Renewed::from_reply((1, String::new())), Renewed::Kept);
        assert_eq!(Renewed::from_reply((2, String::new())), Renewed::Retaken);
        assert_eq!(
            Renewed::from_reply((0, "other".into())),
            Renewed::Lost {
                holder: "other".into()
            }
        );
    }

    #[test]
    fn holder_values_differ_by_token() {
        let a = holder_value(1, 7, "h", 5);
        assert_eq!(
            a,
            "instance 0000000000000001, pid 7 on h, started at unix ms 5"
        );
        assert_ne!(a, holder_value(2, 7, "h", 5));
    }
}
