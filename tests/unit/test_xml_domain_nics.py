"""NIC fields of issue 13 (xml/domain_nics.py): golden XML, round trips, the kept
rule (a field or a direct NIC a manifest does not name stays as the domain has it),
patching, diff, change classes, and the loader's refusals."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.diff import diff
from reconciler.model import SpecError, VirtualMachineSpec, nic_quantity
from reconciler.xml import domain
from reconciler.xml._fields import KEPT, ChangeClass, change_class

from .xml_support import assert_golden, manifest

NICS = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata:
  name: nics
spec:
  type: qemu
  memory: 64MiB
  vcpus: 1
  serial: none
  interfaces:
    - network: lan
      mac: "52:54:00:6e:00:01"
      portgroup: web
      vlan: {tags: [{id: 42, nativeMode: untagged}, {id: 43}], trunk: true}
    - bridge: br0
      mac: "52:54:00:6e:00:02"
      bandwidth:
        inbound: {average: 1000KiB/s, peak: 2MiB/s, burst: 256KiB}
        outbound: {average: 500}
      link: down
      mtu: 9000
    - direct: {dev: eth0, mode: passthrough}
      mac: "52:54:00:6e:00:03"
      vlan: 7
    - direct: {dev: eth1}
      mac: "52:54:00:6e:00:04"
"""


def _spec(text: str = NICS) -> VirtualMachineSpec:
    m = manifest(text)
    assert isinstance(m.spec, VirtualMachineSpec)
    return m.spec


def _with(**changes: Any) -> str:
    """NICS with the second NIC (bridge br0) given ``changes`` (None removes a key)."""
    import yaml

    document = yaml.safe_load(NICS)
    nic = document["spec"]["interfaces"][1]
    for key, value in changes.items():
        if value is None:
            nic.pop(key, None)
        else:
            nic[key] = value
    return str(yaml.safe_dump(document))


def test_render_golden_nics() -> None:
    xml = domain.render("nics", _spec(), uuid="6e6e6e6e-0000-4000-8000-000000000001")
    assert_golden(xml, "domain-nics.xml")


def test_round_trip_with_direct_nics() -> None:
    spec = _spec()
    xml = domain.render("nics", spec)
    assert domain.observe(xml, direct=True) == domain.project(spec)
    observed = domain.observe(xml, direct=True)
    assert observed["interfaces[52:54:00:6e:00:02].bandwidth.inbound.peak"] == 2048
    assert observed["interfaces[52:54:00:6e:00:02].bandwidth.inbound.burst"] == 256
    assert observed["interfaces[52:54:00:6e:00:01].vlan"] == "42/untagged,43 trunk"
    assert observed["interfaces[52:54:00:6e:00:04].direct.mode"] == "vepa"  # libvirt's default
    # without ``direct`` (a manifest that declares none) the direct NICs are unseen
    assert not any("6e:00:03" in key for key in domain.observe(xml))


def test_fields_a_manifest_does_not_name_are_kept() -> None:
    current = domain.render("nics", _spec())
    bare = _spec(_with(bandwidth=None, link=None, mtu=None))
    projected = domain.project(bare)
    assert projected["interfaces[52:54:00:6e:00:02].link"] is KEPT
    assert diff(projected, domain.observe(current, direct=True)) == []
    patched = domain.patch(current, bare)
    assert "<link state='down'/>" in patched.replace('"', "'")
    assert "<mtu size='9000'/>" in patched.replace('"', "'")
    assert "average='1000'" in patched.replace('"', "'")


def test_a_manifest_without_direct_nics_keeps_the_domains() -> None:
    current = domain.render("nics", _spec())
    text = NICS.split("    - direct: {dev: eth0")[0]
    spec = _spec(text)
    assert diff(domain.project(spec), domain.observe(current)) == []
    patched = domain.patch(current, spec)
    assert "eth0" in patched and "eth1" in patched
    # one direct NIC listed: the set of direct NICs is exact, the other one goes
    one = _spec(NICS.split("    - direct: {dev: eth1}")[0])
    patched = domain.patch(current, one)
    assert "eth0" in patched and "eth1" not in patched
    changes = diff(domain.project(one), domain.observe(current, direct=True))
    assert {c.path for c in changes} == {
        "interfaces[52:54:00:6e:00:04].direct.dev", "interfaces[52:54:00:6e:00:04].direct.mode",
        "interfaces[52:54:00:6e:00:04].model", "interfaces[52:54:00:6e:00:04].bootRom",
        "interfaces[52:54:00:6e:00:04].link"}  # up when <link> is absent: libvirt's default


def test_patch_sets_and_removes_the_declared_values() -> None:
    current = domain.render("nics", _spec())
    spec = _spec(_with(bandwidth={"outbound": {"average": 700}}, link="up", mtu=1500))
    patched = domain.patch(current, spec)
    assert diff(domain.project(spec), domain.observe(patched, direct=True)) == []
    text = patched.replace('"', "'")
    assert "<inbound" not in text and "<outbound average='700'/>" in text
    assert "<link state='up'/>" in text and "<mtu size='1500'/>" in text
    # null / {}: none at all, and no empty <bandwidth/> left behind
    spec = _spec(_with(bandwidth={}, mtu=None))
    patched = domain.patch(current, spec)
    assert "bandwidth" not in patched
    assert "<mtu" in patched  # mtu not named: kept
    none = _spec(_with(mtu=None).replace("bandwidth: {}", "bandwidth: null") + "")
    assert diff(domain.project(none), domain.observe(domain.patch(current, none),
                                                      direct=True)) == []  # fmt: skip


def test_change_classes() -> None:
    fields = domain.INTERFACES.fields
    assert change_class(fields, "link") is ChangeClass.LIVE
    assert change_class(fields, "bandwidth.inbound.average") is ChangeClass.LIVE
    assert change_class(fields, "bandwidth.outbound.burst") is ChangeClass.LIVE
    for path in ("mtu", "vlan", "portgroup", "direct.dev", "direct.mode"):
        assert change_class(fields, path) is ChangeClass.RESTART, path


def test_a_nic_becomes_direct_in_place() -> None:
    current = domain.render("nics", _spec())
    text = NICS.replace("    - bridge: br0\n", "    - direct: {dev: eth2, mode: bridge}\n")
    text = text.replace("      mtu: 9000\n", "")
    spec = _spec(text)
    patched = domain.patch(current, spec).replace('"', "'")
    assert "<interface type='direct'>" in patched and "br0" not in patched
    assert diff(domain.project(spec), domain.observe(patched, direct=True)) == []


@pytest.mark.parametrize(("nic", "where", "says"), [
    ({"bridge": "br0", "vlan": 42}, "vlan", "plain Linux bridge cannot carry a VLAN"),
    ({"direct": {"dev": "eth0", "mode": "bridge"}, "vlan": 42}, "vlan", "passthrough"),
    ({"direct": {"dev": "eth0"}, "mtu": 9000}, "mtu", "MTU of a direct NIC"),
    ({"bridge": "br0", "portgroup": "web"}, "portgroup", "a portgroup is one of a Network's"),
    ({"network": "lan", "vlan": {"tags": [{"id": 1, "nativeMode": "tagged"}]}}, "vlan",
     "nativeMode is for a trunk"),
    ({"network": "lan", "vlan": {"tags": [{"id": 1}, {"id": 2}], "trunk": False}},
     "vlan.trunk", "several VLAN tags are a trunk"),
    ({"network": "lan", "bandwidth": {"inbound": {"average": "1000B/s"}}},
     "bandwidth.inbound.average", "whole number of KiB"),
])  # fmt: skip
def test_the_loader_refuses_what_libvirt_cannot_carry(nic: dict[str, Any], where: str,
                                                       says: str) -> None:  # fmt: skip
    import yaml

    document = yaml.safe_load(NICS)
    document["spec"]["interfaces"] = [nic]
    with pytest.raises(SpecError) as raised:
        manifest(yaml.safe_dump(document))
    problems = raised.value.problems
    assert [".".join(str(p) for p in problem.path[1:]) for problem in problems] == [
        f"interfaces.0.{where}"], problems
    assert says in problems[0].message


@pytest.mark.parametrize(("value", "rate", "kib"), [
    (1000, True, 1000), ("1000KiB/s", True, 1000), ("8MB/s", True, 7812),
    ("1MiB/s", True, 1024), ("64KiB", False, 64), ("1M", False, 1024),
])  # fmt: skip
def test_bandwidth_units(value: object, rate: bool, kib: int) -> None:
    if value == "8MB/s":  # 8,000,000 B is not whole KiB: refused, not rounded
        with pytest.raises(ValueError, match="whole number of KiB"):
            nic_quantity(value, rate=rate)
        return
    assert nic_quantity(value, rate=rate) == kib


def test_kept_differs_from_nothing() -> None:
    assert diff({"a": KEPT}, {"a": 3}) == [] and diff({"a": KEPT}, {}) == []
    assert KEPT is not None and repr(KEPT) == "<kept>"


def test_preflight_wants_the_direct_device_on_the_host() -> None:
    from typing import cast

    from reconciler import preflight

    spec = _spec()
    m = manifest(NICS)
    ctx = cast(preflight.Context, None)  # the check reads no context
    facts = preflight.HostFacts(interfaces=frozenset({"eth0", "eth1", "lo"}))
    assert list(preflight.check_direct_devices(m, spec, facts, ctx)) == []
    facts = preflight.HostFacts(interfaces=frozenset({"eth0", "lo"}))
    [problem] = preflight.check_direct_devices(m, spec, facts, ctx)
    assert problem.path == ("spec", "interfaces", 3, "direct", "dev")
    assert problem.message == "no network interface eth1 on this host"
    assert problem.hint.startswith("did you mean eth0?")
    # not known (a remote host): not checked
    assert list(preflight.check_direct_devices(m, spec, preflight.HostFacts(), ctx)) == []
    assert preflight.wanted([m]).bridges  # the host's interfaces are read for it
