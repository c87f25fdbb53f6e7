"""Shared by the test_xml_* modules: golden files and specs built from manifest text.

Golden files live in tests/unit/data/xml/. Run with ``RECONCILER_REGENERATE=1``
to rewrite them from the current output (then review the diff, like
virt-manager's ``--regenerate-output``).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import SourcePosition
from reconciler.model import Manifest, build_manifest

DATA = Path(__file__).resolve().parent / "data" / "xml"
REGENERATE = os.environ.get("RECONCILER_REGENERATE") == "1"


def assert_golden(text: str, name: str) -> None:
    """``text`` equals the golden file ``name`` (rewritten under RECONCILER_REGENERATE=1)."""
    path = DATA / name
    if REGENERATE or not path.exists():
        path.write_text(text)
        if not REGENERATE:
            raise AssertionError(f"golden file {path} did not exist; written, check it in")
    assert text == path.read_text(), f"differs from {path} (RECONCILER_REGENERATE=1 rewrites it)"


def read_data(name: str) -> str:
    return (DATA / name).read_text()


def manifest(text: str) -> Manifest:
    """One manifest document (YAML) -> Manifest with parsed, defaulted spec."""
    document: Any = yaml.safe_load(textwrap.dedent(text))
    return build_manifest(document, SourcePosition("test.yaml"))
