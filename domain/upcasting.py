"""Upcasters: old payloads in, current payloads out, so readers only ever see the current shape.

An upcaster is registered for (event type, version) and turns a payload of that version into the
next one; `upcast` chains them. Stored events are never rewritten: the log keeps what was written.
"""

from __future__ import annotations

from collections.abc import Callable

from domain.events import EVENT_TYPES, JSON, DomainEvent, RecommendationServed, from_current_payload

Upcaster = Callable[[JSON], JSON]

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


class UnsupportedSchemaVersion(ValueError):
    pass


def upcast(event_type: str, schema_version: int, payload: JSON) -> JSON:
    """`payload` of `event_type` at `schema_version`, lifted to the type's current version."""
    current = EVENT_TYPES[event_type].SCHEMA_VERSION
    if schema_version > current:
        raise UnsupportedSchemaVersion(
            f"{event_type} v{schema_version} is newer than this code (v{current})"
        )
    version = schema_version
    while version < current:
        step = _UPCASTERS.get((event_type, version))
        if step is None:
            raise UnsupportedSchemaVersion(f"no upcaster for {event_type} v{version}")
        payload = step(payload)
        version += 1
    return payload


def decode(event_type: str, schema_version: int, payload: JSON) -> DomainEvent:
    """A stored event of any known version as a current domain event."""
    return from_current_payload(event_type, upcast(event_type, schema_version, payload))


@upcaster(RecommendationServed.TYPE, 1)
def _recommendation_served_v1(payload: JSON) -> JSON:
    # v1 kept the policy as two flat fields and did not keep the request, so a v1 slate can be
    # evaluated but not re-run: the request is reconstructed as "n = slate size, no candidates".
    out = {k: v for k, v in payload.items() if k not in ("policy_name", "policy_version")}
    out["policy"] = {"name": payload["policy_name"], "version": payload["policy_version"]}
    out["request"] = {"n": len(payload["slate"]), "candidates": None, "exclude": [], "kinds": []}
    return out


@upcaster(RecommendationServed.TYPE, 2)
def _recommendation_served_v2(payload: JSON) -> JSON:
    # v3 added blends: a slate served to several listeners lists them; before, there were none.
    return {**payload, "members": []}


@upcaster(RecommendationServed.TYPE, 3)
def _recommendation_served_v3(payload: JSON) -> JSON:
    # v4 added the experiment and arm a slate was drawn for; before experiments there were none.
    return {**payload, "experiment": None}
