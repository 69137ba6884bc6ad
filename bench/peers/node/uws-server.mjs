// uWebSockets.js peer (npm @trufflesuite/uws-js-unofficial): the native
// binary is loaded directly, so a Node without a matching binary fails here
// instead of silently measuring the package's pure-JS fallback.
// Usage: node uws-server.mjs --listen 127.0.0.1:PORT
import { createRequire } from 'node:module';
import { parseArgs, userOf, welcome, runCommand, exitOnSignals, fail } from './common.mjs';

const require = createRequire(import.meta.url);
const binary = `@trufflesuite/uws-js-unofficial/binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
let uWS;
try {
  uWS = require(binary);
} catch (e) {
  fail(`no native uWebSockets.js for this Node (${binary}): ${e.message}`);
}

const args = parseArgs(process.argv.slice(2));
const users = new Map();
const ops = {
  broadcast(payload) {
    let n = 0;
    for (const ws of users.values()) { ws.send(payload, false); n++; }
    return n;
  },
  push(ids, payload) {
    let n = 0;
    for (const id of ids) {
      const ws = users.get(id);
      if (ws) { ws.send(payload, false); n++; }
    }
    return n;
  },
};

function upgrade(res, req, context, userData) {
  res.upgrade(userData,
    req.getHeader('sec-websocket-key'),
    req.getHeader('sec-websocket-protocol'),
    req.getHeader('sec-websocket-extensions'),
    context);
}

uWS.App()
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
      users.set(user, ws);
      ws.send(welcome(user), false);
    },
    close: (ws) => {
      const { user } = ws.getUserData();
      if (users.get(user) === ws) users.delete(user);
    },
  })
  .ws('/control', {
    compression: uWS.DISABLED,
    maxPayloadLength: 1 << 20,
    idleTimeout: 0,
    upgrade: (res, req, context) => upgrade(res, req, context, {}),
    message: (ws, message) => ws.send(runCommand(Buffer.from(message).toString(), ops), false),
  })
  .any('/*', (res) => res.writeStatus('404 Not Found').end())
  .listen(args.host, args.port, (token) => {
    if (!token) fail(`cannot listen on ${args.host}:${args.port}`);
    console.error(`uws listening on ${args.host}:${args.port}`);
  });
exitOnSignals();
