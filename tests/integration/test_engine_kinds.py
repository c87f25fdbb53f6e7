"""Every kind applies, and the next plan is empty (idempotence), against a real libvirtd.

Also the SPEC §2 examples (tests/unit/data/spec_examples), renamed with the
test prefix and pointed at files, a bridge and a password file made here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reconciler.plan import Op
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    pool,
    vm,
    volume,
    ws_fixture,
)

SPEC_EXAMPLES = Path(__file__).resolve().parents[1] / "unit" / "data" / "spec_examples"


def test_every_kind_applies_and_settles(ws: Workspace) -> None:
    images = ws.subdir("images")
    data = ws.file("data.img", "2M")
    iso = ws.iso("media.iso")
    serial_log = ws.subdir("logs") / "console.log"
    lan = ws.subnet()
    hosts = list(lan.hosts())
    mac = "52:54:00:a1:00:01"

    ws.write(
        "storage.yaml",
        pool(ws.n("pool"), images, autostart=True),
        volume(ws.n("base"), ws.n("pool"), "32MiB", format="qcow2"),
        volume(ws.n("raw"), ws.n("pool"), "8MiB", format="raw", reclaimPolicy="delete"),
        volume(ws.n("clone"), ws.n("pool"), "32MiB", format="qcow2", backingVolume=ws.n("base")),
    )
    ws.write(
        "networks.yaml",
        {
            "apiVersion": "reconciler/v1",
            "kind": "Network",
            "metadata": {"name": ws.n("lan")},
            "spec": {
                "mode": "isolated",
                "bridge": ws.bridge_name(),
                "mtu": 1400,
                "domain": "rctest.lan",
                "ipv4": {
                    "address": str(hosts[0]),
                    "prefix": 24,
                    "dhcp": {
                        "start": str(hosts[99]),
                        "end": str(hosts[199]),
                        "hosts": [
                            {"mac": mac, "ip": str(hosts[9]), "name": "web"},
                            {"mac": "52:54:00:a1:00:02", "ip": str(hosts[10])},
                        ],
                    },
                },
                "dnsHosts": [
                    {"ip": str(hosts[9]), "names": ["web.rctest.lan", "www.rctest.lan"]},
                    {"ip": str(hosts[10]), "names": ["db.rctest.lan"]},
                ],
                "autostart": False,
            },
        },
        ws.isolated_network(ws.n("nat"), mode="nat"),  # no guest on it: nothing talks
    )
    ws.write(
        "vms.yaml",
        vm(
            ws.n("web"),
            memory="96MiB",
            maxMemory="192MiB",
            vcpus=1,
            maxVcpus=2,
            clock="localtime",
            disks=[{"volume": ws.n("clone"), "bus": "virtio", "cache": "none"}],
            interfaces=[{"network": ws.n("lan"), "mac": mac}],
            graphics={"type": "vnc", "port": "auto"},
            inputs=["tablet"],
            autostart=True,
        ),
        vm(ws.n("stopped"), state="stopped", disks=[{"volume": ws.n("raw"), "bus": "sata"}]),
        vm(
            ws.n("files"),
            disks=[{"file": str(data), "format": "raw"}],
            cdroms=[{"file": str(iso)}],
            boot=["cdrom", "disk"],
        ),
        vm(ws.n("q35"), machine="q35", cdroms=[{"file": str(iso)}], serial="none"),
        vm(ws.n("serial"), serial={"file": str(serial_log)}),
    )

    result = ws.converge()
    assert {(a.kind.value, a.op) for a in result.plan.actions} >= {
        ("StoragePool", Op.CREATE), ("Volume", Op.CREATE), ("Network", Op.CREATE),
        ("VirtualMachine", Op.CREATE),
    }  # fmt: skip
    assert all(a.op is Op.CREATE for a in result.plan.actions), result.plan.summary()
    assert_settled(ws)

    # What libvirt has is what was declared (a few spot checks behind the engine's back).
    c = ws.conn
    assert c.storagePoolLookupByName(ws.n("pool")).autostart() == 1
    clone_xml = c.storagePoolLookupByName(ws.n("pool")).storageVolLookupByName(ws.n("clone"))
    assert str(images / ws.n("base")) in clone_xml.XMLDesc(0)
    assert c.networkLookupByName(ws.n("lan")).isActive()
    lan_xml = c.networkLookupByName(ws.n("lan")).XMLDesc(0)
    assert "<mtu size='1400'/>" in lan_xml and "rctest.lan" in lan_xml
    assert "www.rctest.lan" in lan_xml and mac in lan_xml
    running = {n: ws.domain(ws.n(n)).isActive() for n in ("web", "stopped", "files", "q35",
                                                            "serial")}  # fmt: skip
    assert running == {"web": 1, "stopped": 0, "files": 1, "q35": 1, "serial": 1}
    assert ws.domain(ws.n("web")).autostart() == 1
    web = ws.domain(ws.n("web")).XMLDesc(0)
    assert "type='tablet'" in web and "offset='localtime'" in web and "type='vnc'" in web
    assert "pc-q35" in ws.domain(ws.n("q35")).XMLDesc(0)
    assert serial_log.exists()

    # Idempotence through the command line too: exit 0, "No changes."
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No changes." in done.stdout


def _spec_examples(ws: Workspace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The SPEC §2 examples, renamed with the prefix and pointed at this test's files."""
    storage = list(yaml.safe_load_all((SPEC_EXAMPLES / "network-pool-volume.yaml").read_text()))
    machine = yaml.safe_load((SPEC_EXAMPLES / "virtualmachine.yaml").read_text())
    net, images, root = storage
    rename = {n: ws.n(n) for n in ("lab", "images", "win7-root", "win7-base", "win7")}

    lan = ws.subnet()
    hosts = list(lan.hosts())
    net["metadata"]["name"] = rename["lab"]
    net["spec"]["bridge"] = ws.bridge_name()
    ipv4 = net["spec"]["ipv4"]
    ipv4["address"] = str(hosts[0])
    ipv4["dhcp"]["start"], ipv4["dhcp"]["end"] = str(hosts[99]), str(hosts[199])
    ipv4["dhcp"]["hosts"][0]["ip"] = str(hosts[9])
    net["spec"]["dnsHosts"][0]["ip"] = str(hosts[9])

    images["metadata"]["name"] = rename["images"]
    images["spec"]["path"] = str(ws.subdir("images"))  # never the real /var/lib/libvirt/images

    root["metadata"]["name"] = rename["win7-root"]
    root["spec"]["pool"] = rename["images"]
    root["spec"]["backingVolume"] = rename["win7-base"]
    root["spec"]["source"] = str(ws.file("base.qcow2", "16M", fmt="qcow2"))

    spec = machine["spec"]
    machine["metadata"]["name"] = rename["win7"]
    spec["disks"][0]["volume"] = rename["win7-root"]
    spec["disks"][1]["file"] = str(ws.file("data.img", "2M"))
    spec["cdroms"][0]["file"] = str(ws.iso("Windows7.iso"))
    # interfaces[0] stays on libvirt's own `default` network, which exists but must
    # never be started here: so this VM can be defined, not started (state: stopped).
    spec["interfaces"][1]["bridge"] = ws.host_bridge()
    password = ws.hostdir / "win7-vnc"
    password.write_text("s3cret\n")
    spec["graphics"]["passwordFile"] = str(password)
    spec["state"] = "stopped"
    return [images, net], [root, machine]


def test_spec_examples_apply_and_settle(ws: Workspace) -> None:
    first, second = _spec_examples(ws)
    ws.write("network-pool.yaml", *first)
    ws.converge()
    # win7-base: a base image made with plain libvirt, not managed by reconciler.
    base = ws.conn.storagePoolLookupByName(ws.n("images")).createXML(
        f"<volume><name>{ws.n('win7-base')}</name><capacity unit='MiB'>64</capacity>"
        "<target><format type='qcow2'/></target></volume>",
        0,
    )
    ws.write("volume-vm.yaml", *second)
    result = ws.converge()
    assert action(result.plan, "Volume", ws.n("win7-root")).op is Op.CREATE
    assert action(result.plan, "VirtualMachine", ws.n("win7")).op is Op.CREATE
    assert_settled(ws)

    vol = ws.conn.storagePoolLookupByName(ws.n("images")).storageVolLookupByName(ws.n("win7-root"))
    assert base.path() in vol.XMLDesc(0)  # a clone of the unmanaged base
    assert "Volume/" + ws.n("win7-base") not in ws.inventory()  # still not ours
    dom = ws.domain(ws.n("win7"))
    assert not dom.isActive() and dom.autostart() == 1
    xml = dom.XMLDesc(0)
    assert "<source network='default'" in xml and "port='5902'" in xml
    assert "keymap='en-us'" in xml and "offset='localtime'" in xml


def test_spec_example_cloud_init_seed_is_attached(ws: Workspace) -> None:
    """SPEC §2: cloudInit -> "a NoCloud seed disk is built and attached"."""
    first, second = _spec_examples(ws)
    machine = second[1]
    machine["spec"]["disks"] = machine["spec"]["disks"][1:]  # only the file disk
    machine["spec"]["interfaces"] = machine["spec"]["interfaces"][1:]
    # without a volume disk to take the pool from, the seed's pool is named
    machine["spec"]["cloudInit"]["pool"] = ws.n("images")
    ws.write("pool.yaml", first[0])
    ws.write("vm.yaml", machine)
    ws.converge()
    assert_settled(ws)
    xml = ws.domain(ws.n("win7")).XMLDesc(0)
    disks = xml.count("<disk ")
    assert disks == 3, f"expected the file disk, the ISO and a cidata seed:\n{xml}"
    assert f"volume='{ws.n('win7')}-cidata'" in xml, xml


def test_one_failing_object_does_not_stop_the_others(ws: Workspace) -> None:
    """SPEC §3 failure isolation: a VM whose disk file is missing is refused by preflight
    (a problem at its file:line:col, exit 1) and not touched; the network and the other
    VM still converge. (A failing libvirt call: test_daemon's retry with backoff.)"""
    ws.write("net.yaml", ws.isolated_network(ws.n("net")))
    missing = ws.hostdir / "missing.img"
    ws.write("bad.yaml", vm(ws.n("bad"), disks=[{"file": str(missing), "format": "raw"}]))
    ws.write("good.yaml", vm(ws.n("good"), interfaces=[{"network": ws.n("net")}]))
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"spec.disks[0].file: {missing} does not exist" in done.stderr, done.stderr
    assert ws.domain(ws.n("good")).isActive()
    assert ws.conn.networkLookupByName(ws.n("net")).isActive()
    assert ws.n("bad") not in [d.name() for d in ws.conn.listAllDomains(0)]
    plan = ws.plan()
    assert [a.name for a in plan.actions if a.changes_anything] == []
    ws.file("missing.img")
    ws.converge()
    assert_settled(ws)
