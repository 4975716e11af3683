"""The token bucket, on a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.http.ratelimit import RateLimiter, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3.0, clock=clock)
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(0.5)  # one token takes 1/rate seconds
    clock.now += 0.5
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") == pytest.approx(0.5)
    clock.now += 100
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]  # capped at the burst
    assert limiter.acquire("k") > 0


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0, clock=Clock())
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    assert retry_after(0.01) == "1"
    assert retry_after(1.2) == "2"


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0, burst=1)


def test_granted_tokens_are_counted_per_key_and_refusals_are_not() -> None:
    limiter = RateLimiter(rate=1.0, burst=2.0, clock=Clock())
    for _ in range(5):
        limiter.acquire("a")
    limiter.acquire("b")
    assert limiter.spent == {"a": 2, "b": 1}


def test_what_others_spent_is_owed_up_to_a_burst_and_a_second() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=4.0, clock=clock)
    limiter.debit("k", 3.0)
    assert limiter.acquire("k") == 0.0  # 4 - 3 leaves one token
    assert limiter.acquire("k") == pytest.approx(0.5)
    limiter.debit("k", 1.0)  # an empty bucket still owes it: 1 token takes 1 s to repay
    assert limiter.acquire("k") == pytest.approx(1.0)
    limiter.debit("k", 100.0)  # owed at most burst + rate = 6 tokens
    assert limiter.acquire("k") == pytest.approx(3.5)
    clock.now += 3.5
    assert limiter.acquire("k") == 0.0
    assert limiter.spent == {"k": 2}  # debits are others' spending, not this process's
