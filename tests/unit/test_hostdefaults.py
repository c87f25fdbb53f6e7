"""Host vmDefaults (hostdefaults.py), the CPU mapping (model.py) and the host probe's
decisions (hostprobe.py, against a fake hypervisor): pure, no libvirt."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import hostprobe
from reconciler.errors import ConfigError, Refused
from reconciler.hostdefaults import VmDefaults, apply_vm_defaults, merge_vm_spec
from reconciler.manifests import load_directory
from reconciler.model import CpuSpec, CpuTopology, cpu_from_manifest, cpu_manifest
from reconciler.plan import Op
from reconciler.report import plan_json, render_plan
from reconciler.settings import load_settings
from reconciler.xml import domain as domain_xml
from tests.unit.conftest import WriteFiles
from tests.unit.test_planner import STACK, action, converged, plan_for

AMD = VmDefaults(cpu={"features": {"arch-capabilities": "disable"}}, origin="/etc/r.yaml")


# --- merging ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "defaults", "merged", "taken"),
    [
        # no cpu: the default's, whole
        ({}, AMD, {"cpu": {"features": {"arch-capabilities": "disable"}}},
         ["cpu.features.arch-capabilities"]),
        # a mode as a string: kept, features added under it
        ({"cpu": "host-passthrough"}, AMD,
         {"cpu": {"mode": "host-passthrough", "features": {"arch-capabilities": "disable"}}},
         ["cpu.features.arch-capabilities"]),
        # a named model: kept (custom), features added
        ({"cpu": "EPYC"}, AMD,
         {"cpu": {"model": "EPYC", "features": {"arch-capabilities": "disable"}}},
         ["cpu.features.arch-capabilities"]),
        # the manifest's policy for the same feature wins
        ({"cpu": {"features": {"arch-capabilities": "require", "vmx": "optional"}}}, AMD,
         {"cpu": {"features": {"arch-capabilities": "require", "vmx": "optional"}}}, []),
        # the default's mode only when the manifest names neither mode nor model
        ({"cpu": {"features": {"vmx": "optional"}}},
         VmDefaults(cpu={"mode": "host-passthrough", "migratable": False}),
         {"cpu": {"mode": "host-passthrough", "features": {"vmx": "optional"},
                  "migratable": False}},
         ["cpu.mode", "cpu.migratable"]),
        ({"cpu": "host-model"}, VmDefaults(cpu={"mode": "host-passthrough", "migratable": False}),
         {"cpu": "host-model"}, []),
        # no <cpu> at all (an adopted domain without one): nothing to add features to
        ({"cpu": "hypervisor-default"}, AMD, {"cpu": "hypervisor-default"}, []),
        # TCG: no CPU defaults; a type only where the manifest has none
        ({"type": "qemu"}, AMD, {"type": "qemu"}, []),
        ({}, VmDefaults(type="qemu", cpu={"features": {"x2apic": "disable"}}),
         {"type": "qemu"}, ["type"]),
        ({"type": "kvm"}, VmDefaults(type="qemu"), {"type": "kvm"}, []),
    ],
)  # fmt: skip
def test_merge_vm_spec(spec: dict[str, Any], defaults: VmDefaults, merged: dict[str, Any],
                       taken: list[str]) -> None:  # fmt: skip
    assert merge_vm_spec(spec, defaults) == (merged, taken)


VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: web}
spec:
  memory: 64MiB
  cpu: host-passthrough
"""


def test_defaults_become_the_desired_state_and_say_where_they_came_from(
    write: WriteFiles,
) -> None:
    load = apply_vm_defaults(load_directory(write(**{"vm.yaml": VM})), AMD)
    [m] = load.manifests
    assert m.spec.cpu == CpuSpec(  # type: ignore[union-attr]
        mode="host-passthrough", features=(("arch-capabilities", "disable"),))
    assert m.host_defaults == ("cpu.features.arch-capabilities",)
    assert m.host_defaults_origin == "/etc/r.yaml"
    assert m.position(("spec", "cpu")).line == 6  # still the manifest's own place


def test_a_default_the_manifest_cannot_take_names_the_configuration(write: WriteFiles) -> None:
    load = apply_vm_defaults(load_directory(write(**{"vm.yaml": VM})),
                             VmDefaults(type="qemu", origin="/etc/r.yaml"))  # fmt: skip
    assert load.manifests == ()
    assert [str(p).split("/m/", 1)[1] for p in load.problems] == [
        "vm.yaml:6:8: spec.cpu: host-passthrough needs type kvm; use host-model, maximum or"
        " a named model; type came from vmDefaults in /etc/r.yaml"
    ]


def test_no_defaults_leave_the_load_as_it_is(write: WriteFiles) -> None:
    load = load_directory(write(**{"vm.yaml": VM}))
    assert apply_vm_defaults(load, VmDefaults()) is load


# --- the plan says where a value came from ------------------------------------------------


def test_plan_names_the_host_default_behind_a_change(write: WriteFiles) -> None:
    result = load_directory(write(**{"stack.yaml": STACK}))
    observed = converged(result, running=False)
    with_amd = apply_vm_defaults(result, AMD)
    a = action(plan_for(with_amd, observed), action_kind(), "web")
    assert a.op is Op.UPDATE_LIVE
    [change] = [c for c in a.changes if c.path == "cpu"]
    assert (change.path, change.old, change.new) == (
        "cpu", "host-model", "host-model, arch-capabilities=disable")
    assert change.origin == "cpu.features.arch-capabilities from vmDefaults in /etc/r.yaml"
    text = render_plan(plan_for(with_amd, observed))
    assert ("cpu: host-model -> host-model, arch-capabilities=disable "
            "[cpu.features.arch-capabilities from vmDefaults in /etc/r.yaml]") in text
    as_json = plan_json(plan_for(with_amd, observed))
    [vm] = [x for x in as_json["actions"] if x["kind"] == "VirtualMachine"]
    assert vm["changes"][0]["origin"] == change.origin
    # applied, the defaults are what libvirt has: no perpetual diff
    again = converged(with_amd)
    assert action(plan_for(with_amd, again), action_kind(), "web").op is Op.NOOP


def test_a_vm_created_with_host_defaults_says_so(write: WriteFiles) -> None:
    result = apply_vm_defaults(load_directory(write(**{"stack.yaml": STACK})), AMD)
    empty = dataclasses.replace(converged(result), domains={})
    a = action(plan_for(result, empty), action_kind(), "web")
    assert a.op is Op.CREATE
    assert a.reason == ("with host defaults: cpu.features.arch-capabilities=disable"
                        " (vmDefaults in /etc/r.yaml)")  # fmt: skip
    [define] = [s for s in a.steps if s.verb == "define-domain"]
    assert '<feature policy="disable" name="arch-capabilities"/>' in define.args["xml"]


def action_kind() -> Any:
    from reconciler.model import Kind

    return Kind.VIRTUAL_MACHINE


# --- the configuration file ---------------------------------------------------------------


def test_vm_defaults_in_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("vmDefaults:\n  cpu:\n    features: {arch-capabilities: disable}\n")
    defaults = load_settings(config_path=path, environ={}).vm_defaults
    assert defaults == VmDefaults(cpu={"features": {"arch-capabilities": "disable"}},
                                  origin=str(path))  # fmt: skip
    path.write_text("prune: true\n")
    assert load_settings(config_path=path, environ={}).vm_defaults == VmDefaults()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vmDefaults:\n  cpu:\n    features: {arch-capabilities: disabel}\n",
         "config.yaml:3:35: vmDefaults.cpu.features.arch-capabilities: 'disabel' is not one of:"
         " require, optional, disable, forbid, force; did you mean 'disable'?"),
        ("vmDefaults:\n  cpu: {mode: host-model, model: EPYC}\n",
         "config.yaml:2:34: vmDefaults.cpu.model: a model goes with mode custom, not host-model;"
         " remove mode (a model implies custom), or remove model"),
        ("vmDefaults:\n  cpu: {topology: {cores: 2}}\n",
         "config.yaml:2:9: vmDefaults.cpu.topology: unknown field; expected one of: mode, model,"
         " features, migratable"),
        ("vmDefaults:\n  type: xen\n",
         "config.yaml:2:9: vmDefaults.type: 'xen' is not one of: kvm, qemu"),
    ],
)  # fmt: skip
def test_bad_vm_defaults_are_one_line_each(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=path, environ={})
    assert str(info.value).replace(str(tmp_path) + "/", "").startswith(message), str(info.value)


# --- cpu in manifests ---------------------------------------------------------------------


def _problems(write: WriteFiles, cpu: str, **spec: Any) -> list[str]:
    extra = "".join(f"  {k}: {v}\n" for k, v in spec.items())
    text = f"{VM.replace('  cpu: host-passthrough', '  cpu: ' + cpu)}{extra}"
    return ["m/" + str(p).split("/m/", 1)[1]
            for p in load_directory(write(**{"vm.yaml": text})).problems]


def test_cpu_mapping_bad_input_names_file_line_column(write: WriteFiles) -> None:
    assert _problems(write, "{features: {arch-capabilities: disabel}}") == [
        "m/vm.yaml:6:39: spec.cpu.features.arch-capabilities: 'disabel' is not one of: require,"
        " optional, disable, forbid, force; did you mean 'disable'?"]
    assert _problems(write, "{features: {Arch_Caps!: disable}}") == [
        "m/vm.yaml:6:20: spec.cpu.features.Arch_Caps!: 'Arch_Caps!' is not a CPU feature name"
        " (expected lower-case as libvirt spells them, e.g. arch-capabilities or sse4.2)"]
    assert _problems(write, "{topology: {sockets: 2, cores: 2}}", maxVcpus=2) == [
        "m/vm.yaml:6:19: spec.cpu.topology: topology gives 2x1x2x1 = 4 vCPUs, but maxVcpus is 2;"
        " sockets x dies x cores x threads must equal maxVcpus (or vcpus when maxVcpus is not"
        " set), e.g. cores: 1"]
    assert _problems(write, "{mode: custom}") == [
        "m/vm.yaml:6:15: spec.cpu.mode: mode custom needs a model; add e.g. model:"
        " Skylake-Server, or use mode: host-model"]
    assert _problems(write, "{mode: host-model, migratable: false}") == [
        "m/vm.yaml:6:39: spec.cpu.migratable: migratable applies to host-passthrough and"
        " maximum, not host-model; remove migratable"]
    assert _problems(write, "{mode: host-passthrough}", type="qemu") == [
        "m/vm.yaml:6:15: spec.cpu.mode: host-passthrough needs type kvm; use host-model, maximum"
        " or a named model"]
    assert _problems(write, "{mode: passthrough}")[0].startswith(
        "m/vm.yaml:6:15: spec.cpu.mode: 'passthrough' is not one of: host-model,"
        " host-passthrough, maximum, custom")


@pytest.mark.parametrize(
    "cpu",
    [
        CpuSpec(),
        CpuSpec(mode="maximum"),
        CpuSpec(mode="custom", model="EPYC"),
        CpuSpec(mode="host-passthrough", migratable=False,
                features=(("arch-capabilities", "disable"), ("vmx", "require"))),
        CpuSpec(mode="custom", model="Nehalem", topology=CpuTopology(2, 1, 2, 1),
                features=(("aes", "force"),)),
    ],
)  # fmt: skip
def test_cpu_export_form_is_the_inverse(cpu: CpuSpec) -> None:
    assert cpu_from_manifest(cpu_manifest(cpu)) == cpu
    rendered = domain_xml.render("vm", dataclasses.replace(_spec(), cpu=cpu))
    assert domain_xml.read_cpu(rendered) == cpu


def _spec() -> Any:
    from reconciler.model import VirtualMachineSpec

    return VirtualMachineSpec(memory=2**26, max_memory=2**26, vcpus=4, max_vcpus=4)


def test_equal_cpus_compare_equal_however_written() -> None:
    libvirt_wrote = """<domain><cpu mode='host-passthrough' check='none' migratable='on'>
      <topology sockets='1' dies='1' cores='2' threads='1'/>
      <feature policy='require' name='vmx'/><feature policy='disable' name='arch-capabilities'/>
    </cpu></domain>"""
    declared = cpu_from_manifest({"mode": "host-passthrough", "topology": {"cores": 2},
                                  "features": {"vmx": "require",
                                               "arch-capabilities": "disable"}})  # fmt: skip
    observed = domain_xml.read_cpu(libvirt_wrote)
    assert observed is not None and observed.describe() == declared.describe()
    assert declared.describe() == (
        "host-passthrough, arch-capabilities=disable, vmx=require, topology 1s/1d/2c/1t")


# --- the host probe ------------------------------------------------------------------------


class FakeHost:
    """Starts a domain only if its XML passes ``starts``; records what it was asked."""

    def __init__(self, starts: Any) -> None:
        self.starts = starts
        self.defined: dict[str, str] = {}
        self.removed: list[str] = []

    def start_throwaway_domain(self, xml: str) -> None:
        import re

        name = re.search(r"<name>(.*?)</name>", xml)
        assert name is not None
        if not self.starts(xml):
            raise Refused("starting a throwaway domain: internal error: qemu unexpectedly "
                          "closed the monitor: error: failed to set MSR 0x10a to 0x69")
        self.defined[name.group(1)] = xml

    def domain_active(self, name: str) -> bool:
        return True

    def destroy_domain(self, name: str) -> None:  # transient: destroyed is gone
        if name in self.defined:
            self.removed.append(name)
            del self.defined[name]


@pytest.fixture(autouse=True)
def _no_settle_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostprobe, "SETTLE", 0.0)


def test_probe_amd_nested_finds_arch_capabilities() -> None:
    host = FakeHost(lambda xml: "kvm" not in xml or "arch-capabilities" in xml)
    result = hostprobe.probe(host, kvm_present=lambda: True)  # type: ignore[arg-type]
    assert result.defaults == VmDefaults(cpu={"features": {"arch-capabilities": "disable"}})
    assert [a.error is None for a in result.attempts] == [False, True]
    assert "MSR 0x10a" in str(result.attempts[0].error)
    assert result.kvm_usable and not host.defined and len(host.removed) == 1
    assert result.summary().startswith(
        "type: kvm guests start only with cpu.features.arch-capabilities=disable")


def test_probe_plain_kvm_needs_nothing() -> None:
    result = hostprobe.probe(FakeHost(lambda xml: True),  # type: ignore[arg-type]
                             kvm_present=lambda: True)  # fmt: skip
    assert result.defaults == VmDefaults() and not result.defaults and result.kvm_usable


def test_probe_without_kvm_tries_only_qemu() -> None:
    host = FakeHost(lambda xml: 'type="qemu"' in xml)
    result = hostprobe.probe(host, kvm_present=lambda: False)  # type: ignore[arg-type]
    assert result.defaults == VmDefaults(type="qemu") and not result.kvm_usable
    assert len(result.attempts) == 1
    assert result.summary().startswith("no /dev/kvm: only type: qemu")


def test_probe_when_kvm_never_starts_falls_back_to_qemu_and_then_gives_up() -> None:
    qemu_only = hostprobe.probe(FakeHost(lambda xml: 'type="qemu"' in xml),  # type: ignore[arg-type]
                                kvm_present=lambda: True)  # fmt: skip
    assert qemu_only.defaults == VmDefaults(type="qemu") and len(qemu_only.attempts) == 4
    nothing = hostprobe.probe(FakeHost(lambda xml: False),  # type: ignore[arg-type]
                              kvm_present=lambda: True)  # fmt: skip
    assert nothing.defaults is None and nothing.summary().startswith("no VM starts")


def test_write_config_adds_to_a_file_and_never_overwrites(tmp_path: Path) -> None:
    amd = hostprobe.ProbeResult(VmDefaults(cpu={"features": {"arch-capabilities": "disable"}}),
                                True, ())  # fmt: skip
    fresh = tmp_path / "new" / "config.yaml"
    assert "wrote vmDefaults" in hostprobe.write_config(fresh, amd)
    assert load_settings(config_path=fresh, environ={}).vm_defaults.cpu == {
        "features": {"arch-capabilities": "disable"}}

    kept = tmp_path / "config.yaml"
    kept.write_text("uri: qemu:///system\nprune: false")  # no final newline
    hostprobe.write_config(kept, amd)
    settings = load_settings(config_path=kept, environ={})
    assert settings.prune is False and settings.vm_defaults.cpu == {
        "features": {"arch-capabilities": "disable"}}
    before = kept.read_text()
    assert "left as it is" in hostprobe.write_config(kept, amd)
    assert kept.read_text() == before
    nothing = tmp_path / "none.yaml"
    assert "no vmDefaults needed" in hostprobe.write_config(
        nothing, hostprobe.ProbeResult(VmDefaults(), True, ()))
    assert not nothing.exists()
    assert yaml.safe_load(hostprobe.defaults_yaml(VmDefaults(type="qemu"))) == {
        "vmDefaults": {"type": "qemu"}}


def _amd_result(error: str = "failed to set MSR 0x10a") -> hostprobe.ProbeResult:
    amd = VmDefaults(cpu={"features": {"arch-capabilities": "disable"}})
    return hostprobe.ProbeResult(amd, True, (hostprobe.Attempt(VmDefaults(), error),
                                             hostprobe.Attempt(amd, None)))  # fmt: skip


def test_write_config_keeps_a_multi_line_libvirt_error_on_one_comment_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    error = ("internal error: qemu unexpectedly closed the monitor: failed to set MSR 0x10a\n"
             "qemu-system-x86_64: kvm.c:2893: kvm_buf_set_msrs: Assertion `ret == n' failed.")
    hostprobe.write_config(path, _amd_result(error))
    assert load_settings(config_path=path, environ={}).vm_defaults.cpu == {
        "features": {"arch-capabilities": "disable"}}
    [comment] = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert "kvm_buf_set_msrs" in comment


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{stateDir: /srv/state, prune: false}\n', "its style"),
        ('{"stateDir": "/srv/state"}', "its style"),
        ("prune: false\n...\n", "its style"),
        ("stateDir: [unclosed\n", "not a valid configuration"),
        ("- a list\n", "not a valid configuration"),
    ],
)  # fmt: skip
def test_write_config_never_breaks_a_file_it_cannot_append_to(tmp_path: Path, text: str,
                                                              why: str) -> None:  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(hostprobe.ConfigNotWritten) as info:
        hostprobe.write_config(path, _amd_result())
    assert why in str(info.value) and "arch-capabilities: disable" in str(info.value)
    assert path.read_text() == text


def test_write_config_sees_vm_defaults_in_any_spelling(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    for text in ('{"vmDefaults": {"type": "kvm"}}', '"vmDefaults": {type: kvm}\n'):
        path.write_text(text)
        assert "left as it is" in hostprobe.write_config(path, _amd_result())
        assert path.read_text() == text


def test_write_config_follows_no_link_and_reads_no_fifo_or_device(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("secret: 1\n")
    victim.chmod(0o600)
    link = tmp_path / "link.yaml"
    link.symlink_to(victim)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in (link, fifo, Path("/dev/full")):
        with pytest.raises(hostprobe.ConfigNotWritten):
            hostprobe.write_config(path, _amd_result())
    assert victim.read_text() == "secret: 1\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"# caf\xe9\nprune: true\n")
    with pytest.raises(hostprobe.ConfigNotWritten, match="not UTF-8"):
        hostprobe.write_config(latin, _amd_result())


def test_write_config_keeps_the_mode_and_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("prune: false\n")
    path.chmod(0o600)
    hostprobe.write_config(path, _amd_result())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary left
