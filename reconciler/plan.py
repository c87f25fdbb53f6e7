"""The Plan value: what the planner decided and the executor carries out.

A ``Plan`` is data: an ordered tuple of ``Action``s, one per object, each
with its classification (SPEC §3), the field changes that caused it (old →
new) and the ``Step``s that carry it out. Steps hold everything they need
(rendered XML included), so ``apply`` executes the very value ``plan``
printed, and a plan can be serialised to JSON (see docs/plan-json.md).

Pure data; planner/ makes it, executor.py runs it (one ``ActionResult`` per
action), report.py prints it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias

from reconciler.errors import Problem, SourcePosition
from reconciler.model import Kind
from reconciler.units import format_duration


class Op(StrEnum):
    """How an object changes. Order of severity is the order here."""

    NOOP = "noop"
    CREATE = "create"
    UPDATE_LIVE = "update-live"  # applied to the running object and its config
    UPDATE_RESTART = "update-restart"  # config redefined now; takes effect at next start
    REPLACE = "replace"  # destroy and recreate: data-losing, never implicit
    DELETE = "delete"
    CONFLICT = "conflict"  # an object of that name exists and is not ours
    FORGET = "forget"  # manifest gone, object kept (reclaimPolicy: retain): stop managing it
    ERROR = "error"  # the change cannot be made (e.g. shrinking a volume)


MARKERS = {
    Op.NOOP: " ",
    Op.CREATE: "+",
    Op.UPDATE_LIVE: "~",
    Op.UPDATE_RESTART: "~",
    Op.REPLACE: "!",
    Op.DELETE: "-",
    Op.CONFLICT: "!",
    Op.FORGET: "-",
    Op.ERROR: "!",
}


@dataclass(frozen=True, slots=True)
class Change:
    """One field that differs: its path in manifest terms, what libvirt has, what is wanted.

    ``note``: what the user should know about this change, e.g. on a VM's ``state``
    the cause of its last failed start (``last start failed at ...: <error>; <hint>``).
    """

    path: str
    old: Any
    new: Any
    live: bool = False  # can be applied to the running object
    origin: str = ""  # where the new value came from when not the manifest (host defaults)
    note: str = ""  # what the user should know about it (a VM's last refused start)
    # the path as the manifest writes it, where that differs from ``path`` and is known:
    # ``disks[1].bus`` for ``disks[web-data].bus`` (the device's index in the manifest's list)
    where: str = ""
    # ``new`` as the manifest writes it, where the compared value says it otherwise
    # (a pin to every host CPU compared as no pin: planner/vm.py ``_pins_as_written``)
    shown: str = ""

    @property
    def shown_path(self) -> str:
        """The path a person reads: as the manifest writes it, else ``path``."""
        return self.where or self.path

    @property
    def said(self) -> str:
        """``shown_path`` with the device it names where the manifest path hides it, for
        a line read without the plan (status, logs): ``disks[1].bus (web-data.img)``."""
        if not self.where or self.where == self.path:
            return self.path
        key = self.path.partition("].")[0].partition("[")[2]
        return f"{self.where} ({key})" if key else self.where


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """A device added, removed or replaced as a whole, said once in the user's terms.

    ``section``: the manifest list (``disks``, ``cdroms``, ``interfaces``,
    ``ipv4.dhcp.hosts``, ``dnsHosts``); ``key``: its identity in ``Change.path``
    (``disks[web-data]``); ``how``: ``add`` | ``remove`` | ``replace`` | ``change``
    (the same device with some fields changed); ``label``: what the user named it by
    (the volume, file, MAC, IP); ``details``: the rest of its identity, shortest
    first (target, bus, size), or for ``change`` each field's ``name old -> new``;
    ``where``: its place in the manifest (``disks[1]``), "" for a device the
    manifest no longer has;
    ``replaces``: the label of the device it replaces (``replaces_key`` its identity
    when that differs: a NIC's old MAC); ``live``: done to the
    running object (else at its next restart). The field changes it stands for stay
    in ``Action.changes`` (their paths start with ``key``).
    """

    section: str
    key: str
    how: str
    label: str
    details: tuple[str, ...] = ()
    where: str = ""
    replaces: str = ""
    live: bool = False
    replaces_key: str = ""  # the identity of the device replaced, when it differs

    def covers(self, path: str) -> bool:
        """Whether the field change ``path`` is part of this device's change."""
        return path.startswith(self.key + ".") or bool(
            self.replaces_key and path.startswith(self.replaces_key + ".")
        )

    @property
    def noun(self) -> str:
        """``disk``, ``cdrom``, ``interface``, ``dhcp host``, ``dns host``, ``filesystem``,
        ``host device``."""
        return _DEVICE_NOUNS.get(self.section, self.section)


_DEVICE_NOUNS = {
    "disks": "disk",
    "cdroms": "cdrom",
    "interfaces": "interface",
    "ipv4.dhcp.hosts": "dhcp host",
    "dnsHosts": "dns host",
    "filesystems": "filesystem",
    "hostdevs": "host device",
}


# Step arguments too long or too private to print (rendered XML with a display
# password, cloud-init seed files with whatever user-data holds).
# ``current``: the persistent definition the plan read and patched: apply defines only
# while libvirt still has it (``Hypervisor.define_*``), ``--show-xml`` diffs against it.
# ``index``: which ``<ip>`` of a network a DHCP host goes to (libvirt's count, no meaning
# to a reader: the path names the entry).
HIDDEN_ARGS = frozenset({"xml", "files", "current", "index"})


@dataclass(frozen=True, slots=True)
class StepBase:
    """One call the executor makes, as a typed value: each kind of step is a subclass
    (``DefineDomain``, ``StopDomain`` ...) whose fields are its arguments, and the union
    of them all is ``Step``, which the executor matches exhaustively.

    ``verb`` names the call (``define-domain``), as plans print it and the JSON plan
    says it (docs/plan-json.md); ``args`` are its fields as a dict, in declaration
    order, an unset ``current`` left out."""

    verb: ClassVar[str] = ""
    # arguments left out of ``args`` while None (as the JSON plan has always had them)
    optional: ClassVar[frozenset[str]] = frozenset({"current"})

    @property
    def args(self) -> dict[str, Any]:
        """The step's fields by name, in order (an ``optional`` one only when set)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.optional:
                continue
            out[f.name] = value
        return out

    def shown_args(self) -> dict[str, Any]:
        """The arguments worth printing (not ``HIDDEN_ARGS``)."""
        return {k: v for k, v in self.args.items() if k not in HIDDEN_ARGS}

    def disruption(self, op: Op) -> str:
        """What this step does that a user must know before saying yes, or "":
        a graceful stop that ends in a forced power-off, a volume's data deleted.
        ``op``: the action's classification (a replace deletes to recreate)."""
        return ""

    def describe(self) -> str:
        shown = self.shown_args()
        if not shown:
            return self.verb
        return self.verb + " " + " ".join(f"{k}={v}" for k, v in shown.items())


def _forced_after(timeout: float | None) -> str:
    return "" if timeout is None else f", forced off after {format_duration(timeout)}"


# --- storage pools --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DefinePool(StepBase):
    verb: ClassVar[str] = "define-pool"
    xml: str
    current: str | None = None  # the definition patched (see HIDDEN_ARGS)


@dataclass(frozen=True, slots=True)
class BuildPool(StepBase):
    """``format``: True to build the pool's storage on its device (vgcreate, mkfs, a
    partition table; never over data); None: only make its folder (dir, netfs, fs)."""

    verb: ClassVar[str] = "build-pool"
    optional: ClassVar[frozenset[str]] = frozenset({"current", "format"})
    format: bool | None = None


@dataclass(frozen=True, slots=True)
class StartPool(StepBase):
    verb: ClassVar[str] = "start-pool"


@dataclass(frozen=True, slots=True)
class StopPool(StepBase):
    verb: ClassVar[str] = "stop-pool"


@dataclass(frozen=True, slots=True)
class UndefinePool(StepBase):
    verb: ClassVar[str] = "undefine-pool"


@dataclass(frozen=True, slots=True)
class AutostartPool(StepBase):
    verb: ClassVar[str] = "autostart-pool"
    on: bool


# --- volumes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateVolume(StepBase):
    verb: ClassVar[str] = "create-volume"
    pool: str
    xml: str
    current: str | None = None  # the volume replaced (a replace), for --show-xml


@dataclass(frozen=True, slots=True)
class FetchImage(StepBase):
    """Have the image of digest ``sha256`` in the state directory's cache: downloaded
    from ``url`` unless cached, verified, and checked to be a ``format`` image whose
    virtual size fits ``capacity`` bytes (imagefetch.py). First of its action's steps,
    so that a wrong image fails the action before libvirt is touched."""

    verb: ClassVar[str] = "fetch-image"
    url: str
    sha256: str
    format: str
    capacity: int


@dataclass(frozen=True, slots=True)
class ImportVolume(StepBase):
    """Copy ``source`` (a host file) into the volume just created, as differences from
    ``backing`` (the backing volume's path) when given; or, with ``sha256``, the cached
    image that a ``FetchImage`` step of the same action fetched from ``url``."""

    verb: ClassVar[str] = "import-volume"
    optional: ClassVar[frozenset[str]] = frozenset({"current", "source", "url", "sha256"})
    pool: str
    source: str | None
    backing: str | None = None
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteVolume(StepBase):
    verb: ClassVar[str] = "delete-volume"
    pool: str

    def disruption(self, op: Op) -> str:
        if op is Op.REPLACE:
            return "deletes the volume and its data, then creates it again empty"
        return "deletes the volume and its data"


@dataclass(frozen=True, slots=True)
class ResizeVolume(StepBase):
    verb: ClassVar[str] = "resize-volume"
    pool: str
    capacity: int  # bytes


@dataclass(frozen=True, slots=True)
class BlockResize(StepBase):
    """Grow a volume through the running domain that uses it (QEMU's block_resize)."""

    verb: ClassVar[str] = "block-resize"
    domain: str
    target: str  # the disk's target in that domain (vdb)
    capacity: int  # bytes


# --- networks -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DefineNetwork(StepBase):
    verb: ClassVar[str] = "define-network"
    xml: str
    current: str | None = None


@dataclass(frozen=True, slots=True)
class StartNetwork(StepBase):
    verb: ClassVar[str] = "start-network"


@dataclass(frozen=True, slots=True)
class StopNetwork(StepBase):
    verb: ClassVar[str] = "stop-network"


@dataclass(frozen=True, slots=True)
class UndefineNetwork(StepBase):
    verb: ClassVar[str] = "undefine-network"


@dataclass(frozen=True, slots=True)
class AutostartNetwork(StepBase):
    verb: ClassVar[str] = "autostart-network"
    on: bool


@dataclass(frozen=True, slots=True)
class NetUpdate(StepBase):
    """``virNetworkUpdate`` of one entry: ``command`` add | delete, ``section``
    ip-dhcp-host | ip-dhcp-range | dns-host | dns-txt | dns-srv | portgroup |
    forward-interface, ``path`` the
    manifest's entry, ``xml`` the entry, ``index`` the parent element's index."""

    verb: ClassVar[str] = "net-update"
    optional: ClassVar[frozenset[str]] = frozenset({"index"})
    command: str
    section: str
    path: str
    xml: str
    # a DHCP host or range: the index of the <ip> of its family it goes to (never the
    # first <ip> with DHCP, which may be the other family's); None: libvirt's choice
    index: int | None = None


# --- cloud-init seeds -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteSeed(StepBase):
    """Make the seed volume ``pool/volume`` if missing (``xml``) and write the ISO built
    from ``files`` (name -> content) into it; ``digest`` names that content."""

    verb: ClassVar[str] = "write-seed"
    pool: str
    volume: str
    digest: str
    xml: str
    files: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class DeleteSeed(StepBase):
    verb: ClassVar[str] = "delete-seed"
    pool: str
    volume: str


# --- domains ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DefineDomain(StepBase):
    verb: ClassVar[str] = "define-domain"
    xml: str
    current: str | None = None  # the definition patched (see HIDDEN_ARGS)


@dataclass(frozen=True, slots=True)
class StartDomain(StepBase):
    verb: ClassVar[str] = "start-domain"


@dataclass(frozen=True, slots=True)
class StopDomain(StepBase):
    """ACPI shutdown, forced off after ``timeout`` seconds."""

    verb: ClassVar[str] = "stop-domain"
    timeout: float

    def disruption(self, op: Op) -> str:
        return f"shuts the VM down: ACPI shutdown{_forced_after(self.timeout)}"


@dataclass(frozen=True, slots=True)
class RestartDomain(StepBase):
    """``StopDomain`` then ``StartDomain``."""

    verb: ClassVar[str] = "restart-domain"
    timeout: float

    def disruption(self, op: Op) -> str:
        return f"restarts the VM: ACPI shutdown{_forced_after(self.timeout)}, then start"


@dataclass(frozen=True, slots=True)
class UndefineDomain(StepBase):
    verb: ClassVar[str] = "undefine-domain"


@dataclass(frozen=True, slots=True)
class AutostartDomain(StepBase):
    verb: ClassVar[str] = "autostart-domain"
    on: bool


@dataclass(frozen=True, slots=True)
class SetMemory(StepBase):
    """Set the running domain's balloon to ``bytes`` (libvirt takes KiB)."""

    verb: ClassVar[str] = "set-memory"
    path: str
    bytes: int


@dataclass(frozen=True, slots=True)
class SetVcpus(StepBase):
    verb: ClassVar[str] = "set-vcpus"
    path: str
    count: int


@dataclass(frozen=True, slots=True)
class PinCpus(StepBase):
    """Pin the running domain's vCPU ``vcpu``, or I/O thread ``iothread``, or else its
    emulator threads to the host CPUs ``cpuset`` (virDomainPinVcpuFlags,
    virDomainPinIOThread, virDomainPinEmulator; AFFECT_LIVE: the definition is
    redefined with the rest). ``path``: the manifest field."""

    verb: ClassVar[str] = "pin-cpus"
    optional: ClassVar[frozenset[str]] = frozenset({"current", "vcpu", "iothread"})
    path: str
    cpuset: str
    vcpu: int | None = None
    iothread: int | None = None


@dataclass(frozen=True, slots=True)
class AttachDevice(StepBase):
    """Hot-plug ``xml`` (one device) into the running domain; ``path`` is the
    manifest's device (``disks[web-data]``)."""

    verb: ClassVar[str] = "attach-device"
    path: str
    xml: str


@dataclass(frozen=True, slots=True)
class DetachDevice(StepBase):
    verb: ClassVar[str] = "detach-device"
    path: str
    xml: str  # the device as the running domain has it


@dataclass(frozen=True, slots=True)
class UpdateDevice(StepBase):
    """Change a device in place (a cdrom's medium, a display password)."""

    verb: ClassVar[str] = "update-device"
    path: str
    xml: str


Step: TypeAlias = (
    DefinePool | BuildPool | StartPool | StopPool | UndefinePool | AutostartPool
    | CreateVolume | FetchImage | ImportVolume | DeleteVolume | ResizeVolume | BlockResize
    | DefineNetwork | StartNetwork | StopNetwork | UndefineNetwork | AutostartNetwork
    | NetUpdate | WriteSeed | DeleteSeed
    | DefineDomain | StartDomain | StopDomain | RestartDomain | UndefineDomain
    | AutostartDomain | SetMemory | SetVcpus | AttachDevice | DetachDevice | UpdateDevice
    | PinCpus
)
"""Every step there is: the executor matches on this union, and mypy checks that every
member has a case (``assert_never``)."""

LiveStep: TypeAlias = SetMemory | SetVcpus | AttachDevice | DetachDevice | UpdateDevice | PinCpus
"""Steps done to a running domain, which libvirt may refuse (then: at the next restart)."""

STEP_TYPES: tuple[type[StepBase], ...] = (
    DefinePool, BuildPool, StartPool, StopPool, UndefinePool, AutostartPool,
    CreateVolume, FetchImage, ImportVolume, DeleteVolume, ResizeVolume, BlockResize,
    DefineNetwork, StartNetwork, StopNetwork, UndefineNetwork, AutostartNetwork,
    NetUpdate, WriteSeed, DeleteSeed,
    DefineDomain, StartDomain, StopDomain, RestartDomain, UndefineDomain,
    AutostartDomain, SetMemory, SetVcpus, AttachDevice, DetachDevice, UpdateDevice,
    PinCpus,
)  # fmt: skip
"""The members of ``Step``, for lookups by verb (tests, docs)."""

STEPS_BY_VERB: Mapping[str, type[StepBase]] = {t.verb: t for t in STEP_TYPES}


@dataclass(frozen=True, slots=True)
class Action:
    """What happens to one object."""

    kind: Kind
    name: str
    op: Op
    changes: tuple[Change, ...] = ()
    steps: tuple[Step, ...] = ()
    reason: str = ""
    source: SourcePosition | None = None
    restart_pending: tuple[Change, ...] = ()  # running config differs from the defined one
    owner_record: dict[str, Any] | None = None  # inventory entry written after success
    requires: tuple[str, ...] = ()  # keys of actions that must not have failed
    fingerprint: str | None = None  # set on a VM found in sync: see planner.fingerprint
    devices: tuple[DeviceChange, ...] = ()  # devices added/removed/replaced whole
    pending_devices: tuple[DeviceChange, ...] = ()  # the same, of ``restart_pending``

    @property
    def disruptions(self) -> tuple[str, ...]:
        """What the steps do that stops a VM or loses data (``Step.disruption``)."""
        return tuple(d for s in self.steps if (d := s.disruption(self.op)))

    @property
    def key(self) -> str:
        return f"{self.kind.value}/{self.name}"

    @property
    def refused(self) -> bool:
        """Not carried out: in conflict, impossible, or a replace nobody allowed."""
        return self.op in (Op.CONFLICT, Op.ERROR) or (self.op is Op.REPLACE and not self.steps)

    @property
    def changes_anything(self) -> bool:
        return self.op not in (Op.NOOP, Op.CONFLICT, Op.ERROR) or bool(self.steps)


@dataclass(frozen=True, slots=True)
class Plan:
    """Every action, in the order they must run (up: pools first; down: VMs first)."""

    actions: tuple[Action, ...]
    prune_blocked: str = ""  # why owned objects without manifests are not deleted
    # owned objects no manifest declares whose removal awaits confirmation (the daemon's
    # two-read rule, PlanOptions.confirmed_removals): neither deleted nor forgotten yet
    held_removals: tuple[str, ...] = ()

    @property
    def has_changes(self) -> bool:
        return any(a.changes_anything for a in self.actions)

    @property
    def has_errors(self) -> bool:
        return any(a.refused for a in self.actions)

    def counts(self) -> Counter[Op]:
        return Counter(a.op for a in self.actions)

    def summary(self) -> str:
        """``Plan: 2 to create, 1 to update (1 needs restart), 0 to delete.``"""
        c = self.counts()
        updates = c[Op.UPDATE_LIVE] + c[Op.UPDATE_RESTART] + c[Op.REPLACE]
        restart = c[Op.UPDATE_RESTART]
        text = f"Plan: {c[Op.CREATE]} to create, {updates} to update"
        if restart:
            text += f" ({restart} needs restart)" if restart == 1 else f" ({restart} need restart)"
        text += f", {c[Op.DELETE]} to delete."
        extra = []
        pending = sum(1 for a in self.actions if a.restart_pending)
        if pending:
            extra.append(f"{pending} restart pending")
        if c[Op.FORGET]:
            extra.append(f"{c[Op.FORGET]} to forget (data kept)")
        if c[Op.CONFLICT]:
            extra.append(f"{c[Op.CONFLICT]} in conflict")
        refused = sum(1 for a in self.actions if a.refused and a.op is not Op.CONFLICT)
        if refused:
            extra.append(f"{refused} refused")
        if extra:
            text += " " + ", ".join(extra).capitalize() + "."
        return text


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What carrying out one ``Action`` came to (made by executor.py, printed by
    report.py, counted by metrics.py): a value, so printing a result needs no libvirt."""

    action: Action
    outcome: str  # ok | failed | skipped
    duration: float = 0.0
    error: str = ""
    notes: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()  # paths of live changes libvirt refused
    explanation: Problem | None = None  # a refused define/start, placed in the manifest
    failed_step: str = ""  # the verb of the step that failed (a restart's start: start-domain)
    # failed because its definition changed since the plan (errors.DefinitionChanged):
    # nothing was done, and a new plan (the daemon's next pass) patches what libvirt has
    stale: bool = False


UNSETTLED_NOTE = "unsettled"
"""The first word of the note on a pending change that a restart already failed to
settle (``Change.note``, planner/vm.py): a bug, reported once, never restarted for
again."""


def is_unsettled(change: Change) -> bool:
    """Whether ``change`` is a pending change a restart already failed to settle."""
    return change.note.startswith(UNSETTLED_NOTE + ":")
