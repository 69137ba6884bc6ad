//! The data every bench push carries: a sequence number and a send time,
//! padded to a fixed size.
//!
//! `{"b":<seq>,"t":<CLOCK_MONOTONIC ns>,"p":"xxxx…"}`. The sequence lets each
//! client count duplicates (a user's pushes must arrive in increasing
//! order); the time, taken on the same box's monotonic clock, gives the
//! push→receive latency. The stamp comes first so a client finds it by
//! scanning a few bytes, whatever wraps it (pushgate's `{"type":"push",…,
//! "data":…}`, socket.io's `42["m",…]`).

/// A stamp read back from a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u64,
    pub sent_ns: u64,
}

/// The JSON data of push `seq`, sent at `sent_ns`, padded to `size_bytes`
/// (or just the stamp when that is already longer).
pub fn make(seq: u64, sent_ns: u64, size_bytes: usize) -> String {
    let mut text = format!(r#"{{"b":{seq},"t":{sent_ns},"p":""#);
    let closing = 2; // `"}`
    let pad = size_bytes.saturating_sub(text.len() + closing);
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str("\"}");
    text
}

/// Like [`make`], but the padding is realistic JSON — a list of records
/// with varied ids, names and numbers — rather than one run of `x`, which
/// compresses far better than any real notification (for the deflate
/// measurements). Exactly `size_bytes` long when that exceeds the stamp.
pub fn make_json(seq: u64, sent_ns: u64, size_bytes: usize) -> String {
    let mut text = format!(r#"{{"b":{seq},"t":{sent_ns},"items":["#);
    let tail = r#"],"p":""}"#;
    let mut i: u64 = 0;
    // Bounded: each pass adds ≥ 60 bytes until the size is near.
    loop {
        let id = (seq * 1_000 + i).wrapping_mul(2_654_435_761) % 1_000_000;
        let item = format!(
            r#"{}{{"id":{id},"user":"user-{}","score":{}.{},"online":{},"room":"r{}"}}"#,
            if i == 0 { "" } else { "," },
            id % 9973,
            id % 1000,
            id % 97,
            id.is_multiple_of(3),
            id % 17
        );
        if text.len() + item.len() + tail.len() > size_bytes {
            break;
        }
        text.push_str(&item);
        i += 1;
    }
    text.push_str(r#"],"p":""#);
    let pad = size_bytes.saturating_sub(text.len() + 2);
    text.extend(std::iter::repeat_n(' ', pad));
    text.push_str("\"}");
    text
}

fn number_after(haystack: &[u8], key: &[u8]) -> Option<u64> {
    let at = haystack.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = haystack[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .take(20)
        .fold((0u64, 0usize), |(n, count), &d| {
            (
                n.wrapping_mul(10).wrapping_add(u64::from(d - b'0')),
                count + 1,
            )
        });
    (digits.1 > 0).then_some(digits.0)
}

/// Finds the stamp in a received message (anywhere in it).
pub fn parse(message: &[u8]) -> Option<Stamp> {
    let seq = number_after(message, br#""b":"#)?;
    let sent_ns = number_after(message, br#""t":"#)?;
    Some(Stamp { seq, sent_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payloads_have_the_size_asked_and_parse_back() {
        for size in [100, 2048, 5000] {
            let p = make_json(7, 99, size);
            assert_eq!(p.len(), size);
            serde_json::from_str::<serde_json::Value>(&p).unwrap();
            assert_eq!(
                parse(p.as_bytes()),
                Some(Stamp {
                    seq: 7,
                    sent_ns: 99
                })
            );
        }
    }

    #[test]
    fn made_payloads_have_the_size_asked_and_parse_back() {
        let p = make(42, 123_456_789_012, 200);
        assert_eq!(p.len(), 200);
        serde_json::from_str::<serde_json::Value>(&p).unwrap();
        assert_eq!(
            parse(p.as_bytes()),
            Some(Stamp {
                seq: 42,
                sent_ns: 123_456_789_012
            })
        );
        // Too small a size: just the stamp, still valid JSON.
        let small = make(1, 2, 5);
        assert_eq!(small, r#"{"b":1,"t":2,"p":""}"#);
    }

    #[test]
    fn stamps_are_found_inside_each_servers_wrapping() {
        let data = make(7, 99, 60);
        let pushgate = format!(r#"{{"type":"push","seq":3,"data":{data}}}"#);
        let socketio = format!(r#"["m",{data}]"#);
        for text in [data.as_str(), &pushgate, &socketio] {
            assert_eq!(
                parse(text.as_bytes()),
                Some(Stamp {
                    seq: 7,
                    sent_ns: 99
                }),
                "{text}"
            );
        }
        assert_eq!(parse(br#"{"type":"welcome"}"#), None);
        assert_eq!(parse(br#"{"b":,"t":1}"#), None);
    }
}
