// Fakes for the SDK's logic tests: simulated time, a scripted WebSocket,
// a scripted fetch whose responses stream what the test writes, window and
// document events, a seeded random source, and an in-process lock manager.
// Everything the SDK takes from `env`, so its tests need no network and no
// real clock.

/** Simulated time: timers run in order as the test advances the clock. */
export class Clock {
  constructor(wallStartMs = 1_800_000_000_000) {
    this.ms = 0;
    this.wallStartMs = wallStartMs;
    this.timers = new Map();
    this.nextId = 1;
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.ms + Math.max(0, ms), fn, id });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  now() {
    return this.ms;
  }

  wallNow() {
    return this.wallStartMs + this.ms;
  }

  /** Runs every timer due within `ms`, in time order, settling promises between them. */
  async advance(ms) {
    const until = this.ms + ms;
    await settle();
    for (;;) {
      let next = null;
      for (const t of this.timers.values()) {
        if (t.at <= until && (next === null || t.at < next.at || (t.at === next.at && t.id < next.id))) next = t;
      }
      if (next === null) break;
      this.timers.delete(next.id);
      this.ms = next.at;
      next.fn();
      await settle();
    }
    this.ms = until;
    await settle();
  }

  pending() {
    return this.timers.size;
  }
}

/** Lets promise chains (token callbacks, fetch) run to their next real wait. */
export async function settle() {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A seeded PRNG (mulberry32), so "random" delays repeat run to run. */
export function seeded(seed = 1) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A WebSocket the test plays the server of. */
export function webSocketClass(world) {
  return class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.closedByClient = null;
      this.readyState = 0;
      world.sockets.push(this);
      world.log.push({ kind: "websocket", url, at: world.clock.now() });
    }

    send(text) {
      this.sent.push(text);
    }

    close(code, reason) {
      if (this.closedByClient) return;
      this.closedByClient = { code, reason };
      this.readyState = 3;
    }

    // ---- the server's side ----
    accept() {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }

    welcome(fields) {
      if (this.readyState === 0) this.accept();
      this.message({ type: "welcome", user: "u", ...fields });
    }

    message(obj) {
      if (this.onmessage) this.onmessage({ data: typeof obj === "string" ? obj : JSON.stringify(obj) });
    }

    push(seq, data = { n: seq }) {
      this.message({ type: "push", seq, data });
    }

    /** The connection ends (the server closed it, or the network failed: 1006). */
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason });
    }
  };
}

/** fetch for `/sse`: each call waits for the test to answer it. */
export function fakeFetch(world) {
  return (url, init = {}) => {
    const call = { url, init, aborted: false };
    world.fetches.push(call);
    world.log.push({ kind: "sse", url, at: world.clock.now() });
    return new Promise((resolve, reject) => {
      call.refuse = (status, text = "") => resolve(new Response(text, { status }));
      call.fail = (why = "network error") => reject(new TypeError(why));
      /** Answers 200 and returns a writer: write(text), end(). */
      call.open = () => {
        let controller;
        const body = new ReadableStream({ start: (c) => { controller = c; } });
        const encoder = new TextEncoder();
        call.write = (text) => { if (!call.aborted) controller.enqueue(encoder.encode(text)); };
        call.end = () => { if (!call.aborted) controller.close(); };
        resolve(new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } }));
        return call;
      };
      if (init.signal) {
        init.signal.addEventListener("abort", () => {
          call.aborted = true;
          reject(new DOMException("aborted", "AbortError"));
        });
      }
    });
  };
}

/** A web-locks stand-in: one holder per name, waiters in order. */
export class Locks {
  constructor() {
    this.queues = new Map();
  }

  request(name, options, callback) {
    const queue = this.queues.get(name) || [];
    this.queues.set(name, queue);
    return new Promise((resolve, reject) => {
      const entry = { callback, resolve, reject };
      if (options.signal) {
        options.signal.addEventListener("abort", () => {
          const i = queue.indexOf(entry);
          if (i > 0) {
            queue.splice(i, 1);
            reject(new DOMException("aborted", "AbortError"));
          }
        });
      }
      queue.push(entry);
      if (queue.length === 1) this.grant(name);
    });
  }

  grant(name) {
    const queue = this.queues.get(name);
    const entry = queue[0];
    if (!entry) return;
    Promise.resolve(entry.callback()).then((v) => {
      queue.shift();
      entry.resolve(v);
      this.grant(name);
    });
  }
}

/** A world: clock, transports and page events, and the env to give the SDK. */
export function world({ seed = 7, WebSocket = true } = {}) {
  const w = {
    clock: new Clock(),
    sockets: [],
    fetches: [],
    log: [],
    window: new EventTarget(),
    document: Object.assign(new EventTarget(), { visibilityState: "visible" }),
  };
  w.env = {
    WebSocket: WebSocket ? webSocketClass(w) : undefined,
    fetch: fakeFetch(w),
    AbortController,
    BroadcastChannel: undefined,
    locks: undefined,
    window: w.window,
    document: w.document,
    baseUrl: "https://app.example/",
    setTimeout: (fn, ms) => w.clock.setTimeout(fn, ms),
    clearTimeout: (id) => w.clock.clearTimeout(id),
    now: () => w.clock.now(),
    wallNow: () => w.clock.wallNow(),
    random: seeded(seed),
  };
  w.lastSocket = () => w.sockets[w.sockets.length - 1];
  w.lastFetch = () => w.fetches[w.fetches.length - 1];
  w.setVisibility = (state) => {
    w.document.visibilityState = state;
    w.document.dispatchEvent(new Event("visibilitychange"));
  };
  return w;
}

/** An unsigned JWT-shaped token with `exp` (the SDK only reads it). */
export function jwt(expUnixS, sub = "u") {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return b64({ alg: "HS256", typ: "JWT" }) + "." + b64({ sub, exp: expUnixS }) + ".sig";
}

/** SSE text for one message (the server's format: data lines, blank line). */
export function sseEvent(obj, { id, retry } = {}) {
  let out = "";
  if (retry !== undefined) out += "retry: " + retry + "\n";
  if (id !== undefined) out += "id: " + id + "\n";
  return out + "data: " + JSON.stringify(obj) + "\n\n";
}
