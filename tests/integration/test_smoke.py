"""Smoke tests proving the integration tier talks to a real libvirtd/QEMU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def _domain_xml(name: str) -> str:
    # Smallest useful KVM guest: no disk, no NIC (so no network boot), no graphics.
    return f"""
<domain type='kvm'>
  <name>{name}</name>
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


def test_kvm_domain_lifecycle(conn: Any, names: Callable[[str], str]) -> None:
    import libvirt

    name = names("smoke")
    dom = conn.defineXML(_domain_xml(name))
    assert dom.name() == name
    assert not dom.isActive()

    try:
        dom.create()
    except libvirt.libvirtError as e:
        msg = str(e)
        if "kvm" in msg.lower():
            pytest.fail(
                f"starting a type=kvm domain failed: {msg}\n"
                "Is /dev/kvm present and group kvm, mode 0660? "
                "(scripts/setup-host.sh sets that up)",
                pytrace=False,
            )
        raise

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
