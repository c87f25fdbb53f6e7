"""Owners are distinct (SPEC §3): each state directory is a reconciler instance with an id;
another instance's objects are conflicts naming it, never changed, pruned or deleted;
a lost state directory's objects are taken back in one deliberate step.

Everything runs through the CLI, as a user would: ``apply`` makes the instance id,
``plan`` never writes one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from reconciler.xml import domain as domain_xml
from reconciler.xml import network as network_xml
from tests.integration.engine_support import (  # noqa: F401
    Workspace,
    pool,
    vm,
    volume,
    ws_fixture,
)

INACTIVE = 2  # VIR_DOMAIN_XML_INACTIVE
# what changes by itself as the host's disk fills (other tests write there)
_USAGE = re.compile(r"<(capacity|allocation|available|physical)[^>]*>[^<]*</\1>|"
                    r"<timestamps>.*?</timestamps>", re.S)  # fmt: skip


def _stack(ws: Workspace) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A pool, a volume, an isolated network and a running VM using both."""
    names = {"pool": ws.n("pool"), "vol": ws.n("root"), "net": ws.n("net"), "vm": ws.n("vm")}
    docs = [
        pool(names["pool"], ws.subdir("pool")),
        volume(names["vol"], names["pool"], format="qcow2"),
        ws.isolated_network(names["net"]),
        vm(names["vm"], disks=[{"volume": names["vol"]}],
           interfaces=[{"network": names["net"], "mac": "52:54:00:7e:01:01"}]),
    ]  # fmt: skip
    return docs, names


def _cli(ws: Workspace, state: Path, *args: str) -> Any:
    return ws.cli(*args, "--state-dir", str(state), state=False)


def _instance(ws: Workspace, state: Path) -> str:
    done = _cli(ws, state, "instance")
    assert done.returncode == 0, done.stdout + done.stderr
    return str(done.stdout.strip())


def _write(directory: Path, docs: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stack.yaml").write_text("---\n".join(yaml.safe_dump(d) for d in docs))


def _snapshot(ws: Workspace, names: dict[str, str]) -> tuple[str, ...]:
    dom = ws.domain(names["vm"])
    net = ws.conn.networkLookupByName(names["net"])
    p = ws.conn.storagePoolLookupByName(names["pool"])
    vol = p.storageVolLookupByName(names["vol"])
    return (dom.XMLDesc(INACTIVE), dom.XMLDesc(0), str(dom.isActive()),
            net.XMLDesc(1), str(net.isActive()),  # 1: VIR_NETWORK_XML_INACTIVE
            _USAGE.sub("", p.XMLDesc(0)), _USAGE.sub("", vol.XMLDesc(0)))  # fmt: skip


def _plan_json(ws: Workspace, state: Path, directory: Path) -> tuple[int, dict[str, Any]]:
    done = _cli(ws, state, "plan", str(directory), "-o", "json")
    return done.returncode, json.loads(done.stdout)


def _reason(plan: dict[str, Any], name: str) -> tuple[str, str]:
    [a] = [a for a in plan["actions"] if a["name"] == name]
    return a["op"], a["reason"] or ""


def test_another_instances_vm_is_a_conflict_naming_it_until_adopted(ws: Workspace) -> None:
    docs, names = _stack(ws)
    state_a, state_b = ws.root / "state-a", ws.root / "state-b"
    _write(ws.directory, docs)
    done = _cli(ws, state_a, "apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    a_id = _instance(ws, state_a)
    dom = ws.domain(names["vm"])
    before = (dom.XMLDesc(INACTIVE), dom.XMLDesc(0))
    assert domain_xml.read_ownership(before[0]).instance == a_id  # type: ignore[union-attr]
    net_record = network_xml.read_ownership(ws.conn.networkLookupByName(names["net"]).XMLDesc(0))
    assert net_record is not None and net_record.instance == a_id
    assert {e["instance"] for e in json.loads(
        (state_a / "inventory.json").read_text())["objects"].values()} == {a_id}  # fmt: skip

    # B: a fresh state directory, a manifest of the same name with no disk and no NIC
    dir_b = ws.root / "manifests-b"
    _write(dir_b, [vm(names["vm"])])
    code, plan = _plan_json(ws, state_b, dir_b)
    assert code == 1, plan
    op, reason = _reason(plan, names["vm"])
    assert op == "conflict" and f"reconciler instance {a_id}" in reason, reason
    assert str(ws.directory / "stack.yaml") in reason  # A's manifest path
    assert plan["instance"] is None  # B's plan wrote nothing, not even an id
    assert not (state_b / "instance-id").exists()
    done = _cli(ws, state_b, "apply", str(dir_b), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "conflict" in done.stdout and a_id in done.stdout
    assert (dom.XMLDesc(INACTIVE), dom.XMLDesc(0)) == before  # nothing of it changed
    assert ws.virsh("dumpxml", "--inactive", names["vm"]) == ws.virsh(
        "dumpxml", "--inactive", names["vm"])  # fmt: skip
    assert "source pool=" in ws.virsh("dumpxml", "--inactive", names["vm"])
    b_id = _instance(ws, state_b)  # the apply made B's id
    assert b_id != a_id

    # adopt: true takes it over, on purpose: B's record, B's manifest (the network too)
    net_b = {**docs[2], "spec": {**docs[2]["spec"], "adopt": True}}
    _write(dir_b, [net_b, vm(names["vm"], adopt=True)])
    code, plan = _plan_json(ws, state_b, dir_b)
    [a] = [a for a in plan["actions"] if a["name"] == names["vm"]]
    assert {"path": "ownership", "old": f"instance {a_id}", "new": f"instance {b_id}"}.items() \
        <= next(c for c in a["changes"] if c["path"] == "ownership").items(), a  # fmt: skip
    done = _cli(ws, state_b, "apply", str(dir_b), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert domain_xml.read_ownership(dom.XMLDesc(INACTIVE)).instance == b_id  # type: ignore[union-attr]

    # now A's manifest is the foreign one: a conflict naming B, and never deleted
    code, plan = _plan_json(ws, state_a, ws.directory)
    op, reason = _reason(plan, names["vm"])
    assert code == 1 and op == "conflict" and f"reconciler instance {b_id}" in reason
    # A's manifests of the VM and the network are removed (while A's manifest still
    # declares the VM, delete refuses for that reason first: the next apply would
    # create it again); A's delete is then refused naming B, the VM untouched
    _write(ws.directory, docs[:2])
    done = _cli(ws, state_a, "delete", f"VirtualMachine/{names['vm']}", "--yes",
                "--manifest-dir", str(ws.root / "nowhere"))  # fmt: skip
    assert done.returncode == 1 and b_id in done.stdout, done.stdout + done.stderr
    assert ws.domain(names["vm"]).isActive()
    # a prune forgets them, and deletes nothing
    net = ws.conn.networkLookupByName(names["net"])
    assert network_xml.read_ownership(net.XMLDesc(1)).instance == b_id  # type: ignore[union-attr]
    after_b = (dom.XMLDesc(INACTIVE), net.XMLDesc(1))
    done = _cli(ws, state_a, "apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert b_id in done.stdout
    assert (dom.XMLDesc(INACTIVE), net.XMLDesc(1)) == after_b
    assert dom.isActive() and net.isActive()
    inventory = json.loads((state_a / "inventory.json").read_text())["objects"]
    assert f"VirtualMachine/{names['vm']}" not in inventory
    assert f"Network/{names['net']}" not in inventory


def test_lost_state_directory_is_taken_back_in_one_step(ws: Workspace) -> None:
    docs, names = _stack(ws)
    state = ws.root / "state-a"
    _write(ws.directory, docs)
    done = _cli(ws, state, "apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    old = _instance(ws, state)
    before = _snapshot(ws, names)

    shutil.rmtree(state)  # the disk was replaced
    code, plan = _plan_json(ws, state, ws.directory)
    assert code == 1
    for key in ("vm", "net"):
        op, reason = _reason(plan, names[key])
        assert op == "conflict" and f"reconciler instance {old}" in reason, reason
        assert f"adopt --from-instance {old}" in reason
    for key in ("pool", "vol"):
        op, reason = _reason(plan, names[key])
        assert op == "conflict" and "inventory" in reason, reason
    assert old in _reason(plan, names["vol"])[1]  # used by a VM of that instance
    done = _cli(ws, state, "apply", str(ws.directory), "--yes")
    assert done.returncode == 1, done.stdout + done.stderr
    assert _snapshot(ws, names) == before
    new = _instance(ws, state)
    assert new != old

    # never silently: without --yes (and no terminal) nothing is taken
    done = _cli(ws, state, "adopt", "--from-instance", old, str(ws.directory))
    assert done.returncode == 1 and "without --yes" in done.stderr, done.stdout + done.stderr
    inventory = state / "inventory.json"
    assert not inventory.exists() or not json.loads(inventory.read_text())["objects"]
    done = _cli(ws, state, "adopt", "--from-instance", old, str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    for key in names.values():
        assert key in done.stdout
    inventory = json.loads((state / "inventory.json").read_text())["objects"]
    assert set(inventory) == {f"StoragePool/{names['pool']}", f"Volume/{names['vol']}",
                              f"Network/{names['net']}", f"VirtualMachine/{names['vm']}"}
    assert {e["instance"] for e in inventory.values()} == {new}
    # only the records changed: the definitions are as they were, our id in them
    after = _snapshot(ws, names)
    assert after[0] == before[0].replace(old, new) and after[1:3] == before[1:3]
    assert after[3] == before[3].replace(old, new) and after[4:] == before[4:]

    # managed again: in sync, then a change applies, and the JSON names this instance
    code, plan = _plan_json(ws, state, ws.directory)
    assert code == 0 and not plan["changes"] and plan["instance"] == new, plan
    docs[3]["spec"]["autostart"] = True
    _write(ws.directory, docs)
    done = _cli(ws, state, "apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ws.domain(names["vm"]).autostart() == 1
    done = _cli(ws, state, "status", "-o", "json")
    assert json.loads(done.stdout)["instance"] == new


def test_records_from_before_instance_ids_are_taken_by_their_inventory(ws: Workspace) -> None:
    """An upgrade: records without an id, listed in our inventory, get our id; the
    definition is otherwise kept, and nothing restarts."""
    name = ws.n("vm")
    ws.write("vm.yaml", vm(name))
    ws.converge(instance=None)  # in-process, without an instance: records as before
    dom = ws.domain(name)
    before = (dom.XMLDesc(INACTIVE), dom.XMLDesc(0))
    assert domain_xml.read_ownership(before[0]).instance is None  # type: ignore[union-attr]
    # a fresh state directory sees an unknown instance's VM
    code, plan = _plan_json(ws, ws.root / "other", ws.directory)
    assert code == 1 and "unknown reconciler instance" in _reason(plan, name)[1]
    done = ws.cli("apply", str(ws.directory), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "record without instance id" in done.stdout
    mine = _instance(ws, ws.state_dir)
    after = ws.domain(name).XMLDesc(INACTIVE)
    assert domain_xml.read_ownership(after).instance == mine  # type: ignore[union-attr]
    assert after.replace(f"<rc:instance>{mine}</rc:instance>\n      ", "") == before[0]
    assert ws.domain(name).XMLDesc(0) == before[1]
    code, plan = _plan_json(ws, ws.state_dir, ws.directory)
    assert code == 0, plan


def _hand_made(ws: Workspace) -> dict[str, str]:
    """A VM and an isolated network made by hand (virsh define), the VM's NIC on it."""
    names = {"vm": ws.n("pp-vm"), "net": ws.n("pp-net")}
    spec = ws.isolated_network(names["net"])["spec"]
    net_xml = ws.hostdir / "pp-net.xml"
    net_xml.write_text(f"<network><name>{names['net']}</name><bridge name='{spec['bridge']}'/>"
                       f"<ip address='{spec['ipv4']['address']}' prefix='24'/></network>")
    ws.virsh("net-define", str(net_xml))
    dom_xml = ws.hostdir / "pp-vm.xml"
    dom_xml.write_text(f"""<domain type='{ws.domain_type}'>
  <name>{names['vm']}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  {ws.cpu_xml("host-model")}
  <devices>
    <interface type='network'><mac address='52:54:00:7e:02:01'/>
      <source network='{names['net']}'/><model type='virtio'/></interface>
    <memballoon model='none'/>
  </devices>
</domain>""")
    ws.virsh("define", str(dom_xml))
    return names


def _defs(ws: Workspace, names: dict[str, str]) -> tuple[str, str]:
    return (ws.domain(names["vm"]).XMLDesc(INACTIVE),
            ws.conn.networkLookupByName(names["net"]).XMLDesc(1))  # fmt: skip


def test_two_instances_applying_adopt_true_never_take_objects_back_and_forth(
        ws: Workspace) -> None:  # fmt: skip
    """Seen: two instances applying the same exported (adopt: true) manifests took a VM
    and a network back and forth on every pass (142 redefines in 30 s with two daemons),
    each pass logged as drift healed. Now the second takes them once, and the first
    sees a conflict naming it, changes nothing, and reports a conflict."""
    names = _hand_made(ws)
    out = ws.root / "exported"
    done = ws.cli("export", f"VirtualMachine/{names['vm']}", "--with-deps", "--output-dir",
                  str(out), state=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    docs = [d for p in sorted(out.rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    assert {d["metadata"]["name"] for d in docs} == set(names.values())
    assert all(d["spec"]["adopt"] is True for d in docs)
    state_a, state_b = ws.root / "state-a", ws.root / "state-b"

    done = _cli(ws, state_a, "apply", str(out), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    a_id = _instance(ws, state_a)
    done = _cli(ws, state_b, "apply", str(out), "--yes")  # B takes them: once
    assert done.returncode == 0, done.stdout + done.stderr
    b_id = _instance(ws, state_b)
    assert f"instance {a_id} -> instance {b_id}" in done.stdout, done.stdout
    assert "taken over from another reconciler instance" in done.stdout
    taken = _defs(ws, names)
    assert domain_xml.read_ownership(taken[0]).instance == b_id  # type: ignore[union-attr]
    assert network_xml.read_ownership(taken[1]).instance == b_id  # type: ignore[union-attr]

    for _ in range(2):  # two applies each way: nothing is redefined again
        code, plan = _plan_json(ws, state_a, out)
        assert code == 1
        for key in ("vm", "net"):
            op, reason = _reason(plan, names[key])
            assert op == "conflict" and f"taken over by reconciler instance {b_id}" in reason, \
                reason  # fmt: skip
            assert f"adopt --from-instance {b_id}" in reason
        done = _cli(ws, state_a, "apply", str(out), "--yes")
        assert done.returncode == 1 and b_id in done.stdout, done.stdout + done.stderr
        assert _defs(ws, names) == taken
        done = _cli(ws, state_a, "status", "-o", "json")
        states = {o["name"]: o["state"] for o in json.loads(done.stdout)["objects"]}
        assert states[names["vm"]] == states[names["net"]] == "conflict", states
        code, plan = _plan_json(ws, state_b, out)
        assert code == 0 and not plan["changes"], plan
        done = _cli(ws, state_b, "apply", str(out), "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert _defs(ws, names) == taken

    # the deliberate way back: A takes them back from B, and B now sees the conflict
    done = _cli(ws, state_a, "adopt", "--from-instance", b_id, str(out), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    back = _defs(ws, names)
    assert domain_xml.read_ownership(back[0]).instance == a_id  # type: ignore[union-attr]
    assert back[0] == taken[0].replace(b_id, a_id)  # only the record changed
    code, plan = _plan_json(ws, state_b, out)
    assert code == 1 and f"taken over by reconciler instance {a_id}" in \
        _reason(plan, names["vm"])[1]  # fmt: skip
    done = _cli(ws, state_b, "apply", str(out), "--yes")
    assert done.returncode == 1 and _defs(ws, names) == back


def test_apply_never_runs_without_an_instance_id(ws: Workspace) -> None:
    """A dangling instance-id link once had apply run with no id at all (records without
    one); a link to another state directory's id made two state directories one
    instance; binary garbage was a traceback. Each is one line, and nothing is written."""
    name = ws.n("noid")
    ws.write("vm.yaml", vm(name))
    other = ws.root / "state-other"
    assert _cli(ws, other, "apply", str(ws.directory), "--yes").returncode == 0
    state = ws.root / "state-link"
    state.mkdir(mode=0o700)
    link = state / "instance-id"
    for target in (ws.root / "gone", other / "instance-id"):
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        for command in ("apply", "plan"):
            args = (command, str(ws.directory)) + (("--yes",) if command == "apply" else ())
            done = _cli(ws, state, *args)
            assert done.returncode == 1, done.stdout + done.stderr
            assert done.stderr.count("\n") == 1 and "symbolic link" in done.stderr, done.stderr
            assert not (state / "inventory.json").exists()
    link.unlink()
    link.write_bytes(bytes(range(128, 228)))
    for command in ("plan", "instance"):
        done = _cli(ws, state, command, *((str(ws.directory),) if command == "plan" else ()))
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"{link}: not an instance id" in done.stderr, done.stderr
