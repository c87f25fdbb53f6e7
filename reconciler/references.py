"""Checks across manifests: duplicates, references, and claims on shared things.

Input: every manifest that loaded (model.Manifest), plus ``KnownObjects``,
the names of objects that exist in libvirt without a manifest (the stock
``default`` network, a pool made by hand), when libvirt was consulted.
Output: ``(manifest, FieldProblem)`` pairs; manifests.py places them in files.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from reconciler.model import (
    FieldProblem,
    Kind,
    Manifest,
    NetworkSpec,
    StoragePoolSpec,
    VirtualMachineSpec,
    VolumeSpec,
    seed_volume_name,
)
from reconciler.schema import suggest


@dataclass(frozen=True, slots=True)
class KnownObjects:
    """Objects present in libvirt that manifests may name without declaring them."""

    networks: frozenset[str] = frozenset()
    pools: frozenset[str] = frozenset()
    volumes: frozenset[tuple[str, str]] = frozenset()  # (pool, volume)
    consulted: bool = False  # False: libvirt was not asked (offline validation)


NOTHING_KNOWN = KnownObjects()

Finding = tuple[Manifest, FieldProblem]
_Describe = Callable[[str, str, Iterable[str]], str]


def check_references(manifests: Sequence[Manifest], known: KnownObjects) -> list[Finding]:
    """Every cross-manifest problem, in manifest order."""
    findings: list[Finding] = []
    by_key: dict[tuple[Kind, str], Manifest] = {}
    for m in manifests:
        first = by_key.get(m.key)
        if first is not None:
            findings.append(
                (
                    m,
                    FieldProblem(
                        ("metadata", "name"),
                        f"duplicate {m.kind.value} '{m.name}', first declared at {first.source}",
                        "names are unique per kind; rename or remove one",
                    ),
                )
            )
        else:
            by_key[m.key] = m
    volumes = {m.name: m for m in manifests if isinstance(m.spec, VolumeSpec)}
    pools = {m.name: m for m in manifests if isinstance(m.spec, StoragePoolSpec)}
    networks = {m.name: m for m in manifests if isinstance(m.spec, NetworkSpec)}
    absent = "" if known.consulted else " (libvirt was not consulted for unmanaged ones)"

    def missing(kind: str, name: str, have: Iterable[str]) -> str:
        hint = suggest(name, sorted(have))
        return f"no {kind} '{name}' in the manifests or libvirt{absent}" + (
            f"; {hint}" if hint else ""
        )

    for m in manifests:
        if isinstance(m.spec, VolumeSpec):
            _check_volume(m, m.spec, volumes, pools, known, missing, findings)
        elif isinstance(m.spec, VirtualMachineSpec):
            spec = m.spec
            for i, disk in enumerate(spec.disks):
                if disk.volume is None or disk.volume in volumes:
                    continue
                if any(v == disk.volume for _, v in known.volumes):
                    continue
                findings.append(
                    (
                        m,
                        FieldProblem(
                            ("spec", "disks", i, "volume"), missing("Volume", disk.volume, volumes)
                        ),
                    )
                )
            ci = spec.cloud_init
            if (
                ci is not None
                and ci.pool is not None
                and ci.pool not in pools
                and ci.pool not in known.pools
            ):
                findings.append(
                    (
                        m,
                        FieldProblem(
                            ("spec", "cloudInit", "pool"), missing("StoragePool", ci.pool, pools)
                        ),
                    )
                )
            if ci is not None and seed_volume_name(m.name) in volumes:
                other = volumes[seed_volume_name(m.name)]
                findings.append(
                    (
                        m,
                        FieldProblem(
                            ("spec", "cloudInit"),
                            f"the cloud-init seed volume '{seed_volume_name(m.name)}' is also "
                            f"declared as a Volume at {other.source}",
                            "a VM with cloudInit owns the volume <name>-cidata; rename the Volume",
                        ),
                    )
                )
            for i, nic in enumerate(spec.interfaces):
                if nic.network is None or nic.network in networks or nic.network in known.networks:
                    continue
                findings.append(
                    (
                        m,
                        FieldProblem(
                            ("spec", "interfaces", i, "network"),
                            missing("Network", nic.network, networks),
                        ),
                    )
                )
    findings.extend(_check_pool_paths(manifests))
    findings.extend(_check_networks(manifests))
    findings.extend(_check_vm_claims(manifests))
    return findings


def _check_volume(
    m: Manifest,
    spec: VolumeSpec,
    volumes: dict[str, Manifest],
    pools: dict[str, Manifest],
    known: KnownObjects,
    describe: _Describe,
    findings: list[Finding],
) -> None:
    if spec.pool not in pools and spec.pool not in known.pools:
        findings.append(
            (m, FieldProblem(("spec", "pool"), describe("StoragePool", spec.pool, pools)))
        )
    backing = spec.backing_volume
    if backing is None:
        return
    base = volumes.get(backing)
    if base is None:
        if (spec.pool, backing) not in known.volumes:
            findings.append(
                (m, FieldProblem(("spec", "backingVolume"), describe("Volume", backing, volumes)))
            )
        return
    assert isinstance(base.spec, VolumeSpec)
    if base.spec.pool != spec.pool:
        findings.append(
            (
                m,
                FieldProblem(
                    ("spec", "backingVolume"),
                    f"backing volume '{backing}' is in pool '{base.spec.pool}', not '{spec.pool}'",
                    "a clone lives in the pool of its backing volume",
                ),
            )
        )
    if base.spec.capacity > spec.capacity:
        findings.append(
            (
                m,
                FieldProblem(
                    ("spec", "capacity"),
                    f"capacity is smaller than that of backing volume '{backing}'",
                    "a clone is at least as large as its backing volume",
                ),
            )
        )
    seen = {m.name}
    cursor: Manifest | None = base
    while cursor is not None and isinstance(cursor.spec, VolumeSpec):
        if cursor.name in seen:
            findings.append(
                (
                    m,
                    FieldProblem(
                        ("spec", "backingVolume"),
                        f"backing chain of '{m.name}' loops back on itself",
                    ),
                )
            )
            break
        seen.add(cursor.name)
        nxt = cursor.spec.backing_volume
        cursor = volumes.get(nxt) if nxt else None


def _check_pool_paths(manifests: Sequence[Manifest]) -> list[Finding]:
    findings: list[Finding] = []
    by_path: dict[str, Manifest] = {}
    for m in manifests:
        if isinstance(m.spec, StoragePoolSpec) and m.spec.path is not None:
            first = by_path.setdefault(m.spec.path, m)
            if first is not m:
                findings.append(
                    (
                        m,
                        FieldProblem(
                            ("spec", "path"),
                            f"path {m.spec.path} is also the path of pool '{first.name}'",
                        ),
                    )
                )
    return findings


def _check_networks(manifests: Sequence[Manifest]) -> list[Finding]:
    findings: list[Finding] = []
    bridges: dict[str, Manifest] = {}
    subnets: list[tuple[ipaddress.IPv4Network, Manifest]] = []
    subnets6: list[tuple[ipaddress.IPv6Network, Manifest]] = []
    for m in manifests:
        if not isinstance(m.spec, NetworkSpec):
            continue
        spec = m.spec
        if spec.bridge and spec.mode != "bridge":
            first = bridges.setdefault(spec.bridge, m)
            if first is not m:
                findings.append(
                    (
                        m,
                        FieldProblem(
                            ("spec", "bridge"),
                            f"bridge {spec.bridge} is also made by network '{first.name}'",
                        ),
                    )
                )
        if spec.ipv4 is not None:
            net = ipaddress.IPv4Interface(f"{spec.ipv4.address}/{spec.ipv4.prefix}").network
            for other_net, other in subnets:
                if net.overlaps(other_net):
                    findings.append(
                        (
                            m,
                            FieldProblem(
                                ("spec", "ipv4"),
                                f"{net} overlaps {other_net} of network '{other.name}'",
                            ),
                        )
                    )
            subnets.append((net, m))
        findings += _overlapping_ipv6(m, subnets6)
    return findings


def _overlapping_ipv6(
    m: Manifest, subnets6: list[tuple[ipaddress.IPv6Network, Manifest]]
) -> list[Finding]:
    """The IPv6 subnet of network ``m`` against those of the networks before it (each
    appended to ``subnets6``): two bridges with overlapping prefixes split the host's
    routes between them, as for IPv4."""
    assert isinstance(m.spec, NetworkSpec)
    ipv6 = m.spec.ipv6
    if ipv6 is None:
        return []
    try:
        net = ipaddress.IPv6Interface(f"{ipv6.address}/{ipv6.prefix}").network
    except ValueError:
        return []  # reported by the loader
    found: list[Finding] = [
        (m, FieldProblem(("spec", "ipv6"), f"{net} overlaps {other_net} of network '{other.name}'"))
        for other_net, other in subnets6
        if net.overlaps(other_net)
    ]
    subnets6.append((net, m))
    return found


def _check_vm_claims(manifests: Sequence[Manifest]) -> list[Finding]:
    """Two VMs must not write the same volume, use the same MAC, or the same VNC port."""
    findings: list[Finding] = []
    writers: dict[str, list[tuple[Manifest, int, bool]]] = defaultdict(list)
    macs: dict[str, Manifest] = {}
    ports: dict[tuple[str, int], Manifest] = {}
    for m in manifests:
        if not isinstance(m.spec, VirtualMachineSpec):
            continue
        for i, disk in enumerate(m.spec.disks):
            if disk.volume:
                writers[disk.volume].append((m, i, disk.readonly))
        for i, nic in enumerate(m.spec.interfaces):
            first = macs.setdefault(nic.mac, m)
            if first is not m:
                findings.append(
                    (
                        m,
                        FieldProblem(
                            ("spec", "interfaces", i, "mac"),
                            f"MAC {nic.mac} is also used by VM '{first.name}'",
                        ),
                    )
                )
        g = m.spec.graphics
        if g is not None and g.port is not None:
            first = ports.setdefault((g.listen or "", g.port), m)
            if first is not m:
                findings.append(
                    (
                        m,
                        FieldProblem(
                            ("spec", "graphics", "port"),
                            f"port {g.port} is also used by VM '{first.name}'",
                            "use port: auto",
                        ),
                    )
                )
    for volume, users in writers.items():
        if len({u[0].name for u in users}) > 1 and not all(ro for _, _, ro in users):
            first = users[0][0]
            for m, i, _ in users[1:]:
                if m is not first:
                    findings.append(
                        (
                            m,
                            FieldProblem(
                                ("spec", "disks", i, "volume"),
                                f"volume '{volume}' is also attached to VM '{first.name}'",
                                "a volume is written by one VM; to share it, attach it readonly",
                            ),
                        )
                    )
    return findings
