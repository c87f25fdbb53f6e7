#!/usr/bin/env bash
# The main job on the bundled examples: prepare the host (packages, /dev/kvm,
# libvirtd, venv), validate manifests/examples/, apply them to the local
# libvirtd, then show that a second plan has no changes.
#
# cloud-image.yaml names its image by a URL on 127.0.0.1 (our machines reach no
# image server): this script builds that stand-in image (scripts/example-image.py,
# the same bytes everywhere, so the example's sha256 holds) and serves it there
# with Python's http.server while it applies and plans, then stops the server.
#
#   scripts/run-examples.sh [DIR]      (default: manifests/examples)
#
# Environment: RECONCILER_STATE_DIR (default /var/lib/reconciler).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VENV="${VENV:-$ROOT/.venv}"
DIR="${1:-$ROOT/manifests/examples}"

bash "$ROOT/scripts/setup-host.sh"

# the stand-in cloud image, on the address and port cloud-image.yaml names
IMAGE_PORT=47823
IMAGE_NAME=cloud-image-stand-in.qcow2
served="$(mktemp -d)"
server_pid=""
stop_server() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$served"
}
trap stop_server EXIT
"$VENV/bin/python" "$ROOT/scripts/example-image.py" "$served/$IMAGE_NAME"
"$VENV/bin/python" -m http.server --bind 127.0.0.1 --directory "$served" "$IMAGE_PORT" \
    >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 50); do
    if "$VENV/bin/python" -c "import socket,sys; socket.create_connection(('127.0.0.1', $IMAGE_PORT), 0.2)" 2>/dev/null; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { echo "run-examples: the image server on 127.0.0.1:$IMAGE_PORT did not start (port in use?)" >&2; exit 1; }
    sleep 0.1
done

"$VENV/bin/reconciler" validate "$DIR"
"$VENV/bin/reconciler" apply --yes "$DIR"
echo
echo "run-examples: planning again; a converged host has no changes:"
"$VENV/bin/reconciler" plan "$DIR"
