//! User → home shard.
//!
//! Every connection, mailbox and push for a user lives on one shard, the
//! user's *home*. The push client library computes the home itself so it can
//! write to the right shard's socket without a hop, which is why the hash is a
//! fixed, documented function and not std's per-process random SipHash: the
//! answer must be the same in every process, version, machine and language.

/// Most shards one process runs; far more than cores on any machine, so a
/// larger number is a typo. The server refuses a config with more, and the
/// client refuses a status reply that names more, so a bogus reply cannot
/// size its per-shard tables.
pub const SHARDS_MAX: usize = 1024;

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable 64-bit hash of a user ID that [`home_shard`] reduces.
///
/// Algorithm (reimplement exactly; all arithmetic is wrapping on unsigned
/// 64-bit integers):
///
/// 1. FNV-1a 64 over the UTF-8 bytes of `user` (no normalisation, no
///    terminator):
///    `h = 0xcbf29ce484222325; for each byte b { h = (h ^ b) * 0x100000001b3 }`
/// 2. murmur3's `fmix64` finalizer, so that users whose IDs differ only in
///    the last bytes (`user-1`, `user-2`, …) still spread over all shards:
///    ```text
///    h ^= h >> 33; h *= 0xff51afd7ed558ccd;
///    h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53;
///    h ^= h >> 33;
///    ```
///
/// Test vectors: `""` → `0xefd01f60ba992926`, `"a"` → `0x82a2a958a9bece5b`,
/// `"alice"` → `0x3507d047a67c08f4`, `"héllo"` → `0xc185412747a0264d`.
pub fn user_hash(user: &str) -> u64 {
    let mut h = FNV_OFFSET_BASIS;
    for &b in user.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// murmur3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The shard (`0..shard_count`) that is home to `user`.
///
/// `home_shard(user, n) = user_hash(user) % n`, with [`user_hash`] =
/// FNV-1a 64 over the UTF-8 bytes followed by murmur3 `fmix64` (see there for
/// the exact steps and test vectors). The modulo is taken on the unsigned
/// 64-bit hash. Example: `home_shard("alice", 16) == 4`.
///
/// Changing the shard count re-homes most users; that is expected across a
/// restart, since mailboxes are per process.
///
/// # Panics
/// If `shard_count` is 0 (the config guarantees at least one shard).
pub fn home_shard(user: &str, shard_count: usize) -> usize {
    assert!(
        shard_count > 0,
        "home_shard: shard_count must be at least 1"
    );
    // usize → u64 is lossless on every target pushgate supports (64-bit
    // Linux), and the result is < shard_count, so it fits back in usize.
    (user_hash(user) % shard_count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pinned outputs, computed by an independent implementation. If one of
    // these changes, every deployed client library computes the wrong home.
    #[test]
    fn hash_known_values() {
        assert_eq!(user_hash(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(user_hash("a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(user_hash("alice"), 0x3507_d047_a67c_08f4);
        assert_eq!(user_hash("user-42"), 0xa395_32c7_ab05_1e8d);
        assert_eq!(user_hash("héllo"), 0xc185_4127_47a0_264d);
    }

    #[test]
    fn fnv1a_core_matches_reference() {
        // The FNV-1a reference vector for "a" is 0xaf63dc4c8601ec8c; undo
        // nothing, just check the FNV half against it before fmix64.
        assert_eq!(fmix64(0xaf63_dc4c_8601_ec8c), user_hash("a"));
        assert_eq!(fmix64(FNV_OFFSET_BASIS), user_hash(""));
    }

    #[test]
    fn home_known_values() {
        assert_eq!(home_shard("", 16), 6);
        assert_eq!(home_shard("a", 16), 11);
        assert_eq!(home_shard("alice", 16), 4);
        assert_eq!(home_shard("user-42", 16), 13);
        assert_eq!(home_shard("alice", 7), 6);
        assert_eq!(home_shard("user-42", 1024), 653);
        assert_eq!(home_shard("héllo", 7), 5);
    }

    #[test]
    fn single_shard_is_always_zero() {
        for user in ["", "a", "alice", "user-42"] {
            assert_eq!(home_shard(user, 1), 0);
        }
    }

    #[test]
    fn spread_is_even() {
        const USERS: usize = 100_000;
        const SHARDS: usize = 16;
        let mut counts = [0usize; SHARDS];
        for i in 0..USERS {
            counts[home_shard(&format!("user-{i}"), SHARDS)] += 1;
        }
        let expected = USERS / SHARDS;
        let tolerance = expected / 20; // ±5%
        for (shard, &count) in counts.iter().enumerate() {
            assert!(
                count.abs_diff(expected) <= tolerance,
                "shard {shard} got {count} users, expected {expected} ± {tolerance}: {counts:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "shard_count must be at least 1")]
    fn zero_shards_panics() {
        home_shard("alice", 0);
    }
}
