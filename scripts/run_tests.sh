#!/usr/bin/env bash
# Set up the environment and run the test suite (the README's second quickstart command; CI runs it).
# Tests marked `slow` are skipped unless RUN_SLOW=1 (they exceed CI's time budget); extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
MARK=(-m "not slow")
[ "${RUN_SLOW:-0}" = "1" ] && MARK=()
exec "$PY" -m pytest -q "${MARK[@]}" "$@"
