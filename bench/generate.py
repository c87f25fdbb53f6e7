"""Generate realistic manifest sets for benchmarks: N VMs with their volumes, one pool, networks."""

from __future__ import annotations

from pathlib import Path

POOL = """\
apiVersion: reconciler/v1
kind: StoragePool
metadata: {{name: {prefix}pool}}
spec: {{type: dir, path: {pool_path}, autostart: true}}
"""

NETWORK = """\
apiVersion: reconciler/v1
kind: Network
metadata: {{name: {prefix}net}}
spec:
  mode: isolated
  bridge: {bridge}
  ipv4: {{address: 10.254.0.1, prefix: 16}}
"""

VM = """\
# yaml-language-server: $schema=../../schemas/manifest.schema.json
apiVersion: reconciler/v1
kind: Volume
metadata:
  name: {name}-root
  labels: {{role: web, tier: "{tier}"}}
spec:
  pool: {prefix}pool
  format: qcow2
  capacity: 1GiB
  reclaimPolicy: delete
---
apiVersion: reconciler/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels: {{role: web, tier: "{tier}"}}
spec:
  type: {vm_type}
  memory: 64MiB
  maxMemory: 128MiB
  vcpus: 1
  maxVcpus: 2
  machine: pc
  clock: localtime
  disks:
    - volume: {name}-root
      bus: virtio
      cache: none
  interfaces:
    - network: {prefix}net
      mac: "{mac}"
      model: virtio
  graphics: {{type: vnc, port: auto, listen: 127.0.0.1}}
  inputs: [tablet]
  serial: pty
  state: {state}
  autostart: false
  shutdownTimeout: 30s
"""


def write_manifests(
    root: Path,
    count: int,
    *,
    prefix: str = "bench-",
    pool_path: str = "/var/lib/libvirt/images/reconciler-bench",
    bridge: str = "rcbench0",
    state: str = "stopped",
    vm_type: str = "kvm",
) -> Path:
    """Write ``count`` VM+Volume files plus a pool and a network under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pool.yaml").write_text(POOL.format(prefix=prefix, pool_path=pool_path))
    (root / "network.yaml").write_text(NETWORK.format(prefix=prefix, bridge=bridge))
    vms = root / "vms"
    vms.mkdir(exist_ok=True)
    for i in range(count):
        name = f"{prefix}vm-{i:04d}"
        mac = f"52:54:01:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"
        (vms / f"{name}.yaml").write_text(
            VM.format(name=name, prefix=prefix, mac=mac, tier=i % 3, state=state, vm_type=vm_type)
        )
    return root
