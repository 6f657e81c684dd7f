#!/usr/bin/env bash
# Checks the Helm chart charts/serin: its CRDs equal crds/, it lints, it renders (a real Helm
# install, Helm as a library from PyPI's helm-sdkpy, against a recording API endpoint), every
# rendered object validates (kubernetes-validate, strict), and what the chart promises holds
# (hardening, wiring, flags per value, the dashboard's PromQL and series, the README's values
# and RBAC).
# Needs only Python 3.10+ with pip and access to PyPI; the tools go into a venv under target/.
# That the RBAC allows every request of a real rollout is tests/chart.rs (run by scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_SDKPY=0.1.32
KUBERNETES_VALIDATE=1.37.0
PYYAML=6.0.3
PROMQL_PARSER=0.11.0
VENV=target/chart-venv
PY=${PYTHON:-python3}

die() { echo "check-chart: $*" >&2; exit 1; }

command -v "$PY" >/dev/null || die "$PY not found; install Python 3.10 or newer"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$("$PY" -V 2>&1) is too old; helm-sdkpy needs Python 3.10 or newer (set PYTHON=...)"
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] \
  || die "helm-sdkpy $HELM_SDKPY ships its Helm library for Linux x86_64 only, not $(uname -s)-$(uname -m)"

stamp="helm-sdkpy==$HELM_SDKPY kubernetes-validate==$KUBERNETES_VALIDATE PyYAML==$PYYAML promql-parser==$PROMQL_PARSER"
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "check-chart: installing $stamp into $VENV"
  rm -rf "$VENV"
  mkdir -p target
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 without python3-venv has no ensurepip: make the venv bare, fill it with
    # the interpreter's own pip.
    rm -rf "$VENV"
    "$PY" -m venv --without-pip "$VENV" || die "cannot create a venv in $VENV"
    pip_in() { "$PY" -m pip --python "$VENV/bin/python" "$@"; }
  else
    pip_in() { "$VENV/bin/python" -m pip "$@"; }
  fi
  wheels=$(mktemp -d)
  trap 'rm -rf "$wheels"' EXIT
  # helm-sdkpy declares Python >= 3.12 but runs on 3.10 and 3.11: fetch the wheel as for 3.12.
  pip_in download --quiet --no-deps --python-version 3.12 --only-binary=:all: \
    --dest "$wheels" "helm-sdkpy==$HELM_SDKPY" || die "cannot download helm-sdkpy $HELM_SDKPY from PyPI"
  pip_in install --quiet --disable-pip-version-check --ignore-requires-python "$wheels"/helm_sdkpy-*.whl \
    || die "cannot install helm-sdkpy $HELM_SDKPY"
  pip_in install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE" "PyYAML==$PYYAML" "promql-parser==$PROMQL_PARSER" \
    || die "cannot install kubernetes-validate $KUBERNETES_VALIDATE and promql-parser $PROMQL_PARSER"
  echo "$stamp" > "$VENV/.stamp"
fi

# Helm reads HELM_DRIVER when its library loads: releases are kept in memory, not in Secrets.
HELM_DRIVER=memory PYTHONDONTWRITEBYTECODE=1 exec "$VENV/bin/python" scripts/chart/check.py \
  --chart charts/serin --crds crds --telemetry src/controller/telemetry.rs
