"""The devices a VM manifest manages only when it names them (xml/domain_devices.py):
guest agent channel, rng, watchdog, TPM, video, virtio console, serial log, UEFI secure
boot with a loader and NVRAM template. Golden XML (virt-xml-validate'd by
tests/integration/test_vm_devices.py), libvirt's own XML read back (captured from
libvirt 9.0: ``virsh define`` then ``dumpxml --inactive``, and ``dumpxml`` of the
started domain), patching, kept-unless-named, and the loader's refusals."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml
from lxml import etree

from reconciler import export
from reconciler.diff import diff
from reconciler.errors import SourcePosition
from reconciler.manifests import load_directory
from reconciler.model import Kind, SpecError, VirtualMachineSpec, build_manifest
from reconciler.snapshot import DomainRecord, Observed
from reconciler.xml import domain
from reconciler.xml._fields import KEPT
from reconciler.xml.domain_devices import added_device_xml

from .xml_support import assert_golden, read_data

DEVICE_PATHS = ("guestAgent", "rng", "watchdog", "tpm", "video", "console", "serial.log",
                "firmware", "firmware.secureBoot")  # fmt: skip
ALIASES = {"q35": "pc-q35-7.2"}
LOADER_PATHS = ("firmware", "firmware.secureBoot", "firmware.loader", "firmware.nvramTemplate")

# the manifest that says what domain-vm-devices-libvirt-*.xml hold
DEVICES = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: vm-devices}
spec:
  type: qemu
  memory: 256MiB
  machine: q35
  firmware: {type: uefi, secureBoot: true}
  serial: {type: pty, log: {file: /var/log/libvirt/qemu/vm-devices-serial.log, append: true}}
  console: {type: pty, target: virtio}
  guestAgent: true
  rng: {backend: /dev/urandom, rate: {bytes: 1024, period: 1000}}
  watchdog: {model: i6300esb, action: reset}
  tpm: {model: tpm-crb, version: "2.0"}
  video: {model: virtio}
"""

LOADER = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: vm-devices-loader}
spec:
  type: qemu
  memory: 256MiB
  machine: q35
  firmware:
    type: uefi
    secureBoot: true
    loader: /usr/share/OVMF/OVMF_CODE_4M.ms.fd
    nvramTemplate: /usr/share/OVMF/OVMF_VARS_4M.ms.fd
  video: {model: qxl, vram: 32MiB, heads: 2}
  watchdog: {model: ib700, action: poweroff}
  tpm: {model: tpm-tis, version: "1.2"}
  rng: {backend: /dev/random}
  guestAgent: false
  console: null
"""

PLAIN = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: vm-devices}
spec:
  type: qemu
  memory: 256MiB
  machine: q35
  firmware: uefi
"""


def _spec(text: str, **spec: Any) -> VirtualMachineSpec:
    document: Any = yaml.safe_load(textwrap.dedent(text))
    document["spec"].update(spec)
    m = build_manifest(document, SourcePosition("test.yaml"))
    assert isinstance(m.spec, VirtualMachineSpec)
    return m.spec


def _mine(projection: dict[str, object], paths: tuple[str, ...]) -> dict[str, object]:
    return {p: projection[p] for p in paths}


def test_render_golden_devices() -> None:
    assert_golden(domain.render("vm-devices", _spec(DEVICES)), "domain-vm-devices.xml")


def test_render_golden_loader() -> None:
    assert_golden(domain.render("vm-devices-loader", _spec(LOADER)),
                  "domain-vm-devices-loader.xml")  # fmt: skip


@pytest.mark.parametrize(("text", "paths"), [(DEVICES, DEVICE_PATHS), (LOADER, LOADER_PATHS)])
def test_round_trip_names_every_value(text: str, paths: tuple[str, ...]) -> None:
    spec = _spec(text)
    want = domain.project(spec)
    assert not any(want[p] is KEPT for p in paths)  # named: compared, not kept
    assert _mine(dict(domain.observe(domain.render("vm", spec))), paths) == _mine(want, paths)


def test_projection_values_are_the_manifest_mappings() -> None:
    want = domain.project(_spec(DEVICES))
    assert want["rng"] == ('{"backend": "/dev/urandom", "model": "virtio", '
                           '"rate": {"bytes": 1024, "period": 1000}}')  # fmt: skip
    assert want["tpm"] == '{"model": "tpm-crb", "version": "2.0"}'
    assert want["video"] == '{"heads": 1, "model": "virtio"}'
    assert want["guestAgent"] is True
    assert want["firmware.secureBoot"] is True
    assert want["firmware.enrolledKeys"] is KEPT  # not named: kept (render writes yes)
    loader = domain.project(_spec(LOADER))
    assert loader["video"] == '{"heads": 2, "model": "qxl", "vram": "32MiB"}'
    assert loader["console"] == "null"
    assert loader["guestAgent"] is False


@pytest.mark.parametrize("name", ["domain-vm-devices-libvirt-inactive.xml",
                                  "domain-vm-devices-libvirt-live.xml"])  # fmt: skip
def test_libvirt_xml_reads_as_the_manifest(name: str) -> None:
    # what libvirt adds (addresses, aliases, the channel's socket and state, video's
    # primary, the loader it picked at start) is not a difference
    observed = domain.observe(read_data(name))
    wanted = domain.project(_spec(DEVICES))
    assert diff(_mine(wanted, DEVICE_PATHS), _mine(dict(observed), DEVICE_PATHS)) == []


def test_libvirt_xml_of_a_loader_reads_as_the_manifest() -> None:
    observed = domain.observe(read_data("domain-vm-devices-loader-libvirt-inactive.xml"))
    spec = _spec(DEVICES, firmware={"type": "uefi", "secureBoot": True,
                                    "loader": "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
                                    "nvramTemplate": "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"})
    paths = ("guestAgent", "rng", "watchdog", "tpm", "video", "console", "firmware",
             "firmware.secureBoot", "firmware.loader", "firmware.nvramTemplate")
    assert diff(_mine(domain.project(spec), paths), _mine(dict(observed), paths)) == []


def test_a_manifest_that_names_none_of_them_keeps_them() -> None:
    # data first: a manifest written before these fields plans as before
    current = read_data("domain-vm-devices-libvirt-inactive.xml")
    spec = _spec(PLAIN)
    want = domain.project(spec)
    assert all(want[p] is KEPT for p in DEVICE_PATHS if p != "firmware")
    assert [c.path for c in diff(want, domain.observe(current))
            if c.path in DEVICE_PATHS] == []  # fmt: skip
    patched = etree.fromstring(domain.patch(current, spec, machine_aliases=ALIASES).encode())
    devices = patched.find("devices")
    assert devices is not None
    for tag in ("rng", "tpm", "watchdog", "video", "channel"):
        assert devices.find(tag) is not None, tag
    assert len(devices.findall("console")) == 2
    assert patched.find("devices/serial/log") is not None
    assert patched.find("os/firmware/feature[@name='secure-boot']").get("enabled") == "yes"  # type: ignore[union-attr]


def test_named_none_removes_them_and_keeps_the_rest() -> None:
    current = read_data("domain-vm-devices-libvirt-inactive.xml")
    spec = _spec(DEVICES, guestAgent=False, rng=None, watchdog=None, tpm=None, console=None,
                 serial={"type": "pty", "log": None})  # fmt: skip
    patched_xml = domain.patch(current, spec, machine_aliases=ALIASES)
    patched = etree.fromstring(patched_xml.encode())
    devices = patched.find("devices")
    assert devices is not None
    for tag in ("rng", "tpm", "watchdog", "channel"):
        assert devices.find(tag) is None, tag
    assert len(devices.findall("console")) == 1  # the serial port's stays
    assert patched.find("devices/serial/log") is None
    assert patched.find("devices/controller[@type='virtio-serial']") is not None  # kept
    assert patched.find("devices/video/address") is not None  # unchanged: kept as it was
    changes = diff(domain.project(spec, machine_aliases=ALIASES), domain.observe(patched_xml))
    assert changes == []


def test_a_changed_device_is_one_change_and_patched_alone() -> None:
    current = read_data("domain-vm-devices-libvirt-inactive.xml")
    spec = _spec(DEVICES, rng={"backend": "/dev/random"}, watchdog={"action": "poweroff"})
    changes = diff(domain.project(spec, machine_aliases=ALIASES), domain.observe(current))
    assert [c.path for c in changes] == ["rng", "watchdog"]
    assert "/dev/random" in str(changes[0].new)
    patched = etree.fromstring(domain.patch(current, spec, machine_aliases=ALIASES).encode())
    assert patched.findtext("devices/rng/backend") == "/dev/random"
    assert patched.find("devices/rng/rate") is None
    assert patched.find("devices/watchdog").get("action") == "poweroff"  # type: ignore[union-attr]
    assert patched.find("devices/tpm/address") is None  # (a TPM has none)
    assert patched.find("devices/channel/address") is not None  # the channel kept as is
    assert diff(domain.project(spec, machine_aliases=ALIASES),
                domain.observe(etree.tostring(patched))) == []


def test_plain_uefi_to_secure_boot_adds_smm_and_the_features() -> None:
    current = domain.render("vm-devices", _spec(PLAIN))
    spec = _spec(PLAIN, firmware={"type": "uefi", "secureBoot": True})
    patched = domain.patch(current, spec, machine_aliases=ALIASES)
    root = etree.fromstring(patched.encode())
    assert root.find("features/smm").get("state") == "on"  # type: ignore[union-attr]
    features = {f.get("name"): f.get("enabled") for f in root.findall("os/firmware/feature")}
    assert features == {"secure-boot": "yes", "enrolled-keys": "yes"}
    assert diff(domain.project(spec, machine_aliases=ALIASES), domain.observe(patched)) == []
    # and back off: no enrolled keys left without secure boot (no firmware has that)
    off = _spec(PLAIN, firmware={"type": "uefi", "secureBoot": False})
    root = etree.fromstring(domain.patch(patched, off).encode())
    features = {f.get("name"): f.get("enabled") for f in root.findall("os/firmware/feature")}
    assert features == {"secure-boot": "no"}


def test_a_loader_replaces_autoselection() -> None:
    current = domain.render("vm-devices", _spec(DEVICES))
    spec = _spec(LOADER)
    patched = domain.patch(current, spec, machine_aliases=ALIASES)
    root = etree.fromstring(patched.encode())
    os_element = root.find("os")
    assert os_element is not None and os_element.get("firmware") is None
    assert os_element.find("firmware") is None
    loader = os_element.find("loader")
    assert loader is not None and loader.text == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
    assert loader.get("secure") == "yes"
    assert os_element.find("nvram").get("template") == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"  # type: ignore[union-attr]
    assert [c.path for c in diff(domain.project(spec, machine_aliases=ALIASES), domain.observe(patched))] == []


@pytest.mark.parametrize(("spec", "where", "words"), [
    ({"machine": "pc"}, ["firmware", "secureBoot"], "needs machine q35"),
    ({"firmware": {"type": "uefi", "nvramTemplate": "/usr/share/OVMF/OVMF_VARS_4M.fd"}},
     ["firmware", "nvramTemplate"], "name the loader"),
    ({"firmware": {"type": "bios", "secureBoot": True}}, ["firmware", "secureBoot"],
     "UEFI setting"),
    ({"firmware": {"type": "uefi", "enrolledKeys": True}}, ["firmware", "enrolledKeys"],
     "come with secure boot"),
    ({"firmware": {"type": "uefi", "loader": "/usr/share/OVMF/OVMF_CODE_4M.fd",
                   "enrolledKeys": False}}, ["firmware", "enrolledKeys"], "remove enrolledKeys"),
    ({"tpm": {"model": "tpm-crb", "version": "1.2"}}, ["tpm", "version"], "2.0 only"),
    ({"video": {"model": "virtio", "vram": "16MiB"}}, ["video", "vram"], "has no vram"),
    ({"serial": {"type": "pty", "file": "/srv/x.log"}}, ["serial", "file"], "has no file"),
])  # fmt: skip
def test_impossible_combinations_are_one_clear_problem(
    spec: dict[str, Any], where: list[str], words: str
) -> None:
    with pytest.raises(SpecError) as caught:
        _spec(DEVICES, **spec)
    problems = [p for p in caught.value.problems if list(p.path[1:]) == where]
    assert len(problems) == 1, caught.value.problems
    assert words in problems[0].message + problems[0].hint


@pytest.mark.parametrize(("old", "new", "field"), [
    ("model: i6300esb", "model: itco", "watchdog.model"),
    ("machine: q35", "machine: pc", "firmware.secureBoot"),
])  # fmt: skip
def test_a_bad_manifest_is_one_line_with_file_line_and_field(
    tmp_path: Any, old: str, new: str, field: str
) -> None:
    (tmp_path / "vm.yaml").write_text(textwrap.dedent(DEVICES).replace(old, new))
    result = load_directory(tmp_path)
    assert len(result.problems) == 1, result.problems
    text = str(result.problems[0])
    assert "vm.yaml:" in text and field in text, text


@pytest.mark.parametrize("name", ["domain-vm-devices-libvirt-inactive.xml",
                                  "domain-vm-devices-loader-libvirt-inactive.xml"])  # fmt: skip
def test_export_writes_them_and_keeps_none_of_them(name: str) -> None:
    xml = read_data(name)
    obs = Observed(domains={"vm": DomainRecord("vm", "u", False, False, xml, None)},
                   machine_aliases=ALIASES)  # fmt: skip
    [item] = export.export(obs, [export.Ref(Kind.VIRTUAL_MACHINE, "vm")])
    assert item.document is not None and item.notes == (), item.notes
    spec = item.document["spec"]
    assert spec["guestAgent"] is True
    assert spec["rng"] == {"model": "virtio", "backend": "/dev/urandom",
                           "rate": {"bytes": 1024, "period": 1000}}  # fmt: skip
    assert spec["watchdog"] == {"model": "i6300esb", "action": "reset"}
    assert spec["tpm"] == {"model": "tpm-crb", "version": "2.0"}
    assert spec["video"] == {"model": "virtio"}
    assert spec["console"] == {"type": "pty", "target": "virtio"}
    assert spec["serial"]["log"]["append"] is True
    if "loader" in name:
        assert spec["firmware"] == {"type": "uefi", "secureBoot": True,
                                    "loader": "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
                                    "nvramTemplate": "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"}
    else:
        assert spec["firmware"] == {"type": "uefi", "secureBoot": True, "enrolledKeys": True}
    kept = " ".join(export.kept_lines(item.kept))
    for word in ("rng", "tpm", "watchdog", "video", "guest_agent", "console", "log",
                 "firmware", "OVMF"):  # fmt: skip
        assert word not in kept, kept
    # the manifest plans as nothing but adoption: its projection is what the domain has
    m = build_manifest(item.document, SourcePosition("vm.yaml"))
    assert isinstance(m.spec, VirtualMachineSpec)
    # (and what its xml entries want, issue 13's escape hatch, the domain has)
    observed = {**domain.observe(xml), **domain.observe_edits(xml, m.spec)}
    assert diff(domain.project(m.spec, machine_aliases=ALIASES), observed) == []
    carried = " ".join(str(e) for e in item.document["spec"].get("xml", []))
    for typed in ("<rng", "<tpm", "<watchdog", "<video", "guest_agent", "<console",
                  "<log", "secure-boot", "OVMF"):  # fmt: skip
        assert typed not in carried, (typed, carried)


def test_only_an_added_agent_channel_or_rng_is_hot_plugged() -> None:
    desired = domain.render("vm", _spec(DEVICES))
    live = read_data("domain-vm-devices-libvirt-live.xml")  # has a virtio-serial controller
    rng = added_device_xml("rng", "null", domain.project(_spec(DEVICES))["rng"], desired, live)
    assert rng is not None and rng.startswith("<rng model=\"virtio\">") and "/dev/urandom" in rng
    channel = added_device_xml("guestAgent", False, True, desired, live)
    assert channel is not None and "org.qemu.guest_agent.0" in channel
    # a changed or removed device, or another field: not a hot-plug
    assert added_device_xml("rng", '{"backend": "/dev/random"}', "x", desired, live) is None
    assert added_device_xml("guestAgent", True, False, desired, live) is None
    assert added_device_xml("tpm", "null", "x", desired, live) is None
    # no virtio-serial controller in the running domain: libvirt 9.0 refuses a channel
    bare = live.replace("type='virtio-serial'", "type='sata'")
    assert added_device_xml("guestAgent", False, True, desired, bare) is None
    assert added_device_xml("rng", "null", "x", desired, bare) is not None


def test_a_serial_log_is_a_host_path_under_the_allowed_roots(tmp_path: Any) -> None:
    from pathlib import Path

    from reconciler.hostpaths import PathPolicy
    from reconciler.preflight import path_problems

    (tmp_path / "vm.yaml").write_text(textwrap.dedent(DEVICES))
    [m] = load_directory(tmp_path).manifests
    policy = PathPolicy(disk_roots=(Path("/srv"),), secret_roots=None)
    [(_, problem)] = path_problems([m], policy)
    assert problem.path == ("spec", "serial", "log", "file")
    assert "/var/log/libvirt/qemu/vm-devices-serial.log" in problem.message
    allowed = PathPolicy(disk_roots=(Path("/var/log/libvirt"),), secret_roots=None)
    assert path_problems([m], allowed) == []


def test_a_file_serial_port_with_a_log_round_trips() -> None:
    spec = _spec(PLAIN, serial={"file": "/srv/out.log", "log": {"file": "/srv/copy.log"}})
    assert spec.serial == "file" and spec.serial_file == "/srv/out.log"
    xml = domain.render("vm", spec)
    root = etree.fromstring(xml.encode())
    serial = root.find("devices/serial")
    assert serial is not None and [c.tag for c in serial] == ["source", "log", "target"]
    want = domain.project(spec)
    assert want["serial.log"] == '{"append": false, "file": "/srv/copy.log"}'
    assert _mine(dict(domain.observe(xml)), ("serial", "serial.file", "serial.log")) == _mine(
        want, ("serial", "serial.file", "serial.log"))
