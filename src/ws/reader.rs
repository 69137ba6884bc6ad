//! The per-connection frame reader: the server's hot path, and the same
//! reader for a client (`FrameReader<ClientSide>`), which reads unmasked
//! server frames under the mirrored rules.
//!
//! Received bytes go in as they come, split anywhere; events come out.
//! Data frames are streamed: their payload is unmasked in place and handed
//! out as slices of the input, never copied or buffered, so a message of any
//! size costs the reader nothing. The only bytes ever stored are an
//! incomplete frame header (at most 14 bytes) or an incomplete control frame
//! (at most 131 bytes), which a control frame must be read whole to be acted
//! on. They live in a box allocated when needed and freed as soon as the
//! frame completes, so an idle connection's reader holds no heap memory and
//! is 40 bytes. The role is a type, not a field, to keep it small.
//!
//! With permessage-deflate negotiated ([`FrameReader::feed_inflating`]), a
//! message whose first frame has RSV1 set is compressed: its payload is
//! gathered (within `message_bytes_max` on the wire) and inflated with the
//! shard's [`Inflater`] when its last frame ends, because the inflater is
//! shared by every connection of the shard and cannot hold one
//! connection's half-read stream. The events then carry inflated bytes,
//! checked against `message_bytes_max` while inflating (1009) and, for
//! text, UTF-8 (1007), just like an uncompressed message.

use std::marker::PhantomData;

use super::close::parse_close_payload;
use super::deflate::Inflater;
use super::frame::{
    parse_header_allowing, FrameHeader, Opcode, Role, CONTROL_PAYLOAD_BYTES_MAX,
    FRAME_HEADER_BYTES_MAX, RSV1,
};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;
use super::{CloseCode, ProtocolError};

/// A control frame's header is at most 6 bytes: its length always fits the
/// 7-bit field, and a client's carries a mask.
const CONTROL_HEADER_BYTES: usize = 6;

/// The most bytes [`Partial`] ever holds: a whole control frame (a data
/// frame's header alone is shorter).
const PARTIAL_BYTES_MAX: usize = CONTROL_HEADER_BYTES + CONTROL_PAYLOAD_BYTES_MAX;
const _: () = assert!(FRAME_HEADER_BYTES_MAX <= PARTIAL_BYTES_MAX);

const INVALID_UTF8: ProtocolError = ProtocolError {
    code: CloseCode::INVALID_PAYLOAD,
    reason: "text message is not valid UTF-8",
};

/// Which end a [`FrameReader`] reads for, as a type: [`ServerSide`] reads a
/// client's masked frames, [`ClientSide`] a server's unmasked ones.
pub trait ReaderRole {
    const ROLE: Role;
}

/// A server's reader (the default): frames must be masked.
#[derive(Debug)]
pub enum ServerSide {}

/// A client's reader: frames must not be masked.
#[derive(Debug)]
pub enum ClientSide {}

impl ReaderRole for ServerSide {
    const ROLE: Role = Role::Server;
}

impl ReaderRole for ClientSide {
    const ROLE: Role = Role::Client;
}

/// Size bounds on what the peer may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderLimits {
    /// Payload bytes of one data frame. Control frames are bounded at 125
    /// bytes by the protocol itself and are not held to this.
    pub frame_payload_bytes_max: u64,
    /// Payload bytes of all the frames of one message together; for a
    /// compressed message, both its bytes on the wire and its inflated size.
    pub message_bytes_max: u64,
}

/// Where one `feed`'s events go, with the shard's inflater when the
/// connection negotiated permessage-deflate (RSV1 is allowed only then).
struct Sink<'i, F> {
    emit: F,
    inflater: Option<&'i mut Inflater>,
}

impl<F> Sink<'_, F> {
    /// The reserved bits a frame may carry.
    fn rsv_allowed(&self) -> u8 {
        if self.inflater.is_some() {
            RSV1
        } else {
            0
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

/// What the reader found in the input, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The first frame of a message arrived; data follows.
    MessageStart(MessageKind),
    /// Unmasked payload bytes of the open message, a slice of the input. A
    /// frame split across reads yields several. For text, every byte so far
    /// is valid UTF-8, but a slice may end inside a code point that the next
    /// one finishes.
    MessageData(&'a [u8]),
    /// The message is complete (and, for text, ends on a whole code point).
    MessageEnd,
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The peer closed, with its validated status code and reason, if any.
    /// The reader ignores all input after it.
    Close(Option<(CloseCode, &'a str)>),
}

/// Where the stream of frames stands.
///
/// One flat byte rather than a kind plus flags, so that [`FrameReader`]
/// stays small: it exists once per connection mid-message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stream {
    /// Between messages.
    #[default]
    Idle,
    /// A message is open; its frame now being read is not its last.
    Text,
    /// A message is open; its frame now being read has `fin` set.
    TextLastFrame,
    Binary,
    BinaryLastFrame,
    /// A Close frame or a protocol error ended the stream.
    Closed,
}

impl Stream {
    fn open(kind: MessageKind, last_frame: bool) -> Self {
        match (kind, last_frame) {
            (MessageKind::Text, false) => Self::Text,
            (MessageKind::Text, true) => Self::TextLastFrame,
            (MessageKind::Binary, false) => Self::Binary,
            (MessageKind::Binary, true) => Self::BinaryLastFrame,
        }
    }

    /// The open message's kind, `None` if no message is open.
    fn kind(self) -> Option<MessageKind> {
        match self {
            Self::Text | Self::TextLastFrame => Some(MessageKind::Text),
            Self::Binary | Self::BinaryLastFrame => Some(MessageKind::Binary),
            Self::Idle | Self::Closed => None,
        }
    }

    fn is_last_frame(self) -> bool {
        matches!(self, Self::TextLastFrame | Self::BinaryLastFrame)
    }
}

/// The raw bytes of a frame that has not fully arrived: its incomplete
/// header, or a control frame's complete header and part of its payload.
struct Partial {
    bytes: [u8; PARTIAL_BYTES_MAX],
    len: usize,
}

impl Partial {
    fn filled(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Reads the frames of one connection, for the end `R` (a server's by
/// default).
pub struct FrameReader<R: ReaderRole = ServerSide> {
    /// Payload bytes of the data frame being streamed that are still to come;
    /// 0 between frames.
    frame_remaining_bytes: u64,
    /// Payload bytes announced so far by the headers of the open message.
    message_bytes: u64,
    /// The data frame's masking key, rotated after each slice so that it
    /// always starts at the next payload byte.
    mask: [u8; 4],
    utf8: Utf8Validator,
    stream: Stream,
    partial: Option<Box<Partial>>,
    /// The payload so far of a compressed message (RSV1 on its first
    /// frame), to inflate when it ends; `None` for any other. Boxed: one
    /// pointer here rather than a `Vec`'s three in every reader.
    #[allow(clippy::box_collection)]
    deflated: Option<Box<Vec<u8>>>,
    role: PhantomData<R>,
}

impl<R: ReaderRole> Default for FrameReader<R> {
    fn default() -> Self {
        Self {
            frame_remaining_bytes: 0,
            message_bytes: 0,
            mask: [0; 4],
            utf8: Utf8Validator::default(),
            stream: Stream::Idle,
            partial: None,
            deflated: None,
            role: PhantomData,
        }
    }
}

impl<R: ReaderRole> FrameReader<R> {
    /// Reads all of `input`, unmasking payload bytes in place (a server's
    /// reader; a client's has nothing to unmask), and calls
    /// `on_event` for each event in order.
    ///
    /// On `Err`, the caller sends a close frame with `err.code` and stops
    /// reading. After an `Err` or an [`Event::Close`], the reader ignores all
    /// further input and returns `Ok`.
    pub fn feed(
        &mut self,
        input: &mut [u8],
        limits: &ReaderLimits,
        on_event: impl FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        self.feed_inflating(input, limits, None, on_event)
    }

    /// [`FrameReader::feed`] on a connection that negotiated
    /// permessage-deflate when `inflater` is given: RSV1 may then start a
    /// compressed message, which is inflated with it. RSV1 on a control or
    /// continuation frame, or without an inflater, is a protocol error.
    pub fn feed_inflating(
        &mut self,
        input: &mut [u8],
        limits: &ReaderLimits,
        inflater: Option<&mut Inflater>,
        on_event: impl FnMut(Event<'_>),
    ) -> Result<(), ProtocolError> {
        if self.stream == Stream::Closed {
            return Ok(());
        }
        let mut sink = Sink {
            emit: on_event,
            inflater,
        };
        let result = self.feed_open(input, limits, &mut sink);
        if result.is_err() {
            self.close();
        }
        result
    }

    /// True only while an incomplete frame header or control frame, or a
    /// compressed message's payload so far, is stored.
    pub fn holds_buffer(&self) -> bool {
        self.partial.is_some() || self.deflated.is_some()
    }

    /// True between messages with nothing stored: the reader equals a fresh
    /// one, so a caller may drop it and keep no reader for an idle connection.
    pub fn is_at_rest(&self) -> bool {
        self.stream == Stream::Idle
            && self.frame_remaining_bytes == 0
            && self.message_bytes == 0
            && self.partial.is_none()
            && self.deflated.is_none()
    }

    fn close(&mut self) {
        *self = Self {
            stream: Stream::Closed,
            ..Self::default()
        };
    }

    fn feed_open(
        &mut self,
        mut input: &mut [u8],
        limits: &ReaderLimits,
        sink: &mut Sink<'_, impl FnMut(Event<'_>)>,
    ) -> Result<(), ProtocolError> {
        // Every step consumes at least one byte or returns with none left.
        let steps_max = input.len() + 1;
        for _ in 0..steps_max {
            if self.stream == Stream::Closed || input.is_empty() {
                return Ok(());
            }
            input = if self.frame_remaining_bytes > 0 {
                self.stream_payload(input, limits, sink)?
            } else if self.partial.is_some() {
                self.continue_partial(input, limits, sink)?
            } else {
                self.start_frame(input, limits, sink)?
            };
        }
        unreachable!("a step consumed no input");
    }

    /// Hands out the next slice of the data frame being streamed.
    fn stream_payload<'a>(
        &mut self,
        input: &'a mut [u8],
        limits: &ReaderLimits,
        sink: &mut Sink<'_, impl FnMut(Event<'_>)>,
    ) -> Result<&'a mut [u8], ProtocolError> {
        let slice_len = usize::try_from(self.frame_remaining_bytes)
            .map_or(input.len(), |remaining| remaining.min(input.len()));
        let (slice, rest) = input.split_at_mut(slice_len);
        if R::ROLE.receives_masked() {
            apply_mask(slice, self.mask, 0);
            self.mask.rotate_left(slice_len % 4);
        }
        self.frame_remaining_bytes -= slice_len as u64;
        if let Some(deflated) = &mut self.deflated {
            // Within message_bytes_max: the headers were checked.
            deflated.extend_from_slice(slice);
        } else {
            if self.stream.kind() == Some(MessageKind::Text) {
                self.utf8.feed(slice).map_err(|()| INVALID_UTF8)?;
            }
            (sink.emit)(Event::MessageData(slice));
        }
        if self.frame_remaining_bytes == 0 {
            self.end_data_frame(limits, sink)?;
        }
        Ok(rest)
    }

    /// Reads a frame from the start of `input`, with nothing stored: the
    /// fast path, where a complete header or control frame is used in place.
    fn start_frame<'a>(
        &mut self,
        input: &'a mut [u8],
        limits: &ReaderLimits,
        sink: &mut Sink<'_, impl FnMut(Event<'_>)>,
    ) -> Result<&'a mut [u8], ProtocolError> {
        let Some((header, header_bytes)) =
            parse_header_allowing(input, R::ROLE, sink.rsv_allowed())?
        else {
            self.store_partial(input);
            return Ok(&mut []);
        };
        let Some(mask) = self.begin_frame(&header, limits, sink)? else {
            return Ok(&mut input[header_bytes..]);
        };
        let frame_bytes = header_bytes + header.payload_len as usize;
        if input.len() < frame_bytes {
            self.store_partial(input);
            return Ok(&mut []);
        }
        let (frame, rest) = input.split_at_mut(frame_bytes);
        self.control_frame(header.opcode, mask, &mut frame[header_bytes..], sink)?;
        Ok(rest)
    }

    /// Adds input to the stored incomplete frame, and acts on the frame once
    /// enough of it is there.
    fn continue_partial<'a>(
        &mut self,
        input: &'a mut [u8],
        limits: &ReaderLimits,
        sink: &mut Sink<'_, impl FnMut(Event<'_>)>,
    ) -> Result<&'a mut [u8], ProtocolError> {
        // Taken out so that `self` is free to change; put back if still
        // incomplete, dropped (freed) otherwise.
        let Some(mut partial) = self.partial.take() else {
            return Ok(input);
        };
        let held = partial.len;
        let (header, header_bytes, input) =
            match parse_header_allowing(partial.filled(), R::ROLE, sink.rsv_allowed())? {
                // A control frame whose payload is being gathered.
                Some((header, header_bytes)) => (header, header_bytes, input),
                None => {
                    // Copy as much as the longest header could need, then keep
                    // only what this header turns out to use.
                    let copied = (FRAME_HEADER_BYTES_MAX - held).min(input.len());
                    partial.bytes[held..held + copied].copy_from_slice(&input[..copied]);
                    match parse_header_allowing(
                        &partial.bytes[..held + copied],
                        R::ROLE,
                        sink.rsv_allowed(),
                    )? {
                        None => {
                            partial.len = held + copied;
                            self.partial = Some(partial);
                            return Ok(&mut input[copied..]);
                        }
                        Some((header, header_bytes)) => {
                            partial.len = header_bytes;
                            (header, header_bytes, &mut input[header_bytes - held..])
                        }
                    }
                }
            };
        let Some(mask) = self.begin_frame(&header, limits, sink)? else {
            return Ok(input);
        };
        let frame_bytes = header_bytes + header.payload_len as usize;
        let copied = (frame_bytes - partial.len).min(input.len());
        let len = partial.len;
        partial.bytes[len..len + copied].copy_from_slice(&input[..copied]);
        partial.len += copied;
        let rest = &mut input[copied..];
        if partial.len < frame_bytes {
            self.partial = Some(partial);
            return Ok(rest);
        }
        let payload = &mut partial.bytes[header_bytes..frame_bytes];
        self.control_frame(header.opcode, mask, payload, sink)?;
        Ok(rest)
    }

    fn store_partial(&mut self, bytes: &[u8]) {
        debug_assert!(self.partial.is_none());
        debug_assert!(bytes.len() < PARTIAL_BYTES_MAX);
        let mut partial = Box::new(Partial {
            bytes: [0; PARTIAL_BYTES_MAX],
            len: bytes.len(),
        });
        partial.bytes[..bytes.len()].copy_from_slice(bytes);
        self.partial = Some(partial);
    }

    /// Checks a complete header against the stream and the limits.
    ///
    /// A data frame starts streaming here (its payload follows in the input)
    /// and `None` is returned. A control frame changes nothing yet: its mask
    /// is returned (zeros for an unmasked frame; [`parse_header`] has checked
    /// the role's rule), and its payload must be gathered whole.
    fn begin_frame(
        &mut self,
        header: &FrameHeader,
        limits: &ReaderLimits,
        sink: &mut Sink<'_, impl FnMut(Event<'_>)>,
    ) -> Result<Option<[u8; 4]>, ProtocolError> {
        let mask = header.mask.unwrap_or_default();
        let open_kind = self.stream.kind();
        // RFC 7692 §6: RSV1 marks a compressed message on its first frame
        // only (`parse_header_allowing` let it through only if negotiated).
        let rsv1 = header.rsv & RSV1 != 0;
        let kind = match header.opcode {
            Opcode::Close | Opcode::Ping | Opcode::Pong if rsv1 => {
                return Err(ProtocolError::protocol("RSV1 set on a control frame"));
            }
            Opcode::Close | Opcode::Ping | Opcode::Pong => return Ok(Some(mask)),
            Opcode::Continuation if rsv1 => {
                return Err(ProtocolError::protocol("RSV1 set on a continuation frame"));
            }
            Opcode::Continuation => open_kind.ok_or(ProtocolError::protocol(
                "continuation frame without a message in progress",
            ))?,
            Opcode::Text | Opcode::Binary if open_kind.is_some() => {
                return Err(ProtocolError::protocol(
                    "new message before the previous one ended",
                ));
            }
            Opcode::Text => MessageKind::Text,
            Opcode::Binary => MessageKind::Binary,
        };
        // Decided from the header, before any of the payload is read.
        let too_big = |reason| ProtocolError {
            code: CloseCode::TOO_BIG,
            reason,
        };
        if header.payload_len > limits.frame_payload_bytes_max {
            return Err(too_big("frame too big"));
        }
        let message_bytes = if open_kind.is_some() {
            self.message_bytes.checked_add(header.payload_len)
        } else {
            Some(header.payload_len)
        };
        self.message_bytes = match message_bytes {
            Some(bytes) if bytes <= limits.message_bytes_max => bytes,
            _ => return Err(too_big("message too big")),
        };

        if open_kind.is_none() {
            (sink.emit)(Event::MessageStart(kind));
            if rsv1 {
                self.deflated = Some(Box::default());
            }
        }
        self.stream = Stream::open(kind, header.fin);
        self.mask = mask;
        self.frame_remaining_bytes = header.payload_len;
        if header.payload_len == 0 {
            self.end_data_frame(limits, sink)?;
        }
        Ok(None)
    }

    /// All of a data frame's payload has been handed out.
    fn end_data_frame(
        &mut self,
        limits: &ReaderLimits,
        sink: &mut Sink<'_, impl FnMut(Event<'_>)>,
    ) -> Result<(), ProtocolError> {
        if !self.stream.is_last_frame() {
            // More fragments follow; the message stays open.
            return Ok(());
        }
        let text = self.stream.kind() == Some(MessageKind::Text);
        if let Some(deflated) = self.deflated.take() {
            let inflater = sink.inflater.as_deref_mut().ok_or(ProtocolError::protocol(
                "compressed message without a negotiated extension",
            ))?;
            let (utf8, emit) = (&mut self.utf8, &mut sink.emit);
            inflater.inflate(&deflated, limits.message_bytes_max, |chunk| {
                if text {
                    utf8.feed(chunk).map_err(|()| INVALID_UTF8)?;
                }
                emit(Event::MessageData(chunk));
                Ok(())
            })?;
        }
        if text {
            self.utf8.finish().map_err(|()| INVALID_UTF8)?;
        }
        (sink.emit)(Event::MessageEnd);
        self.stream = Stream::Idle;
        self.message_bytes = 0;
        Ok(())
    }

    /// Acts on a complete control frame; `payload` is still masked.
    fn control_frame(
        &mut self,
        opcode: Opcode,
        mask: [u8; 4],
        payload: &mut [u8],
        sink: &mut Sink<'_, impl FnMut(Event<'_>)>,
    ) -> Result<(), ProtocolError> {
        if R::ROLE.receives_masked() {
            apply_mask(payload, mask, 0);
        }
        match opcode {
            Opcode::Ping => (sink.emit)(Event::Ping(payload)),
            Opcode::Pong => (sink.emit)(Event::Pong(payload)),
            Opcode::Close => {
                let close = parse_close_payload(payload)?;
                (sink.emit)(Event::Close(close));
                self.close();
            }
            Opcode::Continuation | Opcode::Text | Opcode::Binary => {
                unreachable!("only control frames are gathered whole")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "reader_client_tests.rs"]
mod client_tests;

#[cfg(test)]
#[path = "reader_deflate_tests.rs"]
mod deflate_tests;
