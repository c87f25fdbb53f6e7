"""Smoke tests proving the integration tier talks to a real libvirtd/QEMU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def _domain_xml(name: str, domain_type: str, cpu: str) -> str:
    # Smallest useful guest: no disk, no NIC (so no network boot), no graphics.
    return f"""
<domain type='{domain_type}'>
  <name>{name}</name>
  {cpu}
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <boot dev='hd'/>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def test_kvm_domain_lifecycle(conn: Any, names: Callable[[str], str], host_probe: Any) -> None:
    """Needs KVM: a ``type='kvm'`` domain starts, with the CPU this host's vmDefaults give
    (the run's probe). On a host without usable KVM the same lifecycle is proven with
    ``type='qemu'``, the best this host has, and the probe's finding is shown."""
    import libvirt

    from tests.integration.engine_support import hand_made_cpu_xml

    name = names("smoke")
    domain_type = "kvm" if host_probe.kvm_usable else "qemu"
    cpu = hand_made_cpu_xml("host-model", host_probe.defaults) if host_probe.kvm_usable else ""
    dom = conn.defineXML(_domain_xml(name, domain_type, cpu))
    assert dom.name() == name
    assert not dom.isActive()

    try:
        dom.create()
    except libvirt.libvirtError as e:
        pytest.fail(
            f"starting a type={domain_type} domain failed: {e}\n"
            f"the run's host probe said: {host_probe.summary()}\n"
            "Is /dev/kvm present and group kvm, mode 0660? "
            "(scripts/setup-host.sh sets that up)",
            pytrace=False,
        )

    assert dom.isActive()
    assert dom.ID() > 0
    state, _reason = dom.state()
    assert state == libvirt.VIR_DOMAIN_RUNNING

    dom.destroy()
    assert not dom.isActive()
    dom.undefine()
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(name)


def test_isolated_network_lifecycle(
    conn: Any,
    names: Callable[[str], str],
    bridge_names: Callable[[int], str],
    run_id: str,
) -> None:
    import libvirt

    name = names("net0")
    bridge = bridge_names(0)
    octet = int(run_id[:2], 16) % 254 + 1  # 10.254.<1..254>.0/24, per run
    # Isolated: no <forward>; no DHCP, no DNS (so no dnsmasq either).
    xml = f"""
<network>
  <name>{name}</name>
  <bridge name='{bridge}' stp='on' delay='0'/>
  <dns enable='no'/>
  <ip address='10.254.{octet}.1' netmask='255.255.255.0'/>
</network>
"""
    net = conn.networkDefineXML(xml)
    assert net.name() == name
    assert not net.isActive()

    net.create()
    assert net.isActive()
    assert net.bridgeName() == bridge

    net.destroy()
    assert not net.isActive()
    net.undefine()
    with pytest.raises(libvirt.libvirtError):
        conn.networkLookupByName(name)
