#!/usr/bin/env bash
# The main job on the bundled examples: prepare the host (packages, /dev/kvm,
# libvirtd, venv), validate manifests/examples/, apply them to the local
# libvirtd, then show that a second plan has no changes.
#
#   scripts/run-examples.sh [DIR]      (default: manifests/examples)
#
# Environment: RECONCILER_STATE_DIR (default /var/lib/reconciler).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
DIR="${1:-$ROOT/manifests/examples}"

bash "$ROOT/scripts/setup-host.sh"
"$VENV/bin/reconciler" validate "$DIR"
"$VENV/bin/reconciler" apply --yes "$DIR"
echo
echo "run-examples: planning again; a converged host has no changes:"
"$VENV/bin/reconciler" plan "$DIR"
