// Node `ws` peer: one WebSocket object per connection in a Map user → ws.
// Usage: node ws-server.mjs --listen 127.0.0.1:PORT
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { parseArgs, pathOf, userOf, welcome, runCommand, exitOnSignals } from './common.mjs';

const args = parseArgs(process.argv.slice(2));
const users = new Map();
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

const ops = {
  broadcast(payload) {
    const data = Buffer.from(payload); // encoded once, sent to all
    let n = 0;
    for (const ws of users.values()) { ws.send(data, { binary: false }); n++; }
    return n;
  },
  push(ids, payload) {
    const data = Buffer.from(payload);
    let n = 0;
    for (const id of ids) {
      const ws = users.get(id);
      if (ws) { ws.send(data, { binary: false }); n++; }
    }
    return n;
  },
};

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  const path = pathOf(req.url);
  if (path === '/ws') {
    const user = userOf(req.url);
    if (!user) { socket.destroy(); return; }
    wss.handleUpgrade(req, socket, head, (ws) => {
      users.set(user, ws);
      ws.on('error', () => {});
      ws.on('close', () => { if (users.get(user) === ws) users.delete(user); });
      ws.send(welcome(user));
    });
  } else if (path === '/control') {
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {});
      ws.on('message', (data) => ws.send(runCommand(data.toString(), ops)));
    });
  } else {
    socket.destroy();
  }
});
server.on('error', (e) => { console.error(`node-ws: ${e.message}`); process.exit(1); });
exitOnSignals();
server.listen(args.port, args.host, () => console.error(`node-ws listening on ${args.host}:${args.port}`));
