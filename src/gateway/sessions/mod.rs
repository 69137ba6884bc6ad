//! The sessions part: devices on this shard after their upgrade — frames
//! in, liveness, the replay cursor; WebSocket or Server-Sent Events
//! ([`Wire`]). Pure: bytes and `now` in,
//! what to send or whether to close out. Upgrades in progress are
//! [`handshakes::Handshakes`].
//!
//! A device lives in a 16-byte slot indexed by its connection's index. The
//! wiring opens a slot when a device joins and closes it on every path by
//! which the connection leaves, so a slot always belongs to the connection
//! the shard has at that index.
//!
//! Memory: the slots are reserved for the shard's capacity once, so they
//! do not reallocate while filling. The shard gives new connections the
//! lowest free index, so once devices leave, the vacant slots gather at the
//! tail; [`Sessions::shrink_if_sparse`] cuts them off when under a quarter
//! are in use (after that the table grows again by doubling).

mod bits;
pub mod handshakes;
mod slot;
mod wire;

pub use wire::Wire;

use crate::gateway::home::UserIndex;
use crate::liveness::{Action, Liveness};
use crate::ws::close::CloseCode;
use crate::ws::deflate::Inflater;
use crate::ws::reader::{Event, ReaderLimits};
use crate::ws::writer;
use crate::ws::ProtocolError;
use bits::Bits;
use shard::ConnId;
use slot::Slot;

#[derive(Clone, Copy, Debug)]
pub struct SessionSettings {
    pub reader_limits: ReaderLimits,
    /// Liveness of browser-profile devices.
    pub liveness: Liveness,
    /// Liveness of sleeping-console devices.
    pub console_liveness: Liveness,
}

/// What received bytes asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Pong frames answering the client's pings, back to back.
    pub pongs: Vec<u8>,
    pub close: Option<Closing>,
}

/// Why a device must be closed after what it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// It broke the protocol: close with this code and reason.
    ProtocolError(CloseCode, &'static str),
    /// It closed: echo its code (RFC 6455 §5.5.1; none given → 1000).
    Echo(CloseCode),
}

/// Below this many slots (16 KiB) the table is not worth shrinking.
const SHRINK_SLOTS_MIN: usize = 1024;

pub struct Sessions {
    settings: SessionSettings,
    slots: Vec<Slot>,
    /// One bit per connection index: sleeping-console profile.
    console_bits: Bits,
    /// Per connection index: WebSocket (the default) or SSE.
    wires: wire::Wires,
    /// One bit per connection index: negotiated permessage-deflate.
    deflate_bits: Bits,
    /// The shard's one decompressor, shared by every device that
    /// negotiated permessage-deflate (no context takeover: reset per
    /// message); made by the first compressed message.
    inflater: Option<Inflater>,
    devices: usize,
}

impl Sessions {
    pub fn new(settings: SessionSettings) -> Sessions {
        Sessions {
            settings,
            slots: Vec::new(),
            console_bits: Bits::default(),
            wires: wire::Wires::default(),
            deflate_bits: Bits::default(),
            inflater: None,
            devices: 0,
        }
    }

    /// Reserves slots for `connections` (virtual memory until used).
    pub fn reserve(&mut self, connections: usize) {
        self.slots
            .reserve(connections.saturating_sub(self.slots.len()));
    }

    pub fn len(&self) -> usize {
        self.devices
    }

    pub fn is_empty(&self) -> bool {
        self.devices == 0
    }

    /// Registers a device of `user` on `conn`; returns its first liveness
    /// deadline. A device that must be replayed to first says after which
    /// seq.
    pub fn open(
        &mut self,
        conn: ConnId,
        user: UserIndex,
        console: bool,
        replay_after: Option<u64>,
        now_ms: u64,
    ) -> u64 {
        let i = conn.index();
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, Slot::vacant);
        }
        debug_assert!(self.slots[i].user().is_none(), "slot in use");
        let mut slot = Slot::device(user, now_ms);
        if replay_after.is_some() {
            slot.work_mut().replay_after = replay_after;
        }
        self.slots[i] = slot;
        self.devices += 1;
        self.console_bits.set(i, console);
        self.liveness(i).first_deadline_ms(now_ms)
    }

    /// Forgets the device on `conn`; returns its user, if it was one.
    pub fn close(&mut self, conn: ConnId) -> Option<UserIndex> {
        let slot = self.slots.get_mut(conn.index())?;
        let user = slot.user()?;
        *slot = Slot::vacant();
        self.devices -= 1;
        self.console_bits.set(conn.index(), false);
        self.wires.set(conn.index(), Wire::WebSocket);
        self.deflate_bits.set(conn.index(), false);
        Some(user)
    }

    /// Records that the device on `conn` negotiated permessage-deflate
    /// (after [`Sessions::open`]; a device has not until told).
    pub fn set_deflate(&mut self, conn: ConnId, deflate: bool) {
        if self.user(conn).is_some() {
            self.deflate_bits.set(conn.index(), deflate);
        }
    }

    /// Did the device on `conn` negotiate permessage-deflate?
    pub fn deflate(&self, conn: ConnId) -> bool {
        self.deflate_bits.get(conn.index())
    }

    /// Says how the device on `conn` is spoken to (after [`Sessions::open`];
    /// a device is [`Wire::WebSocket`] until told otherwise).
    pub fn set_wire(&mut self, conn: ConnId, wire: Wire) {
        if self.user(conn).is_some() {
            self.wires.set(conn.index(), wire);
        }
    }

    pub fn wire(&self, conn: ConnId) -> Wire {
        self.wires.get(conn.index())
    }

    /// How often the device on `conn` hears from a quiet server (its
    /// profile's ping interval; 0 = never).
    pub fn ping_interval_ms(&self, conn: ConnId) -> u64 {
        self.liveness(conn.index()).ping_interval_ms
    }

    /// Returns memory once under a quarter of the slots hold a device:
    /// cuts the vacant tail off the slots and the console bits, leaving
    /// room for twice what is left. O(n) when it shrinks, after at least
    /// 3n/4 devices left, so O(1) amortised per device.
    pub fn shrink_if_sparse(&mut self) {
        let n = self.slots.len();
        if n < SHRINK_SLOTS_MIN || self.devices >= n / 4 {
            return;
        }
        while self.slots.last().is_some_and(|s| s.user().is_none()) {
            self.slots.pop();
        }
        if self.slots.len() == n {
            return; // a device at the end holds the table up to it
        }
        self.slots.shrink_to(self.slots.len() * 2);
        // Bits are set only for devices, so past the last slot all are 0.
        self.console_bits.truncate(self.slots.len());
        self.deflate_bits.truncate(self.slots.len());
        self.wires.truncate(self.slots.len());
    }

    /// Slots (live and vacant) and console-bit words, with the capacity
    /// behind each.
    #[cfg(test)]
    fn footprint(&self) -> [(usize, usize); 2] {
        [
            (self.slots.len(), self.slots.capacity()),
            self.console_bits.footprint(),
        ]
    }

    /// Came in on a sleeping-console listener.
    pub fn is_console(&self, conn: ConnId) -> bool {
        self.console_bits.get(conn.index())
    }

    /// When the device on `conn` last sent a byte (`now_ms` if none).
    pub fn last_rx_ms(&self, conn: ConnId, now_ms: u64) -> u64 {
        self.slots
            .get(conn.index())
            .filter(|s| s.user().is_some())
            .map_or(now_ms, |s| s.last_rx_ms(now_ms))
    }

    /// A device that moved here from another process last sent a byte at
    /// `last_rx_ms`: its liveness goes on from there. Returns its next
    /// deadline.
    pub fn resume_liveness(&mut self, conn: ConnId, last_rx_ms: u64) -> u64 {
        if let Some(slot) = self.slot_mut(conn) {
            slot.touch(last_rx_ms);
        }
        self.liveness(conn.index()).first_deadline_ms(last_rx_ms)
    }

    /// The user of the device on `conn`.
    pub fn user(&self, conn: ConnId) -> Option<UserIndex> {
        self.slots.get(conn.index()).and_then(Slot::user)
    }

    fn slot_mut(&mut self, conn: ConnId) -> Option<&mut Slot> {
        self.slots
            .get_mut(conn.index())
            .filter(|s| s.user().is_some())
    }

    fn liveness(&self, index: usize) -> Liveness {
        if self.console_bits.get(index) {
            self.settings.console_liveness
        } else {
            self.settings.liveness
        }
    }

    /// Bytes from the device on `conn`: pings are answered, a close is
    /// echoed (RFC 6455 §5.5.1), a protocol violation closes with its code.
    /// Client messages are accepted within the limits and not used yet.
    pub fn receive(&mut self, conn: ConnId, data: &mut [u8], now_ms: u64) -> Received {
        let limits = self.settings.reader_limits;
        let mut received = Received::default();
        if self.wire(conn) == Wire::Sse {
            // An SSE client has nothing to say after its request.
            return received;
        }
        let deflate = self.deflate(conn);
        // Fields, not `slot_mut`: the slot and the shard's inflater are
        // borrowed together.
        let Some(slot) = self
            .slots
            .get_mut(conn.index())
            .filter(|s| s.user().is_some())
        else {
            return received;
        };
        let inflater = deflate.then(|| self.inflater.get_or_insert_with(Inflater::default));
        slot.touch(now_ms);
        let work = slot.work_mut();
        let mut peer_close = None;
        let result = work
            .frames
            .feed_inflating(data, &limits, inflater, |event| match event {
                Event::Ping(payload) => received.pongs.extend(writer::pong_frame(payload)),
                Event::Close(status) => peer_close = Some(status.map(|(code, _)| code)),
                Event::MessageStart(_)
                | Event::MessageData(_)
                | Event::MessageEnd
                | Event::Pong(_) => {}
            });
        slot.shrink();
        if let Err(ProtocolError { code, reason }) = result {
            received.close = Some(Closing::ProtocolError(code, reason));
        } else if let Some(code) = peer_close {
            received.close = Some(Closing::Echo(code.unwrap_or(CloseCode::NORMAL)));
        }
        received
    }

    /// The device's liveness deadline passed: wait longer, ping, or close.
    ///
    /// An SSE client never speaks, so its silence proves nothing: it gets a
    /// heartbeat every ping interval and is never closed for silence; a
    /// dead one is found by the send path (TCP gives up, or its queue
    /// fills). With pings off (interval 0) it is closed after the idle
    /// timeout like a silent WebSocket client, and resumes.
    pub fn on_deadline(&self, conn: ConnId, now_ms: u64) -> Option<Action> {
        let slot = self
            .slots
            .get(conn.index())
            .filter(|s| s.user().is_some())?;
        let liveness = self.liveness(conn.index());
        if self.wire(conn) == Wire::Sse && liveness.ping_interval_ms > 0 {
            return Some(Action::Ping {
                next_at_ms: now_ms + liveness.ping_interval_ms,
            });
        }
        let last_rx = slot.last_rx_ms(now_ms);
        Some(liveness.on_deadline(last_rx, now_ms))
    }

    /// Where the device's replay stands: `Some(seq)` while it is being
    /// sent what it missed (live pushes wait until it catches up).
    pub fn replay_cursor(&self, conn: ConnId) -> Option<u64> {
        self.slots.get(conn.index())?.work.as_ref()?.replay_after
    }

    /// Records replay progress: `Some(seq)` still behind after `seq`,
    /// `None` caught up.
    pub fn set_replay_cursor(&mut self, conn: ConnId, cursor: Option<u64>) {
        if let Some(slot) = self.slot_mut(conn) {
            if cursor.is_some() || slot.work.is_some() {
                slot.work_mut().replay_after = cursor;
            }
            slot.shrink();
        }
    }

    /// Does the device hold heap memory (a partial frame or a replay)?
    pub fn holds_work(&self, conn: ConnId) -> bool {
        self.slots
            .get(conn.index())
            .is_some_and(|s| s.work.is_some())
    }
}

/// The ping frame sent to a quiet device.
pub fn ping_frame() -> Vec<u8> {
    writer::ping_frame(b"")
}

#[cfg(test)]
mod tests;
