#!/usr/bin/env bash
# Set up the environment and run the test suite (the README's second quickstart command; CI runs it).
# Tests marked `slow` are skipped unless RUN_SLOW=1 (they exceed CI's time budget), and those marked `monailabel`
# unless RUN_MONAILABEL=1 (they build MONAI Label's own environment), and those marked `deploy` unless RUN_DEPLOY=1
# (they build the MONAI Deploy SDK's environment); extra arguments go to pytest. The tests run in TEST_WORKERS
# processes (pytest-xdist, default 2: most of their time is subprocesses importing MONAI, which a second core
# overlaps), each test file whole in one of them; TEST_WORKERS=0 runs them in this process.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
SKIP=()
[ "${RUN_SLOW:-0}" = "1" ] || SKIP+=("not slow")
[ "${RUN_MONAILABEL:-0}" = "1" ] || SKIP+=("not monailabel")
[ "${RUN_DEPLOY:-0}" = "1" ] || SKIP+=("not deploy")
MARK=()
if [ ${#SKIP[@]} -gt 0 ]; then
  expr="${SKIP[0]}"; for s in "${SKIP[@]:1}"; do expr="$expr and $s"; done
  MARK=(-m "$expr")
fi
WORKERS=(-n "${TEST_WORKERS:-2}" --dist loadfile)
[ "${TEST_WORKERS:-2}" != "0" ] || WORKERS=(-p no:xdist)
exec "$PY" -m pytest -q "${WORKERS[@]}" "${MARK[@]}" "$@"
