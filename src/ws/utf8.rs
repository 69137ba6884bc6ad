//! Streaming UTF-8 validation for text messages (RFC 6455 §8.1).
//!
//! A text message arrives in frames, and each frame in reads, split at any
//! byte, so a code point can straddle two calls. The bulk of each call is
//! checked by `std::str::from_utf8`; only the up to three bytes of an
//! unfinished code point are carried to the next call.

/// Validates a byte stream as UTF-8, one piece at a time.
///
/// Three bytes, because it lives in every connection's reader.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utf8Validator {
    /// The start of a code point that the bytes so far left unfinished,
    /// padded with zeros. Zero never occurs in an unfinished multi-byte
    /// sequence (its lead is ≥ 0xC2, the rest 0x80..=0xBF), so the zeros mark
    /// the empty slots and no length field is needed.
    pending: [u8; 3],
}

impl Utf8Validator {
    /// Checks the next piece of the stream.
    ///
    /// Fails as soon as the bytes so far cannot start valid UTF-8: an
    /// overlong form, a surrogate, a code point above U+10FFFF or a bad
    /// continuation byte fails at the byte that proves it, even in the middle
    /// of a code point. After an error the validator is reset.
    #[allow(clippy::result_unit_err)] // the only failure is "not UTF-8"; the caller picks the close code
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let result = self.feed_inner(bytes);
        if result.is_err() {
            *self = Self::default();
        }
        result
    }

    /// Ends the message: fails if it stopped in the middle of a code point.
    /// Either way the validator is ready for the next message.
    #[allow(clippy::result_unit_err)] // see `feed`
    pub fn finish(&mut self) -> Result<(), ()> {
        let complete = self.pending_len() == 0;
        *self = Self::default();
        if complete {
            Ok(())
        } else {
            Err(())
        }
    }

    fn pending_len(&self) -> usize {
        self.pending.iter().take_while(|byte| **byte != 0).count()
    }

    fn feed_inner(&mut self, mut bytes: &[u8]) -> Result<(), ()> {
        let pending_len = self.pending_len();
        if pending_len > 0 {
            // Finish the carried code point with as few new bytes as it needs,
            // so that std sees it whole (or as an unfinished prefix).
            let width = sequence_width(self.pending[0]);
            let taken = (width - pending_len).min(bytes.len());
            let mut sequence = [0u8; 4];
            sequence[..pending_len].copy_from_slice(&self.pending[..pending_len]);
            sequence[pending_len..pending_len + taken].copy_from_slice(&bytes[..taken]);
            let sequence_len = pending_len + taken;
            match std::str::from_utf8(&sequence[..sequence_len]) {
                Ok(_) => {
                    self.pending = [0; 3];
                    bytes = &bytes[taken..];
                }
                // Still unfinished: all of `bytes` went into it.
                Err(error) if error.error_len().is_none() => {
                    self.pending.copy_from_slice(&sequence[..3]);
                    return Ok(());
                }
                Err(_) => return Err(()),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            // `error_len() == None` means the input ended inside a code point
            // that could still be valid: carry that tail (1 to 3 bytes).
            Err(error) if error.error_len().is_none() => {
                let tail = &bytes[error.valid_up_to()..];
                self.pending = [0; 3];
                self.pending[..tail.len()].copy_from_slice(tail);
                Ok(())
            }
            Err(_) => Err(()),
        }
    }
}

/// The length of the sequence a lead byte starts. Only called on the first
/// byte of a carried tail, which std already accepted as a valid prefix, so
/// the lead is one of 0xC2..=0xF4.
fn sequence_width(lead: u8) -> usize {
    match lead {
        0x00..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validates the pieces as one stream. The error is the index of the
    /// piece whose feed failed, or `pieces.len()` if `finish` failed.
    fn validate_pieces(pieces: &[&[u8]]) -> Result<(), usize> {
        let mut validator = Utf8Validator::default();
        for (index, piece) in pieces.iter().enumerate() {
            validator.feed(piece).map_err(|()| index)?;
        }
        validator.finish().map_err(|()| pieces.len())
    }

    /// The length of the shortest prefix of `bytes` that std rejects outright
    /// (not merely as unfinished): the point where a fail-fast validator
    /// must fail. `bytes.len() + 1` if only the end of input (finish) tells;
    /// `None` if `bytes` is valid.
    fn shortest_rejected_prefix(bytes: &[u8]) -> Option<usize> {
        std::str::from_utf8(bytes).err()?;
        let rejected = (1..=bytes.len()).find(|&length| {
            matches!(std::str::from_utf8(&bytes[..length]), Err(e) if e.error_len().is_some())
        });
        Some(rejected.unwrap_or(bytes.len() + 1))
    }

    /// Every split into two pieces, and byte by byte, agree with std, and an
    /// invalid input fails in exactly the piece that holds its first
    /// certainly-invalid byte.
    fn check_all_splits(bytes: &[u8]) {
        let rejected = shortest_rejected_prefix(bytes);
        for split in 0..=bytes.len() {
            let (head, tail) = bytes.split_at(split);
            let expected = match rejected {
                None => Ok(()),
                Some(length) if length > bytes.len() => Err(2),
                Some(length) if length <= split => Err(0),
                Some(_) => Err(1),
            };
            let result = validate_pieces(&[head, tail]);
            assert_eq!(result, expected, "{bytes:02x?} split {split}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        let expected = match rejected {
            None => Ok(()),
            Some(length) => Err(length - 1),
        };
        let result = validate_pieces(&bytewise);
        assert_eq!(result, expected, "{bytes:02x?} byte by byte");
    }

    #[test]
    fn fits_in_three_bytes() {
        assert_eq!(std::mem::size_of::<Utf8Validator>(), 3);
    }

    #[test]
    fn valid_sequences_at_every_split() {
        for text in [
            "",
            "Hello-µ@ßöäüàá-UTF-8!!",
            "κόσμε",
            "\u{0}\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}",
            "\u{d7ff}\u{e000}\u{fffd}\u{fffe}\u{ffff}\u{10fffe}", // Autobahn 6.11, 6.22
            "😀a😀",
        ] {
            check_all_splits(text.as_bytes());
        }
    }

    #[test]
    fn invalid_sequences_fail_fast_at_every_split() {
        let cases: &[&[u8]] = &[
            // Autobahn 6.3: κόσμε with a surrogate, then "edited".
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            // 6.4: above U+10FFFF in the middle of text.
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited",
            // 6.8: 5- and 6-byte forms.
            b"\xf8\x88\x80\x80\x80",
            b"\xfc\x84\x80\x80\x80\x80",
            // 6.10: beyond the range.
            b"\xf7\xbf\xbf\xbf",
            b"\xf4\x90\x80\x80",
            // 6.12: lonely continuation bytes.
            b"\x80",
            b"\xbf",
            b"\x80\xbf\x80\xbf",
            // 6.13: lonely start bytes followed by a space.
            b"\xc0 ",
            b"\xe0 ",
            b"\xf0 ",
            // 6.14: sequences with the last byte missing, then more text.
            b"\xc2x",
            b"\xe0\xa0x",
            b"\xf0\x90\x80x",
            // 6.15: concatenated incomplete sequences.
            b"\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xdf\xef\xbf\xf7\xbf\xbf",
            // 6.16: impossible bytes.
            b"\xfe",
            b"\xff",
            b"\xfe\xfe\xff\xff",
            // 6.17–6.19: overlong forms.
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xc1\xbf",
            b"\xe0\x9f\xbf",
            b"\xf0\x8f\xbf\xbf",
            b"\xc0\x80",
            b"\xe0\x80\x80",
            // 6.20–6.21: surrogates, single and paired.
            b"\xed\xa0\x80",
            b"\xed\xbf\xbf",
            b"\xed\xa0\x80\xed\xb0\x80",
            // Unfinished at the end of the message: only finish can tell.
            b"\xe2\x82",
            b"a\xf0\x9f\x98",
            b"\xc2",
        ];
        for bytes in cases {
            assert!(std::str::from_utf8(bytes).is_err(), "{bytes:02x?}");
            check_all_splits(bytes);
        }
    }

    #[test]
    fn fails_fast_in_the_middle_of_a_code_point() {
        // Autobahn 6.4.3: the bytes F4 90 already prove the code point is
        // above U+10FFFF; do not wait for its last two bytes.
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed("κόσμε".as_bytes()), Ok(()));
        assert_eq!(validator.feed(b"\xf4"), Ok(()));
        assert_eq!(validator.feed(b"\x90"), Err(()));
        // Surrogate: ED A0 is enough.
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(b"\xed"), Ok(()));
        assert_eq!(validator.feed(b"\xa0"), Err(()));
    }

    #[test]
    fn finish_resets_for_the_next_message() {
        let mut validator = Utf8Validator::default();
        assert_eq!(validator.feed(b"\xe2\x82"), Ok(()));
        assert_eq!(validator.finish(), Err(()));
        assert_eq!(validator.feed(b"ok"), Ok(()));
        assert_eq!(validator.finish(), Ok(()));
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn agrees_with_std_on_random_inputs() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Bytes drawn mostly from valid code points with some noise, so that
        // both valid and invalid inputs come up often.
        let alphabet: Vec<Vec<u8>> = ["a", "é", "€", "😀", "\u{10ffff}", "\u{d7ff}"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .chain([0x80u8, 0xc0, 0xed, 0xf4, 0xf5, 0xff, 0xe0, 0xa0].map(|b| vec![b]))
            .collect();
        let mut valid_count = 0;
        for _ in 0..3000 {
            let mut bytes = Vec::new();
            let pieces = rng.next() % 8;
            for _ in 0..pieces {
                let choice = (rng.next() % alphabet.len() as u64) as usize;
                // Valid code points are drawn more often than noise bytes.
                let choice = if rng.next().is_multiple_of(4) {
                    choice
                } else {
                    choice % 6
                };
                bytes.extend_from_slice(&alphabet[choice]);
            }
            if std::str::from_utf8(&bytes).is_ok() {
                valid_count += 1;
            }
            check_all_splits(&bytes);
        }
        assert!(valid_count > 300 && valid_count < 2900, "{valid_count}");
    }
}
