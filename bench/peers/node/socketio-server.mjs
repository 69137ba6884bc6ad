// socket.io 4 peer with the Redis adapter and a real redis-server: the
// stack of the CyberAgent "homing" gateway, deployed as socket.io documents
// for several cores ("Using multiple nodes"): node:cluster, one worker per
// core, the Redis adapter between them (WebSocket transport only, so no
// sticky sessions are needed). One room per user (`u:<id>`); a multi-user
// push is one `io.to([rooms]).emit(...)`, which the adapter also publishes
// to Redis for the other workers.
// The bench sends commands to worker 0's control port only
// (--control-base-port); the others get every emit through Redis. The
// count in a reply is worker 0's own deliveries (the others' are not known
// to it); the bench counts receipts at the clients.
// Clients connect to /ws/?EIO=4&transport=websocket&user=ID and receive
// 42["m",<payload>].
// --distinct-ports yes: worker i takes clients on PORT + i instead of all
// sharing PORT, so a client picks its process as it would pick a host (the
// bench's `cluster` scenario: 3 processes as 3 hosts).
// Usage: node socketio-server.mjs --listen 127.0.0.1:PORT --redis 127.0.0.1:6379
//        [--procs N] [--control-base-port P] [--backlog N] [--distinct-ports yes]
import http from 'node:http';
import { Server } from 'socket.io';
import { createAdapter } from '@socket.io/redis-adapter';
import { createClient } from 'redis';
import { WebSocketServer } from 'ws';
import {
  parseArgs, processOptions, PROCESS_FLAGS, pathOf, runCommand, runCluster, fail,
} from './common.mjs';

const args = parseArgs(process.argv.slice(2), { redis: '127.0.0.1:6379', 'distinct-ports': 'no', ...PROCESS_FLAGS });
if (!['yes', 'no'].includes(args['distinct-ports'])) fail('--distinct-ports: want yes or no');
const distinctPorts = args['distinct-ports'] === 'yes';
if (!/^127\.\d+\.\d+\.\d+:\d+$/.test(args.redis)) fail(`--redis ${args.redis}: loopback only`);
const { procs, controlBasePort, backlog } = processOptions(args);

async function worker(index) {
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
    adapter: createAdapter(pub, sub),
  });
  const rooms = io.of('/').adapter.rooms;
  io.on('connection', (socket) => {
    const user = socket.handshake.query.user;
    if (typeof user === 'string' && user) socket.join(`u:${user}`);
  });

  const ops = {
    broadcast(payload) {
      io.emit('m', JSON.parse(Buffer.from(payload).toString()));
      return io.engine.clientsCount;
    },
    push(ids, payload) {
      const targets = ids.map((id) => `u:${id}`);
      let n = 0;
      for (const room of targets) n += rooms.get(room)?.size ?? 0;
      io.to(targets).emit('m', JSON.parse(Buffer.from(payload).toString()));
      return n;
    },
  };

  const control = http.createServer((req, res) => { res.writeHead(404); res.end(); });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });
  control.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    if (pathOf(req.url) !== '/control') { socket.destroy(); return; }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {});
      ws.on('message', (data) => ws.send(runCommand(data, ops)));
    });
  });
  for (const s of [server, control]) s.on('error', (e) => { console.error(`socketio: ${e.message}`); process.exit(1); });
  const clientPort = distinctPorts ? args.port + index : args.port;
  server.listen({ host: args.host, port: clientPort, backlog, exclusive: distinctPorts });
  const controlPort = controlBasePort + index;
  control.listen({ host: args.host, port: controlPort, exclusive: true }, () =>
    console.error(`socketio worker ${index} (pid ${process.pid}): clients ${args.host}:${clientPort}, control ${controlPort}, redis ${args.redis}`));
}

runCluster(procs, (index) => worker(index).catch((e) => fail(`worker ${index}: ${e.message}`)));
