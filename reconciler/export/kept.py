"""kept"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from fnmatch import fnmatchcase

from reconciler.export.notes import Kept, _Notes
from reconciler.xml import domain as domain_xml
from reconciler.xml._fields import Element, parse
from reconciler.xml.edits import contains

_REMOVES = "applying the manifest removes it: a manifest holds the whole set of a VM's"


_MANAGED_DISK_TYPES = domain_xml.MANAGED_DISK_TYPES


_MANAGED_INTERFACE_TYPES = domain_xml.MANAGED_INTERFACE_TYPES


def _managed_device(device: Element, aside: Collection[Element] = (),
                    named: Collection[str] = ()) -> bool:  # fmt: skip
    """Whether a manifest manages ``device``'s kind as a whole set, so that one it does
    not name is removed by applying it: the sets of ``domain_xml`` (``MANAGED_*``):
    disks and CD-ROMs of files and volumes, NICs on networks, bridges and host devices
    (direct, which export writes), the first VNC
    or SPICE display (the manifest's one ``graphics``), the serial port (pty, file) and
    its console, USB inputs (formatdomain "Hard drives...", "Network interfaces",
    "Graphical framebuffers", "Serial port", "Input devices"). Every other device is
    kept as defined: a floppy (neither a disk nor a CD-ROM), a second display, and
    those a redefine sets aside (``aside``, ``domain_xml.set_aside``: an SDL display, a
    tcp serial port...). ``named``: the sets managed only when the manifest names them
    that it does (``block`` disks, ``filesystem``, ``hostdev``: xml/domain_storage.py)."""
    tag, kind = device.tag, device.get("type")
    if any(device is other for other in aside):
        return False
    if tag == "graphics":  # the manifest's graphics fields read the first display only
        parent = device.getparent()
        first = None if parent is None else next(
            (g for g in parent.iterchildren("graphics")
             if g.get("type") in domain_xml.MANAGED_GRAPHICS_TYPES
             and not any(g is other for other in aside)), None)  # fmt: skip
        return device is first
    if tag == "console":  # a virtio or sclp console is not the serial port's
        return domain_xml.serial_console(device)
    if tag == "disk":  # a floppy or lun is in neither set (DISKS, CDROMS)
        if kind == "block" and device.get("device", "disk") == "disk":
            return "block" in named
        return kind in _MANAGED_DISK_TYPES and device.get("device", "disk") in ("disk", "cdrom")
    if tag == "filesystem":
        return "filesystem" in named and kind in (None, "mount")
    if tag == "hostdev":
        return "hostdev" in named and domain_xml.HOSTDEVS.managed(device)
    if tag == "interface":
        return kind in _MANAGED_INTERFACE_TYPES
    if tag == "input":
        return device.get("bus") == "usb"
    return tag in ("graphics", "serial", "console")


# Never listed: the identity and our own record, what libvirt adds to any definition
# (addresses, aliases, the emulator, PS/2 inputs), and what the manifest holds with the
# same meaning in another spelling. Bare paths (tags only), fnmatch patterns.
_KEPT_SILENT = (
    "uuid", "name", "metadata", "*/address", "*/alias", "devices/emulator",
    "os/boot", "os/type@machine", "clock@offset",  # manifest fields: a change is a note
    "memory@unit", "currentMemory@unit", "vcpu@placement", "maxMemory@unit",
    "cpu@check", "cpu@migratable", "cpu@match", "cpu/model@fallback",
    "devices/disk/source@index", "devices/interface/source@portid",
    "devices/interface/target", "devices/interface/target@*",
    "devices/graphics@listen", "devices/graphics@port", "devices/graphics@autoport",
    "devices/graphics@passwd", "devices/serial/target@type", "devices/serial/target/model",
    "devices/serial/target@port",
    "devices/hostdev@managed",  # libvirt writes managed='no' on a USB one; PCI's is a field
    # what libvirt adds to the devices a manifest names (xml/domain_devices.py)
    "devices/video/model@primary", "devices/console/target@port",
)  # fmt: skip


# Attributes whose value here is what libvirt means when the attribute is left out
# (bare path -> that value): the manifest's default says the same, so not kept.
# A NIC's <link state='up'/> (formatdomain "Modifying virtual link state": up unless
# down), a serial or console log's append='off' (formatdomain "Serial port": the file
# is truncated unless append='on'; the schema's append: false).
_KEPT_DEFAULTS = {
    "devices/interface/link@state": "up",
    "devices/serial/log@append": "off",
    "devices/console/log@append": "off",
}

_DEFAULT_VIDEO = ("cirrus", "vga")


def _local(tag: object) -> str:
    text = str(tag)
    return text.rsplit("}", 1)[-1]


def _label(element: Element) -> str:
    """A device or element as a user names it: ``channel (org.qemu.guest_agent.0)``,
    ``controller usb (ich9-ehci1)``, ``disk hda (block /dev/HostVG/guest)``, ``pm``."""
    tag, kind = _local(element.tag), element.get("type")
    if tag == "disk":
        target, source = element.find("target"), element.find("source")
        dev = "" if target is None else f" {target.get('dev')}"
        what = "" if source is None else next(
            (f" {v!s}" for k, v in source.attrib.items() if k in ("file", "dev", "name", "volume")),
            "")  # fmt: skip
        return f"{element.get('device', 'disk')}{dev} ({kind}{what})"
    if tag == "interface":
        mac = element.find("mac")
        return f"interface {kind}" + ("" if mac is None else f" {mac.get('address')}")
    if tag == "ip":  # a network's address: ip ipv6 fd00::1/64
        size = element.get("prefix") or element.get("netmask")
        return f"ip {element.get('family') or 'ipv4'} {element.get('address')}" + (
            f"/{size}" if size else "")  # fmt: skip
    if tag == "route":
        return f"route {element.get('address')}/{element.get('prefix') or element.get('netmask')}"\
            f" via {element.get('gateway')}"  # fmt: skip
    if tag == "channel":
        target = element.find("target")
        name = None if target is None else target.get("name") or target.get("type")
        return f"channel ({name})" if name else f"channel {kind}"
    model = element.get("model")
    model_el = element.find("model")
    if model is None and model_el is not None:
        model = model_el.get("type") or model_el.get("name") or (model_el.text or "").strip()
    text = " ".join((element.text or "").split())  # one line, even for a <description>
    if len(text) > 60:
        text = text[:57] + "..."
    kind = kind or element.get("mode") or element.get("name")
    out = tag if kind is None else f"{tag} {kind}"
    if model is not None:
        out += f" ({model})"
    elif text and len(element) == 0:
        out += f" ({text})"
    return out


def _short(element: Element) -> str:
    """A child element inside a kept list: ``timer rtc``, ``bootmenu``, ``vmport``."""
    qualifier = _qualifier(element)
    return _local(element.tag) if qualifier is None else f"{_local(element.tag)} {qualifier}"


def _inner(live: Element, rendered: Element, bare: str,
           silent: tuple[str, ...] = _KEPT_SILENT) -> list[str]:  # fmt: skip
    """What ``live`` has below it that ``rendered`` lacks or spells differently, short."""
    out: list[str] = []
    for attr_key, value in live.attrib.items():
        attr = str(attr_key)  # lxml may type keys as bytes too
        if rendered.get(attr) is None and _KEPT_DEFAULTS.get(f"{bare}@{attr}") == value:
            continue  # the default spelled out
        if rendered.get(attr) != value and not _ignored(f"{bare}@{attr}", silent):
            out.append(f"{attr}={value!s}")
    text = (live.text or "").strip()
    if text and text != (rendered.text or "").strip():
        out.append(" ".join(text.split()))
    taken: list[Element] = []
    for child in live:
        if not isinstance(child.tag, str):
            continue
        child_bare = f"{bare}/{child.tag}"
        if _ignored(child_bare, silent):
            continue
        other = _counterpart(child, live, rendered, taken)
        if other is None:
            if not _only_defaults(child, child_bare):
                out.append(_short(child))
            continue
        taken.append(other)
        out += [f"{_short(child)} {what}" for what in _inner(child, other, child_bare, silent)]
    return out


def _device_key(device: Element) -> str | None:
    """The manifest's key of a disk, CD-ROM or NIC (``disks[vda]``), for its notes."""
    if device.tag == "disk":
        target = device.find("target")
        section = "cdroms" if device.get("device") == "cdrom" else "disks"
        return None if target is None else f"{section}[{target.get('dev')}]"
    if device.tag == "interface":
        mac = device.find("mac")
        return None if mac is None else f"interfaces[{(mac.get('address') or '').lower()}]"
    return None


def _noted(device: Element, notes: _Notes) -> bool:
    key = _device_key(device)
    if key is not None and notes.covers(key) and not notes.silenced(key):
        return True
    return (device.tag == "graphics" and notes.covers("graphics")) or (
        device.tag in ("serial", "console") and notes.covers("serial"))  # fmt: skip


def kept_in_definition(
    config_xml: str, rendered: str, notes: _Notes, *,
    silent: Iterable[str] = _KEPT_SILENT, namespace: str = domain_xml.OWNER_NAMESPACE,
    detail: bool = False,
) -> list[Kept]:  # fmt: skip
    """What the definition ``config_xml`` has that the manifest, rendered as ``rendered``,
    does not say, and that applying the manifest keeps (the redefine patches the current
    definition): every element, attribute and text outside the manifest's fields, found
    by comparing the two trees (elements matched by identity: a disk's target, a NIC's
    MAC, a ``type`` or ``name``, an ``<ip>``'s family), never from a list of names. A
    whole device of a kind the manifest manages (``_managed_device``) that the manifest
    lacks is not kept but removed by applying it: that becomes a note. Fields already
    noted (``notes``) are not listed again. Domains by default; a network or a pool
    with its own ``silent`` bare paths (never listed) and record ``namespace``, and
    ``detail``: an element the manifest lacks altogether is listed with what it holds
    (``dns: forwarder 127.0.0.53, txt example``, not just ``dns``)."""
    silent = tuple(silent)
    live, mine = parse(config_xml), parse(rendered)
    kept: list[Kept] = []
    taken: list[Element] = []
    for element in live:
        if not isinstance(element.tag, str) or _ignored(element.tag, silent):
            continue
        if element.tag == "cpu" and notes.covers("cpu"):
            continue  # a CPU the manifest cannot say is noted as 'cpu' already
        other = _counterpart(element, live, mine, taken)
        if other is not None:
            taken.append(other)
        if element.tag != "devices":
            if other is None:
                inner = _inner(element, mine.makeelement(element.tag, {}), element.tag,
                               silent) if detail and len(element) else []  # fmt: skip
                if inner and _label(element) == element.tag:
                    kept.append(Kept(element.tag, f"{element.tag}: {', '.join(inner)}"))
                elif len(element) or element.attrib or (element.text or "").strip():
                    kept.append(Kept(element.tag, _label(element)))  # (empty: says nothing)
            else:
                inner = _inner(element, other, element.tag, silent)
                if len(element) == 0 and (element.text or "").strip() in inner:
                    kept.append(Kept(element.tag, _label(element)))  # on_crash (restart)
                elif inner:
                    kept.append(Kept(element.tag, f"{_label(element)}: {', '.join(inner)}"))
            continue
        rendered_devices = other if other is not None else mine.makeelement("devices", {})
        aside = domain_xml.set_aside(live)
        named = {"block" if d.tag == "disk" else str(d.tag) for d in rendered_devices
                 if d.tag in ("filesystem", "hostdev") or (
                     d.tag == "disk" and d.get("type") == "block")}  # fmt: skip
        done: list[Element] = []
        for device in element:
            bare = f"devices/{device.tag}"
            if not isinstance(device.tag, str) or _ignored(bare, silent) or (
                    device.tag == "input" and device.get("bus") == "ps2"):  # fmt: skip
                continue
            path = f"devices/{_name(device)}"
            counterpart = _counterpart(device, element, rendered_devices, done)
            if counterpart is not None:
                done.append(counterpart)
                inner = _inner(device, counterpart, bare, silent)
                if inner:
                    kept.append(Kept(path, f"{_label(device)}: {', '.join(inner)}"))
            elif _noted(device, notes):
                continue
            elif _managed_device(device, aside, named):
                notes.add(path, f"{_label(device)} cannot be expressed; {_REMOVES} "
                          f"{device.tag} devices")  # fmt: skip
            else:
                kept.append(Kept(path, _label(device)))
    rendered_metadata = mine.findall("metadata/*")
    for element in live.findall("metadata/*"):
        if not str(element.tag).startswith("{" + namespace + "}") and not any(
                contains(element, other) for other in rendered_metadata):  # fmt: skip
            kept.append(Kept("metadata", f"metadata {_local(element.tag)}"))
    # A firmware chosen by path (<loader type='pflash'>OVMF_CODE...</loader>) or with
    # secure boot reads as firmware: uefi and is kept by a redefine (listed under os);
    # only a VM created from the manifest would get libvirt's plain OVMF instead.
    return kept


def _qualifier(element: Element) -> str | None:
    if element.tag == "disk":
        target = element.find("target")
        return None if target is None else target.get("dev")
    if element.tag == "interface":
        mac = element.find("mac")
        return None if mac is None else (mac.get("address") or "").lower()
    if element.tag == "input":
        return f"{element.get('type')}:{element.get('bus')}"
    if element.tag == "filesystem":
        target = element.find("target")
        return None if target is None else target.get("dir")
    if element.tag == "hostdev":
        key = domain_xml.HOSTDEVS.key.read(element)
        return None if key is None else str(key)
    if element.tag == "ip":
        return element.get("family") or "ipv4"
    if element.tag == "host" and element.get("mac"):
        return (element.get("mac") or "").lower()
    for attr in ("dev", "name", "type", "ip", "id", "addr"):
        if element.get(attr) is not None:
            return element.get(attr)
    return None


def _only_defaults(element: Element, bare: str) -> bool:
    """``element`` says nothing but defaults (``_KEPT_DEFAULTS``): ``<link state='up'/>``."""
    return (bool(element.attrib) and len(element) == 0 and not (element.text or "").strip()
            and all(_KEPT_DEFAULTS.get(f"{bare}@{k!s}") == v
                    for k, v in element.attrib.items()))  # fmt: skip


def _ignored(bare: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(bare, pattern) for pattern in patterns)


def _name(element: Element) -> str:
    qualifier = _qualifier(element)
    return str(element.tag) if qualifier is None else f"{element.tag!s}[{qualifier}]"


def _counterpart(child: Element, live: Element, rendered: Element,
                 taken: list[Element]) -> Element | None:  # fmt: skip
    """The element of ``rendered`` that stands for ``child`` of ``live``: the only one of
    its tag on both sides, or else the first one not yet taken with the same identity."""
    same = [c for c in rendered if c.tag == child.tag]
    if len(same) == 1 and sum(1 for c in live if c.tag == child.tag) == 1:
        return same[0] if not any(same[0] is t for t in taken) else None
    for candidate in same:
        if not any(candidate is t for t in taken) and _qualifier(candidate) == _qualifier(child):
            return candidate
    return None
