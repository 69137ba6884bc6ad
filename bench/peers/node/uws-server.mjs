// uWebSockets.js peer (npm @trufflesuite/uws-js-unofficial), written the way
// uWS's own docs and examples use it:
//   - one App per core, each on its own worker thread, all listening on the
//     same port (uSockets sets SO_REUSEPORT, so the kernel spreads the
//     connections; uWS.js examples/WorkerThreads.js);
//   - topics: each client subscribes to `u:<id>` and to `all`; a push is
//     `app.publish('u:<id>', …)` per recipient, a broadcast one
//     `app.publish('all', …)`. uWS queues published messages per subscriber
//     and writes everything a socket is owed in one loop turn as one write;
//   - the control command handled inside `ws.cork()`, its payload passed as
//     a view of the received bytes (encoded once, never re-encoded per
//     recipient).
// Each thread takes control connections on its own port
// (--control-base-port + i); the bench sends every command to every thread.
// Socket options, as uSockets sets them (strace): SO_REUSEPORT and
// SO_REUSEADDR on the listener, listen(fd, 512) (hardcoded), TCP_NODELAY on
// each accepted socket.
// The native binary is loaded directly, so a Node without a matching binary
// fails here instead of silently measuring the package's pure-JS fallback.
// Usage: node uws-server.mjs --listen 127.0.0.1:PORT [--procs N] [--control-base-port P]
import { createRequire } from 'node:module';
import { Worker, isMainThread, workerData } from 'node:worker_threads';
import {
  parseArgs, processOptions, PROCESS_FLAGS, userOf, welcome, runCommand, fail,
} from './common.mjs';

const require = createRequire(import.meta.url);
const binary = `@trufflesuite/uws-js-unofficial/binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;

const BROADCAST_TOPIC = 'all';

function thread(index, args, controlPort) {
  let uWS;
  try {
    uWS = require(binary);
  } catch (e) {
    fail(`no native uWebSockets.js for this Node (${binary}): ${e.message}`);
  }
  const app = uWS.App();
  const ops = {
    broadcast(payload) {
      const n = app.numSubscribers(BROADCAST_TOPIC);
      app.publish(BROADCAST_TOPIC, payload, false);
      return n;
    },
    push(ids, payload) {
      let n = 0;
      // publish() says whether the topic had a subscriber here.
      for (const id of ids) if (app.publish(`u:${id}`, payload, false)) n++;
      return n;
    },
  };
  const upgrade = (res, req, context, userData) => res.upgrade(userData,
    req.getHeader('sec-websocket-key'),
    req.getHeader('sec-websocket-protocol'),
    req.getHeader('sec-websocket-extensions'),
    context);
  app
    .ws('/ws', {
      compression: uWS.DISABLED,
      maxPayloadLength: 16 * 1024,
      upgrade: (res, req, context) => {
        const user = userOf(`?${req.getQuery() ?? ''}`);
        if (!user) { res.writeStatus('400 Bad Request').end(); return; }
        upgrade(res, req, context, { user });
      },
      open: (ws) => {
        const { user } = ws.getUserData();
        ws.subscribe(`u:${user}`);
        ws.subscribe(BROADCAST_TOPIC);
        ws.send(welcome(user), false);
      },
    })
    .ws('/control', {
      compression: uWS.DISABLED,
      maxPayloadLength: 1 << 20,
      idleTimeout: 0,
      upgrade: (res, req, context) => upgrade(res, req, context, {}),
      message: (ws, message) => ws.cork(() => {
        ws.send(runCommand(new Uint8Array(message), ops), false);
      }),
    })
    .any('/*', (res) => res.writeStatus('404 Not Found').end());
  for (const port of [args.port, controlPort]) {
    app.listen(args.host, port, (token) => {
      if (!token) fail(`thread ${index}: cannot listen on ${args.host}:${port}`);
    });
  }
  console.error(`uws thread ${index}: clients ${args.host}:${args.port}, control ${controlPort}`);
}

if (isMainThread) {
  const args = parseArgs(process.argv.slice(2), PROCESS_FLAGS);
  const { procs, controlBasePort } = processOptions(args);
  // Before starting threads: fail at once where there is no binary.
  try { require(binary); } catch (e) { fail(`no native uWebSockets.js for this Node (${binary}): ${e.message}`); }
  for (let i = 0; i < procs; i++) {
    const w = new Worker(new URL(import.meta.url), { workerData: { index: i, args, controlPort: controlBasePort + i } });
    w.on('error', (e) => fail(`thread ${i}: ${e.message}`));
    w.on('exit', (code) => fail(`thread ${i} exited (${code})`));
  }
  // Node aborts when it tears down a worker thread whose uSockets loop
  // still has sockets open, so a stop ends the process outright.
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.kill(process.pid, 'SIGKILL'));
} else {
  thread(workerData.index, workerData.args, workerData.controlPort);
}
