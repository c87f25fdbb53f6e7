"""Plans of an edited manifest against libvirt as the previous version left it, for the
golden-output tests of the plan text (test_plan_text.py) and --show-xml."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from reconciler.inventory import Inventory
from reconciler.manifests import LoadResult, load_directory
from reconciler.model import Kind, VolumeSpec
from reconciler.plan import Plan
from reconciler.planner import PlanOptions, digest, make_plan
from reconciler.snapshot import DomainRecord, NetworkRecord, Observed, PoolRecord, VolumeRecord
from reconciler.xml import domain as domain_xml
from reconciler.xml import network as network_xml
from reconciler.xml import pool as pool_xml
from reconciler.xml import volume as volume_xml


def load_text(root: Path, text: str) -> LoadResult:
    """Manifests from one file ``stack.yaml`` in ``root`` (replaced)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stack.yaml").write_text(textwrap.dedent(text).lstrip("\n"))
    result = load_directory(root)
    assert result.problems == (), result.problems
    return result


def applied(result: LoadResult, *, running: LoadResult | None = None) -> Observed:
    """libvirt right after ``result`` was applied: our own XML, owned. ``running``: the
    manifests the running VMs were started with (default: the same)."""
    started = {m.name: m for m in (running or result).manifests}
    pools_of = {m.name: m.spec.pool for m in result.manifests if isinstance(m.spec, VolumeSpec)}
    formats = {m.name: m.spec.format for m in result.manifests if isinstance(m.spec, VolumeSpec)}
    domains: dict[str, DomainRecord] = {}
    networks: dict[str, NetworkRecord] = {}
    pools: dict[str, PoolRecord] = {}
    volumes: dict[tuple[str, str], VolumeRecord] = {}
    objects: dict[str, dict[str, Any]] = {}
    for man in result.manifests:
        spec: Any = man.spec
        name = man.name
        key = f"{man.kind.value}/{name}"
        objects[key] = {"manifest": man.source.path, "digest": digest(man)}
        if man.kind is Kind.STORAGE_POOL:
            pools[name] = PoolRecord(name, f"uuid-{name}", True, spec.autostart,
                                     pool_xml.render(name, spec, uuid=f"uuid-{name}"))  # fmt: skip
        elif man.kind is Kind.VOLUME:
            objects[key].update(pool=spec.pool, reclaimPolicy=spec.reclaim_policy)
            volumes[(spec.pool, name)] = VolumeRecord(
                spec.pool, name, f"/srv/images/{name}", volume_xml.render(name, spec)
            )
        elif man.kind is Kind.NETWORK:
            xml = network_xml.render(name, spec, uuid=f"uuid-{name}")
            networks[name] = NetworkRecord(name, f"uuid-{name}", True, spec.autostart, xml, xml)
        else:
            objects[key].update(shutdownTimeout=spec.shutdown_timeout)

            def xml_of(m: Any) -> str:
                return domain_xml.render(
                    m.name, m.spec, uuid=f"uuid-{m.name}",
                    ownership=domain_xml.Ownership(m.source.path, digest(m)),
                    volume_pools=pools_of, volume_formats=formats,
                )  # fmt: skip

            active = spec.state == "running"
            live = xml_of(started.get(name, man)) if active else None
            domains[name] = DomainRecord(name, f"uuid-{name}", active, spec.autostart,
                                         xml_of(man), live)  # fmt: skip
    return Observed(domains, networks, pools, volumes, {}, Inventory(objects))


def plan_edit(tmp: Path, before: str, after: str, **options: Any) -> Plan:
    """The plan of manifests ``after`` against libvirt as ``before`` left it."""
    observed = applied(load_text(tmp / "before", before))
    return make_plan(load_text(tmp / "m", after), observed, PlanOptions(**options))


def plan_pending(tmp: Path, before: str, after: str, **options: Any) -> Plan:
    """The plan of ``after`` when libvirt already has it defined, but the running VMs
    were started with ``before`` (a restart pending)."""
    now = load_text(tmp / "m", after)
    observed = applied(now, running=load_text(tmp / "before", before))
    return make_plan(now, observed, PlanOptions(**options))


STACK = """
apiVersion: reconciler/v1
kind: StoragePool
metadata: {name: images}
spec: {path: /srv/images}
---
apiVersion: reconciler/v1
kind: Volume
metadata: {name: web-root}
spec: {pool: images, capacity: 1GiB}
---
apiVersion: reconciler/v1
kind: Volume
metadata: {name: web-data}
spec: {pool: images, capacity: 20GiB, reclaimPolicy: delete}
---
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: web}
spec:
  memory: 512MiB
  maxMemory: 1GiB
  disks: [{volume: web-root}<DISKS>]
  interfaces: [{network: lab, mac: "52:54:00:00:00:01"}]
  shutdownTimeout: 120s<VM>
---
apiVersion: reconciler/v1
kind: Network
metadata: {name: lab}
spec:
  mode: isolated
  bridge: virbr-lab
  ipv4:
    address: 10.254.0.1
    prefix: 24
    dhcp:
      start: 10.254.0.100
      end: 10.254.0.200
      hosts: [{mac: "52:54:00:00:00:01", ip: 10.254.0.10, name: web}]
"""


def stack(disks: str = "", vm: str = "", *, without: str = "") -> str:
    """``STACK`` with more disks, more VM fields, and the document naming ``without`` left out."""
    text = STACK.replace("<DISKS>", disks).replace("<VM>", vm)
    if without:
        docs = text.split("---\n")
        text = "---\n".join(d for d in docs if f"metadata: {{name: {without}}}" not in d)
    return text
