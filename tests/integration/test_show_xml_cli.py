"""`reconciler plan/apply --show-xml` against libvirtd: the XML a define sends, whole
for a new object and as a diff against libvirt's current definition for an update."""

from __future__ import annotations

from tests.integration.engine_support import Workspace, ws_fixture  # noqa: F401


def test_show_xml_prints_new_definitions_and_diffs_updates(ws: Workspace) -> None:
    net = ws.n("net")
    ws.write("net.yaml", ws.isolated_network(net))
    done = ws.cli("plan", str(ws.directory), "--show-xml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"# Network/{net}: define-network\n<network>\n  <name>{net}</name>" in done.stdout
    # the ownership record: plan has no instance id to write yet (it never makes one)
    assert f"<name>{net}</name>\n  <metadata>\n    <rcn:owner xmlns:rcn=" in done.stdout

    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    ws.write("net.yaml", ws.isolated_network(net, mtu=9000))
    done = ws.cli("apply", str(ws.directory), "--yes", "--show-xml")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert f"# Network/{net}: define-network (changes to the current definition)" in out
    assert f"--- Network/{net} (current)\n+++ Network/{net} (planned)\n" in out
    assert '+  <mtu size="9000"/>' in out
    assert "    mtu: (none) -> 9000" in out  # the plan above the XML
    done = ws.cli("plan", str(ws.directory), "--show-xml")
    assert done.returncode == 0 and "define-network" not in done.stdout, done.stdout
