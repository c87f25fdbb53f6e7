#!/usr/bin/env bash
# Run the whole test suite (unit + integration against a real libvirtd).
#
#   scripts/test.sh [pytest args...]     e.g. scripts/test.sh tests/unit -x
#
# Prepares the host first (scripts/setup-host.sh: packages, libvirtd, venv).
# Exits with pytest's code; "no tests collected" (pytest exit 5) is a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"

bash "$ROOT/scripts/setup-host.sh"

cd "$ROOT"
rc=0
"$VENV/bin/python" -m pytest "$@" </dev/null || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: ERROR: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
