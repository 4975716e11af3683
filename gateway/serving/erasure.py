"""Erasure: forgetting a listener so that the log can no longer be linked to them.

The order matters. `ListenerForgotten` is appended first (with an event id derived from the
pseudonym, so a retried or concurrent forget is a duplicate, not a second event), and only then
is the mapping deleted: if the process dies in between, the mapping is still there and the next
forget finishes the job. The other way round, a crash would leave a pseudonym nobody can name
any more, with its projection rows kept forever.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from domain.events import ListenerForgotten, to_payload
from gateway.serving.listeners import Pseudonyms
from gateway.store.api import EventStore, NewEvent

FORGET_NAMESPACE = uuid.UUID("3f0b8c1e-5a7d-4e29-b6c4-8d1e2f3a4b5c")


def forgotten_event_id(pseudonym: str) -> uuid.UUID:
    """The one event id a pseudonym's `ListenerForgotten` ever has."""
    return uuid.uuid5(FORGET_NAMESPACE, pseudonym)


class Erasure:
    def __init__(self, store: EventStore, pseudonyms: Pseudonyms) -> None:
        self._store = store
        self._pseudonyms = pseudonyms

    async def forget(self, user_id: str) -> bool:
        """Forget `user_id`: record `ListenerForgotten` for its pseudonym, then delete the
        mapping. True if there was one; an unknown (or already forgotten) id changes nothing.
        The id's next request makes it a new listener with a new pseudonym."""
        pseudonym = await self._pseudonyms.lookup(user_id)
        if pseudonym is None:
            self._pseudonyms.evict(user_id)
            return False
        event = ListenerForgotten(pseudonym)
        await self._store.append(
            [
                NewEvent(
                    forgotten_event_id(pseudonym),
                    event.stream_id(),
                    event.TYPE,
                    event.SCHEMA_VERSION,
                    to_payload(event),
                )
            ]
        )
        await self._pseudonyms.delete(user_id, pseudonym)
        return True


def mention(value: Any, ids: Collection[str], path: str = "") -> str | None:
    """Where in a JSON value one of `ids` appears (e.g. `.device.owner`, `[2]`), or None. Used
    to keep listeners' own ids out of what is logged verbatim, where forgetting cannot reach.

    The rule (docs/decisions.md 64): an id appears, in any casing, where it stands as a token:
    a string or key equal to it, or containing it with no letter or digit right before or after
    it (`/users/alice/home`, `u=Alice&x`, `alice@example`); or a number equal to it (`42` for
    the listener `"42"`). An id inside a longer word or number is not a mention: a short id must
    not refuse innocent contexts ("al" in "always", "42" in "x420")."""
    return _mention(value, _matcher(ids), _numbers(ids), path)


def _matcher(ids: Collection[str]) -> re.Pattern[str] | None:
    words = sorted({i.casefold() for i in ids if i}, key=len, reverse=True)
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![^\W_])(?:{alternatives})(?![^\W_])")


def _numbers(ids: Collection[str]) -> set[float]:
    out = set()
    for i in ids:
        try:
            number = float(i)
        except ValueError:
            continue
        if math.isfinite(number):
            out.add(number)
    return out


def _mention(
    value: Any, matcher: re.Pattern[str] | None, numbers: set[float], path: str
) -> str | None:
    if isinstance(value, str):
        return path if matcher is not None and matcher.search(value.casefold()) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return path if value in numbers else None
    if isinstance(value, Mapping):
        for k, v in value.items():
            if matcher is not None and matcher.search(str(k).casefold()):
                return path  # the object holding it: a field naming the key would echo the id
            found = _mention(v, matcher, numbers, f"{path}.{k}")
            if found is not None:
                return found
    elif isinstance(value, Sequence):
        for i, v in enumerate(value):
            found = _mention(v, matcher, numbers, f"{path}[{i}]")
            if found is not None:
                return found
    return None
