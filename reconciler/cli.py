"""Command line: argument parsing and wiring only; the work happens in the layers below.

``reconciler validate DIR`` loads and checks manifests (manifests.py),
consulting libvirt read-only for unmanaged objects that manifests may name,
unless ``--offline``. Exit codes: 0 clean, 1 problems.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

from reconciler import __version__
from reconciler.errors import HypervisorError, Problem, ReconcilerError
from reconciler.logs import configure
from reconciler.manifests import LoadResult, load_directory
from reconciler.references import KnownObjects

EXIT_OK = 0
EXIT_ERROR = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Declarative reconciler for KVM/libvirt hosts.",
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    parser.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        default=os.environ.get("RECONCILER_LOG_FORMAT", "auto"),
        help="log format on stderr (default: console on a TTY, JSON lines otherwise)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser(
        "validate", help="check manifests: schema, fields, references (exit 0 clean, 1 problems)"
    )
    validate.add_argument("directory", help="folder of manifests (searched recursively)")
    validate.add_argument(
        "--offline",
        action="store_true",
        help="do not ask libvirt about unmanaged objects that manifests name",
    )
    _add_common(validate)
    validate.set_defaults(run=_validate)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect",
        "-c",
        metavar="URI",
        default=os.environ.get("RECONCILER_URI", "qemu:///system"),
        help="libvirt URI (default: qemu:///system, or $RECONCILER_URI)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("RECONCILER_HOST") or socket.gethostname(),
        help="host name matched against metadata.hosts (default: this machine's name)",
    )
    parser.add_argument("--output", "-o", choices=["text", "json"], default="text")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(format=args.log_format)
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


def _known_objects(uri: str) -> tuple[KnownObjects, str]:
    """Unmanaged objects in libvirt, or empty with a note when libvirt is unreachable."""
    try:
        from reconciler import hypervisor
    except ImportError:
        return KnownObjects(), "libvirt-python is not installed"
    try:
        conn = hypervisor.connect(uri, readonly=True)
    except HypervisorError as exc:
        return KnownObjects(), str(exc)
    try:
        return hypervisor.known_objects(conn), ""
    finally:
        conn.close()


def _validate(args: argparse.Namespace) -> int:
    known, note = (KnownObjects(), "") if args.offline else _known_objects(args.connect)
    result = load_directory(args.directory, known=known, host=args.host)
    if args.output == "json":
        print(json.dumps(_validate_json(result), indent=2))
    else:
        for problem in result.problems:
            print(problem, file=sys.stderr)
        if note and result.problems:
            print(f"note: references were not checked against libvirt ({note})", file=sys.stderr)
        if result.problems:
            files = len({p.position.path for p in result.problems})
            print(
                f"{_plural(len(result.problems), 'problem')} in {_plural(files, 'file')}",
                file=sys.stderr,
            )
        else:
            print(
                f"{result.root}: {_plural(len(result.manifests), 'manifest')} in "
                f"{_plural(len(result.files), 'file')}, all valid"
            )
    return EXIT_OK if not result.problems else EXIT_ERROR


def problem_json(problem: Problem) -> dict[str, Any]:
    pos = problem.position
    return {
        "file": pos.path,
        "line": pos.line or None,
        "column": pos.column or None,
        "field": problem.field or None,
        "message": problem.message,
        "hint": problem.hint or None,
        "text": str(problem),
    }


def _validate_json(result: LoadResult) -> dict[str, Any]:
    return {
        "valid": not result.problems,
        "problems": [problem_json(p) for p in result.problems],
        "manifests": [
            {"kind": m.kind.value, "name": m.name, "file": m.source.path, "line": m.source.line}
            for m in result.manifests
        ],
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
