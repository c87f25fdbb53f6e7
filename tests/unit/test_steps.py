"""Steps are typed values: one class per verb, ``verb``/``args`` as plans print them."""

from __future__ import annotations

import typing

from reconciler.plan import (
    STEP_TYPES,
    STEPS_BY_VERB,
    DefineDomain,
    DeleteVolume,
    ImportVolume,
    NetUpdate,
    Op,
    RestartDomain,
    SetMemory,
    Step,
    StopDomain,
)


def test_every_step_type_is_in_the_union_once_with_its_own_verb() -> None:
    assert set(typing.get_args(Step)) == set(STEP_TYPES)
    assert len(STEPS_BY_VERB) == len(STEP_TYPES)
    assert all(t.verb for t in STEP_TYPES)


def test_args_keep_the_json_plan_shape() -> None:
    assert DefineDomain("<domain/>").args == {"xml": "<domain/>"}
    assert DefineDomain("<a/>", current="<b/>").args == {"xml": "<a/>", "current": "<b/>"}
    assert DefineDomain("<a/>", current="<b/>").shown_args() == {}
    assert SetMemory("memory", 2**30).describe() == "set-memory path=memory bytes=1073741824"
    dns = NetUpdate("add", "dns-host", "dnsHosts[10.0.0.5]", "<host/>")
    assert dns.args == {"command": "add", "section": "dns-host", "path": "dnsHosts[10.0.0.5]",
                        "xml": "<host/>"}
    assert NetUpdate("add", "ip-dhcp-host", "p", "<host/>", 1).args["index"] == 1
    assert ImportVolume("images", "/srv/a.img").describe() == (
        "import-volume pool=images source=/srv/a.img backing=None"
    )


def test_disruptions_are_said_by_the_step() -> None:
    assert StopDomain(90).disruption(Op.DELETE) == (
        "shuts the VM down: ACPI shutdown, forced off after 90s"
    )
    assert "then start" in RestartDomain(5).disruption(Op.UPDATE_RESTART)
    assert "creates it again" in DeleteVolume("p").disruption(Op.REPLACE)
    assert DefineDomain("<domain/>").disruption(Op.UPDATE_RESTART) == ""
