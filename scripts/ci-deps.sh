#!/usr/bin/env bash
# Installs what the interop tests (tests/interop.rs) need beyond Rust: the
# Python `websockets` client (tests/interop/requirements.txt) and the Node
# `ws` client (tests/interop/package.json + package-lock.json), each at a
# pinned version, from PyPI and the npm registry. The SDK's tests
# (tests/sdk.rs: sdk/test/ under `node --test`, sdk/bench/drain-fleet.mjs)
# need only Node ≥ 20 — its test runner, fetch and WebSocket; the SDK has no
# dependencies — which is checked here.
#
# Idempotent: what is already installed at the pinned version is left alone
# (no registry is asked). Quiet: prints one line per thing it installs, and
# errors. Run from anywhere; CI runs it before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
interop=tests/interop

python_version=$(sed -n 's/^websockets==\([0-9.]*\).*/\1/p' "$interop/requirements.txt")
node_version=$(sed -n 's/^ *"ws": *"\([0-9.]*\)".*/\1/p' "$interop/package.json")
[[ -n $python_version && -n $node_version ]] || {
    echo "ci-deps: could not read the pinned versions from $interop" >&2
    exit 1
}

apt_updated=
apt_install() {
    if [[ -z $apt_updated ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Python 3 with pip, then websockets.
if ! command -v python3 >/dev/null; then
    echo "ci-deps: installing python3"
    apt_install python3 python3-pip
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "ci-deps: installing pip"
    apt_install python3-pip
fi
installed=$(python3 -c 'import websockets; print(websockets.__version__)' 2>/dev/null || true)
if [[ $installed != "$python_version" ]]; then
    echo "ci-deps: pip install websockets==$python_version"
    # --break-system-packages only where pip knows it (a Debian python3
    # marks its site-packages as externally managed).
    extra=()
    pip_help=$(python3 -m pip install --help 2>/dev/null || true)
    if [[ $pip_help == *--break-system-packages* ]]; then
        extra+=(--break-system-packages)
    fi
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet \
        --disable-pip-version-check --no-input "${extra[@]}" -r "$interop/requirements.txt"
fi

# Node with npm, then ws (exactly the lockfile's tree).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "ci-deps: installing nodejs and npm"
    apt_install nodejs npm
fi
installed=$(node -p 'require(process.argv[1]).version' \
    "$PWD/$interop/node_modules/ws/package.json" 2>/dev/null || true)
if [[ $installed != "$node_version" ]]; then
    echo "ci-deps: npm ci (ws@$node_version) in $interop"
    (cd "$interop" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The several-hosts tests (tests/cluster.rs) start real Redis servers and
# a Redis Cluster: redis-server and redis-cli (Debian's 7.0 has sharded
# pub/sub).
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "ci-deps: installing redis-server"
    apt_install redis-server
fi

# The SDK's tests: Node ≥ 20 (node:test, fetch, WebSocket behind
# --experimental-websocket on 20, built in from 22).
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 20)); then
    echo "ci-deps: node $(node --version) is too old for the SDK tests (tests/sdk.rs need ≥ 20);" \
        "install a current Node (e.g. the distribution's nodejs 20+)" >&2
    exit 1
fi
