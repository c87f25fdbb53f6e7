"""Preflight of the VM devices a manifest names (preflight._device_caps): the TPM, secure
boot, video model and rng backend against the host's domain capabilities; and the hint
for a secure-boot start QEMU refuses for want of SMM (hints.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.hints import explain, subjects_of
from reconciler.manifests import load_directory
from tests.unit.conftest import WriteFiles
from tests.unit.test_preflight import FACTS, caps, line_of, problems, vm

# libvirt 9.0's domcapabilities (q35, qemu), cut to the parts checked
DOMCAPS = """<domainCapabilities><os supported='yes'><loader supported='yes'>
<value>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</value>
<enum name='secure'><value>{secure}</value></enum></loader></os>
<devices><video supported='yes'><enum name='modelType'><value>vga</value>
<value>virtio</value><value>none</value></enum></video>
<rng supported='yes'><enum name='model'><value>virtio</value></enum>
<enum name='backendModel'><value>random</value><value>egd</value></enum></rng>
<tpm supported='yes'><enum name='model'><value>tpm-tis</value><value>tpm-crb</value></enum>
<enum name='backendModel'><value>passthrough</value>{emulator}</enum></tpm></devices>
</domainCapabilities>"""

SPEC = """machine: q35
firmware: {type: uefi, secureBoot: true}
tpm: {model: tpm-crb}
video: {model: virtio}
rng: {backend: /dev/urandom}"""


def _facts(secure: str = "yes", emulator: str = "<value>emulator</value>") -> object:
    xml = DOMCAPS.format(secure=secure, emulator=emulator)
    return replace(FACTS, machine_caps={**FACTS.machine_caps,
                                        ("x86_64", "q35", "qemu"): caps("pc-q35-7.2", xml=xml)})


def test_a_host_that_offers_them_passes() -> None:
    assert problems(vm(SPEC), facts=_facts()) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(("facts", "text", "where", "message"), [
    ({"emulator": ""}, SPEC, "tpm", "spec.tpm: this host offers no emulated TPM; install "
     "swtpm (apt install swtpm swtpm-tools), or remove tpm"),
    ({"secure": "no"}, SPEC, "secureBoot", "spec.firmware.secureBoot: this host's firmware "
     "offers no secure boot; install OVMF (apt install ovmf), or write secureBoot: false"),
    ({}, SPEC.replace("model: virtio", "model: qxl"), "qxl",
     "spec.video.model: this host's QEMU has no qxl video device; use none, vga, virtio"),
])  # fmt: skip
def test_what_the_host_lacks_is_one_problem_at_its_line(
    facts: dict[str, str], text: str, where: str, message: str
) -> None:
    manifest = vm(text)
    found = problems(manifest, facts=_facts(**facts))  # type: ignore[arg-type]
    assert len(found) == 1, found
    assert found[0].startswith(f"m/vm.yaml:{line_of(manifest, where)}:"), found[0]
    assert found[0].endswith(message), found[0]


def test_a_start_refused_for_want_of_smm_says_to_use_tcg(write: WriteFiles) -> None:
    # measured under nested KVM (libvirt 9.0, QEMU 7.2): a secure-boot VM of type kvm
    text = ("apiVersion: reconciler/v1\nkind: VirtualMachine\nmetadata: {name: w}\nspec:\n"
            "  type: kvm\n  memory: 64MiB\n  machine: q35\n"
            "  firmware: {type: uefi, secureBoot: true}\n")  # fmt: skip
    [m] = load_directory(write(**{"m.yaml": text})).manifests
    message = ("start-domain: starting domain w: internal error: qemu unexpectedly closed the "
               "monitor: 2026-11-30T15:08:39.382354Z qemu-system-x86_64: System Management "
               "Mode not supported by this hypervisor.")  # fmt: skip
    problem = explain(message, subjects_of(m))
    assert problem.field == "spec.firmware.secureBoot"  # the cause; the hint names both fixes
    assert "spec.type: qemu" in problem.hint and "secure boot" in problem.hint
