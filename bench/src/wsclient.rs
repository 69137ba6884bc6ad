//! What the bench's clients add to pushgate's WebSocket codec
//! ([`pushgate::ws`]: the upgrade request and its check, masked frames,
//! server frames): the welcome check, close descriptions, the size cap on a
//! server frame and the random keys and masks. No I/O here, so every case
//! is a unit test.

use pushgate::ws;

/// The welcome message is tens of bytes; anything near this is not a welcome.
pub const FRAME_PAYLOAD_MAX_BYTES: usize = 16 * 1024;

/// Lossy, length-capped text for a failure reason, so a garbage reply cannot
/// blow up the report.
fn printable(bytes: &[u8], chars_max: usize) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(chars_max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Accepts exactly the v1 welcome: a JSON object whose `type` is `welcome`.
pub fn check_welcome(payload: &[u8]) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("welcome is not JSON: {e}"))?;
    match value.get("type").and_then(|t| t.as_str()) {
        Some("welcome") => Ok(()),
        _ => Err(format!(
            "first message is not a welcome: {}",
            printable(payload, 80)
        )),
    }
}

/// `code reason` from a close frame's payload (RFC 6455 §5.5.1).
pub fn describe_close(payload: &[u8]) -> String {
    match payload {
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let reason = printable(reason, 80);
            if reason.is_empty() {
                format!("{code}")
            } else {
                format!("{code} {reason}")
            }
        }
        _ => "no code".to_string(),
    }
}

/// xorshift64*: fast, non-cryptographic. The key and masks only need to
/// differ between connections (RFC 6455 nonces against proxy caches); the
/// seed comes from the kernel.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
    pub fn websocket_key(&mut self) -> String {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        key[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        ws::websocket_key(&key)
    }

    pub fn mask(&mut self) -> [u8; 4] {
        let bytes = self.next_u64().to_le_bytes();
        [bytes[0], bytes[1], bytes[2], bytes[3]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_24_chars_and_differ() {
        let mut rng = Rng::new(7);
        let a = rng.websocket_key();
        let b = rng.websocket_key();
        assert_eq!(a.len(), 24);
        assert!(a.ends_with("=="));
        assert_ne!(a, b);
    }

    #[test]
    fn welcome_is_recognised() {
        assert_eq!(
            check_welcome(br#"{"type":"welcome","user":"x","epoch":1,"seq":0}"#),
            Ok(())
        );
        assert!(check_welcome(br#"{"type":"push","seq":1}"#).is_err());
        assert!(check_welcome(b"welcome").is_err());
    }

    #[test]
    fn close_is_described() {
        let mut payload = 1008u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bad token");
        assert_eq!(describe_close(&payload), "1008 bad token");
        assert_eq!(describe_close(&[]), "no code");
    }
}
