//! Clients for the in-memory driver: a WebSocket device, a Server-Sent
//! Events device, a push-socket publisher and an admin HTTP caller, each
//! speaking the real wire format over a simulated socket.

use super::{Cluster, SocketId};
use crate::auth;
use crate::gateway::home::HomeSettings;
use crate::gateway::sessions::handshakes::UpgradeRules;
use crate::gateway::sessions::SessionSettings;
use crate::gateway::{
    GatewayShared, GatewayStats, OverloadLimits, ADMIN_LISTENER, CLIENT_LISTENER, PUSH_LISTENER,
};
use crate::liveness::Liveness;
use crate::push::wire::{self, FrameSplitter, Reply, Request};
use crate::sse::{EventReader, Item};
use crate::ws::frame::Opcode;
use crate::ws::handshake::HandshakeLimits;
use crate::ws::reader::{ClientSide, Event, FrameReader, ReaderLimits};
use crate::ws::writer;
use std::sync::Arc;

/// Unix time (ms) the simulated clock starts at.
pub const CLOCK_UNIX_BASE_MS: u64 = 1_800_000_000_000;
pub const EPOCH: u64 = 77;

/// Settings for a simulated gateway: small, so bounds are reached fast.
pub fn shared() -> GatewayShared {
    GatewayShared {
        upgrade: UpgradeRules {
            limits: HandshakeLimits::default(),
            secret: auth::Secret::from_bytes(vec![7; 32]),
            site: crate::upgrade::Site {
                page: b"<html>demo</html>",
                dev_tokens: false,
                deflate: false,
            },
        },
        sessions: SessionSettings {
            reader_limits: ReaderLimits {
                frame_payload_bytes_max: 64 * 1024,
                message_bytes_max: 64 * 1024,
            },
            liveness: Liveness {
                ping_interval_ms: 30_000,
                idle_timeout_ms: 75_000,
            },
            console_liveness: Liveness {
                ping_interval_ms: 0,
                idle_timeout_ms: 600_000,
            },
        },
        home: HomeSettings {
            epoch: EPOCH,
            retention_ms: 120_000,
            entries_max: 64,
            offline_users_max: 1_000,
            stored_bytes_max: 1 << 20,
        },
        handshake_timeout_ms: 10_000,
        deflate_threshold_bytes: 1024,
        publisher_frame_timeout_ms: 10_000,
        clock_unix_base_ms: CLOCK_UNIX_BASE_MS,
        push_frame_bytes_max: 1 << 20,
        console_listeners: vec![false, false, false, true],
        limits: OverloadLimits {
            connections_per_shard_max: 10_000,
            handshakes_max: 100,
            accepts_per_shard_per_s: 0.0,
            admin_connections_max: 8,
            publisher_connections_max: 16,
        },
        drain_rate_per_s: 100,
        moves: Arc::new(crate::takeover::moves::Moves::new(8, EPOCH)),
        control: Arc::default(),
        stats: (0..8).map(|_| GatewayStats::default()).collect(),
        redis: None,
    }
}

/// A masked client frame (RFC 6455 §5.3), as a browser sends it.
pub fn client_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    writer::write_frame(
        &mut out,
        true,
        opcode,
        payload,
        Some([0x37, 0xfa, 0x21, 0x3d]),
    );
    out
}

/// A frame the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Ping,
    Pong(Vec<u8>),
    Close(u16),
}

/// What a device accepts from the server: the gateway's own limits.
const SERVER_FRAME_LIMITS: ReaderLimits = ReaderLimits {
    frame_payload_bytes_max: 1 << 24,
    message_bytes_max: 1 << 24,
};

/// A device's side of the codec: server frames in, [`Frame`]s out.
#[derive(Default)]
struct Frames {
    reader: FrameReader<ClientSide>,
    /// The text message being received.
    message: Vec<u8>,
}

impl Frames {
    /// Every whole frame in `bytes` (the rest is kept for the next call).
    fn feed(&mut self, bytes: &mut [u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        let message = &mut self.message;
        self.reader
            .feed(bytes, &SERVER_FRAME_LIMITS, |event| match event {
                Event::MessageStart(_) => message.clear(),
                Event::MessageData(data) => message.extend_from_slice(data),
                Event::MessageEnd => frames.push(Frame::Text(
                    String::from_utf8(std::mem::take(message)).expect("valid UTF-8"),
                )),
                Event::Ping(_) => frames.push(Frame::Ping),
                Event::Pong(payload) => frames.push(Frame::Pong(payload.to_vec())),
                Event::Close(status) => {
                    frames.push(Frame::Close(status.map_or(1005, |(code, _)| code.0)))
                }
            })
            .expect("the server keeps RFC 6455");
        frames
    }
}

/// A device: a WebSocket client of one user.
pub struct Device {
    pub socket: SocketId,
    frames: Frames,
    /// Frames that came with the welcome (a replay), not yet returned.
    early: Vec<Frame>,
    /// The welcome's fields.
    pub welcome: serde_json::Value,
}

impl Device {
    /// Frames received since the last call.
    pub fn frames(&mut self, cluster: &mut Cluster) -> Vec<Frame> {
        let mut bytes = cluster.read(self.socket);
        let mut frames = std::mem::take(&mut self.early);
        frames.extend(self.frames.feed(&mut bytes));
        frames
    }

    /// The pushes received since the last call: (seq, data).
    pub fn pushes(&mut self, cluster: &mut Cluster) -> Vec<(u64, serde_json::Value)> {
        self.frames(cluster)
            .into_iter()
            .filter_map(|f| match f {
                Frame::Text(t) => Some(t),
                _ => None,
            })
            .map(|t| {
                let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                assert_eq!(v["type"], "push", "{t}");
                (v["seq"].as_u64().unwrap(), v["data"].clone())
            })
            .collect()
    }

    /// With Redis: the welcome that came since (it waits for the
    /// history); it must be the next message. Kept as `welcome` too.
    pub fn read_welcome(&mut self, cluster: &mut Cluster) -> serde_json::Value {
        let mut frames = self.frames(cluster).into_iter();
        let Some(Frame::Text(text)) = frames.next() else {
            panic!("no welcome");
        };
        let welcome: serde_json::Value = serde_json::from_str(&text).expect("JSON welcome");
        assert_eq!(welcome["type"], "welcome", "{text}");
        self.early = frames.collect();
        self.welcome = welcome.clone();
        welcome
    }

    pub fn send(&self, cluster: &mut Cluster, opcode: Opcode, payload: &[u8]) {
        cluster.write(self.socket, &client_frame(opcode, payload));
    }

    /// The resume position after what it has seen.
    pub fn since(&self, last_seq: u64) -> String {
        format!("{}:{last_seq}", self.welcome["epoch"])
    }
}

impl Cluster {
    /// A token for `user` valid now.
    pub fn token(&self, user: &str) -> String {
        let now_s = (CLOCK_UNIX_BASE_MS + self.now_ms()) / 1000;
        auth::mint(&self.shared.upgrade.secret, user, 3600, now_s)
    }

    /// An upgrade request for `user`, resuming from `since` if given.
    pub fn upgrade_request(&self, user: &str, since: Option<&str>) -> Vec<u8> {
        let since = since.map_or(String::new(), |s| format!("&since={s}"));
        format!(
            "GET /ws?token={}{since} HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            self.token(user)
        )
        .into_bytes()
    }

    /// A device of `user` connects through `shard` (the kernel's pick) and
    /// upgrades; panics unless it is welcomed.
    pub fn device(&mut self, shard: usize, user: &str, since: Option<&str>) -> Device {
        self.try_device(shard, user, since)
            .unwrap_or_else(|refusal| panic!("{user} not welcomed: {refusal}"))
    }

    /// Like [`Cluster::device`], but a refusal is returned as the text the
    /// server answered.
    pub fn try_device(
        &mut self,
        shard: usize,
        user: &str,
        since: Option<&str>,
    ) -> Result<Device, String> {
        self.try_device_via(shard, CLIENT_LISTENER, user, since)
    }

    /// A device that came in on `listener` (e.g. the console listener).
    pub fn device_via(
        &mut self,
        shard: usize,
        listener: usize,
        user: &str,
        since: Option<&str>,
    ) -> Device {
        self.try_device_via(shard, listener, user, since)
            .unwrap_or_else(|refusal| panic!("{user} not welcomed: {refusal}"))
    }

    fn try_device_via(
        &mut self,
        shard: usize,
        listener: usize,
        user: &str,
        since: Option<&str>,
    ) -> Result<Device, String> {
        let socket = self.connect(shard, listener).ok_or("listener closed")?;
        let request = self.upgrade_request(user, since);
        self.write(socket, &request);
        let mut bytes = self.read(socket);
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err(format!(
                "no response head: {:?}",
                String::from_utf8_lossy(&bytes)
            ));
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(String::from_utf8_lossy(&bytes).into_owned());
        }
        let mut frames = Frames::default();
        let mut early = frames.feed(&mut bytes[end + 4..]).into_iter();
        let Some(Frame::Text(welcome)) = early.next() else {
            return Err(format!("no welcome: {:?}", String::from_utf8_lossy(&bytes)));
        };
        let welcome: serde_json::Value = serde_json::from_str(&welcome).expect("JSON welcome");
        assert_eq!(welcome["type"], "welcome");
        Ok(Device {
            socket,
            frames,
            early: early.collect(),
            welcome,
        })
    }

    /// With Redis: a device of `user` whose upgrade was answered (101)
    /// while its welcome waits for the history ([`Device::read_welcome`]).
    pub fn upgraded(&mut self, shard: usize, user: &str, since: Option<&str>) -> Device {
        let socket = self
            .connect(shard, CLIENT_LISTENER)
            .expect("client listener");
        let request = self.upgrade_request(user, since);
        self.write(socket, &request);
        let mut bytes = self.read(socket);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head");
        let mut frames = Frames::default();
        let early = frames.feed(&mut bytes[end + 4..]);
        Device {
            socket,
            frames,
            early,
            welcome: serde_json::Value::Null,
        }
    }

    /// A publisher connected to `shard`'s push socket.
    pub fn publisher(&mut self, shard: usize) -> Publisher {
        let socket = self.connect(shard, PUSH_LISTENER).expect("push socket");
        Publisher {
            socket,
            splitter: FrameSplitter::default(),
            next_id: 1,
        }
    }

    /// One admin HTTP exchange on `shard`: (status, body), or None if the
    /// answer has not come yet (it waits for other shards).
    pub fn admin(&mut self, shard: usize, request: &str) -> Option<(u16, String)> {
        let socket = self.admin_send(shard, request);
        admin_answer(self, socket)
    }

    /// Sends an admin request on a new connection to `shard`; the answer
    /// is read later with [`admin_answer`].
    pub fn admin_send(&mut self, shard: usize, request: &str) -> SocketId {
        let socket = self.connect(shard, ADMIN_LISTENER).expect("admin listener");
        self.write(socket, request.as_bytes());
        socket
    }

    /// An authenticated `POST /v1/push` to `users`, sent to `shard`.
    pub fn admin_push_send(&mut self, shard: usize, users: &[&str]) -> SocketId {
        let body = serde_json::json!({"users": users, "data": 1}).to_string();
        let request = admin_request(self, "POST", "/v1/push", &body);
        self.admin_send(shard, &request)
    }
}

/// The admin answer on `socket`, if it came.
pub fn admin_answer(cluster: &mut Cluster, socket: SocketId) -> Option<(u16, String)> {
    let bytes = cluster.read(socket);
    if bytes.is_empty() {
        return None;
    }
    let text = String::from_utf8(bytes).expect("HTTP text");
    let status = text[9..12].parse().expect("status");
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

/// An admin request with an admin token.
pub fn admin_request(cluster: &Cluster, method: &str, path: &str, body: &str) -> String {
    let now_s = (CLOCK_UNIX_BASE_MS + cluster.now_ms()) / 1000;
    let token = auth::mint_admin(&cluster.shared.upgrade.secret, 3600, now_s);
    format!(
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A backend on a push socket.
pub struct Publisher {
    pub socket: SocketId,
    splitter: FrameSplitter,
    next_id: u64,
}

impl Publisher {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Sends requests (pipelined); replies are read with [`Publisher::replies`].
    pub fn send(&mut self, cluster: &mut Cluster, requests: &[Request]) {
        let mut bytes = Vec::new();
        for r in requests {
            bytes.extend(wire::encode_request(r));
        }
        cluster.write(self.socket, &bytes);
    }

    pub fn replies(&mut self, cluster: &mut Cluster) -> Vec<Reply> {
        let bytes = cluster.read(self.socket);
        let mut replies = Vec::new();
        self.splitter
            .feed(&bytes, 1 << 20, |body| {
                replies.push(wire::decode_reply(body).expect("a valid reply"))
            })
            .expect("framing");
        replies
    }

    /// One push and its reply: (delivered, stored, rejected).
    pub fn push(&mut self, cluster: &mut Cluster, users: &[&str], data: &str) -> (u32, u32, u32) {
        let id = self.next_id();
        let request = Request::Push {
            id,
            users: users.iter().map(|u| u.to_string()).collect(),
            data: data.to_string(),
        };
        self.send(cluster, &[request]);
        match self.replies(cluster).as_slice() {
            [Reply::Pushed {
                id: got,
                delivered,
                stored,
                rejected,
            }] if *got == id => (*delivered, *stored, *rejected),
            other => panic!("push {id}: {other:?}"),
        }
    }

    pub fn broadcast(&mut self, cluster: &mut Cluster, data: &str) -> (u32, u32, u32) {
        let id = self.next_id();
        let request = Request::Broadcast {
            id,
            data: data.to_string(),
        };
        self.send(cluster, &[request]);
        match self.replies(cluster).as_slice() {
            [Reply::Pushed {
                delivered,
                stored,
                rejected,
                ..
            }] => (*delivered, *stored, *rejected),
            other => panic!("broadcast {id}: {other:?}"),
        }
    }
}

/// A device on `GET /sse`.
pub struct SseDevice {
    pub socket: SocketId,
    reader: EventReader,
    /// Items that came with the welcome (a replay), not yet returned.
    early: Vec<Item>,
    /// The response head, up to its blank line.
    pub head: String,
    /// The welcome event (its `id:` and `retry:`), and its JSON.
    pub welcome_event: crate::sse::Event,
    pub welcome: serde_json::Value,
}

impl SseDevice {
    /// Events and comments received since the last call.
    pub fn items(&mut self, cluster: &mut Cluster) -> Vec<Item> {
        let bytes = cluster.read(self.socket);
        let mut items = std::mem::take(&mut self.early);
        self.reader.feed(&bytes, |i| items.push(i));
        items
    }

    /// The events since the last call as (id, JSON), comments left out.
    pub fn events(&mut self, cluster: &mut Cluster) -> Vec<(Option<String>, serde_json::Value)> {
        self.items(cluster)
            .into_iter()
            .filter_map(|i| match i {
                Item::Event(e) => Some((
                    e.id,
                    serde_json::from_str(&e.data).expect("each event's data is JSON"),
                )),
                Item::Comment => None,
            })
            .collect()
    }

    /// The pushes since the last call: (seq, data); checks each push's id.
    pub fn pushes(&mut self, cluster: &mut Cluster) -> Vec<(u64, serde_json::Value)> {
        let epoch = self.welcome["epoch"].clone();
        self.events(cluster)
            .into_iter()
            .map(|(id, v)| {
                assert_eq!(v["type"], "push", "{v}");
                let seq = v["seq"].as_u64().unwrap();
                assert_eq!(id, Some(format!("{epoch}:{seq}")), "the id names the push");
                (seq, v["data"].clone())
            })
            .collect()
    }
}

impl Cluster {
    /// A `GET /sse` request for `user`, resuming from `since` (query) or
    /// `last_event_id` (header) if given.
    pub fn sse_request(
        &self,
        user: &str,
        since: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Vec<u8> {
        let since = since.map_or(String::new(), |s| format!("&since={s}"));
        let id = last_event_id.map_or(String::new(), |i| format!("Last-Event-ID: {i}\r\n"));
        format!(
            "GET /sse?token={}{since} HTTP/1.1\r\nHost: sim\r\nAccept: text/event-stream\r\n{id}\r\n",
            self.token(user)
        )
        .into_bytes()
    }

    /// An SSE device of `user` connects through `shard`; panics unless it
    /// gets the event stream and its welcome.
    pub fn sse_device(
        &mut self,
        shard: usize,
        user: &str,
        since: Option<&str>,
        last_event_id: Option<&str>,
    ) -> SseDevice {
        let request = self.sse_request(user, since, last_event_id);
        self.try_sse_device(shard, &request)
            .unwrap_or_else(|refusal| panic!("{user} not welcomed: {refusal}"))
    }

    /// Sends `request` on a new connection; the device, or the answer.
    pub fn try_sse_device(&mut self, shard: usize, request: &[u8]) -> Result<SseDevice, String> {
        let socket = self
            .connect(shard, CLIENT_LISTENER)
            .ok_or("listener closed")?;
        self.write(socket, request);
        let bytes = self.read(socket);
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err(format!(
                "no response head: {:?}",
                String::from_utf8_lossy(&bytes)
            ));
        };
        let head = String::from_utf8_lossy(&bytes[..end + 4]).into_owned();
        if !head.starts_with("HTTP/1.1 200") {
            return Err(String::from_utf8_lossy(&bytes).into_owned());
        }
        let mut reader = EventReader::default();
        let mut items = Vec::new();
        reader.feed(&bytes[end + 4..], |i| items.push(i));
        let mut items = items.into_iter();
        let Some(Item::Event(welcome_event)) = items.next() else {
            return Err(format!("no welcome: {:?}", String::from_utf8_lossy(&bytes)));
        };
        let welcome: serde_json::Value =
            serde_json::from_str(&welcome_event.data).expect("JSON welcome");
        assert_eq!(welcome["type"], "welcome");
        Ok(SseDevice {
            socket,
            reader,
            early: items.collect(),
            head,
            welcome_event,
            welcome,
        })
    }
}

/// A user ID starting with `prefix` whose home is `shard` of `shards`.
pub fn user_homed_on(prefix: &str, shard: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| crate::route::home_shard(u, shards) == shard)
        .expect("some name hashes to every shard")
}

/// A cluster of `shards` shards with the default simulated settings.
pub fn cluster(shards: usize) -> Cluster {
    Cluster::new(
        shared(),
        super::SimSettings {
            shards,
            ..super::SimSettings::default()
        },
    )
}
