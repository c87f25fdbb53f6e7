"""Sizes and durations as written in manifests ("20GiB", "90s"), parsed to ints.

Pure functions. Units follow what operators already use: K, M, G, T (like
qemu-img) and KiB, MiB, GiB, TiB are powers of 1024; KB, MB, GB, TB are powers
of 1000 (like libvirt's unit='KB'); B is bytes. Durations combine ms, s, m, h.
"""

from __future__ import annotations

import re
from fractions import Fraction

_SIZE_FACTORS: dict[str, int] = {
    "B": 1,
    "K": 1024, "KiB": 1024, "KB": 1000,
    "M": 1024**2, "MiB": 1024**2, "MB": 1000**2,
    "G": 1024**3, "GiB": 1024**3, "GB": 1000**3,
    "T": 1024**4, "TiB": 1024**4, "TB": 1000**4,
}  # fmt: skip
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(B|K|KiB|KB|M|MiB|MB|G|GiB|GB|T|TiB|TB)$")
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h))+$")
_DURATION_FACTORS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


# The largest size libvirt holds: it parses a volume's capacity and a domain's memory
# into a signed 64-bit count of bytes (LLONG_MAX; "numerical overflow: value too large"
# above it, "malformed capacity element" from 2^64), and rounds memory and qcow2
# capacity up to whole KiB, so the last KiB below 2^63 does not fit either.
MAX_SIZE = 2**63 - 1024


def too_large(size: int) -> str | None:
    """Why libvirt cannot hold ``size`` bytes (more than ``MAX_SIZE``), said after the
    size as the manifest writes it, or None."""
    if size <= MAX_SIZE:
        return None
    # in units a manifest can write (no EiB/PiB): the bytes, and the largest TiB below
    return (f"is more than libvirt can hold (at most {MAX_SIZE}B; "
            f"{MAX_SIZE // _SIZE_FACTORS['TiB']}TiB fits)")  # fmt: skip


MAX_DURATION = 24 * 3600.0
"""The longest timeout or interval the reconciler takes, in seconds (24h): a longer
one is a typo (a wait nobody sees end; beyond ~292 years, more than a timer holds)."""


def too_long(seconds: float) -> str | None:
    """Why a duration of ``seconds`` is refused (more than ``MAX_DURATION``), said after
    the duration as written, or None."""
    if seconds <= MAX_DURATION:
        return None
    return "is longer than 24h, the longest the reconciler waits"


def parse_size(text: str) -> int:
    """Return the number of bytes in ``text`` (rounded down), or raise ValueError."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (expected e.g. 1GiB)")
    number, unit = match.groups()
    if "." not in number:
        return int(number) * _SIZE_FACTORS[unit]
    return int(Fraction(number) * _SIZE_FACTORS[unit])


def parse_duration(text: str) -> float:
    """Return the number of seconds in ``text``, or raise ValueError."""
    if _DURATION.match(text) is None:
        raise ValueError(f"{text!r} is not a duration (expected e.g. 90s)")
    total_ms = sum(int(n) * _DURATION_FACTORS_MS[u] for n, u in _DURATION_PART.findall(text))
    return total_ms / 1000


def format_size(size: int) -> str:
    """The shortest exact binary-unit spelling of ``size`` bytes ("20GiB", "1536MiB")."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = _SIZE_FACTORS[unit]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def format_duration(seconds: float) -> str:
    """``seconds`` as a manifest writes a timeout: ``120s``, ``1s``, ``1500ms`` (seconds
    when whole, the unit timeouts are usually given in; milliseconds otherwise)."""
    ms = round(float(seconds) * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


_BANDWIDTH_UNITS = {"average": "KiB/s", "peak": "KiB/s", "floor": "KiB/s", "burst": "KiB"}


def format_bandwidth(path: str, value: object) -> str | None:
    """A bandwidth value of field ``path`` (``...bandwidth.inbound.average``) with
    libvirt's unit, as a manifest may write it: ``1024KiB/s`` for average, peak and
    floor, ``2048KiB`` for burst (formatdomain/formatnetwork "Quality of service").
    None for another field or a value that is not a whole number."""
    head, _, name = path.rpartition(".")
    if ".bandwidth." not in f".{head}" or name not in _BANDWIDTH_UNITS:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    return f"{value}{_BANDWIDTH_UNITS[name]}"
