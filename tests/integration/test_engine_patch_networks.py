"""A network or pool redefine keeps what the manifest does not say, against libvirtd.

(Since issue 13 the IPv6 ``<ip>``, DNS forwarder and TXT, route and portgroup below are
typed and exported; what stays kept is ``localOnly`` and the other tool's metadata.)

A hand-made isolated network (no ``<forward>``) with what a manifest cannot say:
an IPv6 ``<ip>`` with a DHCPv6 range, listed before the IPv4 one (libvirt's
"first <ip> with DHCP" is then the IPv6 one), a DNS forwarder and TXT record, an
IPv6 route (a ULA prefix: nothing leaves the host), a portgroup and another
tool's metadata. export -> a plan of only the adoption -> apply leaves
``net-dumpxml --inactive`` as it was apart from our record; a changed DHCP range
or domain name then changes only that; a DHCP host added to the running network
goes live into the IPv4 ``<ip>``. A hand-made dir pool with target permissions
is adopted unchanged, and a changed path changes only the path.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from lxml import etree

from reconciler.plan import Op
from reconciler.report import render_plan
from reconciler.xml import network as network_xml
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    action,
    assert_settled,
    ws_fixture,
)

OTHER = "https://example.org/xmlns/other-tool/1"


def _canonical(xml: str) -> list[str]:
    """libvirt's dump without our record, one line per element, indented alike."""
    root = etree.fromstring(xml.encode(), etree.XMLParser(remove_blank_text=True))
    for owner in root.findall(f"metadata/{{{network_xml.OWNER_NAMESPACE}}}owner"):
        parent = owner.getparent()
        assert parent is not None
        parent.remove(owner)
    etree.indent(root)
    return etree.tostring(root, encoding="unicode").splitlines()


def _differences(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(_canonical(before), _canonical(after),
                                                  lineterm="", n=0)
            if line[:1] in "+-" and line[:3] not in ("+++", "---")]  # fmt: skip


def _adopt(ws: Workspace, ref: str, kind: str, name: str) -> tuple[Path, str]:
    """export -> a plan of only the ownership change -> apply; the manifest and the
    export's kept list (stderr)."""
    out = ws.root / f"export-{name}"
    done = ws.cli("export", ref, "--output-dir", str(out), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    [path] = list(out.rglob("*.yaml"))
    target = ws.directory / path.name
    target.write_text(path.read_text())
    plan = ws.plan()
    a = action(plan, kind, name)
    assert [(c.path, c.old, c.new) for c in a.changes] == [
        ("ownership", "unmanaged", "managed")], render_plan(plan, verbose=True)  # fmt: skip
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert action(ws.plan(), kind, name).op is Op.NOOP
    return target, path.read_text()


def _edit(manifest: Path, change: Any) -> None:
    doc: dict[str, Any] = yaml.safe_load(manifest.read_text())
    change(doc["spec"])
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))


def _change(ws: Workspace, manifest: Path, kind: str, name: str, change: Any,
            paths: list[str], *, restart: bool = False) -> list[str]:  # fmt: skip
    """Edit the manifest, check that the plan changes only ``paths``, apply (``restart``:
    then restart the network, which a change of its definition waits for), check it
    settled; the lines of libvirt's inactive dump that changed."""
    dump = "net-dumpxml" if kind == "Network" else "pool-dumpxml"
    before = ws.virsh(dump, "--inactive", name)
    _edit(manifest, change)
    plan = ws.plan()
    assert [c.path for c in action(plan, kind, name).changes] == paths, \
        render_plan(plan, verbose=True)  # fmt: skip
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    if restart:
        ws.virsh("net-destroy", name)
        ws.virsh("net-start", name)
    assert_settled(ws)
    return _differences(before, ws.virsh(dump, "--inactive", name))


def test_a_hand_made_network_keeps_what_its_manifest_cannot_say(ws: Workspace) -> None:
    name = ws.n("net6")
    subnet = ws.subnet()
    v4 = list(subnet.hosts())
    six = f"fd54:{subnet.network_address.packed[2]:x}"  # a ULA /64 per run's subnet
    xml = f"""<network>
  <name>{name}</name>
  <metadata>
    <other:tag xmlns:other="{OTHER}"><other:x>kept</other:x></other:tag>
  </metadata>
  <bridge name='{ws.bridge_name()}'/>
  <domain name='{name}.test' localOnly='yes'/>
  <dns>
    <forwarder addr='127.0.0.53'/>
    <txt name='example' value='a txt record'/>
  </dns>
  <ip family='ipv6' address='{six}::1' prefix='64'>
    <dhcp><range start='{six}::100' end='{six}::1ff'/></dhcp>
  </ip>
  <ip address='{v4[0]}' prefix='24'>
    <dhcp><range start='{v4[99]}' end='{v4[199]}'/></dhcp>
  </ip>
  <route family='ipv6' address='{six}:1::' prefix='64' gateway='{six}::2'/>
  <portgroup name='engineering' default='yes'/>
</network>"""
    path = ws.root / "net.xml"
    path.write_text(xml)
    ws.virsh("net-define", str(path))
    ws.virsh("net-start", name)
    before = ws.virsh("net-dumpxml", "--inactive", name)

    manifest, exported = _adopt(ws, f"Network/{name}", "Network", name)
    # what issue 13 typed is exported as typed fields; what no field says (localOnly,
    # another tool's metadata) is in the escape hatch, and nothing is kept
    doc = yaml.safe_load(exported)
    assert "Kept as defined" not in exported, exported
    carried = " ".join(str(e) for e in doc["spec"]["xml"])
    for what in ("<other:tag", "'xpath': './domain/@localOnly', 'value': 'yes'"):
        assert what in carried, (what, doc["spec"]["xml"])
    for typed in ('family="ipv6"', "<forwarder", "<txt", "<portgroup", "<route"):
        assert typed not in carried, (typed, doc["spec"]["xml"])
    assert doc["spec"]["ipv4"]["dhcp"] == {"start": str(v4[99]), "end": str(v4[199])}
    assert doc["spec"]["ipv6"] == {"address": f"{six}::1", "prefix": 64,
                                   "dhcp": {"start": f"{six}::100", "end": f"{six}::1ff"}}
    assert doc["spec"]["dns"] == {"forwarders": [{"addr": "127.0.0.53"}],
                                  "txt": [{"name": "example", "value": "a txt record"}]}
    assert [g["name"] for g in doc["spec"]["portgroups"]] == ["engineering"]
    assert doc["spec"]["routes"][0]["gateway"] == f"{six}::2"
    adopted = ws.virsh("net-dumpxml", "--inactive", name)
    assert _differences(before, adopted) == []
    assert network_xml.read_ownership(adopted) is not None
    assert "other:tag" in adopted and "ns0:" not in adopted

    # the DHCP range: only that line changes (the network runs: restart pending)
    changed = _change(ws, manifest, "Network", name,
                      lambda spec: spec["ipv4"]["dhcp"].update(end=str(v4[149])),
                      ["ipv4.dhcp.end"], restart=True)  # fmt: skip
    assert changed == [f"-      <range start=\"{v4[99]}\" end=\"{v4[199]}\"/>",
                       f"+      <range start=\"{v4[99]}\" end=\"{v4[149]}\"/>"]  # fmt: skip

    # the domain name: only that attribute (localOnly stays)
    changed = _change(ws, manifest, "Network", name,
                      lambda spec: spec.update(domain=f"{name}.example"), ["domain"],
                      restart=True)  # fmt: skip
    assert changed == [f"-  <domain name=\"{name}.test\" localOnly=\"yes\"/>",
                       f"+  <domain name=\"{name}.example\" localOnly=\"yes\"/>"]  # fmt: skip

    # a DHCP host, live: net-update goes to the IPv4 <ip> (libvirt's default, the first
    # <ip> with DHCP, is the IPv6 one here and refuses a MAC), and the definition gets
    # only that line
    host = {"mac": "52:54:00:5e:00:01", "ip": str(v4[9])}
    changed = _change(ws, manifest, "Network", name,
                      lambda spec: spec["ipv4"]["dhcp"].update(hosts=[host]),
                      [f"ipv4.dhcp.hosts[{host['mac']}].ip"])  # fmt: skip
    assert changed == [f"+      <host mac=\"{host['mac']}\" ip=\"{host['ip']}\"/>"]
    running = etree.fromstring(ws.virsh("net-dumpxml", name).encode())
    assert [h.get("mac") for h in running.findall("ip/dhcp/host")] == [host["mac"]]
    assert running.find("ip[@family='ipv6']/dhcp/host") is None


def test_a_hand_made_pool_keeps_its_permissions(ws: Workspace) -> None:
    name = ws.n("pool")
    first, second = ws.subdir("pool-a"), ws.subdir("pool-b")
    xml = f"""<pool type='dir'>
  <name>{name}</name>
  <target>
    <path>{first}</path>
    <permissions><mode>0750</mode><owner>0</owner><group>0</group></permissions>
  </target>
</pool>"""
    path = ws.root / "pool.xml"
    path.write_text(xml)
    ws.virsh("pool-define", str(path))
    before = ws.virsh("pool-dumpxml", "--inactive", name)
    assert "<mode>0750</mode>" in before

    manifest, exported = _adopt(ws, f"StoragePool/{name}", "StoragePool", name)
    assert "#   target: permissions\n" in exported, exported
    adopted = ws.virsh("pool-dumpxml", "--inactive", name)
    assert _differences(before, adopted) == []

    changed = _change(ws, manifest, "StoragePool", name,
                      lambda spec: spec.update(path=str(second)), ["path"])  # fmt: skip
    assert changed == [f"-    <path>{first}</path>", f"+    <path>{second}</path>"]
