#!/usr/bin/env bash
# The main job on the bundled examples: prepare the host (packages, /dev/kvm,
# libvirtd, venv), then check manifests/examples/ against libvirt.
#
#   scripts/run-examples.sh [DIR]      (default: manifests/examples)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
DIR="${1:-$ROOT/manifests/examples}"

bash "$ROOT/scripts/setup-host.sh"
"$VENV/bin/reconciler" validate "$DIR"
