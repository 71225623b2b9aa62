# Shared by the setup scripts (sourced): one virtual environment, reinstalled only when its inputs change.
#   ensure_venv VENV INSTALL_FN FILE...   creates VENV (python3.11) if missing; when the SHA-256 of FILE... differs
#                                         from the last install's, runs `INSTALL_FN VENV` and records it.
#   pip_install VENV ARGS...              quiet pip install into VENV (pip's notes about unreadable local index
#                                         folders are noise on some machines: filtered)

ensure_venv() {
  local venv="$1" install="$2"
  shift 2
  local python_bin="${PYTHON_BIN:-python3.11}"
  command -v "$python_bin" >/dev/null || python_bin=python3
  [ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
  local stamp="$venv/.requirements.sha256" want
  want="$(cat "$@" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "installing into $venv ..."
    "$install" "$venv"
    echo "$want" > "$stamp"
  fi
}

pip_install() {
  local venv="$1"
  shift
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
