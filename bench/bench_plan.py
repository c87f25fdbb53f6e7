"""Benchmark: the planner alone, in process, for N VMs (no libvirt, no start-up).

Run:  .venv/bin/python -m bench.bench_plan [--vms 1000] [--repeat 25]

The VMs are like bench_engine's; libvirt's side is made of the very XML the
planner renders for them (an ``Observed`` built by hand, its records by their
older names so that this runs on older trees too; nothing defined anywhere), so
the figures are the planner's CPU time only, steadier on a busy machine than the
whole command. Two cases, each the best and the median of ``--repeat`` runs on a
fresh ``Observed`` (nothing interpreted yet):
* full compare: no VM known in sync, every definition parsed and compared;
* verified no-op: every VM's fingerprint known in sync (the daemon's and a second
  plan's case), nothing parsed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from reconciler.inventory import Inventory
from reconciler.manifests import load_directory
from reconciler.planner import PlanOptions, make_plan
from reconciler.snapshot import DomainRecord, NetworkRecord, Observed

VM = """\
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  memory: 64MiB
  maxMemory: 128MiB
  vcpus: 1
  maxVcpus: 2
  disks: [{{file: {disks}/{name}.img, format: raw, bus: virtio, cache: none}}]
  interfaces: [{{network: bnet, model: virtio}}]
  graphics: {{type: vnc, port: auto}}
  inputs: [tablet]
  state: stopped
"""
NETWORK = """\
apiVersion: reconciler/v1
kind: Network
metadata: {name: bnet}
spec: {mode: isolated, bridge: rcbplan0, ipv4: {address: 10.254.9.1, prefix: 24}}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rcbench-plan-"))
    disks = folder / "disks"
    disks.mkdir()
    (folder / "network.yaml").write_text(NETWORK)
    for i in range(args.vms):
        name = f"vm-{i:04d}"
        (disks / f"{name}.img").write_bytes(b"")
        (folder / f"{name}.yaml").write_text(VM.format(name=name, disks=disks))
    load = load_directory(folder)
    assert not load.problems, load.problems[:3]
    options = PlanOptions(instance="bench")
    created = make_plan(load, Observed(), options)
    xml = {a.name: s.args["xml"] for a in created.actions for s in a.steps
           if s.verb == "define-domain"}  # fmt: skip
    network = next(s.args["xml"] for a in created.actions for s in a.steps
                   if s.verb == "define-network")  # fmt: skip
    inventory = Inventory()
    for a in created.actions:
        if a.owner_record is not None:
            inventory = inventory.with_entry(a.key, a.owner_record)

    def observed() -> Observed:
        return Observed(
            domains={n: DomainRecord(n, f"uuid-{n}", False, False, x, None)
                     for n, x in xml.items()},
            networks={"bnet": NetworkRecord("bnet", "u", True, False, network, network)},
            inventory=inventory,
        )  # fmt: skip

    first = make_plan(load, observed(), options)
    assert not first.has_changes, "the synthetic host should be in sync"
    verified = {a.name: a.fingerprint for a in first.actions if a.fingerprint}
    known = PlanOptions(instance="bench", verified=verified)
    full, fast = [], []
    for _ in range(args.repeat):
        for opts, samples in ((options, full), (known, fast)):
            host = observed()
            started = time.perf_counter()
            make_plan(load, host, opts)
            samples.append(time.perf_counter() - started)
    for what, samples in (("full compare", full), ("verified no-op", fast)):
        print(f"  planner, {args.vms} VMs, {what:15} best {min(samples) * 1000:6.0f} ms  "
              f"median {statistics.median(samples) * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
