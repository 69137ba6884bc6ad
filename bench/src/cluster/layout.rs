//! Who is where in a cluster run: each host's slice of the users, and
//! for each entry host the pool of users (all on other hosts) it pushes
//! to, drawn from as the homing scenario draws. Pure; see `cluster.rs`.

use crate::fleet;
use crate::push::Targets;

/// Which users live on which host and which host pushes to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Per host: its users' index range.
    pub slices: Vec<(u64, u64)>,
    /// Per entry host: the users it pushes to (all on other hosts).
    pub pools: Vec<Vec<u32>>,
}

impl Layout {
    pub fn new(conns: u64, hosts: usize) -> Layout {
        let slices = fleet::split(conns, hosts as u64);
        let mut pools = vec![Vec::new(); hosts];
        for (host, &(first, count)) in slices.iter().enumerate() {
            for offset in 0..count {
                let entry = (host + 1 + (offset % 2) as usize) % hosts;
                pools[entry].push((first + offset) as u32);
            }
        }
        Layout { slices, pools }
    }

    pub fn host_of(&self, user: u32) -> usize {
        let user = u64::from(user);
        self.slices
            .iter()
            .position(|&(first, count)| (first..first + count).contains(&user))
            .expect("every user is on a host")
    }
}

/// Random distinct users of one entry host's pool for each push: the
/// homing scenario's draw over the pool's positions (the same pushes for
/// every server).
pub(super) struct PoolTargets {
    draw: Targets,
    pool: Vec<u32>,
}

impl PoolTargets {
    pub(super) fn new(pool: Vec<u32>, fanout: u32) -> PoolTargets {
        PoolTargets {
            draw: Targets::new(pool.len() as u32, fanout),
            pool,
        }
    }

    pub(super) fn next(&mut self) -> Vec<u32> {
        let mut picked = self.draw.next();
        for at in &mut picked {
            *at = self.pool[*at as usize];
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_gets_pushes_from_one_other_host() {
        let layout = Layout::new(1000, 3);
        assert_eq!(layout.slices, vec![(0, 334), (334, 333), (667, 333)]);
        let mut entry_of = vec![None; 1000];
        for (entry, pool) in layout.pools.iter().enumerate() {
            // Both other hosts, about half each.
            let mut per_host = [0; 3];
            for &user in pool {
                assert_eq!(entry_of[user as usize], None, "one entry per user");
                entry_of[user as usize] = Some(entry);
                per_host[layout.host_of(user)] += 1;
            }
            assert_eq!(per_host[entry], 0, "never the entry host's own users");
            assert!(
                per_host.iter().filter(|&&n| n >= 166).count() == 2,
                "{per_host:?}"
            );
        }
        assert!(entry_of.iter().all(Option::is_some));
    }

    #[test]
    fn pool_targets_are_distinct_members() {
        let layout = Layout::new(1000, 3);
        let mut t = PoolTargets::new(layout.pools[1].clone(), 300);
        for _ in 0..20 {
            let mut picked = t.next();
            assert_eq!(picked.len(), 300);
            assert!(picked.iter().all(|u| layout.pools[1].contains(u)));
            picked.sort_unstable();
            picked.dedup();
            assert_eq!(picked.len(), 300);
        }
    }
}
