"""Loading manifests: every bad input gets one clear, placed message; good input loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.manifests import discover, load_directory
from reconciler.model import CpuSpec, Kind, VirtualMachineSpec
from reconciler.references import NOTHING_KNOWN, KnownObjects
from tests.unit.conftest import WriteFiles

VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata:
  name: web-1
spec:
  memory: 1GiB
"""

POOL_AND_VOLUME = """
apiVersion: reconciler/v1
kind: StoragePool
metadata: {name: images}
spec: {path: /var/lib/libvirt/images}
---
apiVersion: reconciler/v1
kind: Volume
metadata: {name: root}
spec: {pool: images, capacity: 1GiB}
"""


def problems(root: Path, known: KnownObjects = NOTHING_KNOWN) -> list[str]:
    return [str(p) for p in load_directory(root.name, known=known).problems]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def vm_with(spec_lines: str) -> str:
    return VM + "".join(f"  {line}\n" for line in spec_lines.strip("\n").splitlines())


# --- files and YAML -----------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    assert [str(p) for p in load_directory("nowhere").problems] == [
        "nowhere: directory does not exist; check the path, or create it"
    ]


def test_empty_directory(write: WriteFiles) -> None:
    root = write(**{"README.md": "not a manifest"})
    assert problems(root) == [
        "m: no manifests found (expected *.yaml or *.yml files); "
        "an empty directory is never applied; it would delete everything"
    ]
    assert not load_directory("m").complete


def test_malformed_yaml(write: WriteFiles) -> None:
    root = write(**{"bad.yaml": "apiVersion: reconciler/v1\nkind: [VirtualMachine\nmetadata: {}\n"})
    [message] = problems(root)
    assert message.startswith("m/bad.yaml:3:")
    assert "not valid YAML" in message


def test_tab_indented_file(write: WriteFiles) -> None:
    root = write(
        **{"tabs.yaml": "apiVersion: reconciler/v1\nkind: Network\nmetadata:\n\tname: x\n"}
    )
    assert problems(root) == [
        "m/tabs.yaml:4:1: tab character where YAML expects spaces; "
        "indent with spaces only; YAML does not allow tabs for indentation"
    ]


def test_non_mapping_document(write: WriteFiles) -> None:
    root = write(**{"list.yaml": "- a\n- b\n"})
    assert problems(root) == [
        "m/list.yaml:1:1: document is a list, expected a mapping; "
        "a manifest has apiVersion, kind, metadata and spec"
    ]


def test_duplicate_yaml_key(write: WriteFiles) -> None:
    root = write(**{"dup.yaml": vm_with("memory: 2GiB")})
    assert problems(root) == [
        "m/dup.yaml:7:3: duplicate key 'memory' (first at line 6); a key may appear once per mapping"
    ]


def test_binary_file(write: WriteFiles) -> None:
    root = write(**{"blob.yaml": b"\x7fELF\x00\x01\x02"})
    assert problems(root) == ["m/blob.yaml: binary file, not YAML text; remove it or rename it"]


def test_not_utf8(write: WriteFiles) -> None:
    root = write(**{"latin.yml": "# caf\xe9\n".encode("latin-1") + VM.encode()})
    assert problems(root) == ["m/latin.yml:1:1: not UTF-8 text; save the file as UTF-8"]


def test_unknown_tag(write: WriteFiles) -> None:
    root = write(**{"tag.yaml": VM.replace("1GiB", "!!python/object:os.system x")})
    [message] = problems(root)
    assert message.startswith(
        "m/tag.yaml:6:11: unsupported YAML tag tag:yaml.org,2002:python/object"
    )


# --- document head and schema ---------------------------------------------------


def test_unknown_kind(write: WriteFiles) -> None:
    root = write(**{"k.yaml": VM.replace("VirtualMachine", "VirtualMachin")})
    assert problems(root) == [
        "m/k.yaml:2:7: kind: 'VirtualMachin' is not a known kind; did you mean 'VirtualMachine'?"
    ]


def test_unknown_api_version(write: WriteFiles) -> None:
    root = write(**{"a.yaml": VM.replace("reconciler/v1", "reconciler/v2")})
    assert problems(root) == [
        "m/a.yaml:1:13: apiVersion: 'reconciler/v2' is not a known apiVersion; "
        "expected reconciler/v1"
    ]


def test_missing_required_field(write: WriteFiles) -> None:
    root = write(**{"m.yaml": VM.replace("  memory: 1GiB\n", "  vcpus: 2\n")})
    assert problems(root) == ["m/m.yaml:5:1: spec.memory: required field is missing"]


def test_extra_field_points_at_key_and_suggests(write: WriteFiles) -> None:
    root = write(**{"x.yaml": vm_with("memroy: 2GiB")})
    assert problems(root) == ["m/x.yaml:7:3: spec.memroy: unknown field; did you mean 'memory'?"]


def test_wrong_type(write: WriteFiles) -> None:
    root = write(**{"t.yaml": vm_with('vcpus: "2"')})
    assert problems(root) == ["m/t.yaml:7:10: spec.vcpus: expected an integer, got string '2'"]


@pytest.mark.parametrize("size", ["1 GB", "-1GiB", "1gb"])
def test_bad_size(write: WriteFiles, size: str) -> None:
    root = write(**{"s.yaml": VM.replace("1GiB", f"'{size}'")})
    assert problems(root) == [
        f"m/s.yaml:6:11: spec.memory: '{size}' is not a size (expected e.g. 1GiB)"
    ]


@pytest.mark.parametrize("mac", ["52:54:00:12:34", "52-54-00-12-34-56", "zz:54:00:12:34:56"])
def test_bad_mac(write: WriteFiles, mac: str) -> None:
    root = write(**{"n.yaml": vm_with(f"interfaces:\n  - bridge: br0\n    mac: '{mac}'")})
    assert problems(root) == [
        f"m/n.yaml:9:12: spec.interfaces[0].mac: '{mac}' is not a MAC address "
        '(expected e.g. "52:54:00:12:34:56")'
    ]


def test_multicast_mac(write: WriteFiles) -> None:
    root = write(
        **{"n.yaml": vm_with("interfaces:\n  - bridge: br0\n    mac: '01:00:5e:00:00:01'")}
    )
    assert problems(root) == [
        "m/n.yaml:9:12: spec.interfaces[0].mac: 01:00:5e:00:00:01 is a multicast address; "
        "the first byte must be even, e.g. 52:54:00:..."
    ]


def test_unquoted_mac_stays_a_string(write: WriteFiles) -> None:
    # YAML 1.1 would read 52:54:00:12:34:56 as a base-60 integer.
    root = write(**{"n.yaml": vm_with("interfaces:\n  - bridge: br0\n    mac: 52:54:00:12:34:56")})
    result = load_directory(root.name)
    assert result.problems == ()
    spec = result.manifests[0].spec
    assert isinstance(spec, VirtualMachineSpec)
    assert spec.interfaces[0].mac == "52:54:00:12:34:56"


def test_enum_suggestion(write: WriteFiles) -> None:
    root = write(**{"e.yaml": vm_with("clock: localtim")})
    assert problems(root) == [
        "m/e.yaml:7:10: spec.clock: 'localtim' is not one of: utc, localtime; "
        "did you mean 'localtime'?"
    ]


def test_bad_name(write: WriteFiles) -> None:
    root = write(**{"n.yaml": VM.replace("web-1", "-web")})
    assert problems(root) == [
        "m/n.yaml:4:9: metadata.name: '-web' is not a valid name (expected 1-64 characters "
        "[A-Za-z0-9_.-], starting with a letter or digit)"
    ]


def test_every_problem_of_a_file_is_reported(write: WriteFiles) -> None:
    root = write(**{"many.yaml": vm_with("vcpus: two\nclock: gmt\nfoo: 1")})
    assert len(problems(root)) == 3


def test_semantic_check_memory_above_max(write: WriteFiles) -> None:
    root = write(**{"m.yaml": vm_with("maxMemory: 512MiB")})
    assert problems(root) == [
        "m/m.yaml:7:14: spec.maxMemory: maxMemory (512MiB) is less than memory (1GiB); "
        "raise maxMemory or lower memory"
    ]


def test_disk_needs_volume_or_file(write: WriteFiles) -> None:
    root = write(**{"d.yaml": vm_with("disks:\n  - bus: virtio")})
    assert problems(root) == [
        "m/d.yaml:8:7: spec.disks[0]: needs exactly one of 'volume', 'file' or 'device'"
    ]


# --- across manifests -----------------------------------------------------------


def test_duplicate_names(write: WriteFiles) -> None:
    root = write(**{"a.yaml": VM, "b.yaml": VM})
    assert problems(root) == [
        "m/b.yaml:4:9: metadata.name: duplicate VirtualMachine 'web-1', first declared at "
        "m/a.yaml:1:1; names are unique per kind; rename or remove one"
    ]


def test_same_name_different_kinds_is_fine(write: WriteFiles) -> None:
    root = write(**{"a.yaml": VM, "b.yaml": POOL_AND_VOLUME.replace("images", "web-1")})
    assert problems(root) == []


def test_dangling_references(write: WriteFiles) -> None:
    root = write(
        **{
            "vm.yaml": vm_with("disks:\n  - volume: rooot\ninterfaces:\n  - network: lab"),
            "storage.yaml": POOL_AND_VOLUME,
        }
    )
    assert problems(root) == [
        "m/vm.yaml:8:15: spec.disks[0].volume: no Volume 'rooot' in the manifests or libvirt "
        "(libvirt was not consulted for unmanaged ones); did you mean 'root'?",
        "m/vm.yaml:10:16: spec.interfaces[0].network: no Network 'lab' in the manifests or "
        "libvirt (libvirt was not consulted for unmanaged ones)",
    ]


def test_reference_to_unmanaged_libvirt_object(write: WriteFiles) -> None:
    root = write(**{"vm.yaml": vm_with("interfaces:\n  - network: default")})
    known = KnownObjects(networks=frozenset({"default"}), consulted=True)
    assert problems(root, known) == []


def test_volume_pool_consistency(write: WriteFiles) -> None:
    root = write(
        **{
            "s.yaml": POOL_AND_VOLUME
            + """---
apiVersion: reconciler/v1
kind: StoragePool
metadata: {name: other}
spec: {path: /srv/other}
---
apiVersion: reconciler/v1
kind: Volume
metadata: {name: clone}
spec: {pool: other, capacity: 512MiB, backingVolume: root}
---
apiVersion: reconciler/v1
kind: Volume
metadata: {name: lost}
spec: {pool: nopool, capacity: 1GiB}
""",
        }
    )
    assert problems(root) == [
        "m/s.yaml:19:54: spec.backingVolume: backing volume 'root' is in pool 'images', not "
        "'other'; a clone lives in the pool of its backing volume",
        "m/s.yaml:19:31: spec.capacity: capacity is smaller than that of backing volume 'root'; "
        "a clone is at least as large as its backing volume",
        "m/s.yaml:24:14: spec.pool: no StoragePool 'nopool' in the manifests or libvirt "
        "(libvirt was not consulted for unmanaged ones)",
    ]


def test_volume_written_by_two_vms(write: WriteFiles) -> None:
    second = vm_with("disks:\n  - volume: root").replace("web-1", "web-2")
    second = second.replace("52:54", "52:55")
    root = write(
        **{
            "a.yaml": vm_with("disks:\n  - volume: root"),
            "b.yaml": second,
            "s.yaml": POOL_AND_VOLUME,
        }
    )
    assert problems(root) == [
        "m/b.yaml:8:15: spec.disks[0].volume: volume 'root' is also attached to VM 'web-1'; "
        "a volume is written by one VM; to share it, attach it readonly"
    ]


def test_network_semantics(write: WriteFiles) -> None:
    root = write(
        **{
            "n.yaml": """
apiVersion: reconciler/v1
kind: Network
metadata: {name: lab}
spec:
  mode: nat
  ipv4:
    address: 10.0.0.1
    prefix: 24
    dhcp: {start: 10.0.1.10, end: 10.0.0.5}
"""
        }
    )
    assert problems(root) == [
        "m/n.yaml:9:19: spec.ipv4.dhcp.start: 10.0.1.10 is outside the network 10.0.0.0/24",
        "m/n.yaml:9:35: spec.ipv4.dhcp.end: range end 10.0.0.5 is before its start 10.0.1.10",
    ]


# --- what loads ----------------------------------------------------------------


def test_discovery_rules(write: WriteFiles) -> None:
    root = write(
        **{
            "a.yaml": VM,
            "sub__deeper__b.yml": VM.replace("web-1", "web-2"),
            ".git__c.yaml": VM,
            ".hidden.yaml": VM,
            "a.yaml~": VM,
            "#a.yaml#": VM,
            "notes.txt": "x",
        }
    )
    assert [p.relative_to(root).as_posix() for p in discover(root)] == [
        "a.yaml",
        "sub/deeper/b.yml",
    ]


def test_multi_document_file_and_empty_documents(write: WriteFiles) -> None:
    root = write(**{"all.yaml": "---\n" + POOL_AND_VOLUME + "---\n---\n" + VM})
    result = load_directory(root.name)
    assert result.problems == ()
    assert [m.key for m in result.manifests] == [
        (Kind.STORAGE_POOL, "images"),
        (Kind.VOLUME, "root"),
        (Kind.VIRTUAL_MACHINE, "web-1"),
    ]
    assert result.complete


def test_host_selection(write: WriteFiles) -> None:
    root = write(
        **{
            "a.yaml": VM.replace("name: web-1", "name: web-1\n  hosts: ['kvm-*']"),
            "b.yaml": VM.replace("name: web-1", "name: web-1\n  hosts: [db-1]"),
        }
    )
    result = load_directory(root.name, host="kvm-3")
    assert result.problems == ()
    assert [m.source.path for m in result.manifests] == ["m/a.yaml"]


def test_one_bad_file_does_not_hide_good_ones(write: WriteFiles) -> None:
    root = write(**{"good.yaml": VM, "bad.yaml": "kind: ["})
    result = load_directory(root.name)
    assert [m.name for m in result.manifests] == ["web-1"]
    assert len(result.problems) == 1
    assert not result.complete


def test_defaults_are_resolved(write: WriteFiles) -> None:
    root = write(
        **{
            "vm.yaml": vm_with(
                "disks:\n  - file: /srv/a.img\n  - file: /srv/b.img\n    bus: sata\n"
                "cdroms:\n  - file: /srv/x.iso\ninterfaces:\n  - bridge: br0"
            )
        }
    )
    [manifest] = load_directory(root.name).manifests
    spec = manifest.spec
    assert isinstance(spec, VirtualMachineSpec)
    assert (spec.memory, spec.max_memory, spec.vcpus, spec.max_vcpus) == (1024**3, 1024**3, 1, 1)
    assert [(d.target, d.bus, d.format) for d in spec.disks] == [
        ("vda", "virtio", "raw"),
        ("sda", "sata", "raw"),
    ]
    assert [(c.target, c.bus) for c in spec.cdroms] == [("hda", "ide")]
    assert spec.cpu == CpuSpec(mode="host-model")
    assert spec.shutdown_timeout == 120.0
    mac = spec.interfaces[0].mac
    assert mac.startswith("52:54:00:")
    # derived MACs are stable across loads
    [again] = load_directory(root.name).manifests
    assert isinstance(again.spec, VirtualMachineSpec)
    assert again.spec.interfaces[0].mac == mac


def test_repository_examples_validate() -> None:
    repo = Path(__file__).resolve().parents[2]
    result = load_directory(repo / "manifests" / "examples")
    assert result.problems == ()
    assert {m.kind for m in result.manifests} == set(Kind)


def test_spec_examples_validate() -> None:
    """SPEC §2's examples, verbatim; they name the stock `default` network and a base image."""
    here = Path(__file__).parent / "data" / "spec_examples"
    known = KnownObjects(
        networks=frozenset({"default"}),
        volumes=frozenset({("images", "win7-base")}),
        consulted=True,
    )
    result = load_directory(here, known=known)
    assert result.problems == ()
    assert len(result.manifests) == 4


# --- what an adopted domain has: libvirt's vocabulary (issue 10) ----------------------


def test_clock_offsets_take_libvirts_attributes(write: WriteFiles) -> None:
    root = write(**{
        "a.yaml": vm_with("clock: {offset: absolute, start: 1234}"),
        "b.yaml": vm_with("clock: {offset: absolute}").replace("name: web", "name: web-b"),
        "c.yaml": vm_with("clock: {offset: utc, start: 5}").replace("name: web", "name: web-c"),
    })
    found = problems(root)
    assert any("spec.clock.start: offset absolute needs start" in p for p in found), found
    assert any("spec.clock.start: start does not go with offset utc" in p for p in found), found
    assert not any("a.yaml" in p for p in found), found


def test_boot_names_device_classes_the_manifest_may_not_hold(write: WriteFiles) -> None:
    # a host CD-ROM drive or no NIC: libvirt's <boot dev> is a class, kept as the
    # domain has it; [] is no <boot dev> at all (boot order per device)
    root = write(**{
        "a.yaml": vm_with("boot: [cdrom, network, disk]"),
        "b.yaml": vm_with("boot: []").replace("name: web", "name: web-b"),
    })
    assert problems(root) == []
    specs = {m.name: m.spec for m in load_directory(root.name).manifests}
    assert [getattr(s, "boot", None) for _, s in sorted(specs.items())] == [
        ("cdrom", "network", "disk"), ()]


def test_cpu_hypervisor_default_is_no_cpu_element(write: WriteFiles) -> None:
    root = write(**{"a.yaml": vm_with("cpu: hypervisor-default")})
    [m] = load_directory(root.name).manifests
    assert isinstance(m.spec, VirtualMachineSpec) and m.spec.cpu is None


def test_text_xml_cannot_keep_is_refused_at_its_line(write: WriteFiles) -> None:
    """A carriage return (XML parsing makes it a newline: never settles) or a control
    character (XML 1.0 cannot hold it) in any text that goes into libvirt's XML."""
    root = write(**{
        "a.yaml": vm_with('kernel: /boot/vmlinuz\ncmdline: "a\\rb"'),
        "b.yaml": vm_with('kernel: /boot/vmlinuz\ncmdline: "\\u0001"').replace("web-1", "web-2"),
        "c.yaml": vm_with('disks: [{file: "/srv/a\\rb.img"}]').replace("web-1", "web-3"),
    })  # fmt: skip
    found = problems(root)
    assert found[0].startswith("m/a.yaml:8:12: spec.cmdline: holds '\\r'"), found
    assert found[1].startswith("m/b.yaml:8:12: spec.cmdline: holds '\\x01'"), found
    assert found[2].startswith("m/c.yaml:7:18: spec.disks[0].file: holds '\\r'"), found
    assert len(found) == 3


def test_one_dns_host_ip_twice_is_refused(write: WriteFiles) -> None:
    root = write(**{"n.yaml": """
apiVersion: reconciler/v1
kind: Network
metadata: {name: lab}
spec:
  mode: nat
  ipv4: {address: 10.0.0.1, prefix: 24}
  dnsHosts:
    - {ip: 10.0.0.5, names: [a]}
    - {ip: 10.0.0.5, names: [b]}
"""})  # fmt: skip
    assert problems(root) == [
        "m/n.yaml:9:12: spec.dnsHosts[1].ip: IP 10.0.0.5 already has an entry at "
        "dnsHosts[0]; list all names under one entry"
    ]
