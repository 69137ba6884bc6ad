//! Server-Sent Events (`text/event-stream`, WHATWG HTML §9.2): the response
//! head and the events pushgate sends a device on `GET /sse`, and a reader
//! for the client side (tests, the bench). Pure: values in, bytes out.
//!
//! Every event's data is exactly the JSON text a WebSocket device gets in
//! one message (`{"type":"welcome"…}`, `{"type":"push"…}`), so a client
//! parses both transports the same way; SSE adds `{"type":"close"…}`, the
//! close frame it lacks. An event's `id:` is the `<epoch>:<seq>` position
//! a client is at once it has handled the event, which a browser's
//! `EventSource` sends back as `Last-Event-ID` when it reconnects.

use crate::ws::close::CloseCode;

/// The response head: no `Content-Length` (the stream ends when the
/// connection does), never cached, not buffered by an nginx in front
/// (`X-Accel-Buffering`), readable by pages of any origin — the token
/// travels in the URL, never in a cookie, so `*` exposes nothing.
pub const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream\r\n\
Cache-Control: no-store\r\n\
Connection: close\r\n\
X-Accel-Buffering: no\r\n\
Access-Control-Allow-Origin: *\r\n\
\r\n";

/// A comment line: keeps proxies from timing the stream out and tells a
/// client that reads comments (the SDK) that the connection lives.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// `retry:` of the welcome, for an `EventSource` that loses the
/// connection: this much plus up to [`RETRY_SPREAD_MS`], chosen per
/// connection so a network blip does not bring every client back at once.
pub const RETRY_MS_MIN: u64 = 1_000;
pub const RETRY_SPREAD_MS: u64 = 4_000;
/// `retry:` after a drain's close (1012): anywhere in this window. The
/// drain closes a batch each timer tick; spreading each batch's
/// reconnects over a second keeps the successor's arrivals even.
pub const DRAIN_RETRY_SPREAD_MS: u64 = 1_000;

/// The reconnect delay to suggest to a client closed with `code`, from a
/// per-connection `seed` (any value that differs between connections).
pub fn retry_ms(code: CloseCode, seed: u64) -> u64 {
    let r = splitmix64(seed);
    if code == CloseCode::SERVICE_RESTART {
        r % DRAIN_RETRY_SPREAD_MS
    } else {
        RETRY_MS_MIN + r % RETRY_SPREAD_MS
    }
}

/// A well-mixed 64-bit value from `x` (Steele et al., SplitMix64).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Appends `json` as `data:` lines. CR, LF and CRLF all end an SSE line;
/// in JSON they can only be whitespace between tokens (a string holds them
/// escaped), so each one starts a new `data:` line and the client, which
/// joins data lines with LF, gets the same JSON value back.
pub fn write_data(out: &mut Vec<u8>, json: &[u8]) {
    out.extend_from_slice(b"data: ");
    let mut rest = json;
    while let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\ndata: ");
        let crlf = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
        rest = &rest[i + if crlf { 2 } else { 1 }..];
    }
    out.extend_from_slice(rest);
    out.push(b'\n');
}

/// One push: `id: <epoch>:<seq>` and the push message of the WebSocket
/// protocol, `{"type":"push","seq":N,"data":<payload>}`.
pub fn push_event(epoch: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let prefix = format!(r#"{{"type":"push","seq":{seq},"data":"#);
    let mut json = Vec::with_capacity(prefix.len() + payload.len() + 1);
    json.extend_from_slice(prefix.as_bytes());
    json.extend_from_slice(payload);
    json.push(b'}');
    let mut out = Vec::with_capacity(json.len() + 48);
    out.extend_from_slice(format!("id: {epoch}:{seq}\n").as_bytes());
    write_data(&mut out, &json);
    out.push(b'\n');
    out
}

/// The response head and the first event: the welcome, `retry:`, and as
/// `id:` the position the client holds after it (see the module doc).
pub fn welcome(retry_ms: u64, epoch: u64, position_seq: u64, welcome_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(RESPONSE_HEAD.len() + welcome_json.len() + 64);
    out.extend_from_slice(RESPONSE_HEAD);
    out.extend_from_slice(&welcome_event(retry_ms, epoch, position_seq, welcome_json));
    out
}

/// The welcome event alone, for a stream whose head went out before the
/// welcome was known (several hosts: the welcome waits for Redis).
pub fn welcome_event(retry_ms: u64, epoch: u64, position_seq: u64, welcome_json: &str) -> Vec<u8> {
    let mut out = format!("retry: {retry_ms}\nid: {epoch}:{position_seq}\n").into_bytes();
    write_data(&mut out, welcome_json.as_bytes());
    out.push(b'\n');
    out
}

/// The last event before the server ends the stream: what a WebSocket
/// close frame says (`{"type":"close","code":1012,"reason":"…"}`) and
/// when to come back.
pub fn close_event(code: CloseCode, reason: &str, retry_ms: u64) -> Vec<u8> {
    let json = format!(
        r#"{{"type":"close","code":{},"reason":{}}}"#,
        code.0,
        serde_json::Value::from(reason)
    );
    let mut out = format!("retry: {retry_ms}\n").into_bytes();
    write_data(&mut out, json.as_bytes());
    out.push(b'\n');
    out
}

/// One event as a client sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The `id:` field, if the event had one.
    pub id: Option<String>,
    /// The `data:` lines joined with LF.
    pub data: String,
    pub retry_ms: Option<u64>,
}

/// What a client reads from the stream, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    /// A comment line (`:…`): the heartbeat.
    Comment,
}

/// The client side of the format: bytes in, whole events and comments out
/// (a partial line is kept for the next call). Lines end at CR, LF or
/// CRLF; an event ends at an empty line; fields other than `id`, `data`
/// and `retry` are ignored, as the standard says. Bounded by the caller:
/// it keeps at most one unfinished event.
#[derive(Default)]
pub struct EventReader {
    line: Vec<u8>,
    /// The previous byte was a CR: an LF right after it ends nothing more.
    after_cr: bool,
    event: Event,
    has_data: bool,
}

impl EventReader {
    /// Bytes of the stream; calls `each` for every whole item in them.
    pub fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(Item)) {
        for &b in bytes {
            if b == b'\n' && self.after_cr {
                self.after_cr = false;
                continue;
            }
            self.after_cr = b == b'\r';
            if b == b'\r' || b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, &mut each);
            } else {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &[u8], each: &mut impl FnMut(Item)) {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            if std::mem::take(&mut self.has_data) {
                each(Item::Event(event));
            }
            return;
        }
        if line[0] == b':' {
            return each(Item::Comment);
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = text.split_once(':').unwrap_or((&text, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => {
                if self.has_data {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(value);
                self.has_data = true;
            }
            "id" => self.event.id = Some(value.to_string()),
            "retry" => self.event.retry_ms = value.parse().ok(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        EventReader::default().feed(bytes, |i| items.push(i));
        items
    }

    #[test]
    fn push_event_is_the_websocket_message_with_an_id() {
        let bytes = push_event(77, 5, br#"{"a":1}"#);
        assert_eq!(
            bytes,
            b"id: 77:5\ndata: {\"type\":\"push\",\"seq\":5,\"data\":{\"a\":1}}\n\n"
        );
    }

    #[test]
    fn line_breaks_in_the_payload_become_data_lines_and_read_back() {
        let payload = b"{\"a\":\r\n 1,\r\"b\":\n[2]}";
        let bytes = push_event(1, 2, payload);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(
            text,
            "id: 1:2\ndata: {\"type\":\"push\",\"seq\":2,\"data\":{\"a\":\ndata:  1,\ndata: \"b\":\ndata: [2]}}\n\n"
        );
        let items = read_all(&bytes);
        let [Item::Event(e)] = items.as_slice() else {
            panic!("{items:?}")
        };
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["data"], serde_json::json!({"a": 1, "b": [2]}));
        assert_eq!(e.id.as_deref(), Some("1:2"));
    }

    #[test]
    fn reader_takes_any_split_and_any_line_ending() {
        let mut stream =
            welcome(1500, 9, 3, r#"{"type":"welcome"}"#)[RESPONSE_HEAD.len()..].to_vec();
        stream.extend_from_slice(HEARTBEAT);
        stream.extend_from_slice(&push_event(9, 4, b"[1,\n2]"));
        stream.extend_from_slice(b"event: x\r\ndata: a\r\ndata: b\r\n\r\n");
        stream.extend_from_slice(&close_event(CloseCode::SERVICE_RESTART, "bye", 20));
        let whole = read_all(&stream);
        assert_eq!(whole.len(), 5, "{whole:?}");
        assert_eq!(
            whole[0],
            Item::Event(Event {
                id: Some("9:3".into()),
                data: r#"{"type":"welcome"}"#.into(),
                retry_ms: Some(1500),
            })
        );
        assert_eq!(whole[1], Item::Comment);
        let Item::Event(crlf) = &whole[3] else {
            panic!()
        };
        assert_eq!(crlf.data, "a\nb");
        let Item::Event(close) = &whole[4] else {
            panic!()
        };
        assert_eq!(close.data, r#"{"type":"close","code":1012,"reason":"bye"}"#);
        assert_eq!(close.retry_ms, Some(20));
        for split in 0..stream.len() {
            let mut reader = EventReader::default();
            let mut items = Vec::new();
            reader.feed(&stream[..split], |i| items.push(i));
            reader.feed(&stream[split..], |i| items.push(i));
            assert_eq!(items, whole, "split at {split}");
        }
    }

    #[test]
    fn drain_retries_spread_over_their_window_others_wait_longer() {
        let drains: Vec<u64> = (0..1000)
            .map(|i| retry_ms(CloseCode::SERVICE_RESTART, i))
            .collect();
        assert!(drains.iter().all(|&r| r < DRAIN_RETRY_SPREAD_MS));
        // Each tenth of the window gets some (a herd would fill one).
        for tenth in 0..10 {
            let lo = tenth * DRAIN_RETRY_SPREAD_MS / 10;
            let n = drains
                .iter()
                .filter(|&&r| r >= lo && r < lo + DRAIN_RETRY_SPREAD_MS / 10)
                .count();
            assert!((50..150).contains(&n), "tenth {tenth}: {n}");
        }
        for i in 0..100 {
            let r = retry_ms(CloseCode::TRY_AGAIN_LATER, i);
            assert!((RETRY_MS_MIN..RETRY_MS_MIN + RETRY_SPREAD_MS).contains(&r));
        }
    }
}
