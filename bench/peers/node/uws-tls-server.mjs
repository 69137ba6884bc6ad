// uWebSockets.js SSLApp for the TLS handshake benchmark
// (scripts/measure-tls.sh, `pushgate-bench tls-handshakes`): one App on one
// thread (one core, like one pushgate shard), the same certificate and key
// files as pushgate, a /ws route like uws-server.mjs so a client could
// upgrade. uWS's TLS is BoringSSL inside uSockets; the client offers only
// TLS 1.3 TLS_AES_128_GCM_SHA256 with X25519, so both servers do the same
// handshake (ECDHE X25519 + the certificate's ECDSA P-256 signature).
// Usage: node uws-tls-server.mjs --listen 127.0.0.1:PORT --cert F --key F
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const binary = `@trufflesuite/uws-js-unofficial/binaries/uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
const uWS = require(binary);

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const [host, port] = args.listen.split(':');

const app = uWS.SSLApp({ key_file_name: args.key, cert_file_name: args.cert });
app
  .ws('/ws', {
    compression: uWS.DISABLED,
    idleTimeout: 0,
    open: (ws) => ws.send('{"type":"welcome"}'),
  })
  .listen(host, Number(port), (token) => {
    if (!token) {
      console.error(`uws-tls-server: cannot listen on ${args.listen}`);
      process.exit(1);
    }
    console.log(`uws-tls-server listening on ${args.listen}`);
  });
