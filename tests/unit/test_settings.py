"""Settings: precedence of defaults, file, environment and flags; every error's shape; the manifest directory check."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from reconciler import settings as settings_module
from reconciler.errors import ConfigError
from reconciler.settings import (
    DEFAULT_DISK_ROOTS,
    Settings,
    check_manifest_dir,
    load_settings,
)

REPO = Path(__file__).resolve().parents[2]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read this machine's /etc/reconciler/config.yaml."""
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error_of(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return str(info.value)


# --------------------------------------------------------------------------
# Defaults and precedence
# --------------------------------------------------------------------------


def test_defaults_without_any_file_or_variable() -> None:
    s = load_settings(environ={})
    assert s.uri == "qemu:///system"
    assert s.manifest_dir == Path("/etc/reconciler/manifests")
    assert s.state_dir == Path("/var/lib/reconciler")
    assert s.resync_interval == 300.0
    assert s.debounce == 0.5
    assert s.prune is True
    assert s.default_update_policy == "manual"
    assert s.log_format == "auto"
    assert s.allow_writable_manifest_dir is False
    assert s.allowed_disk_roots == DEFAULT_DISK_ROOTS
    assert s.allowed_secret_roots == (Path("/etc/reconciler/secrets"),)
    assert s.host is None  # the connected host's name, asked of libvirt once connected
    assert s.config_file is None


def test_shipped_example_config_is_all_defaults() -> None:
    path = REPO / "systemd" / "config.yaml"
    s = load_settings(config_path=path, environ={})
    assert s == Settings(host=s.host, config_file=path)


def test_file_overrides_defaults(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """
        uri: qemu+ssh://root@kvm-2/system
        manifestDir: /srv/manifests
        stateDir: /srv/state
        resyncInterval: 1m30s
        debounce: 250ms
        prune: false
        defaultUpdatePolicy: restart
        logFormat: json
        allowWritableManifestDir: true
        allowedDiskRoots: [/data, /srv/images/]
        allowedSecretRoots: [/srv/secrets]
        host: kvm-2
        """,
    )
    s = load_settings(config_path=path, environ={})
    assert s == Settings(
        uri="qemu+ssh://root@kvm-2/system",
        manifest_dir=Path("/srv/manifests"),
        state_dir=Path("/srv/state"),
        resync_interval=90.0,
        debounce=0.25,
        prune=False,
        default_update_policy="restart",
        log_format="json",
        allow_writable_manifest_dir=True,
        allowed_disk_roots=(Path("/data"), Path("/srv/images")),
        allowed_secret_roots=(Path("/srv/secrets"),),
        host="kvm-2",
        config_file=path,
    )


def test_durations_accept_numbers_of_seconds(tmp_path: Path) -> None:
    path = config(tmp_path, "resyncInterval: 90\ndebounce: 0.2\n")
    s = load_settings(config_path=path, environ={})
    assert (s.resync_interval, s.debounce) == (90.0, 0.2)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = config(tmp_path, "# nothing set\n")
    assert load_settings(config_path=path, environ={}).uri == "qemu:///system"


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    path = config(
        tmp_path, "uri: test:///file\nresyncInterval: 10m\nprune: true\nhost: from-file\n"
    )
    environ = {
        "RECONCILER_CONFIG": str(path),
        "RECONCILER_URI": "test:///env",
        "RECONCILER_RESYNC_INTERVAL": "30s",
        "RECONCILER_PRUNE": "no",
        "RECONCILER_HOST": "from-env",
        "RECONCILER_DEBOUNCE": "2",
        "RECONCILER_UPDATE_POLICY": "restart",
        "RECONCILER_LOG_FORMAT": "console",
        "RECONCILER_MANIFEST_DIR": "/srv/m",
        "RECONCILER_STATE_DIR": "/srv/s",
    }
    s = load_settings(environ=environ)
    assert s.config_file == path
    assert (s.uri, s.resync_interval, s.prune, s.host) == ("test:///env", 30.0, False, "from-env")
    assert (s.debounce, s.default_update_policy, s.log_format) == (2.0, "restart", "console")
    assert (s.manifest_dir, s.state_dir) == (Path("/srv/m"), Path("/srv/s"))

    s = load_settings(
        environ=environ,
        overrides={
            "uri": "test:///flag",
            "resync_interval": 5.0,
            "prune": None,
            "host": "from-flag",
        },
    )
    assert (s.uri, s.resync_interval, s.host) == ("test:///flag", 5.0, "from-flag")
    assert s.prune is False  # None: the flag was not given


def test_config_path_argument_beats_environment(tmp_path: Path) -> None:
    chosen = config(tmp_path, "uri: test:///chosen\n")
    other = tmp_path / "other.yaml"
    other.write_text("uri: test:///other\n")
    s = load_settings(config_path=chosen, environ={"RECONCILER_CONFIG": str(other)})
    assert s.uri == "test:///chosen"


def test_empty_environment_variables_count_as_unset() -> None:
    s = load_settings(
        environ={"RECONCILER_URI": "", "RECONCILER_HOST": "", "RECONCILER_CONFIG": ""}
    )
    assert s.uri == "qemu:///system"
    assert s.host is None


def test_overrides_parse_text_like_the_environment(tmp_path: Path) -> None:
    s = load_settings(
        environ={},
        overrides={
            "resync_interval": "2m",
            "prune": "false",
            "manifest_dir": "relative/dir",
            "allowed_disk_roots": ("/a", "/b"),
        },
    )
    assert (s.resync_interval, s.prune) == (120.0, False)
    assert s.manifest_dir == Path.cwd() / "relative" / "dir"
    assert s.allowed_disk_roots == (Path("/a"), Path("/b"))


def test_unknown_override_is_a_bug_not_a_user_error() -> None:
    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        load_settings(environ={}, overrides={"nope": 1})


def test_default_file_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config(tmp_path, "uri: test:///default\n")
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_PATH", path)
    assert load_settings(environ={}).uri == "test:///default"


# --------------------------------------------------------------------------
# Error messages: one line, path:line:col: field: message
# --------------------------------------------------------------------------


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error_of(config_path=missing, environ={}) == (
        f"{missing}: configuration file does not exist"
    )
    assert error_of(environ={"RECONCILER_CONFIG": str(missing)}) == (
        f"{missing}: configuration file does not exist"
    )


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = config(tmp_path, "uri: qemu:///system\nprune: [true\n")
    message = error_of(config_path=path, environ={})
    assert re.fullmatch(rf"{re.escape(str(path))}:3:1: not valid YAML: .*", message), message


def test_tab_indentation_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("allowedDiskRoots:\n\t- /srv\n")
    message = error_of(config_path=path, environ={})
    assert message.startswith(f"{path}:2:")
    assert "tab character" in message


def test_unknown_key_points_at_the_key_and_suggests(tmp_path: Path) -> None:
    path = config(tmp_path, "uri: qemu:///system\nmanifest_dir: /srv/m\n")
    assert error_of(config_path=path, environ={}) == (
        f"{path}:2:1: manifest_dir: unknown field; did you mean 'manifestDir'?"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "resyncInterval: 5 minutes",
            "1:17: resyncInterval: '5 minutes' is not a duration (expected e.g. 5m, 500ms, or a number of seconds)",
        ),
        (
            "resyncInterval: -3",
            "1:17: resyncInterval: -3 is not a duration (expected e.g. 5m, 500ms, or a number of seconds)",
        ),
        ("resyncInterval: 0s", "1:17: resyncInterval: '0s' must be more than zero"),
        (  # a wait beyond what a timer holds was an OverflowError in the daemon
            "debounce: 1e300",
            "1:11: debounce: 1e+300 is longer than 24h, the longest the reconciler waits",
        ),
        ("debounce: true", "1:11: debounce: expected a string or a number, got boolean true"),
        ("prune: yes", "1:8: prune: expected true or false, got string 'yes'"),
        (
            "defaultUpdatePolicy: reboot",
            "1:22: defaultUpdatePolicy: 'reboot' is not one of: manual, restart",
        ),
        ("logFormat: text", "1:12: logFormat: 'text' is not one of: auto, console, json"),
        (
            "manifestDir: manifests",
            "1:14: manifestDir: 'manifests' is not an absolute path (expected e.g. /srv/manifests)",
        ),
        (
            "allowedDiskRoots: [/srv, images]",
            "1:26: allowedDiskRoots.1: 'images' is not an absolute path (expected e.g. /srv/manifests)",
        ),
        ("uri: ''", "1:6: uri: '' must be at least 1 characters"),
    ],
)
def test_bad_values_name_position_field_and_expectation(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = config(tmp_path, text + "\n")
    assert error_of(config_path=path, environ={}) == f"{path}:{expected}"


def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    path = config(tmp_path, "logFormat: text\nuri: qemu:///system\nprune: 3\n")
    lines = error_of(config_path=path, environ={}).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["logFormat", "prune"]
    assert lines[0].startswith(f"{path}:1:12: ") and lines[1].startswith(f"{path}:3:8: ")


def test_not_a_mapping_and_several_documents(tmp_path: Path) -> None:
    path = config(tmp_path, "- uri\n")
    assert error_of(config_path=path, environ={}) == (
        f"{path}:1:1: expected a mapping of settings (e.g. 'uri: qemu:///system')"
    )
    path = config(tmp_path, "uri: a:///\n---\nuri: b:///\n")
    assert error_of(config_path=path, environ={}) == (
        f"{path}:3:1: expected one YAML document, found more; remove the '---' separator"
    )


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert error_of(config_path=tmp_path, environ={}) == (
        f"{tmp_path}: is a directory, expected a YAML file"
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "RECONCILER_RESYNC_INTERVAL",
            "soon",
            "'soon' is not a duration (expected e.g. 5m, 500ms, or a number of seconds)",
        ),
        ("RECONCILER_RESYNC_INTERVAL", "0", "'0' must be more than zero"),
        (
            "RECONCILER_DEBOUNCE",
            "-1",
            "'-1' is not a duration (expected e.g. 5m, 500ms, or a number of seconds)",
        ),
        (
            "RECONCILER_PRUNE",
            "maybe",
            "'maybe' is not true or false (expected one of: true, false, 1, 0)",
        ),
        ("RECONCILER_UPDATE_POLICY", "always", "'always' is not one of: manual, restart"),
        ("RECONCILER_LOG_FORMAT", "xml", "'xml' is not one of: auto, console, json"),
        ("RECONCILER_URI", "  ", "must not be empty"),
    ],
)
def test_bad_environment_values_name_the_variable(variable: str, value: str, expected: str) -> None:
    assert error_of(environ={variable: value}) == f"{variable}: {expected}"


def test_bad_override_names_the_flag() -> None:
    assert error_of(environ={}, overrides={"resync_interval": "later"}) == (
        "--resync-interval: 'later' is not a duration (expected e.g. 5m, 500ms, or a number of seconds)"
    )
    assert error_of(environ={}, overrides={"allowed_disk_roots": ["srv"]}) == (
        "--allowed-disk-roots: 'srv' is not an absolute path (expected e.g. /srv/images)"
    )


def test_guarding_settings_cannot_come_from_the_environment() -> None:
    s = load_settings(environ={"RECONCILER_ALLOW_WRITABLE_MANIFEST_DIR": "true"})
    assert s.allow_writable_manifest_dir is False


# --------------------------------------------------------------------------
# Allowed disk roots
# --------------------------------------------------------------------------


def test_disk_path_allowed_resolves_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    outside = tmp_path / "secret"
    outside.write_text("x")
    (root / "escape.img").symlink_to(outside)
    s = Settings(allowed_disk_roots=(root,))
    assert s.disk_path_allowed(root / "disk.qcow2")
    assert s.disk_path_allowed(root / "sub" / "disk.qcow2")
    assert not s.disk_path_allowed(root / "escape.img")
    assert not s.disk_path_allowed(root / ".." / "secret")
    assert not s.disk_path_allowed(str(tmp_path / "images-other" / "x.img"))


# --------------------------------------------------------------------------
# The manifest directory must be writable by root only
# --------------------------------------------------------------------------

STRICT = Settings()


def manifest_dir(tmp_path: Path, mode: int = 0o755) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    (directory / "vm.yaml").write_text("kind: VirtualMachine\n")
    (directory / "vm.yaml").chmod(0o644)
    directory.chmod(mode)
    return directory


def test_root_only_directory_is_accepted(tmp_path: Path) -> None:
    check_manifest_dir(manifest_dir(tmp_path), STRICT)


def test_world_writable_directory_is_refused(tmp_path: Path) -> None:
    directory = manifest_dir(tmp_path, 0o777)
    with pytest.raises(ConfigError) as info:
        check_manifest_dir(directory, STRICT)
    assert str(info.value) == (
        f"{directory}: refusing the manifest directory: {directory} is writable by others "
        f"(mode 0777); run 'chmod go-w {directory}', "
        "or set allowWritableManifestDir: true in the configuration"
    )


def test_allow_writable_manifest_dir_skips_the_check(tmp_path: Path) -> None:
    directory = manifest_dir(tmp_path, 0o777)
    check_manifest_dir(directory, Settings(allow_writable_manifest_dir=True))


def test_group_writable_is_refused_unless_the_group_is_root(tmp_path: Path) -> None:
    directory = manifest_dir(tmp_path, 0o775)
    if os.stat(directory).st_gid == 0:
        check_manifest_dir(directory, STRICT)
    if os.geteuid() == 0:
        os.chown(directory, 0, 65534)
        with pytest.raises(
            ConfigError, match=r"is writable by group .*\(gid 65534\) \(mode 0775\)"
        ):
            check_manifest_dir(directory, STRICT)


def test_writable_parent_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    directory = manifest_dir(parent)
    parent.chmod(0o777)
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(parent))} is writable by others \(mode 0777\)"
    ):
        check_manifest_dir(directory, STRICT)


def test_sticky_world_writable_parent_is_accepted(tmp_path: Path) -> None:
    parent = tmp_path / "tmp-like"
    parent.mkdir()
    directory = manifest_dir(parent)
    parent.chmod(0o1777)
    check_manifest_dir(directory, STRICT)
    directory.chmod(0o1777)  # but not on the manifest directory itself
    with pytest.raises(ConfigError, match="mode 1777"):
        check_manifest_dir(directory, STRICT)


def test_writable_subdirectory_or_file_is_refused(tmp_path: Path) -> None:
    directory = manifest_dir(tmp_path)
    sub = directory / "vms"
    sub.mkdir()
    sub.chmod(0o777)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(sub))} is writable by others"):
        check_manifest_dir(directory, STRICT)
    sub.chmod(0o755)
    (sub / "web.yml").write_text("")
    (sub / "web.yml").chmod(0o666)
    with pytest.raises(ConfigError, match=r"web\.yml is writable by others \(mode 0666\)"):
        check_manifest_dir(directory, STRICT)


def test_entries_the_loader_ignores_are_not_checked(tmp_path: Path) -> None:
    directory = manifest_dir(tmp_path)
    (directory / "README.md").write_text("")
    (directory / "README.md").chmod(0o666)
    check_manifest_dir(directory, STRICT)


def test_a_writable_git_dir_is_refused_though_the_loader_skips_it(tmp_path: Path) -> None:
    """The revision is read from .git (SPEC §5: '.git included'); see test_gitrev.py."""
    directory = manifest_dir(tmp_path)
    git = directory / ".git"
    git.mkdir()
    git.chmod(0o777)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(git))} is writable by others"):
        check_manifest_dir(directory, STRICT)


def test_symlinked_root_is_resolved_first(tmp_path: Path) -> None:
    real = manifest_dir(tmp_path, 0o777)
    link = tmp_path / "current"
    link.symlink_to(real)
    with pytest.raises(ConfigError) as info:
        check_manifest_dir(link, STRICT)
    assert str(info.value).startswith(
        f"{link}: refusing the manifest directory: {real} is writable"
    )


def test_symlinked_manifest_file_is_checked_at_its_target(tmp_path: Path) -> None:
    directory = manifest_dir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "net.yaml").write_text("")
    (directory / "net.yaml").symlink_to(elsewhere / "net.yaml")
    check_manifest_dir(directory, STRICT)
    elsewhere.chmod(0o777)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(elsewhere))} is writable by others"):
        check_manifest_dir(directory, STRICT)


@root_only
def test_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = manifest_dir(tmp_path)
    os.chown(directory, 65534, 65534)
    with pytest.raises(ConfigError) as info:
        check_manifest_dir(directory, STRICT)
    assert re.fullmatch(
        rf"{re.escape(str(directory))}: refusing the manifest directory: {re.escape(str(directory))} "
        r"is owned by (user \S+ \(uid 65534\)|uid 65534), not root; "
        rf"run 'chown root: {re.escape(str(directory))}', or set allowWritableManifestDir: true in the configuration",
        str(info.value),
    ), str(info.value)


@root_only
def test_manifest_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    directory = manifest_dir(tmp_path)
    os.chown(directory / "vm.yaml", 65534, 0)
    with pytest.raises(ConfigError, match=r"vm\.yaml is owned by .*65534"):
        check_manifest_dir(directory, STRICT)


def test_missing_directory_passes_when_its_parents_do(tmp_path: Path) -> None:
    check_manifest_dir(tmp_path / "not-yet" / "manifests", STRICT)


def test_secret_roots_come_from_the_file_only(tmp_path: Path) -> None:
    """Like allowedDiskRoots: loosening it must take root's configuration file."""
    s = load_settings(environ={"RECONCILER_ALLOWED_SECRET_ROOTS": "/"})
    assert s.allowed_secret_roots == (Path("/etc/reconciler/secrets"),)
    assert "allowed_secret_roots" not in {
        f.name for f in settings_module._FIELDS if f.env is not None
    }
    message = error_of(config_path=config(tmp_path, "allowedSecretRoots: [secrets]\n"),
                       environ={})  # fmt: skip
    assert "allowedSecretRoots.0: 'secrets' is not an absolute path" in message


# --------------------------------------------------------------------------
# Metrics: address and textfile
# --------------------------------------------------------------------------


def test_metrics_default_to_loopback_and_no_textfile() -> None:
    s = load_settings(environ={})
    assert s.metrics_address == "127.0.0.1:9731"
    assert s.metrics_textfile is None


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("metricsAddress: 127.0.0.1:9100", "127.0.0.1:9100"),
        ("metricsAddress: '[::1]:9731'", "[::1]:9731"),
        ("metricsAddress: off", None),
        ("metricsAddress: ''", None),
        ("metricsAddress: false", None),
    ],
)
def test_metrics_address_in_the_file(tmp_path: Path, text: str, address: str | None) -> None:
    s = load_settings(config_path=config(tmp_path, text + "\n"), environ={})
    assert s.metrics_address == address


def test_metrics_address_and_textfile_from_environment_and_flags(tmp_path: Path) -> None:
    env = {"RECONCILER_METRICS_ADDRESS": "off",
           "RECONCILER_METRICS_TEXTFILE": str(tmp_path / "r.prom")}  # fmt: skip
    s = load_settings(environ=env)
    assert s.metrics_address is None and s.metrics_textfile == tmp_path / "r.prom"
    s = load_settings(environ=env, overrides={"metrics_address": "localhost:9999"})
    assert s.metrics_address == "localhost:9999"


@pytest.mark.parametrize("text", ["metricsAddress: 9731", "metricsAddress: localhost",
                                  "metricsAddress: true", "metricsTextfile: reconciler.prom"])  # fmt: skip
def test_bad_metrics_settings_are_refused(tmp_path: Path, text: str) -> None:
    message = error_of(config_path=config(tmp_path, text + "\n"), environ={})
    assert text.split(":")[0] in message


@pytest.mark.parametrize("value", ["9731", "::1:9731", "host:65536", "host:70000", "host:"])
def test_bad_metrics_address_from_the_environment(value: str) -> None:
    message = error_of(environ={"RECONCILER_METRICS_ADDRESS": value})
    assert message.startswith("RECONCILER_METRICS_ADDRESS: ") and "expected host:port" in message
