// Node `ws` peer, deployed as Node servers are on a multi-core box:
// node:cluster with one worker per core (runCluster in common.mjs). Each
// worker keeps Map<user, WebSocket> of the clients it accepted and takes
// control connections on its own port (--control-base-port + i); the bench
// sends every command to every worker, as a Redis fan-out would.
// Usage: node ws-server.mjs --listen 127.0.0.1:PORT [--procs N]
//        [--control-base-port P] [--backlog N]
import http from 'node:http';
import { WebSocketServer } from 'ws';
import {
  parseArgs, processOptions, PROCESS_FLAGS, pathOf, userOf, welcome, runCommand, runCluster,
} from './common.mjs';

const args = parseArgs(process.argv.slice(2), PROCESS_FLAGS);
const { procs, controlBasePort, backlog } = processOptions(args);

function worker(index) {
  const users = new Map();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });
  const ops = {
    // The payload arrives as bytes and is sent as they are to every
    // recipient (encoded once per command).
    broadcast(payload) {
      let n = 0;
      for (const ws of users.values()) { ws.send(payload, { binary: false }); n++; }
      return n;
    },
    push(ids, payload) {
      let n = 0;
      for (const id of ids) {
        const ws = users.get(id);
        if (ws) { ws.send(payload, { binary: false }); n++; }
      }
      return n;
    },
  };

  const clients = http.createServer((req, res) => { res.writeHead(404); res.end(); });
  clients.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    const user = pathOf(req.url) === '/ws' ? userOf(req.url) : null;
    if (!user) { socket.destroy(); return; }
    wss.handleUpgrade(req, socket, head, (ws) => {
      users.set(user, ws);
      ws.on('error', () => {});
      ws.on('close', () => { if (users.get(user) === ws) users.delete(user); });
      ws.send(welcome(user));
    });
  });

  const control = http.createServer((req, res) => { res.writeHead(404); res.end(); });
  control.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    if (pathOf(req.url) !== '/control') { socket.destroy(); return; }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {});
      ws.on('message', (data) => ws.send(runCommand(data, ops)));
    });
  });

  for (const s of [clients, control]) s.on('error', (e) => { console.error(`node-ws: ${e.message}`); process.exit(1); });
  clients.listen({ host: args.host, port: args.port, backlog });
  // Its own port, its own socket (exclusive: not shared through the primary).
  const controlPort = controlBasePort + index;
  control.listen({ host: args.host, port: controlPort, exclusive: true }, () =>
    console.error(`node-ws worker ${index} (pid ${process.pid}): clients ${args.host}:${args.port}, control ${controlPort}`));
}

runCluster(procs, worker);
