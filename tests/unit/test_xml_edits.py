"""The escape hatch (``xml`` of a VirtualMachine): load checks, render, patch, compare."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.errors import Problem
from reconciler.manifests import load_text
from reconciler.model import VirtualMachineSpec, XmlEdit
from reconciler.xml import domain, edits
from reconciler.xml._fields import parse

from .xml_support import assert_golden, manifest

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: hatch}
spec:
  type: qemu
  memory: 256MiB
  serial: none
  xml:
    - xpath: ./features/hyperv/relaxed/@state
      value: "on"
    - xpath: ./devices
      add: <panic model='isa'/>
    - xpath: ./devices/memballoon
      delete: true
    - xpath: ./clock/timer[@name='rtc']/@tickpolicy
      value: catchup
"""


def _spec(text: str = VM) -> VirtualMachineSpec:
    spec = manifest(text).spec
    assert isinstance(spec, VirtualMachineSpec)
    return spec


def test_render_golden_with_edits() -> None:
    xml = domain.render("hatch", _spec())
    assert_golden(xml, "domain-xml-edits.xml")
    root = parse(xml)
    assert root.find("features/hyperv/relaxed").get("state") == "on"
    assert root.find("devices/panic").get("model") == "isa"
    assert root.find("devices/memballoon") is None
    assert root.find("clock/timer[@name='rtc']").get("tickpolicy") == "catchup"


def test_projection_in_the_users_terms_and_satisfied_after_render() -> None:
    spec = _spec()
    desired = domain.project(spec)
    assert desired["xml[1] (./devices: <panic model='isa'/>)"] == "present"
    assert desired["xml[0] (./features/hyperv/relaxed/@state)"] == "on"
    assert desired["xml[2] (./devices/memballoon: delete)"] == "absent"
    observed = domain.observe_edits(domain.render("hatch", spec), spec)
    assert {k: v for k, v in desired.items() if k.startswith("xml[")} == observed


def test_an_add_is_satisfied_by_what_libvirt_adds_around_it() -> None:
    spec = _spec()
    libvirt = domain.render("hatch", spec).replace(
        "<panic model=\"isa\"/>",
        "<panic model=\"isa\"><address type=\"isa\" iobase=\"0x505\"/></panic>")
    assert "iobase" in libvirt
    observed = domain.observe_edits(libvirt, spec)
    assert observed["xml[1] (./devices: <panic model='isa'/>)"] == "present"
    # and a redefine does not add a second one
    again = parse(domain.patch(libvirt, spec))
    assert len(again.findall("devices/panic")) == 1
    assert again.find("devices/panic/address") is not None


def test_patch_applies_unsatisfied_entries_and_keeps_the_rest() -> None:
    spec = _spec()
    plain = domain.render("hatch", dataclasses.replace(spec, xml=()))
    assert "<panic" not in plain
    before = domain.observe_edits(plain, spec)
    assert before["xml[1] (./devices: <panic model='isa'/>)"] == "absent"
    assert before["xml[2] (./devices/memballoon: delete)"] == "present"
    assert before["xml[0] (./features/hyperv/relaxed/@state)"] is None
    patched = domain.patch(plain, spec)
    assert domain.observe_edits(patched, spec) == {
        k: v for k, v in domain.project(spec).items() if k.startswith("xml[")}
    # removing entries from the manifest deletes nothing: the panic stays
    kept = parse(domain.patch(patched, dataclasses.replace(spec, xml=())))
    assert kept.find("devices/panic") is not None


def test_edit_touching_a_typed_field_is_refused_naming_it() -> None:
    spec = dataclasses.replace(_spec(), xml=(XmlEdit("./memory", value="1048576"),))
    wrong = domain.edit_refusal(spec, domain.render("hatch", dataclasses.replace(spec, xml=())))
    assert wrong is not None and wrong[0] == 0
    assert "maxMemory" in wrong[1] and "typed field" in wrong[1]
    disk = XmlEdit("./devices", add="<disk type='file' device='disk'><source file='/x.img'/>"
                   "<target dev='vdb' bus='virtio'/></disk>")
    spec = dataclasses.replace(spec, xml=(disk,))
    wrong = domain.edit_refusal(spec, domain.render("hatch", dataclasses.replace(spec, xml=())))
    assert wrong is not None and "disks" in wrong[1]
    # an attribute of a typed element that no field manages is the hatch's
    ok = dataclasses.replace(spec, xml=(XmlEdit("./memory/@dumpCore", value="off"),))
    assert domain.edit_refusal(ok, domain.render("hatch", dataclasses.replace(spec, xml=()))) \
        is None


@pytest.mark.skipif(edits.libvirt_schema() is None, reason="libvirt's domain.rng not installed")
def test_composed_definition_is_checked_against_libvirts_schema() -> None:
    spec = _spec()
    typed = domain.render("hatch", dataclasses.replace(spec, xml=()))
    assert domain.edits_invalid(domain.render("hatch", spec), spec, typed) is None
    bad = dataclasses.replace(spec, xml=(*spec.xml, XmlEdit("./devices", add="<panicky/>")))
    wrong = domain.edits_invalid(domain.render("hatch", bad), bad, typed)
    assert wrong is not None and wrong[0] == 4


@pytest.mark.parametrize(("entry", "where", "says"), [
    ("{xpath: 'devices', add: '<panic/>'}", "spec.xml[0].xpath", "does not start with './'"),
    ("{xpath: './devices/*', delete: true}", "spec.xml[0].xpath", "plain name"),
    ("{xpath: './x:devices', delete: true}", "spec.xml[0].xpath", "plain name"),
    ("{xpath: './devices[last()]', delete: true}", "spec.xml[0].xpath", "plain name"),
    ("{xpath: './name', value: other}", "spec.xml[0].xpath", "identity"),
    ("{xpath: './metadata', delete: true}", "spec.xml[0].xpath", "ownership record"),
    ("{xpath: './devices', add: '<panic'}", "spec.xml[0].add", "not well-formed"),
    ("{xpath: './devices', add: '<a/><b/>'}", "spec.xml[0].add", "not well-formed"),
    ("{xpath: './devices', add: '<!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>'}",
     "spec.xml[0].add", "DOCTYPE"),
    ("{xpath: './devices', add: '<a>&e;</a>'}", "spec.xml[0].add", "not well-formed"),
    ("{xpath: './devices', add: '<?pi x?><a/>'}", "spec.xml[0].add", "processing instruction"),
    ("{xpath: './devices', add: '<x:a/>'}", "spec.xml[0].add", "not well-formed"),
    ("{xpath: './metadata', add: '<rc:owner xmlns:rc=\"https://reconciler.dev/xmlns/domain/v1\"/>'}",
     "spec.xml[0].add", "own namespace"),
    ("{xpath: './devices/@x', add: '<a/>'}", "spec.xml[0].xpath", "names an attribute"),
])  # fmt: skip
def test_load_refuses_bad_entries_at_their_line(entry: str, where: str, says: str) -> None:
    text = f"""\
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {{name: hatch}}
spec:
  memory: 256MiB
  xml:
    - {entry}
"""
    problems: list[Problem] = []
    assert load_text(text, "vm.yaml", problems) == []
    assert len(problems) == 1, problems
    shown = str(problems[0])
    assert "vm.yaml:7" in shown and where in shown and says in shown, shown


def test_schema_wants_exactly_one_action() -> None:
    text = """\
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: hatch}
spec:
  memory: 256MiB
  xml:
    - {xpath: ./devices, add: '<panic/>', delete: true}
"""
    problems: list[Problem] = []
    assert load_text(text, "vm.yaml", problems) == []
    assert problems and "vm.yaml:7" in str(problems[0])


def test_namespaced_fragment_and_huge_depth() -> None:
    ok = XmlEdit("./metadata", add="<t:tag xmlns:t='https://example.org/t'>x</t:tag>")
    assert edits.problem(ok) is None
    deep = XmlEdit("./devices", add="<a>" * 300 + "</a>" * 300)
    found = edits.problem(deep)
    assert found is not None and found[0] == "add"


def test_value_creates_predicated_steps_and_reads_back() -> None:
    root = parse("<domain><devices/></domain>")
    edit = XmlEdit("./devices/channel[@type='unix']/target/@name", value="org.qemu.guest_agent.0")
    edits.apply(root, (edit,))
    channel = root.find("devices/channel")
    assert channel is not None and channel.get("type") == "unix"
    assert channel.find("target").get("name") == "org.qemu.guest_agent.0"
    assert edits.observe(root, (edit,))[edits.edit_key(0, edit)] == "org.qemu.guest_agent.0"
    # a step naming an element by its place or its content is never made up
    for path in ("./devices/rng[1]/@model", "./devices/disk[target/@dev='vda']/@snapshot"):
        with pytest.raises(ValueError, match=r"xml\[0\].*names no element"):
            edits.apply(root, (XmlEdit(path, value="x"),))
    gone = XmlEdit("./devices/disk[target/@dev='vda']", add="<boot order='1'/>")
    spec = dataclasses.replace(_spec(), xml=(gone,))
    wrong = domain.edit_refusal(spec, domain.render("hatch", dataclasses.replace(spec, xml=())))
    assert wrong is not None and wrong[0] == 0 and "names no element" in wrong[1]


def test_network_and_pool_entries_render_patch_and_refuse_typed_fields() -> None:
    from reconciler.model import NetworkSpec, StoragePoolSpec
    from reconciler.xml import network as network_xml
    from reconciler.xml import pool as pool_xml

    net = manifest("""
apiVersion: reconciler/v1
kind: Network
metadata: {name: hatchnet}
spec:
  mode: isolated
  xml:
    - {xpath: ./@ipv6, value: "yes"}
    - {xpath: ., add: "<bandwidth><inbound average='1000'/></bandwidth>"}
""").spec
    assert isinstance(net, NetworkSpec)
    xml = network_xml.render("hatchnet", net)
    assert_golden(xml, "network-xml-edits.xml")
    root = parse(xml)
    assert root.get("ipv6") == "yes" and root.find("bandwidth/inbound") is not None
    typed = network_xml.render("hatchnet", dataclasses.replace(net, xml=()))
    assert edits.observe(parse(network_xml.patch(typed, net)), net.xml) == edits.project(net.xml)
    assert network_xml.edit_refusal(net, typed) is None
    mtu = dataclasses.replace(net, xml=(XmlEdit(".", add="<mtu size='9000'/>"),))
    wrong = network_xml.edit_refusal(mtu, typed)
    assert wrong is not None and "mtu" in wrong[1]

    pool = manifest("""
apiVersion: reconciler/v1
kind: StoragePool
metadata: {name: hatchpool}
spec:
  path: /srv/pool
  xml:
    - {xpath: ./target/permissions/mode, value: "0711"}
""").spec
    assert isinstance(pool, StoragePoolSpec)
    xml = pool_xml.render("hatchpool", pool)
    assert_golden(xml, "pool-xml-edits.xml")
    assert parse(xml).findtext("target/permissions/mode") == "0711"
    path = dataclasses.replace(pool, xml=(XmlEdit("./target/path", value="/elsewhere"),))
    wrong = pool_xml.edit_refusal(path, pool_xml.render("hatchpool",
                                                        dataclasses.replace(pool, xml=())))
    assert wrong is not None and "path" in wrong[1]


def test_host_paths_in_entries_pass_the_roots_check() -> None:
    from reconciler.hostpaths import host_paths

    m = manifest("""
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: hatch}
spec:
  memory: 256MiB
  xml:
    - {xpath: ./devices, add: "<disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdz'/></disk>"}
    - {xpath: ./devices, add: "<interface type='direct'><source dev='eth0' mode='vepa'/></interface>"}
    - {xpath: "./devices/filesystem[target/@dir='share']/source/@dir", value: /srv/share}
""")
    found = [(p.field, p.path, p.where) for p in host_paths(m)]
    assert found == [("xml[0]", "/dev/sdb", ("spec", "xml", 0, "add")),
                     ("xml[2]", "/srv/share", ("spec", "xml", 2, "value"))]
