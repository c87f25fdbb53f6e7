"""The one backoff policy, and the retries that use it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import backoff
from reconciler.backoff import RECONNECT, RETRY, Backoff
from reconciler.gitsource import RETRY_MAX, next_poll_delay


def test_doubles_from_first_up_to_the_cap() -> None:
    assert [Backoff(5, 300).delay(n) for n in range(8)] == [0, 5, 10, 20, 40, 80, 160, 300]
    assert [Backoff(1, 100, factor=3).delay(n) for n in (1, 2, 3, 4, 5)] == [1, 3, 9, 27, 81]


def test_the_daemon_policies() -> None:
    # an object's failed action or a failed pass: 5 s, doubling, at most 5 minutes
    assert [RETRY.delay(n) for n in (1, 2, 3, 7, 8, 100)] == [5, 10, 20, 300, 300, 300]
    # libvirtd unreachable: 1 s, then every 2 s (issue 11: converge within ~2 s)
    assert [RECONNECT.delay(n) for n in (1, 2, 3, 50)] == [1, 2, 2, 2]


def test_no_failure_no_wait() -> None:
    assert RETRY.delay(0) == RETRY.delay(-3) == 0.0


def test_a_huge_count_does_not_overflow() -> None:
    assert RETRY.delay(10**9) == 300.0
    assert Backoff(1e-3, 1e300, factor=1e10).delay(10**6) == 1e300


@pytest.mark.parametrize(("first", "cap", "factor"), [(-1, 5, 2), (10, 5, 2), (1, 5, 0.5)])
def test_not_a_backoff(first: float, cap: float, factor: float) -> None:
    with pytest.raises(ValueError, match="not a backoff"):
        Backoff(first, cap, factor)


@given(
    first=st.floats(0, 1e4), extra=st.floats(0, 1e6), factor=st.floats(1, 10),
    n=st.integers(1, 10_000),
)  # fmt: skip
def test_never_shrinks_and_stays_within_first_and_cap(
    first: float, extra: float, factor: float, n: int
) -> None:
    policy = Backoff(first, first + extra, factor)
    assert first <= policy.delay(n) <= policy.delay(n + 1) <= first + extra


def test_the_git_poll_backs_off_from_its_interval() -> None:
    assert next_poll_delay(60.0, 0) == 60.0
    assert [next_poll_delay(60.0, n) for n in (1, 2, 3)] == [120.0, 240.0, RETRY_MAX]
    # an interval longer than the cap is kept: a failure never polls sooner
    assert [next_poll_delay(600.0, n) for n in (0, 1, 5)] == [600.0, 600.0, 600.0]
    # between the two: the cap, at once
    assert next_poll_delay(200.0, 1) == RETRY_MAX == backoff.RETRY.cap
