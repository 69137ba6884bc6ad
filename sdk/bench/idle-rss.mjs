// What an idle device costs the server's user space, WebSocket against
// Server-Sent Events: opens N connections of one transport (one distinct
// user each, a verified token, the welcome received) and reads the server's
// VmRSS before and after, the method of `pushgate-bench idle` (README,
// Measurements). Raw sockets (node:net), so the client adds nothing the
// server sees beyond the request. Run by idle-rss.sh, which starts a fresh
// release server per run.
//
// Usage: node idle-rss.mjs --target 127.0.0.1:PORT --server-pid PID
//        --secret-file FILE --transport websocket|sse [--conns 10000]
//        [--warmup 256] [--inflight 256] [--settle-ms 2000]
//        [--sources 127.0.0.2-127.0.0.60]
// Prints one JSON line.

import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { connect } from "node:net";

const args = parseArgs(process.argv.slice(2), {
  target: null,
  "server-pid": null,
  "secret-file": null,
  transport: null,
  conns: "10000",
  warmup: "256",
  inflight: "256",
  "settle-ms": "2000",
  sources: "127.0.0.2-127.0.0.60",
  "timeout-ms": "120000",
});
const [host, port] = args.target.split(":");
const secret = readFileSync(args["secret-file"], "utf8").trim();
const sources = sourceRange(args.sources);
setTimeout(() => fail("did not finish in time"), Number(args["timeout-ms"])).unref();

function token(sub) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const iat = Math.floor(Date.now() / 1000);
  const body = b64({ alg: "HS256", typ: "JWT" }) + "." + b64({ sub, aud: "pushgate-client", iat, exp: iat + 3600 });
  return body + "." + createHmac("sha256", secret).update(body).digest("base64url");
}

function request(user) {
  const auth = "Authorization: Bearer " + token(user) + "\r\n";
  if (args.transport === "sse") {
    return "GET /sse HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n" + auth + "\r\n";
  }
  if (args.transport === "websocket") {
    return "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + auth + "\r\n";
  }
  fail("--transport must be websocket or sse");
}

/** Opens a connection and resolves with it once the welcome arrived. */
function open(user, i) {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port: Number(port), localAddress: sources[i % sources.length] });
    let seen = "";
    const timer = setTimeout(() => { socket.destroy(); reject(new Error("no welcome in 10 s")); }, 10000);
    socket.setEncoding("latin1");
    socket.on("connect", () => socket.write(request(user)));
    socket.on("error", (e) => { clearTimeout(timer); reject(e); });
    const onData = (chunk) => {
      seen += chunk;
      if (seen.includes('"type":"welcome"')) {
        clearTimeout(timer);
        socket.off("data", onData);
        // Keep reading (heartbeats) without keeping anything.
        socket.on("data", () => {});
        resolve(socket);
      } else if (seen.length > 4096) {
        clearTimeout(timer);
        socket.destroy();
        reject(new Error("no welcome: " + seen.slice(0, 200)));
      }
    };
    socket.on("data", onData);
  });
}

async function openMany(prefix, n) {
  const sockets = [];
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      sockets.push(await open(prefix + i, i));
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, Number(args.inflight)) }, worker));
  return sockets;
}

function rssBytes() {
  const status = readFileSync(`/proc/${args["server-pid"]}/status`, "utf8");
  const kb = Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]);
  return kb * 1024;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

try {
  // Warm-up: code paged in and allocator arenas grown by the first
  // handshakes are not billed per connection.
  const warm = await openMany("idle-warm-", Number(args.warmup));
  for (const s of warm) s.destroy();
  await sleep(1000);
  const before = rssBytes();
  const started = Date.now();
  const conns = Number(args.conns);
  const held = await openMany("idle-" + args.transport + "-", conns);
  const establishMs = Date.now() - started;
  await sleep(Number(args["settle-ms"]));
  const after = rssBytes();
  process.stdout.write(JSON.stringify({
    transport: args.transport,
    conns: held.length,
    rss_before_bytes: before,
    rss_after_bytes: after,
    bytes_per_conn: Math.round(((after - before) / held.length) * 10) / 10,
    establish_ms: establishMs,
  }) + "\n");
  for (const s of held) s.destroy();
  process.exit(0);
} catch (e) {
  fail(e && e.message ? e.message : String(e));
}

function fail(message) {
  process.stdout.write(JSON.stringify({ error: message }) + "\n");
  process.exit(1);
}

function sourceRange(text) {
  const [a, b] = text.split("-");
  if (!b) return [a];
  const base = a.split(".").slice(0, 3).join(".");
  const from = Number(a.split(".")[3]);
  const to = Number(b.split(".")[3]);
  return Array.from({ length: to - from + 1 }, (_, i) => base + "." + (from + i));
}

function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in defaults) || i + 1 >= argv.length) {
      process.stderr.write(`idle-rss: unknown or incomplete argument ${argv[i]}\n`);
      process.exit(2);
    }
    out[key] = argv[i + 1];
  }
  for (const required of ["target", "server-pid", "secret-file", "transport"]) {
    if (!out[required]) {
      process.stderr.write(`idle-rss: --${required} is required\n`);
      process.exit(2);
    }
  }
  return out;
}
