"""Start failures explained, against the real libvirtd (issue 9).

A VM that libvirt refuses to start is reported with its manifest position, the
field most likely responsible and a hint, in the apply output, the JSON results
and the log; the next plan shows the cause on the VM's ``state`` change; once
the cause is fixed, apply starts it and the cause is gone. Domains use
``type: qemu`` (the CI fleet's CPUs vary) and every object carries the test's
prefix.
"""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.engine_support import Workspace, vm, ws_fixture  # noqa: F401

STATE_LINE = re.compile(r"^    state: stopped -> running.*\n      last start failed at (.*)$",
                        re.MULTILINE)  # fmt: skip


def closed_image(ws: Workspace) -> tuple[Path, Path]:
    """A raw image in a directory of ``hostdir`` that only root may enter (0700)."""
    locked = ws.hostdir / "locked"
    locked.mkdir()
    image = locked / "data.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "1M"], check=True)
    image.chmod(0o644)
    locked.chmod(0o700)
    return locked, image


def state_change(data: dict[str, Any], name: str) -> dict[str, Any]:
    [a] = [x for x in data["actions"] if x["name"] == name]
    [change] = [c for c in a["changes"] if c["path"] == "state"]
    return change


def free_port() -> int:
    """A TCP port no program listens on, in a range libvirt's own autoport does not use."""
    for _ in range(100):
        port = random.randint(6100, 6899)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def test_disk_in_a_closed_directory_is_refused_before_anything_starts(ws: Workspace) -> None:
    """Preflight sees a directory QEMU's user cannot enter before apply tries a start."""
    locked, image = closed_image(ws)
    name = ws.n("perm")
    ws.write("vm.yaml", vm(name, type="qemu", disks=[{"file": str(image), "format": "raw"}]))
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"vm\.yaml:\d+:\d+: spec\.disks\[0\]\.file: QEMU runs as libvirt-qemu and "
                     rf"cannot reach {re.escape(str(image))}", done.stderr), done.stderr
    assert name not in ws.virsh("list", "--all", "--name")
    locked.chmod(0o755)
    ws.converge()
    assert ws.domain(name).isActive()


def test_start_refused_is_explained_remembered_and_cleared(ws: Workspace) -> None:
    """A cause only the start can show (a program outside libvirt holds the fixed display
    port): the refusal is placed at the field with a hint, kept for the next plan, and
    gone once the VM runs."""
    port, name = free_port(), ws.n("vnc")
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        graphics = {"type": "vnc", "port": port, "listen": "127.0.0.1"}
        ws.write("vm.yaml", vm(name, type="qemu", graphics=graphics))
        done = ws.cli("apply", str(ws.directory), "--yes")
        assert done.returncode == 1, done.stdout + done.stderr
        line = re.search(r"^ +vm\.yaml:\d+:\d+: spec\.graphics\.port: start-domain: .*$",
                         done.stdout.replace(str(ws.directory) + "/", ""), re.MULTILINE)
        assert line, done.stdout
        assert str(port) in line.group(0) and "graphics.port: auto" in line.group(0)
        assert "Apply finished with errors" in done.stdout
        logged = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
        [failed] = [x for x in logged if x.get("event") == "apply.action"
                    and x.get("outcome") == "failed"]  # fmt: skip
        assert failed["name"] == name and "graphics.port: auto" in failed["hint"]
        # defined, not running; the inventory keeps the cause
        assert not ws.domain(name).isActive()
        record = ws.inventory()[f"VirtualMachine/{name}"]["startFailure"]
        assert record["field"] == "spec.graphics.port"

        # a second plan shows the VM with that cause on its state change, text and JSON
        done = ws.cli("plan", str(ws.directory))
        assert done.returncode == 2, done.stdout + done.stderr
        shown = STATE_LINE.search(done.stdout)
        assert shown, done.stdout
        assert "spec.graphics.port" in shown.group(1)
        code, data = ws.cli_json("plan", str(ws.directory))
        assert code == 2
        change = state_change(data, name)
        assert change["new"] == "running" and change["note"].startswith("last start failed at ")
    finally:
        holder.close()

    # fixed: apply starts it, the cause is gone from inventory and plan
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ws.domain(name).isActive()
    assert "startFailure" not in ws.inventory()[f"VirtualMachine/{name}"]
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 0 and "last start failed" not in done.stdout, done.stdout


def test_vm_on_an_inactive_network_gets_the_net_start_hint(ws: Workspace) -> None:
    net, name = ws.n("net"), ws.n("vm")
    ws.write("net.yaml", ws.isolated_network(net, state="inactive"))
    ws.write("vm.yaml", vm(name, type="qemu", interfaces=[{"network": net}]))
    code, data = ws.cli_json("apply", str(ws.directory), "--yes")
    assert code == 1
    [result] = [r for r in data["results"] if r["name"] == name]
    assert result["outcome"] == "failed"
    assert re.match(r".*vm\.yaml:\d+:\d+: spec\.interfaces\[0\]\.network: start-domain: ",
                    result["error"]), result["error"]  # fmt: skip
    assert f"network '{net}' is not active" in result["error"]
    assert f"virsh net-start {net}" in result["hint"] and "state: active" in result["hint"]

    code, data = ws.cli_json("plan", str(ws.directory))
    assert code == 2 and f"virsh net-start {net}" in state_change(data, name)["note"]

    ws.write("net.yaml", ws.isolated_network(net))  # state: active
    ws.converge()
    assert ws.domain(name).isActive()
    code, data = ws.cli_json("plan", str(ws.directory))
    assert code == 0, data
    assert "startFailure" not in ws.inventory()[f"VirtualMachine/{name}"]


def test_fixed_display_port_held_by_another_domain_is_refused_at_plan(ws: Workspace) -> None:
    # The manifests' own validation refuses one port for two VMs, so the other
    # domain is made directly in libvirt (with the test's prefix); preflight names it.
    port, other, name = free_port(), ws.n("holder"), ws.n("vnc")
    ws.conn.defineXML(
        f"<domain type='qemu'><name>{other}</name><memory unit='MiB'>64</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        f"<graphics type='vnc' port='{port}' autoport='no' listen='127.0.0.1'/>"
        "</devices></domain>"
    ).create()
    graphics = {"type": "vnc", "port": port, "listen": "127.0.0.1"}
    ws.write("vm.yaml", vm(name, type="qemu", graphics=graphics))

    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(rf"vm\.yaml:\d+:\d+: spec\.graphics\.port: .*{port}.*{other}", done.stderr), \
        done.stderr  # fmt: skip
    assert name not in ws.virsh("list", "--all", "--name")

    ws.write("vm.yaml", vm(name, type="qemu", graphics={**graphics, "port": "auto"}))
    ws.converge()
    assert ws.domain(name).isActive()
