//! Broadcasts across hosts (Redis configured). Pure: the stored broadcast
//! ([`history::broadcast`]'s result) and the live hosts in; the doorbells
//! to ring, this host's own bell and the counts out; on the receiving
//! side, each user's rung.
//!
//! A broadcast is stored once per partition (128 copies, not one per
//! user): each partition gives it its next seq, so every user's seqs stay
//! one strictly increasing chain whichever host took a push or a
//! broadcast. A device must get it after every push of its user with a
//! lower seq, so a shard has to know, per device, the user's seq before
//! the broadcast — without a Redis read per user. It is the later of
//! - the partition's previous broadcast (in the doorbell, per partition),
//! - the user's newest push since that broadcast: each push records, per
//!   presence field of its recipients (`<host>/<instance>/<shard>`), the
//!   user and its seq; the broadcast's script reads and clears them, and
//!   each host's doorbell names those of its own fields ("pushed since").
//!
//! A push the host's fields do not name was stored before the user had a
//! device there, so such a device was welcomed at or after it. Hence a
//! device at a seq at or above the later of the two has had everything
//! before the broadcast (it is the next), and one below it missed
//! something (a lost or late doorbell: repair from the history, which
//! includes the broadcast). [`BroadcastBell::rung`] folds the devices'
//! seqs in so [`super::gap::ring`] decides as for any push.
//!
//! One doorbell per live host (on its shard 0's channel; the receiving
//! Redis thread hands it to every shard), carrying the payload once, the
//! 128 partitions' places and the host's "pushed since" users. A lost one
//! is a gap like any lost doorbell: the next doorbell of the user or the
//! periodic check repairs it from the history.
//!
//! The wire form (text head; user IDs have no control characters):
//! ```text
//! pushgate-broadcast 1\n
//! <epoch> <seq> <previous broadcast seq>\n   one line per partition, in order
//! \n
//! <seq> <user>\n                             one line per user pushed since
//! \n
//! <payload bytes>
//! ```
//!
//! [`history::broadcast`]: super::history::broadcast

use super::doorbell::{self, Rung};
use super::fanout::{host_of, Counted};
use super::history::StoredBroadcast;
use super::keys::{self, SLOTS};
use super::partitions::index_of;
use super::presence::Live;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const MAGIC: &[u8] = b"pushgate-broadcast 1\n";
/// "Pushed since" users in one doorbell at most (about 40 MB of head): a
/// bigger one is refused by the receiver, which is a lost doorbell that
/// the history check repairs.
pub const PUSHED_SINCE_MAX: usize = 1 << 20;

/// Whether a heard message is a broadcast's doorbell.
pub fn is_broadcast(message: &[u8]) -> bool {
    message.starts_with(MAGIC)
}

/// A broadcast's place in one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub epoch: u64,
    pub seq: u64,
    /// The partition's broadcast before this one (0: none in this epoch).
    pub previous_seq: u64,
}

/// A broadcast as one host's shards take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastBell {
    /// Indexed by partition.
    pub places: Vec<Place>,
    /// Users with devices on this host pushed since their partition's
    /// previous broadcast: their newest seq before this one.
    pub pushed_since: HashMap<String, u64>,
    pub payload: Bytes,
}

impl BroadcastBell {
    /// The rung of `user`, whose live devices here stand at
    /// `device_seqs` (in this broadcast's epoch of the user's partition):
    /// its previous seq is the later of the partition's previous
    /// broadcast, the user's push since it, and any device already at or
    /// past both but below this broadcast (see the module's doc).
    pub fn rung(&self, user: &str, device_seqs: impl IntoIterator<Item = u64>) -> Rung {
        let place = self.places[index_of(user, self.places.len())];
        let pushed = self.pushed_since.get(user).copied().unwrap_or(0);
        let known = pushed.max(place.previous_seq);
        let furthest = device_seqs
            .into_iter()
            .filter(|&seq| seq < place.seq)
            .max()
            .unwrap_or(0);
        Rung {
            user: user.to_owned(),
            epoch: place.epoch,
            seq: place.seq,
            previous_seq: known.max(furthest),
        }
    }

    /// The epoch of `user`'s partition in this broadcast.
    pub fn epoch_of(&self, user: &str) -> u64 {
        self.places[index_of(user, self.places.len())].epoch
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let head = self.places.len() * 40
            + self
                .pushed_since
                .keys()
                .map(|u| u.len() + 22)
                .sum::<usize>();
        let mut out = Vec::with_capacity(MAGIC.len() + head + 2 + self.payload.len());
        out.extend_from_slice(MAGIC);
        for p in &self.places {
            out.extend_from_slice(format!("{} {} {}\n", p.epoch, p.seq, p.previous_seq).as_bytes());
        }
        out.push(b'\n');
        // Sorted: the same broadcast is always the same bytes (tests).
        let sorted: BTreeMap<&String, &u64> = self.pushed_since.iter().collect();
        for (user, seq) in sorted {
            out.extend_from_slice(format!("{seq} {user}\n").as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.payload);
        out
    }

    /// Reads a broadcast's doorbell; a malformed one is refused with the
    /// reason (the receiver logs it, and the history check repairs).
    pub fn decode(message: &Bytes) -> Result<BroadcastBell, String> {
        let mut rest = message
            .strip_prefix(MAGIC)
            .ok_or("not a pushgate-broadcast 1 message")?;
        let mut at = MAGIC.len();
        let mut next_line = || -> Result<&str, String> {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("the head does not end")?;
            let line = std::str::from_utf8(&rest[..end]).map_err(|_| "a line is not UTF-8")?;
            at += end + 1;
            rest = &rest[end + 1..];
            Ok(line)
        };
        let number = |field: Option<&str>, what: &str, line: &str| {
            field
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or(format!("a line without its {what}: {line:?}"))
        };
        let mut places = Vec::new();
        loop {
            let line = next_line()?;
            if line.is_empty() {
                break;
            }
            if places.len() == SLOTS as usize {
                return Err(format!("more than {SLOTS} partitions"));
            }
            let mut fields = line.split(' ');
            let place = Place {
                epoch: number(fields.next(), "epoch", line)?,
                seq: number(fields.next(), "seq", line)?,
                previous_seq: number(fields.next(), "previous seq", line)?,
            };
            if place.previous_seq >= place.seq || fields.next().is_some() {
                return Err(format!("a partition line out of order: {line:?}"));
            }
            places.push(place);
        }
        if places.is_empty() {
            return Err("no partitions".to_owned());
        }
        let mut pushed_since = HashMap::new();
        loop {
            let line = next_line()?;
            if line.is_empty() {
                break;
            }
            if pushed_since.len() == PUSHED_SINCE_MAX {
                return Err(format!("more than {PUSHED_SINCE_MAX} users pushed since"));
            }
            let (seq, user) = line
                .split_once(' ')
                .filter(|(_, user)| !user.is_empty())
                .ok_or(format!("a user line without its user: {line:?}"))?;
            let seq = number(Some(seq), "seq", line)?;
            if seq >= places[index_of(user, places.len())].seq {
                return Err(format!("a push since not below the broadcast: {line:?}"));
            }
            pushed_since.insert(user.to_owned(), seq);
        }
        Ok(BroadcastBell {
            places,
            pushed_since,
            payload: message.slice(at..),
        })
    }
}

/// A stored broadcast's way to every live host.
#[derive(Debug, PartialEq, Eq)]
pub struct BroadcastPlan {
    /// This host's bell, for each of its shards.
    pub local: BroadcastBell,
    /// Every other live host's doorbell: (channel, encoded bell), for
    /// [`super::pubsub::ring`].
    pub remote: Vec<(String, Vec<u8>)>,
}

/// Plans the way of a broadcast stored as `stored` (every partition, in
/// order) with `payload`: one bell per live host (`live`: instances, of
/// which this host `host_id`'s own and every other host's name one host
/// each), each naming the users pushed since whose presence fields are
/// that host's.
pub fn plan(
    stored: &[StoredBroadcast],
    live: &Live,
    host_id: &str,
    payload: &Bytes,
) -> BroadcastPlan {
    let places: Vec<Place> = stored
        .iter()
        .map(|s| Place {
            epoch: s.epoch,
            seq: s.seq,
            previous_seq: s.previous_seq,
        })
        .collect();
    let hosts: BTreeSet<&str> = live
        .iter()
        .map(|instance| host_of(instance))
        .chain([host_id])
        .collect();
    let mut pushed_since: BTreeMap<&str, HashMap<String, u64>> =
        hosts.iter().map(|&h| (h, HashMap::new())).collect();
    for part in stored {
        for (field, users) in &part.pushed_since {
            let Some(host) = keys::instance_of_field(field).map(host_of) else {
                continue;
            };
            let Some(named) = pushed_since.get_mut(host) else {
                continue; // a host that is not live: nothing to ring
            };
            for (user, seq) in users {
                let newest = named.entry(user.clone()).or_default();
                *newest = (*newest).max(*seq);
            }
        }
    }
    let mut local = None;
    let mut remote = Vec::new();
    for (host, pushed_since) in pushed_since {
        let bell = BroadcastBell {
            places: places.clone(),
            pushed_since,
            payload: payload.clone(),
        };
        if host == host_id {
            local = Some(bell);
        } else {
            remote.push((doorbell::channel(host, 0), bell.encode()));
        }
    }
    BroadcastPlan {
        local: local.expect("this host is among the hosts"),
        remote,
    }
}

/// A broadcast's counts once the `others` remote doorbells of its plan
/// were rung: `heard[i]` is how many subscribers got the `i`-th (empty
/// when the ring failed). A broadcast counts **hosts**: delivered = this
/// host and every other whose doorbell was heard, stored = the live hosts
/// it did not reach now (their devices get it from the history).
pub fn count(others: usize, heard: &[u64]) -> Counted {
    let reached = heard.iter().filter(|&&h| h > 0).count() as u32;
    Counted {
        delivered: 1 + reached,
        stored: others as u32 - reached,
    }
}

/// Two seq-ordered replays (a user's own entries and its partition's
/// broadcasts) as one, oldest first; a seq in both counts once.
pub fn merge_by_seq<T>(
    a: impl IntoIterator<Item = (u64, T)>,
    b: impl IntoIterator<Item = (u64, T)>,
) -> Vec<(u64, T)> {
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    let mut out = Vec::with_capacity(a.size_hint().0 + b.size_hint().0);
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 < y.0 => a.next(),
            (Some(x), Some(y)) if x.0 == y.0 => {
                b.next();
                a.next()
            }
            (_, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => return out,
        };
        out.extend(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::gap::{self, Position, Ring};

    fn places(n: usize, epoch: u64) -> Vec<Place> {
        (0..n as u64)
            .map(|p| Place {
                epoch,
                seq: 100 + p,
                previous_seq: 50 + p,
            })
            .collect()
    }

    fn bell() -> BroadcastBell {
        BroadcastBell {
            places: places(4, 7),
            pushed_since: [("alice".to_owned(), 30u64), ("bob {x}".to_owned(), 60)]
                .into_iter()
                .filter(|(u, seq)| *seq < 100 + index_of(u, 4) as u64)
                .collect(),
            payload: Bytes::from_static(b"{\"all\":\"line\\n\"}\n"),
        }
    }

    #[test]
    fn merged_replays_keep_seq_order_and_name_a_seq_once() {
        let own = [(3, "a"), (9, "c"), (12, "e")];
        let all = [(5, "b"), (9, "c"), (10, "d"), (20, "f")];
        let merged = merge_by_seq(own, all);
        let seqs: Vec<u64> = merged.iter().map(|e| e.0).collect();
        assert_eq!(seqs, [3, 5, 9, 10, 12, 20]);
        assert_eq!(merged[2].1, "c");
        assert_eq!(merge_by_seq(own, []), own);
        assert_eq!(merge_by_seq([], all), all);
        assert!(merge_by_seq::<()>([], []).is_empty());
    }

    #[test]
    fn a_broadcast_bell_reads_back_as_written_and_damage_is_refused() {
        let bell = bell();
        let wire = bell.encode();
        assert_eq!(BroadcastBell::decode(&Bytes::from(wire.clone())), Ok(bell));
        assert!(is_broadcast(&wire));
        assert!(!is_broadcast(b"pushgate-bell 1\n\n"));
        let head_len = wire.windows(2).rposition(|w| w == b"\n\n").unwrap() + 2;
        for cut in 0..head_len - 1 {
            let short = Bytes::copy_from_slice(&wire[..cut]);
            assert!(BroadcastBell::decode(&short).is_err(), "cut at {cut}");
        }
        for bad in [
            &b"pushgate-broadcast 1\n\n\n"[..],
            b"pushgate-broadcast 1\n1 5 5\n\n\n",
            b"pushgate-broadcast 1\n1 5 4 9\n\n\n",
            b"pushgate-broadcast 1\n1 x 4\n\n\n",
            b"pushgate-broadcast 1\n1 5 4\n\n5 u\n\n",
            b"pushgate-broadcast 1\n1 5 4\n\n3 \n\n",
            b"pushgate-broadcast 1\n1 5 4\n\n3\n\n",
        ] {
            assert!(
                BroadcastBell::decode(&Bytes::from_static(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    /// The shard's decision for each device, through `gap::ring`.
    fn decide(bell: &BroadcastBell, user: &str, devices: &[u64]) -> Vec<Ring> {
        let epoch = bell.epoch_of(user);
        let rung = bell.rung(user, devices.iter().copied());
        devices
            .iter()
            .map(|&seq| gap::ring(Position { epoch, seq }, &rung))
            .collect()
    }

    #[test]
    fn each_device_gets_the_broadcast_next_or_repairs_what_it_missed() {
        let bell = BroadcastBell {
            places: vec![Place {
                epoch: 7,
                seq: 100,
                previous_seq: 50,
            }],
            pushed_since: named(&[("pushed", 80)]),
            payload: Bytes::new(),
        };
        // Not pushed since the previous broadcast: at it, the next.
        assert_eq!(decide(&bell, "quiet", &[50]), [Ring::Send]);
        // Missed the previous broadcast: repair (the replay includes it).
        assert_eq!(
            decide(&bell, "quiet", &[40]),
            [Ring::Repair { after_seq: 40 }]
        );
        // Pushed since: at that push, the next; before it, a gap.
        assert_eq!(decide(&bell, "pushed", &[80]), [Ring::Send]);
        assert_eq!(
            decide(&bell, "pushed", &[50, 80]),
            [Ring::Repair { after_seq: 50 }, Ring::Send]
        );
        // Welcomed after a push this host's fields do not name (the user
        // had no device here then): its seq is the user's newest.
        assert_eq!(decide(&bell, "quiet", &[70, 70]), [Ring::Send, Ring::Send]);
        // Has it already (a repair replayed it, or a later push).
        assert_eq!(
            decide(&bell, "pushed", &[100, 120]),
            [Ring::Have, Ring::Have]
        );
        // Another epoch: resume.
        let rung = bell.rung("quiet", [50]);
        let other = Position { epoch: 8, seq: 50 };
        assert_eq!(gap::ring(other, &rung), Ring::Resync);
    }

    fn named(users: &[(&str, u64)]) -> HashMap<String, u64> {
        users.iter().map(|(u, s)| (u.to_string(), *s)).collect()
    }

    fn stored(partition: usize, seq: u64, since: &[(&str, &[(&str, u64)])]) -> StoredBroadcast {
        StoredBroadcast {
            partition,
            epoch: 7,
            seq,
            previous_seq: seq - 10,
            pushed_since: since
                .iter()
                .map(|(field, users)| {
                    let users = users.iter().map(|(u, s)| (u.to_string(), *s)).collect();
                    (field.to_string(), users)
                })
                .collect(),
        }
    }

    #[test]
    fn one_bell_per_live_host_each_naming_its_own_users_pushed_since() {
        // One partition, so every user lands in it.
        let stored = vec![stored(
            0,
            40,
            &[
                ("a/00000001/0", &[("u1", 33), ("u2", 31)]),
                ("b/00000002/1", &[("u1", 35)]),
                ("b/00000009/0", &[("u1", 36), ("u3", 32)]),
                ("dead/0000000f/0", &[("u4", 39)]),
                ("junk", &[("u5", 39)]),
            ],
        )];
        let live: Live = ["a/00000001", "b/00000002", "c/00000003"]
            .into_iter()
            .map(String::from)
            .collect();
        let payload = Bytes::from_static(b"1");
        let plan = plan(&stored, &live, "a", &payload);
        assert_eq!(plan.local.pushed_since, named(&[("u1", 33), ("u2", 31)]));
        let channels: Vec<&str> = plan.remote.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(channels, ["pushgate:bell:{b/0}", "pushgate:bell:{c/0}"]);
        let b = BroadcastBell::decode(&Bytes::from(plan.remote[0].1.clone())).unwrap();
        // Both of host b's instances count (a newer instance after a
        // resync still has devices that were pushed under the old one).
        assert_eq!(b.pushed_since, named(&[("u1", 36), ("u3", 32)]));
        assert_eq!(b.places, plan.local.places);
        assert_eq!(b.payload, payload);
        let c = BroadcastBell::decode(&Bytes::from(plan.remote[1].1.clone())).unwrap();
        assert!(c.pushed_since.is_empty());

        assert_eq!(
            count(2, &[1, 1]),
            Counted {
                delivered: 3,
                stored: 0
            }
        );
        assert_eq!(
            count(2, &[0, 1]),
            Counted {
                delivered: 2,
                stored: 1
            }
        );
        assert_eq!(
            count(2, &[]),
            Counted {
                delivered: 1,
                stored: 2
            }
        );
    }
}
