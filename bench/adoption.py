"""Adoption measure: libvirt's own test XMLs, defined here, exported, planned, applied.

Run as root with libvirtd up, from the repository root::

    .venv/bin/python -m bench.adoption [-k SUBSTRING] [--json] [--diff]

The corpus is ``../shared/libvirt-xml/*.xml`` beside the repository (golden
domain XMLs from libvirt's ``tests/qemuxml2xmloutdata/``; their sources are in
``SOURCES.md`` there). The files are read in place, never copied into the
project. For each file, on the real libvirtd:

1. the XML is given a unique name (``rctest-<hex>-<file stem>``), its ``<uuid>``
   is dropped (two runs at once must not collide), and it is defined with
   ``defineXML``. A file this host refuses (an emulator feature it lacks...) is
   *skipped*, with libvirt's message: the host decides, never a list;
2. ``reconciler export NAME -d DIR`` writes its manifest (the configuration's
   ``allowedDiskRoots``: the defaults and the directories of the files the XML
   names, as an operator adopting it would set them, ``disk_roots``);
3. ``reconciler -o json plan DIR`` (fresh state directory): the VM's only change
   must be ``ownership: unmanaged -> managed``, nothing guest-visible;
4. ``reconciler apply --yes DIR``;
5. the persistent definition (``XMLDesc(INACTIVE | SECURE)``, what ``virsh
   dumpxml --inactive --security-info`` prints) before step 2 and after step 4,
   our ``<rc:owner>`` metadata taken out of both, must be identical, and no
   device may be gone.

The domain is never started. It is undefined at the end, pass or fail, with its
NVRAM file unless that file existed before the define (then it is not ours).

Used by ``tests/integration/test_adopt_libvirt_xml.py`` (one test per file) and
as a report (this module's ``main``); ``docs/adoption.md`` has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "libvirt-xml"
"""``../shared/libvirt-xml`` beside the repository (CI clones the repository with
``../shared`` next to it)."""

OWNER_NAMESPACE = "https://reconciler.dev/xmlns/domain/v1"
_INACTIVE_SECURE = 2 | 1  # VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE
_UNDEFINE_NVRAM, _UNDEFINE_KEEP_NVRAM = 4, 8  # VIR_DOMAIN_UNDEFINE_(KEEP_)NVRAM
_QUIET_FIELDS = frozenset({"ownership", "state", "autostart"})
"""Plan fields that change nothing the guest sees (the stopped VM stays stopped)."""


def corpus_files(directory: Path = CORPUS) -> list[Path]:
    """The corpus's domain XMLs, sorted by name ([] when the folder is missing)."""
    return sorted(directory.glob("*.xml")) if directory.is_dir() else []


def stem(path: Path) -> str:
    """``disk-aio`` for ``disk-aio.x86_64-latest.xml``."""
    return path.name.split(".", 1)[0]


def prepared(path: Path, name: str) -> str:
    """The file's XML renamed to ``name``, without its ``<uuid>``."""
    root = ET.parse(path).getroot()
    name_el = root.find("name")
    if name_el is None:
        name_el = ET.SubElement(root, "name")
    name_el.text = name
    for u in root.findall("uuid"):
        root.remove(u)
    return ET.tostring(root, encoding="unicode")


def without_owner(xml: str) -> ET.Element:
    """The definition with our ``<rc:owner>`` metadata taken out (and ``<metadata>``
    itself if nothing else is in it)."""
    root = ET.fromstring(xml)
    metadata = root.find("metadata")
    if metadata is not None:
        for child in list(metadata):
            if child.tag.startswith("{" + OWNER_NAMESPACE + "}"):
                metadata.remove(child)
        if len(metadata) == 0:
            root.remove(metadata)
    return root


def canonical(root: ET.Element) -> str:
    """C14N of a definition, whitespace between elements ignored."""
    return ET.canonicalize(ET.tostring(root, encoding="unicode"), strip_text=True)


def _pretty(root: ET.Element) -> list[str]:
    copy = ET.fromstring(canonical(root))
    ET.indent(copy)
    return ET.tostring(copy, encoding="unicode").splitlines()


def device_identity(device: ET.Element) -> str:
    """How a device is counted when checking that none is lost: a disk by what it
    holds (its source), a NIC by MAC, a controller by type and index, anything else
    by its tag and ``type``. Never by position: the counts of each identity are compared,
    so three USB companion controllers sharing index 0 are three."""
    tag = device.tag
    if tag == "disk":
        source = device.find("source")
        what = "empty"
        if source is not None:
            what = next((f"{k}={v}" for k, v in source.attrib.items()
                         if k in ("file", "dev", "dir", "volume", "name")), "source")  # fmt: skip
            if source.get("pool"):
                what = f"pool={source.get('pool')} {what}"
        return f"disk {device.get('device', 'disk')} ({device.get('type')}) {what}"
    if tag == "interface":
        mac = device.find("mac")
        return f"interface {device.get('type')} {'' if mac is None else mac.get('address')}"
    if tag == "controller":
        return f"controller {device.get('type')} index {device.get('index')}"
    kind = device.get("type")
    return tag if kind is None else f"{tag} {kind}"


def devices(root: ET.Element) -> Counter[str]:
    return Counter(device_identity(d) for d in root.findall("devices/*"))


def differing_sections(before: ET.Element, after: ET.Element) -> list[str]:
    """Top-level elements (and ``devices/<tag>`` groups) whose content differs."""
    def groups(root: ET.Element) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for child in root:
            if child.tag == "devices":
                for dev in child:
                    out.setdefault(f"devices/{dev.tag}", []).append(canonical(dev))
            else:
                out.setdefault(child.tag, []).append(canonical(child))
        return out

    a, b = groups(before), groups(after)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


@dataclass
class Outcome:
    """What happened to one file; ``skipped`` set means libvirt refused to define it."""

    file: str
    name: str
    skipped: str | None = None
    exported: bool = False
    export_notes: list[str] = field(default_factory=list)  # what applying would change
    export_kept: list[str] = field(default_factory=list)  # what export says is kept
    plan_changes: list[str] = field(default_factory=list)  # every change but ownership
    only_adoption: bool = False
    guest_visible: bool = False  # a plan change the guest would see at its next boot
    applied: bool = False
    unchanged: bool = False
    differs: list[str] = field(default_factory=list)  # sections whose XML changed
    lost: list[str] = field(default_factory=list)  # devices gone after apply
    errors: list[str] = field(default_factory=list)  # a command that failed
    diff: str = ""
    # the render path: the exported manifest applied under another name (a new VM)
    created: bool | None = None  # None: not tried (--create not given, or no export)
    created_same: bool = False  # its definition equals the original by meaning
    created_differs: list[str] = field(default_factory=list)
    created_error: str = ""
    created_diff: str = ""

    def problems(self) -> list[str]:
        """Why this file does not come through unchanged ([] when it does)."""
        out = list(self.errors)
        if self.exported and not self.only_adoption:
            out.append("plan shows more than the adoption: " + "; ".join(self.plan_changes))
        if self.applied and not self.unchanged:
            out.append("definition changed by the apply in: " + ", ".join(self.differs))
        if self.lost:
            out.append("devices lost: " + ", ".join(self.lost))
        return out


def _cli(args: list[str], config: Path, state: Path,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    command = [sys.executable, "-m", "reconciler", *args, "--connect", _uri(),
               "--config", str(config), "--state-dir", str(state)]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "RECONCILER_LOG_FORMAT": "json"}
    for _ in range(3):
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)  # fmt: skip
        # Another session's object vanishing while libvirt is being listed (a shared
        # host) is not what is measured here: the command is run again.
        if not (done.returncode != 0 and "error: listing " in done.stderr):
            break
    return done


def _line(text: str) -> str:
    """A command's output as one line (its lines joined), for a report row."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-1500:]


def _uri() -> str:
    return os.environ.get("RECONCILER_TEST_URI", "qemu:///system")


def _nvram_path(xml: str) -> str | None:
    root = ET.fromstring(xml)
    nvram = root.find("os/nvram")
    if nvram is None:
        return None
    source = nvram.find("source")
    if source is not None and source.get("file"):
        return source.get("file")
    return (nvram.text or "").strip() or None


def define(conn: Any, xml: str) -> tuple[Any, bool]:
    """``conn.defineXML(xml)``: the domain, and whether its NVRAM file existed before
    (then it is not ours to delete). Raises ``libvirt.libvirtError``."""
    nvram = _nvram_path(xml)
    existed = nvram is not None and os.path.exists(nvram)
    return conn.defineXML(xml), existed


def refused(conn: Any, exc: Any) -> bool:
    """Whether a failed define is libvirt refusing the XML on this host (a feature its
    QEMU lacks, a rule of its version), rather than libvirtd not answering (connection
    lost, daemon restarted), which must never turn into a skipped file."""
    import libvirt

    if exc.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE) or (
        exc.get_error_code() in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC,
                                 libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_OPERATION_TIMEOUT)
    ):  # fmt: skip
        return False
    try:
        conn.getLibVersion()
    except libvirt.libvirtError:
        return False
    return bool(conn.isAlive())


def undefine(dom: Any, nvram_existed: bool) -> None:
    """Destroy (should anything have started it) and undefine, with the NVRAM file
    unless it existed before the define; never raises."""
    import libvirt

    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    flags = _UNDEFINE_KEEP_NVRAM if nvram_existed else _UNDEFINE_NVRAM
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError:
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


def disk_roots(path: Path) -> list[str]:
    """``allowedDiskRoots`` as an operator adopting this domain would set it: the
    default roots and the directory of every host file the XML names that a manifest
    can name (disk and CD-ROM files, kernel, initrd, a serial log), and each block
    device and shared folder itself, and every other absolute ``<source dev|dir>``
    (the escape hatch's paths pass the same check). SPEC §5 checks
    every path a manifest names against these roots, adoption included, so a domain
    whose disk is /tmp/idedisk.img is adopted only by a configuration that allows /tmp.
    """
    from reconciler.hostpaths import NOT_PATHS
    from reconciler.settings import DEFAULT_DISK_ROOTS

    root = ET.parse(path).getroot()
    named = [s.get("file") for s in root.findall("devices/disk/source")]
    named += [s.get("path") for s in root.findall("devices/serial/source")]
    named += [root.findtext("os/kernel"), root.findtext("os/initrd")]
    roots = [str(r) for r in DEFAULT_DISK_ROOTS]
    for file in named:
        if file and os.path.isabs(file) and os.path.dirname(file) not in roots:
            roots.append(os.path.dirname(file))
    # a block device is a root of its own (no image root holds /dev), a shared folder too
    own = [s.get("dev") for s in root.findall("devices/disk[@type='block']/source")]
    own += [s.get("dir") for s in root.findall("devices/filesystem/source")]
    # and what the escape hatch carries (hostpaths checks an entry's <source dev|dir>
    # like a disk's): a vDPA NIC's /dev/vhost-vdpa-0, a block CD-ROM's node...
    own += [s.get(k) for s in root.findall("devices/*/source") for k in ("dev", "dir")]
    for p in own:
        if p and os.path.isabs(p) and p not in roots:  # each once: the schema says so
            roots.append(p)
    # and the folder of every other absolute path (hostpaths checks every one an entry
    # writes: a pipe's or socket's path, an SDL display's xauth file, an NVRAM file)
    for node in root.iter():
        if not isinstance(node.tag, str) or node.tag == "emulator":
            continue
        values = [] if node.get("protocol") is not None else list(node.attrib.values())
        text = "" if len(node) or node.tag in NOT_PATHS else (node.text or "").strip()
        for p in [*values, text]:
            folder = os.path.dirname(p) if p.startswith("/") else ""
            if folder and folder not in roots and not any(p == r for r in roots):
                roots.append(folder)
    return roots


def adopt(conn: Any, path: Path, name: str, work: Path, *, create: bool = False) -> Outcome:
    """Define ``path`` as ``name``, export, plan, apply, compare; undefine. ``work``: an
    empty directory for the manifests and state. ``create``: also apply the exported
    manifest under another name (``create_elsewhere``). Never raises for what the tool
    does: failures are in the ``Outcome``."""
    import libvirt

    out = Outcome(file=path.name, name=name)
    config = work / "config.yaml"
    config.write_text(json.dumps({"allowedDiskRoots": disk_roots(path)}) + "\n")
    manifests, state = work / "manifests", work / "state"
    try:
        dom, nvram_existed = define(conn, prepared(path, name))
    except libvirt.libvirtError as exc:
        if not refused(conn, exc):
            raise  # libvirtd unreachable: no verdict on the file, never a skip
        out.skipped = exc.get_error_message() or str(exc)
        return out
    try:
        before = dom.XMLDesc(_INACTIVE_SECURE)
        done = _cli(["-o", "json", "export", name, "-d", str(manifests)], config, state)
        try:
            [obj] = json.loads(done.stdout)["objects"]
            out.export_notes = [f"{n['field']}: {n['message']}" for n in obj["notes"]]
            out.export_kept = [k["what"] for k in obj["kept"]]
        except (ValueError, KeyError, TypeError):
            pass  # an older export without -o json: the files tell
        if done.returncode != 0 or not any(manifests.rglob("*.yaml")):
            out.errors.append(f"export failed (exit {done.returncode}): "
                              f"{_line(done.stdout + done.stderr)}")  # fmt: skip
            return out
        out.exported = True
        done = _cli(["-o", "json", "plan", str(manifests)], config, state)
        try:
            plan = json.loads(done.stdout)
        except ValueError:
            out.errors.append(f"plan failed (exit {done.returncode}): {_line(done.stderr)}")
            return out
        _read_plan(plan, name, out)
        done = _cli(["apply", "--yes", str(manifests)], config, state)
        if done.returncode != 0:
            out.errors.append(f"apply failed (exit {done.returncode}): "
                              f"{_line(done.stdout + done.stderr)}")  # fmt: skip
        out.applied = True
        after = dom.XMLDesc(_INACTIVE_SECURE)
        a, b = without_owner(before), without_owner(after)
        out.unchanged = canonical(a) == canonical(b)
        if not out.unchanged:
            out.differs = differing_sections(a, b)
            out.diff = "\n".join(difflib.unified_diff(_pretty(a), _pretty(b), "before",
                                                      "after", lineterm=""))  # fmt: skip
        lost = devices(a) - devices(b)
        out.lost = sorted(lost.elements())
        if dom.isActive():
            out.errors.append("the domain was started")
        if create:  # "elsewhere": the original goes first (its uuid, its fixed port)
            undefine(dom, True)
            create_elsewhere(conn, before, name, manifests, config, work, out)
        return out
    finally:
        undefine(dom, nvram_existed)


def meaning(xml: str, name: str) -> ET.Element:
    """A definition as compared between an original and the VM created from its export:
    without its name, uuid, our ``<rc:owner>`` and the addresses libvirt assigns (a new
    VM gets free ones), the name written as ``NAME`` wherever it appears (an NVRAM file
    named after the VM), and the devices in a canonical order (libvirt orders devices
    of one kind as defined, kinds by its own rules)."""
    root = without_owner(xml)
    for tag in ("name", "uuid"):
        for element in root.findall(tag):
            root.remove(element)
    for parent in list(root.iter()):
        for child in list(parent):
            if child.tag == "address":
                parent.remove(child)
    for element in root.iter():
        if element.text and name in element.text:
            element.text = element.text.replace(name, "NAME")
        for key, value in element.attrib.items():
            if name in value:
                element.set(key, value.replace(name, "NAME"))
    devices_el = root.find("devices")
    if devices_el is not None:
        devices_el[:] = sorted(devices_el, key=canonical)
    return root


def create_elsewhere(conn: Any, before: str, name: str, manifests: Path, config: Path,
                     work: Path, out: Outcome) -> None:  # fmt: skip
    """The render path: the exported manifest, renamed ``<name>-c`` (stopped, not
    adopted), applied with its own state directory, so the VM is *created* from the
    manifest, as on another host (the caller has undefined the original, whose uuid a
    ``<sysinfo>`` may carry and whose fixed display port the copy would take); its
    definition must equal the original's by ``meaning``. The created VM is undefined (its NVRAM file
    only if the original does not use the same one)."""
    import libvirt
    import yaml

    new = name + "-c"
    [source] = sorted(manifests.rglob(f"{name}.yaml")) or [None]
    if source is None:
        out.created, out.created_error = False, "no manifest for the VM"
        return
    doc = yaml.safe_load(source.read_text())
    doc["metadata"]["name"] = new
    doc["spec"]["state"] = "stopped"
    doc["spec"]["autostart"] = False
    doc["spec"].pop("adopt", None)
    there = work / "create"
    there.mkdir()
    (there / f"{new}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    done = _cli(["apply", "--yes", str(there)], config, work / "state-create")
    try:
        dom = conn.lookupByName(new)
    except libvirt.libvirtError:
        out.created = False
        out.created_error = _line(done.stdout + done.stderr)
        return
    try:
        out.created = True
        if done.returncode != 0:
            out.created_error = _line(done.stdout + done.stderr)
        a, b = meaning(before, name), meaning(dom.XMLDesc(_INACTIVE_SECURE), new)
        out.created_same = canonical(a) == canonical(b)
        if not out.created_same:
            out.created_differs = differing_sections(a, b)
            out.created_diff = "\n".join(difflib.unified_diff(
                _pretty(a), _pretty(b), "original", "created", lineterm=""))  # fmt: skip
    finally:
        shared = _nvram_path(before) is not None and _nvram_path(before) == _nvram_path(
            dom.XMLDesc(_INACTIVE_SECURE))  # fmt: skip
        undefine(dom, shared)


def _read_plan(plan: dict[str, Any], name: str, out: Outcome) -> None:
    for problem in plan.get("problems", []):
        out.plan_changes.append(f"problem: {problem.get('text')}")
    actions = [a for a in plan.get("actions", []) if a.get("name") == name]
    if not actions:
        out.plan_changes.append("the plan has no action for the VM")
        return
    action = actions[0]
    for change in action.get("changes", []):
        if (change["path"], change["old"], change["new"]) == ("ownership", "unmanaged",
                                                                "managed"):  # fmt: skip
            continue
        out.plan_changes.append(f"{change['path']}: {change['old']!r} -> {change['new']!r}")
        if change["path"] not in _QUIET_FIELDS:
            out.guest_visible = True
    for device in action.get("devices", []):
        out.plan_changes.append(device.get("text", str(device)))
        out.guest_visible = True
    if action.get("op") not in ("update-live", "noop"):
        out.plan_changes.append(f"op {action.get('op')}")
        out.guest_visible = True
    out.only_adoption = not out.plan_changes and any(
        c["path"] == "ownership" for c in action.get("changes", []))  # fmt: skip


# --- the report -----------------------------------------------------------------------


def run(files: list[Path], prefix: str, *, create: bool = False) -> list[Outcome]:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # refusals are reported
    conn = libvirt.open(_uri())
    try:
        outcomes = []
        for path in files:
            with tempfile.TemporaryDirectory(prefix=prefix) as work:
                outcomes.append(adopt(conn, path, prefix + stem(path), Path(work),
                                      create=create))  # fmt: skip
        return outcomes
    finally:
        conn.close()


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    tried = [o for o in outcomes if o.skipped is None]
    return {
        "files": len(outcomes),
        "defined": len(tried),
        "skipped": len(outcomes) - len(tried),
        "exported": sum(o.exported for o in tried),
        "exportNotesChange": sum(bool(o.export_notes) for o in tried),
        "planOnlyAdoption": sum(o.only_adoption for o in tried),
        "planGuestVisible": sum(o.guest_visible for o in tried),
        "unchanged": sum(o.unchanged and not o.errors for o in tried),
        "lostDevice": sum(bool(o.lost) for o in tried),
        "failedCommand": sum(bool(o.errors) for o in tried),
        "created": sum(bool(o.created) for o in tried),
        "createdSame": sum(o.created_same for o in tried),
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def report(outcomes: list[Outcome], *, diffs: bool = False) -> str:
    lines = [f"{'file':<46} {'defined':<8} {'only-adopt':<10} {'unchanged':<9} lost"]
    for o in outcomes:
        if o.skipped is not None:
            lines.append(f"{o.file:<46} {'skip':<8} {'-':<10} {'-':<9} -   ({o.skipped})")
            continue
        lines.append(f"{o.file:<46} {'yes':<8} {_yes(o.only_adoption):<10} "
                     f"{_yes(o.unchanged):<9} {len(o.lost)}")  # fmt: skip
        for problem in o.problems():
            lines.append(f"    {problem}")
        if diffs and o.diff:
            lines += ["    " + line for line in o.diff.splitlines()]
        if o.created is not None:
            same = "same" if o.created_same else "differs: " + ", ".join(o.created_differs)
            lines.append(f"    created from the manifest: "
                         f"{same if o.created else 'no'} {o.created_error}".rstrip())  # fmt: skip
            if diffs and o.created_diff:
                lines += ["    " + line for line in o.created_diff.splitlines()]
    s = summary(outcomes)
    lines += [
        "",
        f"{s['files']} files: {s['defined']} defined here, {s['skipped']} refused by this host "
        "(skipped).",
        f"Of the {s['defined']} defined: {s['exported']} exported ({s['exportNotesChange']} "
        f"with a note that applying changes something), {s['planOnlyAdoption']} "
        f"planned as the adoption only ({s['planGuestVisible']} with a guest-visible change), "
        f"{s['unchanged']} unchanged after apply, {s['lostDevice']} lost at least one device, "
        f"{s['failedCommand']} with a command failing.",
    ]
    if any(o.created is not None for o in outcomes):
        lines.append(f"Created under another name from the exported manifest (render path): "
                     f"{s['created']} created, {s['createdSame']} equal to the original by "
                     "meaning (name, uuid, addresses aside).")  # fmt: skip
        created = Counter(sec for o in outcomes for sec in o.created_differs)
        if created:
            lines.append("Sections that differ in the created VM (files): " + ", ".join(
                f"{sec} {n}" for sec, n in created.most_common()))  # fmt: skip
    sections = Counter(sec for o in outcomes for sec in o.differs)
    if sections:
        lines.append("Sections changed by the apply (files): " + ", ".join(
            f"{sec} {n}" for sec, n in sections.most_common()))  # fmt: skip
    lost = Counter(dev.split(" ")[0] for o in outcomes for dev in o.lost)
    if lost:
        lines.append("Devices lost (count): " + ", ".join(
            f"{dev} {n}" for dev, n in lost.most_common()))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adoption", description=__doc__.split(
        "\n\n")[0])  # fmt: skip
    parser.add_argument("-k", dest="only", help="only files whose name contains this")
    parser.add_argument("--json", action="store_true", help="one JSON object: outcomes, summary")
    parser.add_argument("--diff", action="store_true", help="print each file's XML diff")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help=f"default: {CORPUS}")
    parser.add_argument("--create", action="store_true",
                        help="also create a VM from each exported manifest (render path) "
                        "and compare it with the original")  # fmt: skip
    args = parser.parse_args(argv)
    files = [p for p in corpus_files(args.corpus) if args.only is None or args.only in p.name]
    if not files:
        print(f"no domain XMLs in {args.corpus}", file=sys.stderr)
        return 1
    outcomes = run(files, f"rctest-{uuid.uuid4().hex[:8]}-", create=args.create)
    if args.json:
        print(json.dumps({"summary": summary(outcomes),
                          "outcomes": [asdict(o) for o in outcomes]}, indent=2))  # fmt: skip
    else:
        print(report(outcomes, diffs=args.diff))
    return 0


if __name__ == "__main__":
    sys.exit(main())
