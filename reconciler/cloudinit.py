"""cloud-init NoCloud seeds: a VM's ``cloudInit`` -> the files -> an ISO 9660 image.

What arrives: a VM's name and its ``CloudInit`` spec (model.py). What leaves:
``Seed``, the seed's files as text (``meta-data``, ``user-data``, optional
``network-config``) and their digest, which the planner records in the
domain's metadata to tell a changed seed (and a pending restart) from an
unchanged one; and, for the executor, ``build_iso``: the bytes of the image,
volume label ``cidata``, Joliet and Rock Ridge names as cloud-init's NoCloud
datasource reads them. The executor writes them into the seed volume
(``<vm>-cidata``, raw), which the domain has as a CD-ROM.

The instance-id is derived from the seed's content (unless metaData names
one), so a changed seed makes cloud-init run again at the guest's next boot.
The image is the same, byte for byte, for the same files: its timestamps are
fixed, so neither the digest nor the volume's content changes between plans.

Pure: no I/O. (pycdlib reads the clock; ``build_iso`` hands it a fixed one.)
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from time import gmtime, struct_time
from types import ModuleType
from typing import Any

import yaml

from reconciler.model import CloudInit
from reconciler.model import seed_volume_name as volume_name

__all__ = ["LABEL", "SEED_FORMAT", "Seed", "build_iso", "make_seed", "volume_name"]

LABEL = "cidata"
SEED_FORMAT = "raw"
# Every timestamp in the image (2000-01-01T00:00:00Z): a seed is a function of its files.
_EPOCH = 946684800.0
# ISO 9660 level 3 names (d-characters) and the names cloud-init looks for.
_ISO_NAMES = {
    "meta-data": "/META_DATA.;1",
    "user-data": "/USER_DATA.;1",
    "network-config": "/NETWORK_CONFIG.;1",
}


@dataclass(frozen=True, slots=True)
class Seed:
    """The files of a NoCloud seed (name -> text, in image order) and their digest."""

    files: tuple[tuple[str, str], ...]
    digest: str  # 16 hex digits of SHA-256 over the files
    instance_id: str

    def as_dict(self) -> dict[str, str]:
        return dict(self.files)


def _yaml(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True, allow_unicode=True)


def make_seed(vm_name: str, spec: CloudInit) -> Seed:
    """The seed files of ``vm_name``: meta-data (instance-id, local-hostname, metaData),
    user-data as written, network-config when given."""
    user_data = spec.user_data or ""
    network = None if spec.network_config is None else _yaml(dict(spec.network_config))
    extra = {str(k): v for k, v in spec.meta_data.items()}
    content = json.dumps(
        {"user": user_data, "network": network, "meta": extra, "host": vm_name},
        sort_keys=True,
        default=str,
    )
    instance_id = str(
        extra.pop("instance-id", None) or "iid-" + hashlib.sha256(content.encode()).hexdigest()[:16]
    )
    hostname = extra.pop("local-hostname", vm_name)
    # instance-id and local-hostname first (what a reader looks for), then the rest sorted
    meta = _yaml({"instance-id": instance_id}) + _yaml({"local-hostname": hostname})
    if extra:
        meta += _yaml(extra)
    files = [("meta-data", meta), ("user-data", user_data)]
    if network is not None:
        files.append(("network-config", network))
    digest = hashlib.sha256()
    for name, text in files:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return Seed(tuple(files), digest.hexdigest()[:16], instance_id)


# --- the image ------------------------------------------------------------------------


class _FixedClock:
    """Stands in for the ``time`` module inside pycdlib: a fixed 'now', read as UTC."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def time(self) -> float:
        return _EPOCH

    def localtime(self, seconds: float | None = None) -> struct_time:
        return gmtime(_EPOCH if seconds is None else seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_clock_lock = threading.Lock()


@contextmanager
def _fixed_clock(modules: list[ModuleType]) -> Iterator[None]:
    with _clock_lock:
        saved = [(m, m.time) for m in modules if isinstance(getattr(m, "time", None), ModuleType)]
        for module, real in saved:
            module.time = _FixedClock(real)  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for module, real in saved:
                module.time = real  # type: ignore[attr-defined]


def build_iso(files: Mapping[str, str]) -> bytes:
    """An ISO 9660 image labelled ``cidata`` holding ``files`` at its root (Joliet and
    Rock Ridge names as given); the same files always give the same bytes."""
    import pycdlib  # imported here: only the executor builds images
    import pycdlib.dates
    import pycdlib.headervd
    import pycdlib.inode
    import pycdlib.pycdlib
    import pycdlib.udf
    import pycdlib.utils

    modules = [pycdlib.dates, pycdlib.headervd, pycdlib.pycdlib, pycdlib.udf, pycdlib.utils]
    with _fixed_clock(modules):
        iso = pycdlib.PyCdlib()
        iso.new(
            interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL, sys_ident="LINUX"
        )
        for name, text in files.items():
            data = text.encode()
            iso_path = _ISO_NAMES.get(name) or "/" + name.upper().replace("-", "_") + ".;1"
            iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=name, joliet_path="/" + name)
        out = io.BytesIO()
        iso.write_fp(out)
        iso.close()
    return out.getvalue()
