"""Issue 11 item 6, pure parts: a running VM's NIC cut off from its network is not in
sync (planner), and the daemon's periodic check sees changes libvirt raises no event
for, and not the space a volume uses (observe.signature)."""

from __future__ import annotations

import dataclasses

from reconciler.model import Kind
from reconciler.snapshot import Observed, signature
from tests.unit.conftest import WriteFiles
from tests.unit.test_planner import action, converged, load, plan_for

PORT = "0a461ae0-8c93-42c8-9918-d8582ce1fe57"


def _with_port(observed: Observed, ports: frozenset[str]) -> Observed:
    web = observed.domains["web"]
    assert web.live_xml is not None
    live = web.live_xml.replace('<source network="lab"/>',
                                f'<source network="lab" portid="{PORT}" bridge="virbr-lab"/>')  # fmt: skip
    assert live != web.live_xml
    lab = dataclasses.replace(observed.networks["lab"], ports=ports)
    return dataclasses.replace(
        observed,
        domains={**observed.domains, "web": dataclasses.replace(web, live_xml=live)},
        networks={**observed.networks, "lab": lab},
    )


def test_a_nic_whose_port_is_gone_is_restart_pending(write: WriteFiles) -> None:
    result = load(write)
    connected = _with_port(converged(result), frozenset({PORT}))
    fine = action(plan_for(result, connected), Kind.VIRTUAL_MACHINE, "web")
    assert fine.restart_pending == () and fine.fingerprint is not None

    cut = _with_port(converged(result), frozenset())  # the network was restarted
    vm = action(plan_for(result, cut), Kind.VIRTUAL_MACHINE, "web")
    assert [(c.path, c.new) for c in vm.restart_pending] == [
        ("interfaces[52:54:00:00:00:01].connected", "yes")
    ]
    assert vm.fingerprint is None
    # a fingerprint saved while it was connected does not hide the cut
    verified = {"web": fine.fingerprint}
    again = action(plan_for(result, cut, verified=verified), Kind.VIRTUAL_MACHINE, "web")
    assert again.restart_pending
    # under updatePolicy restart the VM is restarted, which reconnects it
    restart = action(plan_for(result, cut, default_update_policy="restart"),
                     Kind.VIRTUAL_MACHINE, "web")  # fmt: skip
    assert [s.verb for s in restart.steps] == ["restart-domain"]


def test_signature_sees_drift_without_events_not_usage(write: WriteFiles) -> None:
    observed = converged(load(write))
    base = signature(observed)
    web = observed.domains["web"]
    flipped = dataclasses.replace(observed, domains={
        **observed.domains, "web": dataclasses.replace(web, autostart=not web.autostart)})  # fmt: skip
    assert signature(flipped) != base
    gone = dataclasses.replace(observed, volumes={})
    assert signature(gone) != base
    root = observed.volumes[("images", "root")]
    used = root.xml.replace("</capacity>", "</capacity><allocation unit='bytes'>4096</allocation>")
    assert used != root.xml
    grown = dataclasses.replace(observed, volumes={("images", "root"): dataclasses.replace(
        root, xml=used)})  # fmt: skip
    assert signature(grown) == base
    # objects the daemon does not manage are none of its business
    assert signature(flipped, {("Network", "lab")}) == signature(observed, {("Network", "lab")})
