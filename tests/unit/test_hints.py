"""The hint table (reconciler/hints.py): libvirt's refusals placed in the manifest, with a hint.

Each case uses the text libvirt 9.0 / QEMU 7.2 produce. Where it says
"reproduced", the text was produced on the Debian 12 test host (libvirt 9.0.0,
QEMU 7.2) with ``virsh define``/``start`` of a throwaway domain or network, and
only the timestamp and the names were left as they came. The MSR and no-KVM
texts cannot be produced on that host (an Intel CPU, KVM usable), so they are
taken from issue 9 (seen on an AMD EPYC host running KVM nested), from public
reports of the same QEMU messages, and from the QEMU and libvirt sources, as
each case says.
"""

from __future__ import annotations

import pytest

from reconciler.errors import SourcePosition
from reconciler.hints import RULES, Subjects, explain, match_rule, subjects_of
from reconciler.manifests import load_directory
from reconciler.model import Manifest
from reconciler.references import KnownObjects
from tests.unit.conftest import WriteFiles

STAMP = "2026-11-30T08:50:18.996624Z"
START = "start-domain: starting domain web: "
# a secure-boot VM of type kvm under nested KVM (libvirt 9.0, QEMU 7.2; test_preflight_devices)
NO_SMM = ("internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: "
          "System Management Mode not supported by this hypervisor.")  # fmt: skip

# issue 13 (a newcomer's report): a VM on 2MiB pages started with none free (QEMU 7.2's
# qemu_ram_alloc_from_fd, softmmu/physmem.c, under libvirt's monitor wrapping)
HUGEPAGES = ("internal error: qemu unexpectedly closed the monitor: " + STAMP + " "
             "qemu-system-x86_64: unable to map backing store for guest RAM: Cannot allocate "
             "memory")  # fmt: skip
# reproduced: the same VM on a host with no hugetlbfs mounted when libvirtd started
NO_HUGETLBFS = "internal error: hugetlbfs filesystem is not mounted or disabled by administrator config"
# reproduced (tests/integration/test_newcomer_fixes.py): a NIC with bandwidth on this
# host's kernel, which has htb but no sfq (libvirt runs tc, virnetdevbandwidth.c)
QDISC = ("internal error: Child process (tc qdisc add dev vnet235 parent 1:1 handle 2: sfq "
         "perturb 10) unexpected exit status 2: Error: Specified qdisc kind is unknown.\n")  # fmt: skip

# reproduced: a raw image in a root-owned 0700 directory (libvirt's dynamic
# ownership chowns the file, but QEMU, as libvirt-qemu, cannot enter the directory)
PERMISSION = (
    "internal error: process exited while connecting to monitor: " + STAMP + " "
    'qemu-system-x86_64: -blockdev {"driver":"file","filename":"/srv/locked/data.img",'
    '"node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"}: '
    "Could not open '/srv/locked/data.img': Permission denied"
)
# libvirt's own check (virStorageSourceReportBrokenChain, src/storage_file/
# storage_source.c), met with dynamic_ownership = 0 or on root-squashed NFS
PERMISSION_LIBVIRT = (
    "Cannot access storage file '/srv/locked/data.img' (as uid:64055, gid:107): Permission denied"
)
# reproduced: the disk file does not exist
MISSING = "Cannot access storage file '/srv/images/nope.img': No such file or directory"
# reproduced: two libvirt domains with the same fixed VNC (or SPICE) port
PORT_LIBVIRT = "internal error: Failed to reserve port 5902"
# reproduced: a fixed VNC port held by a program outside libvirt (port 5988 = display 88)
PORT_VNC = (
    "internal error: qemu unexpectedly closed the monitor: " + STAMP + " "
    "qemu-system-x86_64: -vnc 127.0.0.1:88,audiodev=audio1: Failed to find an available "
    "port: Address already in use"
)
# reproduced: a fixed SPICE port held by a program outside libvirt
PORT_SPICE = (
    "internal error: qemu unexpectedly closed the monitor: " + STAMP + " "
    "qemu-system-x86_64: warning: Spice: ../server/reds.cpp:2585:reds_init_socket: binding "
    "socket to 127.0.0.1:5989 failed\n" + STAMP + " qemu-system-x86_64: warning: Spice: "
    "../server/reds.cpp:3442:do_spice_init: Failed to open SPICE sockets\n" + STAMP + " "
    "qemu-system-x86_64: failed to initialize spice server"
)
# QEMU's inet_listen_saddr (util/qemu-sockets.c) with the port taken
PORT_BIND = "qemu-system-x86_64: -vnc 0.0.0.0:2: Failed to bind socket: Address already in use"
# reproduced: virsh net-destroy of the VM's network, then a start of the VM
NETWORK_INACTIVE = "Requested operation is not valid: network 'lab' is not active"
# reproduced: the VM's network undefined
NETWORK_MISSING = "Network not found: no network with matching name 'lab'"
# issue 9 (AMD EPYC, KVM nested), as libvirt wraps QEMU's exit; the same two lines in
# asterinas/asterinas#2980 (GitHub runners) and, wrapped so, in kubevirt/kubevirt#5068
MSR = (
    "internal error: qemu unexpectedly closed the monitor: " + STAMP + " "
    "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
    "qemu-system-x86_64: ../target/i386/kvm/kvm.c:3870: kvm_buf_set_msrs: Assertion "
    "`ret == cpu->kvm_msr_buf->nmsrs' failed."
)
# kubevirt/kubevirt#5068: another MSR (0x48e) the nested KVM refuses
MSR_OTHER = (
    "internal error: qemu unexpectedly closed the monitor: " + STAMP + " "
    "qemu-kvm: error: failed to set MSR 0x48e to 0xfff9fffe04006172\nqemu-kvm: "
    "/builddir/build/BUILD/qemu-5.1.0/target/i386/kvm.c:2713: kvm_buf_set_msrs: Assertion "
    "`ret == cpu->kvm_msr_buf->nmsrs' failed."
)
# QEMU 7.2 kvm_init (accel/kvm/kvm-all.c): "Could not access KVM kernel module: %m",
# then vl.c: "failed to initialize kvm: %s"; here /dev/kvm is not the qemu user's
NO_KVM_QEMU = (
    "internal error: process exited while connecting to monitor: " + STAMP + " "
    "qemu-system-x86_64: Could not access KVM kernel module: Permission denied\n"
    + STAMP
    + " qemu-system-x86_64: failed to initialize kvm: Permission denied"
)
# libvirt 9.0 (src/qemu/qemu_capabilities.c) at define time, with no usable /dev/kvm
NO_KVM_LIBVIRT = (
    "unsupported configuration: Emulator '/usr/bin/qemu-system-x86_64' does not support "
    "virt type 'kvm'"
)
# libvirt's capabilities lookup (src/conf/capabilities.c) for a kvm domain on such a host
NO_KVM_CAPS = "invalid argument: could not find capabilities for domaintype=kvm "
# reproduced: a network whose subnet another running network already routes
SUBNET = "internal error: Network is already in use by interface virbr10"
# reproduced: a network defined with the bridge name of another one
BRIDGE = "internal error: bridge name 'virbr10' already in use."

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: web}
spec:
  type: kvm
  memory: 64MiB
  vcpus: 1
  cpu: host-passthrough
  disks:
    - volume: root
    - file: /srv/locked/data.img
      format: raw
  cdroms:
    - file: /srv/iso/install.iso
  interfaces:
    - bridge: br0
    - network: lab
  graphics:
    type: vnc
    port: 5902
"""

NET = """
apiVersion: reconciler/v1
kind: Network
metadata: {name: lab}
spec:
  mode: isolated
  bridge: virbr10
  ipv4: {address: 10.254.9.1, prefix: 24}
"""


def manifest(write: WriteFiles, text: str) -> Manifest:
    known = KnownObjects(frozenset({"lab"}), frozenset({"images"}),
                         frozenset({("images", "root")}), consulted=True)  # fmt: skip
    result = load_directory(write(**{"m.yaml": text}), known=known)
    assert result.problems == (), result.problems
    [m] = result.manifests
    return m


@pytest.fixture
def web(write: WriteFiles) -> Subjects:
    paths = {"root": "/var/lib/libvirt/images/root"}
    return subjects_of(manifest(write, VM), paths.get)


def at(problem: object) -> str:
    """``file:line:col: field`` of a problem's text (the file name only)."""
    text = str(problem)
    head = text.split(": ")[:2]
    return head[0].rsplit("/", 1)[-1] + ": " + head[1]


def test_storage_permission_names_the_disk_and_the_directory(web: Subjects) -> None:
    problem = explain(START + PERMISSION, web)
    assert problem.field == "spec.disks[1].file"
    assert at(problem) == "m.yaml:11:13: spec.disks[1].file"
    assert problem.message == START + PERMISSION  # libvirt's text, unchanged
    assert "/srv/locked/data.img" in problem.hint and "chmod 0755 /srv/locked" in problem.hint
    assert "libvirt-qemu" in problem.hint and "allowedDiskRoots" in problem.hint
    assert str(problem).endswith("Permission denied; " + problem.hint)


def test_storage_permission_of_libvirt_and_of_a_volume_file(web: Subjects) -> None:
    assert explain(PERMISSION_LIBVIRT, web).field == "spec.disks[1].file"
    volume = PERMISSION.replace("/srv/locked/data.img", "/var/lib/libvirt/images/root")
    problem = explain(volume, web)
    assert problem.field == "spec.disks[0].volume"
    assert "chmod 0755 /var/lib/libvirt/images" in problem.hint


def test_storage_permission_of_a_file_the_manifest_does_not_name(web: Subjects) -> None:
    other = PERMISSION.replace("/srv/locked/data.img", "/elsewhere/x.img")
    problem = explain(other, web)
    assert problem.field == "" and problem.position == web.source
    assert "/elsewhere/x.img" in problem.hint


def test_missing_file(web: Subjects) -> None:
    problem = explain(MISSING.replace("/srv/images/nope.img", "/srv/iso/install.iso"), web)
    assert problem.field == "spec.cdroms[0].file"
    assert "does not exist" in problem.hint


@pytest.mark.parametrize(("text", "port"), [(PORT_LIBVIRT, 5902), (PORT_VNC, 5988),
                                            (PORT_SPICE, 5989), (PORT_BIND, 5902)])  # fmt: skip
def test_port_in_use(web: Subjects, text: str, port: int) -> None:
    problem = explain(START + text, web)
    assert problem.field == "spec.graphics.port"
    assert at(problem) == "m.yaml:20:11: spec.graphics.port"
    assert f"port {port} is already taken" in problem.hint
    assert "graphics.port: auto" in problem.hint


def test_network_not_active(web: Subjects) -> None:
    problem = explain(START + NETWORK_INACTIVE, web)
    assert at(problem) == "m.yaml:17:16: spec.interfaces[1].network"
    assert "virsh net-start lab" in problem.hint and "state: active" in problem.hint


def test_network_missing(web: Subjects) -> None:
    problem = explain(NETWORK_MISSING, web)
    assert problem.field == "spec.interfaces[1].network"
    assert "Network manifest" in problem.hint


def test_msr_arch_capabilities_names_the_feature_and_where(web: Subjects) -> None:
    problem = explain(START + MSR, web)
    assert at(problem) == "m.yaml:8:8: spec.cpu"
    hint = problem.hint
    assert "arch-capabilities" in hint and "IA32_ARCH_CAPABILITIES" in hint
    assert "/etc/reconciler/config.yaml" in hint
    assert "vmDefaults: {cpu: {features: {arch-capabilities: disable}}}" in hint
    assert "spec.cpu: {features: {arch-capabilities: disable}}" in hint
    assert "scripts/setup-host.sh" in hint


def test_msr_other_register(web: Subjects) -> None:
    problem = explain(MSR_OTHER, web)
    assert problem.field == "spec.cpu"
    assert "0x48e" in problem.hint and "arch-capabilities" not in problem.hint


def test_msr_without_cpu_field_points_at_type(write: WriteFiles) -> None:
    bare = manifest(write, VM.replace("  cpu: host-passthrough\n", ""))
    assert explain(MSR, subjects_of(bare)).field == "spec.type"


@pytest.mark.parametrize("text", [NO_KVM_QEMU, NO_KVM_LIBVIRT, NO_KVM_CAPS,
                                  "KVM is not available"])  # fmt: skip
def test_no_kvm(web: Subjects, text: str) -> None:
    problem = explain(text, web)
    assert at(problem) == "m.yaml:5:9: spec.type"
    assert "type: qemu" in problem.hint and "/dev/kvm" in problem.hint
    assert "0660" in problem.hint and "scripts/setup-host.sh" in problem.hint


def test_no_kvm_is_not_a_storage_permission_problem() -> None:
    rule = match_rule(NO_KVM_QEMU)
    assert rule is not None and rule[0].name == "no-kvm"


def test_network_start_subnet_and_bridge(write: WriteFiles) -> None:
    lab = subjects_of(manifest(write, NET))
    problem = explain("start-network: starting network lab: " + SUBNET, lab)
    assert problem.field == "spec.ipv4" and "virbr10" in problem.hint
    problem = explain("define-network: defining network: " + BRIDGE, lab)
    assert problem.field == "spec.bridge" and "virbr10" in problem.hint


def test_any_other_refusal_is_libvirt_message_at_the_manifest(web: Subjects) -> None:
    text = "operation failed: domain 'web' already exists with uuid 1234"
    problem = explain(text, web)
    assert problem.message == text and problem.hint == "" and problem.field == ""
    assert str(problem) == f"{web.source}: {text}"
    assert str(web.source).endswith("m.yaml:1:1")


def test_without_manifest_fields_the_position_is_the_source() -> None:
    source = SourcePosition("vms/web.yaml", 3, 1)
    problem = explain(PORT_LIBVIRT, Subjects(source))
    assert problem.position == source and "port 5902" in problem.hint


def test_every_rule_is_reached() -> None:
    texts = [MSR, NO_SMM, HUGEPAGES, NO_HUGETLBFS, QDISC, NO_KVM_QEMU, PORT_VNC, NETWORK_INACTIVE, NETWORK_MISSING,
             PERMISSION, MISSING, SUBNET, BRIDGE]  # fmt: skip
    found = [match_rule(t) for t in texts]
    assert [f[0].name for f in found if f] == [r.name for r in RULES]


TUNED = VM.replace("  graphics:\n", """  memoryBacking: {hugepages: {pageSize: 2MiB}}
  machine: q35
  firmware: {type: uefi, secureBoot: true}
  graphics:
""").replace("    - network: lab\n", """    - network: lab
      bandwidth: {inbound: {average: 1024}}
""")


def test_start_failures_of_tuning_name_the_field_and_the_fix(write: WriteFiles) -> None:
    """Issue 13: these were reported at the manifest's start (m.yaml:1:1), no hint."""
    tuned = subjects_of(manifest(write, TUNED))
    problem = explain(START + HUGEPAGES, tuned)
    assert problem.field == "spec.memoryBacking.hugepages"
    assert at(problem) == "m.yaml:19:30: spec.memoryBacking.hugepages"
    assert "sysctl vm.nr_hugepages=N" in problem.hint
    assert "/sys/kernel/mm/hugepages/" in problem.hint
    problem = explain(START + NO_HUGETLBFS, tuned)
    assert problem.field == "spec.memoryBacking.hugepages" and "hugetlbfs" in problem.hint
    problem = explain(START + QDISC, tuned)
    assert problem.field == "spec.interfaces[1].bandwidth" and "sch_htb sch_sfq" in problem.hint
    problem = explain(START + NO_SMM, tuned)
    assert problem.field == "spec.firmware.secureBoot"
    assert "secureBoot: false" in problem.hint and "type: qemu" in problem.hint


def test_a_backing_store_failure_without_hugepages_is_about_memory(write: WriteFiles) -> None:
    problem = explain(START + HUGEPAGES, subjects_of(manifest(write, VM)))
    assert problem.field == "spec.memory" and "free memory" in problem.hint
