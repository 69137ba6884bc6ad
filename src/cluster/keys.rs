//! Redis key names and Redis Cluster slots. Pure.
//!
//! Every key of one user carries the user in a hash tag, so a user's keys
//! (presence now; seq, epoch and history next) live in one slot and one Lua
//! script may touch them all. A user ID may itself contain `{` or `}`, which
//! would cut the tag short, so the tag escapes them (injectively: `\` →
//! `\\`, `{` → `\(`, `}` → `\)`).

/// The prefix of every key pushgate writes.
pub const PREFIX: &str = "pushgate:";

/// Live host instances: a sorted set of `<host_id>/<instance>` scored by
/// the Redis time (ms) at which each lapses unless its heartbeat renews it.
pub const HOSTS_KEY: &str = "pushgate:hosts";

/// Redis Cluster's slot count.
pub const SLOTS: u16 = 16_384;

/// `user` as it appears inside a hash tag.
pub fn user_tag(user: &str) -> String {
    let mut tag = String::with_capacity(user.len() + 2);
    for c in user.chars() {
        match c {
            '\\' => tag.push_str("\\\\"),
            '{' => tag.push_str("\\("),
            '}' => tag.push_str("\\)"),
            c => tag.push(c),
        }
    }
    tag
}

/// A user's presence: a hash of `<host_id>/<instance>/<shard>` → devices
/// connected there.
pub fn presence(user: &str) -> String {
    format!("{PREFIX}u:{{{}}}:presence", user_tag(user))
}

/// The field of one shard of one host instance in a presence hash.
pub fn presence_field(instance: &str, shard: usize) -> String {
    format!("{instance}/{shard}")
}

/// The `<host_id>/<instance>` part of a presence field.
pub fn instance_of_field(field: &str) -> Option<&str> {
    field.rsplit_once('/').map(|(instance, _)| instance)
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the
/// part between the first `{` and the next `}`, if not empty), else of the
/// whole key, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % SLOTS
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // The CRC16 check value, and `CLUSTER KEYSLOT` answers of Redis 7.0.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12_182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        // An empty tag hashes the whole key.
        assert_eq!(slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"pushgate:u:{alice}:presence"), slot(b"alice"));
    }

    #[test]
    fn user_tags_are_injective_and_brace_free() {
        let users = ["a", "a{b}", "a\\(b)", "a\\{b", "}{", "\\", "\\\\"];
        let tags: Vec<String> = users.iter().map(|u| user_tag(u)).collect();
        for (i, tag) in tags.iter().enumerate() {
            assert!(!tag.contains(['{', '}']), "{tag}");
            for other in &tags[i + 1..] {
                assert_ne!(tag, other);
            }
        }
        assert_eq!(presence("a{b}"), "pushgate:u:{a\\(b\\)}:presence");
    }

    #[test]
    fn presence_fields_name_their_instance() {
        let field = presence_field("web-1/8800fc33", 3);
        assert_eq!(field, "web-1/8800fc33/3");
        assert_eq!(instance_of_field(&field), Some("web-1/8800fc33"));
    }
}
