#!/usr/bin/env bash
# The project's test command (README "Test"): every crate's unit and
# integration tests, against real io_uring rings and real sockets on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"
