//! User partitions spread evenly over Redis Cluster slots. Pure.
//!
//! The next step (seq, epoch and history in Redis) keys each user's state
//! by partition, the way a host keys it by home shard: a push groups its
//! recipients by partition and runs one script per partition, so Redis
//! round trips grow with partitions touched, not with recipients.
//!
//! Peers' pitfall (PEER-FACTS, Centrifugo): naive `{0}`..`{N}` hash tags
//! land wherever CRC16 puts them, leaving some nodes idle. Here partition
//! `p`'s tag is chosen so its slot falls in the `p`-th of `count` equal
//! slot ranges; since `redis-cli --cluster create` (and any rebalance)
//! gives masters contiguous, near-equal ranges, every master holds within
//! one of `count / masters` partitions (checked up to `count / 2`
//! masters; a larger cluster wants more partitions). Every host computes
//! the same tags.

use super::keys::{slot, SLOTS};
use crate::route::user_hash;

/// Partitions by default: enough to spread over 128 masters, few enough
/// that a push to every partition is a few pipelined round trips per node.
pub const PARTITIONS_DEFAULT: usize = 128;

/// The partition of `user` among `count` (what [`Partitions::of`] says,
/// for a side that knows only the count: a broadcast's doorbell).
pub fn index_of(user: &str, count: usize) -> usize {
    (user_hash(user) % count as u64) as usize
}

pub struct Partitions {
    tags: Vec<String>,
}

impl Partitions {
    /// `count` partitions (1 to 16384), each tagged into its own equal
    /// share of the slots.
    pub fn new(count: usize) -> Partitions {
        assert!(
            (1..=SLOTS as usize).contains(&count),
            "1 to 16384 partitions"
        );
        let tags = (0..count)
            .map(|p| {
                let low = (p * SLOTS as usize / count) as u16;
                let high = ((p + 1) * SLOTS as usize / count) as u16;
                // CRC16 spreads uniformly: about 16384 / (high - low) tries.
                (0u32..)
                    .map(|n| format!("p{p}.{n}"))
                    .find(|tag| (low..high).contains(&slot(tag.as_bytes())))
                    .expect("CRC16 reaches every slot range")
            })
            .collect();
        Partitions { tags }
    }

    pub fn count(&self) -> usize {
        self.tags.len()
    }

    /// The partition of `user` (the route's hash, like the home shard).
    pub fn of(&self, user: &str) -> usize {
        index_of(user, self.tags.len())
    }

    /// Partition `p`'s hash tag (without braces).
    pub fn tag(&self, p: usize) -> &str {
        &self.tags[p]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partitions per master when `masters` masters split the slots in
    /// contiguous near-equal ranges (as `redis-cli --cluster create` does).
    fn per_master(partitions: &Partitions, masters: usize) -> Vec<usize> {
        let mut counts = vec![0; masters];
        for p in 0..partitions.count() {
            let s = slot(partitions.tag(p).as_bytes()) as usize;
            counts[s * masters / SLOTS as usize] += 1;
        }
        counts
    }

    #[test]
    fn each_partition_has_its_own_slot_range() {
        let partitions = Partitions::new(PARTITIONS_DEFAULT);
        for p in 0..partitions.count() {
            let s = slot(partitions.tag(p).as_bytes()) as usize;
            assert_eq!(
                s * PARTITIONS_DEFAULT / SLOTS as usize,
                p,
                "{}",
                partitions.tag(p)
            );
        }
    }

    #[test]
    fn spread_over_masters_is_even_and_naive_tags_are_not() {
        let partitions = Partitions::new(PARTITIONS_DEFAULT);
        for masters in [3, 5, 16, 32, 64] {
            let counts = per_master(&partitions, masters);
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "{masters} masters: {counts:?}");
        }
        // The pitfall: tags "0".."127" leave masters with far fewer.
        let mut naive = [0usize; 16];
        for p in 0..PARTITIONS_DEFAULT {
            naive[slot(p.to_string().as_bytes()) as usize * 16 / SLOTS as usize] += 1;
        }
        let spread = naive.iter().max().unwrap() - naive.iter().min().unwrap();
        assert!(spread > 1, "naive tags happen to spread evenly: {naive:?}");
        eprintln!(
            "16 masters, 128 partitions: chosen tags {:?}, naive {naive:?}",
            per_master(&partitions, 16)
        );
    }

    #[test]
    fn users_spread_over_partitions() {
        let partitions = Partitions::new(PARTITIONS_DEFAULT);
        let mut counts = vec![0u32; partitions.count()];
        for i in 0..128_000 {
            counts[partitions.of(&format!("user-{i}"))] += 1;
        }
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        assert!(min > 850 && max < 1150, "{min}..{max}");
    }
}
