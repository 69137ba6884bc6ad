// The part of the peer protocol every Node peer shares: arguments and the
// control commands (bench/peers/README.md).
//
//   B <id>\n<payload>                 send payload to every client
//   P <id> <user>,<user>,...\n<payload> send payload to each listed user
// answered, in order, with "<id> <delivered>".

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

/** Runs one control command against `ops.broadcast(payload)` and
 * `ops.push(users, payload)` (each returns the count delivered). */
export function runCommand(text, ops) {
  const nl = text.indexOf('\n');
  if (nl < 0) return '0 error no newline after the command line';
  const head = text.slice(0, nl).split(' ');
  const payload = text.slice(nl + 1);
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
