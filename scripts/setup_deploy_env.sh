#!/usr/bin/env bash
# Build (or reuse) the MONAI Deploy App SDK 4.0.0 environment in .venv-deploy. The SDK pulls Holoscan (about
# 1.8 GB) and makes `import monai` import it, so it never shares the main environment.
#   source scripts/setup_deploy_env.sh      (leaves DEPLOY_PY pointing at its python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv.sh"
DEPLOY_VENV="${DEPLOY_VENV:-$ROOT/.venv-deploy}"
REQS="$ROOT/scripts/deploy_app/requirements.txt"
install_deploy() { pip_install "$1" -r "$REQS"; }
ensure_venv "$DEPLOY_VENV" install_deploy "$REQS" "${BASH_SOURCE[0]}"
DEPLOY_PY="$DEPLOY_VENV/bin/python"
export DEPLOY_PY
