//! Where a push stored in Redis goes, and how it is counted. Pure: the
//! stored push ([`history::add`]'s result), the live host instances and
//! this host's instance in; the doorbells to ring, the bells for this
//! host's own shards and (once the rings are answered) the counts out.
//!
//! - A recipient's location (a presence field `<host_id>/<instance>/<shard>`)
//!   counts only while its instance is live, as for presence.
//! - Locations of this host's instance are handed to its shards directly
//!   (no round trip through pub/sub); every other live location's
//!   host·shard gets one doorbell per push (chunks of
//!   [`RECIPIENTS_PER_BELL_MAX`] recipients), carrying the payload once.
//! - A recipient is **delivered** when it has a live location here, or a
//!   doorbell naming it reached at least one subscriber; else **stored**
//!   (it is in its history, and a device resumes it from there).
//!
//! [`history::add`]: super::history::add

use super::doorbell::{self, Bell, Rung, RECIPIENTS_PER_BELL_MAX};
use super::history::Stored;
use super::presence::Live;
use bytes::Bytes;
use std::collections::BTreeMap;

/// A stored push's way to its recipients' devices.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Doorbells for other hosts: (channel, encoded bell), for
    /// [`super::pubsub::ring`].
    pub remote: Vec<(String, Vec<u8>)>,
    /// For each of `remote`, the recipients it names (indexes into the
    /// recipients in the order of the `Stored` parts).
    remote_recipients: Vec<Vec<usize>>,
    /// Bells for this host's own shards: (shard, bell).
    pub local: Vec<(usize, Bell)>,
    /// For each recipient: a live device on this host.
    here: Vec<bool>,
}

/// A push's recipients, as its publisher is told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    pub delivered: u32,
    pub stored: u32,
}

/// The `(instance, shard)` of a presence field, if well formed.
fn location(field: &str) -> Option<(&str, usize)> {
    let (instance, shard) = field.rsplit_once('/')?;
    Some((instance, shard.parse().ok()?))
}

/// The host_id of an instance name (`<host_id>/<8 hex digits>`).
pub(super) fn host_of(instance: &str) -> &str {
    instance.rsplit_once('/').map_or(instance, |(host, _)| host)
}

/// Plans the way of a push stored as `stored` with `payload`. `instance`
/// is this host's; its locations on shards `>= shards` (a field another
/// configuration left) are ignored.
pub fn plan(
    stored: &[Stored],
    live: &Live,
    instance: &str,
    shards: usize,
    payload: &Bytes,
) -> Fanout {
    // BTreeMaps: the same push is always rung in the same order (tests,
    // logs).
    let mut remote: BTreeMap<String, Vec<(usize, Rung)>> = BTreeMap::new();
    let mut local: BTreeMap<usize, Vec<Rung>> = BTreeMap::new();
    let mut here = Vec::new();
    for part in stored {
        for recipient in &part.recipients {
            let index = here.len();
            let mut is_here = false;
            let rung = Rung {
                user: recipient.user.clone(),
                epoch: part.epoch,
                seq: part.seq,
                previous_seq: recipient.previous_seq,
            };
            for (field, devices) in &recipient.locations {
                let Some((owner, shard)) = location(field) else {
                    continue;
                };
                if *devices == 0 || !live.contains(owner) {
                    continue;
                }
                if owner == instance {
                    if shard < shards {
                        is_here = true;
                        local.entry(shard).or_default().push(rung.clone());
                    }
                    continue;
                }
                let channel = doorbell::channel(host_of(owner), shard);
                let rungs = remote.entry(channel).or_default();
                // Two live instances of one host·shard name one channel.
                if rungs.last().is_none_or(|(last, _)| *last != index) {
                    rungs.push((index, rung.clone()));
                }
            }
            here.push(is_here);
        }
    }
    let mut fanout = Fanout {
        here,
        ..Fanout::default()
    };
    for (channel, rungs) in remote {
        for chunk in rungs.chunks(RECIPIENTS_PER_BELL_MAX) {
            let bell = Bell {
                rungs: chunk.iter().map(|(_, rung)| rung.clone()).collect(),
                payload: payload.clone(),
            };
            fanout.remote.push((channel.clone(), bell.encode()));
            fanout
                .remote_recipients
                .push(chunk.iter().map(|(index, _)| *index).collect());
        }
    }
    for (shard, rungs) in local {
        for chunk in rungs.chunks(RECIPIENTS_PER_BELL_MAX) {
            let bell = Bell {
                rungs: chunk.to_vec(),
                payload: payload.clone(),
            };
            fanout.local.push((shard, bell));
        }
    }
    fanout
}

impl Fanout {
    /// The counts once the remote doorbells were rung: `heard[i]` is how
    /// many subscribers got `remote[i]` (all 0 when the ring failed).
    pub fn count(&self, heard: &[u64]) -> Counted {
        let mut delivered = self.here.clone();
        for (recipients, heard) in self.remote_recipients.iter().zip(heard) {
            if *heard > 0 {
                for &index in recipients {
                    delivered[index] = true;
                }
            }
        }
        let n = delivered.iter().filter(|d| **d).count() as u32;
        Counted {
            delivered: n,
            stored: delivered.len() as u32 - n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::history::Recipient;

    const ME: &str = "a/00000001";

    fn recipient(user: &str, previous_seq: u64, locations: &[(&str, u32)]) -> Recipient {
        Recipient {
            user: user.into(),
            previous_seq,
            locations: locations.iter().map(|(f, n)| (f.to_string(), *n)).collect(),
        }
    }

    fn live(instances: &[&str]) -> Live {
        instances.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn local_locations_go_to_the_shards_and_remote_ones_get_one_bell_per_host_shard() {
        let payload = Bytes::from_static(b"{\"n\":1}");
        let stored = vec![
            Stored {
                partition: 3,
                epoch: 7,
                seq: 10,
                recipients: vec![
                    recipient("u1", 4, &[("a/00000001/0", 1), ("b/00000002/1", 2)]),
                    recipient("u2", 0, &[("b/00000002/1", 1)]),
                ],
            },
            Stored {
                partition: 5,
                epoch: 8,
                seq: 2,
                recipients: vec![
                    // An instance that is not live, a zero count, a bad
                    // field, a shard this host does not have: nowhere.
                    recipient(
                        "u3",
                        1,
                        &[
                            ("c/0000000f/0", 1),
                            ("b/00000002/0", 0),
                            ("junk", 1),
                            ("a/00000001/9", 1),
                        ],
                    ),
                    recipient("u4", 1, &[("a/00000001/1", 1), ("b/00000002/0", 1)]),
                ],
            },
        ];
        let fanout = plan(&stored, &live(&[ME, "b/00000002"]), ME, 2, &payload);
        let rung = |user: &str, epoch, seq, previous_seq| Rung {
            user: user.into(),
            epoch,
            seq,
            previous_seq,
        };
        let channels: Vec<&str> = fanout.remote.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(channels, ["pushgate:bell:{b/0}", "pushgate:bell:{b/1}"]);
        let bells: Vec<Bell> = fanout
            .remote
            .iter()
            .map(|(_, m)| Bell::decode(&Bytes::from(m.clone())).unwrap())
            .collect();
        assert_eq!(bells[0].rungs, [rung("u4", 8, 2, 1)]);
        assert_eq!(bells[1].rungs, [rung("u1", 7, 10, 4), rung("u2", 7, 10, 0)]);
        assert!(bells.iter().all(|b| b.payload == payload));
        assert_eq!(fanout.local.len(), 2);
        assert_eq!(fanout.local[0].0, 0);
        assert_eq!(fanout.local[0].1.rungs, [rung("u1", 7, 10, 4)]);
        assert_eq!(fanout.local[1].0, 1);
        assert_eq!(fanout.local[1].1.rungs, [rung("u4", 8, 2, 1)]);

        // u1, u4 are here; u2 only behind b/1; u3 nowhere.
        let count = |heard: &[u64]| fanout.count(heard);
        assert_eq!(
            count(&[0, 0]),
            Counted {
                delivered: 2,
                stored: 2
            }
        );
        assert_eq!(
            count(&[1, 0]),
            Counted {
                delivered: 2,
                stored: 2
            }
        );
        assert_eq!(
            count(&[0, 1]),
            Counted {
                delivered: 3,
                stored: 1
            }
        );
        assert_eq!(
            count(&[]),
            Counted {
                delivered: 2,
                stored: 2
            }
        );
    }

    #[test]
    fn a_recipient_is_named_once_per_channel_and_large_shares_are_chunked() {
        let payload = Bytes::from_static(b"1");
        let twice = recipient("u", 0, &[("b/00000002/0", 1), ("b/00000003/0", 1)]);
        let stored = vec![Stored {
            partition: 0,
            epoch: 1,
            seq: 1,
            recipients: vec![twice],
        }];
        let both = live(&["b/00000002", "b/00000003"]);
        let fanout = plan(&stored, &both, ME, 1, &payload);
        assert_eq!(fanout.remote.len(), 1);
        assert_eq!(
            fanout.count(&[1]),
            Counted {
                delivered: 1,
                stored: 0
            }
        );

        let many: Vec<Recipient> = (0..RECIPIENTS_PER_BELL_MAX + 1)
            .map(|i| recipient(&format!("u{i}"), 0, &[("b/00000002/0", 1)]))
            .collect();
        let stored = vec![Stored {
            partition: 0,
            epoch: 1,
            seq: 1,
            recipients: many,
        }];
        let fanout = plan(&stored, &both, ME, 1, &payload);
        assert_eq!(fanout.remote.len(), 2);
        let n = RECIPIENTS_PER_BELL_MAX as u32;
        assert_eq!(
            fanout.count(&[1, 0]),
            Counted {
                delivered: n,
                stored: 1
            }
        );
        assert_eq!(
            fanout.count(&[0, 1]),
            Counted {
                delivered: 1,
                stored: n
            }
        );
    }

    #[test]
    fn nothing_stored_is_nothing_counted() {
        let fanout = plan(&[], &live(&[ME]), ME, 1, &Bytes::new());
        assert_eq!(fanout, Fanout::default());
        assert_eq!(fanout.count(&[]), Counted::default());
    }
}
