#!/usr/bin/env bash
# Build (or reuse) MONAI Label 0.8.5's own environment in .venv-monailabel: it needs pydicom<3 (the project uses
# pydicom 3) and cannot import PyPI's torchvision beside CPU torch, so it never shares the main environment.
#   bash scripts/setup_monailabel_env.sh          (leaves MLPY pointing at its python when sourced)
# The recipe: torch, then MONAI Label's runtime dependencies by hand, then monailabel and pydicom-seg without
# their declared dependencies (which would pull torchvision), and a two-function torchvision.utils stand-in
# (scripts/monailabel/torchvision) for the one top-level torchvision import MONAI Label makes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MLVENV="${MLVENV:-$ROOT/.venv-monailabel}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
command -v "$PYTHON_BIN" >/dev/null || PYTHON_BIN=python3
REQS="$ROOT/scripts/monailabel/requirements.txt"
[ -x "$MLVENV/bin/python" ] || "$PYTHON_BIN" -m venv "$MLVENV"
STAMP="$MLVENV/.requirements.sha256"
WANT="$(cat "$REQS" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "installing MONAI Label 0.8.5 into $MLVENV ..."
  pipq() { "$MLVENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
  pipq -r "$REQS"
  pipq --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
  echo "$WANT" > "$STAMP"
fi
MLPY="$MLVENV/bin/python"
# the stand-in torchvision goes first on the path; the project is not on it (a packaged bundle carries its code)
export MLPYTHONPATH="$ROOT/scripts/monailabel"
