"""The escape hatch as hostile input to a root daemon: what no ``xml`` entry may say
(our ownership record, programs libvirt runs, QEMU passthrough, the confinement), and
every host path an entry writes passing the roots check (hostpaths.py)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from reconciler.errors import Problem
from reconciler.hostpaths import host_paths
from reconciler.inventory import Inventory
from reconciler.manifests import LoadResult, load_text
from reconciler.model import VirtualMachineSpec, XmlEdit
from reconciler.plan import Op
from reconciler.planner import PlanOptions, make_plan
from reconciler.snapshot import Observed
from reconciler.xml import domain

from .xml_support import manifest

VM = """apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {{name: hatch}}
spec:
  memory: 256MiB
  xml:
    - {entry}
"""


def _problems(entry: str) -> list[Problem]:
    problems: list[Problem] = []
    load_text(VM.format(entry=entry), "vm.yaml", problems)
    return problems


@pytest.mark.parametrize(("entry", "where", "says"), [
    # ./metadata[1] is ./metadata: deleting it deleted the ownership record
    ("{xpath: './metadata[1]', delete: true}", "spec.xml[0].xpath", "ownership record"),
    ("{xpath: './metadata[@a=\"b\"]', value: x}", "spec.xml[0].xpath", "ownership record"),
    # programs libvirt runs (as root for a NIC's scripts)
    ("{xpath: ./devices, add: \"<interface type='ethernet'><script path='/tmp/x.sh'/>"
     "</interface>\"}", "spec.xml[0].add", "runs this program as root"),
    ("{xpath: \"./devices/interface[mac/@address='52:54:00:00:00:01']/script/@path\", "
     "value: /tmp/x.sh}", "spec.xml[0].xpath", "runs this program as root"),
    ("{xpath: ./devices, add: \"<interface type='ethernet'><downscript path='/tmp/x'/>"
     "</interface>\"}", "spec.xml[0].add", "runs this program as root"),
    ("{xpath: ./devices/emulator, value: /tmp/evil}", "spec.xml[0].xpath", "runs this program"),
    ("{xpath: ./devices, add: '<emulator>/tmp/evil</emulator>'}", "spec.xml[0].add",
     "runs this program"),
    # QEMU passthrough: arguments outside libvirt's checks and the roots
    ("{xpath: ., add: \"<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/"
     "qemu/1.0'><qemu:arg value='-drive'/><qemu:arg value='file=/etc/shadow'/>"
     "</qemu:commandline>\"}", "spec.xml[0].add", "passthrough"),
    ("{xpath: ./devices, add: \"<disk xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'>"
     "<q:x/></disk>\"}", "spec.xml[0].add", "passthrough"),
    # the confinement: QEMU as root, or unconfined
    ("{xpath: ., add: \"<seclabel type='static' model='dac' relabel='no'><label>+0:+0"
     "</label></seclabel>\"}", "spec.xml[0].add", "confined"),
    ("{xpath: ., add: \"<seclabel type='none'/>\"}", "spec.xml[0].add", "confined"),
    ("{xpath: ./seclabel/@type, value: none}", "spec.xml[0].xpath", "confined"),
])  # fmt: skip
def test_unsafe_entries_are_refused_at_their_line(entry: str, where: str, says: str) -> None:
    problems = _problems(entry)
    assert len(problems) == 1, problems
    assert problems[0].field == where and says in problems[0].message, problems[0]
    assert str(problems[0].position).startswith("vm.yaml:7:")
    assert problems[0].hint


@pytest.mark.parametrize("entry", [
    "{xpath: ./seclabel, delete: true}",  # back to the host's default confinement
    "{xpath: ./devices/emulator, delete: true}",  # libvirt fills in the host's
    "{xpath: ., add: \"<seclabel type='dynamic' model='dac' relabel='yes'/>\"}",  # libvirt's
    "{xpath: ./devices, add: \"<disk type='file' device='cdrom'><source file='/srv/a.iso'>"
    "<seclabel model='dac' relabel='no'/></source><target dev='sdz'/></disk>\"}",
    "{xpath: ./metadata, add: \"<x:emulator xmlns:x='urn:other'>/tmp/x</x:emulator>\"}",
])  # fmt: skip
def test_what_only_restores_libvirts_defaults_is_allowed(entry: str) -> None:
    assert _problems(entry) == []


def test_every_absolute_path_an_entry_writes_is_a_host_path() -> None:
    m = manifest("""
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: hatch}
spec:
  memory: 256MiB
  xml:
    - {xpath: ./os, add: "<nvram>/etc/shadow</nvram>"}
    - {xpath: ./os/nvram, value: /etc/passwd}
    - {xpath: ./devices, add: "<serial type='pty'><log file='/etc/log'/></serial>"}
    - {xpath: "./devices/disk[@type='block'][@device='lun']/source[@dev='/dev/sda']/@x", value: y}
    - {xpath: ./devices, add: "<channel type='unix'><source mode='bind' path='/etc/s'/></channel>"}
    - {xpath: ./devices, add: "<memory model='nvdimm'><source><path>/etc/n</path></source></memory>"}
    - {xpath: ./devices, add: "<disk type='network' device='cdrom'><source protocol='http' name='/x.iso'><host name='h'/></source></disk>"}
""")
    found = [(p.field, p.path, p.where[-1]) for p in host_paths(m)]
    assert found == [("xml[0]", "/etc/shadow", "add"), ("xml[1]", "/etc/passwd", "value"),
                     ("xml[2]", "/etc/log", "add"), ("xml[3]", "/dev/sda", "xpath"),
                     ("xml[4]", "/etc/s", "add"), ("xml[5]", "/etc/n", "add")]  # fmt: skip


def test_a_networks_dnsmasq_passthrough_is_refused() -> None:
    # dnsmasq:options reach dnsmasq's command line (dhcp-script= runs a program as root)
    problems: list[Problem] = []
    load_text("""apiVersion: reconciler/v1
kind: Network
metadata: {name: hnet}
spec:
  mode: isolated
  xml:
    - xpath: .
      add: >-
        <dnsmasq:options xmlns:dnsmasq="http://libvirt.org/schemas/network/dnsmasq/1.0">
        <dnsmasq:option value="dhcp-script=/tmp/evil.sh"/></dnsmasq:options>
""", "net.yaml", problems)
    assert [(p.field, "passthrough" in p.message) for p in problems] == [
        ("spec.xml[0].add", True)], problems


@pytest.mark.parametrize("xpath", ["./name", "./uuid", "./metadata", "./devices/emulator"])
def test_a_trailing_newline_is_no_way_around_the_path_checks(xpath: str) -> None:
    # a YAML block scalar (xpath: |) ends in a newline; the step pattern's "$" took it,
    # and "./name\n" renamed the domain, "./metadata\n" deleted our record
    problems: list[Problem] = []
    load_text(VM.format(entry=f"{{xpath: {xpath!r}, value: x}}").replace(
        f"xpath: {xpath!r}", f'xpath: "{xpath}\\n"'), "vm.yaml", problems)
    assert [p.field for p in problems] == ["spec.xml[0].xpath"], problems


def test_a_wide_fragment_is_compared_in_linear_time() -> None:
    # <m> with 3000 <a/> (12 kB of the 64 kB an add may hold) took two minutes to
    # compare (every child against every used one): a plan the daemon never finished
    wide = "<x:m xmlns:x='urn:x'>" + "<a/>" * 5000 + "</x:m>"
    spec = manifest(VM.format(entry="{xpath: ./devices, add: '<panic/>'}")).spec
    assert isinstance(spec, VirtualMachineSpec)
    spec = dataclasses.replace(spec, xml=(XmlEdit("./metadata", add=wide),))
    started = time.monotonic()
    xml = domain.render("hatch", spec)
    assert set(domain.observe_edits(xml, spec).values()) == {"present"}
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("kind", "spec", "entry"), [
    ("VirtualMachine", "memory: 256MiB", "./devices/disk[target/@dev='vdz']/@x"),
    ("Network", "mode: isolated", "./ip[2]/@x"),
    ("StoragePool", "type: dir\n  path: /srv/p", "./target[2]/@x"),
])  # fmt: skip
def test_an_entry_naming_nothing_is_a_plan_error_at_its_line(
        kind: str, spec: str, entry: str) -> None:  # fmt: skip
    # a network's or pool's create path rendered the entries first: render's ValueError
    # went out of plan as a traceback; a VM's was placed at the manifest's first line
    # and numbered xml[0] whatever its index
    text = (f"apiVersion: reconciler/v1\nkind: {kind}\nmetadata: {{name: rctest-h}}\n"
            f"spec:\n  {spec}\n  xml:\n    - {{xpath: ./@y, value: z}}\n"
            f"    - xpath: \"{entry}\"\n      value: v\n")  # fmt: skip
    line = text.splitlines().index(f'    - xpath: "{entry}"') + 1
    problems: list[Problem] = []
    ms = load_text(text, "m/h.yaml", problems)
    assert problems == []
    plan = make_plan(LoadResult("m", ms, (), ("m/h.yaml",)),
                     Observed(inventory=Inventory({})), PlanOptions())  # fmt: skip
    [action] = plan.actions
    assert action.op == Op.ERROR
    assert str(action.source).startswith(f"m/h.yaml:{line}:"), action.source
    assert action.reason.startswith("xml[1] ") and "names no element" in action.reason


@pytest.mark.parametrize("xpath", [
    "./metadata/owner/@xmlns",
    "./metadata/owner[@xmlns='https://reconciler.dev/xmlns/domain/v1']/manifest",
])  # fmt: skip
def test_no_entry_moves_an_element_into_our_namespace(xpath: str) -> None:
    # lxml writes an attribute named xmlns as a namespace declaration: an <owner> added
    # under ./metadata, then ./metadata/owner/@xmlns set to ours, read back as our record
    problems = _problems(f"{{xpath: \"{xpath}\", value: 'https://reconciler.dev/xmlns/domain/v1'}}")
    assert [(p.field, "namespace declaration" in p.message) for p in problems] == [
        ("spec.xml[0].xpath", True)], problems


def test_text_that_only_starts_with_a_slash_is_no_host_path() -> None:
    # libvirt's cgroup partition (/machine), the user's own words: no root holds them
    m = manifest("""
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: hatch}
spec:
  memory: 256MiB
  xml:
    - {xpath: ., add: "<resource><partition>/machine</partition></resource>"}
    - {xpath: ./description, value: /srv is where the data lives}
""")
    assert host_paths(m) == []


def test_libvirts_spelling_of_a_number_or_mac_is_no_difference() -> None:
    # libvirt writes PCI addresses as 0x%02x and MACs lowercase: compared as strings, the
    # entries below never settled (a redefine each pass, a second <sound> appended)
    spec = manifest(VM.format(entry="{xpath: ./devices, add: \"<sound model='ich6'><address "
                              "type='pci' domain='0' bus='0' slot='8' function='0'/></sound>\"}"
                              ) + "    - {xpath: ./devices, add: \"<interface type='udp'><mac "
                              "address='52:54:00:AB:CD:EF'/></interface>\"}\n"
                              "    - {xpath: './devices/sound/address/@slot', value: '8'}\n"
                    ).spec  # fmt: skip
    assert isinstance(spec, VirtualMachineSpec)
    libvirt = domain.render("hatch", spec).replace(
        'domain="0" bus="0" slot="8" function="0"',
        'domain="0x0000" bus="0x00" slot="0x08" function="0x0"').replace(
        "52:54:00:AB:CD:EF", "52:54:00:ab:cd:ef")
    assert 'slot="0x08"' in libvirt and "52:54:00:ab:cd:ef" in libvirt
    desired = {k: v for k, v in domain.project(spec).items() if k.startswith("xml[")}
    assert domain.observe_edits(libvirt, spec) == desired
    again = domain.patch(libvirt, spec)
    assert again.count("<sound") == 1 and again.count("<interface") == 1


@pytest.mark.parametrize("nic", [
    "<interface type='bridge'><source bridge='br0'/></interface>",
    "<interface type='network'><source network='rctest-n'/></interface>",
])  # fmt: skip
def test_a_nic_added_without_a_mac_is_the_typed_fields(nic: str) -> None:
    # the typed interfaces are keyed by MAC: a NIC without one was invisible to the
    # check, and once libvirt gave it a MAC a manifest naming interfaces removed it and
    # the entry added it again (a new MAC each pass)
    spec = manifest(VM.format(entry=f'{{xpath: ./devices, add: "{nic}"}}')).spec
    assert isinstance(spec, VirtualMachineSpec)
    typed = domain.render("hatch", dataclasses.replace(spec, xml=()))
    wrong = domain.edit_refusal(spec, typed)
    assert wrong is not None and "interfaces" in wrong[1], wrong


@pytest.mark.skipif(domain.edits.libvirt_schema() is None, reason="libvirt's domain.rng missing")
def test_a_schema_refusal_says_what_to_check() -> None:
    spec = manifest(VM.format(entry="{xpath: ./devices, add: \"<panic modle='isa'/>\"}")).spec
    assert isinstance(spec, VirtualMachineSpec)
    typed = domain.render("hatch", dataclasses.replace(spec, xml=()))
    wrong = domain.edits_invalid(domain.render("hatch", spec), spec, typed)
    assert wrong is not None and wrong[0] == 0
    assert "domain.rng" in wrong[1] and "formatdomain" in wrong[1], wrong


def test_a_relative_host_path_is_checked_and_refused_as_not_absolute() -> None:
    # libvirt's schema lets these be relative; libvirtd resolves them from /, so
    # etc/shadow is /etc/shadow; the check saw no path at all
    from pathlib import Path

    from reconciler.hostpaths import PathPolicy

    m = manifest("""
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: hatch}
spec:
  memory: 256MiB
  xml:
    - {xpath: ., add: "<sysinfo type='fwcfg'><entry name='opt/com.x/y' file='etc/shadow'/></sysinfo>"}
    - {xpath: ./devices, add: "<disk type='block' device='lun'><source dev='dev/sda'/><target dev='sdb' bus='scsi'/></disk>"}
    - {xpath: ./os/nvram, value: var/lib/x}
    - {xpath: ./devices, add: "<interface type='direct'><source dev='eth0' mode='vepa'/></interface>"}
    - {xpath: ./devices, add: "<filesystem><source dir='/srv/s'/><target dir='tag'/></filesystem>"}
""")
    found = host_paths(m)
    assert [(p.field, p.path) for p in found] == [
        ("xml[0]", "etc/shadow"), ("xml[1]", "dev/sda"), ("xml[2]", "var/lib/x"),
        ("xml[4]", "/srv/s")]  # fmt: skip
    policy = PathPolicy(disk_roots=(Path("/"),), secret_roots=None)
    assert [policy.refusal(p) for p in found][:3] == [
        "xml[0] etc/shadow is not an absolute path", "xml[1] dev/sda is not an absolute path",
        "xml[2] var/lib/x is not an absolute path"]  # fmt: skip


def test_a_bare_child_does_not_take_the_one_a_specific_child_needs() -> None:
    from lxml import etree

    from reconciler.xml.edits import contains

    want = etree.fromstring("<m><a/><a b='1'/></m>")
    have = etree.fromstring("<m><a b='1'/><a/></m>")  # libvirt's order
    assert contains(want, have)
    assert not contains(want, etree.fromstring("<m><a b='1'/></m>"))


def test_a_relative_path_in_a_predicate_is_a_host_path() -> None:
    from reconciler.hostpaths import _hatch_paths

    found = _hatch_paths([XmlEdit("./devices/channel[@type='file']/source[@path='tmp/x']/@y",
                                  value="1")])  # fmt: skip
    assert [(p.path, p.where) for p in found] == [("tmp/x", ("spec", "xml", 0, "xpath"))]


@pytest.mark.parametrize(("entry", "where", "says"), [
    ("{xpath: ./devices, add: '<a/>', value: x}", "spec.xml[0]", "exactly one of value, add"),
    ("{xpath: ./devices}", "spec.xml[0]", "exactly one of value, add"),
    ("{xpath: ./features/apic, delete: false}", "spec.xml[0].delete", "leave delete out"),
])  # fmt: skip
def test_a_malformed_entry_says_how_to_write_it(entry: str, where: str, says: str) -> None:
    # jsonschema said "... is valid under each of {'required': ['add']}, ..."
    problems = _problems(entry)
    assert [(p.field, says in p.message) for p in problems] == [(where, True)], problems


def test_scsi_host_devices_and_nvme_disks_are_refused() -> None:
    """A SCSI host device or an NVMe disk has no path the allowed roots could judge:
    raw access to a host disk, a host controller taken away. Refused, as add and as a
    value; a block disk's /dev path goes through the roots instead."""
    from reconciler.xml import edits

    cases = [
        edits.Edit(xpath="./devices", add="<hostdev mode='subsystem' type='scsi'>"
                   "<source><adapter name='scsi_host0'/><address bus='0' target='0' "
                   "unit='0'/></source></hostdev>"),
        edits.Edit(xpath="./devices", add="<hostdev mode='subsystem' type='scsi_host'>"
                   "<source protocol='vhost' wwpn='naa.5000000000000001'/></hostdev>"),
        edits.Edit(xpath="./devices", add="<disk type='nvme' device='disk'><source "
                   "type='pci' managed='yes' namespace='1'><address domain='0x0000' "
                   "bus='0x01' slot='0x00' function='0x0'/></source><target dev='vdz'/></disk>"),
        edits.Edit(xpath="./devices/disk[target/@dev='vdz']/@type", value="nvme"),
    ]
    for edit in cases:
        found = edits.problem(edit)
        assert found is not None and "no allowed root covers" in found[1], (edit, found)
    assert edits.problem(edits.Edit(xpath="./devices", add="<panic model='isa'/>")) is None
