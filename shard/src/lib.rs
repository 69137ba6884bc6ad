//! `shard`: a per-core io_uring runtime that knows file descriptors and
//! bytes, not WebSocket.
//!
//! One pinned thread per shard, each with its own ring, provided-buffer ring,
//! listeners (SO_REUSEPORT, multishot accept into direct descriptors),
//! connection slab and timer wheel. Shards talk over bounded channels and can
//! hand a live connection to each other. The protocol lives in an [`App`]
//! that the runtime calls; it never depends on the app.

mod accept_watch;
mod buf_ring;
mod coalesce;
mod config;
mod conn;
mod conn_table;
mod ctx;
mod event_loop;
mod handoff;
mod listen;
mod mesh;
mod op;
mod reactor;
mod ring;
mod runtime;
mod stats;
mod takeover;
mod timer;
mod tls;

use std::os::fd::OwnedFd;

pub use crate::config::RuntimeConfig;
pub use crate::ctx::{Ctx, SendError};
pub use crate::listen::{ListenerSpec, SocketOption};
pub use crate::mesh::{Injector, Waker, FROM_OUTSIDE};
pub use crate::reactor::ExportError;
pub use crate::runtime::{Runtime, StartError, Stopper};
pub use crate::stats::{ShardStats, StatsSnapshot};
pub use crate::takeover::{
    connection_moves_supported, AcceptGate, InheritedListener, ListenerCopies, ListenerCopy,
};
/// The TLS record layer and handshake feeder for the fuzz targets; not an API.
#[doc(hidden)]
pub use crate::tls::fuzzing as tls_fuzzing;
pub use crate::tls::TlsListeners;
/// The rustls this runtime speaks TLS with (for building its `ServerConfig`).
pub use rustls;

/// A connection on this shard: a slab index plus a generation, so an id kept
/// after the connection closed never reaches a newer connection in the same
/// slot. Apps may index their own per-connection storage by `index()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub(crate) index: u32,
    /// Never 0, so `Option<ConnId>` costs no more than a `ConnId`.
    pub(crate) gen: std::num::NonZeroU32,
}

impl ConnId {
    /// Dense slab index (reused after the connection is gone).
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// An id that names no live connection, for tests of code that stores ids.
    #[doc(hidden)]
    pub fn for_tests(index: u32, gen: u32) -> ConnId {
        ConnId {
            index,
            gen: std::num::NonZeroU32::new(gen).expect("generations start at 1"),
        }
    }

    pub(crate) fn new(index: u32, gen: u32) -> ConnId {
        ConnId {
            index,
            gen: std::num::NonZeroU32::new(gen).expect("generations are never 0"),
        }
    }
}

/// Why a connection ended without the app asking for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side (recv returned 0).
    PeerClosed,
    /// A receive or send failed with this errno (e.g. ECONNRESET).
    Error(i32),
    /// The connection could not be moved to its home shard (errno).
    HandoffFailed(i32),
    /// The runtime stopped and its grace period ran out.
    Stopped,
}

/// The protocol on top of a shard. One instance per shard, created on the
/// shard's thread; every call comes from that thread.
///
/// Connection life cycle: `on_accept` (or `on_handoff`) once, then
/// `on_data` / `on_timer` / `on_drained` any number of times, and finally
/// either the app calls [`Ctx::close`] / [`Ctx::abort`] / [`Ctx::hand_off`]
/// (no further calls for that connection) or the runtime calls `on_close`.
pub trait App {
    /// Messages between shards; also carries a handed-off connection's state.
    type Msg: Send + 'static;

    /// A connection was accepted on listener number `listener` (an index into
    /// `RuntimeConfig::listeners`). It receives one read at a time until
    /// [`Ctx::stream`] is called, so it can still be handed to another shard.
    fn on_accept(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, listener: usize);

    /// Bytes arrived. The slice is a provided buffer, valid only during the
    /// call; the app may modify it (e.g. unmask in place).
    fn on_data(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, data: &mut [u8]);

    /// The deadline set with [`Ctx::set_deadline`] passed.
    fn on_timer(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId);

    /// The connection ended without the app asking (see [`CloseReason`]).
    fn on_close(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, reason: CloseReason);

    /// A message from another shard (or this one) sent with [`Ctx::send_msg`].
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self::Msg>, from_shard: usize, msg: Self::Msg);

    /// A connection handed over by another shard arrived, with the state the
    /// other shard sent along. It is already streaming.
    fn on_handoff(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, msg: Self::Msg);

    /// The send queue of a connection that asked with
    /// [`Ctx::notify_when_drained`] is empty.
    fn on_drained(&mut self, _ctx: &mut Ctx<'_, Self::Msg>, _conn: ConnId) {}

    /// A connection asked to leave with [`Ctx::export`] left the shard:
    /// `fd` is its socket as a regular descriptor (close-on-exec), to send
    /// to another process. Dropping it closes the connection.
    fn on_exported(&mut self, _ctx: &mut Ctx<'_, Self::Msg>, _conn: ConnId, _fd: OwnedFd) {}

    /// The export of `conn` failed (errno); it stays and receives again.
    fn on_export_failed(&mut self, _ctx: &mut Ctx<'_, Self::Msg>, _conn: ConnId, _errno: i32) {}

    /// A socket given to [`Ctx::adopt`] is connection `conn` now,
    /// streaming, with the state given then.
    fn on_adopted(&mut self, ctx: &mut Ctx<'_, Self::Msg>, conn: ConnId, _msg: Self::Msg) {
        ctx.abort(conn);
    }

    /// A socket given to [`Ctx::adopt`] could not be taken in (errno):
    /// both come back.
    fn on_adopt_failed(
        &mut self,
        _ctx: &mut Ctx<'_, Self::Msg>,
        _fd: OwnedFd,
        _msg: Self::Msg,
        _errno: i32,
    ) {
    }

    /// Called once per timer tick (`RuntimeConfig::timer_tick_ms`).
    fn on_tick(&mut self, _ctx: &mut Ctx<'_, Self::Msg>) {}

    /// The runtime is stopping: listeners are closed; the app should close
    /// its connections (e.g. with a "going away" frame). Connections still
    /// open after `stop_grace_ms` are aborted with `CloseReason::Stopped`.
    fn on_stop(&mut self, _ctx: &mut Ctx<'_, Self::Msg>) {}
}
