"""Serving a slate: pick eligible items, draw a slate with exact propensities, log it durably.

Until the ranking policy lands, the slate is drawn uniformly from the eligible live catalogue;
the logged `RecommendationServed` event is already complete, so these slates can be used to
evaluate later policies offline.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

from domain.events import RecommendationServed, to_payload
from domain.policy import UNIFORM, seed_from, uniform_slate
from gateway.catalog import Catalog
from gateway.listeners import Pseudonyms
from gateway.schemas import ItemKind, RecommendationIn, Surface
from gateway.store_api import NO_STREAM, EventStore, NewEvent

NO_INDEX = "none"

SURFACE_KINDS: dict[Surface, frozenset[str]] = {
    Surface.PODCASTS: frozenset({ItemKind.EPISODE, ItemKind.SHOW}),
    Surface.MUSIC: frozenset({ItemKind.TRACK, ItemKind.ALBUM, ItemKind.ARTIST, ItemKind.PLAYLIST}),
}


def allowed_kinds(surface: Surface, kinds: list[ItemKind]) -> frozenset[str] | None:
    """The kinds a request may be answered with; None means any."""
    wanted = frozenset(k.value for k in kinds) if kinds else None
    by_surface = SURFACE_KINDS.get(surface)
    if wanted is None:
        return by_surface
    return wanted if by_surface is None else wanted & by_surface


class Recommender:
    def __init__(
        self,
        store: EventStore,
        catalog: Catalog,
        pseudonyms: Pseudonyms,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._pseudonyms = pseudonyms
        self._clock = clock

    async def recommend(self, req: RecommendationIn) -> RecommendationServed:
        recommendation_id = uuid.uuid4()
        user = await self._pseudonyms.one(req.user_id)
        live = await self._catalog.live()
        kinds = allowed_kinds(req.surface, req.kinds)
        pool = req.candidates if req.candidates is not None else list(live)
        excluded = set(req.exclude)
        eligible = [
            i
            for i in pool
            if i in live and i not in excluded and (kinds is None or live[i] in kinds)
        ]
        slate = uniform_slate(eligible, req.n, seed_from(recommendation_id.int))
        event = RecommendationServed(
            recommendation_id=recommendation_id,
            user=user,
            surface=req.surface.value,
            context=dict(req.context),
            slate=slate,
            policy_name=UNIFORM.name,
            policy_version=UNIFORM.version,
            index_version=NO_INDEX,
            requested_at=self._clock(),
            candidates=tuple(req.candidates) if req.candidates is not None else None,
            exclude=tuple(req.exclude),
            kinds=tuple(k.value for k in req.kinds),
            n=req.n,
        )
        await self._store.append(
            [
                NewEvent(
                    # Its own event id: a client reusing a recommendation id as an outcome's
                    # event id must not be answered "duplicate".
                    uuid.uuid4(),
                    event.stream_id(),
                    event.TYPE,
                    event.SCHEMA_VERSION,
                    to_payload(event),
                )
            ],
            expected={event.stream_id(): NO_STREAM},
        )
        return event
