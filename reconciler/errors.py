"""Errors a user can cause, carrying where they come from.

Everything that goes wrong because of input (a manifest, a flag, a refused
libvirt request) is one of these, rendered as a single line
``path:line:col: field.path: message; hint``. Tracebacks are for bugs only.
libvirt's own errors are wrapped where libvirt is called (hypervisor.py) into
``HypervisorError`` subclasses, telling the caller whether a retry can help.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """A place in a manifest file; line and column are 1-based, 0 when unknown."""

    path: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.path}:{self.line}:{self.column}"
        return self.path


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in the manifests: where, which field, what, and how to fix it."""

    position: SourcePosition
    message: str
    field: str = ""
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.position}: "
        if self.field:
            text += f"{self.field}: "
        text += self.message
        if self.hint:
            text += f"; {self.hint}"
        return text


class ReconcilerError(Exception):
    """Base of every error the tool reports to the user without a traceback."""


class ManifestErrors(ReconcilerError):
    """The manifests could not be loaded; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class ConfigError(ReconcilerError):
    """The configuration (file, flags, environment) is invalid."""


class StateDirError(ReconcilerError):
    """The state directory (inventory, lock, status) cannot be created, read or written:
    one line naming the path, the system's reason and what to do."""


class HypervisorError(ReconcilerError):
    """libvirt refused or failed a request. ``temporary`` says a retry may help.

    ``code`` is libvirt's ``virErrorNumber``. ``explanation``, when set, is the
    message placed in the manifest with a hint (hints.py): the executor sets it
    on a refused define or start, and ``str()`` of the error is then its text.
    ``step`` names the executor step that failed (``start-domain``...).
    """

    temporary: bool = False

    def __init__(
        self, message: str, *, code: int = 0, explanation: Problem | None = None, step: str = ""
    ) -> None:
        super().__init__(message)
        self.code = code
        self.explanation = explanation
        self.step = step


class ConnectionLost(HypervisorError):
    """libvirtd is not reachable (not running, restarting, socket gone)."""

    temporary = True


class Refused(HypervisorError):
    """libvirt understood the request and refused it (bad XML, conflict, ...)."""

    temporary = False


class DefinitionChanged(HypervisorError):
    """An object's persistent definition is no longer the one the plan patched: someone
    defined it (or undefined it) between plan and apply. Nothing was defined; a new plan
    patches what libvirt has now. ``temporary``: the next pass re-plans and succeeds."""

    temporary = True
