#!/usr/bin/env bash
# Installs what the benchmark peers (bench/peers/) need beyond Rust:
#   - Node.js and npm (Debian's), then the Node peers' packages exactly as
#     bench/peers/node/package-lock.json pins them (`npm ci`): ws,
#     socket.io + @socket.io/redis-adapter + redis, and uWebSockets.js
#     (@trufflesuite/uws-js-unofficial);
#   - redis-server (Debian's), for the socket.io peer's Redis adapter.
# The Rust peer (tokio-tungstenite) is built by cargo with the bench.
#
# Idempotent: what is already there is left alone (no registry is asked).
# Prints one line per thing it installs, and errors. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=bench/peers/node

apt_updated=
apt_install() {
    if [[ -z $apt_updated ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "bench-deps: installing nodejs and npm"
    apt_install nodejs npm
fi
if ! command -v redis-server >/dev/null; then
    echo "bench-deps: installing redis-server"
    apt_install redis-server
    # Debian's package starts a system redis on 6379; the bench starts its
    # own on another port, so leave the service be.
fi

# npm ci again only when a pinned package is missing or at another version.
stale=$(cd "$peers" && node -e '
  const lock = require("./package-lock.json");
  const fs = require("fs");
  let stale = "";
  for (const [path, meta] of Object.entries(lock.packages || {})) {
    if (!path || meta.optional) continue;
    try {
      const have = JSON.parse(fs.readFileSync(path + "/package.json", "utf8")).version;
      if (have !== meta.version) { stale = path; break; }
    } catch { stale = path; break; }
  }
  process.stdout.write(stale);
' 2>/dev/null || echo "node_modules")
if [[ -n $stale ]]; then
    echo "bench-deps: npm ci in $peers ($stale missing or stale)"
    (cd "$peers" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# uWebSockets.js ships native binaries per Node ABI; without one for this
# Node the peer would refuse to start (it never measures the JS fallback).
node -e '
  const abi = process.versions.modules;
  const bin = `'"$PWD/$peers"'/node_modules/@trufflesuite/uws-js-unofficial/binaries/uws_${process.platform}_${process.arch}_${abi}.node`;
  if (!require("fs").existsSync(bin)) {
    console.error(`bench-deps: warning: no uWebSockets.js binary for Node ${process.version} (ABI ${abi}); the uws peer will not run`);
  }
'
