"""sd_notify: the datagrams systemd would receive, on a real AF_UNIX socket."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.sdnotify import format_message, notify, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket, and its address."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_ready_and_status_reach_the_socket_named_by_notify_socket(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert notify(ready=True, status="12 objects: 12 in sync")
    assert sock.recv(4096) == b"READY=1\nSTATUS=12 objects: 12 in sync"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"watchdog": True}, b"WATCHDOG=1"),
        (
            {"stopping": True, "status": "finishing web-1 shutdown"},
            b"STOPPING=1\nSTATUS=finishing web-1 shutdown",
        ),
        ({"status": "line one\nline two"}, b"STATUS=line one line two"),
        ({"errno": 5, "ready": False}, b"ERRNO=5"),
        ({"mainpid": 4242}, b"MAINPID=4242"),
    ],
)
def test_fields_become_key_value_lines(
    listener: tuple[socket.socket, str], fields: dict[str, str | int | bool], expected: bytes
) -> None:
    sock, address = listener
    assert notify(environ={"NOTIFY_SOCKET": address}, **fields)
    assert sock.recv(4096) == expected


def test_reloading_carries_the_monotonic_timestamp(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    assert notify(environ={"NOTIFY_SOCKET": address}, reloading=True)
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and int(value) > 0


def test_abstract_namespace_socket() -> None:
    name = f"reconciler-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert notify(environ={"NOTIFY_SOCKET": "@" + name}, ready=True)
        assert sock.recv(4096) == b"READY=1"


def test_without_notify_socket_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify(ready=True) is False
    assert notify(environ={"NOTIFY_SOCKET": ""}, ready=True) is False


def test_a_failed_send_is_reported_not_raised(tmp_path: Path) -> None:
    assert notify(environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}, ready=True) is False
    assert notify(environ={"NOTIFY_SOCKET": "vsock:2:1234"}, ready=True) is False


def test_format_message() -> None:
    assert format_message({"ready": True, "status": "ok"}) == b"READY=1\nSTATUS=ok"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected
