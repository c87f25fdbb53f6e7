"""Every host path a manifest can name passes one check; a refused password file is never read."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from reconciler import hostpaths
from reconciler.hostpaths import HostPath, PathPolicy, host_paths, read_secret
from reconciler.manifests import load_directory
from reconciler.model import Kind
from reconciler.plan import Op
from reconciler.planner import PlanOptions, make_plan
from reconciler.reconcile import read_secrets
from reconciler.snapshot import Observed
from tests.unit.conftest import WriteFiles

POOL = """
apiVersion: reconciler/v1
kind: StoragePool
metadata: {name: images}
spec: {path: %(pool)s}
"""
VOLUME = """
apiVersion: reconciler/v1
kind: Volume
metadata: {name: root}
spec: {pool: images, capacity: 1GiB, source: %(source)s}
"""
VM = """
apiVersion: reconciler/v1
kind: VirtualMachine
metadata: {name: web}
spec:
  memory: 512MiB
  vcpus: 1
  disks: [{file: %(disk)s}]
  cdroms: [{file: %(iso)s}]
  kernel: %(kernel)s
  initrd: %(initrd)s
  serial: {file: %(log)s}
  graphics: {type: vnc, passwordFile: %(password)s}
"""


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path, PathPolicy]:
    disks, secrets = tmp_path / "disks", tmp_path / "secrets"
    disks.mkdir()
    secrets.mkdir()
    return disks, secrets, PathPolicy((disks,), (secrets,))


def inside(disks: Path, secrets: Path) -> dict[str, str]:
    return {
        "pool": f"{disks}/pool", "source": f"{disks}/base.qcow2", "disk": f"{disks}/d.img",
        "iso": f"{disks}/x.iso", "kernel": f"{disks}/vmlinuz", "initrd": f"{disks}/initrd",
        "log": f"{disks}/serial.log", "password": f"{secrets}/vnc",
    }  # fmt: skip


FIELDS = {  # placeholder -> (kind, name, field as named in the message)
    "pool": (Kind.STORAGE_POOL, "images", "path"),
    "source": (Kind.VOLUME, "root", "source"),
    "disk": (Kind.VIRTUAL_MACHINE, "web", "disks[0].file"),
    "iso": (Kind.VIRTUAL_MACHINE, "web", "cdroms[0].file"),
    "kernel": (Kind.VIRTUAL_MACHINE, "web", "kernel"),
    "initrd": (Kind.VIRTUAL_MACHINE, "web", "initrd"),
    "log": (Kind.VIRTUAL_MACHINE, "web", "serial.file"),
    "password": (Kind.VIRTUAL_MACHINE, "web", "graphics.passwordFile"),
}


def test_every_host_path_field_is_listed(write: WriteFiles, roots: tuple[Path, Path, Any]) -> None:
    disks, secrets, _ = roots
    values = inside(disks, secrets)
    result = load_directory(write(**{"a.yaml": "---".join([POOL, VOLUME, VM]) % values}))
    assert result.problems == ()
    listed = {(m.kind, hp.field): hp for m in result.manifests for hp in host_paths(m)}
    assert set(listed) == {(kind, field) for kind, _, field in FIELDS.values()}
    assert [hp.field for hp in listed.values() if hp.secret] == ["graphics.passwordFile"]


@pytest.mark.parametrize("placeholder", list(FIELDS))
def test_each_field_outside_its_roots_is_refused_naming_field_and_path(
    write: WriteFiles, roots: tuple[Path, Path, PathPolicy], placeholder: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    disks, secrets, policy = roots
    values = inside(disks, secrets)
    (secrets / "vnc").write_text("s3cret\n")
    outside = "/etc/shadow" if placeholder == "password" else "/etc/reconciler-test/x"
    values[placeholder] = outside
    result = load_directory(write(**{"a.yaml": "---".join([POOL, VOLUME, VM]) % values}))
    assert result.problems == ()
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(hostpaths.os, "open", lambda p, *a: opened.append(str(p)) or real_open(p, *a))
    secrets_read = read_secrets(result.manifests, policy)
    assert "/etc/shadow" not in opened and "/etc/shadow" not in secrets_read
    plan = make_plan(result, Observed(), PlanOptions(secrets=secrets_read, paths=policy))
    kind, name, field = FIELDS[placeholder]
    refused = [a for a in plan.actions if a.op is Op.ERROR]
    assert [(a.kind, a.name) for a in refused] == [(kind, name)]
    reason = refused[0].reason
    setting = "allowedSecretRoots" if placeholder == "password" else "allowedDiskRoots"
    assert f"{field} {outside} is outside {setting} (" in reason
    # placed at its field, as preflight places its problems
    assert re.search(r"a\.yaml:\d+:\d+: " + re.escape(f"{field} {outside}"), reason), reason
    assert "\n" not in reason
    assert not any(a.steps for a in refused)
    assert plan.has_errors


def test_inside_the_roots_everything_is_planned(
    write: WriteFiles, roots: tuple[Path, Path, PathPolicy]
) -> None:
    disks, secrets, policy = roots
    (secrets / "vnc").write_text("s3cret\nignored\n")
    result = load_directory(write(**{"a.yaml": "---".join([POOL, VOLUME, VM])
                                     % inside(disks, secrets)}))  # fmt: skip
    secrets_read = read_secrets(result.manifests, policy)
    assert secrets_read == {f"{secrets}/vnc": "s3cret"}
    plan = make_plan(result, Observed(), PlanOptions(secrets=secrets_read, paths=policy))
    assert [a.op for a in plan.actions] == [Op.CREATE] * 3


def test_a_password_file_in_the_disk_roots_is_refused_and_a_disk_in_the_secret_roots(
    roots: tuple[Path, Path, PathPolicy],
) -> None:
    disks, secrets, policy = roots
    (disks / "pw").write_text("x\n")
    assert policy.refusal(HostPath("graphics.passwordFile", f"{disks}/pw", secret=True))
    assert read_secret(HostPath("graphics.passwordFile", f"{disks}/pw", secret=True), policy) is None
    assert policy.refusal(HostPath("disks[0].file", f"{secrets}/vnc"))


def test_symlinks_are_resolved_before_the_check(roots: tuple[Path, Path, PathPolicy]) -> None:
    disks, secrets, policy = roots
    (secrets / "vnc").symlink_to("/etc/hostname")
    (disks / "up").symlink_to("/etc")
    refusal = policy.refusal(HostPath("graphics.passwordFile", f"{secrets}/vnc", secret=True))
    assert refusal is not None and "resolves to /etc/hostname" in refusal
    assert read_secret(HostPath("graphics.passwordFile", f"{secrets}/vnc", secret=True), policy) is None
    assert policy.refusal(HostPath("path", f"{disks}/up/x"))
    assert policy.refusal(HostPath("path", f"{disks}/../elsewhere"))
    assert policy.refusal(HostPath("path", "relative/x")) == "path relative/x is not an absolute path"


def test_a_fifo_or_device_password_file_is_not_read(roots: tuple[Path, Path, PathPolicy]) -> None:
    _, secrets, policy = roots
    os.mkfifo(secrets / "fifo")
    assert read_secret(HostPath("graphics.passwordFile", f"{secrets}/fifo", secret=True), policy) is None
    (secrets / "big").write_bytes(b"x" * (hostpaths.MAX_SECRET + 1))
    assert read_secret(HostPath("graphics.passwordFile", f"{secrets}/big", secret=True), policy) is None


def test_no_roots_means_no_restriction() -> None:
    policy = PathPolicy(None, None)
    assert policy.refusal(HostPath("path", "/etc")) is None
