#!/usr/bin/env bash
# Build (or reuse) nnU-Net v2 (2.8.1), the benchmark's peer, in .venv-nnunet, and put the benchmark's budget
# trainer where nnU-Net finds it.
#   source scripts/setup_nnunet_env.sh      (leaves NNUNET_PY pointing at its python)
# CPU torch goes in first, and is named again beside nnunetv2: otherwise torchvision's newest release pulls a
# newer, CUDA torch. PyPI's torchvision then fails to import beside CPU torch, which nnU-Net's plain U-Net never
# needs, but its trainer search does (scripts/nnunet_peer/nnUNetTrainerBudget.py says how that is avoided).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
NNUNET_VENV="${NNUNET_VENV:-$ROOT/.venv-nnunet}"
install_nnunet() {
  pip_install "$1" torch==2.13.0
  pip_install "$1" nnunetv2==2.8.1 torch==2.13.0 torchvision==0.28.0 psutil
}
ensure_venv "$NNUNET_VENV" install_nnunet "${BASH_SOURCE[0]}"
NNUNET_PY="$NNUNET_VENV/bin/python"
TRAINERS="$("$NNUNET_PY" -c "import nnunetv2, os; print(os.path.join(nnunetv2.__path__[0], 'training', 'nnUNetTrainer'))")"
cmp -s "$ROOT/scripts/nnunet_peer/nnUNetTrainerBudget.py" "$TRAINERS/nnUNetTrainerBudget.py" \
  || cp "$ROOT/scripts/nnunet_peer/nnUNetTrainerBudget.py" "$TRAINERS/"
export NNUNET_PY
