#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install requirements.txt into it.
# Sourced by scripts/run_demo.sh and scripts/run_tests.sh; leaves PY pointing at the environment's python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
VENV="${VENV:-$ROOT/.venv}"
install_main() { pip_install "$1" -r "$ROOT/requirements.txt"; }
ensure_venv "$VENV" install_main "$ROOT/requirements.txt"
PY="$VENV/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
