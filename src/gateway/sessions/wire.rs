//! How each device is spoken to, kept beside its 16-byte slot rather than
//! in it: one bit per connection index in each of two bitmaps, which stay
//! empty (no memory) on a shard with WebSocket devices only.

/// A device's transport and the form of its heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// RFC 6455; the server pings with ping frames.
    WebSocket,
    /// RFC 6455, but the server's pings are `{"type":"ping"}` text
    /// messages (`?heartbeat=1`): a browser's WebSocket API hides ping
    /// frames, and the page must see the connection live.
    WebSocketTextPing,
    /// Server-Sent Events: nothing is read from the client; pushes are
    /// events and heartbeats comments.
    Sse,
}

#[derive(Default)]
pub(super) struct Wires {
    sse: Vec<u64>,
    text_ping: Vec<u64>,
}

impl Wires {
    pub(super) fn set(&mut self, index: usize, wire: Wire) {
        set_bit(&mut self.sse, index, wire == Wire::Sse);
        set_bit(&mut self.text_ping, index, wire == Wire::WebSocketTextPing);
    }

    pub(super) fn get(&self, index: usize) -> Wire {
        if bit(&self.sse, index) {
            Wire::Sse
        } else if bit(&self.text_ping, index) {
            Wire::WebSocketTextPing
        } else {
            Wire::WebSocket
        }
    }
}

fn bit(bits: &[u64], index: usize) -> bool {
    bits.get(index / 64)
        .is_some_and(|w| w & (1 << (index % 64)) != 0)
}

/// Sets or clears a bit; the bitmap grows only to set one.
fn set_bit(bits: &mut Vec<u64>, index: usize, on: bool) {
    let (word, mask) = (index / 64, 1u64 << (index % 64));
    if word >= bits.len() {
        if !on {
            return;
        }
        bits.resize(word + 1, 0);
    }
    if on {
        bits[word] |= mask;
    } else {
        bits[word] &= !mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_index_keeps_its_wire_and_websocket_costs_nothing() {
        let mut w = Wires::default();
        w.set(3, Wire::WebSocket);
        w.set(1000, Wire::WebSocket);
        assert!(w.sse.is_empty() && w.text_ping.is_empty());
        w.set(64, Wire::Sse);
        w.set(65, Wire::WebSocketTextPing);
        assert_eq!(w.get(64), Wire::Sse);
        assert_eq!(w.get(65), Wire::WebSocketTextPing);
        assert_eq!(w.get(63), Wire::WebSocket);
        assert_eq!(w.get(1 << 20), Wire::WebSocket);
        w.set(64, Wire::WebSocketTextPing);
        assert_eq!(w.get(64), Wire::WebSocketTextPing);
        w.set(64, Wire::WebSocket);
        w.set(65, Wire::WebSocket);
        assert_eq!((w.get(64), w.get(65)), (Wire::WebSocket, Wire::WebSocket));
    }
}
