// Drives headless Chromium through pushgate's demo page (web/demo.html) for
// tests/browser.rs. Speaks the Chrome DevTools Protocol over a pipe
// (--remote-debugging-pipe: JSON messages ending in NUL, commands on fd 3,
// replies on fd 4) with Node's standard library only: no npm packages, and
// no browser download.
//
// Scenario: open the page, type the user ID, click Connect, then report (one
// JSON line each, on stdout) what the page shows at each stage:
//   {"event":"ready","browser":…}                  Chromium started
//   {"event":"welcome","page":…}                   connected, welcome shown
//   {"event":"push","page":…}                      the first push is listed
//   {"event":"dropped","page":…}                   the server closed it; backing off
//   {"event":"resumed","page":…,"screenshot":…}    reconnected with since; the
//                                                  notice (--expect recovered|gap)
//                                                  and, if recovered, the --missed
//                                                  pushes shown
//   {"event":"disconnected","page":…}              after clicking Disconnect
//   {"event":"done","requests":[…],"problems":[…],"extensions":[…]}
//                                                  every URL the page asked for,
//                                                  page errors / console errors,
//                                                  and each WebSocket handshake's
//                                                  Sec-WebSocket-Extensions answer
//                                                  ("" for none)
// or {"event":"error",…} and exit status 1. Every wait is bounded.
//
// Scenario "transport" (--scenario transport --transport websocket|sse): the
// page connects by itself (the URL has &connect=1); the test restarts and
// drains the server in between:
//   {"event":"open","page":…}        welcomed over the expected transport
//   {"event":"push","page":…}        one push listed
//   {"event":"restarted","page":…}   back over that transport after the server
//                                    vanished, with the gap notice (a reset)
//   {"event":"push2","page":…}       a push from the new server
//   {"event":"drain-closed","page":…} the drain's close (1012) and the delay
//   {"event":"drained","page":…}     back on the successor, a second reset
//   {"event":"push3","page":…,"screenshot":…}
//   {"event":"done","requests":[…],"problems":[…],"network":[…]}
// Network errors the browser logs (refused upgrades, refused connections)
// go to "network", not "problems".
//
// Usage: node driver.mjs --url URL --user U [--expect recovered|gap]
//        [--missed N] [--screenshot FILE] [--scenario demo|transport]
//        [--transport websocket|sse]
//        [--chromium /usr/bin/chromium] [--user-data-dir DIR]
//        [--stage-timeout-ms 10000] [--timeout-ms 25000]
//        [--trust-spki BASE64]   (a test certificate's SHA-256 SPKI hash:
//                                 Chromium accepts that key for https/wss)

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

const args = parseArgs(process.argv.slice(2), {
  url: null,
  user: "alice",
  expect: "recovered",
  missed: "3",
  screenshot: null,
  scenario: "demo",
  transport: "websocket",
  chromium: "/usr/bin/chromium",
  "user-data-dir": null,
  "stage-timeout-ms": "10000",
  "timeout-ms": "25000",
  "trust-spki": null,
});
const STAGE_MS = Number(args["stage-timeout-ms"]);
const MISSED = Number(args.missed);
const EXPECT = args.expect;
if (!args.url) {
  process.stderr.write("driver: --url is required\n");
  process.exit(2);
}

const ownProfile = !args["user-data-dir"];
const profile = args["user-data-dir"] || mkdtempSync(join(tmpdir(), "pushgate-chromium-"));
let currentStage = "launch";
let chrome = null;
let cdp = null;
let stderrTail = "";
let page = null;
let failing = false;
const requests = [];
const problems = [];
const extensions = [];
const network = [];

// The whole run is bounded, whatever hangs.
setTimeout(() => fail("overall", `did not finish within ${args["timeout-ms"]} ms`), Number(args["timeout-ms"]));


async function main() {
  currentStage = "launch";
  cdp = launch();
  const version = await cdp.send("Browser.getVersion");
  emit({ event: "ready", browser: version.product });

  const { targetId } = await cdp.send("Target.createTarget", { url: "about:blank" });
  const { sessionId } = await cdp.send("Target.attachToTarget", { targetId, flatten: true });
  page = {
    send: (method, params) => cdp.send(method, params, sessionId),
  };
  cdp.on(sessionId, (method, params) => {
    if (method === "Network.requestWillBeSent") requests.push(params.request.url);
    else if (method === "Network.webSocketCreated") requests.push(params.url);
    else if (method === "Network.webSocketHandshakeResponseReceived") {
      const headers = params.response.headers || {};
      const name = Object.keys(headers).find((h) => h.toLowerCase() === "sec-websocket-extensions");
      extensions.push(name ? headers[name] : "");
    }
    else if (method === "Runtime.exceptionThrown") {
      const d = params.exceptionDetails;
      problems.push("exception: " + ((d.exception && d.exception.description) || d.text));
    } else if (method === "Runtime.consoleAPICalled" && (params.type === "error" || params.type === "assert")) {
      problems.push("console." + params.type + ": " + params.args.map((a) => a.value ?? a.description).join(" "));
    } else if (method === "Log.entryAdded" && params.entry.level === "error") {
      const text = params.entry.text + (params.entry.url ? " " + params.entry.url : "");
      if (params.entry.source === "network" || /^WebSocket connection to/.test(params.entry.text)) network.push(text);
      else problems.push("log: " + text);
    }
  });
  await page.send("Runtime.enable");
  await page.send("Page.enable");
  await page.send("Network.enable");
  await page.send("Log.enable");
  await page.send("Emulation.setDeviceMetricsOverride", {
    width: 900, height: 1000, deviceScaleFactor: 1, mobile: false,
  });

  currentStage = "load";
  await page.send("Page.navigate", { url: args.url });
  await waitFor("the page to load", () => evaluate("document.readyState === 'complete' && !!document.getElementById('state')"));
  if (args.scenario === "transport") return transportScenario();
  if (args.scenario !== "demo") throw new Error("unknown --scenario " + args.scenario);

  currentStage = "welcome";
  // Type the user ID (replacing the default) and click Connect, as a person would.
  await evaluate("(() => { const i = document.getElementById('user'); i.focus(); i.select(); return true; })()");
  await page.send("Input.insertText", { text: args.user });
  await click("#connect");
  let snap = await waitFor("the welcome", async () => {
    const s = await snapshot();
    return s.state === "open" && s.welcome.user === args.user ? s : null;
  });
  emit({ event: "welcome", page: snap });

  currentStage = "push";
  snap = await waitFor("the first push", async () => {
    const s = await snapshot();
    return s.log.length >= 1 ? s : null;
  });
  emit({ event: "push", page: snap });

  currentStage = "dropped";
  snap = await waitFor("the server to drop the connection", async () => {
    const s = await snapshot();
    return s.state === "reconnecting" ? s : null;
  });
  emit({ event: "dropped", page: snap });

  currentStage = "resumed";
  const resumeDone = (s) =>
    s.state === "open" && s.resume.kind === EXPECT && (EXPECT !== "recovered" || s.log.length >= 1 + MISSED);
  snap = await waitFor(EXPECT === "recovered" ? `the resume to recover ${MISSED}` : `the ${EXPECT} notice`, async () => {
    const s = await snapshot();
    return resumeDone(s) ? s : null;
  });
  // Anything more (a duplicate, a stray push) would arrive right away.
  await sleep(300);
  snap = await snapshot();
  let shot = null;
  if (args.screenshot) {
    const { data } = await page.send("Page.captureScreenshot", { format: "png" });
    mkdirSync(dirname(args.screenshot), { recursive: true });
    writeFileSync(args.screenshot, Buffer.from(data, "base64"));
    shot = args.screenshot;
  }
  emit({ event: "resumed", page: snap, screenshot: shot });

  currentStage = "disconnected";
  await click("#disconnect");
  await waitFor("the page to disconnect", async () => (await snapshot()).state === "closed");
  // It must stay closed: no reconnect after a Disconnect.
  await sleep(500);
  emit({ event: "disconnected", page: await snapshot() });

  currentStage = "close";
  emit({ event: "done", requests, problems, extensions });
  await shutdown();
  process.exit(0);
}

/** A server restart and a drain, over the transport the page should use. */
async function transportScenario() {
  const want = args.transport;
  const openOver = (s) => s.state === "open" && s.transport.transport === want;
  const resets = (s) => Number(s.resets || 0);

  currentStage = "open";
  let snap = await waitFor(`the page open over ${want}`, async () => {
    const s = await snapshot();
    return openOver(s) && s.welcome.user === args.user ? s : null;
  });
  emit({ event: "open", page: snap });

  currentStage = "push";
  snap = await waitFor("the first push", async () => {
    const s = await snapshot();
    return s.log.length >= 1 ? s : null;
  });
  emit({ event: "push", page: snap });

  currentStage = "restarted";
  snap = await waitFor(`the page back over ${want} with a reset`, async () => {
    const s = await snapshot();
    return openOver(s) && resets(s) >= 1 && s.resume.kind === "gap" ? s : null;
  });
  emit({ event: "restarted", page: snap });

  currentStage = "push2";
  snap = await waitFor("the second push", async () => {
    const s = await snapshot();
    return s.log.length >= 2 ? s : null;
  });
  emit({ event: "push2", page: snap });

  currentStage = "drain-closed";
  snap = await waitFor("the drain's close", async () => {
    const s = await snapshot();
    return s.close.code === "1012" ? s : null;
  });
  emit({ event: "drain-closed", page: snap });

  currentStage = "drained";
  snap = await waitFor(`the page on the successor over ${want}`, async () => {
    const s = await snapshot();
    return openOver(s) && resets(s) >= 2 ? s : null;
  });
  emit({ event: "drained", page: snap });

  currentStage = "push3";
  snap = await waitFor("the third push", async () => {
    const s = await snapshot();
    return s.log.length >= 3 ? s : null;
  });
  let shot = null;
  if (args.screenshot) {
    const { data } = await page.send("Page.captureScreenshot", { format: "png" });
    mkdirSync(dirname(args.screenshot), { recursive: true });
    writeFileSync(args.screenshot, Buffer.from(data, "base64"));
    shot = args.screenshot;
  }
  emit({ event: "push3", page: snap, screenshot: shot });

  currentStage = "close";
  emit({ event: "done", requests, problems, network });
  await shutdown();
  process.exit(0);
}

// ---- the page ----------------------------------------------------------

/** What the page shows, read from the DOM. */
function snapshot() {
  return evaluate(`(() => {
    const $ = (id) => document.getElementById(id);
    const data = (el) => Object.assign({}, el.dataset);
    return {
      state: $("state").dataset.state,
      stateText: $("state").textContent,
      transport: data($("transport")),
      welcome: data($("welcome")),
      welcomeText: $("welcome").textContent,
      close: data($("close")),
      closeText: $("close").textContent,
      resume: data($("resume")),
      resumeText: $("resume").textContent,
      cmd: $("cmd").textContent,
      canDisconnect: !$("disconnect").disabled,
      dupes: Number($("log").dataset.dupes || 0),
      resets: Number($("log").dataset.resets || 0),
      log: [...document.querySelectorAll("#log > li[data-seq]")].map((li) => ({
        seq: Number(li.dataset.seq),
        replayed: li.dataset.replayed === "true",
        data: li.querySelector("pre").textContent,
      })),
      events: [...document.querySelectorAll("#events li")].map((li) => li.textContent),
    };
  })()`);
}

async function evaluate(expression) {
  const r = await page.send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
  if (r.exceptionDetails) throw new Error("evaluate: " + JSON.stringify(r.exceptionDetails));
  return r.result.value;
}

async function click(selector) {
  const box = await evaluate(`(() => {
    const r = document.querySelector(${JSON.stringify(selector)}).getBoundingClientRect();
    return { x: r.x + r.width / 2, y: r.y + r.height / 2 };
  })()`);
  for (const type of ["mouseMoved", "mousePressed", "mouseReleased"]) {
    await page.send("Input.dispatchMouseEvent", { type, x: box.x, y: box.y, button: "left", clickCount: 1 });
  }
}

/** Polls `probe` until it returns something truthy; bounded by STAGE_MS. */
async function waitFor(what, probe) {
  const deadline = Date.now() + STAGE_MS;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${STAGE_MS} ms waiting for ${what}`);
    }
    await sleep(50);
  }
}

// ---- Chromium and the protocol ------------------------------------------

function launch() {
  const flags = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--mute-audio",
    "--hide-scrollbars",
    "--password-store=basic",
    "--user-data-dir=" + profile,
    "--remote-debugging-pipe",
    ...(args["trust-spki"] ? ["--ignore-certificate-errors-spki-list=" + args["trust-spki"]] : []),
    "about:blank",
  ];
  chrome = spawn(args.chromium, flags, { stdio: ["ignore", "ignore", "pipe", "pipe", "pipe"] });
  chrome.on("error", (e) => fail(currentStage, `cannot start ${args.chromium}: ${e.message}`));
  chrome.on("exit", (code, signal) => {
    if (currentStage !== "close") fail(currentStage, `chromium exited (${code ?? signal})`);
  });
  chrome.stdio[2].setEncoding("utf8");
  chrome.stdio[2].on("data", (s) => { stderrTail = (stderrTail + s).slice(-4000); });
  return new Cdp(chrome.stdio[3], chrome.stdio[4]);
}

class Cdp {
  constructor(writable, readable) {
    this.out = writable;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = new Map();
    let buf = "";
    readable.setEncoding("utf8");
    readable.on("data", (chunk) => {
      buf += chunk;
      let end;
      while ((end = buf.indexOf("\0")) >= 0) {
        const msg = JSON.parse(buf.slice(0, end));
        buf = buf.slice(end + 1);
        this.dispatch(msg);
      }
    });
  }

  dispatch(msg) {
    if (msg.id !== undefined) {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) p.reject(new Error(`${p.method}: ${msg.error.message}`));
      else p.resolve(msg.result);
    } else {
      const fn = this.listeners.get(msg.sessionId || "");
      if (fn) fn(msg.method, msg.params);
    }
  }

  on(sessionId, fn) {
    this.listeners.set(sessionId, fn);
  }

  send(method, params = {}, sessionId) {
    const id = this.nextId++;
    const msg = { id, method, params };
    if (sessionId) msg.sessionId = sessionId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method}: no answer within ${STAGE_MS} ms`));
      }, STAGE_MS);
      this.pending.set(id, { method, resolve, reject, timer });
      this.out.write(JSON.stringify(msg) + "\0");
    });
  }
}

/** Closes Chromium (politely, then SIGKILL after 3 s) and removes the profile. */
async function shutdown() {
  if (chrome && chrome.exitCode === null && chrome.signalCode === null) {
    const exited = new Promise((resolve) => chrome.once("exit", resolve));
    if (cdp) cdp.send("Browser.close").catch(() => {});
    const timer = setTimeout(() => chrome.kill("SIGKILL"), 3000);
    await Promise.race([exited, sleep(4000)]);
    clearTimeout(timer);
  }
  cleanup();
}

function cleanup() {
  if (!ownProfile) return;
  try {
    rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  } catch (_) { /* a temp dir left behind is no failure */ }
}

async function fail(stage, message) {
  if (failing) return;
  failing = true;
  let snap = null;
  try {
    if (page) snap = await Promise.race([snapshot(), sleep(1000).then(() => null)]);
  } catch (_) { /* the page is gone */ }
  emit({ event: "error", stage, message, page: snap, problems, chromium_stderr: stderrTail });
  await shutdown();
  process.exit(1);
}

// ---- small things ---------------------------------------------------------

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parseArgs(argv, defaults) {
  const out = { ...defaults };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in defaults) || i + 1 >= argv.length) {
      process.stderr.write(`driver: unknown or incomplete argument ${argv[i]}\n`);
      process.exit(2);
    }
    out[key] = argv[i + 1];
  }
  return out;
}

// ---- run (last: the class above must be initialised) ---------------------

try {
  await main();
} catch (e) {
  await fail(currentStage, e && e.stack ? e.stack : String(e));
}
