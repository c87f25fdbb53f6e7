"""passstatus.py: manifests that fail to load are failed objects in the status, named by
their document when it can be read, else by their file; the report apply writes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from reconciler.manifests import load_unchecked
from reconciler.passstatus import apply_report, failed_manifests, load_error, with_load_failures
from reconciler.status import ObjectState, ObjectStatus

NOW = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)

GOOD = """\
apiVersion: reconciler/v1
kind: Network
metadata:
  name: {name}
spec:
  mode: isolated
"""
BAD_FIELD = """\
apiVersion: reconciler/v1
kind: VirtualMachine
metadata:
  name: web-1
spec:
  memory: 1 GB
  vcpus: 1
"""


def problems_of(tmp_path: Path, files: dict[str, str]) -> tuple[object, ...]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return load_unchecked(tmp_path).problems


def test_a_bad_field_fails_the_object_its_document_names(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {"net.yaml": GOOD.format(name="lab"),
                                      "web.yaml": GOOD.format(name="a") + "---\n" + BAD_FIELD})  # fmt: skip
    assert problems
    [status] = failed_manifests(problems, NOW, "3f9c2e1")  # type: ignore[arg-type]
    assert (status.kind, status.name, status.state) == ("VirtualMachine", "web-1",
                                                         ObjectState.FAILED)  # fmt: skip
    assert status.message.startswith(f"{tmp_path}/web.yaml:13:") and "spec.memory" in status.message
    assert status.revision == "3f9c2e1" and status.last_change == NOW


def test_a_file_that_is_not_yaml_is_failed_by_its_path(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {"broken.yaml": "kind: [unclosed\n"})
    [status] = failed_manifests(problems, NOW, None)  # type: ignore[arg-type]
    assert (status.kind, status.name) == ("Manifest", f"{tmp_path}/broken.yaml")
    assert status.state is ObjectState.FAILED and "broken.yaml:" in status.message


def test_a_document_before_a_syntax_error_is_not_blamed(tmp_path: Path) -> None:
    text = GOOD.format(name="fine") + "---\nkind: Network\nmetadata: {name: [oops\n"
    problems = problems_of(tmp_path, {"two.yaml": text})
    [status] = failed_manifests(problems, NOW, None)  # type: ignore[arg-type]
    assert status.kind == "Manifest"


def test_several_problems_of_one_document_are_one_object(tmp_path: Path) -> None:
    bad = BAD_FIELD.replace("vcpus: 1", "vcpus: many")
    problems = problems_of(tmp_path, {"web.yaml": bad})
    assert len(problems) == 2
    [status] = failed_manifests(problems, NOW, None)  # type: ignore[arg-type]
    assert status.message.endswith("(and 1 more problem)")


def test_a_missing_directory_is_left_to_last_error(tmp_path: Path) -> None:
    problems = load_unchecked(tmp_path / "absent").problems
    assert failed_manifests(problems, NOW, None) == []
    assert (load_error(problems) or "").startswith("1 manifest problem(s); nothing is deleted")
    assert load_error(()) is None


def test_a_planned_object_whose_manifest_fails_becomes_failed(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {"web.yaml": BAD_FIELD})
    planned = [ObjectStatus("VirtualMachine", "web-1", ObjectState.IN_SYNC, "", NOW),
               ObjectStatus("Network", "lab", ObjectState.IN_SYNC, "", NOW)]  # fmt: skip
    merged = with_load_failures(planned, problems, NOW, None)
    assert [(s.name, s.state) for s in merged] == [("web-1", ObjectState.FAILED),
                                                   ("lab", ObjectState.IN_SYNC)]  # fmt: skip


def test_the_report_apply_writes(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {"web.yaml": BAD_FIELD})
    objects = with_load_failures([], problems, NOW, "abc")
    report = apply_report(objects, problems, previous=None, now=NOW, duration=1.5,
                          revision="abc")  # fmt: skip
    assert report.written_by == "apply" and report.reconcile_count == 1
    assert report.connected and report.last_duration == 1.5 and report.revision == "abc"
    assert report.last_error is not None and "manifest problem" in report.last_error
    assert [o.name for o in report.objects] == ["web-1"]
