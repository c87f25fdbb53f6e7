"""The layers hold at run time: the pure modules load no libvirt, and only the
hypervisor imports it. ``lint-imports`` (.importlinter) checks the same statically;
these tests check what Python actually loads, so a lazy or dynamic import that the
static check cannot see still fails here."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pure_modules() -> list[str]:
    """The source modules of the ``pure`` contract in .importlinter."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    names = config["importlinter:contract:pure"]["source_modules"].split()
    assert "reconciler.planner" in names
    return names


def _loaded_after_import(module: str) -> set[str]:
    """Which of libvirt / reconciler.hypervisor a fresh interpreter has loaded after
    importing ``module`` (and every module below it)."""
    code = (
        f"import importlib, sys; importlib.import_module({module!r}); "
        "print(' '.join(m for m in ('libvirt', 'reconciler.hypervisor') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("module", _pure_modules())
def test_pure_module_loads_no_libvirt(module: str) -> None:
    assert _loaded_after_import(module) == set()


def test_planner_import_alone_loads_no_libvirt() -> None:
    code = "import reconciler.planner, sys; assert 'libvirt' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_hypervisor_does_load_libvirt() -> None:
    # the probe above can see libvirt when it is there
    assert _loaded_after_import("reconciler.hypervisor") == {"libvirt", "reconciler.hypervisor"}


def test_only_the_hypervisor_imports_libvirt() -> None:
    importers = []
    for path in sorted((ROOT / "reconciler").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            if any(n == "libvirt" or n.startswith("libvirt.") for n in names):
                importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["reconciler/hypervisor.py"]


def test_the_architecture_page_lists_the_contract_layers_in_order() -> None:
    """docs/architecture.md's layer table and .importlinter name the same modules, top
    to bottom: the page a newcomer reads is the contract that is checked."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"].split("\n")
    contract = [m.strip() for layer in layers if layer.strip() for m in layer.split("|")]
    page = (ROOT / "docs" / "architecture.md").read_text()
    table = page[page.index("| layer (top to bottom) |"):].split("\n\n")[0]
    documented = [
        name
        for row in table.splitlines()[2:]
        for name in re.findall(r"`([\w.]+)`", re.split(r"(?<!\\)\|", row)[2])
    ]
    assert documented == contract


@pytest.mark.parametrize("package", ["planner", "export"])
def test_the_architecture_page_lists_each_package_layers_in_order(package: str) -> None:
    """The tables of planner/ and export/ on docs/architecture.md name the files of their
    contracts in .importlinter, top to bottom, and every file of the package is in one."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config[f"importlinter:contract:{package}"]["layers"].split("\n")
    contract = [m.strip() for layer in layers if layer.strip() for m in layer.split("|")]
    page = (ROOT / "docs" / "architecture.md").read_text()
    table = page[page.index(f"| {package}, top to bottom |"):].split("\n\n")[0]
    documented = [
        name
        for row in table.splitlines()[2:]
        for name in re.findall(r"`([\w.]+)`", re.split(r"(?<!\\)\|", row)[1])
    ]
    assert documented == contract
    files = {p.stem for p in (ROOT / "reconciler" / package).glob("*.py")} - {"__init__"}
    assert files == set(contract)
