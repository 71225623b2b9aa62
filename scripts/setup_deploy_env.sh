#!/usr/bin/env bash
# Build (or reuse) the MONAI Deploy App SDK 4.0.0 environment in .venv-deploy. The SDK pulls Holoscan (about
# 1.8 GB) and makes `import monai` import it, so it never shares the main environment.
#   source scripts/setup_deploy_env.sh      (leaves DEPLOY_PY pointing at its python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPLOY_VENV="${DEPLOY_VENV:-$ROOT/.venv-deploy}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
command -v "$PYTHON_BIN" >/dev/null || PYTHON_BIN=python3
REQS="$ROOT/scripts/deploy_app/requirements.txt"
[ -x "$DEPLOY_VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$DEPLOY_VENV"
STAMP="$DEPLOY_VENV/.requirements.sha256"
WANT="$(cat "$REQS" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "installing the MONAI Deploy App SDK 4.0.0 into $DEPLOY_VENV ..."
  "$DEPLOY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$WANT" > "$STAMP"
fi
DEPLOY_PY="$DEPLOY_VENV/bin/python"
export DEPLOY_PY
