#!/usr/bin/env bash
# Installs what the browser test (tests/browser.rs) needs beyond Rust:
# Debian's `chromium` (run headless as /usr/bin/chromium), a font so the
# screenshot has readable text, and Node to run the driver
# (tests/browser/driver.mjs). The driver speaks the Chrome DevTools Protocol
# over a pipe with Node's standard library only: no npm packages, and no
# browser is ever downloaded.
#
# Idempotent: what is already installed is left alone (no registry is
# asked). Quiet: prints one line per thing it installs, and errors. Run from
# anywhere as root (apt-get); CI runs it before the tests.
set -euo pipefail

missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
# The page uses the system sans-serif and monospace fonts.
dpkg-query -W -f='${Status}' fonts-dejavu-core 2>/dev/null | grep -q 'ok installed' ||
    missing+=(fonts-dejavu-core)
command -v node >/dev/null || missing+=(nodejs)

if ((${#missing[@]})); then
    echo "browser-deps: installing ${missing[*]}"
    # apt's chatter (debconf notes and the like) is shown only if it fails.
    if ! log=$(apt-get update -qq 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" 2>&1); then
        printf '%s\n' "$log" >&2
        echo "browser-deps: apt-get failed" >&2
        exit 1
    fi
fi
[[ -x /usr/bin/chromium ]] || {
    echo "browser-deps: /usr/bin/chromium is missing after the install" >&2
    exit 1
}

# The driver needs a Node that runs ES modules (any maintained release).
major=$(node -p 'process.versions.node.split(".")[0]')
if ((major < 16)); then
    echo "browser-deps: node $(node --version) is too old for tests/browser/driver.mjs (need ≥ 16)" >&2
    exit 1
fi
