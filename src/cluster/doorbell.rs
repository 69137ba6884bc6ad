//! Doorbells: how a push stored in Redis reaches the host·shards where its
//! recipients have devices. Pure encoding plus the publish and subscribe
//! calls.
//!
//! - One channel per host and shard, `pushgate:bell:{<host_id>/<shard>}`:
//!   subscriptions grow with hosts × shards, never with users, and the
//!   channels' hash tags spread them over the cluster's masters.
//! - Redis Cluster: sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`), which
//!   stays within the channel's shard instead of being copied to every
//!   node as `PUBLISH` is. A standalone Redis: `PUBLISH` / `SUBSCRIBE`.
//! - A doorbell is at-most-once (pub/sub drops messages while a subscriber
//!   reconnects or its node fails over). It carries each recipient's seq
//!   and previous seq, so the receiving shard sees a gap (the previous seq
//!   is not the last it delivered to the user) and repairs it from the
//!   stored history; correctness comes from the history, the doorbell only
//!   saves a read.
//! - One doorbell per host·shard per push, whatever its recipients there
//!   (at most [`RECIPIENTS_PER_BELL_MAX`] each), carrying the payload once.
//!
//! The wire form (text head, user IDs have no control characters):
//! ```text
//! pushgate-bell 1\n
//! <epoch> <seq> <previous seq> <user>\n     one line per recipient
//! \n
//! <payload bytes>
//! ```

use bytes::Bytes;

/// The first line of every doorbell; another version is refused.
const MAGIC: &[u8] = b"pushgate-bell 1\n";
/// Recipients named in one doorbell at most: a bigger share is rung as
/// several doorbells, so one message stays well under a megabyte.
pub const RECIPIENTS_PER_BELL_MAX: usize = 4_096;

/// The channel of `host_id`'s shard `shard`.
pub fn channel(host_id: &str, shard: usize) -> String {
    format!("{}bell:{{{host_id}/{shard}}}", super::keys::PREFIX)
}

/// One recipient of a doorbell: the push's place in the user's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rung {
    pub user: String,
    /// The epoch of the user's partition.
    pub epoch: u64,
    pub seq: u64,
    /// The user's seq before this one (0: none in this epoch).
    pub previous_seq: u64,
}

/// A doorbell: recipients on one host·shard and the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bell {
    pub rungs: Vec<Rung>,
    pub payload: Bytes,
}

impl Bell {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let head: usize = self.rungs.iter().map(|r| r.user.len() + 64).sum();
        let mut out = Vec::with_capacity(MAGIC.len() + head + 1 + self.payload.len());
        out.extend_from_slice(MAGIC);
        for r in &self.rungs {
            out.extend_from_slice(
                format!("{} {} {} {}\n", r.epoch, r.seq, r.previous_seq, r.user).as_bytes(),
            );
        }
        out.push(b'\n');
        out.extend_from_slice(&self.payload);
        out
    }

    /// Reads a doorbell; a malformed one is refused with the reason (the
    /// receiver logs it: a doorbell comes from a pushgate of another
    /// version or from something that is not pushgate).
    pub fn decode(message: &Bytes) -> Result<Bell, String> {
        let rest = message
            .strip_prefix(MAGIC)
            .ok_or("not a pushgate-bell 1 message")?;
        let mut at = MAGIC.len();
        let mut rungs = Vec::new();
        let mut rest = rest;
        loop {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("the head does not end")?;
            let line = &rest[..end];
            at += end + 1;
            rest = &rest[end + 1..];
            if line.is_empty() {
                break;
            }
            if rungs.len() == RECIPIENTS_PER_BELL_MAX {
                return Err(format!("more than {RECIPIENTS_PER_BELL_MAX} recipients"));
            }
            let line = std::str::from_utf8(line).map_err(|_| "a recipient line is not UTF-8")?;
            let mut fields = line.splitn(4, ' ');
            let mut number = |what: &str| {
                fields
                    .next()
                    .and_then(|f| f.parse::<u64>().ok())
                    .ok_or(format!("a recipient line without its {what}: {line:?}"))
            };
            let (epoch, seq, previous_seq) =
                (number("epoch")?, number("seq")?, number("previous seq")?);
            let user = fields
                .next()
                .filter(|u| !u.is_empty())
                .ok_or(format!("a recipient line without its user: {line:?}"))?;
            if previous_seq >= seq {
                return Err(format!("previous seq {previous_seq} not below seq {seq}"));
            }
            rungs.push(Rung {
                user: user.to_owned(),
                epoch,
                seq,
                previous_seq,
            });
        }
        Ok(Bell {
            rungs,
            payload: message.slice(at..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bell() -> Bell {
        Bell {
            rungs: vec![
                Rung {
                    user: "alice".into(),
                    epoch: 1_764_560_000_123_456,
                    seq: 42,
                    previous_seq: 7,
                },
                Rung {
                    user: "bob the {builder}".into(),
                    epoch: 9,
                    seq: 1,
                    previous_seq: 0,
                },
            ],
            payload: Bytes::from_static(b"{\"a\":\"line\\nbreak\"}\n"),
        }
    }

    #[test]
    fn a_bell_reads_back_as_written() {
        let bell = bell();
        let wire = Bytes::from(bell.encode());
        assert_eq!(Bell::decode(&wire), Ok(bell));
        let empty = Bell {
            rungs: vec![],
            payload: Bytes::new(),
        };
        assert_eq!(Bell::decode(&Bytes::from(empty.encode())), Ok(empty));
    }

    #[test]
    fn every_cut_short_or_damaged_bell_is_refused_or_reads_as_written() {
        let wire = bell().encode();
        // Cut anywhere in the head: refused, never a panic.
        let head_len = wire.windows(2).position(|w| w == b"\n\n").unwrap() + 2;
        for cut in 0..head_len {
            let short = Bytes::copy_from_slice(&wire[..cut]);
            assert!(Bell::decode(&short).is_err(), "cut at {cut}");
        }
        // Cut in the payload: a shorter payload (pub/sub never cuts; this
        // checks the head is read the same).
        for cut in head_len..=wire.len() {
            let bell = Bell::decode(&Bytes::copy_from_slice(&wire[..cut])).unwrap();
            assert_eq!(bell.rungs.len(), 2);
            assert_eq!(bell.payload.len(), cut - head_len);
        }
        for bad in [
            &b"pushgate-bell 2\n\n{}"[..],
            b"pushgate-bell 1\nx 1 0 u\n\n",
            b"pushgate-bell 1\n1 1 0\n\n",
            b"pushgate-bell 1\n1 1 0 \n\n",
            b"pushgate-bell 1\n1 3 3 u\n\n",
            b"pushgate-bell 1\n1 3 \xff u\n\n",
        ] {
            assert!(Bell::decode(&Bytes::from_static(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn channels_are_one_per_host_and_shard_each_in_its_own_slot() {
        let channel = channel("web-1", 3);
        assert_eq!(channel, "pushgate:bell:{web-1/3}");
        let slot = super::super::keys::slot(channel.as_bytes());
        assert_eq!(slot, super::super::keys::slot(b"web-1/3"));
    }
}
