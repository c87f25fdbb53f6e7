"""A VLAN tag on a NIC of a libvirt network that cannot carry one is a plan error.

Found by breaking issue 13's vocabulary: ``vlan: 42`` on a NIC of an isolated (Linux
bridge) network was planned as a restart-pending change, the domain was redefined,
and the VM then failed to start ("vlan tag not supported for this connection type"):
with ``updatePolicy: restart`` the daemon would shut it down and not get it back.
"""

from __future__ import annotations

from typing import Any

import yaml

from reconciler.errors import SourcePosition
from reconciler.hypervisor import DomainRecord, NetworkRecord
from reconciler.model import Manifest, build_manifest
from reconciler.observe import Observed
from reconciler.preflight import HostFacts, check

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: vm}
spec:
  type: qemu
  memory: 256MiB
  vcpus: 1
  graphics: {type: none}
  interfaces:
    - {network: lan, mac: "52:54:00:00:00:01", vlan: 42}
  state: stopped
"""

PLAIN = "<network><name>lan</name><bridge name='virbr9'/></network>"
OVS = ("<network><name>lan</name><forward mode='bridge'/><bridge name='ovsbr0'/>"
       "<virtualport type='openvswitch'/></network>")  # fmt: skip
SRIOV = ("<network><name>lan</name><forward mode='hostdev' managed='yes'>"
         "<pf dev='eth0'/></forward></network>")  # fmt: skip


def manifest(text: str) -> Manifest:
    return build_manifest(yaml.safe_load(text), SourcePosition("vm.yaml"))


def paths(observed: Observed, *extra: Manifest) -> list[str]:
    found = check([manifest(VM), *extra], HostFacts(), observed)
    return [".".join(map(str, p.path)) for _, p in found]


def networks(xml: str) -> dict[str, Any]:
    return {"lan": NetworkRecord("lan", "u", True, False, xml, None)}


def test_a_vlan_on_a_linux_bridge_network_is_refused() -> None:
    assert paths(Observed(networks=networks(PLAIN))) == ["spec.interfaces.0.vlan"]


def test_a_vlan_on_openvswitch_or_sriov_is_fine() -> None:
    assert paths(Observed(networks=networks(OVS))) == []
    assert paths(Observed(networks=networks(SRIOV))) == []


def test_a_network_not_defined_yet_is_judged_by_its_manifest() -> None:
    nat = manifest("apiVersion: reconciler/v1\nkind: Network\nmetadata: {name: lan}\n"
                   "spec: {mode: nat, ipv4: {address: 10.9.0.1, prefix: 24}}\n")  # fmt: skip
    assert paths(Observed(), nat) == ["spec.interfaces.0.vlan"]


def test_a_vlan_the_domain_already_has_is_left_alone() -> None:
    dom = ("<domain type='qemu'><name>vm</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
           "<os><type>hvm</type></os><devices><interface type='network'>"
           "<mac address='52:54:00:00:00:01'/><source network='lan'/>"
           "<vlan><tag id='42'/></vlan></interface></devices></domain>")  # fmt: skip
    observed = Observed(domains={"vm": DomainRecord("vm", "u", False, False, dom, None)},
                        networks=networks(PLAIN))  # fmt: skip
    assert paths(observed) == []
