#!/usr/bin/env bash
# Runs Serin's tests on a fresh machine: installs and starts whatever they need first, then runs
# every test (unit, property, CLI end-to-end). Today the tests need only the Rust toolchain;
# servers that later tests start (Prometheus, Envoy, stand-ins) are installed and started here.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --all-targets --no-fail-fast
else
  cargo test --locked --all-targets --no-fail-fast
fi
