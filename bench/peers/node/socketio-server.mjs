// socket.io 4 peer with the Redis adapter and a real redis-server: the
// stack of the CyberAgent "homing" gateway. One room per user (`u:<id>`);
// a multi-user push is one `io.to([rooms]).emit(...)`.
// Clients connect to /ws/?EIO=4&transport=websocket&user=ID (WebSocket
// transport only) and receive 42["m",<payload>].
// Usage: node socketio-server.mjs --listen 127.0.0.1:PORT --redis 127.0.0.1:6379
import http from 'node:http';
import { Server } from 'socket.io';
import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import { WebSocketServer } from 'ws';
import { parseArgs, pathOf, runCommand, exitOnSignals, fail } from './common.mjs';

const args = parseArgs(process.argv.slice(2), { redis: '127.0.0.1:6379' });
if (!/^127\.\d+\.\d+\.\d+:\d+$/.test(args.redis)) fail(`--redis ${args.redis}: loopback only`);

const pub = createClient({ url: `redis://${args.redis}` });
const sub = pub.duplicate();
for (const c of [pub, sub]) c.on('error', (e) => console.error(`redis: ${e.message}`));
await Promise.all([pub.connect(), sub.connect()]);

const server = http.createServer((req, res) => { res.writeHead(404); res.end(); });
const io = new Server(server, {
  path: '/ws',
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  destroyUpgrade: false, // /control is ours
  adapter: createAdapter(pub, sub),
});
const rooms = io.of('/').adapter.rooms;
io.on('connection', (socket) => {
  const user = socket.handshake.query.user;
  if (typeof user === 'string' && user) socket.join(`u:${user}`);
});

const ops = {
  broadcast(payload) {
    io.emit('m', JSON.parse(payload));
    return io.engine.clientsCount;
  },
  push(ids, payload) {
    const targets = ids.map((id) => `u:${id}`);
    let n = 0;
    for (const room of targets) n += rooms.get(room)?.size ?? 0;
    io.to(targets).emit('m', JSON.parse(payload));
    return n;
  },
};

const control = new WebSocketServer({ noServer: true, perMessageDeflate: false });
server.on('upgrade', (req, socket, head) => {
  if (pathOf(req.url) !== '/control') return; // engine.io takes /ws/
  socket.on('error', () => {});
  control.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data) => ws.send(runCommand(data.toString(), ops)));
  });
});
server.on('error', (e) => { console.error(`socketio: ${e.message}`); process.exit(1); });
exitOnSignals();
server.listen(args.port, args.host, () =>
  console.error(`socketio listening on ${args.host}:${args.port}, redis ${args.redis}`));
