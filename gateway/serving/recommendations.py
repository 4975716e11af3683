"""Serving a slate: gather candidates, filter, score, draw with exact propensities, log durably.

Candidates come from the Annoy index (the listener's vector -> nearest items), from the caller in
rerank mode, and from an exploration pool: items added since the index was built, items whose
reward is still uncertain, and the best items by reward (all a listener with no history has).
The policy (`domain.ranking`) scores them from affinity and the reward posteriors, keeps the
slate diverse, and explores with probabilities it logs exactly in `RecommendationServed`.
"""

from __future__ import annotations

import asyncio
import gc
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np
from numpy.typing import NDArray

from domain.embeddings import fold_in
from domain.events import RecommendationDeferred, RecommendationServed, SlateEntry, to_payload
from domain.policy import seed_from
from domain.ranking import (
    EMPTY,
    Candidate,
    PolicyParams,
    Pool,
    RowIds,
    draw_blend_with_branch,
    draw_with_branch,
)
from domain.recency import blend, recency_vector
from domain.upcasting import decode
from gateway.index.holder import IndexHolder, LoadedIndex
from gateway.metrics import SLATES
from gateway.projections.definitions import listener_reads, q, recent_items
from gateway.projections.rewards import LiveVersions
from gateway.serving.catalog import Catalog
from gateway.serving.errors import IdempotencyKeyReused
from gateway.serving.experiments import Chosen, Experiments
from gateway.serving.items import KIND_CODES, ItemTable, string_hash, tiebreak, tiebreaks
from gateway.serving.listeners import Pseudonyms
from gateway.serving.requests import BlendIn, ItemKind, RecommendationIn, Surface, session_of
from gateway.serving.scores import ItemScores
from gateway.store.api import NO_STREAM, EventStore, NewEvent, WrongExpectedVersion

NO_INDEX = "none"
DISCOVER = "discover"
# The metrics' surface for group slates (a blend is logged under the surface it was asked for).
BLEND = "blend"
DISCOVER_NAMESPACE = uuid.UUID("9a6c2f5e-3b1d-4c8e-a0f7-6d2b9e4c1a35")
IDEMPOTENCY_NAMESPACE = uuid.UUID("3f0c8b2a-7d4e-4b19-9c61-2e5a8f7d0b43")
INDEX_CANDIDATES = 200  # searched for a listener the index has not seen
# Listener vectors whose median length stands in for a listener with only recent items.
SCALE_SAMPLE = 10_000
# Searches from turned listener vectors kept per process (~3.2 kB each: 200 rows and dots).
SEARCHES_KEPT = 4096
# The search_k of a vector turned by recent plays (joined by the profile's precomputed
# candidates): about a millisecond at a million items, against tens at the build's tuned bound.
RECENT_SEARCH_K = 20_000
__all__ = ["Recommender", "follow", "tiebreak"]

SURFACE_KINDS: dict[Surface, frozenset[str]] = {
    Surface.PODCASTS: frozenset({ItemKind.EPISODE, ItemKind.SHOW}),
    Surface.MUSIC: frozenset({ItemKind.TRACK, ItemKind.ALBUM, ItemKind.ARTIST, ItemKind.PLAYLIST}),
    Surface.PERSONALIZER: frozenset({ItemKind.ACTION}),
}
# What a request that names no kinds may be answered with, on a surface that does not restrict
# them: everything but Personalizer's actions, which are served only where asked for.
UNASKED_KINDS = frozenset(k.value for k in ItemKind) - {ItemKind.ACTION.value}
# Where a listener may be offered what they already heard: music is for replaying, and search
# and shelves rank what the caller asked for.
REPLAYS_ALLOWED = frozenset({Surface.MUSIC, Surface.SEARCH, Surface.SHELF, Surface.PERSONALIZER})


def _listed(items: Iterable[str] | None) -> list[str] | None:
    return None if items is None else list(items)


def allowed_kinds(surface: Surface, kinds: list[ItemKind]) -> frozenset[str]:
    """The kinds a request may be answered with."""
    by_surface = SURFACE_KINDS.get(surface)
    if not kinds:
        return UNASKED_KINDS if by_surface is None else by_surface
    wanted = frozenset(k.value for k in kinds)
    return wanted if by_surface is None else wanted & by_surface


def kinds_mask(kinds: frozenset[str] | None) -> NDArray[np.bool_] | None:
    """Which kind codes (gateway.serving.items.KIND_CODES) a request may be answered with."""
    if kinds is None:
        return None
    mask = np.zeros(len(KIND_CODES) + 1, dtype=bool)
    for kind in kinds:
        mask[KIND_CODES[kind]] = True
    return mask


def idempotent_id(api_key_id: str, idempotency_key: str) -> uuid.UUID:
    """The recommendation id of a request sent with an `Idempotency-Key`: the same for every
    retry, and scoped to the API key, so that two clients' keys can never collide."""
    return uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{api_key_id}\0{idempotency_key}")


class Recommender:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        catalog: Catalog,
        pseudonyms: Pseudonyms,
        clock: Callable[[], datetime],
        index: IndexHolder,
        versions: LiveVersions,
        params: PolicyParams | None = None,
        experiments: Experiments | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._catalog = catalog
        self._pseudonyms = pseudonyms
        self._clock = clock
        self._index = index
        self._versions = versions
        self.params = params or PolicyParams()
        self._scale: tuple[str, float] | None = None
        self._searches: OrderedDict[
            tuple[str, bool, bytes], tuple[NDArray[np.int64], NDArray[np.float64]]
        ] = OrderedDict()
        self._experiments = experiments

    async def _listener_reads(
        self, user: str, *, heard: bool, recent: bool
    ) -> tuple[set[str], list[tuple[str, float]] | None]:
        """`heard` and the listener's recent items (None when not asked for), in one read."""
        if not heard and not recent:
            return set(), None
        version = await self._versions.get("listeners")
        if version is None:
            return set(), None
        items = self.params.recency.items if recent else 0
        got, played = await listener_reads(
            self._pool, version.schema, user, heard=heard, recent=items
        )
        return got, played if recent else None

    async def listener_vector(self, index: LoadedIndex, user: str) -> np.ndarray | None:
        row = index.listener_row.get(user)
        if row is not None:
            vector: np.ndarray = index.listener_vectors[row]
            return vector
        # Not in the last fit: fold in from what they did since, if anything.
        version = await self._versions.get("listeners")
        if version is None:
            return None
        rows = await self._pool.fetch(
            f"SELECT item_id, weight::float8 FROM {q(version.schema)}.affinity WHERE listener = $1",
            user,
        )
        known = [(index.item_row[i], float(w)) for i, w in rows if i in index.item_row]
        if not known:
            return None
        return fold_in(
            index.item_vectors,
            np.array([k for k, _ in known], dtype=np.int64),
            np.array([w for _, w in known], dtype=np.float64),
        )

    async def recent_vector(
        self,
        index: LoadedIndex,
        user: str,
        session: list[str] | None,
        played: list[tuple[str, float]] | None = None,
    ) -> np.ndarray | None:
        """The recency vector (`domain.recency`) of what the listener played last: the request's
        session (latest first, each a play) if it has one, else the listeners projection's latest
        items, each signed by what the listener did with it last (a skip or dislike: against)."""
        recency = self.params.recency
        if not recency.enabled:
            return None
        if session is not None:
            played = [(i, 1.0) for i in session[: recency.items]]
        elif played is None:
            version = await self._versions.get("listeners")
            if version is None:
                return None
            played = await recent_items(self._pool, version.schema, user, recency.items)
        known = [(index.item_row[i], w) for i, w in played if i in index.item_row]
        if not known:
            return None
        return recency_vector(
            index.item_vectors,
            np.array([k for k, _ in known], dtype=np.int64),
            np.array([w for _, w in known], dtype=np.float64),
            recency,
        )

    def _vector_scale(self, index: LoadedIndex) -> float:
        """The typical listener vector's length in `index` (its median over a sample), for a
        listener who has only a recency vector; 1 for an index without listeners."""
        if self._scale is None or self._scale[0] != index.version:
            norms = np.linalg.norm(index.listener_vectors[:SCALE_SAMPLE], axis=1)
            norms = norms[norms > 0]
            self._scale = (index.version, float(np.median(norms)) if len(norms) else 1.0)
        return self._scale[1]

    async def _gather(
        self,
        user: str,
        surface: Surface,
        kinds_wanted: list[ItemKind],
        exclude: Iterable[str],
        caller: list[str] | None,
        rng: random.Random,
        *,
        replays: bool,
        session: list[str] | None = None,
    ) -> Pool:
        """The eligible, scored candidates for one listener, as arrays.

        Costs O(candidates), whatever the catalogue's size: candidates are the listener's
        precomputed ones (or, for a listener the index has not seen or whose recent items turn
        their vector, a bounded tree search from that vector), the caller's in rerank mode, and
        a sample of the exploration pools; they are filtered and scored by indexing the item
        table's arrays with their rows."""
        table = await self._catalog.table()
        index = table.index if isinstance(table.index, LoadedIndex) else None
        mask = kinds_mask(allowed_kinds(surface, kinds_wanted))
        excluded = set(exclude)
        # What was heard and what was played last come from the same projection: one read.
        want_recent = index is not None and self.params.recency.enabled and session is None
        heard, played = await self._listener_reads(user, heard=not replays, recent=want_recent)
        if not replays:
            excluded |= heard
            # Just played, and perhaps not yet folded into the history.
            excluded |= set(session or ())
        vector = None
        searched: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        dots: NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        recent = None if index is None else await self.recent_vector(index, user, session, played)
        if caller is not None:
            rows = table.rows_of(caller)
            if index is not None:
                vector = await self.listener_vector(index, user)
                vector = self._blend(index, vector, recent)
        else:
            if index is not None:
                known = index.listener_candidates(user)
                if known is not None and len(known[0]) and recent is None:
                    searched, dots = known
                    vector = index.listener_vectors[index.listener_row[user]]
                else:
                    profiled = known is not None and len(known[0]) > 0
                    if profiled:
                        vector = index.listener_vectors[index.listener_row[user]]
                    else:
                        vector = await self.listener_vector(index, user)
                    # The precomputed candidates are the profile's nearest; a vector turned
                    # towards the recent items has nearest items of its own.
                    vector = self._blend(index, vector, recent)
                    if vector is not None:
                        searched, dots = self._nearest(index, vector, turned=recent is not None)
                    if vector is not None and known is not None and profiled and recent is not None:
                        # A turned vector's search is bounded (`RECENT_SEARCH_K`): the profile's
                        # precomputed candidates join it, scored against the turned vector.
                        rows_known = known[0]
                        searched = np.concatenate([searched, rows_known])
                        dots = np.concatenate([dots, index.item_vectors[rows_known] @ vector])
            rows = np.concatenate([table.from_index[searched], table.explore(rng)])
        if len(rows) == 0:
            return EMPTY
        # The first of each row wins, in order (a searched row keeps its dot product).
        _, first = np.unique(rows, return_index=True)
        order = np.sort(first)
        rows = rows[order]
        keep = rows >= 0
        safe = np.where(keep, rows, 0)
        keep &= table.live[safe]
        if mask is not None:
            keep &= mask[table.kind[safe]]
        if excluded:
            keep &= ~np.isin(rows, table.rows_of(excluded))
        rows, order = rows[keep], order[keep]
        affinity = np.zeros(len(rows), dtype=np.float64)
        if vector is not None and index is not None and len(rows):
            # Searched rows come with their dot product; the others (exploration, the caller's)
            # are read from the item vectors, one scattered row each, so only those.
            from_search = order < len(searched)
            affinity[from_search] = dots[order[from_search]]
            at = table.index_row[rows]
            needed = (at >= 0) & ~from_search
            affinity[needed] = index.item_vectors[at[needed]] @ vector
        return Pool(
            RowIds(table.ids, rows),
            table.group[rows],
            affinity,
            table.reward_mean[rows],
            table.reward_sd[rows],
            table.long_term[rows],
            tiebreaks(table.hash[rows], string_hash(user)),
        )

    def _nearest(
        self, index: LoadedIndex, vector: np.ndarray, *, turned: bool = False
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """`index.nearest_rows(vector, INDEX_CANDIDATES)`, remembered by the vector's bytes.

        A listener asks for several slates between two plays (home, a refresh, another surface)
        and each would search the tree again from the same vector, which at a large catalogue
        costs milliseconds (some 3 ms at 100,000 items; docs/decisions.md 59). Keyed by the
        vector itself, an entry can never be stale: a new outcome that moves the vector is a new
        key, in every process, and the search is a pure function of the index version and the
        vector."""
        key = (index.version, turned, vector.tobytes())
        found = self._searches.get(key)
        if found is not None:
            self._searches.move_to_end(key)
            return found
        # A vector turned by recent plays is new after every play, so its search is paid on
        # most requests: bounded, where the build's own search_k (tuned for recall 0.98 on a
        # listener's first request) reached 480,000 at a million items.
        found = index.nearest_rows(
            vector, INDEX_CANDIDATES, search_k=RECENT_SEARCH_K if turned else None
        )
        for array in found:
            array.flags.writeable = False  # shared by every request that hits the entry
        self._searches[key] = found
        if len(self._searches) > SEARCHES_KEPT:
            self._searches.popitem(last=False)
        return found

    def _blend(
        self, index: LoadedIndex, long_term: np.ndarray | None, recent: np.ndarray | None
    ) -> np.ndarray | None:
        if recent is None:
            return long_term
        return blend(long_term, recent, self.params.recency, self._vector_scale(index))

    async def recommend(
        self,
        req: RecommendationIn,
        *,
        recommendation_id: uuid.UUID | None = None,
        defer: bool = False,
    ) -> RecommendationServed:
        """Draw and log a slate. With a `recommendation_id` (from an `Idempotency-Key`) a slate
        already logged under it is returned instead, if it answered the same request. `defer`
        logs it as `RecommendationDeferred` (drawn, not shown) for Personalizer's deferred
        activation, which appends the `RecommendationServed` later."""
        user = await self._pseudonyms.one(req.user_id)

        def same(e: RecommendationServed) -> bool:
            return (
                e.user == user
                and not e.members
                and e.surface == req.surface.value
                and e.n == req.n
                and e.context == req.context
                and _listed(e.candidates) == _listed(req.candidates)
                and list(e.exclude) == req.exclude
                and list(e.kinds) == [k.value for k in req.kinds]
            )

        # Only Personalizer's surface defers: other keyed requests need not look for it.
        deferrable = req.surface is Surface.PERSONALIZER
        if recommendation_id is not None:
            replayed = await self._replayed(recommendation_id, same, deferrable)
            if replayed is not None:
                return replayed
        rid = recommendation_id or uuid.uuid4()
        rng = seed_from(rid.int)
        replays = req.surface in REPLAYS_ALLOWED or req.candidates is not None
        candidates = await self._gather(
            user,
            req.surface,
            req.kinds,
            req.exclude,
            req.candidates,
            rng,
            replays=replays,
            session=session_of(req.context),
        )
        # A running experiment covering the surface draws the slate with the listener's arm's
        # policy, and the slate logs that policy's propensities: exact within the arm.
        chosen = None
        if self._experiments is not None:
            chosen = await self._experiments.arm_for(user, req.surface.value)
        params = chosen.arm.policy() if chosen is not None else self.params
        slate, branch = draw_with_branch(candidates, req.n, params, rng)
        SLATES.labels(req.surface.value, branch).inc()
        return await self._log_once(
            rid,
            same,
            user,
            req.surface.value,
            slate,
            context=req.context,
            n=req.n,
            candidates=req.candidates,
            exclude=req.exclude,
            kinds=req.kinds,
            keyed=recommendation_id is not None,
            deferrable=deferrable,
            deferred=defer,
            params=params,
            chosen=chosen,
        )

    async def blend(
        self, req: BlendIn, *, recommendation_id: uuid.UUID | None = None
    ) -> RecommendationServed:
        """One slate for a group: each member's own candidates, members taking turns."""
        pseudonyms = await self._pseudonyms.resolve(req.user_ids)
        members = [pseudonyms[u] for u in req.user_ids]

        def same(e: RecommendationServed) -> bool:
            return (
                list(e.members) == members
                and e.surface == req.surface.value
                and e.n == req.n
                and e.context == req.context
                and list(e.exclude) == req.exclude
                and list(e.kinds) == [k.value for k in req.kinds]
            )

        if recommendation_id is not None:
            replayed = await self._replayed(recommendation_id, same)
            if replayed is not None:
                return replayed
        rid = recommendation_id or uuid.uuid4()
        rng = seed_from(rid.int)
        replays = req.surface in REPLAYS_ALLOWED
        lists = [
            await self._gather(m, req.surface, req.kinds, req.exclude, None, rng, replays=replays)
            for m in members
        ]
        slate, branch = draw_blend_with_branch(lists, req.n, self.params, rng)
        SLATES.labels(BLEND, branch).inc()
        return await self._log_once(
            rid,
            same,
            members[0],
            req.surface.value,
            slate,
            context=req.context,
            n=req.n,
            exclude=req.exclude,
            kinds=req.kinds,
            members=members,
            keyed=recommendation_id is not None,
        )

    async def _replayed(
        self,
        recommendation_id: uuid.UUID,
        same: Callable[[RecommendationServed], bool],
        deferrable: bool = False,
    ) -> RecommendationServed | None:
        logged = await self._logged(recommendation_id, deferrable)
        if logged is not None and not same(logged):
            raise IdempotencyKeyReused()
        return logged

    async def _log_once(
        self,
        recommendation_id: uuid.UUID,
        same: Callable[[RecommendationServed], bool],
        user: str,
        surface: str,
        slate: tuple[SlateEntry, ...],
        *,
        keyed: bool,
        deferrable: bool = False,
        **request: Any,
    ) -> RecommendationServed:
        try:
            return await self._log(recommendation_id, user, surface, slate, **request)
        except WrongExpectedVersion:
            if not keyed:
                raise
            # A retry of the same keyed request was logged first; its slate is the answer.
            replayed = await self._replayed(recommendation_id, same, deferrable)
            assert replayed is not None
            return replayed

    async def discover(self, user_id: str, n: int) -> RecommendationServed:
        """Items new to the listener, the same all ISO week: the week's first request draws and
        logs the slate under an id derived from (listener, week, n); later ones read it back."""
        user = await self._pseudonyms.one(user_id)
        year, week, _ = self._clock().isocalendar()
        recommendation_id = uuid.uuid5(DISCOVER_NAMESPACE, f"{user}/{year}-W{week:02d}/{n}")
        logged = await self._logged(recommendation_id)
        if logged is not None:
            return logged
        rng = seed_from(recommendation_id.int)
        candidates = await self._gather(user, Surface.HOME, [], [], None, rng, replays=False)
        slate, branch = draw_with_branch(candidates, n, self.params, rng)
        SLATES.labels(DISCOVER, branch).inc()
        try:
            return await self._log(recommendation_id, user, DISCOVER, slate, n=n)
        except WrongExpectedVersion:
            # A concurrent first request of the week won; its slate is the week's.
            logged = await self._logged(recommendation_id)
            assert logged is not None
            return logged

    async def candidates_for(self, served: RecommendationServed) -> list[list[Candidate]]:
        """The eligible, scored candidates a logged request would get now (one list per listener:
        several for a blend), gathered as `recommend`, `blend` and `discover` gather them, with
        the generator seeded by the logged recommendation id. Today's catalogue, index, scores
        and listening history are used: what the request saw then is not kept."""
        rng = seed_from(served.recommendation_id.int)
        if served.surface == DISCOVER:
            pool = await self._gather(served.user, Surface.HOME, [], [], None, rng, replays=False)
            return [pool.candidates()]
        surface = Surface(served.surface)
        kinds = [ItemKind(k) for k in served.kinds]
        caller = list(served.candidates) if served.candidates is not None else None
        replays = surface in REPLAYS_ALLOWED or caller is not None
        members = list(served.members) or [served.user]
        # A blend's context is not read for a session (`recommend` alone takes one).
        session = None if served.members else session_of(served.context)
        return [
            (
                await self._gather(
                    m,
                    surface,
                    kinds,
                    served.exclude,
                    caller,
                    rng,
                    replays=replays,
                    session=session,
                )
            ).candidates()
            for m in members
        ]

    async def _logged(
        self, recommendation_id: uuid.UUID, deferrable: bool = False
    ) -> RecommendationServed | None:
        """The slate logged under this id; with `deferrable`, also one drawn and deferred."""
        return await logged_slate(self._store, recommendation_id, deferrable)

    def similar(self, item_id: str, n: int) -> tuple[list[tuple[str, float]], str] | None:
        """The items nearest to `item_id` in the current index; None if it is not indexed."""
        index = self._index.current
        if index is None or item_id not in index.item_row:
            return None
        vector = index.item_vectors[index.item_row[item_id]]
        near = index.nearest(vector, n + 1)
        return [(i, d) for i, d in near if i != item_id][:n], index.version

    async def _log(
        self,
        recommendation_id: uuid.UUID,
        user: str,
        surface: str,
        slate: tuple[SlateEntry, ...],
        *,
        n: int,
        context: dict[str, Any] | None = None,
        candidates: list[str] | None = None,
        exclude: list[str] | None = None,
        kinds: list[ItemKind] | None = None,
        members: list[str] | None = None,
        deferred: bool = False,
        params: PolicyParams | None = None,
        chosen: Chosen | None = None,
    ) -> RecommendationServed:
        index = self._index.current
        policy = params or self.params
        event = RecommendationServed(
            recommendation_id=recommendation_id,
            user=user,
            surface=surface,
            context=dict(context or {}),
            slate=slate,
            policy_name=policy.name,
            policy_version=policy.logged_version,
            index_version=index.version if index is not None else NO_INDEX,
            requested_at=self._clock(),
            candidates=tuple(candidates) if candidates is not None else None,
            exclude=tuple(exclude or ()),
            kinds=tuple(k.value for k in kinds or ()),
            n=n,
            members=tuple(members or ()),
            experiment=chosen.experiment.name if chosen is not None else None,
            arm=chosen.arm.name if chosen is not None else None,
        )
        logged: RecommendationServed | RecommendationDeferred = (
            RecommendationDeferred(event) if deferred else event
        )
        # The listener's first slate in an experiment carries their assignment, in the same
        # commit: an assignment is never logged without the exposure that caused it.
        assignment = [chosen.assignment] if chosen is not None and chosen.assignment else []
        await self._store.append(
            [
                *assignment,
                NewEvent(
                    # Its own event id: a client reusing a recommendation id as an outcome's
                    # event id must not be answered "duplicate".
                    uuid.uuid4(),
                    logged.stream_id(),
                    logged.TYPE,
                    logged.SCHEMA_VERSION,
                    to_payload(logged),
                ),
            ],
            expected={logged.stream_id(): NO_STREAM},
        )
        if chosen is not None and self._experiments is not None:
            self._experiments.appended(chosen)
        return event


async def logged_slate(
    store: EventStore, recommendation_id: uuid.UUID, deferred_too: bool = False
) -> RecommendationServed | None:
    """The slate served under `recommendation_id`; with `deferred_too`, else the one drawn and
    deferred under it (not yet activated), or None."""
    streams = [f"recommendation-{recommendation_id}"]
    if deferred_too:
        streams.append(f"deferred-{recommendation_id}")
    for stream in streams:
        events = await store.read_stream(stream)
        if events:
            e = events[0]
            event = decode(e.event_type, e.schema_version, e.payload)
            if isinstance(event, RecommendationDeferred):
                return event.served
            assert isinstance(event, RecommendationServed)
            return event
    return None


def follow(table: ItemTable, index: IndexHolder, scores: ItemScores) -> None:
    """Keep `table` mapped to the current index and scored with the current scores: the hooks
    run in the background tasks that swap indexes and refresh scores, never in a request."""

    def loaded(current: LoadedIndex) -> None:
        table.set_index(current)
        table.refresh_pools()
        settle_heap()

    async def refreshed(s: ItemScores) -> None:
        arrays = await asyncio.to_thread(table.score_arrays, s.scores, s.unseen)
        table.install_scores(arrays)
        await asyncio.to_thread(table.refresh_pools)

    index.on_load.append(loaded)
    scores.on_refresh.append(refreshed)
    table.set_index(index.current)
    if scores.refreshed_at is not None:
        table.set_scores(scores.scores, scores.unseen)
    table.refresh_pools()


def settle_heap() -> None:
    """Move every object alive now out of the garbage collector's sight (`gc.freeze`).

    A loaded index and the item table are millions of long-lived objects (ids, id maps); the
    collector's full passes walk all of them, and at a million items one pass held the event
    loop for ~0.5 s, which was a request's p99. They are freed by reference counting when an
    index is replaced; only cycles among them would be missed, and they have none."""
    gc.freeze()
