"""bench/adoption.py's comparison: what makes an adopted definition "unchanged" and a
device "lost". It decides the adoption test's verdict, so it is pinned here."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench import adoption

BEFORE = """<domain type='kvm'>
  <name>x</name>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <devices>
    <controller type='usb' index='0' model='ich9-ehci1'/>
    <controller type='usb' index='0' model='ich9-uhci1'/>
    <disk type='block' device='disk'><source dev='/dev/vg/x'/><target dev='vda' bus='virtio'/></disk>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>"""

OWNER = """<rc:owner xmlns:rc="https://reconciler.dev/xmlns/domain/v1">
      <rc:manifest>/m/x.yaml</rc:manifest>
    </rc:owner>"""


def test_our_owner_record_alone_is_not_a_change() -> None:
    after = BEFORE.replace("  </metadata>", f"    {OWNER}\n  </metadata>")
    a, b = adoption.without_owner(BEFORE), adoption.without_owner(after)
    assert adoption.canonical(a) == adoption.canonical(b)
    # and with no other metadata, the <metadata> it came in goes too
    bare = BEFORE.replace(BEFORE[BEFORE.index("  <metadata>"):BEFORE.index("  <devices>")], "")
    with_owner = bare.replace("  <devices>", f"  <metadata>{OWNER}</metadata>\n  <devices>")
    assert adoption.canonical(adoption.without_owner(bare)) == adoption.canonical(
        adoption.without_owner(with_owner))


def test_another_tools_metadata_is_compared() -> None:
    after = BEFORE.replace('id="http://debian.org/debian/12"', 'id="http://debian.org/debian/11"')
    a, b = adoption.without_owner(BEFORE), adoption.without_owner(after)
    assert adoption.canonical(a) != adoption.canonical(b)
    assert adoption.differing_sections(a, b) == ["metadata"]


def test_a_changed_model_is_a_change_and_a_missing_device_is_lost() -> None:
    after = BEFORE.replace("ich9-uhci1", "piix3-uhci").replace(
        BEFORE[BEFORE.index("    <rng"):BEFORE.index("  </devices>")], "")
    a, b = adoption.without_owner(BEFORE), adoption.without_owner(after)
    assert adoption.differing_sections(a, b) == ["devices/controller", "devices/rng"]
    assert sorted((adoption.devices(a) - adoption.devices(b)).elements()) == ["rng"]


def test_devices_are_counted_not_matched_by_position() -> None:
    # companions sharing index 0 are two; one of them gone is one lost
    a = adoption.without_owner(BEFORE)
    assert adoption.devices(a)["controller usb index 0"] == 2
    one = BEFORE.replace("    <controller type='usb' index='0' model='ich9-uhci1'/>\n", "")
    lost = adoption.devices(a) - adoption.devices(adoption.without_owner(one))
    assert lost == Counter({"controller usb index 0": 1})
    assert "disk disk (block) dev=/dev/vg/x" in adoption.devices(a)


def test_prepared_renames_and_drops_the_uuid(tmp_path: Path) -> None:
    path = tmp_path / "d.xml"
    path.write_text("<domain><name>QEMUGuest1</name><uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809"
                    "</uuid><memory>1</memory></domain>")
    xml = adoption.prepared(path, "rctest-1-d")
    assert "<name>rctest-1-d</name>" in xml and "uuid" not in xml and "<memory>1</memory>" in xml
