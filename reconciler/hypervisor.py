"""The one module that imports libvirt: connections, calls, and error wrapping.

Everything above this module sees plain Python values and reconciler's own
errors: ``ConnectionLost`` when libvirtd cannot be reached (a retry may help),
``Refused`` when libvirt rejected a request (it will not help). Read-only
helpers here feed observe.py; mutating calls are made only by executor.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import libvirt

from reconciler.errors import ConnectionLost, HypervisorError, Refused
from reconciler.references import KnownObjects

DEFAULT_URI = "qemu:///system"

_CONNECTION_CODES = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_FAILED,
}


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


libvirt.registerErrorHandler(_silence, None)


_VANISHED = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
}


@contextmanager
def _vanished_ok() -> Iterator[None]:
    """Skip an object removed by someone else between listing it and reading it."""
    try:
        yield
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in _VANISHED:
            raise


def wrap(exc: libvirt.libvirtError, doing: str) -> HypervisorError:
    """Our error for a libvirt error raised while ``doing`` something."""
    code = exc.get_error_code() or 0
    message = f"{doing}: {exc.get_error_message() or exc}"
    if code in _CONNECTION_CODES:
        return ConnectionLost(message, code=code)
    return Refused(message, code=code)


@contextmanager
def calling(doing: str) -> Iterator[None]:
    """Run libvirt calls, re-raising their errors as ours."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise wrap(exc, doing) from exc


def connect(uri: str = DEFAULT_URI, *, readonly: bool = False) -> Any:
    """Open a libvirt connection, or raise ``ConnectionLost``."""
    try:
        return libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise ConnectionLost(
            f"cannot connect to libvirt at {uri}: {exc.get_error_message() or exc}",
            code=exc.get_error_code() or 0,
        ) from exc


def known_objects(conn: Any) -> KnownObjects:
    """Names of the networks, pools and volumes that exist in libvirt."""
    with calling("listing libvirt objects"):
        networks = frozenset(n.name() for n in conn.listAllNetworks())
        pools = conn.listAllStoragePools()
        volumes: set[tuple[str, str]] = set()
        for pool in pools:
            if pool.isActive():
                volumes.update((pool.name(), v.name()) for v in pool.listAllVolumes())
        return KnownObjects(
            networks=networks,
            pools=frozenset(p.name() for p in pools),
            volumes=frozenset(volumes),
            consulted=True,
        )


# --- the connection as a narrow interface ------------------------------------


@dataclass(frozen=True, slots=True)
class DomainRecord:
    name: str
    uuid: str
    active: bool
    autostart: bool
    config_xml: str  # persistent definition, with secrets (VIR_DOMAIN_XML_SECURE)
    live_xml: str | None  # running definition, when active
    persistent: bool = True  # False: running without a definition (after `virsh undefine`)


@dataclass(frozen=True, slots=True)
class NetworkRecord:
    name: str
    uuid: str
    active: bool
    autostart: bool
    config_xml: str
    live_xml: str | None
    persistent: bool = True
    # the UUIDs of the network's ports (one per connected guest NIC) while it runs;
    # None: not read. A running guest's NIC whose ``portid`` is not among them lost
    # its connection (the network was destroyed and started again under it).
    ports: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class PoolRecord:
    name: str
    uuid: str
    active: bool
    autostart: bool
    config_xml: str
    persistent: bool = True


@dataclass(frozen=True, slots=True)
class VolumeRecord:
    pool: str
    name: str
    path: str
    xml: str


class Hypervisor:
    """One libvirt connection. Reads return plain records; writes raise our errors."""

    def __init__(self, conn: Any, uri: str) -> None:
        self._conn = conn
        self.uri = uri

    @classmethod
    def open(cls, uri: str = DEFAULT_URI, *, readonly: bool = False) -> Hypervisor:
        return cls(connect(uri, readonly=readonly), uri)

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    # -- reads ------------------------------------------------------------------

    def capabilities(self) -> str:
        with calling("reading host capabilities"):
            return str(self._conn.getCapabilities())

    def known_objects(self) -> KnownObjects:
        return known_objects(self._conn)

    def domains(self) -> list[DomainRecord]:
        """Every domain with its definitions, in few calls: four listings, then each
        definition, a few calls in flight at once (libvirtd answers them on its worker
        pool). A transient one (running, its definition undefined) is listed too: its
        definition is the running one."""
        return self._read_domains(None)

    def domains_named(self, names: AbstractSet[str]) -> list[DomainRecord]:
        """The domains among ``names``, read as ``domains`` reads them; a name not defined
        is left out (the check after an apply reads only what it touched)."""
        return self._read_domains(names)

    def _read_domains(self, names: AbstractSet[str] | None) -> list[DomainRecord]:
        with calling("listing domains"):
            listed = self._conn.listAllDomains(0)
            if names is not None:
                listed = [d for d in listed if d.name() in names]
            if not listed:
                return []
            transient = {
                d.UUIDString()
                for d in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
            }
            autostart = {
                d.UUIDString()
                for d in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
            }
            running = {
                d.UUIDString()
                for d in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            }

            def read(dom: Any) -> DomainRecord | None:
                uuid = dom.UUIDString()
                active = uuid in running
                try:
                    config = dom.XMLDesc(
                        libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
                    )
                    live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE) if active else None
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        return None  # undefined while we listed
                    if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and active:
                        live = None  # stopped while we listed
                        active = False
                    else:
                        raise
                return DomainRecord(dom.name(), uuid, active, uuid in autostart, config, live,
                                    persistent=uuid not in transient)  # fmt: skip

            if len(listed) < 8:
                return [r for r in map(read, listed) if r is not None]
            with ThreadPoolExecutor(max_workers=4) as pool:
                return [r for r in pool.map(read, listed) if r is not None]

    def domain_active(self, name: str) -> bool:
        with calling(f"reading state of domain {name}"):
            return bool(self._conn.lookupByName(name).isActive())

    def networks(self) -> list[NetworkRecord]:
        with calling("listing networks"):
            records = []
            for net in self._conn.listAllNetworks(0):
                with _vanished_ok():
                    active = bool(net.isActive())
                    config = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
                    live = net.XMLDesc(0) if active else None
                    ports = (
                        frozenset(p.UUIDString() for p in net.listAllPorts(0))
                        if active
                        else None
                    )
                    records.append(
                        NetworkRecord(
                            net.name(),
                            net.UUIDString(),
                            active,
                            bool(net.autostart()),
                            config,
                            live,
                            persistent=bool(net.isPersistent()),
                            ports=ports,
                        )
                    )
            return records

    def pools(self) -> list[PoolRecord]:
        with calling("listing storage pools"):
            records = []
            for pool in self._conn.listAllStoragePools(0):
                with _vanished_ok():
                    records.append(
                        PoolRecord(
                            pool.name(),
                            pool.UUIDString(),
                            bool(pool.isActive()),
                            bool(pool.autostart()),
                            pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE),
                            persistent=bool(pool.isPersistent()),
                        )
                    )
            return records

    def volumes(self, pool_name: str) -> list[VolumeRecord]:
        with calling(f"listing volumes of pool {pool_name}"):
            records: list[VolumeRecord] = []
            try:
                pool = self._conn.storagePoolLookupByName(pool_name)
                if not pool.isActive():
                    return []
                pool.refresh(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (
                    libvirt.VIR_ERR_NO_STORAGE_POOL,
                    libvirt.VIR_ERR_OPERATION_INVALID,  # stopped meanwhile
                ):
                    return records
                # A volume being uploaded, cloned or wiped (by anyone) makes refresh
                # fail with "asynchronous jobs running": libvirt's list is current anyway.
                if exc.get_error_code() != libvirt.VIR_ERR_INTERNAL_ERROR:
                    raise
            for vol in pool.listAllVolumes():
                with _vanished_ok():
                    records.append(VolumeRecord(pool_name, vol.name(), vol.path(), vol.XMLDesc(0)))
            return records

    # -- domains ----------------------------------------------------------------

    def define_domain(self, xml: str) -> None:
        with calling("defining domain"):
            self._conn.defineXML(xml)

    def start_domain(self, name: str) -> None:
        with calling(f"starting domain {name}"):
            self._conn.lookupByName(name).create()

    def shutdown_domain(self, name: str) -> None:
        """Ask the guest to power off (ACPI power button)."""
        with calling(f"shutting down domain {name}"):
            self._conn.lookupByName(name).shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    def destroy_domain(self, name: str) -> None:
        """Force off."""
        with calling(f"forcing off domain {name}"):
            dom = self._conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()

    def undefine_domain(self, name: str) -> None:
        with calling(f"undefining domain {name}"):
            self._conn.lookupByName(name).undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            )

    def set_domain_autostart(self, name: str, on: bool) -> None:
        with calling(f"setting autostart of domain {name}"):
            self._conn.lookupByName(name).setAutostart(int(on))

    def set_domain_memory(self, name: str, kib: int) -> None:
        """Balloon the running domain to ``kib`` (its config is redefined separately)."""
        with calling(f"setting memory of domain {name}"):
            self._conn.lookupByName(name).setMemoryFlags(kib, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def set_domain_vcpus(self, name: str, count: int) -> None:
        with calling(f"setting vcpus of domain {name}"):
            self._conn.lookupByName(name).setVcpusFlags(count, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def domain_live_xml(self, name: str) -> str | None:
        """The running definition (with secrets), or None when the domain is not running."""
        with calling(f"reading domain {name}"), _vanished_ok():
            dom = self._conn.lookupByName(name)
            return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)) if dom.isActive() else None
        return None

    def set_domain_live_metadata(self, name: str, key: str, uri: str, xml: str) -> None:
        """Replace the running definition's metadata element of namespace ``uri``."""
        with calling(f"setting metadata of domain {name}"):
            self._conn.lookupByName(name).setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, key, uri, libvirt.VIR_DOMAIN_AFFECT_LIVE
            )

    def update_domain_device(self, name: str, xml: str) -> None:
        with calling(f"updating a device of domain {name}"):
            self._conn.lookupByName(name).updateDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def attach_domain_device(self, name: str, xml: str) -> None:
        with calling(f"attaching a device to domain {name}"):
            self._conn.lookupByName(name).attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def detach_domain_device(self, name: str, xml: str) -> None:
        with calling(f"detaching a device from domain {name}"):
            self._conn.lookupByName(name).detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    # -- networks ---------------------------------------------------------------

    def define_network(self, xml: str) -> None:
        with calling("defining network"):
            self._conn.networkDefineXML(xml)

    def start_network(self, name: str) -> None:
        with calling(f"starting network {name}"):
            self._conn.networkLookupByName(name).create()

    def stop_network(self, name: str) -> None:
        with calling(f"stopping network {name}"):
            net = self._conn.networkLookupByName(name)
            if net.isActive():
                net.destroy()

    def undefine_network(self, name: str) -> None:
        with calling(f"undefining network {name}"):
            self._conn.networkLookupByName(name).undefine()

    def set_network_autostart(self, name: str, on: bool) -> None:
        with calling(f"setting autostart of network {name}"):
            self._conn.networkLookupByName(name).setAutostart(int(on))

    def update_network(self, name: str, command: str, section: str, xml: str) -> None:
        """``virsh net-update --live``: change an entry of the running network."""
        commands = {
            "add": libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
            "delete": libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
            "modify": libvirt.VIR_NETWORK_UPDATE_COMMAND_MODIFY,
        }
        sections = {
            "ip-dhcp-host": libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
            "dns-host": libvirt.VIR_NETWORK_SECTION_DNS_HOST,
        }
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE  # the definition is redefined separately
        with calling(f"updating {section} of network {name}"):
            self._conn.networkLookupByName(name).update(
                commands[command], sections[section], -1, xml, flags
            )

    # -- pools and volumes --------------------------------------------------------

    def define_pool(self, xml: str) -> None:
        with calling("defining storage pool"):
            self._conn.storagePoolDefineXML(xml, 0)

    def build_pool(self, name: str) -> None:
        """Create a dir pool's directory if missing (mkdir -p; existing files are untouched)."""
        with calling(f"building storage pool {name}"):
            self._conn.storagePoolLookupByName(name).build(0)

    def start_pool(self, name: str) -> None:
        with calling(f"starting storage pool {name}"):
            self._conn.storagePoolLookupByName(name).create(0)

    def stop_pool(self, name: str) -> None:
        with calling(f"stopping storage pool {name}"):
            pool = self._conn.storagePoolLookupByName(name)
            if pool.isActive():
                pool.destroy()

    def undefine_pool(self, name: str) -> None:
        with calling(f"undefining storage pool {name}"):
            self._conn.storagePoolLookupByName(name).undefine()

    def set_pool_autostart(self, name: str, on: bool) -> None:
        with calling(f"setting autostart of storage pool {name}"):
            self._conn.storagePoolLookupByName(name).setAutostart(int(on))

    def create_volume(self, pool: str, xml: str) -> None:
        with calling(f"creating a volume in pool {pool}"):
            self._conn.storagePoolLookupByName(pool).createXML(xml, 0)

    def resize_volume(self, pool: str, name: str, capacity: int) -> None:
        with calling(f"resizing volume {pool}/{name}"):
            self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name).resize(
                capacity, 0
            )

    def delete_volume(self, pool: str, name: str) -> None:
        with calling(f"deleting volume {pool}/{name}"):
            self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name).delete(0)

    def volume_exists(self, pool: str, name: str) -> bool:
        with calling(f"looking up volume {pool}/{name}"):
            try:
                self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return False
                raise
            return True

    def write_volume(self, pool: str, name: str, data: bytes) -> None:
        """Replace a volume's content with ``data`` (grown to fit, the rest zeroed), through
        libvirt's upload stream: it works on a remote host too."""
        with calling(f"writing volume {pool}/{name}"):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            capacity = int(vol.info()[1])
            if capacity < len(data):
                vol.resize(len(data), 0)
                capacity = len(data)
            payload = data + bytes(capacity - len(data))
            stream = self._conn.newStream(0)
            vol.upload(stream, 0, len(payload), 0)
            try:
                view = memoryview(payload)
                while view:
                    sent = stream.send(view[: 1024**2].tobytes())
                    if sent < 0:
                        raise libvirt.libvirtError("volume upload stream refused data")
                    view = view[sent:]
                stream.finish()
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise

    def volume_xml(self, pool: str, name: str) -> str:
        with calling(f"reading volume {pool}/{name}"):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            return str(vol.XMLDesc(0))

    def volume_path(self, pool: str, name: str) -> str:
        with calling(f"looking up volume {pool}/{name}"):
            return str(self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name).path())

    def block_resize(self, domain: str, target: str, capacity: int) -> None:
        """Grow a disk of a running domain (the guest sees the new size at once)."""
        with calling(f"resizing disk {target} of domain {domain}"):
            self._conn.lookupByName(domain).blockResize(
                target, capacity, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
            )

    # -- events -----------------------------------------------------------------------

    def watch(
        self,
        on_event: Callable[[str, str, str], None],
        on_close: Callable[[str], None],
    ) -> None:
        """Call ``on_event(kind, name, event)`` for lifecycle events of domains, networks
        and pools, and ``on_close(reason)`` when the connection drops. Needs
        ``start_event_loop()`` before the connection was opened."""
        conn = self._conn
        with calling("registering for libvirt events"):
            conn.setKeepAlive(5, 3)  # notice a dead libvirtd within ~20 s
            conn.registerCloseCallback(
                lambda _c, reason, _o: on_close(_CLOSE_REASONS.get(reason, str(reason))), None
            )
            conn.domainEventRegisterAny(
                None,
                libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                lambda _c, dom, event, _d, _o: on_event(
                    "VirtualMachine", dom.name(), _DOMAIN_EVENTS.get(event, str(event))
                ),
                None,
            )
            conn.networkEventRegisterAny(
                None,
                libvirt.VIR_NETWORK_EVENT_ID_LIFECYCLE,
                lambda _c, net, event, _d, _o: on_event(
                    "Network", net.name(), _NETWORK_EVENTS.get(event, str(event))
                ),
                None,
            )
            with contextlib.suppress(libvirt.libvirtError, AttributeError):
                conn.storagePoolEventRegisterAny(
                    None,
                    libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE,
                    lambda _c, pool, event, _d, _o: on_event(
                        "StoragePool", pool.name(), _POOL_EVENTS.get(event, str(event))
                    ),
                    None,
                )


_DOMAIN_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_NETWORK_EVENTS = {
    libvirt.VIR_NETWORK_EVENT_DEFINED: "defined",
    libvirt.VIR_NETWORK_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_NETWORK_EVENT_STARTED: "started",
    libvirt.VIR_NETWORK_EVENT_STOPPED: "stopped",
}
_POOL_EVENTS = {
    libvirt.VIR_STORAGE_POOL_EVENT_DEFINED: "defined",
    libvirt.VIR_STORAGE_POOL_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_STORAGE_POOL_EVENT_STARTED: "started",
    libvirt.VIR_STORAGE_POOL_EVENT_STOPPED: "stopped",
    libvirt.VIR_STORAGE_POOL_EVENT_CREATED: "built",
    libvirt.VIR_STORAGE_POOL_EVENT_DELETED: "deleted",
}
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed the connection",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by us",
}
_event_loop: threading.Thread | None = None


def start_event_loop() -> None:
    """Run libvirt's default event loop in a background thread, once per process.

    Events and keepalive need it; it must run before connections are opened."""
    global _event_loop
    if _event_loop is not None:
        return
    libvirt.virEventRegisterDefaultImpl()

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    _event_loop = threading.Thread(target=loop, name="libvirt-events", daemon=True)
    _event_loop.start()
