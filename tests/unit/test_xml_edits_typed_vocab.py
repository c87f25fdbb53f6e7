"""The escape hatch after issue 13's typed vocabulary: an ``xml`` entry that adds what a
typed field now says (an rng, a block disk, a share, a host device, tuning, an IPv6
``<ip>``, a route, a portgroup) is refused naming that field, whether the manifest names
the field or leaves it kept; what no typed field says stays the hatch's."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.model import NetworkSpec, VirtualMachineSpec, XmlEdit
from reconciler.xml import domain
from reconciler.xml import network as network_xml

from .xml_support import manifest

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: hatch}
spec:
  type: qemu
  memory: 256MiB
  vcpus: 2
  serial: none
"""

NET = """
apiVersion: reconciler/v1
kind: Network
metadata: {name: hatchnet}
spec:
  mode: isolated
  ipv4: {address: 10.77.0.1, prefix: 24}
"""


def _vm() -> VirtualMachineSpec:
    spec = manifest(VM).spec
    assert isinstance(spec, VirtualMachineSpec)
    return spec


def _net() -> NetworkSpec:
    spec = manifest(NET).spec
    assert isinstance(spec, NetworkSpec)
    return spec


@pytest.mark.parametrize(("entry", "field"), [
    (XmlEdit("./devices", add="<rng model='virtio'><backend model='random'>/dev/urandom"
                              "</backend></rng>"), "rng"),
    (XmlEdit("./devices", add="<watchdog model='i6300esb' action='reset'/>"), "watchdog"),
    (XmlEdit("./devices", add="<channel type='unix'><target type='virtio' "
                              "name='org.qemu.guest_agent.0'/></channel>"), "guestAgent"),
    (XmlEdit("./devices", add="<disk type='block' device='disk'><source dev='/dev/sdz'/>"
                              "<target dev='vdz' bus='virtio'/></disk>"), "disks"),
    (XmlEdit("./devices", add="<filesystem type='mount' accessmode='mapped'><driver "
                              "type='path'/><source dir='/srv/share'/><target dir='share'/>"
                              "</filesystem>"), "filesystems"),
    (XmlEdit("./devices", add="<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                              "<address domain='0x0000' bus='0x06' slot='0x00' "
                              "function='0x0'/></source></hostdev>"), "hostdevs"),
    (XmlEdit(".", add="<iothreads>2</iothreads>"), "iothreads"),
    (XmlEdit("./devices", add="<interface type='direct'><mac address='52:54:00:00:00:09'/>"
                              "<source dev='eth0' mode='bridge'/></interface>"), "interfaces"),
])  # fmt: skip
def test_a_vm_entry_adding_what_a_typed_field_says_is_refused(entry: XmlEdit, field: str) -> None:
    spec = dataclasses.replace(_vm(), xml=(entry,))
    typed = domain.render("hatch", dataclasses.replace(spec, xml=()))
    wrong = domain.edit_refusal(spec, typed)
    assert wrong is not None and wrong[0] == 0, wrong
    assert field in wrong[1] and "typed field" in wrong[1], wrong


def test_a_vm_entry_no_typed_field_says_is_the_hatchs() -> None:
    spec = dataclasses.replace(_vm(), xml=(XmlEdit("./devices", add="<panic model='isa'/>"),))
    assert domain.edit_refusal(spec, domain.render("hatch", dataclasses.replace(spec, xml=()))) \
        is None


@pytest.mark.parametrize(("entry", "field"), [
    (XmlEdit(".", add="<ip family='ipv6' address='fd00::1' prefix='64'/>"), "ipv6"),
    (XmlEdit(".", add="<route address='192.0.2.0' prefix='24' gateway='10.77.0.2'/>"),
     "routes"),
    (XmlEdit(".", add="<portgroup name='eng'/>"), "portgroups"),
    (XmlEdit(".", add="<dns><forwarder addr='192.0.2.53'/></dns>"), "dns"),
])  # fmt: skip
def test_a_network_entry_adding_what_network_vocab_types_is_refused(entry: XmlEdit,
                                                                    field: str) -> None:  # fmt: skip
    # the manifest names none of these sections (kept): the entry is still refused, the
    # typed field is the way to say it
    spec = dataclasses.replace(_net(), xml=(entry,))
    assert not spec.declared
    typed = network_xml.render("hatchnet", dataclasses.replace(spec, xml=()))
    wrong = network_xml.edit_refusal(spec, typed)
    assert wrong is not None and field in wrong[1], wrong


def test_a_network_entry_no_typed_field_says_is_the_hatchs() -> None:
    spec = dataclasses.replace(_net(), domain="x.test",
                               xml=(XmlEdit("./domain/@localOnly", value="yes"),))  # fmt: skip
    typed = network_xml.render("hatchnet", dataclasses.replace(spec, xml=()))
    assert network_xml.edit_refusal(spec, typed) is None
    # and the projection of a spec naming ipv6 has both: the typed section and the entry
    six = manifest(NET.replace("  ipv4:", "  ipv6: {address: 'fd00::1', prefix: 64}\n  ipv4:"))
    assert isinstance(six.spec, NetworkSpec) and "ipv6" in six.spec.declared
    both = network_xml.project(dataclasses.replace(six.spec, xml=spec.xml))
    assert both["ipv6.address"] == "fd00::1"
    assert any(k.startswith("xml[0]") for k in both), both


def test_entries_on_the_guest_cpu_are_not_compared_with_a_running_domain() -> None:
    # a running domain's <cpu> is libvirt's expansion (check='full', features): an entry
    # on it is compared on the definition alone, as the typed cpu field is
    entries = (XmlEdit(".", add="<cpu mode='custom' match='exact' check='none'><model "
                                "fallback='forbid'>qemu64</model></cpu>"),
               XmlEdit("./cpu/@check", value="none"),
               XmlEdit("./devices", add="<panic model='isa'/>"),
               XmlEdit("./cputune", add="<shares>512</shares>"))  # fmt: skip
    spec = dataclasses.replace(_vm(), xml=entries)
    keys = sorted(domain.live_unreadable_edits(spec))
    assert [k.split(" ", 1)[0] for k in keys] == ["xml[0]", "xml[1]"], keys
