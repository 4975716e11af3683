"""Background loops that must outlive a database outage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.backoff import Backoff
from gateway.store.database import UNAVAILABLE_ERRORS


async def run_every(
    seconds: float,
    step: Callable[[], Awaitable[None]],
    what: str,
    log: logging.Logger,
    *,
    initial: float | None = None,
    maximum: float = 5.0,
) -> None:
    """Run `step` every `seconds` for as long as the process runs. An outage is logged at
    WARNING and retried with `Backoff` waits (from `initial`, default `seconds`); any other
    failure is logged and the loop goes on, since a dead background task would silently freeze
    what it keeps current."""
    backoff = Backoff(initial=seconds if initial is None else initial, maximum=maximum)
    while True:
        try:
            await step()
        except UNAVAILABLE_ERRORS as exc:
            wait = backoff.next()
            log.warning("could not %s: %r; retrying in %.1f s", what, exc, wait)
            await asyncio.sleep(wait)
            continue
        except Exception:
            log.exception("could not %s", what)
        else:
            backoff.reset()
        await asyncio.sleep(seconds)
