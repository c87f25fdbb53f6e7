"""The tiny test guest (tests/guest) really boots under libvirt, and behaves.

It is what other integration tests use to prove that a domain runs, powers
off on an ACPI request (or ignores it), sees its cidata CD-ROM and follows
live memory/vCPU changes. Domains are ``type='qemu'`` (TCG): nested KVM hangs
Linux guests on this kind of host.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import libvirt

from tests.guest import fixtures as guest_fixtures
from tests.guest.fixtures import GuestImage, SerialLog, guest_domain_xml, make_iso

# The guest fixtures, made visible to this module. (``pytest_plugins`` would
# do it, but pytest refuses it outside the top-level conftest.)
guest_image = guest_fixtures.guest_image
guest_log_dir = guest_fixtures.guest_log_dir

BOOT_TIMEOUT = 60.0


@contextmanager
def running_domain(conn: Any, xml: str) -> Iterator[Any]:
    """Define and start ``xml``; destroy and undefine it afterwards, whatever happens."""
    dom = conn.defineXML(xml)
    try:
        dom.create()
        yield dom
    finally:
        try:
            if dom.isActive():
                dom.destroy()
        finally:
            dom.undefine()


def wait_state(dom: Any, state: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dom.state()[0] == state:
            return True
        time.sleep(0.2)
    return bool(dom.state()[0] == state)


def wait_alive(
    log: SerialLog, ok: Callable[[int, int], bool], timeout: float, since: int = 0
) -> tuple[int, int]:
    """(memory_kib, cpus) of the first ``alive`` line from ``since`` on where ``ok`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.lines()
        for line in lines[since:]:
            m = re.search(r"RCGUEST: alive memory_kib=(\d+) cpus=(\d+)", line)
            if m and ok(int(m.group(1)), int(m.group(2))):
                return int(m.group(1)), int(m.group(2))
        if time.monotonic() >= deadline:
            tail = "\n".join(lines[-20:])
            raise AssertionError(f"no matching alive line after {timeout:g} s:\n{tail}")
        time.sleep(0.2)


def test_boots_reports_and_powers_off_on_acpi(
    conn: Any, names: Callable[[str], str], guest_image: GuestImage, guest_log_dir: Path
) -> None:
    log_path = guest_log_dir / "serial.log"
    xml = guest_domain_xml(names("guest-boot"), guest_image, log_path)
    with running_domain(conn, xml) as dom:
        log = SerialLog(log_path)
        log.wait_for(r"RCGUEST: booted", BOOT_TIMEOUT)
        cpus = log.wait_for(r"RCGUEST: cpus=\d+", 5)
        assert cpus.endswith("cpus=1"), cpus
        log.wait_for(r"RCGUEST: cidata none", 15)
        log.wait_for(r"RCGUEST: alive memory_kib=\d+ cpus=1", 10)
        # No NIC may ever appear (nothing may network-boot or send packets).
        assert "<interface" not in dom.XMLDesc(0)

        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        log.wait_for(r"RCGUEST: acpi power button, powering off", 30)
        assert wait_state(dom, libvirt.VIR_DOMAIN_SHUTOFF, 30), "guest did not power off"


def test_ignores_acpi_when_told(
    conn: Any, names: Callable[[str], str], guest_image: GuestImage, guest_log_dir: Path
) -> None:
    log_path = guest_log_dir / "serial.log"
    xml = guest_domain_xml(
        names("guest-noacpi"), guest_image, log_path, extra_cmdline="rcguest.ignore_acpi=1"
    )
    with running_domain(conn, xml) as dom:
        log = SerialLog(log_path)
        log.wait_for(r"RCGUEST: booted", BOOT_TIMEOUT)
        log.wait_for(r"RCGUEST: acpi power button will be ignored", 5)
        asked = time.monotonic()
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        log.wait_for(r"RCGUEST: acpi power button ignored", 10)
        time.sleep(max(0.0, 10 - (time.monotonic() - asked)))
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert not any("powering off" in line for line in log.lines())


def test_finds_cidata_cdrom(
    conn: Any, names: Callable[[str], str], guest_image: GuestImage, guest_log_dir: Path
) -> None:
    iso = make_iso(
        guest_log_dir / "seed.iso",
        {
            "meta-data": "instance-id: iid-rctest\nlocal-hostname: rcguest\n",
            "user-data": "#cloud-config\nhostname: rcguest\n",
        },
        label="cidata",
    )
    cdrom = f"""    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
"""
    log_path = guest_log_dir / "serial.log"
    xml = guest_domain_xml(names("guest-cidata"), guest_image, log_path, extra_devices=cdrom)
    with running_domain(conn, xml):
        log = SerialLog(log_path)
        log.wait_for(r"RCGUEST: booted", BOOT_TIMEOUT)
        log.wait_for(r"RCGUEST: cidata found", 15)
        log.wait_for(r"RCGUEST: cidata user-data: #cloud-config$", 5)
        log.wait_for(r"RCGUEST: cidata user-data: hostname: rcguest$", 5)
        log.wait_for(r"RCGUEST: cidata meta-data: instance-id: iid-rctest$", 5)


def test_follows_live_balloon_and_vcpu_hotplug(
    conn: Any, names: Callable[[str], str], guest_image: GuestImage, guest_log_dir: Path
) -> None:
    log_path = guest_log_dir / "serial.log"
    xml = guest_domain_xml(names("guest-live"), guest_image, log_path)
    with running_domain(conn, xml) as dom:
        log = SerialLog(log_path)
        log.wait_for(r"RCGUEST: booted", BOOT_TIMEOUT)
        # 256 MiB current of 512 MiB: once the balloon has inflated (soon
        # after boot) MemTotal is a little under 256 MiB (the kernel keeps some).
        before, _ = wait_alive(log, lambda mem, cpus: cpus == 1 and mem <= 256 * 1024, 20)
        assert before > 150 * 1024, before

        mark = log.mark()
        dom.setMemoryFlags(384 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        dom.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        after, _ = wait_alive(
            log, lambda mem, cpus: cpus == 2 and mem > before + 100 * 1024, 20, since=mark
        )
        assert after <= 384 * 1024, after
        assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
        info = dom.info()
        assert info[2] == 384 * 1024, info  # current memory as libvirt sees it
