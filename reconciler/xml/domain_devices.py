"""Domain devices a manifest manages only when it names them (issue 13): the guest
agent channel, rng, watchdog, TPM, the primary video, a virtio console, the serial
port's log, and UEFI secure boot with an NVRAM template.

Each is one ``Field`` whose ``get`` gives ``KEPT`` when the manifest leaves it out:
such a manifest projects ``KEPT`` (the domain keeps what it has, as before these fields existed);
one that names it makes the domain's device exactly that, ``null`` (``"null"`` in the
projection) meaning none. A device's value is the manifest's own mapping, every
default filled in, as canonical JSON text (sorted keys), so a plan line shows what
the manifest says and export turns it back into the mapping (``json.loads``). What
libvirt adds (addresses, aliases, a channel's socket path and state, the video's
``primary``, a TPM's persistent state) is not read.

``guestAgent`` and ``rng`` are of change class live: one the running domain lacks is
hot-plugged (``added_device_xml``: libvirt 9.0 attaches an rng to a running q35 or pc
guest, and a channel where the domain has a virtio-serial controller already, e.g.
for a virtio console); changing or removing one waits for the next boot, as does
every other field here.

Measured on libvirt 9.0 / QEMU 7.2 (Debian 12): autoselection with secure boot
(``<os firmware='efi'>`` with the ``secure-boot`` and ``enrolled-keys`` features) picks
``/usr/share/OVMF/OVMF_CODE_4M.ms.fd`` with ``OVMF_VARS_4M.ms.fd`` (the ovmf package's
``40-edk2-x86_64-secure-enrolled.json``), keeps ``<os firmware='efi'>`` in the
inactive definition and shows the chosen ``<loader>``/``<nvram>`` in the running one;
``<nvram template>`` beside autoselection is refused ("nvram attribute 'template'
cannot be specified when firmware autoselection is enabled"). A TPM without a model
is ``tpm-tis`` version 1.2; a watchdog without an action is ``reset``; the ``itco``
watchdog model is unknown to 9.0 and ``diag288`` is s390 only.

Pure: no I/O, no libvirt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree as ET

from reconciler.model import (
    GUEST_AGENT_CHANNEL,
    NONE,
    VirtualMachineSpec,
    VmDevices,
)
from reconciler.units import format_size, parse_size
from reconciler.xml._fields import (
    KEPT,
    YES_NO,
    Attr,
    ChangeClass,
    Element,
    Field,
    drop_attr,
    ensure,
    parse,
    remove,
    serialize,
    xml_text,
)

__all__ = [
    "DEVICE_FIELDS", "FIRMWARE_FIELDS", "HOTPLUG_ADDED", "SERIAL_LOG_FIELD", "added_device_xml",
    "canonical", "manifest_value",
]  # fmt: skip


def canonical(value: Mapping[str, Any] | None) -> str:
    """A device's manifest mapping (None: no device) as its projection value."""
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


_NULL = canonical(None)  # "null": no such device


def manifest_value(value: object) -> object:
    """A projection value of a device field as a manifest writes it (``Field.export``)."""
    return json.loads(value) if isinstance(value, str) else value


def _want(get: Callable[[VmDevices], object]) -> Callable[[Any], object]:
    """The desired value of a device field, from the ``_Desired`` of ``domain.py``:
    ``KEPT`` when not named, ``"null"`` for none, else the canonical mapping."""

    def wanted(desired: Any) -> object:
        spec: VirtualMachineSpec = desired.spec
        value = get(spec.devices)
        if value is None:
            return KEPT  # not named: the domain keeps what it has
        if isinstance(value, bool):
            return value
        if value == NONE:
            return _NULL
        manifest = getattr(value, "manifest", None)
        return canonical(manifest()) if manifest is not None else value

    return wanted


def _devices(root: Element) -> Element:
    return ensure(root, "devices")


def _put(root: Element, element: Element, before: str | None = None) -> None:
    """Append ``element`` to ``<devices>``, after the last of its tag (or before the
    first ``before``: the primary video stands ahead of the others)."""
    devices = _devices(root)
    same = [c for c in devices if c.tag == element.tag]
    if before is not None and same:
        same[0].addprevious(element)
    elif same:
        same[-1].addnext(element)
    else:
        devices.append(element)


@dataclass(frozen=True, slots=True)
class _Json:
    """A whole device, as canonical JSON text of its manifest mapping; ``select`` the
    elements of ``<devices>`` of its kind, ``build`` the element for a mapping, ``load``
    the mapping of an element (None: not one). The first element of the kind is the
    manifest's; the others are kept as they are (a second watchdog)."""

    tag: str
    select: Callable[[Element], bool]
    build: Callable[[Mapping[str, Any]], Element]
    load: Callable[[Element], Mapping[str, Any] | None]
    first: bool = False  # a new element goes ahead of its kind (the primary video)

    def _mine(self, root: Element) -> list[Element]:
        devices = root.find("devices")
        return [] if devices is None else [c for c in devices.iterchildren(self.tag)
                                           if self.select(c)]  # fmt: skip

    def write(self, root: Element, value: Any) -> None:
        mapping = json.loads(value) if isinstance(value, str) else value
        if mapping is None:
            return
        element = self.build(mapping)
        _put(root, element, element.tag if self.first else None)

    def _first(self, root: Element) -> tuple[Element, Mapping[str, Any]] | None:
        for element in self._mine(root):
            loaded = self.load(element)
            if loaded is not None:
                return element, loaded
        return None

    def clear(self, root: Element) -> None:
        """The first such device only: a second watchdog, video or console is kept."""
        first = self._first(root)
        if first is not None:
            remove(first[0])

    def read(self, root: Element) -> object:
        first = self._first(root)
        return _NULL if first is None else canonical(first[1])

    def canon(self, value: Any) -> object:
        return canonical(json.loads(value)) if isinstance(value, str) else value


# --- guest agent -------------------------------------------------------------------


def _agent(element: Element) -> bool:
    target = element.find("target")
    return (element.tag == "channel" and target is not None
            and target.get("name") == GUEST_AGENT_CHANNEL)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _GuestAgent:
    """``guestAgent``: a ``<channel type='unix'>`` to org.qemu.guest_agent.0 (formatdomain
    "Channel"); libvirt adds the virtio-serial controller and the socket path."""

    def write(self, root: Element, value: Any) -> None:
        if value:
            channel = ET.Element("channel", {"type": "unix"})
            ET.SubElement(channel, "target", {"type": "virtio", "name": GUEST_AGENT_CHANNEL})
            _put(root, channel)

    def clear(self, root: Element) -> None:
        devices = root.find("devices")
        for element in [] if devices is None else [
                c for c in devices.iterchildren("channel") if _agent(c)]:  # fmt: skip
            remove(element)

    def read(self, root: Element) -> object:
        devices = root.find("devices")
        return devices is not None and any(_agent(c) for c in devices.iterchildren("channel"))

    def canon(self, value: Any) -> object:
        return bool(value)


# --- rng, watchdog, tpm, video, console ------------------------------------------------


def _rng_build(m: Mapping[str, Any]) -> Element:
    rng = ET.Element("rng", {"model": str(m["model"])})
    rate = m.get("rate")
    if rate is not None:
        ET.SubElement(rng, "rate", {"bytes": str(int(rate["bytes"])),
                                    "period": str(int(rate["period"]))})  # fmt: skip
    ET.SubElement(rng, "backend", {"model": "random"}).text = xml_text(str(m["backend"]), "rng")
    return rng


def _rng_load(element: Element) -> Mapping[str, Any] | None:
    backend = element.find("backend")
    if backend is None or backend.get("model") != "random":
        return None  # egd, builtin: not a manifest's rng, kept
    out: dict[str, Any] = {"model": element.get("model", "virtio"),
                           "backend": (backend.text or "").strip() or "/dev/urandom"}  # fmt: skip
    rate = element.find("rate")
    if rate is not None and rate.get("bytes"):
        out["rate"] = {"bytes": int(str(rate.get("bytes"))),
                       "period": int(str(rate.get("period", "1000")))}  # fmt: skip
    return out


def _random_rng(element: Element) -> bool:
    backend = element.find("backend")
    return element.tag == "rng" and backend is not None and backend.get("model") == "random"


def _watchdog_build(m: Mapping[str, Any]) -> Element:
    return ET.Element("watchdog", {"model": str(m["model"]), "action": str(m["action"])})


def _watchdog_load(element: Element) -> Mapping[str, Any] | None:
    return {"model": element.get("model", ""), "action": element.get("action", "reset")}


def _emulated_tpm(element: Element) -> bool:
    backend = element.find("backend")
    return element.tag == "tpm" and backend is not None and backend.get("type") == "emulator"


def _tpm_build(m: Mapping[str, Any]) -> Element:
    tpm = ET.Element("tpm", {"model": str(m["model"])})
    ET.SubElement(tpm, "backend", {"type": "emulator", "version": str(m["version"])})
    return tpm


def _tpm_load(element: Element) -> Mapping[str, Any] | None:
    backend = element.find("backend")
    version = "1.2" if backend is None else backend.get("version", "1.2")
    return {"model": element.get("model", "tpm-tis"), "version": version}


def _video_build(m: Mapping[str, Any]) -> Element:
    video = ET.Element("video")
    attrs = {"type": str(m["model"])}
    if m.get("vram") is not None:
        attrs["vram"] = str(parse_size(str(m["vram"])) // 1024)
    if m.get("heads") is not None:
        attrs["heads"] = str(int(m["heads"]))
    ET.SubElement(video, "model", attrs)
    return video


def _video_load(element: Element) -> Mapping[str, Any] | None:
    model = element.find("model")
    if model is None:
        return None
    out: dict[str, Any] = {"model": model.get("type", "")}
    if model.get("vram") is not None:
        out["vram"] = format_size(int(str(model.get("vram"))) * 1024)
    if model.get("heads") is not None:
        out["heads"] = int(str(model.get("heads")))
    return out


def _extra_console(element: Element) -> bool:
    """A ``<console>`` that is not serial port 0's (which ``serial`` manages)."""
    if element.tag != "console":
        return False
    target = element.find("target")
    return target is not None and not (target.get("type", "serial") == "serial"
                                       and target.get("port", "0") == "0")  # fmt: skip


def _console_build(m: Mapping[str, Any]) -> Element:
    console = ET.Element("console", {"type": str(m["type"])})
    ET.SubElement(console, "target", {"type": str(m["target"])})
    return console


def _console_load(element: Element) -> Mapping[str, Any] | None:
    target = element.find("target")
    return {"type": element.get("type", ""),
            "target": "" if target is None else target.get("type", "")}  # fmt: skip


def _video(m: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The projection of a video mapping: vram as ``format_size`` writes it."""
    if m is None or m.get("vram") is None:
        return m
    return {**m, "vram": format_size(int(m["vram"]))}


def _want_video(desired: Any) -> object:
    video = desired.spec.devices.video
    return KEPT if video is None else canonical(_video(video.manifest()))


def _device(path: str, get: Callable[[Any], object], place: Any,
            change: ChangeClass = ChangeClass.RESTART) -> Field[Any]:  # fmt: skip
    # no default: left out, the field is kept (KEPT), which no manifest value says
    return Field(path, get, place, export=manifest_value, change=change)


DEVICE_FIELDS: tuple[Field[Any], ...] = (
    # hot-plugged when added (HOTPLUG_ADDED); a change or removal waits for a restart
    Field("guestAgent", _want(lambda d: d.guest_agent), _GuestAgent(), change=ChangeClass.LIVE),
    _device("rng", _want(lambda d: d.rng), _Json("rng", _random_rng, _rng_build, _rng_load),
            ChangeClass.LIVE),
    _device("watchdog", _want(lambda d: d.watchdog),
            _Json("watchdog", lambda e: True, _watchdog_build, _watchdog_load)),
    _device("tpm", _want(lambda d: d.tpm), _Json("tpm", _emulated_tpm, _tpm_build, _tpm_load)),
    _device("video", _want_video,
            _Json("video", lambda e: True, _video_build, _video_load, first=True)),
    _device("console", _want(lambda d: d.console),
            _Json("console", _extra_console, _console_build, _console_load)),
)
"""The device fields (formatdomain "Channel", "Random number generator device",
"Watchdog devices", "TPM device", "Video devices", "Console")."""


HOTPLUG_ADDED: Mapping[str, Callable[[Element], bool]] = {
    "guestAgent": _agent,
    "rng": _random_rng,
}
"""Device fields whose device, added to a running domain, is hot-plugged: the field ->
which element of ``<devices>`` is its device."""


def added_device_xml(
    path: str, old: object, new: object, desired_xml: str, live_xml: str
) -> str | None:
    """The device a change of the field ``path`` (``old`` -> ``new``, projection values)
    adds to the running domain (``live_xml``) that has none, as ``desired_xml`` (the
    redefinition) has it, for ``attachDeviceFlags``; None when the change is not such
    an addition (a changed or removed device: that waits for a restart), or the running
    domain cannot take it: libvirt 9.0 hot-plugs a channel only onto a virtio-serial
    controller the domain already has ("no virtio-serial controllers are available")."""
    select = HOTPLUG_ADDED.get(path)
    none = False if path == "guestAgent" else canonical(None)
    if select is None or old != none or new in (none, None):
        return None
    if path == "guestAgent" and parse(live_xml).find(
            "devices/controller[@type='virtio-serial']") is None:  # fmt: skip
        return None
    devices = parse(desired_xml).find("devices")
    element = None if devices is None else next((c for c in devices if select(c)), None)
    if element is None:
        return None
    alone = ET.fromstring(ET.tostring(element, with_tail=False))
    return serialize(alone).strip()


# --- serial log ----------------------------------------------------------------------


def _serial_pair(root: Element) -> list[Element]:
    """Serial port 0 and the console that mirrors it (libvirt copies the log onto it)."""
    devices = root.find("devices")
    if devices is None:
        return []
    serial = devices.find("serial")
    if serial is None:
        return []
    consoles = [c for c in devices.findall("console") if not _extra_console(c)]
    return [serial, *consoles[:1]]


@dataclass(frozen=True, slots=True)
class _SerialLog:
    """``serial.log``: ``<log file append>`` of serial port 0 (formatdomain "Serial port")."""

    def write(self, root: Element, value: Any) -> None:
        mapping = json.loads(value) if isinstance(value, str) else value
        if mapping is None:
            return
        for element in _serial_pair(root):
            log = ET.Element("log", {"file": xml_text(str(mapping["file"]), "serial.log")})
            if mapping.get("append"):
                log.set("append", "on")
            source = element.find("source")
            if source is not None:
                source.addnext(log)
            else:
                element.insert(0, log)

    def clear(self, root: Element) -> None:
        for element in _serial_pair(root):
            for log in element.findall("log"):
                remove(log)

    def read(self, root: Element) -> object:
        pair = _serial_pair(root)
        log = None if not pair else pair[0].find("log")
        if log is None or not log.get("file"):
            return _NULL
        return canonical({"file": log.get("file"), "append": log.get("append") == "on"})

    def canon(self, value: Any) -> object:
        return canonical(json.loads(value)) if isinstance(value, str) else value


SERIAL_LOG_FIELD: Field[Any] = _device("serial.log", _want(lambda d: d.serial_log), _SerialLog())


# --- firmware: secure boot, loader, NVRAM template -------------------------------------


def _feature(root: Element, name: str) -> Element | None:
    for feature in root.findall("os/firmware/feature"):
        if feature.get("name") == name:
            return feature
    return None


@dataclass(frozen=True, slots=True)
class _SecureBoot:
    """``firmware.secureBoot``: the ``secure-boot`` feature of firmware autoselection, or
    the ``secure`` attribute of a loader chosen by path; on, it needs SMM
    (``<features><smm state='on'/>``, added with it and never taken away), and with
    autoselection it adds ``enrolled-keys`` on where the definition says nothing of keys
    (``firmware.enrolledKeys`` left out is kept: a hand-made domain with secure boot and
    no word on keys stays as it is)."""

    def write(self, root: Element, value: Any) -> None:
        loader = root.find("os/loader")
        if loader is not None and loader.text and root.find("os").get("firmware") is None:  # type: ignore[union-attr]
            loader.set("secure", "yes" if value else "no")
        else:
            feature = _feature(root, "secure-boot")
            if feature is None:
                feature = ET.SubElement(ensure(root, "os/firmware"), "feature",
                                        {"name": "secure-boot"})  # fmt: skip
            feature.set("enabled", "yes" if value else "no")
            feature.attrib["name"] = feature.attrib.pop("name")  # enabled first, as libvirt
            keys = _feature(root, "enrolled-keys")
            if not value and keys is not None and keys.get("enabled") == "yes":
                remove(keys)  # no firmware has keys enrolled without secure boot
            elif value and keys is None:
                # the Microsoft keys (what Windows 11 boots with) unless the manifest
                # says enrolledKeys: an explicit feature, not the descriptors' order
                _EnrolledKeys().write(root, True)
        if value:
            smm = ensure(root, "features/smm")
            smm.set("state", "on")

    def clear(self, root: Element) -> None:
        feature = _feature(root, "secure-boot")
        if feature is not None:
            remove(feature)
        loader = root.find("os/loader")
        if loader is not None:
            drop_attr(loader, "secure")

    def read(self, root: Element) -> object:
        feature = _feature(root, "secure-boot")
        if feature is not None:
            return feature.get("enabled") == "yes"
        loader = root.find("os/loader")
        if loader is not None and loader.get("secure") is not None:
            return loader.get("secure") == "yes"
        return None

    def canon(self, value: Any) -> object:
        return bool(value)


@dataclass(frozen=True, slots=True)
class _EnrolledKeys:
    """``firmware.enrolledKeys``: the ``enrolled-keys`` feature of autoselection (a
    varstore with the Microsoft keys: OVMF_VARS_4M.ms.fd)."""

    def write(self, root: Element, value: Any) -> None:
        feature = _feature(root, "enrolled-keys")
        if feature is None:
            feature = ET.Element("feature")
            ensure(root, "os/firmware").insert(0, feature)
        feature.set("enabled", YES_NO.dump(value))
        feature.set("name", "enrolled-keys")

    def clear(self, root: Element) -> None:
        feature = _feature(root, "enrolled-keys")
        if feature is not None:
            remove(feature)

    def read(self, root: Element) -> object:
        feature = _feature(root, "enrolled-keys")
        return None if feature is None else feature.get("enabled") == "yes"

    def canon(self, value: Any) -> object:
        return bool(value)


@dataclass(frozen=True, slots=True)
class _Loader:
    """``firmware.loader``: a firmware chosen by path (``<loader readonly='yes'
    type='pflash'>``), which replaces autoselection (``<os firmware='efi'>``)."""

    def write(self, root: Element, value: Any) -> None:
        os_element = ensure(root, "os")
        drop_attr(os_element, "firmware")
        for element in os_element.findall("firmware"):
            remove(element)
        loader = os_element.find("loader")
        if loader is None:
            loader = ET.SubElement(os_element, "loader")
            os_element.find("type").addnext(loader)  # type: ignore[union-attr]
        loader.set("readonly", "yes")
        loader.set("type", "pflash")
        loader.text = xml_text(str(value), "firmware.loader")

    def clear(self, root: Element) -> None:
        for loader in root.findall("os/loader"):
            remove(loader)

    def read(self, root: Element) -> object:
        loader = root.find("os/loader")
        return None if loader is None else (loader.text or "").strip() or None

    def canon(self, value: Any) -> object:
        return str(value)


def _uefi(get: Callable[[VmDevices], object]) -> Callable[[Any], object]:
    def wanted(desired: Any) -> object:
        spec: VirtualMachineSpec = desired.spec
        value = get(spec.devices) if spec.firmware == "uefi" else None
        return KEPT if value is None else value

    return wanted


FIRMWARE_FIELDS: tuple[Field[Any], ...] = (
    Field("firmware.loader", _uefi(lambda d: d.loader), _Loader()),
    Field("firmware.nvramTemplate", _uefi(lambda d: d.nvram_template),
          Attr("os/nvram", "template")),
    Field("firmware.secureBoot", _uefi(lambda d: d.secure_boot), _SecureBoot()),
    Field("firmware.enrolledKeys", _uefi(lambda d: d.enrolled_keys), _EnrolledKeys()),
)
"""UEFI settings beside ``firmware`` (bios, uefi): formatdomain "Operating system
booting", "BIOS bootloader" (``<loader>``, ``<nvram template>``, ``<firmware><feature>``)."""
