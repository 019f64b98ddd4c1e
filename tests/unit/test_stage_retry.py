"""Retries: which failures may be tried again, and the budget that keeps retries from multiplying an outage."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from glassmesh.proxy.stages.retry import RetryBudget, RetryPolicy


def test_what_may_be_retried() -> None:
    r = RetryPolicy(3, [502, 503], True)
    assert r.may_retry(b"GET", 503, False, False)
    assert not r.may_retry(b"GET", 500, False, False)  # not listed
    assert not r.may_retry(b"POST", 503, False, False)  # the app may have acted on it
    assert not r.may_retry(b"PUT", 503, False, True)  # its body went out and is not kept
    assert r.may_retry(b"POST", 0, True, True)  # a connect failure sent nothing: any method
    assert not RetryPolicy(2, [], False).may_retry(b"GET", 0, True, False)
    assert r.attempts == 3


def test_an_outage_gets_retries_of_a_fifth_plus_ten_a_second() -> None:
    b = RetryBudget(20.0, 10)
    granted = 0
    now = 0.0
    for _ in range(60 * 100):  # 60 s at 100 requests a second, every one failing and wanting a retry
        now += 0.01
        b.request(now)
        granted += b.try_spend(now)
    # Linkerd's default: 20% of 6,000 plus 10/s (100 at once, then the window's worth).
    assert 1200 <= granted <= 1200 + 10 * 70, granted
    assert b.refused == 6000 - granted and b.spent == granted


def test_quiet_times_still_allow_the_floor_and_new_parameters_apply_at_once() -> None:
    b = RetryBudget(0.0, 2)
    assert sum(b.try_spend(5.0) for _ in range(30)) == 20  # 2/s over the 10 s window
    assert not b.try_spend(14.5)
    assert b.try_spend(16.2)  # the first retries have left the window
    b.set(0.0, 0)
    assert not b.try_spend(100.0)


events = st.lists(st.tuples(st.floats(0.0, 3.0), st.booleans()), max_size=400)


@settings(max_examples=300, deadline=None)
@given(percent=st.floats(0.0, 100.0), floor=st.integers(0, 5), steps=events)
def test_every_ten_second_window_ending_at_a_retry_stays_within_the_budget(
        percent: float, floor: int, steps: list[tuple[float, bool]]) -> None:
    b = RetryBudget(percent, floor)
    now = 1000.0
    requests: list[float] = []
    retries: list[float] = []
    for dt, is_retry in steps:
        now += dt
        if not is_retry:
            b.request(now)
            requests.append(now)
        elif b.try_spend(now):
            retries.append(now)
            in_window = sum(1 for t in retries if t > now - 10.0)
            asked = sum(1 for t in requests if t > now - 10.0)
            assert in_window <= asked * percent / 100.0 + floor * 10 + 1e-9
