// The part of the peer protocol every Node peer shares: arguments, the
// control commands (bench/peers/README.md) and running one process per core.
//
//   B <id>\n<payload>                 send payload to every client
//   P <id> <user>,<user>,...\n<payload> send payload to each listed user
// answered, in order, with "<id> <delivered>".

import cluster from 'node:cluster';
import os from 'node:os';

/** `--listen HOST:PORT` (loopback only) and the peer's own flags. */
export function parseArgs(argv, extra = {}) {
  const out = { host: '127.0.0.1', port: 8090, ...extra };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) fail(`${flag} needs a value`);
    if (flag === '--listen') {
      const at = value.lastIndexOf(':');
      out.host = value.slice(0, at);
      out.port = Number(value.slice(at + 1));
      if (!/^127\.\d+\.\d+\.\d+$/.test(out.host) || !(out.port > 0)) {
        fail(`--listen ${value}: want 127.x.y.z:PORT (loopback only)`);
      }
    } else if (flag.startsWith('--') && flag.slice(2) in extra) {
      out[flag.slice(2)] = value;
    } else {
      fail(`unknown argument ${flag}`);
    }
  }
  return out;
}

/** A positive integer flag value, or exit. */
export function positive(name, value) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) fail(`--${name} ${value}: want a positive integer`);
  return n;
}

/** The flags every multi-process peer takes: `--procs` (default: one per
 * core), `--control-base-port` (process i takes control connections on
 * base + i; default: the client port + 10) and `--backlog`. */
export const PROCESS_FLAGS = { procs: String(os.availableParallelism()), 'control-base-port': '0', backlog: '511' };

export function processOptions(args) {
  const base = Number(args['control-base-port']) || args.port + 10;
  return {
    procs: positive('procs', args.procs),
    controlBasePort: positive('control-base-port', base),
    backlog: positive('backlog', args.backlog),
  };
}

export function fail(message) {
  console.error(`peer: ${message}`);
  process.exit(2);
}

/** The user of `/ws?user=ID` (or of socket.io's `/ws/?...&user=ID`). */
export function userOf(url) {
  const q = url.indexOf('?');
  if (q < 0) return null;
  return new URLSearchParams(url.slice(q + 1)).get('user') || null;
}

export function pathOf(url) {
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

export function welcome(user) {
  return JSON.stringify({ type: 'welcome', user });
}

/** Runs one control command, given as bytes (a Buffer or Uint8Array),
 * against `ops.broadcast(payload)` and `ops.push(users, payload)`, each of
 * which returns the count delivered. Only the command line is decoded; the
 * payload is handed on as a view of the received bytes, so a peer can send
 * those very bytes to every recipient (encoded once). */
export function runCommand(bytes, ops) {
  const nl = bytes.indexOf(10);
  if (nl < 0) return '0 error no newline after the command line';
  const head = Buffer.from(bytes.buffer, bytes.byteOffset, nl).toString('latin1').split(' ');
  const payload = bytes.subarray(nl + 1);
  if (head[0] === 'B') return `${head[1]} ${ops.broadcast(payload)}`;
  if (head[0] === 'P') return `${head[1]} ${ops.push(head[2] ? head[2].split(',') : [], payload)}`;
  return `0 error unknown command ${head[0]}`;
}

/** Exit on SIGTERM/SIGINT at once: the bench measures, it does not drain. */
export function exitOnSignals(cleanup = () => {}) {
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => {
      try { cleanup(); } finally { process.exit(0); }
    });
  }
}

/** node:cluster as it is deployed (PM2's cluster mode, the Node docs): the
 * primary forks `procs` workers, which share the client port (the primary
 * accepts and hands connections round-robin, Node's default on Linux).
 * Worker i runs `startWorker(i)`. A worker that dies fails the peer: the
 * bench must not measure half a server. */
export function runCluster(procs, startWorker) {
  if (!cluster.isPrimary) {
    exitOnSignals();
    startWorker(Number(process.env.PEER_WORKER_INDEX));
    return;
  }
  let stopping = false;
  for (let i = 0; i < procs; i++) cluster.fork({ PEER_WORKER_INDEX: String(i) });
  cluster.on('exit', (worker, code, signal) => {
    if (stopping) return;
    console.error(`peer: worker ${worker.process.pid} exited (${signal ?? code}); stopping`);
    process.exit(1);
  });
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => {
      stopping = true;
      const workers = Object.values(cluster.workers);
      for (const w of workers) w.process.kill('SIGTERM');
      // Exit once every worker is gone (they exit at once), so the port is
      // free when the primary's pid is.
      let left = workers.length;
      if (left === 0) process.exit(0);
      for (const w of workers) w.process.once('exit', () => { if (--left === 0) process.exit(0); });
      setTimeout(() => process.exit(0), 5000).unref();
    });
  }
}
