"""Configuration: defaults, config file, environment and flags → one frozen ``Settings``.

Sources, lowest to highest precedence: the defaults below; the YAML file
``/etc/reconciler/config.yaml`` (or ``$RECONCILER_CONFIG``, or the path the
CLI names), checked against ``schemas/config.schema.json``; ``RECONCILER_*``
environment variables; and explicit overrides, which the CLI builds from its
flags. The result is a plain value that cli.py and daemon.py pass down; no
other module reads the environment or the file. SIGHUP simply calls
``load_settings`` again.

Settings that guard the host against its input (``allowWritableManifestDir``,
``allowedDiskRoots``, ``allowedSecretRoots``, ``source``: the repository
the daemon follows and the keys it trusts) come from the root-owned file or
flags only, never the environment. Every host path a manifest names passes
one check against the two lists of roots (hostpaths.py): password files
against ``allowedSecretRoots`` (default ``/etc/reconciler/secrets``), all
others against ``allowedDiskRoots``. ``check_manifest_dir`` enforces SPEC
§5: a root daemon refuses a manifest directory (its ``.git`` included) that
users other than root can write to.

Errors are ``ConfigError``s, one line per problem, naming the file, line and
column and the field (``config.yaml:3:17: resyncInterval: ...``), or the
environment variable or flag, and what was expected.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast, get_args

from reconciler import gitrev
from reconciler.errors import ConfigError, Problem, SourcePosition
from reconciler.gitsource import GitSourceConfig, git_source_from_config
from reconciler.hostdefaults import VmDefaults, vm_defaults_from_config
from reconciler.hostpaths import HostPath, PathPolicy
from reconciler.logs import LogFormat
from reconciler.manifests import is_manifest_file
from reconciler.schema import _explain as explain_schema_error
from reconciler.schema import schema_dir
from reconciler.units import parse_duration, too_long
from reconciler.yamlsource import Document, YamlProblem, parse_documents

UpdatePolicy = Literal["manual", "restart"]

DEFAULT_CONFIG_PATH = Path("/etc/reconciler/config.yaml")
CONFIG_ENV = "RECONCILER_CONFIG"
DEFAULT_DISK_ROOTS: tuple[Path, ...] = tuple(
    Path(p) for p in ("/var/lib/libvirt", "/srv", "/opt", "/var/lib/reconciler")
)
# graphics.passwordFile: read by the root daemon itself, so a folder of its own
DEFAULT_SECRET_ROOTS: tuple[Path, ...] = (Path("/etc/reconciler/secrets"),)
# loopback only: metrics say which VMs a host runs; 9731 is in the exporters' range
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9731"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon and the commands are configured with; durations in seconds."""

    uri: str = "qemu:///system"
    manifest_dir: Path = Path("/etc/reconciler/manifests")
    state_dir: Path = Path("/var/lib/reconciler")
    resync_interval: float = 300.0
    debounce: float = 0.5
    prune: bool = True
    default_update_policy: UpdatePolicy = "manual"
    log_format: LogFormat = "auto"
    # host:port of the Prometheus endpoint (metrics.py); None: no endpoint
    metrics_address: str | None = DEFAULT_METRICS_ADDRESS
    # node_exporter textfile written after each pass; None: none
    metrics_textfile: Path | None = None
    allow_writable_manifest_dir: bool = False
    allowed_disk_roots: tuple[Path, ...] = DEFAULT_DISK_ROOTS
    allowed_secret_roots: tuple[Path, ...] = DEFAULT_SECRET_ROOTS
    # matched against metadata.hosts; None: the connected host's own name (cli.py and
    # daemon.py ask Hypervisor.host_name: libvirt's for a remote URI, this machine's else)
    host: str | None = None
    # merged under every VM manifest (hostdefaults.py)
    vm_defaults: VmDefaults = field(default_factory=VmDefaults)
    # source.git: the daemon follows this repository instead of manifest_dir (gitsource.py)
    git_source: GitSourceConfig | None = None
    config_file: Path | None = None  # the file that was read, if any (for logs)

    def disk_path_allowed(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path``, symlinks resolved, lies under one of ``allowed_disk_roots``
        (the one check of hostpaths.py, as the planner makes it)."""
        policy = PathPolicy(self.allowed_disk_roots, self.allowed_secret_roots)
        return policy.refusal(HostPath("path", os.fspath(path))) is None


# --------------------------------------------------------------------------
# Field table: one row per setting, shared by the file, environment and flags
# --------------------------------------------------------------------------

Coerce = Callable[[object], object]


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # Settings attribute, and the key of overrides
    key: str  # key in the config file
    env: str | None  # environment variable, None: not settable from the environment
    coerce: Coerce  # text (environment, flags) or typed value → the Settings value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _path(value: object) -> Path:
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"expected a path, got {value!r}")
    text = os.fspath(value)
    if not text:
        raise ValueError("must not be empty")
    return Path(os.path.abspath(text))


def _roots(value: object) -> tuple[Path, ...]:
    items: Sequence[object]
    if isinstance(value, str):
        items = [p for p in value.split(os.pathsep) if p]
    elif isinstance(value, Sequence):
        items = value
    else:
        raise ValueError(f"expected a list of absolute paths, got {value!r}")
    roots: list[Path] = []
    for item in items:
        if not isinstance(item, str | os.PathLike) or not os.path.isabs(item):
            raise ValueError(f"{item!r} is not an absolute path (expected e.g. /srv/images)")
        roots.append(Path(os.path.normpath(item)))
    return tuple(roots)


_OFF = ("", "off")


def _listen_address(value: object) -> str | None:
    """``host:port`` (``[::1]:9731`` for IPv6; port 0: any free port, logged), or None for
    ``off`` or empty."""
    expected = "expected host:port such as 127.0.0.1:9731, or off"
    if value is False or value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address ({expected})")
    text = value.strip()
    if text.lower() in _OFF:
        return None
    host, sep, port = text.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not bare or not port.isdigit() or not 0 <= int(port) < 65536 or (
        ":" in bare and not host.startswith("[")
    ):
        raise ValueError(f"{value!r} is not an address ({expected})")
    return text


def _optional_path(value: object) -> Path | None:
    if value is False or value is None or (isinstance(value, str) and value.strip() in _OFF):
        return None
    return _path(value)


def _duration(*, positive: bool) -> Coerce:
    expected = "expected e.g. 5m, 500ms, or a number of seconds"

    def coerce(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"{value!r} is not a duration ({expected})")
        seconds: float
        if isinstance(value, str):
            try:
                seconds = float(value) if _is_number(value) else parse_duration(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is not a duration ({expected})") from None
        else:
            seconds = float(value)
        if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
            raise ValueError(f"{value!r} is not a duration ({expected})")
        if positive and seconds == 0:
            raise ValueError(f"{value!r} must be more than zero")
        if (why := too_long(seconds)) is not None:  # (a wait of 1e300 s: OverflowError)
            raise ValueError(f"{value!r} {why}")
        return seconds

    return coerce


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{value!r} is not true or false (expected one of: true, false, 1, 0)")


def _choice(options: tuple[str, ...]) -> Coerce:
    def coerce(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        raise ValueError(f"{value!r} is not one of: {', '.join(options)}")

    return coerce


_FIELDS: tuple[_Field, ...] = (
    _Field("uri", "uri", "RECONCILER_URI", _text),
    _Field("manifest_dir", "manifestDir", "RECONCILER_MANIFEST_DIR", _path),
    _Field("state_dir", "stateDir", "RECONCILER_STATE_DIR", _path),
    _Field("resync_interval", "resyncInterval", "RECONCILER_RESYNC_INTERVAL",
           _duration(positive=True)),
    _Field("debounce", "debounce", "RECONCILER_DEBOUNCE", _duration(positive=False)),
    _Field("prune", "prune", "RECONCILER_PRUNE", _bool),
    _Field("default_update_policy", "defaultUpdatePolicy", "RECONCILER_UPDATE_POLICY",
           _choice(get_args(UpdatePolicy))),
    _Field("log_format", "logFormat", "RECONCILER_LOG_FORMAT", _choice(get_args(LogFormat))),
    _Field("metrics_address", "metricsAddress", "RECONCILER_METRICS_ADDRESS", _listen_address),
    _Field("metrics_textfile", "metricsTextfile", "RECONCILER_METRICS_TEXTFILE", _optional_path),
    _Field("allow_writable_manifest_dir", "allowWritableManifestDir", None, _bool),
    _Field("allowed_disk_roots", "allowedDiskRoots", None, _roots),
    _Field("allowed_secret_roots", "allowedSecretRoots", None, _roots),
    _Field("host", "host", "RECONCILER_HOST", _text),
    _Field("vm_defaults", "vmDefaults", None, vm_defaults_from_config),
    _Field("git_source", "source", None, git_source_from_config),
)  # fmt: skip
_BY_NAME = {f.name: f for f in _FIELDS}
_BY_KEY = {f.key: f for f in _FIELDS}
ENVIRONMENT_VARIABLES: tuple[str, ...] = (
    CONFIG_ENV,
    *(f.env for f in _FIELDS if f.env is not None),
)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def load_settings(
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] = os.environ,
    overrides: Mapping[str, object] = {},
) -> Settings:
    """Defaults < config file < environment < ``overrides`` (Settings field names → values).

    ``config_path`` (else ``$RECONCILER_CONFIG``) names a file that must exist;
    the default ``/etc/reconciler/config.yaml`` may be absent. An override of
    None means "not given" (an unset flag). Override values may be text, parsed
    like the environment, or values of the field's type.
    """
    explicit = config_path is not None or bool(environ.get(CONFIG_ENV))
    path = config_path or Path(environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    values: dict[str, object] = {}
    config_file: Path | None = None
    if explicit or path.exists():
        values.update(_read_config_file(path))
        config_file = path
    for f in _FIELDS:
        raw = environ.get(f.env) if f.env else None
        if raw:  # an empty variable counts as unset, as in systemd units
            values[f.name] = _coerce(f, raw, f.env or "")
    for name, value in overrides.items():
        if name not in _BY_NAME:
            raise ValueError(f"unknown setting {name!r}")  # a bug in the caller
        if value is not None:
            values[name] = _coerce(_BY_NAME[name], value, "--" + name.replace("_", "-"))
    defaults = values.get("vm_defaults")
    if isinstance(defaults, VmDefaults) and config_file is not None:
        values["vm_defaults"] = replace(defaults, origin=str(config_file))
    return replace(Settings(), config_file=config_file, **cast(dict[str, Any], values))


def _coerce(f: _Field, value: object, source: str) -> object:
    try:
        return f.coerce(value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


@cache
def _schema() -> Any:
    return json.loads((schema_dir() / "config.schema.json").read_text(encoding="utf-8"))


def _errors(value: object) -> list[Any]:
    """python-jsonschema's errors (rich, for messages), only when jsonschema-rs
    (fast, and no slow import on every command) says the file is invalid."""
    import jsonschema_rs

    schema = _schema()
    if jsonschema_rs.Draft202012Validator(schema).is_valid(value):
        return []
    import jsonschema

    return list(jsonschema.Draft202012Validator(schema).iter_errors(value))


def _read_config_file(path: Path) -> dict[str, object]:
    """The settings written in the file, as Settings field names → values."""
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{shown}: configuration file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a directory, expected a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown}: cannot read configuration: {exc}") from None
    try:
        documents = list(parse_documents(text))
    except YamlProblem as exc:
        raise ConfigError(
            str(Problem(SourcePosition(shown, exc.line, exc.column), exc.message, hint=exc.hint))
        ) from None
    if not documents:
        return {}  # an empty file, or comments only: all defaults
    if len(documents) > 1:
        second = documents[1]
        raise ConfigError(
            str(
                Problem(
                    SourcePosition(shown, second.line, second.column),
                    "expected one YAML document, found more",
                    hint="remove the '---' separator",
                )
            )
        )
    document = documents[0]
    if not isinstance(document.value, dict):
        raise ConfigError(
            str(
                Problem(
                    SourcePosition(shown, document.line, document.column),
                    "expected a mapping of settings (e.g. 'uri: qemu:///system')",
                )
            )
        )
    problems = [
        Problem(
            _position(shown, document, p.path, key=p.at_key),
            p.message,
            ".".join(str(part) for part in p.path),
            p.hint,
        )
        for error in _errors(document.value)
        for p in explain_schema_error(error)
    ]
    values: dict[str, object] = {}
    if not problems:
        for key, value in document.value.items():
            f = _BY_KEY[key]
            try:
                values[f.name] = f.coerce(value)
            except ValueError as exc:
                # a coercion may name the field inside the setting (vmDefaults.cpu.model)
                inner = tuple(getattr(exc, "path", ()))
                problems.append(Problem(_position(shown, document, (key, *inner)), str(exc),
                                        ".".join((key, *map(str, inner)))))  # fmt: skip
    if problems:
        problems.sort(key=lambda p: (p.position.line, p.position.column))
        raise ConfigError("\n".join(str(p) for p in problems))
    return values


def _position(
    shown: str, document: Document, path: tuple[str | int, ...], *, key: bool = False
) -> SourcePosition:
    found = document.position(path, key=key) or document.position(path[:-1], key=True)
    line, column = found or (document.line, document.column)
    return SourcePosition(shown, line, column)


# --------------------------------------------------------------------------
# The manifest directory is input to a root daemon
# --------------------------------------------------------------------------


def check_manifest_dir(path: Path, settings: Settings) -> None:
    """Refuse ``path`` if a user other than root (or this process's user) could change it.

    Checked, symlinks resolved: the directory and every parent up to ``/``
    (a parent may be writable by all if its sticky bit is set, as ``/tmp``
    is); the git repository the directory is in, if any, before anything of
    it is read (``.git``, the git dir a ``.git`` file names, and every file
    and folder ``gitrev.paths_read`` lists: HEAD, refs, packed-refs, config,
    index, objects); every sub-directory the loader enters and every
    manifest file (and, for a symlinked file, its target's parents). Each must be owned by root
    or by the user this process runs as, and not writable by group (unless
    the group is root) or others. A missing directory passes when its
    existing parents do; the loader reports it missing. Nothing is checked
    when ``settings.allow_writable_manifest_dir`` is set.
    """
    if settings.allow_writable_manifest_dir:
        return
    real = Path(os.path.realpath(path))
    trusted = {0, os.geteuid()}
    _check_ancestors(path, real, trusted)
    _check_repository(path, real, trusted)
    if not real.is_dir():
        return
    for directory, subdirs, files in os.walk(real, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in subdirs:
            _check_entry(path, Path(directory, name), trusted)
        for name in sorted(files):
            if not is_manifest_file(name):
                continue
            entry = Path(directory, name)
            if entry.is_symlink():
                _check_ancestors(path, Path(os.path.realpath(entry)), trusted)
            else:
                _check_entry(path, entry, trusted)


def _check_repository(shown: Path, real: Path, trusted: set[int]) -> None:
    """The git repository whose work tree holds ``real`` (``.git`` in it or a parent), as
    far as gitrev.py reads it: each path is checked before it is read."""

    def vet(node: Path) -> None:
        _check_ancestors(shown, Path(os.path.realpath(node)), trusted)

    repo = gitrev.find_repository(real, vet=vet)
    if repo is None:
        return
    for node in gitrev.paths_read(repo):
        if node.is_symlink():
            vet(node)
        else:
            _check_entry(shown, node, trusted)


def _check_ancestors(shown: Path, real: Path, trusted: set[int]) -> None:
    """``real`` and its parents, from ``/`` down; parents may be sticky and shared."""
    for node in reversed((real, *real.parents)):
        try:
            st = os.stat(node)
        except FileNotFoundError:
            return  # nothing below a missing component exists
        except OSError as exc:
            raise ConfigError(f"{shown}: cannot check {node}: {exc.strerror}") from None
        _check_stat(shown, node, st, trusted, sticky_ok=node != real and stat.S_ISDIR(st.st_mode))


def _check_entry(shown: Path, entry: Path, trusted: set[int]) -> None:
    try:
        st = os.stat(entry)
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot check {entry}: {exc.strerror}") from None
    _check_stat(shown, entry, st, trusted, sticky_ok=False)


def _check_stat(
    shown: Path, node: Path, st: os.stat_result, trusted: set[int], *, sticky_ok: bool
) -> None:
    hint = "or set allowWritableManifestDir: true in the configuration"
    if st.st_uid not in trusted:
        raise ConfigError(
            str(
                Problem(
                    SourcePosition(str(shown)),
                    f"refusing the manifest directory: {node} is owned by "
                    f"{_user(st.st_uid)}, not root",
                    hint=f"run 'chown root: {node}', {hint}",
                )
            )
        )
    others = st.st_mode & stat.S_IWOTH
    group = st.st_mode & stat.S_IWGRP and st.st_gid != 0
    if (others or group) and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        who = "others" if others else f"group {_group(st.st_gid)}"
        raise ConfigError(
            str(
                Problem(
                    SourcePosition(str(shown)),
                    f"refusing the manifest directory: {node} is writable by {who} "
                    f"(mode {stat.S_IMODE(st.st_mode):04o})",
                    hint=f"run 'chmod go-w {node}', {hint}",
                )
            )
        )


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"
