# PYTHON_ARGCOMPLETE_OK  (argcomplete: this program completes its own arguments)
"""Command line: argument parsing and wiring only; the work happens in the layers below.

``validate`` loads and checks manifests (manifests.py). ``plan`` and
``apply`` run one reconcile pass (reconcile.py): plan touches nothing,
apply carries out the very plan it printed. With ``--git`` they take the
manifests from the configured git source (gitsource.py) instead of DIR:
``apply --git`` fetches, checks and switches to the ref's commit as the
daemon would, ``plan --git`` fetches and checks it without switching. Exit codes: validate 0 clean /
1 problems; plan 0 no changes / 2 changes / 1 error; apply 0 / 1.

``apply`` also writes the status file the daemon writes (passstatus.py), which
``status`` shows (``--watch``: again and again, status.watch); status exits 1
when something failed or is in conflict.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from reconciler import __version__, statedir
from reconciler.atomicfile import write_atomically
from reconciler.errors import HypervisorError, ReconcilerError
from reconciler.hostdefaults import apply_vm_defaults
from reconciler.hostpaths import PathPolicy
from reconciler.lock import StateLock
from reconciler.manifests import (
    LoadResult,
    check_against,
    drop_findings,
    load_file,
    load_unchecked,
    selects_host,
)
from reconciler.model import Kind
from reconciler.preflight import path_problems
from reconciler.references import KnownObjects
from reconciler.report import (
    dumps,
    plan_json,
    problem_json,
    render_plan,
    render_results,
    render_unsettled,
    results_json,
)
from reconciler.settings import Settings, load_settings

if TYPE_CHECKING:
    from reconciler.inventory import Inventory

NO_INSTANCE_NOTE = (
    "this state directory has no instance id yet (plan writes nothing; the first apply "
    "makes one): no object recorded by a reconciler instance is counted as its own"
)
NO_STATE_NOTE = (
    "no state directory yet (plan creates nothing; the first apply makes it): planned with "
    "no inventory, so nothing counts as this instance's own"
)
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Declarative reconciler for KVM/libvirt hosts.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    _add_global(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = _command(
        sub, "validate",
        help="check manifests: schema, fields, references (exit 0 clean, 1 problems)",
    )  # fmt: skip
    validate.add_argument("directory", help="folder of manifests (searched recursively)")
    validate.add_argument(
        "--offline",
        action="store_true",
        help="do not ask libvirt about unmanaged objects that manifests name",
    )
    validate.set_defaults(run=_validate)

    plan = _command(
        sub, "plan",
        help="show what apply would change; touches nothing (exit 0 none, 2 changes, 1 error)",
    )
    plan.add_argument("directory", nargs="?", help="folder of manifests")
    _add_git(
        plan,
        "plan the commit the configured source.git ref points to (fetched and "
        "checked as the daemon does; not switched to)",
    )
    _add_engine(plan)
    plan.add_argument(
        "--verbose", "-v", action="store_true", help="also list unchanged objects and steps"
    )
    _add_show_xml(plan)
    plan.set_defaults(run=_plan)

    apply = _command(sub, "apply", help="make libvirt match the manifests (exit 0 done, 1 error)")
    apply.add_argument("directory", nargs="?", help="folder of manifests")
    _add_git(
        apply,
        "apply the commit the configured source.git ref points to (fetched, "
        "checked and switched to, as the daemon does)",
    )
    _add_engine(apply)
    apply.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    apply.add_argument(
        "--allow-replace",
        action="append",
        default=[],
        metavar="KIND/NAME",
        help="allow a data-losing replace of this object (e.g. Volume/db-root); repeatable",
    )
    apply.add_argument("--verbose", "-v", action="store_true", help="also list steps")
    _add_show_xml(apply)
    apply.set_defaults(run=_apply)

    delete = _command(
        sub, "delete",
        help="delete named objects reconciler manages (exit 0 done, 1 error)",
        description="Delete objects reconciler manages, as a prune would: a VM shut down "
        "gracefully (forced off after its shutdownTimeout) and undefined with its cloud-init "
        "seed; a network or pool stopped and undefined (the pool's files are kept); a "
        "volume's data only with reclaimPolicy: delete or --delete-data (else it is kept and "
        "no longer managed). Refused for an object a manifest in the manifest directory, or "
        "the manifest file its inventory record names, still declares: the next apply would "
        "create it again; remove the manifest first.",
    )
    names = delete.add_argument(
        "names",
        nargs="+",
        metavar="NAME|KIND/NAME",
        help="objects to delete: a name, or VirtualMachine/web-1, Network/lab, "
        "StoragePool/images, Volume/root (Volume/POOL/NAME when names repeat)",
    )
    names.completer = _managed_names  # type: ignore[attr-defined]
    delete.add_argument(
        "--manifest-dir",
        metavar="DIR",
        help="manifests that must no longer declare them (default: manifestDir of the config)",
    )
    delete.add_argument(
        "--delete-data",
        action="store_true",
        help="also delete the data of named volumes whose reclaimPolicy is retain",
    )
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(run=_delete)

    run = _command(
        sub, "run", help="the daemon: converge on file changes, libvirt events and a timer"
    )
    run.add_argument(
        "directory", nargs="?", help="folder of manifests (default: manifestDir of the config)"
    )
    _add_engine(run)
    run.add_argument("--debounce", help="quiet time after a file change (default: 500ms)")
    run.add_argument("--resync-interval", help="full resync period (default: 5m)")
    run.set_defaults(run=_run)

    export = _command(
        sub, "export",
        help="write manifests for existing libvirt objects, to adopt them (exit 0 done, 1 error)",
        description="Read libvirt (nothing is changed) and write one manifest per object, with "
        "adopt: true, so that applying them takes the objects over. Each file's header and stderr "
        "list what the object has that the manifest does not manage (kept as defined when "
        "applied) and what applying it would change.",
    )
    export.add_argument(
        "names",
        nargs="*",
        metavar="NAME|KIND/NAME",
        help="objects to export: a name (any kind), or VirtualMachine/web-1, Network/lab, "
        "StoragePool/images, Volume/root (Volume/POOL/NAME when names repeat)",
    )
    export.add_argument(
        "--all",
        dest="everything",
        action="store_true",
        help="every VM, network, pool and volume, except libvirt's stock 'default' network "
        "and pool (see --include-stock)",
    )
    export.add_argument(
        "--with-deps",
        action="store_true",
        help="also what the named objects use: a VM's volumes and networks, a volume's "
        "pool and backing volume",
    )
    export.add_argument(
        "--include-stock",
        action="store_true",
        help="with --all or --with-deps, also the stock 'default' network and pool",
    )
    export.add_argument(
        "--output-dir",
        "-d",
        metavar="DIR",
        type=Path,
        help="write DIR/{pools,volumes,networks,vms}/NAME.yaml (default: one stream on stdout)",
    )
    export.add_argument("--force", action="store_true", help="overwrite existing files in DIR")
    export.set_defaults(run=_export)

    probe = _command(
        sub, "probe",
        help="find out which VMs this host can start, and the vmDefaults that make them start",
        description="Start throwaway domains (a unique name, no disks, removed at once) to find "
        "out whether type kvm guests start here as they are, only with a CPU feature disabled "
        "(AMD hosts under nested KVM: arch-capabilities), or not at all (only type qemu). "
        "Exit 0 when some VM can start, 1 when none can.",
    )
    probe.add_argument(
        "--write-config",
        metavar="FILE",
        type=Path,
        help="add the vmDefaults found to this configuration file (kept if it has vmDefaults)",
    )
    probe.add_argument(
        "--name-prefix",
        default="reconciler-probe-",
        help="names of the throwaway domains start with this (default: reconciler-probe-)",
    )
    probe.set_defaults(run=_probe)

    adopt = _command(
        sub, "adopt",
        help="take back every object a lost reconciler instance owned (exit 0 done, 1 error)",
        description="After a state directory was lost (disk replaced, wiped), the objects it "
        "managed show as owned by that unknown instance. This takes them all back into this "
        "instance, once, on purpose: VMs and networks whose ownership record names "
        "OLD_ID, and the pools and volumes DIR declares that exist and this instance does "
        "not manage (libvirt keeps no record on those), unless a VM of a third instance uses "
        "them. It lists them, asks (or --yes), then writes this instance's id into their "
        "records and its inventory; nothing else is changed: the next plan shows any other "
        "difference.",
    )  # fmt: skip
    adopt.add_argument("directory", nargs="?", help="folder of manifests")
    adopt.add_argument(
        "--from-instance", required=True, metavar="OLD_ID",
        help="the lost instance's id, as plans name it (owned by reconciler instance ...)",
    )  # fmt: skip
    adopt.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    adopt.set_defaults(run=_adopt)

    instance = _command(
        sub, "instance",
        help="this reconciler instance's id (its state directory's), as ownership records "
        "carry it (exit 1 when it has none yet)",
    )  # fmt: skip
    instance.set_defaults(run=_instance)

    status = _command(
        sub, "status", help="what the daemon (or the last apply) last found, per object"
    )
    status.add_argument(
        "--watch",
        "-w",
        nargs="?",
        const="2s",
        metavar="INTERVAL",
        help="show it again every INTERVAL (default 2s) until Ctrl-C, like watch(1)",
    )
    status.add_argument(
        "--count", type=int, metavar="N", help="with --watch: stop after N refreshes"
    )
    status.set_defaults(run=_status)
    return parser


def _command(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand, taking the global options after its name too."""
    command: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    _add_global(command)
    return command


def _managed_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Shell completion of ``delete``: the objects the inventory lists (``Kind/name``)."""
    try:
        state_dir = getattr(parsed_args, "state_dir", None) or load_settings(
            config_path=getattr(parsed_args, "config", None)).state_dir  # fmt: skip
        path = statedir.path(Path(state_dir), statedir.INVENTORY)
        data = json.loads(path.read_text(encoding="utf-8"))
        return [key for key in data.get("objects", {}) if key.startswith(prefix)]
    except (OSError, ValueError, ReconcilerError):
        return []


def _global_defaults() -> dict[str, object]:
    """Values of the global options not given, before or after the subcommand."""
    return {
        "log_format": os.environ.get("RECONCILER_LOG_FORMAT", "auto"),
        "output": "text",
        "config": None,
        "connect": None,
        "host": None,
        "state_dir": None,
    }


def _add_global(parser: argparse.ArgumentParser) -> None:
    """The options every command takes, before or after its name (``reconciler -o json
    plan DIR`` and ``reconciler plan DIR -o json``). Defaults are suppressed so that one
    given on either side is not overwritten by the other's default; ``main`` fills in
    ``_global_defaults`` for those given nowhere."""
    hide = argparse.SUPPRESS
    parser.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        default=hide,
        help="log format on stderr (default: $RECONCILER_LOG_FORMAT, or a short line per "
        "event on a TTY and JSON lines otherwise)",
    )
    parser.add_argument(
        "--output", "-o", choices=["text", "json"], default=hide,
        help="text for people (default) or JSON (docs/plan-json.md)",
    )  # fmt: skip
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=hide,
        help="configuration file (default: $RECONCILER_CONFIG or /etc/reconciler/config.yaml)",
    )
    parser.add_argument(
        "--connect", "-c", metavar="URI", default=hide,
        help="libvirt URI (default: qemu:///system)",
    )  # fmt: skip
    parser.add_argument(
        "--host", default=hide,
        help="host name matched against metadata.hosts (default: the connected host's "
             "name: libvirt's for a remote URI, this machine's for a local one)",
    )  # fmt: skip
    parser.add_argument(
        "--state-dir", default=hide,
        help="inventory, lock and status folder (default: /var/lib/reconciler)",
    )  # fmt: skip


def _add_show_xml(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--show-xml",
        action="store_true",
        help="also print the libvirt XML each define would send (a diff against the current "
        "definition for objects that exist; display passwords masked)",
    )


def _add_git(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--git", action="store_true", help=text + "; instead of DIR")


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prune",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="delete owned objects whose manifest is gone (default: on)",
    )
    parser.add_argument(
        "--update-policy",
        choices=["manual", "restart"],
        help="for VMs that set none: restart them to apply changes that need it (default: manual)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    """Defaults < config file < RECONCILER_* < flags."""
    return load_settings(config_path=args.config, overrides=_overrides(args))


def usable_state_dir(path: Path, *, create: bool = True, write: bool = True) -> Path:
    """``path`` as a state directory (statedir.prepare: created mode 0700 when missing,
    else a folder that can be read and, with ``write``, written), or a one-line
    ``StateDirError`` naming it: never an inventory read as empty. Without ``create`` a
    missing one is left missing (``status`` says no daemon has run)."""
    if not create and not os.path.lexists(path):
        return path
    statedir.prepare(path, write=write)
    return path


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    names = {
        "connect": "uri",
        "host": "host",
        "state_dir": "state_dir",
        "prune": "prune",
        "update_policy": "default_update_policy",
        "debounce": "debounce",
        "resync_interval": "resync_interval",
    }
    overrides: dict[str, object] = {
        setting: getattr(args, flag) for flag, setting in names.items() if hasattr(args, flag)
    }
    directory = getattr(args, "directory", None)
    if directory is not None:
        overrides["manifest_dir"] = directory
    return overrides


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, global options given before or after the subcommand (or not
    at all: their defaults). Exits (argparse's usage error, status 2) on a bad one.
    Under shell completion (``_ARGCOMPLETE`` set by argcomplete's hook) it prints the
    completions and exits instead."""
    parser = _parser()
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    for name, value in _global_defaults().items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command in ("plan", "apply", "run", "delete", "adopt"):  # the others log nothing
        from reconciler.logs import configure

        configure(format=args.log_format, one_shot=args.command != "run")
    one_shot = args.command in ("validate", "plan", "apply", "status", "export", "delete",
                                "adopt", "instance")
    if one_shot:
        # One pass and exit: the cyclic collector would only rescan the many small,
        # acyclic objects of manifests and XML (a third of a large plan's time).
        gc.disable()
    try:
        code: int = args.run(args)
        return code
    except ReconcilerError as exc:
        print(f"reconciler: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_ERROR
    finally:
        if one_shot:
            # The interpreter still collects once at exit, walking every object the
            # pass made (50-60 ms after an apply of 200 VMs); frozen, they are skipped.
            gc.freeze()


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


# --- validate -------------------------------------------------------------------


def _known_objects(uri: str) -> tuple[KnownObjects, str, str | None]:
    """Unmanaged objects in libvirt and the connected host's name, or empty with a note
    when libvirt is unreachable."""
    try:
        from reconciler.hypervisor import Hypervisor
    except ImportError:
        return KnownObjects(), "libvirt-python is not installed", None
    try:
        with Hypervisor.open(uri, readonly=True) as hv:
            return hv.known_objects(), "", hv.host_name()
    except HypervisorError as exc:
        return KnownObjects(), str(exc), None


def offline_host(uri: str) -> str:
    """The host name manifests are matched against without libvirt: this machine's for a
    local URI, the host part of a remote one (``qemu+ssh://root@kvm-2/system``: kvm-2)."""
    remote = urlsplit(uri)
    return remote.hostname if remote.netloc and remote.hostname else socket.gethostname()


def _validate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    known, note, connected = (
        (KnownObjects(), "", None) if args.offline else _known_objects(settings.uri)
    )
    host = settings.host or connected or offline_host(settings.uri)
    result = check_against(
        apply_vm_defaults(load_unchecked(args.directory, host=host), settings.vm_defaults),
        known,
    )
    # the allowedDiskRoots rule needs no libvirt: checked offline too, as plan does
    policy = PathPolicy(settings.allowed_disk_roots, settings.allowed_secret_roots,
                        remote=bool(urlsplit(settings.uri).netloc))  # fmt: skip
    result = drop_findings(result, path_problems(result.manifests, policy))
    if args.output == "json":
        print(json.dumps(_validate_json(result), indent=2))
    else:
        _print_problems(result)
        if note and result.problems:
            print(f"note: references were not checked against libvirt ({note})", file=sys.stderr)
        if not result.problems:
            print(
                f"{result.root}: {_plural(len(result.manifests), 'manifest')} in "
                f"{_plural(len(result.files), 'file')}, all valid"
            )
    return EXIT_OK if not result.problems else EXIT_ERROR


def _print_problems(result: LoadResult) -> None:
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for problem in result.problems:
        print(problem, file=sys.stderr)
    if result.problems:
        files = len({p.position.path for p in result.problems})
        print(
            f"{_plural(len(result.problems), 'problem')} in {_plural(files, 'file')}",
            file=sys.stderr,
        )


def _validate_json(result: LoadResult) -> dict[str, Any]:
    return {
        "valid": not result.problems,
        "problems": [problem_json(p) for p in result.problems],
        "manifests": [
            {"kind": m.kind.value, "name": m.name, "file": m.source.path, "line": m.source.line}
            for m in result.manifests
        ],
    }


# --- plan and apply ----------------------------------------------------------------


def _manifests(args: argparse.Namespace, settings: Settings) -> tuple[Path, str | None]:
    """DIR, or with ``--git`` the snapshot of the git source's commit and that commit."""
    if not getattr(args, "git", False):
        if args.directory is None:
            raise ReconcilerError(f"{args.command}: name a folder of manifests, or use --git")
        return Path(args.directory), None
    from reconciler.gitsource import GitSource

    if args.directory is not None:
        raise ReconcilerError(f"{args.command}: --git takes no folder: the source is the git "
                              "repository of the configuration")  # fmt: skip
    if settings.git_source is None:
        raise ReconcilerError(f"{args.command} --git: no source.git in the configuration")
    source = GitSource(settings.git_source, settings.state_dir)
    result = source.sync(switch=args.command == "apply")
    if result.error is not None or result.directory is None:
        raise ReconcilerError(f"git source: {result.error}")
    print(f"git: {settings.git_source.url} {settings.git_source.ref} is at commit "
          f"{result.fetched}", file=sys.stderr)  # fmt: skip
    return result.directory, result.fetched


def _reconciler(args: argparse.Namespace, settings: Settings) -> Any:
    from reconciler import statedir
    from reconciler.hypervisor import Hypervisor
    from reconciler.reconcile import PassOptions, Reconciler

    directory, revision = _manifests(args, settings)
    # an apply makes the state directory and this instance's id (once); a plan never
    # writes: it may have neither, and then plans with no inventory (see NO_STATE_NOTE)
    planning = args.command == "plan"
    state_dir = usable_state_dir(settings.state_dir, create=not planning, write=False)
    missing = not os.path.lexists(state_dir)
    instance = None if missing else statedir.instance_id(state_dir, create=not planning)
    hv = Hypervisor.open(settings.uri)
    try:
        host = settings.host or hv.host_name()
    except HypervisorError:
        hv.close()
        raise
    options = PassOptions(
        directory=directory,
        revision=revision,
        state_dir=None if missing else state_dir,
        host=host,
        prune=settings.prune,
        default_update_policy=settings.default_update_policy,
        allow_replace=frozenset(getattr(args, "allow_replace", ())),
        allowed_roots=settings.allowed_disk_roots,
        vm_defaults=settings.vm_defaults,
        allowed_secret_roots=settings.allowed_secret_roots,
        instance=instance,
    )
    return Reconciler(hv, options)


def _plan(args: argparse.Namespace) -> int:
    settings = _settings(args)
    reconciler = _reconciler(args, settings)
    try:
        load, _observed, plan = reconciler.plan()
    finally:
        reconciler.hypervisor.close()
    if reconciler.options.state_dir is None:
        note = f"{settings.state_dir}: {NO_STATE_NOTE}"
        load = dataclasses.replace(load, notes=(*load.notes, note))
    elif reconciler.options.instance is None:
        load = dataclasses.replace(load, notes=(*load.notes, NO_INSTANCE_NOTE))
    if args.output == "json":
        print(dumps(plan_json(plan, load.problems, load.notes,
                              instance=reconciler.options.instance)))
    else:
        _print_problems(load)
        print(render_plan(plan, colour=_colour(), verbose=args.verbose,
                          problems=len(load.problems)))  # fmt: skip
        _print_xml(args, plan)
    if load.problems or plan.has_errors:
        return EXIT_ERROR
    return EXIT_CHANGES if plan.has_changes else EXIT_OK


def _print_xml(args: argparse.Namespace, plan: Any) -> None:
    from reconciler.report import render_xml

    if getattr(args, "show_xml", False):
        xml = render_xml(plan)
        if xml:
            print()
            print(xml, end="")


def _confirm(args: argparse.Namespace, question: str, doing: str) -> bool:
    """``--yes``, or the answer to ``question`` on a terminal; without either, a
    ``ReconcilerError`` (``not <doing> without --yes when not interactive``)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise ReconcilerError(f"not {doing} without --yes when not interactive")
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


def _apply(args: argparse.Namespace) -> int:
    settings = _settings(args)
    usable_state_dir(settings.state_dir)
    with StateLock(settings.state_dir):
        return _apply_locked(args, settings)


def _apply_locked(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from reconciler.reconcile import PassResult

    started = time.monotonic()
    reconciler = _reconciler(args, settings)
    try:
        load, observed, plan = reconciler.plan()
        text = args.output == "text"
        if text:
            _print_problems(load)
            print(render_plan(plan, colour=_colour(), verbose=args.verbose,
                              problems=len(load.problems)))  # fmt: skip
            _print_xml(args, plan)
        if not plan.has_changes:
            _write_apply_status(settings, reconciler, PassResult(load, plan), started)
            if not text:
                print(dumps({**plan_json(plan, load.problems, load.notes,
                              instance=reconciler.options.instance), **results_json([], [])}))
            return EXIT_ERROR if load.problems or plan.has_errors else EXIT_OK
        if not _confirm(args, "Apply these changes?", "applying"):
            print("Not applied.")
            return EXIT_ERROR
        result = reconciler.apply(plan, observed, load)
        from reconciler import drift

        edited = {a.key for a in plan.actions if a.changes_anything
                  and drift.cause(a, observed.inventory) is drift.Cause.CHANGE}  # fmt: skip
        _write_apply_status(settings, reconciler, result, started, edited=edited)
    finally:
        reconciler.hypervisor.close()
    if text:
        print()
        print(render_results(result.results, colour=_colour()))
        if result.unsettled:
            print(render_unsettled(result.unsettled))
        ok = sum(1 for r in result.results if r.outcome == "ok")
        bad = len(result.results) - ok
        print(f"\nApply {'complete' if not bad else 'finished with errors'}: "
              f"{ok} succeeded, {bad} failed.")  # fmt: skip
    else:
        print(dumps({**plan_json(plan, load.problems, load.notes,
                              instance=reconciler.options.instance),
                     **results_json(result.results, result.unsettled)}))  # fmt: skip
    return EXIT_ERROR if result.failed else EXIT_OK


def _write_apply_status(settings: Settings, reconciler: Any, result: Any, started: float,
                        *, edited: AbstractSet[str] = frozenset()) -> None:  # fmt: skip
    """``status`` shows the last apply too: the daemon's status file, ``written_by: apply``.
    A state directory that cannot take it is a warning: the apply itself is done."""
    import time
    from datetime import UTC, datetime

    from reconciler.daemon import object_statuses
    from reconciler.errors import StateDirError
    from reconciler.passstatus import apply_report
    from reconciler.reconcile import source_revision
    from reconciler.status import read_status, write_status

    now = datetime.now(UTC)
    # the revision the pass planned with: a git source's commit, else the folder's
    options = reconciler.options
    revision = getattr(options, "revision", None) or source_revision(options.directory)
    try:
        previous = read_status(settings.state_dir)
    except ReconcilerError:
        previous = None  # unreadable or not a status file: replaced whole
    report = apply_report(
        object_statuses(result, now, revision, edited=edited), result.load.problems,
        previous=previous,
        now=now, duration=time.monotonic() - started, revision=revision,
    )  # fmt: skip
    try:
        write_status(settings.state_dir, report)
    except StateDirError as exc:
        print(f"reconciler: warning: status not recorded: {exc}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from reconciler.daemon import Daemon
    from reconciler.logs import configure

    settings = _settings(args)
    usable_state_dir(settings.state_dir)
    configure(format=settings.log_format if args.log_format == "auto" else args.log_format)
    return Daemon(settings, config_path=args.config, overrides=_overrides(args)).run()


def _status(args: argparse.Namespace) -> int:
    import time

    from reconciler.status import watch

    settings = _settings(args)
    if args.watch is None:
        text, code = _status_frame(settings, args.output, watching=False)
        sys.stdout.write(text)
        return code
    from reconciler.units import parse_duration

    try:
        interval = float(args.watch)
    except ValueError:
        try:
            interval = parse_duration(args.watch)
        except ValueError:
            interval = -1.0
    if not 0 < interval <= 86400:
        raise ReconcilerError(f"--watch: {args.watch!r} is not an interval (expected e.g. 2s)")
    if args.count is not None and args.count < 1:
        raise ReconcilerError("--count: expected a number of refreshes, 1 or more")
    tty = sys.stdout.isatty() and args.output == "text"

    def frame() -> tuple[str, int]:
        text, code = _status_frame(settings, args.output, watching=True)
        if args.output == "json":
            return text, code
        stamp = time.strftime("%H:%M:%S")
        return f"every {interval:g}s, Ctrl-C to stop; {stamp}\n\n{text}", code

    return watch(frame, interval=interval, out=sys.stdout, tty=tty, count=args.count)


def _status_frame(settings: Settings, output: str, *, watching: bool) -> tuple[str, int]:
    """What ``status`` prints (text or one JSON document), and its exit code. An
    unreadable status file is an error, and while ``watching`` a frame saying so."""
    from reconciler import statedir
    from reconciler.status import ObjectState, read_status, render_table
    from reconciler.status import to_json as status_json

    try:
        state_dir = usable_state_dir(settings.state_dir, create=False, write=False)
        report = read_status(state_dir)
        instance = statedir.instance_id(state_dir, create=False) if state_dir.is_dir() else None
    except ReconcilerError as exc:
        if not watching:
            raise
        return f"reconciler: error: {exc}\n", EXIT_ERROR
    if report is None:
        message = (
            f"no daemon has run yet, nor an apply: no "
            f"{statedir.path(settings.state_dir, statedir.STATUS)} "
            "('reconciler apply DIR' writes one, and the daemon: 'reconciler run' or "
            "'systemctl start reconciler')"
        )
        if output == "json":
            return dumps({"version": 1, "status": None, "instance": instance,
                          "message": message}) + "\n", EXIT_ERROR  # fmt: skip
        return message + "\n", EXIT_ERROR
    if output == "json":
        text = dumps({**status_json(report), "instance": instance})
    else:
        text = render_table(report) + f"\ninstance: {instance or 'none yet'}"
    bad = {ObjectState.FAILED, ObjectState.CONFLICT}
    code = (
        EXIT_ERROR
        if report.last_error or report.source_error or any(o.state in bad for o in report.objects)
        else EXIT_OK
    )
    return text + "\n", code


# --- instance and adopt --from-instance ------------------------------------------------


def _instance(args: argparse.Namespace) -> int:
    from reconciler import statedir

    settings = _settings(args)
    state_dir = usable_state_dir(settings.state_dir, create=False, write=False)
    instance = statedir.instance_id(state_dir, create=False) if state_dir.is_dir() else None
    if args.output == "json":
        print(dumps({"instance": instance, "stateDir": str(state_dir)}))
    elif instance is not None:
        print(instance)
    else:
        print(f"{state_dir}: no instance id yet (the first apply, run or delete makes one)",
              file=sys.stderr)  # fmt: skip
    return EXIT_OK if instance is not None else EXIT_ERROR


def _adopt(args: argparse.Namespace) -> int:
    import uuid

    settings = _settings(args)
    try:
        old = str(uuid.UUID(args.from_instance))
    except ValueError:
        raise ReconcilerError(f"adopt: --from-instance {args.from_instance!r} is not an "
                              "instance id (a UUID, as plans name it)") from None  # fmt: skip
    usable_state_dir(settings.state_dir)
    with StateLock(settings.state_dir):
        return _adopt_locked(args, settings, old)


def taken_back(plan: Any) -> list[Any]:
    """The actions of a take-back plan that take an object back (their ``ownership``
    change is noted ``owners.TAKEN_BACK``)."""
    from reconciler import owners

    return [a for a in plan.actions
            if any(c.path == "ownership" and c.note == owners.TAKEN_BACK for c in a.changes)]


def _refuse_unknown_instance(old: str, observed: Any) -> None:
    """``adopt --from-instance OLD``: refused unless a domain or network record on the
    host names OLD. Pools and volumes carry no record, so an id nothing names would
    take whatever is declared and unlisted, another live instance's included."""

    named: set[str] = set()
    for dom in observed.domains.values():
        record = dom.ownership
        if record is not None and record.instance:
            named.add(record.instance)
    for net in observed.networks.values():
        found = net.ownership
        if found is not None and found.instance:
            named.add(found.instance)
    if old not in named:
        known = ", ".join(sorted(named)) or "none"
        raise ReconcilerError(
            f"adopt: no VM or network on this host has an ownership record naming instance "
            f"{old}, so nothing shows what it owned; nothing taken back (instances named "
            f"here: {known}). Check the id: 'reconciler plan DIR' names the owner of each "
            "conflict. Pools and volumes alone carry no record: set adopt: true in their "
            "manifests to take them over"
        )


def _adopt_locked(args: argparse.Namespace, settings: Settings, old: str) -> int:
    from reconciler.executor import Executor
    from reconciler.plan import Action, DefineDomain, DefineNetwork, Op, Plan, Step
    from reconciler.xml import domain as domain_xml
    from reconciler.xml import network as network_xml

    reconciler = _reconciler(args, settings)
    instance = reconciler.options.instance
    if old == instance:
        reconciler.hypervisor.close()
        raise ReconcilerError(f"adopt: {old} is this instance's own id: nothing to take back")
    reconciler.options = dataclasses.replace(reconciler.options, take_over=frozenset({old}))
    try:
        load, observed, plan = reconciler.plan()
        _refuse_unknown_instance(old, observed)
        _print_problems(load)
        if load.problems:
            print("adopt: not every manifest loaded; nothing taken back (fix the problems "
                  "first: a manifest that failed may declare what is to be taken)")  # fmt: skip
            return EXIT_ERROR
        actions: list[Action] = []
        lines: list[str] = []
        for a in taken_back(plan):
            record = dict(a.owner_record or {})
            steps: tuple[Step, ...] = ()
            if a.kind is Kind.VIRTUAL_MACHINE:
                dom = observed.domains[a.name]
                found = dom.ownership
                record["digest"] = found.digest if found else record.get("digest")
                xml = domain_xml.with_owner_instance(dom.config_xml, str(instance))
                steps = (DefineDomain(xml, current=dom.config_xml),)
                why = f"its ownership record names {old}"
            elif a.kind is Kind.NETWORK:
                net = observed.networks[a.name]
                was = net.ownership
                mine = network_xml.NetworkOwnership(
                    instance=instance, manifest=str(record.get("manifest")),
                    digest=was.digest if was else str(record.get("digest")),
                    revision=was.revision if was else None)  # fmt: skip
                record["digest"] = mine.digest
                xml = network_xml.with_ownership(net.config_xml, mine)
                steps = (DefineNetwork(xml, current=net.config_xml),)
                why = f"its ownership record names {old}"
            else:
                why = (f"declared, exists, not in this inventory, used by a VM taken back from "
                       f"{old} and by no VM that stays another instance's (libvirt keeps no "
                       "owner record on pools and volumes)")
            change = next(c for c in a.changes if c.path == "ownership")
            actions.append(Action(a.kind, a.name, Op.UPDATE_LIVE, (change,), steps,
                                  reason=f"taken back: {why}", source=a.source,
                                  owner_record=record))  # fmt: skip
            lines.append(f"  {a.kind.value} {a.name}: {why}")
        declared = {(m.kind, m.name) for m in load.manifests}
        left = [f"  VirtualMachine {n}" for n, d in sorted(observed.domains.items())
                if (Kind.VIRTUAL_MACHINE, n) not in declared
                and (r := d.ownership) and r.instance == old]
        left += [f"  Network {n}" for n, net in sorted(observed.networks.items())
                 if (Kind.NETWORK, n) not in declared
                 and (r2 := net.ownership) and r2.instance == old]
        left += [f"  {a.kind.value} {a.name}: {a.reason.rpartition('; ')[2]}"
                 for a in plan.actions if a.op is Op.CONFLICT
                 and a.kind in (Kind.STORAGE_POOL, Kind.VOLUME)]  # fmt: skip
        text = args.output == "text"
        if text:
            print(f"Taking back from reconciler instance {old} into this instance "
                  f"{instance}:")  # fmt: skip
            print("\n".join(lines) if lines else "  nothing")
            if left:
                print(f"Left alone (VMs and networks whose records name {old} but that no "
                      f"manifest in {reconciler.options.directory} declares; declared pools "
                      "and volumes that are not taken back, and why):")
                print("\n".join(left))
        if not actions:
            if not text:
                print(dumps({"instance": instance, "from": old, "taken": [], "results": []}))
            return EXIT_OK
        if not _confirm(args, f"Take these {len(actions)} objects back?", "taking back"):
            print("Not taken back.")
            return EXIT_ERROR
        results = Executor(reconciler.hypervisor, observed.inventory,
                           reconciler.options.state_dir).apply(Plan(actions=tuple(actions)))
    finally:
        reconciler.hypervisor.close()
    bad = [r for r in results if r.outcome != "ok"]
    if text:
        print()
        print(render_results(results, colour=_colour()))
        print(f"\nTake-back {'complete' if not bad else 'finished with errors'}: "
              f"{len(results) - len(bad)} taken back, {len(bad)} failed. "
              "'reconciler plan' shows what else differs.")  # fmt: skip
    else:
        print(dumps({"instance": instance, "from": old,
                     "taken": [f"{a.kind.value}/{a.name}" for a in actions],
                     **results_json(results, [])}))  # fmt: skip
    return EXIT_ERROR if bad else EXIT_OK


# --- delete --------------------------------------------------------------------------


def _delete(args: argparse.Namespace) -> int:
    settings = _settings(args)
    state_dir = usable_state_dir(settings.state_dir)
    with StateLock(state_dir):
        return _delete_locked(args, settings, state_dir)


def _drop_from_status(state_dir: Path, keys: AbstractSet[str]) -> None:
    """``status`` stops listing what ``delete`` removed (a status file that cannot be read
    or written is left as it is: the delete itself is done)."""
    import dataclasses

    from reconciler.status import read_status, write_status

    if not keys:
        return
    try:
        report = read_status(state_dir)
        if report is None:
            return
        kept = tuple(o for o in report.objects if f"{o.kind}/{o.name}" not in keys)
        if len(kept) != len(report.objects):
            write_status(state_dir, dataclasses.replace(report, objects=kept))
    except (ReconcilerError, OSError):
        pass


def _delete_locked(args: argparse.Namespace, settings: Settings, state_dir: Path) -> int:
    from reconciler import export, statedir
    from reconciler import inventory as inventory_file
    from reconciler.executor import Executor
    from reconciler.hypervisor import Hypervisor
    from reconciler.observe import observe
    from reconciler.planner import plan_delete

    instance = statedir.instance_id(state_dir, create=True)
    with Hypervisor.open(settings.uri) as hv:
        observed = observe(hv, inventory_file.load(state_dir))
        keys: list[str] = []
        for name in args.names:
            try:
                found = delete_keys(export.resolve(observed, [name]),
                                    observed.inventory.objects, state_dir)  # fmt: skip
            except export.SelectionError as exc:
                # managed, but gone from libvirt: only dropped from the inventory
                found = gone_keys(name, observed.inventory.objects)
                if not found:
                    raise ReconcilerError(f"delete: {exc}") from None
            keys += [key for key in found if key not in keys]
        directory = Path(args.manifest_dir) if args.manifest_dir else settings.manifest_dir
        _refuse_declared(keys, directory, settings.host or hv.host_name(),
                         observed.inventory.objects, state_dir)  # fmt: skip
        plan = plan_delete(keys, observed, delete_data=args.delete_data, instance=instance)
        text = args.output == "text"
        if text:
            print(render_plan(plan, colour=_colour()))
        if not plan.has_changes:
            if not text:
                print(dumps({**plan_json(plan, instance=instance), **results_json([], [])}))
            return EXIT_ERROR if plan.has_errors else EXIT_OK
        if not _confirm(args, "Delete these objects?", "deleting"):
            print("Not deleted.")
            return EXIT_ERROR
        results = Executor(hv, observed.inventory, state_dir).apply(plan)
    _drop_from_status(state_dir, {r.action.key for r in results if r.outcome == "ok"})
    if text:
        print()
        print(render_results(results, colour=_colour()))
        bad = sum(1 for r in results if r.outcome != "ok")
        print(f"\nDelete {'complete' if not bad else 'finished with errors'}: "
              f"{len(results) - bad} succeeded, {bad} failed.")  # fmt: skip
    else:
        print(dumps({**plan_json(plan, instance=instance), **results_json(results, [])}))
    failed = plan.has_errors or any(r.outcome != "ok" for r in results)
    return EXIT_ERROR if failed else EXIT_OK


def delete_keys(refs: Sequence[Any], owned: Mapping[str, Mapping[str, Any]],
                state_dir: Path) -> list[str]:  # fmt: skip
    """Inventory keys (``Kind/name``) of the objects ``refs`` names (export.Ref), or a
    ``ReconcilerError`` for one reconciler does not manage: delete never touches those."""
    keys: list[str] = []
    for ref in refs:
        key = f"{ref.kind.value}/{ref.name}"
        entry = owned.get(key)
        if entry is None or (ref.pool is not None and entry.get("pool", ref.pool) != ref.pool):
            shown = key if ref.pool is None else f"{ref.kind.value}/{ref.pool}/{ref.name}"
            raise ReconcilerError(
                f"delete: {shown}: not managed by reconciler (not in "
                f"{statedir.path(state_dir, statedir.INVENTORY)}); it deletes only objects it "
                "manages (use virsh for others)"
            )
        if key not in keys:
            keys.append(key)
    return keys


def gone_keys(text: str, owned: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Inventory keys that ``text`` (``NAME``, ``KIND/NAME``, ``Volume/POOL/NAME``)
    names, for objects libvirt no longer has."""
    kinds = {k.value.lower(): k.value for k in Kind}
    head, _, rest = text.partition("/")
    if rest and head.lower() in kinds:
        kind, pool, name = kinds[head.lower()], None, rest
        if kind == Kind.VOLUME.value and "/" in rest:
            pool, _, name = rest.partition("/")
        key = f"{kind}/{name}"
        entry = owned.get(key)
        return [key] if entry is not None and pool in (None, entry.get("pool")) else []
    return [key for key in owned if key.partition("/")[2] == text]


def _refuse_declared(keys: Sequence[str], directory: Path, host: str,
                     owned: Mapping[str, Mapping[str, Any]] | None = None,
                     state_dir: Path | None = None) -> None:  # fmt: skip
    """Refuse to delete what a manifest still declares: the next apply (or the daemon,
    within seconds) would create it again, a volume empty. Looked for in ``directory``
    (the manifest directory) when it is one, and in the file each object's inventory
    record (``owned``) names as its manifest: with no manifest directory configured,
    that file is the one the last apply read."""
    held: dict[str, str] = {}
    unread: list[str] = []
    checked = directory.is_dir()
    if checked:
        load = load_unchecked(directory, host=host)
        declared = {f"{m.kind.value}/{m.name}": m for m in load.manifests}
        held = {key: f"{key} (declared at {declared[key].source})"
                for key in keys if key in declared}  # fmt: skip
        # (a directory without manifests is a problem for apply, not here)
        unread = sorted({p.position.path for p in load.problems} - {str(directory)})
    found, unread_recorded = recorded_manifests(
        [k for k in keys if k not in held], owned or {}, host,
        skip=[p for p in (directory if checked else None,
                          state_dir and statedir.path(state_dir, statedir.GIT_SNAPSHOTS))
              if p is not None])  # fmt: skip
    held.update({key: f"{key} (declared at {where}, the manifest its inventory record "
                 "names)" for key, where in found.items()})  # fmt: skip
    if held:
        raise ReconcilerError(
            f"delete: {', '.join(held[k] for k in keys if k in held)}: the next apply would "
            "create it again; remove the manifest first (then apply deletes it, or run "
            "delete again)"
        )
    unread += unread_recorded
    if unread:
        print(f"reconciler: warning: {', '.join(unread)} did not load; not checked for "
              "manifests of these objects", file=sys.stderr)  # fmt: skip


def recorded_manifests(
    keys: Sequence[str], owned: Mapping[str, Mapping[str, Any]], host: str,
    skip: Sequence[Path] = (),
) -> tuple[dict[str, str], list[str]]:
    """Of ``keys`` (``Kind/name``), those whose inventory record names a manifest file
    (``"manifest"``; a relative one from the current directory) that still exists and
    still declares that object for ``host``: key -> ``file:line:col`` of the
    declaration; and the recorded files that exist but did not load (not checked).
    Files under a folder of ``skip`` (the manifest directory already read, the git
    snapshots, where an old commit's file stays) are not read."""
    folders = [os.path.realpath(p) for p in skip]
    found: dict[str, str] = {}
    unread: list[str] = []
    for key in keys:
        path = (owned.get(key) or {}).get("manifest")
        if not isinstance(path, str) or not path or path.startswith("<"):
            continue
        real = os.path.realpath(path)
        if any(real == f or real.startswith(f.rstrip(os.sep) + os.sep) for f in folders):
            continue
        if not os.path.isfile(real):
            continue
        problems: list[Any] = []
        manifests = load_file(Path(real), path, problems)
        match = [m for m in manifests
                 if f"{m.kind.value}/{m.name}" == key and selects_host(m, host)]  # fmt: skip
        if match:
            found[key] = str(match[0].source)
        elif problems and path not in unread:
            unread.append(path)
    return found, unread


# --- export --------------------------------------------------------------------------


def _probe(args: argparse.Namespace) -> int:
    from reconciler import hostprobe
    from reconciler.hypervisor import Hypervisor

    settings = _settings(args)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", args.name_prefix):
        raise ReconcilerError(f"--name-prefix: {args.name_prefix!r} is not a domain name prefix"
                              " (up to 40 of A-Z a-z 0-9 _ . -, starting with a letter or digit)")
    with Hypervisor.open(settings.uri) as hv:
        result = hostprobe.probe(hv, prefix=args.name_prefix)
    written = None
    if result.defaults is not None and args.write_config is not None:
        try:
            written = hostprobe.write_config(args.write_config, result)
        except hostprobe.ConfigNotWritten as exc:
            raise ReconcilerError(str(exc)) from None
        except OSError as exc:
            raise ReconcilerError(f"{args.write_config}: cannot write: {exc.strerror}") from None
    if args.output == "json":
        print(dumps({
            "summary": result.summary(),
            "kvm": result.kvm,
            "kvmUsable": result.kvm_usable,
            "vmDefaults": None if result.defaults is None else result.defaults.as_config(),
            "attempts": [{"vmDefaults": a.defaults.as_config(), "error": a.error}
                         for a in result.attempts],
            "config": written,
        }))  # fmt: skip
        return EXIT_OK if result.defaults is not None else EXIT_ERROR
    for attempt in result.attempts:
        outcome = "starts" if attempt.error is None else f"fails: {attempt.error}"
        print(f"probe: {attempt.defaults.describe() or 'kvm as it is'}: {outcome}")
    print(f"probe: {result.summary()}")
    if result.defaults is None:
        return EXIT_ERROR
    if written is not None:
        print("probe: " + written)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from reconciler import export
    from reconciler.hypervisor import Hypervisor
    from reconciler.observe import observe

    if not args.names and not args.everything:
        raise ReconcilerError("export: name the objects to export (NAME or KIND/NAME), or --all")
    settings = _settings(args)
    # A read-write connection, used for reads only: libvirt hides a display password from
    # read-only ones (VIR_DOMAIN_XML_SECURE), and export must see it to report it.
    inventory = _read_inventory(settings.state_dir)
    with Hypervisor.open(settings.uri) as hv:
        observed = observe(hv, inventory)
    try:
        named = export.resolve(observed, args.names)
        refs, skipped = export.select(
            observed,
            args.names,
            everything=args.everything,
            dependencies=args.with_deps,
            stock=args.include_stock,
        )
    except export.SelectionError as exc:
        raise ReconcilerError(f"export: {exc}") from None
    items = export.export(observed, refs)
    done = [item for item in items if item.document is not None]
    failed_named = [
        item.key
        for item in items
        if item.document is None
        and export.Ref(item.kind, item.name, item.pool) in named
    ]
    if args.output == "json":
        files = {}
        if args.output_dir is not None:
            _write_exported(args.output_dir, done, settings.uri, force=args.force)
            files = {item.key: str(args.output_dir / export.file_name(item)) for item in done}
        print(dumps({
            "version": 1,
            "source": settings.uri,
            "objects": [export.to_json(item, files.get(item.key)) for item in items],
            "skipped": skipped,
        }))  # fmt: skip
        return EXIT_ERROR if failed_named or not done else EXIT_OK
    for line in skipped:
        print(f"export: skipped {line}", file=sys.stderr)
    for item in items:
        if item.document is None:
            reasons = "; ".join(str(n) for n in item.notes)
            print(f"export: {item.key}: cannot be exported: {reasons}", file=sys.stderr)
            continue
        for note in item.notes:
            print(f"export: {item.key}: {note}", file=sys.stderr)
        if item.kept:
            print(f"export: {item.key}: {export.KEPT_HEADING}: "
                  + ", ".join(export.kept_lines(item.kept)), file=sys.stderr)  # fmt: skip
    if args.output_dir is None:
        sys.stdout.write("---\n".join(export.to_yaml(item, settings.uri) for item in done))
    else:
        _write_exported(args.output_dir, done, settings.uri, force=args.force)
        changing = sum(1 for item in done if item.notes)
        print(
            f"{args.output_dir}: {_plural(len(done), 'manifest')} written"
            + (f", {changing} that applying would change (listed above)" if changing else ""),
            file=sys.stderr,
        )
    if failed_named:
        return EXIT_ERROR
    return EXIT_OK if done else EXIT_ERROR


def _read_inventory(state_dir: Path) -> Inventory:
    """The inventory in ``state_dir``, read only (export writes nothing there): what the
    tool keeps of the objects it manages outside libvirt (a VM's shutdownTimeout, a
    volume's reclaimPolicy). Empty when there is no state directory; an unreadable one
    is an error (``StateDirError``), never taken for an empty one."""
    from reconciler import inventory as inventory_file

    if not os.path.lexists(state_dir):
        return inventory_file.Inventory()
    return inventory_file.load(state_dir)


def _write_exported(directory: Path, items: Sequence[Any], source: str, *, force: bool) -> None:
    from reconciler.export import file_name, to_yaml

    files = [(directory / file_name(item), to_yaml(item, source)) for item in items]
    existing = [str(path) for path, _ in files if path.exists()]
    if existing and not force:
        raise ReconcilerError(
            f"export: not overwriting {', '.join(existing)} (pass --force to overwrite)"
        )
    try:
        for path, text in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, text, mode=0o644)
    except OSError as exc:
        raise ReconcilerError(f"export: cannot write {exc.filename}: {exc.strerror}") from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
