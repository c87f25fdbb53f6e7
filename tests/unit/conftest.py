"""Helpers for the unit tier: write manifest files into a temporary directory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

WriteFiles = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path) -> WriteFiles:
    """write(name=text, ...) → the directory; text is dedented, names may contain '/'."""

    def _write(**files: str | bytes) -> Path:
        root = tmp_path / "m"
        root.mkdir(exist_ok=True)
        for name, text in files.items():
            path = root / name.replace("__", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, bytes):
                path.write_bytes(text)
            else:
                path.write_text(textwrap.dedent(text).lstrip("\n"))
        return root

    return _write
