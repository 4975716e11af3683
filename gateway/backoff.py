"""Waiting between reconnection attempts of tasks that must outlive a database outage."""

from __future__ import annotations

from tenacity import AsyncRetrying, RetryCallState, wait_exponential, wait_random
from tenacity.wait import wait_base


def jittered(initial: float = 0.2, maximum: float = 5.0) -> wait_base:
    """tenacity's wait strategy behind `Backoff`, for `AsyncRetrying(wait=...)`: about
    `initial`, doubling up to `maximum`, each plus a random jitter of up to `initial`."""
    return wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial)


class Backoff:
    """Bounded, jittered exponential waits for a task that retries until it succeeds (tenacity's
    `wait_exponential` plus `wait_random`): about `initial`, doubling up to `maximum`, each plus
    a random jitter of up to `initial` so that many processes do not reconnect in step.
    `reset()` after a success, so that the next outage starts with short waits again."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0) -> None:
        self._wait = jittered(initial, maximum)
        self._state = RetryCallState(AsyncRetrying(), None, (), {})
        self._state.attempt_number = 0

    def next(self) -> float:
        """The seconds to wait before the next attempt (at most `maximum + initial`)."""
        self._state.attempt_number += 1
        return float(self._wait(self._state))

    def reset(self) -> None:
        self._state.attempt_number = 0
