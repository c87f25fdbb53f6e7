"""The one module that imports libvirt: connections, calls, and error wrapping.

Everything above this module sees plain Python values and reconciler's own
errors: ``ConnectionLost`` when libvirtd cannot be reached (a retry may help),
``Refused`` when libvirt rejected a request (it will not help). Read-only
helpers here feed observe.py; mutating calls are made only by executor.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import libvirt

from reconciler.errors import ConnectionLost, HypervisorError, Refused
from reconciler.references import KnownObjects

DEFAULT_URI = "qemu:///system"

_CONNECTION_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_FAILED,
}


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


libvirt.registerErrorHandler(_silence, None)


def wrap(exc: libvirt.libvirtError, doing: str) -> HypervisorError:
    """Our error for a libvirt error raised while ``doing`` something."""
    code = exc.get_error_code() or 0
    message = f"{doing}: {exc.get_error_message() or exc}"
    if code in _CONNECTION_CODES:
        return ConnectionLost(message, code=code)
    return Refused(message, code=code)


@contextmanager
def calling(doing: str) -> Iterator[None]:
    """Run libvirt calls, re-raising their errors as ours."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise wrap(exc, doing) from exc


def connect(uri: str = DEFAULT_URI, *, readonly: bool = False) -> Any:
    """Open a libvirt connection, or raise ``ConnectionLost``."""
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise ConnectionLost(
            f"cannot connect to libvirt at {uri}: {exc.get_error_message() or exc}",
            code=exc.get_error_code() or 0,
        ) from exc


def known_objects(conn: Any) -> KnownObjects:
    """Names of the networks, pools and volumes that exist in libvirt."""
    with calling("listing libvirt objects"):
        networks = frozenset(n.name() for n in conn.listAllNetworks())
        pools = conn.listAllStoragePools()
        volumes: set[tuple[str, str]] = set()
        for pool in pools:
            if pool.isActive():
                volumes.update((pool.name(), v.name()) for v in pool.listAllVolumes())
        return KnownObjects(
            networks=networks,
            pools=frozenset(p.name() for p in pools),
            volumes=frozenset(volumes),
            consulted=True,
        )
