#!/usr/bin/env node
// A pushgate client on Node's `ws`, for the interop tests.
//
//     node client.mjs URL MODE --token JWT [--count N] [--since EPOCH:SEQ]
//                     [--timeout S] [--grace-ms MS] [--send-bytes N] [--send-bomb]
//
// MODE: `header` sends the token as `Authorization: Bearer`, `query` as
// `?token=`; `resume` sends it in the header and adds `?since=EPOCH:SEQ`.
//
// Prints JSON lines on stdout: the welcome as received; in resume mode
// `{"type":"resume","recovered":...}`; each message after it as received;
// then, after N pushes and a grace period in which anything extra is printed
// too, `{"type":"closed","code":...}` with the close code the server answered
// the client's close with. On timeout prints `{"type":"timeout"}` and exits
// 2; on any error prints `{"type":"error",...}` and exits 1.
//
// permessage-deflate (offered, as by default): the welcome line gets
// `"_deflate": true|false` (negotiated or not) and every message line
// `"_compressed": true|false` (RSV1 on its first frame). `--send-bytes N`
// sends a compressible text message of about N bytes after the welcome;
// `--send-bomb` sends 1 MB of "a" (a few KB compressed) and prints the close
// code the server answers with.

import WebSocket from 'ws';

function emit(obj) {
  // Writes to a pipe are synchronous on Linux, so nothing is lost on exit.
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function parseArgs(argv) {
  const args = {
    count: 0, timeout: 20, graceMs: 300, since: null, token: null, sendBytes: 0, sendBomb: false,
  };
  const positional = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[++i];
    };
    switch (flag) {
      case '--token': args.token = value(); break;
      case '--count': args.count = Number(value()); break;
      case '--since': args.since = value(); break;
      case '--timeout': args.timeout = Number(value()); break;
      case '--grace-ms': args.graceMs = Number(value()); break;
      case '--send-bytes': args.sendBytes = Number(value()); break;
      case '--send-bomb': args.sendBomb = true; break;
      default:
        if (flag.startsWith('--')) throw new Error(`unknown flag ${flag}`);
        positional.push(flag);
    }
  }
  [args.url, args.mode] = positional;
  if (!args.url || !['header', 'query', 'resume'].includes(args.mode) || !args.token) {
    throw new Error('usage: client.mjs URL header|query|resume --token JWT [--count N] [--since E:S]');
  }
  if (args.mode === 'resume' && !args.since) throw new Error('resume needs --since EPOCH:SEQ');
  return args;
}

function fail(type, fields, code) {
  emit({ type, ...fields });
  process.exit(code);
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
} catch (e) {
  fail('error', { error: String(e.message) }, 1);
}

const params = [];
if (args.mode === 'query') params.push('token=' + args.token);
if (args.mode === 'resume') params.push('since=' + args.since);
let url = args.url;
if (params.length) url += (url.includes('?') ? '&' : '?') + params.join('&');
const headers = {};
if (args.mode !== 'query') headers.Authorization = 'Bearer ' + args.token;

setTimeout(() => fail('timeout', {}, 2), args.timeout * 1000).unref();

// Defaults otherwise: ws offers permessage-deflate (a server without
// `deflate` declines it; ws compresses messages of 1 KB or more) and answers
// the server's pings by itself.
const ws = new WebSocket(url, { headers, handshakeTimeout: 10000 });
let welcomed = false;
let pushes = 0;
let closing = false;

ws.on('message', (data, isBinary) => {
  if (isBinary) fail('error', { error: 'binary message from the server' }, 1);
  const message = JSON.parse(data.toString('utf8'));
  // The receiver's flag for the message being delivered (set from RSV1 on
  // its first frame); ws has no public API for it.
  message._compressed = ws._receiver._compressed;
  if (!welcomed) message._deflate = ws.extensions.split(',').includes('permessage-deflate');
  emit(message);
  if (!welcomed) {
    welcomed = true;
    if (args.mode === 'resume') emit({ type: 'resume', recovered: message.recovered });
    if (args.sendBytes) {
      ws.send(JSON.stringify({ type: 'note', pad: '0123456789abcdef'.repeat(args.sendBytes / 16) }));
    }
    if (args.sendBomb) {
      closing = true; // the server closes: the 'close' handler reports its code
      ws.send('a'.repeat(1000000));
    }
  } else if (message.type === 'push') {
    pushes += 1;
  }
  maybeFinish();
});

function maybeFinish() {
  if (closing || !welcomed || pushes < args.count) return;
  closing = true;
  // Anything after the expected pushes is printed too (the handler above
  // keeps running), so the test sees extras and duplicates.
  setTimeout(() => ws.close(1000), args.graceMs);
}

ws.on('close', (code) => {
  // `code` is the one in the server's close frame (1005 if it had none,
  // 1006 if the connection dropped without one).
  emit({ type: 'closed', code });
  process.exit(0);
});
ws.on('unexpected-response', (_req, res) => {
  fail('error', { error: `HTTP ${res.statusCode} instead of 101` }, 1);
});
ws.on('error', (e) => fail('error', { error: String(e.message) }, 1));
