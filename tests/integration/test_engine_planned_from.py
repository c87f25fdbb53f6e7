"""A define carries the definition it was planned from, against the real libvirtd.

A redefine patches the persistent definition read at plan time. Whatever someone
defines between that read and the apply (``virsh define`` while ``apply`` waits at
its prompt, or in the milliseconds of a daemon pass) must not be overwritten by a
patch of the older definition: right before defining, the executor reads the
definition again, and if it is no longer the one planned from, nothing is defined,
the action fails with one message, and a new plan patches what libvirt has now.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from lxml import etree

from tests.integration.engine_support import (  # noqa: F401
    REPO,
    Workspace,
    action,
    assert_settled,
    describe,
    pool,
    vm,
    ws_fixture,
)

HAND_MADE = ("<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
             "<watchdog model='i6300esb' action='reset'/>")  # fmt: skip


def _inactive(ws: Workspace, name: str) -> str:
    return ws.virsh("dumpxml", "--inactive", "--security-info", name)


def _define_by_hand(ws: Workspace, name: str, *devices: str) -> None:
    """``virsh define`` the domain's persistent definition plus ``devices``."""
    root = etree.fromstring(_inactive(ws, name).encode())
    parent = root.find("devices")
    assert parent is not None
    for device in devices:
        parent.append(etree.fromstring(device))
    path = ws.root / f"{name}-by-hand.xml"
    path.write_bytes(etree.tostring(root))
    ws.virsh("define", str(path))


def _has_hand_made_devices(xml: str) -> bool:
    return "<rng model='virtio'>" in xml and "<watchdog model='i6300esb'" in xml


def _vcpus(xml: str) -> str:
    found = etree.fromstring(xml.encode()).findtext("vcpu")
    assert found is not None
    return found


def test_a_definition_changed_between_plan_and_apply_is_not_overwritten(ws: Workspace) -> None:
    name = ws.n("cas")
    ws.write("vm.yaml", vm(name, state="stopped"))
    ws.converge()
    ws.write("vm.yaml", vm(name, state="stopped", vcpus=2))

    r = ws.reconciler()
    load, observed, plan = r.plan()
    assert "vcpus" in {c.path for c in action(plan, "VirtualMachine", name).changes}
    _define_by_hand(ws, name, *HAND_MADE)  # while the plan waits for its "yes"
    result = r.apply(plan, observed, load)

    assert result.failed, describe(result)
    [failed] = [x for x in result.results if x.outcome == "failed"]
    assert failed.action.name == name and failed.failed_step == "define-domain"
    assert failed.error == (f"VM {name}'s definition changed since it was planned "
                            "(by someone else): nothing changed; plan again")  # fmt: skip
    now = _inactive(ws, name)
    assert _has_hand_made_devices(now) and _vcpus(now) == "1"  # nothing was defined

    # the next plan patches what libvirt has now: the change, and the hand-made devices kept
    ws.converge()
    now = _inactive(ws, name)
    assert _has_hand_made_devices(now) and _vcpus(now) == "2"
    assert_settled(ws)


def test_a_domain_undefined_between_plan_and_apply_is_not_defined_again(
    ws: Workspace,
) -> None:
    name = ws.n("gone")
    ws.write("vm.yaml", vm(name, state="stopped"))
    ws.converge()
    ws.write("vm.yaml", vm(name, state="stopped", vcpus=2))
    r = ws.reconciler()
    load, observed, plan = r.plan()
    ws.virsh("undefine", name)
    result = r.apply(plan, observed, load)
    [failed] = [x for x in result.results if x.outcome == "failed"]
    assert failed.error == (f"VM {name}'s definition was undefined since it was planned "
                            "(by someone else): nothing changed; plan again")  # fmt: skip
    assert ws.virsh("list", "--all", "--name").split().count(name) == 0


def test_an_unchanged_definition_is_defined_while_the_domain_runs(ws: Workspace) -> None:
    """A running domain whose definition nobody touched: the re-read matches, the
    define goes ahead (the check compares what the plan read, not the running XML)."""
    name = ws.n("run")
    ws.write("vm.yaml", vm(name))
    ws.converge()
    ws.write("vm.yaml", vm(name, vcpus=2))
    result = ws.apply()
    assert not result.failed, describe(result)
    assert _vcpus(_inactive(ws, name)) == "2"


def test_a_pool_redefine_checks_its_definition_but_not_its_sizes(ws: Workspace) -> None:
    name = ws.n("pool")
    first, second = ws.subdir("p1"), ws.subdir("p2")
    ws.write("pool.yaml", pool(name, first))
    ws.converge()

    ws.write("pool.yaml", pool(name, second))
    r = ws.reconciler()
    load, observed, plan = r.plan()
    assert action(plan, "StoragePool", name).changes_anything
    # libvirt's own figures move (allocation, available): not someone else's change
    (first / "filler.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    ws.virsh("pool-refresh", name)
    result = r.apply(plan, observed, load)
    assert not result.failed, describe(result)
    assert f"<path>{second}</path>" in ws.virsh("pool-dumpxml", "--inactive", name)

    # someone else's change between plan and apply: refused, kept
    ws.write("pool.yaml", pool(name, first))
    r = ws.reconciler()
    load, observed, plan = r.plan()
    xml = ws.virsh("pool-dumpxml", "--inactive", name).replace(
        "<mode>0755</mode>", "<mode>0750</mode>")  # fmt: skip
    assert "<mode>0750</mode>" in xml
    path = ws.root / "pool-by-hand.xml"
    path.write_text(xml)
    ws.virsh("pool-define", str(path))
    result = r.apply(plan, observed, load)
    [failed] = [x for x in result.results if x.outcome == "failed"]
    assert failed.error == (f"storage pool {name}'s definition changed since it was planned "
                            "(by someone else): nothing changed; plan again")  # fmt: skip
    now = ws.virsh("pool-dumpxml", "--inactive", name)
    assert "<mode>0750</mode>" in now and f"<path>{second}</path>" in now


def test_apply_at_its_prompt_exits_1_and_keeps_a_hand_made_change(ws: Workspace) -> None:
    """The tester's case, as a user meets it: ``apply`` without ``--yes`` waits at its
    prompt (a terminal on stdin), the domain is defined by hand meanwhile, then "y"."""
    name = ws.n("prompt")
    ws.write("vm.yaml", vm(name, state="stopped"))
    ws.converge()
    ws.write("vm.yaml", vm(name, state="stopped", vcpus=2))

    main, terminal = pty.openpty()
    env = {**os.environ, "NO_COLOR": "1"}
    command = [sys.executable, "-m", "reconciler", "apply", str(ws.directory),
               "--connect", ws.uri, "--config", str(ws.config),
               "--state-dir", str(ws.state_dir)]  # fmt: skip
    proc = subprocess.Popen(command, stdin=terminal, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, env=env)  # fmt: skip
    os.close(terminal)
    try:
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + 60
        while b"[y/N]" not in seen:
            assert time.monotonic() < deadline, seen.decode()
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                assert chunk, seen.decode()
                seen += chunk
        _define_by_hand(ws, name, *HAND_MADE)
        os.write(main, b"y\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    text = (seen + out).decode()
    assert proc.returncode == 1, text + err.decode()
    assert f"VM {name}'s definition changed since it was planned" in text + err.decode()
    now = _inactive(ws, name)
    assert _has_hand_made_devices(now) and _vcpus(now) == "1"
    # planned again: the vcpus change is still to do (not "No changes"), and applies
    assert "vcpus" in {c.path for c in action(ws.plan(), "VirtualMachine", name).changes}
    ws.converge()
    now = _inactive(ws, name)
    assert _has_hand_made_devices(now) and _vcpus(now) == "2"


def test_a_network_redefine_checks_its_definition(ws: Workspace) -> None:
    name = ws.n("net")
    manifest = ws.isolated_network(name)
    ws.write("net.yaml", manifest)
    ws.converge()
    manifest["spec"]["ipv4"]["dhcp"] = {"start": str(manifest["spec"]["ipv4"]["address"])
                                        .rsplit(".", 1)[0] + ".100",
                                        "end": str(manifest["spec"]["ipv4"]["address"])
                                        .rsplit(".", 1)[0] + ".150"}  # fmt: skip
    ws.write("net.yaml", manifest)
    r = ws.reconciler()
    load, observed, plan = r.plan()
    assert action(plan, "Network", name).changes_anything
    xml = ws.virsh("net-dumpxml", "--inactive", name)
    root = etree.fromstring(xml.encode())
    etree.SubElement(root, "domain", name="by-hand.example")
    path: Path = ws.root / "net-by-hand.xml"
    path.write_bytes(etree.tostring(root))
    ws.virsh("net-define", str(path))
    result = r.apply(plan, observed, load)
    [failed] = [x for x in result.results if x.outcome == "failed"]
    assert failed.error == (f"network {name}'s definition changed since it was planned "
                            "(by someone else): nothing changed; plan again")  # fmt: skip
    now = ws.virsh("net-dumpxml", "--inactive", name)
    assert "by-hand.example" in now and "<dhcp>" not in now
