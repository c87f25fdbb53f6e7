"""network.patch and pool.patch: a redefinition is the current definition, patched.

The network below is what ``virsh net-dumpxml --inactive`` shows of one made by
hand with everything a manifest cannot say: an IPv6 ``<ip>`` with a DHCPv6 range
(listed *first*, so "the first <ip>" is the wrong one), DNS forwarder, TXT and
SRV records, a route, a portgroup, bandwidth, TFTP/BOOTP, ``localOnly`` and
another tool's metadata. The pool has a ``<source>`` and target permissions.
"""

from __future__ import annotations

import dataclasses

from lxml import etree

from reconciler.diff import diff
from reconciler.model import Dhcp, DhcpHost, DnsHost, Ipv4, NetworkSpec, StoragePoolSpec
from reconciler.xml import network, pool
from reconciler.xml._fields import ensure, find, findall, parse
from tests.unit.conftest import WriteFiles

from .xml_support import manifest

OTHER = "http://example.org/xmlns/other/1"
OWNER = network.NetworkOwnership(instance="i-1", manifest="/m/lab6.yaml", digest="sha256:1")

HANDMADE = f"""<network>
  <name>lab6</name>
  <uuid>6f0c1a52-2a7e-4d0e-9c55-0123456789ab</uuid>
  <metadata>
    <other:tag xmlns:other="{OTHER}"><other:x>1</other:x></other:tag>
  </metadata>
  <bridge name='virbr77' stp='on' delay='0'/>
  <mac address='52:54:00:0a:0b:0c'/>
  <domain name='lab.test' localOnly='yes'/>
  <dns>
    <forwarder addr='192.0.2.53'/>
    <txt name='example' value='example value'/>
    <srv service='name' protocol='tcp' domain='lab.test' target='.' port='1024'
         priority='10' weight='10'/>
    <host ip='10.77.0.10'>
      <hostname>web</hostname>
    </host>
  </dns>
  <bandwidth>
    <inbound average='1000' peak='5000' burst='1024'/>
  </bandwidth>
  <portgroup name='engineering' default='yes'>
    <bandwidth>
      <outbound average='500'/>
    </bandwidth>
  </portgroup>
  <ip family='ipv6' address='fd00:77::1' prefix='64'>
    <dhcp>
      <range start='fd00:77::100' end='fd00:77::1ff'/>
    </dhcp>
  </ip>
  <ip address='10.77.0.1' netmask='255.255.255.0'>
    <tftp root='/srv/tftp'/>
    <dhcp>
      <range start='10.77.0.100' end='10.77.0.200'/>
      <host mac='52:54:00:00:77:01' name='web' ip='10.77.0.10'/>
      <bootp file='pxelinux.0'/>
    </dhcp>
  </ip>
  <route address='192.0.2.0' prefix='24' gateway='10.77.0.2'/>
</network>
"""

LAB6 = NetworkSpec(
    mode="isolated",
    domain="lab.test",
    ipv4=Ipv4(address="10.77.0.1", prefix=24, dhcp=Dhcp(
        start="10.77.0.100", end="10.77.0.200",
        hosts=(DhcpHost(mac="52:54:00:00:77:01", ip="10.77.0.10", name="web"),))),
    dns_hosts=(DnsHost(ip="10.77.0.10", names=("web",)),),
)  # fmt: skip


def _canon(xml: str | etree._Element) -> bytes:
    """A document as data: whitespace between elements and attribute order don't count."""
    text = xml if isinstance(xml, str) else etree.tostring(xml, encoding="unicode")
    root = etree.fromstring(text.encode(), etree.XMLParser(remove_blank_text=True))
    return etree.tostring(root, method="c14n")


def _without_record(xml: str) -> etree._Element:
    root = parse(xml)
    for owner in root.findall(f"metadata/{{{network.OWNER_NAMESPACE}}}owner"):
        owner.getparent().remove(owner)  # type: ignore[union-attr]
    return root


def _edited(xml: str, path: str, attr: str, value: str) -> etree._Element:
    root = parse(xml)
    element = find(root, path)
    assert element is not None, path
    element.set(attr, value)
    return root


def test_ipv4_fields_read_only_the_ipv4_ip() -> None:
    """An IPv6 <ip> with a DHCP range was read as the IPv4 one (export failed, the plan
    named the wrong field): ipv4.* read the <ip> without family or with family='ipv4'."""
    seen = network.observe(HANDMADE)
    assert seen["ipv4.address"] == "10.77.0.1" and seen["ipv4.prefix"] == 24
    assert (seen["ipv4.dhcp.start"], seen["ipv4.dhcp.end"]) == ("10.77.0.100", "10.77.0.200")
    assert seen["ipv4.dhcp.hosts[52:54:00:00:77:01].ip"] == "10.77.0.10"
    assert not diff(network.project(LAB6), network.observe(HANDMADE, bridge_declared=False))
    only6 = parse(HANDMADE)
    for ip in findall(only6, network.IPV4):
        only6.remove(ip)
    seen6 = network.observe(etree.tostring(only6, encoding="unicode"))
    assert all(seen6[k] is None for k in ("ipv4.address", "ipv4.prefix", "ipv4.dhcp.start"))
    explicit = HANDMADE.replace("<ip address='10.77.0.1'", "<ip family='ipv4' address='10.77.0.1'")
    assert network.observe(explicit)["ipv4.dhcp.start"] == "10.77.0.100"


def test_adoption_keeps_everything_but_adds_our_record() -> None:
    patched = network.patch(HANDMADE, LAB6, ownership=OWNER)
    assert _canon(_without_record(patched)) == _canon(HANDMADE)
    record = network.read_ownership(patched)
    assert record is not None and record.instance == "i-1"
    # other tools' metadata stays first, where it was; ours is added after it
    metadata = parse(patched).find("metadata")
    assert metadata is not None
    assert [etree.QName(e).localname for e in metadata] == ["tag", "owner"]


def test_a_changed_field_changes_only_that() -> None:
    end = dataclasses.replace(LAB6, ipv4=dataclasses.replace(
        LAB6.ipv4, dhcp=dataclasses.replace(LAB6.ipv4.dhcp, end="10.77.0.150")))  # type: ignore[union-attr,arg-type]  # fmt: skip
    patched = network.patch(HANDMADE, end, ownership=OWNER)
    want = _edited(HANDMADE, f"{network.IPV4}/dhcp/range", "end", "10.77.0.150")
    assert _canon(_without_record(patched)) == _canon(want)
    renamed = network.patch(HANDMADE, dataclasses.replace(LAB6, domain="lab2.test"))
    assert _canon(renamed) == _canon(_edited(HANDMADE, "domain", "name", "lab2.test"))
    prefix = dataclasses.replace(LAB6, ipv4=dataclasses.replace(LAB6.ipv4, prefix=16))  # type: ignore[arg-type]
    ip = find(parse(network.patch(HANDMADE, prefix)), network.IPV4)
    assert ip is not None and ip.get("prefix") == "16" and ip.get("netmask") is None
    assert ip.find("tftp") is not None and ip.find("dhcp/bootp") is not None


def test_declared_sets_are_made_exact_and_the_rest_kept() -> None:
    dhcp = dataclasses.replace(LAB6.ipv4.dhcp, hosts=(  # type: ignore[union-attr]
        DhcpHost(mac="52:54:00:00:77:02", ip="10.77.0.11"),))
    spec = dataclasses.replace(
        LAB6, ipv4=dataclasses.replace(LAB6.ipv4, dhcp=dhcp),  # type: ignore[arg-type]
        dns_hosts=(DnsHost(ip="10.77.0.11", names=("db",)),),
    )
    root = parse(network.patch(HANDMADE, spec))
    hosts = root.findall("ip/dhcp/host")
    assert [(h.get("mac"), h.get("ip")) for h in hosts] == [("52:54:00:00:77:02", "10.77.0.11")]
    assert [h.get("ip") for h in root.findall("dns/host")] == ["10.77.0.11"]
    assert root.find("dns/forwarder") is not None and root.find("dns/txt") is not None
    assert root.find("dns/srv") is not None
    assert root.find("ip/dhcp/bootp") is not None
    six = root.find("ip[@family='ipv6']")
    assert six is not None and six.find("dhcp/range") is not None and six.find("dhcp/host") is None
    assert not diff(network.project(spec), network.observe(etree.tostring(root, encoding="unicode"),
                                                           bridge_declared=False))  # fmt: skip


def test_what_the_manifest_leaves_out_of_ipv4_goes_and_ipv6_stays() -> None:
    no_dhcp = dataclasses.replace(LAB6, ipv4=dataclasses.replace(LAB6.ipv4, dhcp=None))  # type: ignore[arg-type]
    ip = find(parse(network.patch(HANDMADE, no_dhcp)), network.IPV4)
    assert ip is not None and ip.find("dhcp") is None and ip.find("tftp") is not None
    root = parse(network.patch(HANDMADE, dataclasses.replace(LAB6, ipv4=None, dns_hosts=())))
    assert [ip.get("family") for ip in root.findall("ip")] == ["ipv6"]
    assert root.find("route") is not None  # kept: libvirt then says if it can reach it
    without_domain = parse(network.patch(HANDMADE, dataclasses.replace(LAB6, domain=None)))
    assert without_domain.find("domain") is None  # localOnly means nothing alone


def test_a_bridge_the_manifest_does_not_name_stays() -> None:
    root = parse(network.patch(HANDMADE, LAB6))
    bridge = root.find("bridge")
    assert bridge is not None and bridge.get("name") == "virbr77"
    named = parse(network.patch(HANDMADE, dataclasses.replace(LAB6, bridge="virbr78")))
    bridge = named.find("bridge")
    assert bridge is not None and (bridge.get("name"), bridge.get("stp")) == ("virbr78", "on")


def test_the_record_is_replaced_where_it_stands() -> None:
    first = network.patch(HANDMADE, LAB6, ownership=OWNER)
    moved = first.replace("</rcn:owner>", "</rcn:owner><other:later xmlns:other='urn:x'/>", 1)
    second = network.patch(moved, LAB6, ownership=dataclasses.replace(OWNER, digest="sha256:2"))
    metadata = parse(second).find("metadata")
    assert metadata is not None
    assert [etree.QName(e).localname for e in metadata] == ["tag", "owner", "later"]
    assert len(metadata.findall(f"{{{network.OWNER_NAMESPACE}}}owner")) == 1
    assert network.read_ownership(second) == dataclasses.replace(OWNER, digest="sha256:2")


def test_patch_never_changes_the_callers_tree() -> None:
    root = parse(HANDMADE)
    before = _canon(root)
    network.patch(root, dataclasses.replace(LAB6, ipv4=None))
    assert _canon(root) == before


def test_dhcp_hosts_go_to_the_ipv4_ip_by_index() -> None:
    """libvirt's -1 picks the first <ip> with DHCP: here the IPv6 one."""
    assert network.dhcp_parent_index(HANDMADE) == 1
    assert network.dhcp_parent_index("<network><name>n</name></network>") == -1


def test_created_networks_still_render() -> None:
    text = network.render("lab6", LAB6)
    assert "portgroup" not in text and "family" not in text


# --- the defaulted predicate of field paths ---------------------------------------


def test_a_defaulted_predicate_matches_absent_or_equal_and_is_not_written() -> None:
    root = parse("<n><ip family='ipv6' a='6'/><ip a='4'/><ip family='ipv4' a='4b'/></n>")
    path = "ip[@family?='ipv4']"
    assert [e.get("a") for e in findall(root, path)] == ["4", "4b"]
    found = find(root, path)
    assert found is not None and found.get("a") == "4"
    empty = parse("<n><ip family='ipv6'/></n>")
    made = ensure(empty, path + "/dhcp")
    assert made.getparent() is not None and made.getparent().get("family") is None  # type: ignore[union-attr]
    assert len(empty.findall("ip")) == 2


# --- pools ---------------------------------------------------------------------------

POOL = """<pool type='dir'>
  <name>images2</name>
  <uuid>0a1b2c3d-0000-4000-8000-0123456789ab</uuid>
  <capacity unit='bytes'>0</capacity>
  <allocation unit='bytes'>0</allocation>
  <available unit='bytes'>0</available>
  <source>
  </source>
  <target>
    <path>/srv/images2</path>
    <permissions>
      <mode>0770</mode>
      <owner>107</owner>
      <group>107</group>
      <label>system_u:object_r:virt_image_t:s0</label>
    </permissions>
  </target>
</pool>
"""


def test_pool_patch_keeps_permissions_and_changes_only_the_path() -> None:
    spec = manifest("""
        apiVersion: reconciler/v1
        kind: StoragePool
        metadata: {name: images2}
        spec: {type: dir, path: /srv/images2}
    """).spec
    assert isinstance(spec, StoragePoolSpec)
    assert _canon(pool.patch(POOL, spec)) == _canon(POOL)
    moved = pool.patch(POOL, dataclasses.replace(spec, path="/srv/other//"))
    want = parse(POOL)
    path = want.find("target/path")
    assert path is not None
    path.text = "/srv/other"
    assert _canon(moved) == _canon(want)


# --- the planner: a redefine is the patch; live DHCP hosts go to the IPv4 <ip> ----------


def test_the_planner_redefines_a_network_by_patching_it(write: WriteFiles) -> None:
    from reconciler.model import Kind
    from reconciler.plan import Op
    from tests.unit.test_planner import action, converged, edit, load, plan_for

    result = load(write)
    observed = converged(result)
    live = observed.networks["lab"]
    # libvirt's network as someone left it: an IPv6 <ip> with DHCPv6 first, a portgroup
    six = ("<ip family='ipv6' address='fd00:1::1' prefix='64'><dhcp>"
           "<range start='fd00:1::100' end='fd00:1::1ff'/></dhcp></ip>")  # fmt: skip
    xml = live.config_xml.replace("<ip ", six + "<ip ", 1).replace(
        "</network>", "<portgroup name='eng'/></network>")
    observed = dataclasses.replace(observed, networks={"lab": dataclasses.replace(
        live, config_xml=xml, live_xml=xml)})  # fmt: skip
    assert not action(plan_for(result, observed), Kind.NETWORK, "lab").changes

    spec = next(m.spec for m in result.manifests if m.name == "lab")
    assert isinstance(spec, NetworkSpec) and spec.ipv4 is not None and spec.ipv4.dhcp
    dhcp = dataclasses.replace(spec.ipv4.dhcp, end="10.254.0.150", hosts=(
        *spec.ipv4.dhcp.hosts, DhcpHost(mac="52:54:00:00:00:02", ip="10.254.0.11")))
    plan = plan_for(edit(result, "lab", ipv4=dataclasses.replace(spec.ipv4, dhcp=dhcp)),
                    observed)  # fmt: skip
    a = action(plan, Kind.NETWORK, "lab")
    assert a.op is Op.UPDATE_RESTART
    [define] = [s for s in a.steps if s.verb == "define-network"]
    root = parse(define.args["xml"])
    assert root.find("ip[@family='ipv6']/dhcp/range") is not None
    assert root.find("portgroup") is not None
    [update] = [s for s in a.steps if s.verb == "net-update"]
    assert (update.args["command"], update.args["index"]) == ("add", 1)  # not libvirt's -1
    assert "index" not in update.shown_args()
