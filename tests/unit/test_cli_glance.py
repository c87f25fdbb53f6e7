"""The command line at a glance: global options anywhere, the state directory checked,
``delete``'s guards and its plan, ``--show-xml``. Pure parts only (no libvirt); the
command against libvirtd is tests/integration/test_delete_cli.py."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.errors import ReconcilerError
from reconciler.export import Ref
from reconciler.model import Kind
from reconciler.plan import Op
from reconciler.planner import plan_delete
from reconciler.report import mask_secrets, render_plan, render_xml
from tests.unit.plan_text_support import applied, load_text, plan_edit, stack

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"


# --- global options ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-o", "json", "--log-format", "json", "--connect", "test:///default",
         "--state-dir", "/s", "--config", "/c.yaml", "--host", "h", "plan", "d"],
        ["plan", "d", "-o", "json", "--log-format", "json", "--connect", "test:///default",
         "--state-dir", "/s", "--config", "/c.yaml", "--host", "h"],
        ["--output", "json", "-c", "test:///default", "plan", "--log-format", "json", "d",
         "--state-dir", "/s", "--config", "/c.yaml", "--host", "h"],
    ],
)  # fmt: skip
def test_global_options_go_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = cli.parse_args(argv)
    assert (args.command, args.directory, args.output, args.log_format) == (
        "plan", "d", "json", "json",
    )  # fmt: skip
    assert (args.connect, args.state_dir, str(args.config), args.host) == (
        "test:///default", "/s", "/c.yaml", "h",
    )  # fmt: skip


def test_global_options_given_nowhere_take_their_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECONCILER_LOG_FORMAT", raising=False)
    args = cli.parse_args(["status"])
    assert (args.output, args.log_format, args.config, args.connect, args.state_dir) == (
        "text", "auto", None, None, None,
    )  # fmt: skip
    args = cli.parse_args(["export", "--all", "-c", "test:///default"])
    assert args.connect == "test:///default" and args.everything


# --- the state directory --------------------------------------------------------


def test_a_missing_state_directory_is_created_private(tmp_path: Path) -> None:
    made = cli.usable_state_dir(tmp_path / "a" / "state")
    assert made.is_dir() and stat.S_IMODE(made.stat().st_mode) == 0o700
    assert not list(made.iterdir())  # the write probe leaves nothing behind


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("/proc/reconciler-test", "/proc/reconciler-test: cannot create the state directory: "),
        ("FILE", "FILE: the state directory is not a folder; "),
        ("FILE/state", "FILE/state: cannot create the state directory: Not a directory; "),
    ],
)
def test_a_state_directory_that_cannot_be_used_is_an_error_naming_it(
    tmp_path: Path, where: str, expected: str
) -> None:
    file = tmp_path / "file"
    file.write_text("in the way\n")
    with pytest.raises(ReconcilerError) as caught:
        cli.usable_state_dir(Path(where.replace("FILE", str(file))))
    message = str(caught.value).replace(str(file), "FILE")
    assert message.startswith(expected), message
    assert "\n" not in message


def test_plan_with_an_impossible_state_directory_says_so_in_one_line(tmp_path: Path) -> None:
    """A state directory that cannot be read is one line. (A missing one is no error:
    plan creates nothing and plans with no inventory; apply creates it.)"""
    file = tmp_path / "file"
    file.write_text("in the way\n")
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "manifests/examples",
         "--state-dir", str(file), "--connect", "test:///default"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"reconciler: error: {file}: the state directory is not a "
                           "folder; "), line


# --- delete: guards and plan ------------------------------------------------------


def test_delete_refuses_an_object_reconciler_does_not_manage(tmp_path: Path) -> None:
    observed = applied(load_text(tmp_path / "m", stack()))
    owned = observed.inventory.objects
    assert cli.delete_keys([Ref(Kind.VIRTUAL_MACHINE, "web")], owned, tmp_path) == [
        "VirtualMachine/web"
    ]
    with pytest.raises(ReconcilerError, match=r"^delete: Network/default: not managed by "
                       r"reconciler \(not in .*/inventory.json\)"):  # fmt: skip
        cli.delete_keys([Ref(Kind.NETWORK, "default")], owned, tmp_path)
    with pytest.raises(ReconcilerError, match=r"^delete: Volume/other/web-root: not managed"):
        cli.delete_keys([Ref(Kind.VOLUME, "web-root", "other")], owned, tmp_path)


def test_delete_refuses_what_a_manifest_still_declares(tmp_path: Path) -> None:
    load_text(tmp_path / "m", stack())
    with pytest.raises(ReconcilerError) as caught:
        cli._refuse_declared(["Volume/web-data", "Volume/gone"], tmp_path / "m", "host")
    assert str(caught.value) == (
        f"delete: Volume/web-data (declared at {tmp_path}/m/stack.yaml:11:1): the next apply "
        "would create it again; remove the manifest first (then apply deletes it, or run "
        "delete again)"
    )
    cli._refuse_declared(["Volume/gone"], tmp_path / "m", "host")  # not declared: fine
    cli._refuse_declared(["Volume/web-data"], tmp_path / "none", "host")  # no directory


def test_deleting_a_retained_volume_keeps_its_data_unless_asked(tmp_path: Path) -> None:
    text = stack().replace("capacity: 20GiB, reclaimPolicy: delete", "capacity: 20GiB")
    observed = applied(load_text(tmp_path / "m", text))
    kept = plan_delete(["Volume/web-data"], observed)
    [action] = kept.actions
    assert (action.op, action.steps) == (Op.FORGET, ())
    assert render_plan(kept) == (
        "- Volume web-data: forget\n"
        "    deleted on request; reclaimPolicy retain keeps its data (pass --delete-data to "
        "delete it)\n\n"
        "Plan: 0 to create, 0 to update, 0 to delete. 1 to forget (data kept)."
    )
    gone = plan_delete(["Volume/web-data"], observed, delete_data=True)
    assert [(a.op, [s.verb for s in a.steps]) for a in gone.actions] == [
        (Op.DELETE, ["delete-volume"])
    ]
    assert "!! deletes the volume and its data" in render_plan(gone)


def test_delete_stops_vms_first_and_says_how(tmp_path: Path) -> None:
    observed = applied(load_text(tmp_path / "m", stack()))
    plan = plan_delete(["Network/lab", "Volume/web-data", "VirtualMachine/web"], observed)
    assert [a.key for a in plan.actions] == [
        "VirtualMachine/web", "Network/lab", "Volume/web-data",
    ]  # fmt: skip
    assert render_plan(plan) == """\
- VirtualMachine web: delete
    deleted on request
    !! shuts the VM down: ACPI shutdown, forced off after 120s
- Network lab: delete
    deleted on request
- Volume web-data: delete
    deleted on request; reclaimPolicy delete
    !! deletes the volume and its data

Plan: 0 to create, 0 to update, 3 to delete."""


# --- --show-xml -------------------------------------------------------------------


def test_show_xml_diffs_updates_and_prints_new_definitions(tmp_path: Path) -> None:
    before = stack()
    after = stack(vm="\n  machine: q35\n  graphics: {passwordFile: /etc/vnc-pass}").replace(
        "kind: Volume\nmetadata: {name: web-data}", "kind: Volume\nmetadata: {name: web-logs}"
    )
    plan = plan_edit(tmp_path, before, after, secrets={"/etc/vnc-pass": "s3cret"})
    text = re.sub(r"sha256:[0-9a-f]{64}", "sha256:...", render_xml(plan))
    text = text.replace(str(tmp_path), "ROOT")
    assert "s3cret" not in text and 'passwd="<secret ' in text
    masked = text.split('passwd="<secret ')[1].split(">")[0]
    text = text.replace(masked, "TOKEN")
    golden = DATA / "show-xml" / "update-and-create.txt"
    if os.environ.get("RECONCILER_REGENERATE") == "1":
        golden.write_text(text + "\n")
    assert text + "\n" == golden.read_text()


def test_masked_passwords_compare_but_cannot_be_read() -> None:
    one = mask_secrets("<graphics type='vnc' passwd='s3cret'/>")
    two = mask_secrets('<graphics passwd="s3cret"/>')
    assert "s3cret" not in one + two and one.startswith("<graphics type='vnc' passwd='<secret ")
    assert one.split("'")[3] == two.split('"')[1]  # the same token for the same password
    assert mask_secrets("<graphics passwd='other'/>") != one.replace(" type='vnc'", "")


def test_delete_warns_of_manifests_that_did_not_load_not_of_an_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    cli._refuse_declared(["Volume/web-data"], tmp_path / "empty", "host")
    assert capsys.readouterr().err == ""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.yaml").write_text("kind: [\n")
    cli._refuse_declared(["Volume/web-data"], broken, "host")
    assert capsys.readouterr().err == (
        f"reconciler: warning: {broken}/bad.yaml did not load; not checked for manifests "
        "of these objects\n"
    )


def test_a_managed_object_gone_from_libvirt_is_named_by_the_inventory() -> None:
    owned = {"VirtualMachine/web": {}, "Volume/root": {"pool": "images"}, "Network/web": {}}
    assert cli.gone_keys("web", owned) == ["VirtualMachine/web", "Network/web"]
    assert cli.gone_keys("virtualmachine/web", owned) == ["VirtualMachine/web"]
    assert cli.gone_keys("Volume/images/root", owned) == ["Volume/root"]
    assert cli.gone_keys("Volume/other/root", owned) == []
    assert cli.gone_keys("nothing", owned) == []


def test_status_stops_listing_what_delete_removed(tmp_path: Path) -> None:
    from dataclasses import replace

    from reconciler.status import read_status, write_status
    from tests.unit.test_status import SAMPLE

    write_status(tmp_path, SAMPLE)
    first = SAMPLE.objects[0]
    cli._drop_from_status(tmp_path, {f"{first.kind}/{first.name}"})
    assert read_status(tmp_path) == replace(SAMPLE, objects=SAMPLE.objects[1:])
    cli._drop_from_status(tmp_path / "none", {"VirtualMachine/x"})  # no status: nothing
