#!/usr/bin/env bash
# Build (or reuse) MONAI Label 0.8.5's own environment in .venv-monailabel: it needs pydicom<3 (the project uses
# pydicom 3) and cannot import PyPI's torchvision beside CPU torch, so it never shares the main environment.
#   bash scripts/setup_monailabel_env.sh          (leaves MLPY pointing at its python when sourced)
# The recipe: torch, then MONAI Label's runtime dependencies by hand, then monailabel and pydicom-seg without
# their declared dependencies (which would pull torchvision), and a two-function torchvision.utils stand-in
# (scripts/monailabel/torchvision) for the one top-level torchvision import MONAI Label makes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
MLVENV="${MLVENV:-$ROOT/.venv-monailabel}"
REQS="$ROOT/scripts/monailabel/requirements.txt"
install_monailabel() {
  pip_install "$1" -r "$REQS"
  pip_install "$1" --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
}
ensure_venv "$MLVENV" install_monailabel "$REQS" "${BASH_SOURCE[0]}"
MLPY="$MLVENV/bin/python"
# the stand-in torchvision goes first on the path; the project is not on it (a packaged bundle carries its code)
export MLPYTHONPATH="$ROOT/scripts/monailabel"
