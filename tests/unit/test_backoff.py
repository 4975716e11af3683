"""The reconnection waits of background tasks: growing, jittered, bounded, and reset."""

from __future__ import annotations

from gateway.backoff import Backoff


def test_waits_grow_to_a_bound_with_jitter_and_start_over_after_a_reset() -> None:
    backoff = Backoff(initial=0.1, maximum=2.0)
    waits = [backoff.next() for _ in range(12)]
    assert all(0.1 <= w <= 2.0 + 0.1 for w in waits), waits
    assert waits[0] < 0.5 < waits[5], waits
    assert all(w >= 2.0 for w in waits[6:]), waits
    assert len({round(w, 9) for w in waits[6:]}) > 1, "jittered, not in step"
    backoff.reset()
    assert backoff.next() < 0.5
