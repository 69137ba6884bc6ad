// The SDK's logic with Node's test runner and simulated time (harness.mjs):
// backoff bounds and spread, de-duplication, order, reset, token refresh,
// dead connections, the SSE fallback and the way back, drains, page events,
// and sharing one connection among tabs.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  connect, backoffDelay, endpoints, tokenExpiry, SseParser,
  CLOSE_HEARTBEAT_TIMEOUT,
} from "../pushgate.js";
import { world, jwt, sseEvent, seeded, settle, Locks } from "./harness.mjs";

const HOUR_S = 3600;

/** A client in `w` that records what it reports. */
function start(w, extra = {}) {
  const seen = { pushes: [], resets: [], states: [], tokens: 0 };
  const exp = Math.floor(w.clock.wallNow() / 1000) + HOUR_S;
  const conn = connect({
    url: "https://push.example",
    token: async () => { seen.tokens += 1; return jwt(exp); },
    onPush: (data, meta) => seen.pushes.push({ data, ...meta }),
    onReset: (info) => seen.resets.push(info),
    onState: (state, info) => seen.states.push({ state, ...info }),
    env: w.env,
    ...extra,
  });
  return { conn, seen };
}

function param(url, name) {
  return new URL(url).searchParams.get(name);
}

// ---- backoff --------------------------------------------------------------

test("backoff: each delay lies below min(cap, base·2^n); the jitter applies after the cap", () => {
  const opts = { backoffBaseMs: 500, backoffCapMs: 20000 };
  const random = seeded(3);
  for (let n = 0; n < 12; n++) {
    const ceiling = Math.min(20000, 500 * 2 ** n);
    const draws = Array.from({ length: 2000 }, () => backoffDelay(n, opts, random));
    assert.ok(draws.every((d) => d >= 0 && d < ceiling), `attempt ${n}`);
    // Full jitter: the whole range is used, from near 0 to near the ceiling.
    assert.ok(Math.min(...draws) < ceiling * 0.02, `attempt ${n} min`);
    assert.ok(Math.max(...draws) > ceiling * 0.98, `attempt ${n} max`);
  }
  // Past the cap the delays stay spread over [0, cap), not bunched at the cap
  // (jitter before the cap would put them all at 20 s and re-synchronise a fleet).
  const capped = Array.from({ length: 10000 }, () => backoffDelay(20, opts, random));
  const mean = capped.reduce((a, b) => a + b, 0) / capped.length;
  assert.ok(Math.abs(mean - 10000) < 400, `mean ${mean}`);
  const bins = new Array(10).fill(0);
  for (const d of capped) bins[Math.floor(d / 2000)] += 1;
  assert.ok(bins.every((b) => b > 800 && b < 1200), `bins ${bins}`);
  assert.equal(backoffDelay(0, { ...opts, backoffMinMs: 100 }, () => 0), 100);
});

test("a fleet that loses its server reconnects spread over the first backoff window", async () => {
  const firsts = [];
  for (let i = 0; i < 300; i++) {
    const w = world({ seed: i + 1 });
    const { conn } = start(w);
    await settle();
    w.lastSocket().welcome({ epoch: 1, seq: 0 });
    w.lastSocket().drop(1006);
    await settle();
    const dropped = w.clock.now();
    while (w.sockets.length < 2) await w.clock.advance(10);
    firsts.push(w.sockets[1] && w.log[1].at - dropped);
    conn.close();
  }
  assert.ok(firsts.every((d) => d >= 0 && d <= 510), `${Math.max(...firsts)}`);
  const bins = new Array(5).fill(0);
  for (const d of firsts) bins[Math.min(4, Math.floor(d / 100))] += 1;
  assert.ok(bins.every((b) => b > 30), `reconnects per 100 ms: ${bins}`);
});

// ---- delivery -------------------------------------------------------------

test("pushes arrive once and in order across a reconnect with since", async () => {
  const w = world();
  const { conn, seen } = start(w);
  await settle();
  const first = w.lastSocket();
  assert.equal(first.url.split("?")[0], "wss://push.example/ws");
  assert.equal(param(first.url, "heartbeat"), "1");
  assert.equal(param(first.url, "since"), null, "a first connect has no since");
  first.welcome({ epoch: 9, seq: 4 });
  assert.equal(conn.state, "open");
  assert.equal(conn.transport, "websocket");
  first.push(5);
  first.push(7);
  first.push(7); // a duplicate
  first.push(6); // older than what was delivered: dropped
  assert.deepEqual(seen.pushes.map((p) => p.seq), [5, 7]);
  assert.equal(conn.position, "9:7");
  first.drop(1006);
  await w.clock.advance(600);
  const second = w.lastSocket();
  assert.notEqual(second, first);
  assert.equal(param(second.url, "since"), "9:7");
  second.welcome({ epoch: 9, seq: 10, recovered: true });
  second.push(7); // the server replays from since; one it had already sent
  second.push(8);
  second.push(10);
  second.push(11);
  assert.deepEqual(seen.pushes.map((p) => p.seq), [5, 7, 8, 10, 11]);
  assert.deepEqual(seen.pushes.map((p) => p.replayed), [false, false, true, true, false]);
  assert.equal(conn.stats.duplicates, 3);
  assert.deepEqual(seen.resets, []);
  conn.close();
  assert.equal(conn.state, "closed");
  await w.clock.advance(60000);
  assert.equal(w.sockets.length, 2, "no reconnect after close()");
});

test("a welcome with recovered:false calls onReset and moves to the new position", async () => {
  const w = world();
  const { conn, seen } = start(w);
  await settle();
  w.lastSocket().welcome({ epoch: 1, seq: 0 });
  w.lastSocket().push(3);
  w.lastSocket().drop(1012, "server restarting; reconnect");
  await w.clock.advance(1000);
  assert.equal(param(w.lastSocket().url, "since"), "1:3");
  w.lastSocket().welcome({ epoch: 2, seq: 5, recovered: false });
  assert.deepEqual(seen.resets, [{ epoch: 2, seq: 5, since: "1:3" }]);
  assert.equal(conn.position, "2:5");
  w.lastSocket().push(4); // below the new position: not delivered
  w.lastSocket().push(6);
  assert.deepEqual(seen.pushes.map((p) => [p.epoch, p.seq]), [[1, 3], [2, 6]]);
  conn.close();
});

test("a saved position is resumed from on the first connect", async () => {
  const w = world();
  const { conn, seen } = start(w, { since: "5:40" });
  await settle();
  assert.equal(param(w.lastSocket().url, "since"), "5:40");
  w.lastSocket().welcome({ epoch: 5, seq: 42, recovered: true });
  w.lastSocket().push(41);
  assert.deepEqual(seen.pushes.map((p) => [p.seq, p.replayed]), [[41, true]]);
  conn.close();
});

test("an exception in an app callback does not break delivery", async () => {
  const w = world();
  const errors = [];
  w.env.reportError = (e) => errors.push(e.message);
  let calls = 0;
  const { conn } = start(w, { onPush: () => { calls += 1; throw new Error("app bug"); } });
  await settle();
  w.lastSocket().welcome({ epoch: 1, seq: 0 });
  w.lastSocket().push(1);
  w.lastSocket().push(2);
  assert.equal(calls, 2);
  assert.deepEqual(errors, ["app bug", "app bug"]);
  assert.equal(conn.state, "open");
  conn.close();
});

// ---- drains and page events -----------------------------------------------

test("a drain's close 1012 is spread over restartSpreadMs", async () => {
  const delays = [];
  for (let i = 0; i < 200; i++) {
    const w = world({ seed: 1000 + i });
    const { conn, seen } = start(w, { restartSpreadMs: 2000 });
    await settle();
    w.lastSocket().welcome({ epoch: 1, seq: 0 });
    w.lastSocket().drop(1012, "server restarting; reconnect");
    await settle();
    delays.push(seen.states.at(-1).delayMs);
    conn.close();
  }
  assert.ok(delays.every((d) => d >= 0 && d <= 2000));
  const bins = new Array(4).fill(0);
  for (const d of delays) bins[Math.min(3, Math.floor(d / 500))] += 1;
  assert.ok(bins.every((b) => b > 30), `per 500 ms: ${bins}`);
});

test("online and a long hide reconnect at once", async () => {
  const w = world();
  const { conn } = start(w, { backoffBaseMs: 10000, backoffMinMs: 5000 });
  await settle();
  w.lastSocket().drop(1006); // no welcome: a failed attempt, waits ≥ 5 s
  await w.clock.advance(100);
  assert.equal(w.sockets.length, 1);
  w.window.dispatchEvent(new Event("online"));
  await settle();
  assert.equal(w.sockets.length, 2, "online: reconnect now");
  w.lastSocket().welcome({ epoch: 1, seq: 0, heartbeat_ms: 30000 });
  // Hidden for two minutes: timers were throttled, the socket may be dead.
  w.setVisibility("hidden");
  w.clock.ms += 120000; // time passes without timers running (a frozen tab)
  w.setVisibility("visible");
  await settle();
  assert.ok(w.sockets[1].closedByClient, "the silent connection is dropped");
  await w.clock.advance(5000);
  assert.equal(w.sockets.length, 3);
  // A short hide changes nothing.
  w.lastSocket().welcome({ epoch: 1, seq: 0, heartbeat_ms: 30000 });
  w.setVisibility("hidden");
  await w.clock.advance(1000);
  w.setVisibility("visible");
  await settle();
  assert.equal(w.lastSocket().closedByClient, null);
  // Offline then online while open: the connection saw nothing since, so it is replaced.
  w.window.dispatchEvent(new Event("offline"));
  await w.clock.advance(10);
  w.window.dispatchEvent(new Event("online"));
  await settle();
  assert.ok(w.lastSocket().closedByClient);
  conn.close();
});

// ---- dead connections -------------------------------------------------------

test("text pings are answered and keep the connection; silence past the interval drops it", async () => {
  const w = world();
  const { conn, seen } = start(w, { heartbeatMarginMs: 500 });
  await settle();
  const ws = w.lastSocket();
  ws.welcome({ epoch: 1, seq: 0, heartbeat_ms: 1000 });
  for (let i = 0; i < 5; i++) {
    await w.clock.advance(1000);
    ws.message({ type: "ping" });
  }
  assert.deepEqual(ws.sent, Array(5).fill('{"type":"pong"}'));
  assert.equal(ws.closedByClient, null);
  await w.clock.advance(1499);
  assert.equal(ws.closedByClient, null);
  await w.clock.advance(2);
  assert.equal(ws.closedByClient.code, CLOSE_HEARTBEAT_TIMEOUT, "1.5 s of silence");
  const down = seen.states.find((s) => s.state === "reconnecting");
  assert.equal(down.reason, "no heartbeat");
  await w.clock.advance(500);
  assert.equal(w.sockets.length, 2);
  conn.close();
});

test("an attempt that is never welcomed is abandoned", async () => {
  const w = world();
  const { conn } = start(w, { connectTimeoutMs: 3000 });
  await settle();
  await w.clock.advance(3000);
  assert.ok(w.sockets[0].closedByClient);
  await w.clock.advance(1000);
  assert.equal(w.sockets.length, 2);
  conn.close();
});

// ---- SSE ------------------------------------------------------------------

test("after repeated WebSocket failures the SDK switches to SSE, and back when WebSocket works", async () => {
  const w = world();
  const { conn, seen } = start(w, { websocketRetryMs: 60000 });
  await settle();
  for (let i = 0; i < 3; i++) {
    w.lastSocket().drop(1006); // e.g. a proxy that refuses upgrades
    await w.clock.advance(5000);
  }
  assert.equal(w.sockets.length, 3);
  assert.equal(w.fetches.length, 1, "the fourth attempt is SSE");
  const sse = w.lastFetch();
  assert.equal(sse.url.split("?")[0], "https://push.example/sse");
  assert.ok(param(sse.url, "token"));
  sse.open();
  sse.write("retry: 1500\nid: 3:2\n");
  sse.write("data: " + JSON.stringify({ type: "welcome", user: "u", epoch: 3, seq: 2, heartbeat_ms: 30000 }) + "\n\n");
  await settle();
  assert.equal(conn.state, "open");
  assert.equal(conn.transport, "sse");
  sse.write(sseEvent({ type: "push", seq: 3, data: { a: 1 } }, { id: "3:3" }) + ":\n\n");
  sse.write('id: 3:4\ndata: {"type":"push","seq":4,\ndata: "data":[1,\ndata: 2]}\n\n');
  await settle();
  assert.deepEqual(seen.pushes.map((p) => p.data), [{ a: 1 }, [1, 2]]);
  // Right after the switch, one WebSocket probe (the failures may have been
  // an outage): it fails too, so the network blocks WebSocket.
  await w.clock.advance(0);
  assert.equal(w.sockets.length, 4);
  w.lastSocket().drop(1006);
  await settle();
  assert.equal(conn.transport, "sse");
  // A minute later a WebSocket is tried again; it works: the SDK moves back.
  await w.clock.advance(60000);
  assert.equal(w.sockets.length, 5);
  const probe = w.lastSocket();
  assert.equal(param(probe.url, "since"), null, "a probe does not resume");
  probe.welcome({ epoch: 3, seq: 4 });
  await settle();
  assert.deepEqual(probe.closedByClient, { code: 1000, reason: "probe" });
  assert.ok(sse.aborted, "the SSE stream is closed");
  assert.equal(w.sockets.length, 6);
  const back = w.lastSocket();
  assert.equal(param(back.url, "since"), "3:4", "the switch resumes");
  back.welcome({ epoch: 3, seq: 5, recovered: true });
  back.push(5);
  assert.equal(conn.transport, "websocket");
  assert.deepEqual(seen.pushes.map((p) => p.seq), [3, 4, 5]);
  conn.close();
});

test("an outage is not mistaken for a network that blocks WebSocket", async () => {
  const w = world();
  const { conn } = start(w, { websocketRetryMs: 600000 });
  await settle();
  w.lastSocket().welcome({ epoch: 1, seq: 0 });
  // The server is down for a while: WebSocket attempts fail, then SSE ones.
  w.lastSocket().drop(1006);
  for (let i = 0; i < 3; i++) {
    await w.clock.advance(5000);
    w.lastSocket().drop(1006);
  }
  await w.clock.advance(10000);
  assert.equal(w.fetches.length, 1, "SSE after three WebSocket failures");
  // It is back: SSE answers first, and the probe right after shows WebSocket works.
  const sse = w.lastFetch().open();
  sse.write(sseEvent({ type: "welcome", epoch: 2, seq: 0 }));
  await w.clock.advance(0);
  assert.equal(w.sockets.length, 5, "the probe");
  w.lastSocket().welcome({ epoch: 2, seq: 0 });
  await settle();
  assert.ok(sse.aborted);
  w.lastSocket().welcome({ epoch: 2, seq: 0, recovered: true });
  assert.equal(conn.transport, "websocket", "back within a moment, not after websocketRetryMs");
  conn.close();
});

test("a probe that fails keeps SSE and tries again later", async () => {
  const w = world();
  const { conn } = start(w, { transport: "auto", sseAfterFailures: 1, websocketRetryMs: 10000 });
  await settle();
  w.lastSocket().drop(1006);
  await w.clock.advance(1000);
  const sse = w.lastFetch().open();
  sse.write(sseEvent({ type: "welcome", epoch: 1, seq: 0 }));
  await w.clock.advance(0);
  assert.equal(w.sockets.length, 2, "the first probe, at once");
  w.lastSocket().drop(1006);
  await w.clock.advance(10000);
  assert.equal(w.sockets.length, 3, "then every websocketRetryMs");
  w.lastSocket().drop(1006);
  await settle();
  assert.equal(sse.aborted, false);
  assert.equal(conn.transport, "sse");
  await w.clock.advance(10000);
  assert.equal(w.sockets.length, 4, "tried again");
  conn.close();
  assert.ok(sse.aborted);
});

test("an SSE close event's retry is the delay; a drain spreads it", async () => {
  const w = world();
  const { conn, seen } = start(w, { transport: "sse" });
  await settle();
  const sse = w.lastFetch().open();
  sse.write(sseEvent({ type: "welcome", epoch: 1, seq: 0, heartbeat_ms: 30000 }, { retry: 3000, id: "1:0" }));
  sse.write(sseEvent({ type: "close", code: 1012, reason: "server restarting; reconnect" }, { retry: 737 }));
  sse.end();
  await settle();
  const down = seen.states.at(-1);
  assert.equal(down.state, "reconnecting");
  assert.equal(down.code, 1012);
  assert.equal(down.delayMs, 737);
  await w.clock.advance(736);
  assert.equal(w.fetches.length, 1);
  await w.clock.advance(1);
  assert.equal(w.fetches.length, 2);
  assert.equal(param(w.lastFetch().url, "since"), "1:0");
  conn.close();
});

test("SSE heartbeats (comments) keep the connection; their absence drops it", async () => {
  const w = world();
  const { conn } = start(w, { transport: "sse", heartbeatMarginMs: 1000 });
  await settle();
  const sse = w.lastFetch().open();
  sse.write(sseEvent({ type: "welcome", epoch: 1, seq: 0, heartbeat_ms: 2000 }));
  for (let i = 0; i < 4; i++) {
    await w.clock.advance(2000);
    sse.write(":\n\n");
  }
  assert.equal(sse.aborted, false);
  await w.clock.advance(3001);
  assert.ok(sse.aborted);
  conn.close();
});

// ---- tokens ---------------------------------------------------------------

test("the token is cached, refreshed before it expires, and fetched anew after a 401", async () => {
  const w = world();
  const nowS = () => Math.floor(w.clock.wallNow() / 1000);
  const issued = [];
  const token = async () => {
    const t = jwt(nowS() + 300, "u" + issued.length);
    issued.push(t);
    return t;
  };
  const { conn } = start(w, { transport: "sse", token, tokenRefreshMarginMs: 60000 });
  await settle();
  assert.equal(issued.length, 1);
  let sse = w.lastFetch().open();
  sse.write(sseEvent({ type: "welcome", epoch: 1, seq: 0 }));
  // Refreshed 60 s before its exp (300 s), without a reconnect.
  await w.clock.advance(239000);
  assert.equal(issued.length, 1);
  await w.clock.advance(1000);
  assert.equal(issued.length, 2);
  assert.equal(w.fetches.length, 1, "the connection stays");
  // A reconnect uses the refreshed token.
  sse.end();
  await w.clock.advance(600);
  assert.equal(param(w.lastFetch().url, "token"), issued[1]);
  // The server refuses it (say the secret rotated): a new one at once.
  w.lastFetch().refuse(401, "invalid token: bad signature");
  await w.clock.advance(0);
  assert.equal(issued.length, 3);
  assert.equal(param(w.lastFetch().url, "token"), issued[2]);
  sse = w.lastFetch().open();
  sse.write(sseEvent({ type: "welcome", epoch: 1, seq: 0 }));
  await settle();
  assert.equal(conn.state, "open");
  conn.close();
});

test("a token that stays refused ends in 'failed' instead of a reconnect loop", async () => {
  const w = world();
  const { conn, seen } = start(w, { transport: "sse" });
  for (let i = 0; i < 3; i++) {
    await w.clock.advance(0);
    w.lastFetch().refuse(401, "invalid token: bad signature");
    await settle();
  }
  assert.equal(conn.state, "failed");
  assert.match(seen.states.at(-1).reason, /unauthorized/);
  assert.ok(!seen.states.some((s) => s.state === "closed"), "failed, not closed");
  assert.equal(seen.tokens, 2, "two fresh tokens, both refused");
  const fetches = w.fetches.length;
  await w.clock.advance(600000);
  assert.equal(w.fetches.length, fetches, "no more attempts");
  assert.equal(w.clock.pending(), 0, "no timer left");
});

test("a token callback that fails is retried with backoff; one that gives nothing fails", async () => {
  const w = world();
  let calls = 0;
  const { conn } = start(w, { token: async () => { calls += 1; if (calls < 3) throw new Error("backend down"); return jwt(9e9); } });
  await w.clock.advance(5000);
  assert.equal(calls, 3);
  assert.equal(w.sockets.length, 1);
  conn.close();
  const w2 = world();
  const { conn: c2, seen } = start(w2, { token: async () => "" });
  await settle();
  assert.equal(c2.state, "failed");
  assert.match(seen.states.at(-1).reason, /no token/);
});

// ---- tabs -------------------------------------------------------------------

test("tabs share one connection: the leader relays, a follower takes over with its position", async () => {
  const w = world();
  const locks = new Locks();
  const key = "share-" + process.pid + "-" + Date.now();
  const env = { ...w.env, locks, BroadcastChannel };
  const a = start(w, { share: key, env });
  await settle();
  const b = start(w, { share: key, env });
  await settle();
  assert.equal(w.sockets.length, 1, "one connection for two tabs");
  assert.equal(a.conn.leader, true);
  assert.equal(b.conn.leader, false);
  w.lastSocket().welcome({ epoch: 4, seq: 0 });
  w.lastSocket().push(1);
  w.lastSocket().push(2);
  await new Promise((resolve) => setTimeout(resolve, 50)); // BroadcastChannel is asynchronous
  assert.deepEqual(a.seen.pushes.map((p) => p.seq), [1, 2]);
  assert.deepEqual(b.seen.pushes.map((p) => p.seq), [1, 2]);
  assert.equal(b.conn.state, "open");
  // The leader's tab closes: the follower leads and resumes from 4:2.
  a.conn.close();
  await settle();
  assert.equal(b.conn.leader, true);
  assert.equal(w.sockets.length, 2);
  assert.equal(param(w.lastSocket().url, "since"), "4:2");
  w.lastSocket().welcome({ epoch: 4, seq: 3, recovered: true });
  w.lastSocket().push(3);
  assert.deepEqual(b.seen.pushes.map((p) => p.seq), [1, 2, 3]);
  b.conn.close();
});

// ---- small parts ----------------------------------------------------------

test("the SSE parser reads any split and any line ending", () => {
  const text = "retry: 10\r\nid: 1:2\r\ndata: a\r\ndata: b\r\n\r\n:\n\ndata: {\"x\":1}\r\rdata:no-space\n\n";
  const whole = new SseParser().feed(text);
  assert.deepEqual(whole, [
    { retry: 10, id: "1:2", data: "a\nb" },
    { comment: true },
    { data: '{"x":1}' },
    { data: "no-space" },
  ]);
  for (let i = 0; i <= text.length; i++) {
    const p = new SseParser();
    assert.deepEqual([...p.feed(text.slice(0, i)), ...p.feed(text.slice(i))], whole, `split ${i}`);
  }
});

test("endpoints and token expiry", () => {
  assert.deepEqual(endpoints("https://push.example"), { ws: "wss://push.example/ws", sse: "https://push.example/sse" });
  assert.deepEqual(endpoints("ws://h:8080/ws"), { ws: "ws://h:8080/ws", sse: "http://h:8080/sse" });
  assert.deepEqual(endpoints("/", "http://localhost:8080/demo?x=1"), { ws: "ws://localhost:8080/ws", sse: "http://localhost:8080/sse" });
  assert.deepEqual(endpoints("https://h/push/"), { ws: "wss://h/push/ws", sse: "https://h/push/sse" });
  assert.equal(tokenExpiry(jwt(1234)), 1234);
  assert.equal(tokenExpiry("not a jwt"), null);
});
