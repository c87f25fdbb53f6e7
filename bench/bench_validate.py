"""Benchmark: validating 1,000 VM manifests (each with its volume), against the YAML floor.

Run: .venv/bin/python -m bench.bench_validate [--count 1000] [--repeat 5]

Floor (same run, same files): read every file and parse it with PyYAML's
libyaml-backed CSafeLoader, which is the least any loader must do. The tool:
``load_directory`` (discover, parse with positions, JSON Schema, build
specs, cross-check) and the whole ``reconciler validate --offline`` command
as a subprocess (interpreter start-up and imports included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.generate import write_manifests
from reconciler.manifests import discover, load_directory


def _median_seconds(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_manifests(Path(tmp) / "manifests", args.count)

        def floor() -> None:
            for path in discover(root):
                list(yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader))

        def tool() -> None:
            result = load_directory(root)
            assert not result.problems, result.problems[:3]
            assert len(result.manifests) == 2 * args.count + 2

        def command() -> None:
            subprocess.run(
                [sys.executable, "-m", "reconciler", "validate", "--offline", str(root)],
                check=True,
                stdout=subprocess.DEVNULL,
            )

        tool()  # warm the schema cache once, as a long-lived process would have
        t_floor = _median_seconds(floor, args.repeat)
        t_tool = _median_seconds(tool, args.repeat)
        t_cmd = _median_seconds(command, args.repeat)
    print(f"validate {args.count} VM manifests (+{args.count} volumes), median of {args.repeat}:")
    print(f"  floor  (read + CSafeLoader parse)     {t_floor * 1000:8.1f} ms")
    print(
        f"  load_directory (in process)           {t_tool * 1000:8.1f} ms  "
        f"({t_tool / t_floor:.1f}x floor)"
    )
    print(
        f"  reconciler validate --offline (cmd)   {t_cmd * 1000:8.1f} ms  "
        f"({t_cmd / t_floor:.1f}x floor)"
    )


if __name__ == "__main__":
    main()
