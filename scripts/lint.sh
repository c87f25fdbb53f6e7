#!/usr/bin/env bash
# Static checks: ruff (lint rules in pyproject.toml) and mypy (strict, see
# pyproject.toml). Exits non-zero if either fails; both always run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"

# Packages + venv only; linting needs no libvirtd.
bash "$ROOT/scripts/setup-host.sh" --no-daemon

cd "$ROOT"
rc=0
echo "lint: ruff check ."
"$VENV/bin/ruff" check . || rc=1
echo "lint: mypy"
"$VENV/bin/mypy" || rc=1

if [ "$rc" -ne 0 ]; then
    echo "lint: FAILED" >&2
else
    echo "lint: OK"
fi
exit "$rc"
