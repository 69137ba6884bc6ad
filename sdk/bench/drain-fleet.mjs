// 1,000 SDK clients (pushgate.js in Node) against a gateway that drains onto
// a successor on the same port: do their reconnects spread out, and is any
// notification lost? Run by tests/sdk.rs, which starts the gateways; it
// talks to this script by lines on stdin/stdout:
//
//   → {"event":"ready",…}        every client welcomed by the first server and
//                                the first round of pushes delivered to all
//   ← successor <admin addr>     the successor listens: push there from now on
//   → {"event":"pushing",…}      pushing to the successor; drain the first now
//   → {"event":"done",…}         every client moved; the report (and its files)
//   or {"event":"error",…} and exit status 1. Every wait is bounded.
//
// "Lost" means a push neither delivered nor covered by a reset that came
// after the push was recorded (the app refetches its state at a reset, so it
// learns everything the backend recorded before). Each push is recorded
// before it is sent.
//
// Usage: node --experimental-websocket drain-fleet.mjs --url http://127.0.0.1:PORT
//        --admin ADDR --secret-file FILE [--clients 1000] [--sse-every 5]
//        [--out DIR] [--timeout-ms 90000]
// (Node ≥ 22 has WebSocket without the flag.)

import { createHmac } from "node:crypto";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { createInterface } from "node:readline";
import { connect } from "../pushgate.js";

const args = parseArgs(process.argv.slice(2), {
  url: null,
  admin: null,
  "secret-file": null,
  clients: "1000",
  "sse-every": "5",
  out: null,
  "timeout-ms": "90000",
  "push-interval-ms": "100",
});
const CLIENTS = Number(args.clients);
const SSE_EVERY = Number(args["sse-every"]);
const PUSH_INTERVAL_MS = Number(args["push-interval-ms"]);
const BIN_MS = 100;
// The stdin line reader, made on first use.
let lines = null;
const secret = readFileSync(args["secret-file"], "utf8").trim();
const started = performance.now();
const now = () => performance.now() - started;
setTimeout(() => fail(`did not finish within ${args["timeout-ms"]} ms`), Number(args["timeout-ms"])).unref();

if (typeof WebSocket !== "function") fail("no global WebSocket: run node with --experimental-websocket (Node 20) or Node ≥ 22");

// ---- tokens (HS256, as a backend mints them) --------------------------------

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = b64({ alg: "HS256", typ: "JWT" }) + "." + b64(claims);
  return body + "." + createHmac("sha256", secret).update(body).digest("base64url");
}

function token(sub, aud) {
  const iat = Math.floor(Date.now() / 1000);
  return jwt({ sub, aud, iat, exp: iat + 3600 });
}

// ---- the backend: records each push, then sends it --------------------------

const pushes = []; // { n, recordedAt }
let adminAddr = args.admin;

async function pushAll(users) {
  const n = pushes.length;
  pushes.push({ n, recordedAt: now() });
  const res = await fetch(`http://${adminAddr}/v1/push`, {
    method: "POST",
    headers: { Authorization: "Bearer " + token("admin", "pushgate-admin"), "Content-Type": "application/json" },
    body: JSON.stringify({ users, data: { n } }),
  });
  if (res.status !== 200) fail(`push ${n}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

// ---- the fleet --------------------------------------------------------------

const clients = [];
for (let i = 0; i < CLIENTS; i++) {
  const user = "fleet-" + i;
  const c = {
    user,
    transport: SSE_EVERY > 0 && i % SSE_EVERY === 0 ? "sse" : "websocket",
    delivered: [],
    duplicates: 0,
    disorder: 0,
    resets: [],
    welcomes: [],
    closes: [],
  };
  c.conn = connect({
    url: args.url,
    transport: c.transport,
    token: () => token(user, "pushgate-client"),
    onPush: (data) => {
      const last = c.delivered.at(-1);
      if (c.delivered.includes(data.n)) c.duplicates += 1;
      else if (last !== undefined && data.n < last) c.disorder += 1;
      c.delivered.push(data.n);
    },
    onReset: (info) => c.resets.push({ at: now(), ...info }),
    onState: (state, info) => {
      if (state === "open") c.welcomes.push({ at: now(), epoch: info.epoch, transport: info.transport });
      else if (state === "reconnecting") c.closes.push({ at: now(), code: info.code, delayMs: info.delayMs });
    },
    env: { window: null, document: null, baseUrl: undefined },
  });
  clients.push(c);
}
const users = clients.map((c) => c.user);

await until("every client welcomed", () => clients.every((c) => c.welcomes.length > 0), 30000);
const firstEpoch = clients[0].welcomes[0].epoch;
// A first round on the first server, which every client must get.
for (let i = 0; i < 3; i++) await pushAll(users);
await until("the first round delivered", () => clients.every((c) => c.delivered.length === 3), 20000);
emit({ event: "ready", clients: CLIENTS, epoch: firstEpoch, elapsed_ms: Math.round(now()) });

// ---- the drain ----------------------------------------------------------------

const line = await nextLine();
const m = /^successor (\S+)$/.exec(line || "");
if (!m) fail(`expected "successor <addr>", got ${JSON.stringify(line)}`);
adminAddr = m[1];
let pushing = true;
let pushErrors = 0;
const pusher = (async () => {
  while (pushing) {
    try { await pushAll(users); } catch (e) { pushErrors += 1; }
    await sleep(PUSH_INTERVAL_MS);
  }
})();
emit({ event: "pushing", to: adminAddr });

const moved = (c) => c.welcomes.some((w) => w.epoch !== firstEpoch);
await until("every client on the successor", () => clients.every(moved), Number(args["timeout-ms"]) - 10000);
pushing = false;
await pusher;
// A last push after everyone moved: every client must get it live.
await pushAll(users);
const last = pushes.length - 1;
await until("the last push delivered", () => clients.every((c) => c.delivered.includes(last)), 20000);

// ---- the report ---------------------------------------------------------------

let lost = 0;
const lostExamples = [];
for (const c of clients) {
  const got = new Set(c.delivered);
  for (const p of pushes) {
    const refetched = c.resets.some((r) => r.at >= p.recordedAt);
    if (!got.has(p.n) && !refetched) {
      lost += 1;
      if (lostExamples.length < 5) lostExamples.push({ user: c.user, n: p.n });
    }
  }
}
const drainCloses = clients.flatMap((c) => c.closes.filter((x) => x.code === 1012).map((x) => x.at));
const t0 = Math.min(...drainCloses);
const reconnects = clients.map((c) => c.welcomes.find((w) => w.epoch !== firstEpoch).at - t0);
const closes = drainCloses.map((at) => at - t0);
const bins = (times) => {
  const out = new Array(Math.floor(Math.max(...times, 0) / BIN_MS) + 1).fill(0);
  for (const t of times) out[Math.floor(t / BIN_MS)] += 1;
  return out;
};
const reconnectBins = bins(reconnects);
const closeBins = bins(closes);
const report = {
  clients: CLIENTS,
  sse_clients: clients.filter((c) => c.transport === "sse").length,
  pushes: pushes.length,
  push_errors: pushErrors,
  lost,
  lost_examples: lostExamples,
  // Delivered to the app twice (must be 0); the SDK drops the replayed
  // copies of what it already delivered, counted apart.
  duplicates: clients.reduce((a, c) => a + c.duplicates, 0),
  dropped_by_sdk: clients.reduce((a, c) => a + c.conn.stats.duplicates, 0),
  out_of_order: clients.reduce((a, c) => a + c.disorder, 0),
  resets: clients.reduce((a, c) => a + c.resets.length, 0),
  drain_closes: drainCloses.length,
  moved: clients.filter(moved).length,
  bin_ms: BIN_MS,
  close_span_ms: Math.round(Math.max(...closes)),
  reconnect_span_ms: Math.round(Math.max(...reconnects) - Math.min(...reconnects)),
  reconnects_per_bin_max: Math.max(...reconnectBins),
  closes_per_bin: closeBins,
  reconnects_per_bin: reconnectBins,
  elapsed_ms: Math.round(now()),
};
if (args.out) {
  mkdirSync(args.out, { recursive: true });
  writeFileSync(args.out + "/drain-fleet.json", JSON.stringify(report, null, 2) + "\n");
  writeFileSync(args.out + "/drain-fleet.svg", chart(report));
}
for (const c of clients) c.conn.close();
emit({ event: "done", report });
process.exit(0);

// ---- the chart ------------------------------------------------------------------

/** Reconnects (and the drain's closes) per 100 ms, as an SVG bar chart. */
function chart(r) {
  const W = 760, H = 300, L = 50, R = 20, T = 40, B = 50;
  const n = Math.max(r.reconnects_per_bin.length, r.closes_per_bin.length);
  const top = Math.max(10, ...r.reconnects_per_bin, ...r.closes_per_bin) * 1.1;
  const step = Math.pow(10, Math.floor(Math.log10(top)));
  const yMax = Math.ceil(top / step) * step;
  const bw = (W - L - R) / n;
  const x = (i) => L + i * bw;
  const y = (v) => T + (H - T - B) * (1 - v / yMax);
  const parts = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="DejaVu Sans, sans-serif" font-size="11">`);
  parts.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  parts.push(`<text x="${L}" y="18" font-size="13" font-weight="bold">${r.clients} SDK clients, drain onto a successor: per ${r.bin_ms} ms</text>`);
  parts.push(`<text x="${L}" y="32" fill="#555">closed with 1012 (grey) · reconnected to the successor (blue) · lost ${r.lost} · duplicates ${r.duplicates}</text>`);
  for (let v = 0; v <= yMax; v += yMax / 5) {
    parts.push(`<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end" fill="#555">${Math.round(v)}</text>`);
  }
  for (let i = 0; i < n; i++) {
    const c = r.closes_per_bin[i] || 0;
    const k = r.reconnects_per_bin[i] || 0;
    if (c) parts.push(`<rect x="${x(i) + 0.5}" y="${y(c)}" width="${Math.max(1, bw / 2 - 1)}" height="${y(0) - y(c)}" fill="#b0b0b0"/>`);
    if (k) parts.push(`<rect x="${x(i) + bw / 2}" y="${y(k)}" width="${Math.max(1, bw / 2 - 1)}" height="${y(0) - y(k)}" fill="#2563eb"/>`);
  }
  const secondsEvery = n * BIN_MS > 8000 ? 2000 : 1000;
  for (let ms = 0; ms <= n * BIN_MS; ms += secondsEvery) {
    const xx = L + (ms / BIN_MS) * bw;
    parts.push(`<line x1="${xx}" x2="${xx}" y1="${y(0)}" y2="${y(0) + 4}" stroke="#555"/>`);
    parts.push(`<text x="${xx}" y="${y(0) + 16}" text-anchor="middle" fill="#555">${ms / 1000} s</text>`);
  }
  parts.push(`<line x1="${L}" x2="${W - R}" y1="${y(0)}" y2="${y(0)}" stroke="#555"/>`);
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 12}" text-anchor="middle" fill="#555">time since the first drain close</text>`);
  parts.push(`</svg>`);
  return parts.join("\n") + "\n";
}

// ---- small things -----------------------------------------------------------------

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function fail(message) {
  emit({ event: "error", message, elapsed_ms: Math.round(now()) });
  process.exit(1);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function until(what, probe, withinMs) {
  const deadline = now() + withinMs;
  while (!probe()) {
    if (now() > deadline) {
      const summary = {
        welcomed: clients.filter((c) => c.welcomes.length > 0).length,
        states: count(clients.map((c) => c.conn.state)),
      };
      fail(`timed out after ${withinMs} ms waiting for ${what}: ${JSON.stringify(summary)}`);
    }
    await sleep(20);
  }
}

function count(values) {
  const out = {};
  for (const v of values) out[v] = (out[v] || 0) + 1;
  return out;
}

function nextLine() {
  if (!lines) {
    const rl = createInterface({ input: process.stdin });
    const queue = [];
    const waiting = [];
    rl.on("line", (l) => (waiting.length ? waiting.shift()(l) : queue.push(l)));
    rl.on("close", () => { while (waiting.length) waiting.shift()(null); });
    lines = () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((resolve) => waiting.push(resolve)));
  }
  return lines();
}

function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in defaults) || i + 1 >= argv.length) {
      process.stderr.write(`drain-fleet: unknown or incomplete argument ${argv[i]}\n`);
      process.exit(2);
    }
    out[key] = argv[i + 1];
  }
  for (const required of ["url", "admin", "secret-file"]) {
    if (!out[required]) {
      process.stderr.write(`drain-fleet: --${required} is required\n`);
      process.exit(2);
    }
  }
  return out;
}
