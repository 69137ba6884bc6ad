//! Redis key names and Redis Cluster slots. Pure.
//!
//! Every key of one user carries the tag of the user's partition
//! ([`super::partitions`]), so a user's keys (presence now; seq, epoch and
//! history next) live in one slot with the rest of the partition, and one
//! Lua script per partition may touch them all. The user ID follows the
//! tag, so its own braces cannot change the slot.

/// The prefix of every key pushgate writes.
pub const PREFIX: &str = "pushgate:";

/// Live host instances: a sorted set of `<host_id>/<instance>` scored by
/// the Redis time (ms) at which each lapses unless its heartbeat renews it.
pub const HOSTS_KEY: &str = "pushgate:hosts";

/// Redis Cluster's slot count.
pub const SLOTS: u16 = 16_384;

/// A user's presence: a hash of `<host_id>/<instance>/<shard>` → devices
/// connected there. `partition_tag`: the user's partition's tag.
pub fn presence(partition_tag: &str, user: &str) -> String {
    format!("{PREFIX}p:{{{partition_tag}}}:presence:{user}")
}

/// A partition's history meta: a hash with `seq` (the partition's last
/// seq; every push to users of the partition takes the next) and `epoch`
/// (Redis time in µs when the hash was created). Lost with its node's data,
/// it is created anew with a new epoch, so no resume across the loss is
/// called recovered.
pub fn partition_meta(partition_tag: &str) -> String {
    format!("{PREFIX}p:{{{partition_tag}}}:meta")
}

/// The prefix of a partition's stored payloads: `<prefix><seq>` holds the
/// payload of push `seq`, once for all its recipients in the partition,
/// and expires after the retention time.
pub fn payload_prefix(partition_tag: &str) -> String {
    format!("{PREFIX}p:{{{partition_tag}}}:push:")
}

/// A user's history: a list of the seqs of its stored pushes, oldest
/// first, at most `entries_max`, expiring `retention_ms` after the last.
pub fn history(partition_tag: &str, user: &str) -> String {
    format!("{PREFIX}p:{{{partition_tag}}}:history:{user}")
}

/// A user's history meta: a hash with `epoch` (the partition epoch its
/// fields belong to), `last` (the user's newest seq) and `floor` (the
/// highest seq dropped from its history by the entry limit).
pub fn user_meta(partition_tag: &str, user: &str) -> String {
    format!("{PREFIX}p:{{{partition_tag}}}:user:{user}")
}

/// A partition's broadcasts: a list of their seqs, oldest first, at most
/// `entries_max`, expiring `retention_ms` after the newest. Their payloads
/// are under [`payload_prefix`] like any push's, once per partition.
pub fn broadcasts(partition_tag: &str) -> String {
    format!("{PREFIX}p:{{{partition_tag}}}:broadcasts")
}

/// The prefix of a partition's "pushed since its last broadcast" hashes:
/// `<prefix><presence field>` maps each user of the partition pushed while
/// it had devices at that host instance·shard to its newest seq; the
/// next broadcast reads and deletes them (its doorbell's exceptions).
pub fn since_broadcast_prefix(partition_tag: &str) -> String {
    format!("{PREFIX}p:{{{partition_tag}}}:since:")
}

/// The set of presence fields that have a [`since_broadcast_prefix`] hash
/// in a partition, so a broadcast finds them without a scan.
pub fn since_broadcast_fields(partition_tag: &str) -> String {
    format!("{PREFIX}p:{{{partition_tag}}}:since-fields")
}

/// Buckets of each host instance's presence index per partition: enough
/// that a bucket stays within Redis's compact hash encoding (128 entries,
/// `hash-max-listpack-entries`) up to about a million online users per
/// host (128 partitions × 64 buckets × 128), few enough that an instance's
/// empty buckets cost nothing and a sweep step checks each quickly.
pub const PRESENCE_INDEX_BUCKETS: usize = 64;

/// The prefix of host instance `instance`'s (`<host_id>/<instance>`)
/// presence index in one partition: bucket `b` is `<prefix><b>`.
pub fn presence_index_prefix(partition_tag: &str, instance: &str) -> String {
    format!("{PREFIX}p:{{{partition_tag}}}:written:{instance}:")
}

/// One bucket of an instance's presence index: a hash of user → the shard
/// whose presence field it wrote, so the sweeper finds a dead instance's
/// fields without scanning the keyspace.
pub fn presence_index(partition_tag: &str, instance: &str, bucket: usize) -> String {
    format!("{}{bucket}", presence_index_prefix(partition_tag, instance))
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
    }

    #[test]
    fn a_users_braces_do_not_move_its_keys() {
        let key = presence("p7.42", "a{b}c");
        assert_eq!(key, "pushgate:p:{p7.42}:presence:a{b}c");
        assert_eq!(slot(key.as_bytes()), slot(b"p7.42"));
    }

    #[test]
    fn a_users_history_keys_share_its_partitions_slot() {
        let tag = "p3.9";
        for key in [
            partition_meta(tag),
            payload_prefix(tag) + "17",
            history(tag, "a{b}"),
            user_meta(tag, "a{b}"),
            presence(tag, "a{b}"),
            broadcasts(tag),
            since_broadcast_prefix(tag) + "web-1/8800fc33/3",
            since_broadcast_fields(tag),
            presence_index(tag, "web-1/8800fc33", 63),
        ] {
            assert_eq!(slot(key.as_bytes()), slot(tag.as_bytes()), "{key}");
        }
    }

    #[test]
    fn presence_fields_name_their_instance() {
        let field = presence_field("web-1/8800fc33", 3);
        assert_eq!(field, "web-1/8800fc33/3");
        assert_eq!(instance_of_field(&field), Some("web-1/8800fc33"));
    }
}
