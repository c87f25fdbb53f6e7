"""Fixtures for the integration tier: tests against a REAL libvirtd.

Every test under this directory is marked ``libvirt`` automatically. The tier
never skips because libvirtd is missing: ``scripts/setup-host.sh`` starts it,
and CI must fail loudly when it is not there.

Each run gets a unique name prefix (``rctest-<8 hex>-``). Everything a test
creates must be named with it (use the ``names`` fixture); at the end of the
session every domain, network, storage pool and volume whose name starts with
the prefix is removed, whether the tests passed or not. Nothing else on the
host is touched.

``libvirt`` is imported lazily so that the unit tier never needs it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent

START_HINT = (
    "Start libvirtd with `bash scripts/setup-host.sh` (as root), or by hand with "
    "`virtlogd -d && libvirtd -d` (`systemctl start libvirtd` on a systemd host), "
    "then check `virsh -c qemu:///system version`. Set RECONCILER_TEST_URI to "
    "use another URI."
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item, not only ours: filter by path.
    for item in items:
        if _HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.libvirt)


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    return os.environ.get("RECONCILER_TEST_URI", "qemu:///system")


@pytest.fixture(scope="session")
def conn(libvirt_uri: str) -> Iterator[Any]:
    """An open libvirt connection (``libvirt.virConnect``) for the session."""
    import libvirt

    try:
        c = libvirt.open(libvirt_uri)
    except libvirt.libvirtError as e:
        pytest.fail(f"cannot connect to libvirt at {libvirt_uri}: {e}\n{START_HINT}", pytrace=False)
    if c is None:  # very old bindings returned None instead of raising
        pytest.fail(f"cannot connect to libvirt at {libvirt_uri}\n{START_HINT}", pytrace=False)
    try:
        yield c
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            c.close()


@pytest.fixture(scope="session")
def run_id() -> str:
    """8 hex digits, unique to this test session."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def prefix(run_id: str) -> str:
    """Name prefix of every libvirt object this session creates."""
    return f"rctest-{run_id}-"


_PROBED: list[str] = []  # the probe's summary, for the end of the run


@pytest.fixture(scope="session")
def host_probe(libvirt_uri: str, prefix: str) -> Any:
    """What this host can start (``reconciler.hostprobe.ProbeResult``), found once per run
    with the product's own probe: ``type: kvm`` as it is, kvm with the CPU defaults a
    quirky host needs (AMD under nested KVM: arch-capabilities disabled), or only
    ``type: qemu``. Tests get it as ``vm_defaults``, the host's vmDefaults."""
    from reconciler import hostprobe
    from reconciler.hypervisor import Hypervisor

    with Hypervisor.open(libvirt_uri) as hv:
        result = hostprobe.probe(hv, prefix=prefix + "probe-")
    _PROBED.append(result.summary())
    if result.defaults is None:
        pytest.fail(f"host probe: {result.summary()}", pytrace=False)
    return result


@pytest.fixture(scope="session")
def vm_defaults(host_probe: Any) -> Any:
    """The ``VmDefaults`` this host needs (empty on a host where kvm starts as it is);
    every test that starts a domain uses them, as the product's configuration would."""
    return host_probe.defaults


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _PROBED:
        terminalreporter.write_line(f"host probe: {line}")


@pytest.fixture(scope="session")
def names(prefix: str) -> Callable[[str], str]:
    """``names("web")`` -> ``"rctest-<id>-web"``."""

    def make(suffix: str) -> str:
        return prefix + suffix

    return make


@pytest.fixture(scope="session")
def bridge_names(run_id: str) -> Callable[[int], str]:
    """``bridge_names(0)`` -> ``"rct<id>-0"``: Linux bridge names are at most 15 chars."""

    def make(n: int) -> str:
        name = f"rct{run_id}-{n}"
        assert len(name) <= 15, name
        return name

    return make


@pytest.fixture(scope="session", autouse=True)
def _cleanup_prefixed(conn: Any, prefix: str) -> Iterator[None]:
    """Remove every libvirt object named with this session's prefix at the end."""
    yield
    problems = remove_prefixed(conn, prefix)
    if problems:
        pytest.fail(
            f"cleanup of {prefix}* objects left problems:\n  " + "\n  ".join(problems),
            pytrace=False,
        )


def remove_prefixed(conn: Any, prefix: str) -> list[str]:
    """Destroy/undefine/delete all objects whose name starts with ``prefix``.

    Order: domains (they use the rest), volumes, pools, networks. Returns a list
    of human-readable problems (empty when everything went away).
    """
    import libvirt

    problems: list[str] = []

    def attempt(what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
            return True
        except libvirt.libvirtError as e:
            problems.append(f"{what}: {e}")
            return False

    def is_persistent(obj: Any) -> bool:
        # A transient object disappears when destroyed; lookups then fail.
        try:
            return bool(obj.isPersistent())
        except libvirt.libvirtError:
            return False

    # Domains.
    undefine_flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | getattr(libvirt, "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA", 0)
    )
    for dom in conn.listAllDomains(0):
        name = dom.name()
        if not name.startswith(prefix):
            continue
        if dom.isActive():
            attempt(f"destroy domain {name}", dom.destroy)
        if is_persistent(dom):
            try:
                dom.undefineFlags(undefine_flags)
            except libvirt.libvirtError:
                attempt(f"undefine domain {name}", dom.undefine)

    # Volumes: any volume named with the prefix, and every volume in our pools.
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        pool_name = pool.name()
        ours = pool_name.startswith(prefix)
        with contextlib.suppress(libvirt.libvirtError):
            pool.refresh(0)
        try:
            vols = pool.listAllVolumes(0)
        except libvirt.libvirtError as e:
            if ours:
                problems.append(f"list volumes of pool {pool_name}: {e}")
            continue
        for vol in vols:
            if ours or vol.name().startswith(prefix):
                what = f"delete volume {pool_name}/{vol.name()}"
                attempt(what, functools.partial(vol.delete, 0))

    # Pools (left on disk: a pool's target directory is not deleted).
    for pool in conn.listAllStoragePools(0):
        name = pool.name()
        if not name.startswith(prefix):
            continue
        if pool.isActive():
            attempt(f"destroy pool {name}", pool.destroy)
        if is_persistent(pool):
            attempt(f"undefine pool {name}", pool.undefine)

    # Networks.
    for net in conn.listAllNetworks(0):
        name = net.name()
        if not name.startswith(prefix):
            continue
        if net.isActive():
            attempt(f"destroy network {name}", net.destroy)
        if is_persistent(net):
            attempt(f"undefine network {name}", net.undefine)

    return problems
