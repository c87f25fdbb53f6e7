"""A field that is "X or null" (mtu, bandwidth, vlan, emulatorpin...) says what is
wrong with the value as an X. Found by breaking issue 13's vocabulary: ``mtu: -1``,
``bandwidth: {inbound: {average: 99999999999999}}`` and ``emulatorpin: "0<1"`` were
answered "is not valid under any of the given schemas", with no field inside and no
fix."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.model import Kind
from reconciler.schema import validate_document


def problems(**spec: Any) -> list[tuple[str, str]]:
    document = {"apiVersion": "reconciler/v1", "kind": "VirtualMachine",
                "metadata": {"name": "vm"},
                "spec": {"memory": "256MiB", "vcpus": 2, **spec}}  # fmt: skip
    return [(".".join(map(str, p.path)), p.message)
            for p in validate_document(Kind.VIRTUAL_MACHINE, document)]  # fmt: skip


NIC = {"network": "lan"}


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"interfaces": [{**NIC, "mtu": -1}]}, "spec.interfaces.0.mtu",
         "-1 is out of range (expected at least 68)"),
        ({"interfaces": [{**NIC, "mtu": 99999999}]}, "spec.interfaces.0.mtu",
         "99999999 is out of range (expected at most 65535)"),
        ({"interfaces": [{**NIC, "bandwidth": {"inbound": {"average": 99999999999999}}}]},
         "spec.interfaces.0.bandwidth.inbound.average",
         "99999999999999 is not a rate (a number of KiB/s, or e.g. 1000KiB/s)"),
        ({"cputune": {"emulatorpin": "0<1"}}, "spec.cputune.emulatorpin",
         "'0<1' is not a CPU set (expected e.g. 0-1 or 0,2-3)"),
    ],
)  # fmt: skip
def test_the_message_is_about_the_value_not_the_alternatives(
    spec: dict[str, Any], path: str, message: str
) -> None:
    assert problems(**spec) == [(path, message)]


def test_null_is_still_accepted() -> None:
    assert problems(interfaces=[{**NIC, "mtu": None, "bandwidth": None}],
                    cputune={"emulatorpin": None}) == []  # fmt: skip


def test_a_very_long_value_is_not_repeated_whole() -> None:
    share = {"driver": "9p", "source": "/srv/share", "target": "x" * 5000}
    [(path, message)] = problems(filesystems=[share])
    assert path == "spec.filesystems.0.target"
    assert len(message) < 200 and "is not a mount tag" in message and "5002 characters" in message
