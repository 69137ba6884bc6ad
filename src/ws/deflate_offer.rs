//! permessage-deflate negotiation (RFC 7692 §5, §7.1): the client's
//! `Sec-WebSocket-Extensions` offers in, our answer (or none) out. Pure.
//!
//! We accept only without context takeover in either direction: the
//! shard keeps one compressor and one decompressor for all its
//! connections, reset for every message, because a context that survives
//! messages costs hundreds of KB per connection. So every answer carries
//! `server_no_context_takeover; client_no_context_takeover` (a server may
//! add both unasked, §7.1.1.1 and §7.1.1.2).
//!
//! An offer we cannot honour (an unknown or repeated parameter, a bad
//! value, a server window under 15 bits that our fixed-window compressor
//! cannot promise) is declined and the next one tried; when none fits the
//! connection goes on uncompressed. A header we cannot parse is declined
//! whole, never a failed handshake: compression is an optimisation.

/// The extension's registered name.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// The compressor's window (`2^15` bytes): the only `server_max_window_bits`
/// we can honour.
const SERVER_WINDOW_BITS: u8 = 15;

/// Offers looked at per request, so a header of thousands of commas costs a
/// bounded amount of work beyond its (already bounded) length.
const OFFERS_MAX: usize = 32;

/// An accepted offer: what to answer in `Sec-WebSocket-Extensions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// `Some(15)` when the client asked for a window bound: echoed back
    /// (§7.1.2.1 — accepting the parameter means answering it).
    pub server_max_window_bits: Option<u8>,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value of the 101 response.
    pub fn response_value(&self) -> String {
        let mut value =
            format!("{PERMESSAGE_DEFLATE}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            value.push_str(&format!("; server_max_window_bits={bits}"));
        }
        value
    }
}

/// Picks the first acceptable permessage-deflate offer from the header
/// values (one per `Sec-WebSocket-Extensions` line, in order); `None`:
/// decline, go on uncompressed.
pub fn negotiate<S: AsRef<str>>(header_values: &[S]) -> Option<Agreement> {
    // The lines make one list (RFC 7230 §3.2.2); if any part of it is not
    // well formed, none of it is trusted.
    let mut offers = Vec::new();
    for value in header_values {
        offers.extend(parse_extension_list(value.as_ref())?);
        if offers.len() > OFFERS_MAX {
            return None;
        }
    }
    offers
        .iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
        .find_map(|offer| judge(&offer.params))
}

/// One extension of the list, with its parameters in order.
#[derive(Debug, PartialEq, Eq)]
struct Offer<'a> {
    name: &'a str,
    params: Vec<(&'a str, Option<String>)>,
}

/// Whether we can honour one permessage-deflate offer, and how.
fn judge(params: &[(&str, Option<String>)]) -> Option<Agreement> {
    let mut seen = [false; 4];
    let mut agreement = Agreement {
        server_max_window_bits: None,
    };
    for (name, value) in params {
        let which = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                // The value is required (§7.1.2.1), and we only ever use 15.
                let bits = window_bits(value.as_deref()?)?;
                if bits != SERVER_WINDOW_BITS {
                    return None;
                }
                agreement.server_max_window_bits = Some(bits);
                2
            }
            "client_max_window_bits" => {
                // Without a value it says the client supports the
                // parameter; we never limit the client (our inflater takes
                // any window), so we answer nothing for it.
                if let Some(value) = value {
                    window_bits(value)?;
                }
                3
            }
            // An unknown parameter, or a value where none belongs.
            _ => return None,
        };
        if std::mem::replace(&mut seen[which], true) {
            return None; // a parameter may appear once (§7)
        }
    }
    Some(agreement)
}

/// A window size parameter: "8" to "15", no leading zero (§7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.len() > 2 {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

/// Parses `1#extension` (RFC 6455 §9.1): extensions separated by commas,
/// each a token and `;`-separated parameters `token [ "=" (token |
/// quoted-string) ]`. A quoted value's escapes are undone. `None` if the text does not follow the grammar.
fn parse_extension_list(text: &str) -> Option<Vec<Offer<'_>>> {
    let mut cursor = Cursor { text, at: 0 };
    let mut offers = Vec::new();
    loop {
        cursor.skip_space();
        if cursor.eat(',') {
            continue; // empty list elements are allowed (RFC 7230 §7)
        }
        if cursor.at_end() {
            return Some(offers);
        }
        let name = cursor.token()?;
        let mut params = Vec::new();
        loop {
            cursor.skip_space();
            if cursor.at_end() || cursor.eat(',') {
                break;
            }
            if !cursor.eat(';') {
                return None;
            }
            cursor.skip_space();
            let param = cursor.token()?;
            cursor.skip_space();
            let value = if cursor.eat('=') {
                cursor.skip_space();
                let value = if cursor.peek() == Some('"') {
                    // §9.1 wants a token inside the quotes; another
                    // extension's odd value is its business, and ours are
                    // checked by `judge`.
                    cursor.quoted_string()?
                } else {
                    cursor.token()?.to_owned()
                };
                Some(value)
            } else {
                None
            };
            params.push((param, value));
        }
        offers.push(Offer { name, params });
    }
}

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.at >= self.text.len()
    }

    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += c.len_utf8();
            return true;
        }
        false
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.at += 1;
        }
    }

    /// One or more token bytes.
    fn token(&mut self) -> Option<&'a str> {
        let start = self.at;
        let len = self.text.as_bytes()[start..]
            .iter()
            .take_while(|&&b| is_token_byte(b))
            .count();
        self.at += len;
        (len > 0).then(|| &self.text[start..start + len])
    }

    /// `"…"` with `\x` escapes undone; the cursor is on the opening quote.
    fn quoted_string(&mut self) -> Option<String> {
        let bytes = self.text.as_bytes();
        let mut out = Vec::new();
        let mut i = self.at + 1;
        loop {
            match *bytes.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return String::from_utf8(out).ok();
                }
                b'\\' => {
                    out.push(*bytes.get(i + 1)?);
                    i += 2;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: Option<Agreement> = Some(Agreement {
        server_max_window_bits: None,
    });

    fn offer(value: &str) -> Option<Agreement> {
        negotiate(&[value])
    }

    #[test]
    fn browsers_and_libraries_default_offers_are_accepted() {
        // Chromium, Firefox, Node ws, Python websockets.
        assert_eq!(offer("permessage-deflate; client_max_window_bits"), PLAIN);
        assert_eq!(offer("permessage-deflate"), PLAIN);
        assert_eq!(
            offer("permessage-deflate; client_max_window_bits=15; server_no_context_takeover"),
            PLAIN
        );
        assert_eq!(
            offer("permessage-deflate;client_no_context_takeover;server_no_context_takeover"),
            PLAIN
        );
    }

    #[test]
    fn the_answer_always_refuses_context_takeover_both_ways() {
        assert_eq!(
            PLAIN.unwrap().response_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=15")
                .unwrap()
                .response_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=15"
        );
    }

    #[test]
    fn the_first_acceptable_offer_wins_and_unacceptable_ones_are_skipped() {
        // A smaller server window is declined; the fallback offer is taken.
        assert_eq!(
            offer(
                "permessage-deflate; server_max_window_bits=10, \
                 permessage-deflate; server_max_window_bits=15, permessage-deflate"
            ),
            Some(Agreement {
                server_max_window_bits: Some(15)
            })
        );
        assert_eq!(
            offer("x-webkit-deflate-frame, permessage-deflate; foo=1, permessage-deflate"),
            PLAIN
        );
        // Offers spread over several header lines are read in order.
        assert_eq!(
            negotiate(&[
                "foo; bar",
                "permessage-deflate; server_max_window_bits=9",
                "permessage-deflate"
            ]),
            PLAIN
        );
    }

    #[test]
    fn offers_we_cannot_honour_are_declined_not_failed() {
        for value in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=abc",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; unknown_param",
        ] {
            assert_eq!(offer(value), None, "{value:?}");
        }
        assert_eq!(negotiate::<&str>(&[]), None);
    }

    #[test]
    fn quoted_values_and_spacing_follow_the_grammar() {
        assert_eq!(
            offer(r#"permessage-deflate ;  client_max_window_bits = "10" "#),
            PLAIN
        );
        assert_eq!(
            offer(r#"permessage-deflate; server_max_window_bits="1\5""#),
            Some(Agreement {
                server_max_window_bits: Some(15)
            })
        );
        // A comma inside quotes does not split the list (the value is not a
        // number, so that offer is declined, and nothing else is offered).
        assert_eq!(
            offer(r#"permessage-deflate; client_max_window_bits="1,5""#),
            None
        );
        assert_eq!(
            offer(r#"permessage-deflate; client_max_window_bits="""#),
            None,
            "an empty quoted value is not a token"
        );
        assert_eq!(offer(",, permessage-deflate ,"), PLAIN);
        assert_eq!(offer("PerMessage-Deflate; Client_Max_Window_Bits"), PLAIN);
    }

    #[test]
    fn malformed_headers_decline_everything() {
        for value in [
            "permessage-deflate; ",
            "permessage-deflate;; client_max_window_bits",
            "permessage-deflate client_max_window_bits",
            r#"permessage-deflate; client_max_window_bits="15"#,
            "permessage-deflate; client_max_window_bits=",
            "permessage-deflate; =15",
            "perméssage-deflate",
            "; permessage-deflate",
        ] {
            assert_eq!(offer(value), None, "{value:?}");
        }
        // A malformed line declines even a good offer on an earlier one:
        // the client's list is one list, and it is not well formed.
        assert_eq!(negotiate(&["foo", "permessage-deflate;;"]), None);
    }

    #[test]
    fn every_prefix_of_a_header_is_handled_without_panic() {
        let full = r#"a; b="c\"d", permessage-deflate; server_max_window_bits="15"; client_max_window_bits, x"#;
        for end in 0..=full.len() {
            let _ = offer(&full[..end]);
        }
        assert_eq!(
            offer(full),
            Some(Agreement {
                server_max_window_bits: Some(15)
            })
        );
    }

    #[test]
    fn offers_are_bounded() {
        let many = "x, ".repeat(OFFERS_MAX) + "permessage-deflate";
        assert_eq!(offer(&many), None);
        let few = "x, ".repeat(OFFERS_MAX - 1) + "permessage-deflate";
        assert_eq!(offer(&few), PLAIN);
    }
}
