"""The one backoff policy: how long to wait after the n-th failure in a row.

Pure: no clock and no state; callers count failures and add the delay to their
own clock. Used for everything the tool retries:

* the daemon's per-object retry (an object whose action failed) and its retry of
  a pass that failed as a whole (``RETRY``: 5 s, doubling, at most 5 minutes);
* the daemon's reconnect to libvirtd (``RECONNECT``: 1 s, then 2 s: a refused
  connect costs nothing, and every second of backoff is a second of not
  converging once libvirtd is back; issue 11);
* the git source's poll after failed fetches (gitsource.next_poll_delay: the
  interval, doubled per failure, at most 5 minutes or the interval).
"""

from __future__ import annotations

from dataclasses import dataclass

# 2.0 ** 64 seconds is far beyond any cap; the exponent stops there so that a count
# of a million failures costs nothing (a larger factor can still overflow: see delay)
_MAX_DOUBLINGS = 64


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``first`` seconds after one failure, times ``factor`` after
    each further one, never more than ``cap`` seconds.

    ``Backoff(5, 300).delay(n)`` for n = 0, 1, 2, 3, ... is 0, 5, 10, 20, ..., 300.
    ``ValueError`` for a negative ``first``, a ``cap`` below ``first`` or a
    ``factor`` below 1 (a backoff that shrinks).
    """

    first: float  # seconds after the first failure
    cap: float  # seconds at most
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.first < 0 or self.cap < self.first or self.factor < 1:
            raise ValueError(f"not a backoff: {self}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (0 or fewer: none)."""
        if failures <= 0:
            return 0.0
        try:
            grown = self.first * self.factor ** min(failures - 1, _MAX_DOUBLINGS)
        except OverflowError:  # a large factor: far past any cap
            return float(self.cap)
        return float(min(grown, self.cap))


# the daemon: an object's failed action, or a whole pass that failed
RETRY = Backoff(first=5.0, cap=300.0)
# the daemon: libvirtd did not answer
RECONNECT = Backoff(first=1.0, cap=2.0)
