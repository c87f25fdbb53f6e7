"""reconciler.xml against a real libvirtd: what render writes, libvirt accepts and reads back.

For each kind: render -> ``virt-xml-validate`` -> define in libvirt -> read the
definition back -> ``observe(readback) == project(spec)``. This is where the
unit tier's hand-written fixtures are kept honest: if libvirt starts to
rewrite a field differently, these tests say which.

Every object is named with the session ``prefix`` and removed by the test
that made it (conftest removes leftovers). libvirt's ``default`` network is
never started and no guest can network-boot (started guests have no NIC).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.hostdefaults import VmDefaults
from reconciler.model import (
    Cdrom,
    CpuSpec,
    CpuTopology,
    Dhcp,
    DhcpHost,
    Disk,
    DnsHost,
    Graphics,
    Interface,
    Ipv4,
    NetworkSpec,
    StoragePoolSpec,
    VirtualMachineSpec,
    VolumeSpec,
)
from reconciler.xml import domain, network, pool, volume
from tests.integration.engine_support import for_this_host

Names = Callable[[str], str]


def validate(xml: str, schema: str, tmp_path: Path) -> None:
    """``virt-xml-validate`` accepts ``xml`` against libvirt's ``schema`` (domain, network...)."""
    path = tmp_path / f"{schema}.xml"
    path.write_text(xml)
    result = subprocess.run(
        ["virt-xml-validate", str(path), schema], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{schema} XML does not validate:\n{result.stderr}\n{xml}"


@pytest.fixture(scope="module")
def libvirt_mod() -> Any:
    import libvirt

    return libvirt


@pytest.fixture(scope="module")
def pool_dir(prefix: str) -> Iterator[Path]:
    """A directory for the test pool that qemu (user libvirt-qemu) can traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def storage_pool(conn: Any, names: Names, pool_dir: Path) -> Iterator[Any]:
    """An active dir pool named with the prefix; its volumes go with it."""
    name = names("pool")
    spec = StoragePoolSpec(path=str(pool_dir))
    created = conn.storagePoolDefineXML(pool.render(name, spec))
    created.create()
    yield created
    for vol in created.listAllVolumes(0):
        vol.delete(0)
    created.destroy()
    created.undefine()


@pytest.fixture(scope="module")
def machine_aliases(conn: Any) -> dict[str, str]:
    aliases = domain.machine_aliases_from_capabilities(conn.getCapabilities())
    assert {"pc", "q35"} <= aliases.keys(), aliases
    return aliases


# --- pools and volumes -------------------------------------------------------


def test_pool(conn: Any, names: Names, tmp_path: Path, pool_dir: Path) -> None:
    name = names("pool-rt")
    spec = StoragePoolSpec(path=str(pool_dir) + "//")  # libvirt cleans the path
    xml = pool.render(name, spec)
    validate(xml, "storagepool", tmp_path)
    defined = conn.storagePoolDefineXML(xml)
    try:
        assert pool.observe(defined.XMLDesc(0)) == pool.project(spec)
        defined.create()
        assert pool.observe(defined.XMLDesc(0)) == pool.project(spec)
        defined.destroy()
    finally:
        defined.undefine()


@pytest.mark.parametrize(
    ("suffix", "spec"),
    [
        ("raw", VolumeSpec(pool="p", capacity=1_000_001, format="raw")),
        ("qcow2", VolumeSpec(pool="p", capacity=1_000_001, format="qcow2")),
        ("big", VolumeSpec(pool="p", capacity=20 * 1024**3, format="qcow2")),
    ],
)
def test_volume(storage_pool: Any, names: Names, tmp_path: Path, suffix: str,
                spec: VolumeSpec) -> None:
    xml = volume.render(names(f"vol-{suffix}"), spec)
    validate(xml, "storagevol", tmp_path)
    created = storage_pool.createXML(xml, 0)
    try:
        assert volume.observe(created.XMLDesc(0)) == volume.project(spec)
    finally:
        created.delete(0)


def test_volume_clone(storage_pool: Any, names: Names, tmp_path: Path) -> None:
    base_spec = VolumeSpec(pool="p", capacity=64 * 1024**2)
    base = storage_pool.createXML(volume.render(names("vol-base"), base_spec), 0)
    clone_spec = VolumeSpec(pool="p", capacity=128 * 1024**2, backing_volume=names("vol-base"))
    context = {"backing_path": base.path(), "backing_format": "qcow2"}
    xml = volume.render(names("vol-clone"), clone_spec, **context)
    validate(xml, "storagevol", tmp_path)
    clone = storage_pool.createXML(xml, 0)
    try:
        assert volume.observe(clone.XMLDesc(0)) == volume.project(clone_spec, **context)
    finally:
        clone.delete(0)
        base.delete(0)


# --- networks -----------------------------------------------------------------


def _octet(run_id: str, offset: int) -> int:
    return (int(run_id[:2], 16) + offset) % 250 + 1


def _network_specs(run_id: str, bridge: str) -> dict[str, NetworkSpec]:
    a, b = _octet(run_id, 0), _octet(run_id, 1)
    return {
        "nat": NetworkSpec(
            mode="nat", bridge=bridge, mtu=1400, domain="lab.test",
            ipv4=Ipv4(f"10.252.{a}.1", 24, Dhcp(
                f"10.252.{a}.100", f"10.252.{a}.200",
                (DhcpHost("52:54:00:12:34:80", f"10.252.{a}.10", "win7"),
                 DhcpHost("52:54:00:12:34:81", f"10.252.{a}.11")))),
            dns_hosts=(DnsHost(f"10.252.{a}.10", ("win7.lab.test", "w7")),),
        ),
        "route": NetworkSpec(mode="route", ipv4=Ipv4(f"10.251.{b}.1", 24)),
        "bridge": NetworkSpec(mode="bridge", bridge="br0"),
    }


@pytest.mark.parametrize("kind", ["nat", "route", "bridge"])
def test_network_defined(conn: Any, names: Names, bridge_names: Callable[[int], str],
                         run_id: str, tmp_path: Path, kind: str) -> None:
    spec = _network_specs(run_id, bridge_names(1))[kind]
    xml = network.render(names(f"net-{kind}"), spec)
    validate(xml, "network", tmp_path)
    defined = conn.networkDefineXML(xml)
    try:
        observed = network.observe(defined.XMLDesc(0), bridge_declared=spec.bridge is not None)
        assert observed == network.project(spec)
    finally:
        defined.undefine()


def test_network_isolated_started(conn: Any, names: Names, libvirt_mod: Any, run_id: str,
                                  tmp_path: Path) -> None:
    # No bridge declared: libvirt picks virbrN, which is not a difference.
    c = _octet(run_id, 2)
    spec = NetworkSpec(
        mode="isolated",
        ipv4=Ipv4(f"10.250.{c}.1", 24, Dhcp(f"10.250.{c}.10", f"10.250.{c}.20",
                                            (DhcpHost("52:54:00:00:00:01", f"10.250.{c}.5"),))),
    )
    xml = network.render(names("net-iso"), spec)
    validate(xml, "network", tmp_path)
    defined = conn.networkDefineXML(xml)
    try:
        assert network.observe(defined.XMLDesc(0), bridge_declared=False) == network.project(spec)
        defined.create()
        live = defined.XMLDesc(0)
        assert network.observe(live, bridge_declared=False) == network.project(spec)
        inactive = defined.XMLDesc(libvirt_mod.VIR_NETWORK_XML_INACTIVE)
        assert network.observe(inactive, bridge_declared=False) == network.project(spec)
        # Keeping the UUID on a redefine keeps the network.
        uuid = defined.UUIDString()
        again = conn.networkDefineXML(network.render(names("net-iso"), spec, uuid=uuid))
        assert again.UUIDString() == uuid
        defined.destroy()
    finally:
        defined.undefine()


# --- domains ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def root_volume(storage_pool: Any, names: Names) -> tuple[str, str]:
    """A qcow2 volume in the test pool: (name, pool name)."""
    name = names("root")
    storage_pool.createXML(volume.render(name, VolumeSpec(pool="p", capacity=64 * 1024**2)), 0)
    return name, storage_pool.name()


@pytest.fixture(scope="module")
def data_file(pool_dir: Path) -> str:
    path = pool_dir / "data.img"
    with path.open("wb") as f:
        f.truncate(16 * 1024**2)
    return str(path)


def _secure_inactive(dom: Any, libvirt_mod: Any) -> str:
    xml: str = dom.XMLDesc(libvirt_mod.VIR_DOMAIN_XML_INACTIVE | libvirt_mod.VIR_DOMAIN_XML_SECURE)
    return xml


def _win7_like(root: tuple[str, str], data_file: str, pool_dir: Path) -> VirtualMachineSpec:
    return VirtualMachineSpec(
        type="kvm", memory=128 * 1024**2, max_memory=256 * 1024**2, vcpus=1, max_vcpus=2,
        machine="pc", firmware="bios", cpu=CpuSpec(), clock="localtime",
        disks=(Disk(target="vda", volume=root[0], cache="writeback"),
               Disk(target="vdb", file=data_file, format="raw", readonly=True, serial="DATA-1")),
        cdroms=(Cdrom(target="hda", bus="ide", file=str(pool_dir / "missing.iso")),),
        boot=("cdrom", "disk"),
        graphics=Graphics(type="vnc", port=None, listen="127.0.0.1", keymap="en-us",
                          password_file="/etc/reconciler/secrets/vnc"),
        inputs=("tablet",),
        serial="pty",
    )


def _context(root: tuple[str, str]) -> dict[str, Any]:
    return {
        "volume_pools": {root[0]: root[1]},
        "volume_formats": {root[0]: "qcow2"},
        "graphics_password": "p<&'\">w",
    }


def test_domain_defined(conn: Any, names: Names, libvirt_mod: Any, tmp_path: Path,
                        machine_aliases: dict[str, str], root_volume: tuple[str, str],
                        data_file: str, pool_dir: Path, bridge_names: Callable[[int], str]) -> None:
    spec = dataclasses.replace(
        _win7_like(root_volume, data_file, pool_dir),
        interfaces=(Interface(mac="52:54:00:AB:00:01", network="default"),
                    Interface(mac="52:54:00:ab:00:02", bridge=bridge_names(2), model="e1000")),
        graphics=Graphics(type="vnc", port=5987, listen="0.0.0.0", keymap="en-us",
                          password_file="/etc/reconciler/secrets/vnc"),
    )
    context = _context(root_volume)
    ownership = domain.Ownership(manifest="vms/a&b.yaml", digest="sha256:abc", revision="deadbeef")
    xml = domain.render(names("vm-def"), spec, ownership=ownership, **context)
    validate(xml, "domain", tmp_path)
    dom = conn.defineXML(xml)
    try:
        readback = _secure_inactive(dom, libvirt_mod)
        assert domain.observe(readback) == domain.project(
            spec, machine_aliases=machine_aliases, **context)
        assert domain.read_ownership(readback) == ownership
        # Redefining with the UUID keeps the domain.
        uuid = dom.UUIDString()
        again = conn.defineXML(domain.render(names("vm-def"), spec, uuid=uuid, **context))
        assert again.UUIDString() == uuid
    finally:
        dom.undefine()


@pytest.mark.parametrize("variant", ["q35-uefi", "qemu-kernel"])
def test_domain_variants_defined(conn: Any, names: Names, libvirt_mod: Any, tmp_path: Path,
                                 machine_aliases: dict[str, str], pool_dir: Path,
                                 data_file: str, variant: str) -> None:
    if variant == "q35-uefi":
        spec = VirtualMachineSpec(
            memory=256 * 1024**2, max_memory=256 * 1024**2, vcpus=2, max_vcpus=2,
            machine="q35", firmware="uefi", cpu=CpuSpec(mode="custom", model="Nehalem"),
            disks=(Disk(target="sda", bus="sata", file=data_file, format="raw", cache="none"),
                   Disk(target="sdb", bus="scsi", file=data_file, format="raw", readonly=True)),
            cdroms=(Cdrom(target="sdc", bus="sata"),),
            boot=("disk", "cdrom"),
            graphics=Graphics(type="spice"),
            inputs=("tablet", "keyboard"),
            serial="none",
        )
    else:
        spec = VirtualMachineSpec(
            type="qemu", memory=64 * 1024**2, max_memory=64 * 1024**2, vcpus=1, max_vcpus=1,
            cpu=None, kernel=str(pool_dir / "vmlinuz"), initrd=str(pool_dir / "initrd.img"),
            cmdline="console=ttyS0 msg=\"<&'>\"", serial="file",
            serial_file=str(pool_dir / "serial.log"),
        )
    xml = domain.render(names(f"vm-{variant}"), spec)
    validate(xml, "domain", tmp_path)
    dom = conn.defineXML(xml)
    try:
        readback = _secure_inactive(dom, libvirt_mod)
        assert domain.observe(readback) == domain.project(spec, machine_aliases=machine_aliases)
    finally:
        dom.undefineFlags(libvirt_mod.VIR_DOMAIN_UNDEFINE_NVRAM)


# Fields a start changes: memory is the balloon's actual size, and host-model
# becomes the named model libvirt chose. Everything else must read the same.
CHANGES_AT_START = {"memory", "cpu"}


def _stable(projection: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in projection.items() if k not in CHANGES_AT_START}


def test_domain_started(conn: Any, names: Names, libvirt_mod: Any,
                        machine_aliases: dict[str, str], root_volume: tuple[str, str],
                        data_file: str, pool_dir: Path, vm_defaults: VmDefaults) -> None:
    # No NIC: nothing can network-boot. The cdrom is empty (the ISO does not exist).
    spec = dataclasses.replace(_win7_like(root_volume, data_file, pool_dir),
                               cdroms=(Cdrom(target="hda", bus="ide"),))
    spec = for_this_host(spec, vm_defaults)
    context = _context(root_volume)
    dom = conn.defineXML(domain.render(names("vm-run"), spec, **context))
    try:
        dom.create()
        try:
            expected = domain.project(spec, machine_aliases=machine_aliases, **context)
            live = dom.XMLDesc(libvirt_mod.VIR_DOMAIN_XML_SECURE)
            observed = domain.observe(live)
            assert _stable(observed) == _stable(expected)
            assert "<graphics type='vnc' port='59" in live  # autoport assigned one
            assert observed["graphics.port"] == "auto"
            # The inactive definition is untouched by the start.
            assert domain.observe(_secure_inactive(dom, libvirt_mod)) == expected
        finally:
            dom.destroy()
    finally:
        dom.undefine()


def _have_ovmf() -> bool:
    firmware = Path("/usr/share/qemu/firmware")
    return firmware.is_dir() and any("x86_64" in p.name for p in firmware.glob("*.json"))


def test_domain_uefi_started(conn: Any, names: Names, libvirt_mod: Any,
                             machine_aliases: dict[str, str], vm_defaults: VmDefaults) -> None:
    if not _have_ovmf():
        pytest.skip("no OVMF firmware descriptor in /usr/share/qemu/firmware (install ovmf)")
    spec = VirtualMachineSpec(
        memory=128 * 1024**2, max_memory=128 * 1024**2, vcpus=1, max_vcpus=1,
        machine="q35", firmware="uefi", cpu=CpuSpec(mode="host-passthrough"), serial="pty",
    )
    spec = for_this_host(spec, vm_defaults)
    dom = conn.defineXML(domain.render(names("vm-uefi"), spec))
    try:
        dom.create()
        try:
            live = dom.XMLDesc(0)
            assert "type='pflash'" in live  # libvirt replaced firmware='efi' by the loader
            expected = domain.project(spec, machine_aliases=machine_aliases)
            assert _stable(domain.observe(live)) == _stable(expected)
            assert domain.observe(live)["firmware"] == "uefi"
        finally:
            dom.destroy()
    finally:
        dom.undefineFlags(libvirt_mod.VIR_DOMAIN_UNDEFINE_NVRAM)


CPU_VARIANTS = {
    "host-model-features": CpuSpec(features=(("arch-capabilities", "disable"),
                                             ("vmx", "optional"))),
    "passthrough-unmigratable": CpuSpec(mode="host-passthrough", migratable=False,
                                        features=(("arch-capabilities", "disable"),)),
    "maximum": CpuSpec(mode="maximum"),
    "custom-topology": CpuSpec(mode="custom", model="Nehalem",
                               features=(("aes", "force"), ("pdpe1gb", "forbid"),
                                         ("popcnt", "require")),
                               topology=CpuTopology(sockets=1, dies=1, cores=2, threads=2)),
}


@pytest.mark.parametrize("variant", sorted(CPU_VARIANTS))
def test_cpu_variants_defined(conn: Any, names: Names, libvirt_mod: Any, tmp_path: Path,
                              machine_aliases: dict[str, str], variant: str) -> None:
    """Every shape of ``cpu`` passes libvirt's schema, is accepted by libvirtd, and reads
    back (inactive, with what libvirt adds: check, dies, migratable on) as declared."""
    spec = VirtualMachineSpec(memory=64 * 1024**2, max_memory=64 * 1024**2, vcpus=4,
                              max_vcpus=4, cpu=CPU_VARIANTS[variant])
    xml = domain.render(names(f"vm-cpu-{variant}"), spec)
    validate(xml, "domain", tmp_path)
    dom = conn.defineXML(xml)
    try:
        readback = _secure_inactive(dom, libvirt_mod)
        assert domain.observe(readback) == domain.project(spec, machine_aliases=machine_aliases)
        assert domain.read_cpu(readback) is not None
    finally:
        dom.undefine()
