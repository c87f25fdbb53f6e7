"""Benchmark: `reconciler plan` and `reconciler apply` against the raw libvirt floor.

Run as root with libvirtd up:  .venv/bin/python -m bench.bench_engine [--vms 1000] [--create 200]

Floors, measured in the same run on the same libvirtd:
* read floor: list all domains and fetch each one's XML once (a bare loop);
* define floor: define N domains with a bare, sequential ``defineXML`` loop (the
  very XML the tool renders), then undefine them. The tool defines up to
  ``MAX_CONCURRENT`` at a time; the same defines on that many threads are timed
  too and printed for comparison, but the floor stays the sequential loop.
The tool:
* ``reconciler plan DIR`` (the whole command, interpreter start-up included)
  with ``--vms`` VMs defined and no changes;
* ``reconciler apply --yes DIR`` creating ``--create`` stopped VMs, in
  ``--repeat`` rounds with both define floors, each round on a host without
  them; the ratio is the median of the per-round ratios.
The package's bytecode is compiled first, as an installed package has it.
Every object is named ``rcbench-<hex>-...`` and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt

from reconciler.executor import MAX_CONCURRENT

VM = """\
apiVersion: reconciler/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels: {{role: bench}}
spec:
  type: kvm
  memory: 64MiB
  maxMemory: 128MiB
  vcpus: 1
  maxVcpus: 2
  machine: pc
  clock: utc
  disks:
    - file: {disks}/{name}.img
      format: raw
      bus: virtio
      cache: none
  interfaces:
    - network: {prefix}net
      model: virtio
  graphics: {{type: vnc, port: auto}}
  inputs: [tablet]
  state: stopped
"""

NETWORK = """\
apiVersion: reconciler/v1
kind: Network
metadata: {{name: {prefix}net}}
spec:
  mode: isolated
  bridge: {bridge}
  ipv4: {{address: 10.254.{octet}.1, prefix: 24}}
"""


def median_time(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def write_set(directory: Path, prefix: str, names: list[str], octet: int, bridge: str) -> None:
    """The manifests, and each VM's (empty) disk file: preflight refuses a missing one."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "network.yaml").write_text(
        NETWORK.format(prefix=prefix, octet=octet, bridge=bridge)
    )
    disks = disk_dir(prefix)
    disks.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in names:
        (directory / f"{name}.yaml").write_text(VM.format(name=name, prefix=prefix, disks=disks))
        (disks / f"{name}.img").touch()


def disk_dir(prefix: str) -> Path:
    return Path("/var/lib/libvirt/images") / f"{prefix}disks"


def reconciler(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--log-format", "json", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def cleanup(conn: libvirt.virConnect, prefix: str) -> None:
    for dom in conn.listAllDomains():
        if dom.name().startswith(prefix):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    for net in conn.listAllNetworks():
        if net.name().startswith(prefix):
            if net.isActive():
                net.destroy()
            net.undefine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--create", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    bytecode = _compile_bytecode()
    run = secrets.token_hex(3)
    prefix = f"rcbench-{run}-"
    octet = int(run[:2], 16) % 200 + 20
    conn = libvirt.open("qemu:///system")
    tmp = Path(tempfile.mkdtemp(prefix="rcbench-"))
    try:
        # apply: create N stopped VMs on a host without them; floor: a bare
        # defineXML loop over the very XML the tool renders
        small = tmp / "small"
        names = [f"{prefix}new-{i:04d}" for i in range(args.create)]
        write_set(small, prefix, names, octet, f"rcb{run}0")
        net = reconciler("apply", "--yes", "--state-dir", str(tmp / "small-state"),
                         str(_only_network(small, tmp)))  # fmt: skip
        assert net.returncode == 0, net.stdout[-2000:] + net.stderr[-2000:]
        xmls = _rendered_xml(small, tmp / "small-state", names)
        assert len(xmls) == args.create

        def define_floor() -> None:
            for xml in xmls:
                conn.defineXML(xml)

        def define_floor_threads() -> None:  # for comparison only: the tool's way
            with ThreadPoolExecutor(max_workers=MAX_CONCURRENT) as pool:
                list(pool.map(conn.defineXML, xmls))

        def undefine() -> None:
            for name in names:
                conn.lookupByName(name).undefine()

        def apply() -> None:
            done = reconciler("apply", "--yes", "--state-dir", str(tmp / "small-state"), str(small))
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

        # Rounds of floor, threaded floor, tool, each on a host without the VMs: a
        # ratio is taken within one round, so that a busy spell hits both sides.
        defines, threaded, applies = [], [], []
        for _ in range(args.repeat):
            for fn, samples in ((define_floor, defines), (define_floor_threads, threaded),
                                (apply, applies)):  # fmt: skip
                samples.append(median_time(fn, 1))
                undefine()
        t_define, t_threaded, t_apply = map(statistics.median, (defines, threaded, applies))
        ratios = [a / d for a, d in zip(applies, defines, strict=True)]

        # plan: N VMs defined and converged, no changes
        state = tmp / "state"
        big = tmp / "big"
        big_prefix = f"{prefix}b-"  # its own network and state: a host of its own
        vms = [f"{prefix}vm-{i:04d}" for i in range(args.vms)]
        write_set(big, big_prefix, vms, octet + 1, f"rcb{run}1")
        started = time.perf_counter()
        done = reconciler("apply", "--yes", "--state-dir", str(state), str(big))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        setup = time.perf_counter() - started

        def read_floor() -> None:
            for dom in conn.listAllDomains(0):
                try:
                    dom.XMLDesc(0)
                except libvirt.libvirtError as exc:  # undefined meanwhile, by other work
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise

        def plan() -> None:
            result = reconciler("plan", "--state-dir", str(state), str(big))
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

        first = time.perf_counter()
        plan()  # the first plan after apply parses everything and records what is in sync
        t_first = time.perf_counter() - first
        t_read = median_time(read_floor, args.repeat)
        t_plan = median_time(plan, args.repeat)
        total_domains = len(conn.listAllDomains(0))
    finally:
        cleanup(conn, prefix)
        shutil.rmtree(tmp, ignore_errors=True)
        for disks in Path("/var/lib/libvirt/images").glob(f"{prefix}*disks"):
            shutil.rmtree(disks, ignore_errors=True)
        conn.close()
    print(
        f"engine benchmark ({os.cpu_count()} cores), {total_domains} domains defined on the host:"
    )
    print(f"  setup: apply of {args.vms} VMs took {setup:.1f} s (not a measurement)")
    print(f"  read floor (list + XMLDesc each, median of {args.repeat})  {t_read * 1000:8.0f} ms")
    print(
        f"  reconciler plan, {args.vms} VMs, no changes (whole command) {t_plan * 1000:8.0f} ms"
        f"  = {t_plan / t_read:.2f}x read floor"
    )
    print(
        f"  (first plan after the apply, nothing known in sync yet:     {t_first * 1000:8.0f} ms"
        f"  = {t_first / t_read:.2f}x)"
    )
    print(f"  apply rounds ({args.repeat}), medians; bytecode {bytecode}:")
    print(
        f"  define floor ({args.create} x defineXML, bare sequential loop) "
        f"{t_define * 1000:8.0f} ms   rounds: {_ms(defines)}"
    )
    print(
        f"  the same on {MAX_CONCURRENT} threads (not the floor, for comparison) "
        f"{t_threaded * 1000:8.0f} ms   rounds: {_ms(threaded)}"
    )
    print(
        f"  reconciler apply, {args.create} new stopped VMs (whole cmd) {t_apply * 1000:8.0f} ms"
        f"   rounds: {_ms(applies)}"
    )
    print(
        f"  = {statistics.median(ratios):.2f}x define floor (median of per-round ratios "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); "
        f"{t_apply / t_threaded:.2f}x the threaded defines"
    )


def _ms(samples: list[float]) -> str:
    return ", ".join(f"{s * 1000:.0f}" for s in samples)


def _compile_bytecode() -> str:
    """Compile the package's bytecode, as installing it does (pip compiles on install).

    From a source checkout under PYTHONDONTWRITEBYTECODE=1 (CI, this project's
    scripts) every command would otherwise compile each module again, ~0.1 s."""
    import compileall

    import reconciler as package

    ok = compileall.compile_dir(Path(package.__file__).parent, quiet=1)
    return "compiled" if ok else "NOT compiled (each command compiles its modules)"


def _only_network(directory: Path, tmp: Path) -> Path:
    only = tmp / "net-only"
    only.mkdir(exist_ok=True)
    shutil.copy(directory / "network.yaml", only / "network.yaml")
    return only


def _rendered_xml(directory: Path, state: Path, names: list[str]) -> list[str]:
    """The XML the tool would define for ``names`` (from the pure planner, no libvirt writes)."""
    from reconciler.hypervisor import Hypervisor
    from reconciler.reconcile import PassOptions, Reconciler

    with Hypervisor.open() as hv:
        _load, _observed, plan = Reconciler(hv, PassOptions(directory, state)).plan()
    wanted = set(names)
    return [
        step.args["xml"]
        for action in plan.actions
        if action.name in wanted
        for step in action.steps
        if step.verb == "define-domain"
    ]


if __name__ == "__main__":
    main()
