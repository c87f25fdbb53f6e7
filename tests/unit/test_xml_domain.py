"""reconciler.xml.domain: golden XML, round trips, escaping, libvirt's rewrites ignored."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, TypedDict

import pytest

from reconciler.model import CpuSpec, CpuTopology, Graphics, VirtualMachineSpec
from reconciler.xml import domain
from reconciler.xml.domain import Ownership

from .xml_support import assert_golden, manifest, read_data


class Context(TypedDict, total=False):
    """What the caller knows besides the spec: volumes' pools and formats, the password."""

    volume_pools: Mapping[str, str]
    volume_formats: Mapping[str, str]
    graphics_password: str
    cloud_init_seed: domain.CloudInitSeed


# The VirtualMachine example of SPEC section 2, as written there.
WIN7 = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata:
  name: win7
spec:
  type: kvm
  memory: 1024MiB
  maxMemory: 4GiB
  vcpus: 1
  maxVcpus: 4
  machine: pc
  firmware: bios
  cpu: host-model
  clock: localtime
  disks:
    - volume: win7-root
      bus: virtio
      cache: writeback
    - file: /var/lib/libvirt/images/data.img
      format: raw
      readonly: true
  cdroms:
    - file: /opt/ISO/Windows7.iso
  boot: [cdrom, disk]
  interfaces:
    - network: default
      mac: "52:54:00:12:34:80"
      model: virtio
    - bridge: br0
  graphics:
    type: vnc
    port: 5902
    listen: 0.0.0.0
    keymap: en-us
    passwordFile: /etc/reconciler/secrets/win7-vnc
  inputs: [tablet]
  serial: pty
  cloudInit:
    userData: |
      #cloud-config
      hostname: win7
    networkConfig: {version: 2, ethernets: {eth0: {dhcp4: true}}}
  state: running
  autostart: true
  shutdownTimeout: 120s
  updatePolicy: manual
  adopt: false
"""
WIN7_CONTEXT: Context = {
    "volume_pools": {"win7-root": "images"},
    "volume_formats": {"win7-root": "qcow2"},
    "graphics_password": "s3<&'\">t",  # VNC passwords are at most 8 characters
    "cloud_init_seed": domain.CloudInitSeed("images", "win7-cidata", "0123456789abcdef"),
}

Q35_UEFI = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: q35-uefi}
spec:
  memory: 256MiB
  vcpus: 2
  machine: q35
  firmware: uefi
  cpu: Nehalem
  disks:
    - {volume: app-root, bus: sata, cache: none, serial: APP-ROOT-1}
    - {file: /srv/scratch.qcow2, format: qcow2, bus: scsi}
  cdroms:
    - {}
  boot: [disk, cdrom]
  interfaces:
    - {network: lab, model: e1000e, mac: "52:54:00:AA:BB:01"}
  graphics: {type: spice}
  inputs: [tablet, keyboard]
  serial: none
"""
Q35_CONTEXT: Context = {
    "volume_pools": {"app-root": "images"},
    "volume_formats": {"app-root": "raw"},
}

KERNEL = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: direct-kernel}
spec:
  type: qemu
  memory: 256MiB
  kernel: /var/lib/reconciler/kernels/vmlinuz
  initrd: /var/lib/reconciler/kernels/initrd.img
  cmdline: console=ttyS0 root=/dev/vda quiet msg="<&'>"
  disks: [{file: /srv/root.img}]
  serial: {file: /var/log/reconciler/direct-kernel.serial.log}
"""

# libvirt 9's machine aliases on x86_64, as machine_aliases_from_capabilities finds them.
ALIASES = {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"}


def _spec(text: str) -> VirtualMachineSpec:
    spec = manifest(text).spec
    assert isinstance(spec, VirtualMachineSpec)
    return spec


CASES: list[tuple[str, Context]] = [(WIN7, WIN7_CONTEXT), (Q35_UEFI, Q35_CONTEXT), (KERNEL, {})]


def test_render_golden_spec_example() -> None:
    m = manifest(WIN7)
    assert isinstance(m.spec, VirtualMachineSpec)
    ownership = Ownership(manifest="vms/win7.yaml", digest="sha256:0123abcd", revision="4f2c9e1")
    xml = domain.render(m.name, m.spec, uuid="ccd12a70-f162-471d-a62a-2664ef8b0e43",
                        ownership=ownership, **WIN7_CONTEXT)
    assert_golden(xml, "domain-win7.xml")


def test_render_golden_q35_uefi() -> None:
    m = manifest(Q35_UEFI)
    assert isinstance(m.spec, VirtualMachineSpec)
    assert_golden(domain.render(m.name, m.spec, **Q35_CONTEXT),
                  "domain-q35-uefi.xml")


def test_render_golden_kernel_serial_file() -> None:
    m = manifest(KERNEL)
    assert isinstance(m.spec, VirtualMachineSpec)
    assert_golden(domain.render(m.name, m.spec), "domain-direct-kernel.xml")


@pytest.mark.parametrize(("text", "context"), CASES)
def test_round_trip(text: str, context: Context) -> None:
    spec = _spec(text)
    xml = domain.render("vm", spec, **context)
    assert domain.observe(xml) == domain.project(spec, **context)


@pytest.mark.parametrize(
    "change",
    [
        {"cpu": CpuSpec(mode="host-passthrough")},
        {"cpu": CpuSpec(mode="host-passthrough", migratable=False,
                        features=(("arch-capabilities", "disable"), ("vmx", "require")))},
        {"cpu": CpuSpec(mode="maximum")},
        {"cpu": CpuSpec(mode="custom", model="EPYC", topology=CpuTopology(1, 1, 2, 2))},
        {"cpu": None, "type": "qemu"},
        {"vcpus": 4, "max_vcpus": 4},
        {"memory": 4 * 1024**3},
        {"graphics": Graphics(type="vnc", port=None, listen="127.0.0.1")},
        {"graphics": Graphics(type="spice", port=5999, listen="10.0.0.1", keymap="de")},
        {"graphics": None, "inputs": ()},
        {"boot": ("network", "disk", "cdrom")},
        {"clock": "utc", "firmware": "uefi", "machine": "pc-q35-6.2"},
    ],
)
def test_round_trip_variants(change: dict[str, Any]) -> None:
    spec = dataclasses.replace(_spec(WIN7), **change)
    xml = domain.render("vm", spec, **WIN7_CONTEXT)
    assert domain.observe(xml) == domain.project(spec, **WIN7_CONTEXT)


def test_projection_keys_name_devices_by_identity() -> None:
    projected = domain.project(_spec(WIN7), machine_aliases=ALIASES, **WIN7_CONTEXT)
    assert projected["machine"] == "pc-i440fx-7.2"
    assert projected["memory"] == 1024**3
    assert projected["maxMemory"] == 4 * 1024**3
    assert (projected["vcpus"], projected["maxVcpus"]) == (1, 4)
    # disks are known by their source (volume, else file), not by target or position
    assert projected["disks[win7-root].volume"] == "win7-root"
    assert projected["disks[win7-root].target"] == "vda"
    assert projected["disks[win7-root].pool"] == "images"
    assert projected["disks[win7-root].format"] == "qcow2"
    assert projected["disks[/var/lib/libvirt/images/data.img].readonly"] is True
    assert projected["disks[/var/lib/libvirt/images/data.img].target"] == "vdb"
    assert projected["cdroms[hda].file"] == "/opt/ISO/Windows7.iso"
    assert projected["interfaces[52:54:00:12:34:80].network"] == "default"
    assert projected["graphics.port"] == 5902
    assert projected["boot"] == ("cdrom", "disk")
    # The password is compared as a token that does not reveal it.
    token = projected["graphics.password"]
    assert isinstance(token, str) and "s3" not in token


def test_special_characters_are_escaped_and_survive() -> None:
    spec = _spec(KERNEL)
    password = "p<&'\">w"
    spec = dataclasses.replace(
        spec, graphics=Graphics(type="vnc", password_file="/etc/pw"),
        cmdline="a=<b> c=&d e='f' g=\"h\" ]]> </cmdline>",
    )
    xml = domain.render("vm", spec, graphics_password=password)
    assert "<b>" not in xml and "]]>" not in xml and "</cmdline> " not in xml
    assert domain.observe(xml) == domain.project(spec, graphics_password=password)
    assert domain.observe(xml)["cmdline"] == spec.cmdline
    other = domain.project(spec, graphics_password="other")
    assert domain.observe(xml)["graphics.password"] != other["graphics.password"]


def test_characters_xml_cannot_hold_are_refused() -> None:
    spec = dataclasses.replace(_spec(KERNEL), cmdline="console=ttyS0\x00rm -rf")
    with pytest.raises(ValueError, match="XML cannot hold"):
        domain.render("vm", spec)


def test_volume_disk_needs_pool_and_format() -> None:
    # Without its format a qcow2 volume would be opened as raw: refuse, never guess.
    seed = WIN7_CONTEXT["cloud_init_seed"]
    with pytest.raises(ValueError, match="format"):
        domain.render("vm", _spec(WIN7), volume_pools={"win7-root": "images"},
                      cloud_init_seed=seed)  # fmt: skip
    with pytest.raises(ValueError, match="pool"):
        domain.project(_spec(WIN7), volume_formats={"win7-root": "qcow2"}, cloud_init_seed=seed)


def test_cloud_init_needs_its_seed_volume() -> None:
    with pytest.raises(ValueError, match="cloudInit"):
        domain.render("vm", _spec(WIN7), **{**WIN7_CONTEXT, "cloud_init_seed": None})


def test_ownership_round_trip() -> None:
    ownership = Ownership(manifest="vms/a&b.yaml", digest="sha256:ff", revision=None)
    xml = domain.render("vm", _spec(KERNEL), ownership=ownership)
    assert domain.read_ownership(xml) == ownership
    assert domain.read_ownership(domain.render("vm", _spec(KERNEL))) is None


def test_ownership_as_libvirt_writes_it_back() -> None:
    assert domain.read_ownership(read_data("domain-win7-libvirt-inactive.xml")) == Ownership(
        manifest="vms/win7.yaml", digest="sha256:0123abcd", revision="4f2c9e1")


def test_machine_aliases_from_capabilities() -> None:
    aliases = domain.machine_aliases_from_capabilities(read_data("capabilities.xml"))
    assert aliases == ALIASES


def test_observe_libvirt_inactive_xml() -> None:
    # XMLDesc(INACTIVE | SECURE) after defineXML: uuid, emulator, addresses,
    # controllers, ps2 inputs, audio, video, pc -> pc-i440fx-7.2, check='partial'.
    expected = domain.project(_spec(WIN7), machine_aliases=ALIASES, **WIN7_CONTEXT)
    assert domain.observe(read_data("domain-win7-libvirt-inactive.xml")) == expected


def test_observe_libvirt_live_xml() -> None:
    # XMLDesc(0) of the running domain: aliases, seclabel, autoport-assigned
    # ports, OVMF loader/nvram instead of firmware='efi', expanded CPU.
    expected = domain.project(_spec(Q35_UEFI), machine_aliases=ALIASES, **Q35_CONTEXT)
    live = read_data("domain-q35-uefi-libvirt-live.xml")
    assert re.search(r"<graphics type='spice' port='59\d\d' autoport='yes'", live)
    observed = domain.observe(live)
    # the running CPU is the model with the features libvirt checked at start
    # (check='full'): never compared with the manifest (planner.LIVE_INCOMPARABLE)
    assert str(observed.pop("cpu")).startswith("Nehalem, hypervisor=require")
    assert observed == {k: v for k, v in expected.items() if k != "cpu"}


def test_observe_without_secure_flag_has_no_password() -> None:
    live = read_data("domain-win7-libvirt-inactive.xml")
    insecure = re.sub(r" passwd='[^']*'", "", live)
    assert domain.observe(insecure)["graphics.password"] is None


def test_default_cpu_of_qemu_domain_reads_as_none() -> None:
    xml = domain.render("vm", _spec(KERNEL)).replace(
        "<clock", "<cpu mode='custom' match='exact' check='none'>"
        "<model fallback='forbid'>qemu64</model></cpu><clock")
    assert domain.observe(xml)["cpu"] is None
    named = xml.replace("check='none'", "check='partial'")
    assert domain.observe(named)["cpu"] == "qemu64"


def test_observe_sees_out_of_band_changes() -> None:
    # What virsh edit / setmem / detach-interface leave behind shows up key by key.
    expected = domain.project(_spec(WIN7), machine_aliases=ALIASES, **WIN7_CONTEXT)
    edited = (
        read_data("domain-win7-libvirt-inactive.xml")
        .replace("<currentMemory unit='KiB'>1048576", "<currentMemory unit='KiB'>2097152")
        .replace("<target dev='vdb' bus='virtio'/>", "<target dev='vdb' bus='sata'/>")
        .replace("<source bridge='br0'/>", "<source bridge='br1'/>")
        .replace("<boot dev='cdrom'/>", "")
    )
    observed = domain.observe(edited)
    changed = {k for k in expected.keys() | observed.keys() if expected.get(k) != observed.get(k)}
    assert changed == {"memory", "disks[/var/lib/libvirt/images/data.img].bus", "interfaces[52:54:00:f0:80:d5].bridge", "boot"}
    assert observed["memory"] == 2 * 1024**3


def test_machine_aliases_only_for_the_asked_arch() -> None:
    caps = """<capabilities><guest><os_type>hvm</os_type><arch name='aarch64'>
      <machine canonical='virt-7.2'>virt</machine></arch></guest>
      <guest><os_type>hvm</os_type><arch name='x86_64'><machine>pc-q35-7.2</machine>
      <domain type='kvm'><machine canonical='pc-q35-8.0'>q35</machine></domain>
      </arch></guest></capabilities>"""
    assert domain.machine_aliases_from_capabilities(caps) == {"q35": "pc-q35-8.0"}
    assert domain.machine_aliases_from_capabilities(caps, arch="aarch64") == {"virt": "virt-7.2"}


def test_q35_gets_spare_pcie_root_ports_and_pc_none() -> None:
    """A q35 device hot-plugs only into a free root port: always some beyond the devices."""
    def ports(machine: str, nics: int) -> tuple[int, int]:
        interfaces = ", ".join(f'{{bridge: br0, mac: "52:54:00:00:01:{i:02x}"}}'
                               for i in range(nics))  # fmt: skip
        spec = manifest(f"""
            apiVersion: reconciler/v1
            kind: VirtualMachine
            metadata: {{name: vm}}
            spec:
              memory: 64MiB
              machine: {machine}
              disks: [{{file: /srv/a.img, format: raw}}]
              interfaces: [{interfaces}]
            """).spec
        assert isinstance(spec, VirtualMachineSpec)
        xml = domain.render("vm", spec)
        return domain.pcie_root_ports(spec), xml.count('model="pcie-root-port"')

    assert ports("pc", 2) == (0, 0)
    assert ports("q35", 1) == (14, 14)  # as virt-install
    assert ports("q35", 20) == (1 + 20 + 4 + 4, 29)  # every device has one, 4 spare


def test_characters_xml_cannot_hold_are_exactly_those_outside_xml_chars() -> None:
    from reconciler.xml._fields import _NOT_XML

    def xml_char(c: int) -> bool:  # XML 1.0, production [2] Char
        return c in (0x9, 0xA, 0xD) or 0x20 <= c <= 0xD7FF or 0xE000 <= c <= 0xFFFD or (
            0x10000 <= c <= 0x10FFFF
        )

    edges = {0x0, 0x8, 0x9, 0xA, 0xB, 0xC, 0xD, 0xE, 0x1F, 0x20, 0x7F, 0xD7FF, 0xD800, 0xDFFF,
             0xE000, 0xFFFD, 0xFFFE, 0xFFFF, 0x10000, 0x10FFFF}  # fmt: skip
    for c in sorted(edges | set(range(0, 0x110000, 97))):
        assert (_NOT_XML.search(chr(c)) is None) == xml_char(c), hex(c)


def test_graphics_update_keeps_the_running_display_and_sets_the_password() -> None:
    """libvirt refuses a live <graphics> update that changes anything but the password,
    so the running element is sent back as it is, with the new password only."""
    live = ("<domain><devices><graphics type='vnc' port='5901' autoport='yes' "
            "listen='127.0.0.1' keymap='en-us' passwd='old1'><listen type='address' "
            "address='127.0.0.1'/></graphics></devices></domain>")  # fmt: skip
    desired = ("<domain><devices><graphics type='vnc' port='-1' autoport='yes' "
               "passwd='new2'/></devices></domain>")  # fmt: skip
    update = domain.graphics_update(live, desired)
    assert update is not None
    assert "passwd=\"new2\"" in update and "old1" not in update
    for kept in ('port="5901"', 'keymap="en-us"', 'address="127.0.0.1"'):
        assert kept in update, update
    no_password = "<domain><devices><graphics type='vnc' autoport='yes'/></devices></domain>"
    assert domain.graphics_update(live, no_password) is None  # removing one waits for a restart
    assert domain.graphics_update("<domain><devices/></domain>", desired) is None
