//! Mailboxes moving to a successor (a live upgrade, step 3) in the
//! in-memory driver: the old cluster's shards export from their ticks,
//! the take-over threads' packing and reassembly run in between (no
//! socket: `tests/takeover.rs` runs the real conversation between two
//! processes), and the new cluster's shards merge on theirs.

#![cfg(test)]

use super::client::{cluster, shared, EPOCH};
use super::{Cluster, SimSettings, TICK_MS};
use crate::gateway::GatewayShared;
use crate::route::home_shard;
use crate::takeover::mailboxes::{Assembler, Packer};
use crate::takeover::moves::Moves;
use serde_json::json;
use std::sync::Arc;

fn data(pushes: &[(u64, serde_json::Value)]) -> Vec<serde_json::Value> {
    pushes.iter().map(|(_, d)| d.clone()).collect()
}

/// A successor of `old` with `new_shards` shards (settings changed by
/// `tweak`) that received and merged every mailbox of `old`.
fn successor(
    old: &mut Cluster,
    new_shards: usize,
    tweak: impl FnOnce(&mut GatewayShared),
) -> Cluster {
    old.advance(TICK_MS); // each shard notes its newest seq
    let old_moves = old.shared.moves.clone();
    let moves = Arc::new(Moves::new(new_shards, EPOCH));
    moves.continue_history(EPOCH, old_moves.successor_seq_start());
    let mut settings = shared();
    settings.moves = moves.clone();
    tweak(&mut settings);
    let mut new = Cluster::new(
        settings,
        SimSettings {
            shards: new_shards,
            ..SimSettings::default()
        },
    );
    old_moves.start_mailbox_export();
    let mut assembler = Assembler::default();
    for shard in 0..old.shards.len() {
        let mut packer = Packer::default();
        let mut bodies = Vec::new();
        let mut finished = false;
        for _ in 0..100 {
            old.advance(TICK_MS);
            let (items, last) = old_moves.take_mailboxes(shard, usize::MAX);
            for item in items {
                packer.add(item, &mut bodies);
            }
            if last {
                packer.flush(&mut bodies);
            }
            for body in bodies.drain(..) {
                let mut arrived = Vec::new();
                assembler
                    .receive(shard, body.users, body.broadcasts, &mut arrived)
                    .unwrap();
                for user in arrived {
                    moves.push_mailbox_in(home_shard(&user.user.name, new_shards), user);
                }
            }
            if last {
                finished = true;
                break;
            }
        }
        assert!(finished, "shard {shard} exported its mailboxes");
    }
    old_moves.stop_mailbox_export();
    new.advance(TICK_MS);
    assert_eq!(moves.mailboxes_unmerged(), 0, "merged on the next tick");
    new
}

/// On `old`: a device of `left` that saw a push and left, a user
/// `offline` that never had one, then pushes to both and a broadcast.
/// Returns their resume positions (left's: the push it saw; offline's: 0).
fn miss_pushes(old: &mut Cluster) -> (String, String) {
    let mut p = old.publisher(0);
    let mut d = old.device(0, "left", None);
    assert_eq!(p.push(old, &["left"], r#""seen""#), (1, 0, 0));
    let seen = d.pushes(old)[0].0;
    let positions = (d.since(seen), d.since(0));
    old.hang_up(d.socket);
    assert_eq!(p.push(old, &["left", "offline"], "1"), (0, 2, 0));
    p.broadcast(old, r#""all""#);
    assert_eq!(p.push(old, &["left"], "2"), (0, 1, 0));
    assert_eq!(p.push(old, &["offline"], "3"), (0, 1, 0));
    positions
}

#[test]
fn a_device_that_left_and_an_offline_user_resume_on_the_successor_with_exactly_what_they_missed() {
    for new_shards in [2, 3, 1] {
        let mut old = cluster(2);
        let (left, offline) = miss_pushes(&mut old);
        let mut new = successor(&mut old, new_shards, |_| {});
        let mut back = new.device(0, "left", Some(&left));
        assert_eq!(back.welcome["recovered"], true, "{new_shards} shards");
        let got = back.pushes(&mut new);
        assert_eq!(data(&got), [json!(1), json!("all"), json!(2)]);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        let mut back = new.device(0, "offline", Some(&offline));
        assert_eq!(back.welcome["recovered"], true, "{new_shards} shards");
        assert_eq!(
            data(&back.pushes(&mut new)),
            [json!(1), json!("all"), json!(3)]
        );
        // Live pushes go on above every old seq.
        let mut p = new.publisher(0);
        assert_eq!(p.push(&mut new, &["offline"], "4"), (1, 0, 0));
        let live = back.pushes(&mut new);
        assert_eq!(data(&live), [json!(4)]);
        assert!(live[0].0 > 1 << 32);
        new.check_invariants();
    }
}

#[test]
fn over_the_successors_entries_bound_a_resume_is_not_recovered_and_replays_nothing() {
    let mut old = cluster(2);
    let (left, offline) = miss_pushes(&mut old);
    let mut new = successor(&mut old, 3, |s| s.home.entries_max = 2);
    for (user, since) in [("left", &left), ("offline", &offline)] {
        let mut back = new.device(0, user, Some(since));
        assert_eq!(back.welcome["recovered"], false, "{user}");
        assert!(back.pushes(&mut new).is_empty(), "{user}");
    }
    new.check_invariants();
}
