"""Export does not list as kept what libvirt spells out at its default (issue 13): a
NIC's ``<link state='up'/>`` and a serial log's ``append='off'`` say what the
manifest's defaults say (no ``link``, ``append: false``)."""

from __future__ import annotations

from reconciler import export
from reconciler.model import Kind
from reconciler.snapshot import DomainRecord
from tests.unit.test_export import DOMAIN_XML, observed, one

NIC = """<source network='lab'/>
      <model type='virtio'/>"""
SERIAL = """      <source path='/var/log/web-1.log'/>
      <target type='isa-serial'"""
UUID = "3de44f4d-ed97-4122-8ada-4035dffc11a8"


def exported(nic_extra: str = "", log: str = "") -> export.Exported:
    assert NIC in DOMAIN_XML and SERIAL in DOMAIN_XML
    xml = DOMAIN_XML.replace(NIC, NIC + nic_extra, 1).replace(
        SERIAL, SERIAL.replace("/>", "/>" + log, 1), 1)
    return one(Kind.VIRTUAL_MACHINE, "web-1", observed(domains={
        "web-1": DomainRecord("web-1", UUID, True, True, xml, None)}))  # fmt: skip


def kept(item: export.Exported) -> list[str]:
    return export.kept_lines(item.kept)


def test_a_link_that_is_up_is_neither_written_nor_kept() -> None:
    item = exported("<link state='up'/>")
    assert item.document is not None and item.notes == ()
    assert not any("link" in line for line in kept(item)), kept(item)
    assert "link" not in item.document["spec"]["interfaces"][0]
    down = exported("<link state='down'/>")
    assert down.document is not None and down.document["spec"]["interfaces"][0]["link"] == "down"
    assert not any("link" in line for line in kept(down)), kept(down)


def test_a_serial_log_that_does_not_append_is_not_kept() -> None:
    log = "<log file='/var/log/web-1.serial.log' append='off'/>"
    item = exported(log=log)
    assert item.document is not None and item.notes == ()
    assert item.document["spec"]["serial"]["log"] == {"file": "/var/log/web-1.serial.log"}
    assert not any("append" in line for line in kept(item)), kept(item)
    on = exported(log=log.replace("'off'", "'on'"))
    assert on.document is not None and on.document["spec"]["serial"]["log"]["append"] is True
    assert not any("append" in line for line in kept(on)), kept(on)


def test_a_value_other_than_the_default_is_carried_by_the_xml_field() -> None:
    # an attribute the manifest has no word for is carried by an xml entry (the escape
    # hatch), beside a default one: nothing kept, nothing lost
    item = exported("<link state='up' extra='x'/>")
    assert item.document is not None and not kept(item), kept(item)
    assert {"xpath": "./devices/interface[mac/@address='52:54:00:12:34:80']",
            "add": '<link state="up" extra="x"/>'} in item.document["spec"]["xml"]
