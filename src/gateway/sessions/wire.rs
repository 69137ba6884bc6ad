//! How each device is spoken to, kept beside its 16-byte slot rather than
//! in it: one bit per connection index in each of two bitmaps, which stay
//! empty (no memory) on a shard with WebSocket devices only.

use super::bits::Bits;

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

/// Each device's wire: WebSocket unless one of two bits says otherwise.
#[derive(Default)]
pub(super) struct Wires {
    sse: Bits,
    text_ping: Bits,
}

impl Wires {
    pub(super) fn set(&mut self, index: usize, wire: Wire) {
        self.sse.set(index, wire == Wire::Sse);
        self.text_ping.set(index, wire == Wire::WebSocketTextPing);
    }

    pub(super) fn get(&self, index: usize) -> Wire {
        if self.sse.get(index) {
            Wire::Sse
        } else if self.text_ping.get(index) {
            Wire::WebSocketTextPing
        } else {
            Wire::WebSocket
        }
    }

    /// Keeps indexes below `indexes` (see [`Bits::truncate`]).
    pub(super) fn truncate(&mut self, indexes: usize) {
        self.sse.truncate(indexes);
        self.text_ping.truncate(indexes);
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
        assert!(w.sse.footprint().0 == 0 && w.text_ping.footprint().0 == 0);
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
