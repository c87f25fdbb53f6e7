"""Preflight against the real libvirtd: `reconciler plan` refuses, as load problems at the
field's file:line:col, what this host cannot run, before anything is touched."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.integration.engine_support import Workspace, vm, ws_fixture  # noqa: F401


def vm_text(name: str, *lines: str, head: str = "") -> str:
    """A small `type: qemu` VM manifest; ``lines`` go under spec as written."""
    spec = "".join(f"  {line}\n" for line in lines)
    return (f"apiVersion: reconciler/v1\nkind: VirtualMachine\nmetadata:\n  name: {name}\n"
            f"{head}spec:\n  type: qemu\n  memory: 64MiB\n  vcpus: 1\n  shutdownTimeout: 1s\n"
            f"{spec}")  # fmt: skip


def at(path: Path, needle: str) -> str:
    """``file:line:col`` of the value ``needle`` in a manifest file, as the CLI prints it."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return f"{path}:{number}:{line.index(needle) + 1}"
    raise AssertionError(f"{needle!r} not in {path}")


def plan_fails(ws: Workspace) -> str:
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stderr


def test_an_unknown_machine_type_names_the_field_and_close_ones(ws: Workspace) -> None:
    path = ws.write("vm.yaml", vm_text(ws.n("vm"), "machine: pc-i440fx-99.9"))
    err = plan_fails(ws)
    assert (f"{at(path, 'pc-i440fx-99.9')}: spec.machine: machine type 'pc-i440fx-99.9' is not "
            "known to this host's QEMU (x86_64, type qemu); close ones: pc-i440fx-") in err, err
    assert "1 problem in 1 file" in err, err


def test_max_vcpus_over_the_machine_limit(ws: Workspace) -> None:
    path = ws.write("vm.yaml", vm_text(ws.n("vm"), "machine: pc", "maxVcpus: 4000"))
    err = plan_fails(ws)
    assert (f"{at(path, '4000')}: spec.maxVcpus: 4000 vCPUs: machine pc-i440fx-") in err, err
    assert "takes at most 255 vCPUs; lower it to 255 or less" in err, err


def test_memory_over_the_host_memory(ws: Workspace) -> None:
    path = ws.write("vm.yaml", vm_text(ws.n("vm")).replace("64MiB", "64TiB"))
    err = plan_fails(ws)
    assert f"{at(path, '64TiB')}: spec.memory: 64TiB is more than this host's memory (" in err, err


def test_a_missing_disk_file(ws: Workspace) -> None:
    missing = ws.hostdir / "missing.img"
    path = ws.write("vm.yaml", vm_text(ws.n("vm"), "disks:", f"  - file: {missing}"))
    err = plan_fails(ws)
    assert (f"{at(path, str(missing))}: spec.disks[0].file: {missing} does not exist on this "
            "host; create it, or fix the path") in err, err
    ws.file("missing.img")
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 2, done.stdout + done.stderr


def test_a_qcow2_image_named_without_format_is_refused(ws: Workspace) -> None:
    image = ws.file("disk.qcow2", fmt="qcow2")
    path = ws.write("vm.yaml", vm_text(ws.n("vm"), "disks:", f"  - file: {image}"))
    err = plan_fails(ws)
    assert (f"{at(path, str(image))}: spec.disks[0].file: {image} is a qcow2 image, but the "
            "disk says format: raw (the default)") in err, err
    assert "; set format: qcow2" in err, err
    ws.write("vm.yaml", vm_text(ws.n("vm"), "disks:", f"  - file: {image}", "    format: qcow2"))
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 2, done.stdout + done.stderr


def test_a_file_qemu_cannot_reach(ws: Workspace) -> None:
    private = ws.hostdir / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    iso = ws.iso("a.iso").rename(private / "a.iso")
    path = ws.write("vm.yaml", vm_text(ws.n("vm"), "cdroms:", f"  - file: {iso}"))
    err = plan_fails(ws)
    assert (f"{at(path, str(iso))}: spec.cdroms[0].file: QEMU runs as libvirt-qemu and cannot "
            f"reach {iso}: directory {private} (mode 0700, owner 0:0) is not searchable for "
            f"it; chmod o+x {private}") in err, err


def test_a_missing_bridge(ws: Workspace) -> None:
    bridge = ws.bridge_name()  # a name, not made
    path = ws.write("vm.yaml", vm_text(ws.n("vm"), "interfaces:", f"  - bridge: {bridge}"))
    err = plan_fails(ws)
    assert (f"{at(path, bridge)}: spec.interfaces[0].bridge: no bridge {bridge} on this host"
            in err), err
    _make_bridge(ws, bridge)
    done = ws.cli("plan", str(ws.directory))
    assert done.returncode == 2, done.stdout + done.stderr


def _make_bridge(ws: Workspace, name: str) -> None:
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    ws.bridges.append(name)


def _free_port() -> int:
    """A VNC port no domain and no process holds now (libvirt's range is 5900-65535)."""
    for port in range(5990, 6400):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port")


def test_a_fixed_port_held_by_another_running_domain(ws: Workspace) -> None:
    port = _free_port()
    holder = ws.n("holder")
    ws.conn.defineXML(
        f"<domain type='qemu'><name>{holder}</name><memory unit='MiB'>32</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        f"<graphics type='vnc' port='{port}' autoport='no' listen='127.0.0.1'/>"
        "</devices></domain>"
    ).create()
    bad, good = ws.n("bad"), ws.n("good")
    path = ws.write("bad.yaml", vm_text(bad, f"graphics: {{type: vnc, port: {port}}}"))
    ws.write("good.yaml", vm_text(good, "graphics: {type: vnc, port: auto}"))
    err = plan_fails(ws)
    assert (f"{at(path, str(port))}: spec.graphics.port: port {port} is taken by domain "
            f"'{holder}' (running, holds it); use port: auto, or another free port") in err, err

    # failure isolation: the other VM is created, the refused one is not touched
    result = ws.apply()
    assert [p.field for p in result.load.problems] == ["spec.graphics.port"]
    assert [r.action.name for r in result.results if r.outcome == "ok"] == [good]
    assert ws.domain(good).isActive()
    assert bad not in [d.name() for d in ws.conn.listAllDomains(0)]


def test_a_subnet_overlapping_another_network(ws: Workspace) -> None:
    subnet = ws.subnet()
    gateway = next(subnet.hosts())
    other = ws.n("other")
    ws.conn.networkCreateXML(  # transient, isolated, active
        f"<network><name>{other}</name><bridge name='{ws.bridge_name()}'/>"
        f"<ip address='{gateway}' prefix='24'/></network>"
    )
    # the upper half of the other network's /24: it overlaps that one only (a /16 would
    # also meet whatever other runs left on this host)
    half = list(subnet.subnets(new_prefix=25))[1]
    inside = f"{half.network_address + 1}"
    text = (f"apiVersion: reconciler/v1\nkind: Network\nmetadata:\n  name: {ws.n('net')}\n"
            f"spec:\n  mode: isolated\n  bridge: {ws.bridge_name()}\n  ipv4:\n"
            f"    address: {inside}\n    prefix: 25\n")  # fmt: skip
    path = ws.write("net.yaml", text)
    err = plan_fails(ws)
    assert (f"{at(path, inside)}: spec.ipv4.address: {half} overlaps {subnet} of libvirt network "
            f"'{other}'; pick a free subnet") in err, err


def test_pruning_waits_while_preflight_refuses(ws: Workspace) -> None:
    kept = ws.n("kept")
    ws.write("kept.yaml", vm(kept, type="qemu", state="stopped"))
    ws.converge()
    ws.remove("kept.yaml")
    ws.write("bad.yaml", vm_text(ws.n("bad"), "machine: pc-nope"))
    result = ws.apply()
    assert [p.field for p in result.load.problems] == ["spec.machine"]
    assert result.plan.prune_blocked, result.plan
    assert kept in [d.name() for d in ws.conn.listAllDomains(0)]


def test_validate_offline_refuses_a_path_outside_the_allowed_roots(ws: Workspace) -> None:
    outside = Path("/tmp") / f"{ws.prefix}disk.img"
    path = ws.write("vm.yaml", vm_text(ws.n("vm"), "disks:", f"  - file: {outside}"))
    done = ws.cli("validate", "--offline", str(ws.directory), state=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (f"{at(path, str(outside))}: spec.disks[0].file: {outside} is outside "
            f"allowedDiskRoots ({ws.hostdir}); move it under one of them, or add a root to "
            "allowedDiskRoots in the configuration") in done.stderr, done.stderr
    inside = ws.hostdir / "disk.img"
    ws.write("vm.yaml", vm_text(ws.n("vm"), "disks:", f"  - file: {inside}"))
    done = ws.cli("validate", "--offline", str(ws.directory), state=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_subnet_on_a_host_interface(ws: Workspace) -> None:
    subnet = ws.subnet()
    bridge = ws.host_bridge()
    subprocess.run(["ip", "addr", "add", f"{next(subnet.hosts())}/24", "dev", bridge], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    address = f"{subnet.network_address + 1}"
    text = (f"apiVersion: reconciler/v1\nkind: Network\nmetadata:\n  name: {ws.n('net')}\n"
            f"spec:\n  mode: isolated\n  bridge: {ws.bridge_name()}\n  ipv4:\n"
            f"    address: {address}\n    prefix: 24\n")  # fmt: skip
    path = ws.write("net.yaml", text)
    err = plan_fails(ws)
    assert (f"{at(path, address)}: spec.ipv4.address: {subnet} overlaps {subnet} on host "
            f"interface {bridge}; pick a free subnet") in err, err


# --- the guest CPU: libvirt's own comparison, on whatever CPU this host has -----------------


def _host_type(host_probe: object) -> str:
    return "kvm" if getattr(host_probe, "kvm_usable", False) else "qemu"


def _host_model(ws: Workspace) -> str:
    import xml.etree.ElementTree as ET

    return str(ET.fromstring(ws.conn.getCapabilities()).findtext("host/cpu/model"))


def _lacking(ws: Workspace, xml: str) -> list[str]:
    """What libvirt says this host's CPU lacks for ``xml`` (the test's own oracle)."""
    import libvirt

    try:
        ws.conn.compareCPU(xml, libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE)
    except libvirt.libvirtError as exc:
        return [n.strip() for n in str(exc).partition("features:")[2].split(",") if n.strip()]
    return []


def test_a_cpu_model_libvirt_does_not_know(ws: Workspace, host_probe: object) -> None:
    text = vm_text(ws.n("vm"), "cpu: Skylake-Servr").replace(
        "type: qemu", f"type: {_host_type(host_probe)}")
    path = ws.write("vm.yaml", text)
    err = plan_fails(ws)
    assert (f"{at(path, 'Skylake-Servr')}: spec.cpu: libvirt knows no CPU model 'Skylake-Servr'"
            " for x86_64; close ones: Skylake-Server") in err, err


def test_a_cpu_feature_name_libvirt_does_not_know(ws: Workspace, host_probe: object) -> None:
    text = vm_text(ws.n("vm"), "cpu: {features: {arch-capabilites: disable}}").replace(
        "type: qemu", f"type: {_host_type(host_probe)}")
    path = ws.write("vm.yaml", text)
    err = plan_fails(ws)
    assert (f"{at(path, 'disable')}: spec.cpu.features.arch-capabilites: libvirt knows"
            " no CPU feature 'arch-capabilites'") in err, err


def test_what_this_host_cpu_cannot_provide_is_refused(ws: Workspace, host_probe: object) -> None:
    """Needs KVM (TCG emulates its CPU): a named model and a required feature this host's
    CPU lacks, found with libvirt's own comparison (the test asks libvirt which ones this
    host lacks, whatever its CPU), are refused at plan; optional instead runs."""
    virt_type = _host_type(host_probe)
    models = ("Skylake-Server", "EPYC-Rome", "Icelake-Server", "EPYC-Milan", "Cascadelake-Server",
              "Cooperlake", "EPYC")  # fmt: skip
    model = next((m for m in models if _lacking(
        ws, f"<cpu mode='custom' match='exact'><model>{m}</model></cpu>")), None)
    host = _host_model(ws)
    feature = next((f for f in ("amx-tile", "avx512-fp16", "svm", "vmx", "avx512f") if f in
                    _lacking(ws, f"<cpu mode='custom' match='exact'><model>{host}</model>"
                                 f"<feature policy='require' name='{f}'/></cpu>")), None)
    assert model is not None and feature is not None, "this host lacks no candidate"
    path = ws.write("a.yaml", vm_text(ws.n("a"), f"cpu: {{model: {model}}}").replace(
        "type: qemu", f"type: {virt_type}"))
    path_b = ws.write("b.yaml", vm_text(ws.n("b"), f"cpu: {{features: {{{feature}: require}}}}")
                      .replace("type: qemu", f"type: {virt_type}"))  # fmt: skip
    if virt_type != "kvm":  # no usable KVM here: TCG emulates both, nothing to refuse
        done = ws.cli("plan", str(ws.directory))
        assert done.returncode == 2, done.stdout + done.stderr
        return
    err = plan_fails(ws)
    assert (f"{at(path, model)}: spec.cpu.model: this host's CPU ({host}) cannot run CPU model "
            f"{model}: it lacks ") in err, err
    assert (f"{at(path_b, 'require')}: spec.cpu.features.{feature}: this host's CPU ({host})"
            f" does not provide required feature {feature}; set its policy to optional") in err
    assert not [d for d in ws.conn.listAllDomains(0) if d.name().startswith(ws.prefix)]
    # optional instead of require: the host runs it
    ws.write("b.yaml", vm_text(ws.n("b"), f"cpu: {{features: {{{feature}: optional}}}}")
             .replace("type: qemu", f"type: {virt_type}"))  # fmt: skip
    ws.remove("a.yaml")
    ws.converge()
    assert ws.domain(ws.n("b")).isActive()


def test_a_model_libvirt_calls_compatible_is_not_refused(ws: Workspace, host_probe: object) -> None:
    """No false refusal: a model libvirt's comparison accepts passes preflight and starts."""
    if _host_type(host_probe) != "kvm":
        return  # TCG: only names are checked, and the test above shows them
    model = next((m for m in ("Nehalem", "Westmere", "Penryn", "Conroe", "qemu64", "kvm64")
                  if not _lacking(ws, f"<cpu mode='custom' match='exact'><model>{m}</model>"
                                      "</cpu>")), None)  # fmt: skip
    assert model is not None
    ws.write("vm.yaml", vm_text(ws.n("vm"), f"cpu: {model}").replace("type: qemu", "type: kvm"))
    ws.converge()
    assert ws.domain(ws.n("vm")).isActive()


def test_a_feature_the_manifest_disables_is_not_asked_of_the_host(
    ws: Workspace, host_probe: object
) -> None:
    """A named model this host lacks features of runs with them disabled (the guest
    does not get them): preflight does not refuse it, and it starts. On an Intel host,
    qemu64 with svm: disable, what QEMU's default CPU is."""
    if _host_type(host_probe) != "kvm":
        return  # TCG: only names are checked
    found = next(((m, lacks) for m in ("qemu64", "Opteron_G3", "EPYC", "Skylake-Server")
                  if (lacks := _lacking(ws, f"<cpu mode='custom' match='exact'><model>{m}</model>"
                                            "</cpu>"))), None)  # fmt: skip
    assert found is not None, "this host lacks nothing of any candidate model"
    model, lacks = found
    features = ", ".join(f"{f}: disable" for f in lacks)
    ws.write("vm.yaml", vm_text(ws.n("vm"), f"cpu: {{model: {model}, features: {{{features}}}}}")
             .replace("type: qemu", "type: kvm"))  # fmt: skip
    ws.converge()
    assert ws.domain(ws.n("vm")).isActive()
    # forbid is not disable: libvirt keeps the model's feature required, and refuses
    ws.write("vm.yaml", vm_text(ws.n("forbid"), f"cpu: {{model: {model}, features: "
                                f"{{{lacks[0]}: forbid}}}}").replace("type: qemu", "type: kvm"))
    err = plan_fails(ws)
    assert f"cannot run CPU model {model}: it lacks {lacks[0]}" in err, err
    assert f"write {lacks[0]}: disable (forbid keeps it required)" in err, err
