"""A live change the guest ignores, on a VM with ``updatePolicy: restart``: the restart
the policy asks for happens in the same apply, which settles and exits 0 (it used to
report the pending restart as 'does not settle', a bug, and exit 1)."""

from __future__ import annotations

from tests.integration.engine_support import Workspace, vm, ws_fixture  # noqa: F401

MAC1, MAC2 = "52:54:00:c1:00:01", "52:54:00:c1:00:02"


def test_an_ignored_unplug_under_restart_policy_is_restarted_in_the_same_apply(
    ws: Workspace,
) -> None:
    net = ws.n("net")
    name = ws.n("vm")
    ws.write("net.yaml", ws.isolated_network(net))
    ws.write("vm.yaml", vm(name, updatePolicy="restart",
                           interfaces=[{"network": net, "mac": MAC1}]))  # fmt: skip
    ws.converge()
    before = ws.domain(name).ID()
    # no OS in the guest: the NIC's unplug is never released
    ws.write("vm.yaml", vm(name, updatePolicy="restart",
                           interfaces=[{"network": net, "mac": MAC2}]))  # fmt: skip
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "does not settle" not in done.stdout, done.stdout
    dom = ws.domain(name)
    assert dom.isActive() and dom.ID() != before, "restarted by the same apply"
    assert MAC2 in dom.XMLDesc(0) and MAC1 not in dom.XMLDesc(0)
    again = ws.cli("plan", str(ws.directory))
    assert again.returncode == 0, again.stdout + again.stderr
