"""The token bucket, on a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.ratelimit import RateLimiter, retry_after


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
