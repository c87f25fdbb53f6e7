#!/usr/bin/env bash
# Static checks: ruff (lint rules in pyproject.toml), mypy (strict, see
# pyproject.toml) and lint-imports (the layer contracts in .importlinter, see
# docs/architecture.md). Exits non-zero if any fails; all always run.
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
echo "lint: lint-imports (layers, see docs/architecture.md)"
"$VENV/bin/lint-imports" --no-cache --no-logo || rc=1

if [ "$rc" -ne 0 ]; then
    echo "lint: FAILED" >&2
else
    echo "lint: OK"
fi
exit "$rc"
