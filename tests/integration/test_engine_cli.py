"""`reconciler plan` / `apply` as a user runs them: exit codes, JSON shape, summary line."""

from __future__ import annotations

import re

from tests.integration.engine_support import Workspace, pool, vm, ws_fixture  # noqa: F401

SUMMARY = re.compile(
    r"^Plan: (\d+) to create, (\d+) to update(?: \((\d+) needs? restart\))?, (\d+) to delete\."
    r"(?: .*\.)?$",
    re.MULTILINE,
)


def test_plan_exit_codes_and_summary(ws: Workspace) -> None:
    net = ws.n("net")
    ws.write("net.yaml", ws.isolated_network(net))
    ws.write("pool.yaml", pool(ws.n("pool"), ws.subdir("pool")))
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 2, done.stdout + done.stderr
    m = SUMMARY.search(done.stdout)
    assert m and m.groups() == ("2", "0", None, "0"), done.stdout
    assert f"+ Network {net}: create" in done.stdout
    assert "\x1b[" not in done.stdout  # no colour when not a TTY

    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert SUMMARY.search(done.stdout), done.stdout
    assert "Apply complete: 2 succeeded, 0 failed." in done.stdout

    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("No changes.")

    (ws.directory / "bad.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: Network\nmetadata: {name: x}\nspec: {mtu: big}\n"
    )
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"bad\.yaml:4:\d+: spec\.mtu", done.stderr), done.stderr


def test_plan_json_shape(ws: Workspace) -> None:
    net = ws.n("net")
    ws.write("net.yaml", ws.isolated_network(net, autostart=False))
    code, data = ws.cli_json("plan", str(ws.directory))
    assert code == 2
    assert data["version"] == 2 and data["changes"] is True
    assert SUMMARY.match(data["summary"]), data["summary"]
    assert data["counts"]["create"] == 1 and data["problems"] == []
    [a] = data["actions"]
    assert a["kind"] == "Network" and a["name"] == net and a["op"] == "create"
    assert a["source"]["file"].endswith("net.yaml") and a["source"]["line"] == 1
    assert [s["verb"] for s in a["steps"]] == ["define-network", "start-network"]
    assert all("xml" not in s["args"] for s in a["steps"])
    assert set(a) >= {"changes", "restartPending", "reason"}

    code, data = ws.cli_json("apply", str(ws.directory), "--yes")
    assert code == 0
    assert [r["outcome"] for r in data["results"]] == ["ok"] and data["unsettled"] == []

    ws.virsh("net-autostart", net)
    code, data = ws.cli_json("plan", str(ws.directory))
    assert code == 2
    [a] = [x for x in data["actions"] if x["op"] != "noop"]
    assert a["op"] == "update-live"
    assert a["changes"] == [{"path": "autostart", "old": True, "new": False, "live": True,
                             "origin": None}]  # fmt: skip
    assert (a["devices"], a["pendingDevices"], a["disruptions"]) == ([], [], [])


def test_apply_without_yes_and_no_tty_refuses(ws: Workspace) -> None:
    net = ws.n("net")
    ws.write("net.yaml", ws.isolated_network(net))
    done = ws.cli("apply", str(ws.directory))  # stdin is /dev/null: not a TTY
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--yes" in done.stderr
    assert net not in {n.name() for n in ws.conn.listAllNetworks(0)}
    assert not ws.inventory()
    ws.converge()
    done = ws.cli("apply", str(ws.directory))  # nothing to do: no question, no refusal
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No changes." in done.stdout


def test_disk_paths_outside_the_allowed_roots_are_refused(ws: Workspace) -> None:
    """SPEC §5: the engine never follows disk paths outside allowed roots (symlinks too)."""
    outside = ws.root / "outside.img"  # the test's tmp dir: not an allowed root
    outside.write_bytes(bytes(1024 * 1024))
    link = ws.hostdir / "link.img"  # inside an allowed root, pointing out of it
    link.symlink_to(outside)
    ws.write("vm.yaml", *(vm(ws.n(name), state="stopped",
                             disks=[{"file": str(path), "format": "raw"}])
                          for name, path in (("direct", outside), ("symlink", link))))  # fmt: skip
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 1, done.stdout + done.stderr
    for path in (outside, link):
        assert str(path) in done.stdout, done.stdout
    assert "allowed" in done.stdout
    assert ws.cli("apply", str(ws.directory), "--yes").returncode == 1
    defined = {d.name() for d in ws.conn.listAllDomains(0)}
    assert ws.n("direct") not in defined and ws.n("symlink") not in defined


def test_plan_creates_no_state_directory(ws: Workspace) -> None:
    """plan writes nothing: a state directory that does not exist (nor its parents) is
    not made; the plan says it has no inventory, and apply makes it."""
    ws.write("pool.yaml", pool(ws.n("pool"), ws.subdir("pool")))
    missing = ws.root / "nonexistent" / "state"
    done = ws.cli("plan", str(ws.directory), "--state-dir", str(missing), state=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"+ StoragePool {ws.n('pool')}: create" in done.stdout
    assert (f"note: {missing}: no state directory yet (plan creates nothing; the first apply "
            "makes it)") in done.stderr, done.stderr  # fmt: skip
    assert not missing.parent.exists()
    done = ws.cli("apply", str(ws.directory), "--yes", "--state-dir", str(missing), state=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (missing / "inventory.json").exists() and (missing / "instance-id").exists()
