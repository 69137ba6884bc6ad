// pushgate.js — the browser SDK for pushgate, the push-notification gateway.
// An ES module with no dependencies. It keeps one connection to the gateway
// and never loses a notification silently: every push reaches `onPush` once
// and in order, or `onReset` says the app must refetch.
//
//   import { connect } from "/pushgate.js";
//   const push = connect({
//     url: "https://push.example.com",
//     token: async () => (await fetch("/api/push-token")).text(),
//     onPush: (data, { seq }) => show(data),
//     onReset: () => refetchEverything(),
//     onState: (state, info) => console.log(state, info.transport),
//   });
//   …
//   push.close();
//
// How (see README.md for the whole story):
// - WebSocket (`/ws?heartbeat=1`) first; after `sseAfterFailures` attempts
//   in a row that never got a welcome, Server-Sent Events (`/sse`, read with
//   fetch so a 401 is visible); WebSocket is tried again every
//   `websocketRetryMs` and taken back when it works.
// - Reconnects wait a full-jitter exponential backoff (0.5 s doubling to a
//   20 s cap, a uniform draw below the capped value). A drain's close (1012)
//   is spread over the server's `retry` (SSE) or `restartSpreadMs`.
//   `online`, and the page becoming visible after a long hide, reconnect at
//   once.
// - The position `<epoch>:<seq>` of the last push delivered is sent as
//   `since` on every reconnect; pushes at or below it are dropped
//   (duplicates); a welcome with `recovered:false` calls `onReset`.
// - No heartbeat or data within the server's `heartbeat_ms` + a margin
//   means a dead connection: it is dropped and replaced.
// - The token comes from the app's callback, is cached until near its
//   `exp`, refreshed before that, and fetched anew after a 401 / close 1008;
//   two fresh tokens refused in a row end in the state "failed".
// - With `share`, tabs of one origin elect a leader (Web Locks) that holds
//   the only connection and relays to the others (BroadcastChannel).

export const VERSION = "1.0.0";

const DEFAULTS = {
  transport: "auto",
  backoffBaseMs: 500,
  backoffCapMs: 20000,
  backoffMinMs: 0,
  restartSpreadMs: 1000,
  sseAfterFailures: 3,
  websocketRetryMs: 120000,
  heartbeatMarginMs: 10000,
  connectTimeoutMs: 15000,
  longHideMs: 60000,
  tokenRefreshMarginMs: 60000,
  since: null,
  share: null,
};

/** Close code the SDK uses for a connection it gave up on itself. */
export const CLOSE_HEARTBEAT_TIMEOUT = 4000;
export const CLOSE_CONNECT_TIMEOUT = 4001;

/**
 * Starts a connection that lives until `close()`.
 * @param {import("./pushgate").PushgateOptions} options
 * @returns {import("./pushgate").PushgateConnection}
 */
export function connect(options) {
  if (!options || typeof options.url !== "string") throw new TypeError("pushgate: options.url is required");
  if (typeof options.token !== "function") throw new TypeError("pushgate: options.token must be a function");
  const env = environment(options.env);
  const opts = { ...DEFAULTS, ...options };
  if (opts.share && env.locks && env.BroadcastChannel) return new SharedConnection(opts, env);
  const client = new Client(opts, env, null);
  client.start();
  return client.handle();
}

/** Full-jitter backoff: a uniform draw below min(cap, base·2^attempt), plus the floor. */
export function backoffDelay(attempt, { backoffBaseMs, backoffCapMs, backoffMinMs = 0 }, random = Math.random) {
  const ceiling = Math.min(backoffCapMs, backoffBaseMs * 2 ** Math.min(attempt, 30));
  return backoffMinMs + random() * ceiling;
}

/** The gateway's two endpoints for a base URL (http(s)://, ws(s):// or relative). */
export function endpoints(url, base) {
  const u = base ? new URL(url, base) : new URL(url);
  let path = u.pathname.replace(/\/+$/, "");
  path = path.replace(/\/(ws|sse)$/, "");
  const secure = u.protocol === "https:" || u.protocol === "wss:";
  const host = u.host;
  return {
    ws: (secure ? "wss://" : "ws://") + host + path + "/ws",
    sse: (secure ? "https://" : "http://") + host + path + "/sse",
  };
}

/** Seconds since the epoch at which a JWT expires, or null if it does not say. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4));
    const exp = JSON.parse(json).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch (_) {
    return null;
  }
}

// ---- the client: one connection at a time ---------------------------------

class Client {
  constructor(opts, env, relay) {
    this.opts = opts;
    this.env = env;
    // Where the SharedConnection's followers hear what happens (or null).
    this.relay = relay;
    this.urls = endpoints(opts.url, env.baseUrl);
    this.state = "idle";
    this.conn = null; // the live attempt or connection
    this.position = parsePosition(opts.since);
    this.attempt = 0; // failed attempts since the last welcome
    this.wsFailures = 0; // WebSocket attempts in a row without a welcome
    this.onSse = opts.transport === "sse" || (opts.transport === "auto" && !env.WebSocket);
    this.token = null;
    this.tokenFresh = false;
    this.freshTokenRefusals = 0;
    this.timers = { retry: null, watchdog: null, connect: null, refresh: null, probe: null, probeTimeout: null };
    this.heartbeatMs = 0;
    this.lastActivity = 0;
    this.offlineAt = 0;
    this.hiddenAt = 0;
    this.stopped = false;
    this.listeners = [];
    this.stats = { connects: 0, welcomes: 0, duplicates: 0, resets: 0 };
    // During a recovered resume: the newest seq the replay brings.
    this.replayUntil = null;
    // A WebSocket tried while on SSE, to see whether it works again.
    this.probe = null;
    this.probedSinceSwitch = false;
  }

  emit(fn, ...args) {
    callSafely(this.env, fn, args);
  }

  handle() {
    const client = this;
    return {
      close: () => client.stop(),
      get state() { return client.state; },
      get transport() { return client.conn && client.conn.welcomed ? client.conn.kind : null; },
      get position() { return formatPosition(client.position); },
      get stats() { return { ...client.stats }; },
    };
  }

  start() {
    const { env } = this;
    this.listen(env.window, "online", () => this.kick("online"));
    this.listen(env.window, "offline", () => { this.offlineAt = env.now(); });
    this.listen(env.document, "visibilitychange", () => {
      if (env.document.visibilityState === "hidden") {
        this.hiddenAt = env.now();
      } else if (this.hiddenAt && env.now() - this.hiddenAt >= this.opts.longHideMs) {
        this.hiddenAt = 0;
        this.kick("visible");
      }
    });
    this.connectNow();
  }

  listen(target, type, fn) {
    if (target && typeof target.addEventListener === "function") {
      target.addEventListener(type, fn);
      this.listeners.push(() => target.removeEventListener(type, fn));
    }
  }

  /** Ends everything; the last state is "closed" (the app asked) or "failed". */
  stop(finalState = "closed", info = {}) {
    if (this.stopped) return;
    this.stopped = true;
    for (const off of this.listeners) off();
    this.listeners = [];
    for (const name of Object.keys(this.timers)) this.clear(name);
    const conn = this.conn;
    this.conn = null;
    if (conn) conn.close(1000, "bye");
    if (this.probe) this.probe.close(1000, "bye");
    this.setState(finalState, { transport: null, ...info });
  }

  // ---- timers (all through env, so tests can drive time) ----

  set(name, ms, fn) {
    this.clear(name);
    this.timers[name] = this.env.setTimeout(() => {
      this.timers[name] = null;
      fn();
    }, Math.max(0, ms));
  }

  clear(name) {
    if (this.timers[name] !== null) {
      this.env.clearTimeout(this.timers[name]);
      this.timers[name] = null;
    }
  }

  // ---- state ----

  setState(state, info) {
    this.state = state;
    const detail = { transport: this.conn ? this.conn.kind : null, ...info };
    this.emit(this.opts.onState, state, detail);
    if (this.relay) this.relay({ type: "state", state, info: detail });
  }

  fail(reason) {
    this.stop("failed", { reason });
  }

  /** Reconnect now: online again, or visible after a long hide. */
  kick(why) {
    if (this.stopped) return;
    if (this.timers.retry !== null) {
      this.clear("retry");
      this.connectNow(why);
    } else if (this.conn && this.conn.welcomed) {
      const silentSince = this.lastActivity;
      const stale = this.heartbeatMs > 0 && this.env.now() - silentSince > this.heartbeatMs;
      const wentOffline = why === "online" && this.offlineAt > silentSince;
      if (stale || wentOffline) {
        this.drop(this.conn, { code: CLOSE_HEARTBEAT_TIMEOUT, reason: why + ": connection presumed dead", immediate: true });
      }
    }
  }

  // ---- connecting ----

  async connectNow(why) {
    if (this.stopped) return;
    const resuming = this.position !== null;
    this.setState("connecting", { attempt: this.attempt, reason: why });
    const placeholder = { kind: null, welcomed: false, close() {} };
    this.conn = placeholder;
    let token;
    try {
      token = await this.getToken();
    } catch (e) {
      if (this.conn !== placeholder) return;
      this.conn = null;
      if (this.stopped) return;
      if (e && e.permanent) return this.fail(e.message);
      return this.retryLater({ code: 1006, reason: "token: " + (e && e.message ? e.message : String(e)) });
    }
    if (this.conn !== placeholder || this.stopped) return;
    const kind = this.onSse ? "sse" : "websocket";
    const since = resuming && this.position ? formatPosition(this.position) : null;
    const query = "token=" + encodeURIComponent(token) + (since ? "&since=" + since : "");
    this.stats.connects += 1;
    const handlers = {
      message: (conn, msg) => this.onMessage(conn, msg),
      activity: (conn) => this.onActivity(conn),
      end: (conn, info) => this.onEnd(conn, info),
    };
    const conn = kind === "sse"
      ? openSse(this.env, this.urls.sse + "?" + query, handlers)
      : openWebSocket(this.env, this.urls.ws + "?heartbeat=1&" + query, handlers);
    conn.tokenFresh = this.tokenFresh;
    this.tokenFresh = false;
    this.conn = conn;
    this.set("connect", this.opts.connectTimeoutMs, () => {
      if (this.conn === conn && !conn.welcomed) this.drop(conn, { code: CLOSE_CONNECT_TIMEOUT, reason: "no welcome in time" });
    });
  }

  async getToken() {
    const margin = this.opts.tokenRefreshMarginMs;
    if (this.token !== null) {
      const exp = tokenExpiry(this.token);
      if (exp === null || exp * 1000 - this.env.wallNow() > margin) return this.token;
    }
    const token = await this.opts.token();
    if (typeof token !== "string" || token === "") {
      const e = new Error("the token callback gave no token");
      e.permanent = true;
      throw e;
    }
    this.token = token;
    this.tokenFresh = true;
    this.scheduleRefresh(token);
    return token;
  }

  /** Fetches the next token ahead of its need, so a reconnect never waits on an expired one. */
  scheduleRefresh(token) {
    const exp = tokenExpiry(token);
    if (exp === null) return;
    const at = exp * 1000 - this.opts.tokenRefreshMarginMs - this.env.wallNow();
    if (at <= 0) return;
    this.set("refresh", Math.min(at, 2 ** 31 - 1), async () => {
      try {
        const next = await this.opts.token();
        if (typeof next === "string" && next !== "" && !this.stopped) {
          this.token = next;
          this.tokenFresh = true;
          this.scheduleRefresh(next);
        }
      } catch (_) {
        this.token = null; // try again at the next connect
      }
    });
  }

  // ---- messages ----

  /** Anything from the server (a message, a heartbeat) shows the connection lives. */
  onActivity(conn) {
    if (conn !== this.conn || this.stopped) return;
    this.lastActivity = this.env.now();
    if (conn.welcomed) this.armWatchdog();
  }

  onMessage(conn, msg) {
    if (conn !== this.conn || this.stopped) return;
    if (msg.type === "welcome") this.onWelcome(conn, msg);
    else if (msg.type === "push" && conn.welcomed) this.onPush(msg);
    else if (msg.type === "close") conn.serverClose = msg;
  }

  onWelcome(conn, w) {
    conn.welcomed = true;
    this.clear("connect");
    this.stats.welcomes += 1;
    this.attempt = 0;
    this.freshTokenRefusals = 0;
    if (conn.kind === "websocket") this.wsFailures = 0;
    this.heartbeatMs = Number(w.heartbeat_ms) || 0;
    const previous = this.position;
    this.replayUntil = null;
    if (previous !== null && w.recovered === true && w.epoch === previous.epoch) {
      // Everything after our position follows, in order, up to w.seq.
      this.replayUntil = w.seq;
    } else {
      this.position = { epoch: w.epoch, seq: w.seq };
      if (previous !== null) {
        this.stats.resets += 1;
        const info = { epoch: w.epoch, seq: w.seq, since: formatPosition(previous) };
        this.emit(this.opts.onReset, info);
        if (this.relay) this.relay({ type: "reset", info });
      }
    }
    this.armWatchdog();
    this.setState("open", {
      transport: conn.kind, user: w.user, recovered: w.recovered, epoch: w.epoch, seq: w.seq,
      heartbeatMs: this.heartbeatMs,
    });
    if (conn.kind === "sse" && this.opts.transport === "auto" && this.timers.probe === null && !this.probe) {
      // The WebSocket failures may have been an outage rather than a
      // network that blocks WebSocket: check once now, then now and then.
      this.scheduleProbe(this.probedSinceSwitch ? this.opts.websocketRetryMs : 0);
      this.probedSinceSwitch = true;
    }
  }

  onPush(p) {
    if (this.position !== null && p.seq <= this.position.seq) {
      this.stats.duplicates += 1;
      return;
    }
    this.position = { epoch: this.position ? this.position.epoch : 0, seq: p.seq };
    const meta = { seq: p.seq, epoch: this.position.epoch, replayed: this.replayUntil !== null && p.seq <= this.replayUntil };
    this.emit(this.opts.onPush, p.data, meta);
    if (this.relay) this.relay({ type: "push", data: p.data, meta });
  }

  armWatchdog() {
    if (this.heartbeatMs <= 0) return;
    const conn = this.conn;
    this.set("watchdog", this.heartbeatMs + this.opts.heartbeatMarginMs, () => {
      if (this.conn === conn) this.drop(conn, { code: CLOSE_HEARTBEAT_TIMEOUT, reason: "no heartbeat" });
    });
  }

  // ---- losing a connection ----

  /** The SDK gives up on `conn` itself (timeout, presumed dead). */
  drop(conn, info) {
    conn.close(info.code, info.reason);
    this.onEnd(conn, info);
  }

  onEnd(conn, info) {
    if (conn !== this.conn || this.stopped) return;
    this.conn = null;
    this.clear("watchdog");
    this.clear("connect");
    if (conn.serverClose) info = { ...info, code: conn.serverClose.code, reason: conn.serverClose.reason };
    const unauthorized = info.status === 401 || info.code === 1008;
    if (unauthorized) {
      this.token = null; // never reuse a refused token
      if (conn.tokenFresh && ++this.freshTokenRefusals >= 2) {
        return this.fail("unauthorized: the token callback's tokens are refused (" + (info.reason || info.status || info.code) + ")");
      }
    }
    if (!conn.welcomed && conn.kind === "websocket" && this.opts.transport === "auto") {
      this.wsFailures += 1;
      if (this.wsFailures >= this.opts.sseAfterFailures && !this.onSse) {
        this.onSse = true;
        this.probedSinceSwitch = false;
      }
    }
    this.retryLater(info, conn);
  }

  retryLater(info, conn) {
    let delay;
    if (Number.isFinite(info.retryMs)) {
      delay = info.retryMs; // the server chose (SSE close events)
    } else if (info.code === 1012) {
      delay = this.env.random() * this.opts.restartSpreadMs;
    } else if (info.status === 401 || info.code === 1008 || info.immediate) {
      delay = this.opts.backoffMinMs; // a fresh token, or a network that just came back: now
    } else {
      delay = backoffDelay(this.attempt, this.opts, this.env.random);
      this.attempt += 1;
    }
    delay = Math.max(delay, this.opts.backoffMinMs);
    this.setState("reconnecting", {
      transport: conn ? conn.kind : null, code: info.code, reason: info.reason, status: info.status,
      delayMs: Math.round(delay), attempt: this.attempt,
    });
    this.set("retry", delay, () => this.connectNow("retry"));
  }

  // ---- back to WebSocket ----

  /** While on SSE: try a WebSocket now and then; switch back once one is welcomed. */
  scheduleProbe(delayMs) {
    this.set("probe", delayMs, async () => {
      if (this.stopped || !this.onSse || !this.env.WebSocket) return;
      let token;
      try {
        token = await this.getToken();
      } catch (_) {
        return this.scheduleProbe(this.opts.websocketRetryMs);
      }
      const url = this.urls.ws + "?heartbeat=1&token=" + encodeURIComponent(token);
      if (this.stopped) return;
      let settled = false;
      const settle = () => {
        settled = true;
        this.probe = null;
        this.clear("probeTimeout");
      };
      const probe = openWebSocket(this.env, url, {
        message: (_, msg) => {
          if (settled || msg.type !== "welcome") return;
          settle();
          probe.close(1000, "probe");
          this.switchToWebSocket();
        },
        activity: () => {},
        end: () => {
          if (settled) return;
          settle();
          if (!this.stopped && this.onSse) this.scheduleProbe(this.opts.websocketRetryMs);
        },
      });
      this.probe = probe;
      this.set("probeTimeout", this.opts.connectTimeoutMs, () => {
        if (settled) return;
        settle();
        probe.close(1000, "probe timeout");
        if (!this.stopped && this.onSse) this.scheduleProbe(this.opts.websocketRetryMs);
      });
    });
  }

  switchToWebSocket() {
    if (this.stopped || !this.onSse) return;
    this.onSse = false;
    this.wsFailures = 0;
    const conn = this.conn;
    this.conn = null;
    this.clear("watchdog");
    this.clear("retry");
    if (conn) conn.close(1000, "switching to WebSocket");
    this.connectNow("websocket works again");
  }
}

// ---- transports: each calls handlers.message / activity / end (once) --------

function openWebSocket(env, url, handlers) {
  let ended = false;
  const conn = { kind: "websocket", welcomed: false, close: null };
  let ws;
  const end = (info) => {
    if (ended) return;
    ended = true;
    handlers.end(conn, info);
  };
  try {
    ws = new env.WebSocket(url);
  } catch (e) {
    env.setTimeout(() => end({ code: 1006, reason: String(e && e.message ? e.message : e) }), 0);
    conn.close = () => { ended = true; };
    return conn;
  }
  ws.onmessage = (event) => {
    if (ended) return;
    handlers.activity(conn);
    let msg;
    try { msg = JSON.parse(typeof event.data === "string" ? event.data : ""); } catch (_) { return; }
    if (msg && msg.type === "ping") {
      try { ws.send('{"type":"pong"}'); } catch (_) { /* closing */ }
      return;
    }
    if (msg && typeof msg === "object") handlers.message(conn, msg);
  };
  ws.onclose = (event) => end({ code: event.code, reason: event.reason });
  ws.onerror = () => { /* a close event follows */ };
  conn.close = (code, reason) => {
    ended = true;
    try { ws.close(code >= 3000 || code === 1000 ? code : 1000, reason); } catch (_) { /* already closed */ }
  };
  return conn;
}

function openSse(env, url, handlers) {
  let ended = false;
  const abort = new env.AbortController();
  const conn = { kind: "sse", welcomed: false };
  const end = (info) => {
    if (ended) return;
    ended = true;
    handlers.end(conn, info);
  };
  conn.close = () => {
    ended = true;
    abort.abort();
  };
  (async () => {
    let response;
    try {
      response = await env.fetch(url, {
        signal: abort.signal,
        cache: "no-store",
        headers: { Accept: "text/event-stream" },
      });
    } catch (e) {
      return end({ code: 1006, reason: String(e && e.message ? e.message : e) });
    }
    if (response.status !== 200 || !response.body) {
      let text = "";
      try { text = (await response.text()).trim().slice(0, 200); } catch (_) { /* gone */ }
      return end({ status: response.status, code: response.status === 401 ? 1008 : 1006, reason: text || "HTTP " + response.status });
    }
    const parser = new SseParser();
    let closeInfo = null;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || ended) break;
        const items = parser.feed(decoder.decode(value, { stream: true }));
        for (const item of items) {
          if (ended) break;
          handlers.activity(conn);
          if (item.comment || item.data === undefined) continue;
          let msg;
          try { msg = JSON.parse(item.data); } catch (_) { continue; }
          if (msg && msg.type === "close") closeInfo = { code: msg.code, reason: msg.reason, retryMs: item.retry };
          if (msg && typeof msg === "object") handlers.message(conn, msg);
        }
      }
    } catch (e) {
      if (!ended) return end({ code: 1006, reason: String(e && e.message ? e.message : e) });
    }
    try { reader.cancel(); } catch (_) { /* done */ }
    end(closeInfo || { code: 1006, reason: "the event stream ended" });
  })();
  return conn;
}

/**
 * text/event-stream, the client side: text in, items out ({data, id, retry}
 * for an event, {comment: true} for a comment line). Lines end at CR, LF or
 * CRLF, even split across chunks.
 */
export class SseParser {
  constructor() {
    this.line = "";
    this.afterCr = false;
    this.event = {};
  }

  feed(text) {
    const out = [];
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 10 && this.afterCr) {
        this.afterCr = false;
        start = i + 1;
        continue;
      }
      this.afterCr = c === 13;
      if (c === 10 || c === 13) {
        const line = this.line + text.slice(start, i);
        this.line = "";
        start = i + 1;
        this.lineDone(line, out);
      }
    }
    this.line += text.slice(start);
    return out;
  }

  lineDone(line, out) {
    if (line === "") {
      const e = this.event;
      this.event = {};
      if (e.data !== undefined || e.retry !== undefined) out.push(e);
      return;
    }
    if (line[0] === ":") {
      out.push({ comment: true });
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.event.data = this.event.data === undefined ? value : this.event.data + "\n" + value;
    else if (field === "id") this.event.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.event.retry = Number(value);
  }
}

// ---- sharing one connection among tabs ------------------------------------

/**
 * Tabs that pass the same `share` key elect a leader with the Web Locks API
 * (the lock is released when its tab closes or crashes); the leader runs
 * the one connection and posts what happens on a BroadcastChannel; the
 * others deliver from there, de-duplicated by seq, and resume from their own
 * position if they become the leader.
 */
class SharedConnection {
  constructor(opts, env) {
    this.opts = opts;
    this.env = env;
    this.client = null;
    this.position = parsePosition(opts.since);
    this.state = "connecting";
    this.transport = null;
    this.closed = false;
    const name = "pushgate:" + opts.share;
    this.channel = new env.BroadcastChannel(name);
    this.channel.onmessage = (event) => this.fromLeader(event.data);
    this.abort = new env.AbortController();
    this.releaseLock = null;
    env.locks.request(name, { signal: this.abort.signal }, () => this.lead()).catch(() => { /* closed before leading */ });
    this.setState("connecting", { leader: false });
    return this.handle();
  }

  emit(fn, ...args) {
    callSafely(this.env, fn, args);
  }

  handle() {
    const self = this;
    return {
      close: () => self.close(),
      get state() { return self.client ? self.client.state : self.state; },
      get transport() { return self.client ? self.client.handle().transport : self.transport; },
      get position() { return formatPosition(self.client ? self.client.position : self.position); },
      get leader() { return self.client !== null; },
    };
  }

  lead() {
    if (this.closed) return Promise.resolve();
    const opts = {
      ...this.opts,
      since: formatPosition(this.position),
      onPush: (data, meta) => this.deliver(data, meta),
      onReset: (info) => this.emit(this.opts.onReset, info),
      onState: (state, info) => this.emit(this.opts.onState, state, { ...info, leader: true }),
    };
    this.client = new Client(opts, this.env, (msg) => this.channel.postMessage(msg));
    this.client.start();
    return new Promise((resolve) => { this.releaseLock = resolve; });
  }

  deliver(data, meta) {
    this.position = { epoch: meta.epoch, seq: meta.seq };
    this.emit(this.opts.onPush, data, meta);
  }

  fromLeader(msg) {
    if (this.client || this.closed || !msg) return;
    if (msg.type === "push") {
      const { meta } = msg;
      if (this.position && meta.epoch === this.position.epoch && meta.seq <= this.position.seq) return;
      this.deliver(msg.data, meta);
    } else if (msg.type === "reset") {
      this.position = { epoch: msg.info.epoch, seq: msg.info.seq };
      this.emit(this.opts.onReset, msg.info);
    } else if (msg.type === "state") {
      this.state = msg.state;
      this.transport = msg.info.transport;
      this.emit(this.opts.onState, msg.state, { ...msg.info, leader: false });
    }
  }

  setState(state, info) {
    this.state = state;
    this.emit(this.opts.onState, state, { transport: null, ...info });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.client) this.client.stop();
    else this.setState("closed", { leader: false });
    this.abort.abort();
    if (this.releaseLock) this.releaseLock();
    this.channel.close();
  }
}

// ---- small things ----------------------------------------------------------

function parsePosition(text) {
  if (typeof text !== "string") return null;
  const m = /^(\d+):(\d+)$/.exec(text);
  return m ? { epoch: Number(m[1]), seq: Number(m[2]) } : null;
}

function formatPosition(p) {
  return p ? p.epoch + ":" + p.seq : null;
}

/** Calls an app callback; an exception in it is reported, never breaks the SDK. */
function callSafely(env, fn, args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (e) {
    env.reportError(e);
  }
}

/** What the SDK uses from its surroundings; tests and Node pass their own. */
function environment(given = {}) {
  const g = globalThis;
  const perf = g.performance;
  return {
    WebSocket: g.WebSocket,
    fetch: g.fetch ? g.fetch.bind(g) : undefined,
    AbortController: g.AbortController,
    BroadcastChannel: g.BroadcastChannel,
    locks: g.navigator && g.navigator.locks,
    window: typeof g.addEventListener === "function" ? g : null,
    document: g.document || null,
    baseUrl: g.location ? g.location.href : undefined,
    setTimeout: (fn, ms) => g.setTimeout(fn, ms),
    clearTimeout: (id) => g.clearTimeout(id),
    now: () => (perf ? perf.now() : Date.now()),
    wallNow: () => Date.now(),
    random: Math.random,
    // The page's error reporting (window.onerror, the console) sees an
    // exception thrown by an app callback; the SDK carries on.
    reportError: typeof g.reportError === "function"
      ? (e) => g.reportError(e)
      : (e) => queueMicrotask(() => { throw e; }),
    ...given,
  };
}
