"""Target policies for off-policy evaluation: what a policy would have served at every logged
(slate, position). `uniform`, a CSV of probabilities, and Segue's policy re-run (`current`)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from uuid import UUID

import asyncpg

from domain.events import RecommendationServed
from domain.ope import (
    policy_marginals,
)
from domain.ranking import Candidate, PolicyParams, blend_greedy, greedy
from gateway.analysis.evaluation_log import EvaluationError
from gateway.index.holder import IndexHolder
from gateway.serving.graph import ServingParams, build_serving
from gateway.serving.recommendations import Recommender, allowed_kinds
from gateway.serving.requests import ItemKind, Surface
from gateway.store.postgres import PostgresEventStore

TOLERANCE = 1e-6  # how far a CSV distribution's total may be from 1


# At one position: the items carrying uniform mass (or None), that mass per item, point masses.
PositionTarget = tuple[tuple[str, ...] | None, float, dict[str, float]]
EMPTY: PositionTarget = (None, 0.0, {})


@dataclass(frozen=True, slots=True)
class SlateTarget:
    """A target at every position of one logged request, and the slate it would most likely
    have served (None when no slate is likelier than another, as under `uniform`)."""

    positions: Sequence[PositionTarget]
    top: list[str] | None

    def at(self, position: int) -> PositionTarget:
        return self.positions[position] if position < len(self.positions) else EMPTY


class Target(Protocol):
    name: str

    async def slate(self, served: RecommendationServed) -> SlateTarget: ...


def _most_likely(dist: dict[str, float]) -> str | None:
    if not dist:
        return None
    return min(dist, key=lambda item: (-dist[item], item))


class UniformTarget:
    """A uniform slate of what the request allows in today's live catalogue."""

    name = "uniform"

    def __init__(self, live: dict[str, str]) -> None:
        self._live = live  # item -> kind
        self._supports: dict[tuple[object, ...], tuple[str, ...]] = {}

    @staticmethod
    async def load(conn: asyncpg.Connection) -> UniformTarget:
        rows = await conn.fetch("SELECT item_id, kind FROM catalog_items WHERE NOT retired")
        return UniformTarget({r[0]: r[1] for r in rows})

    def eligible(self, served: RecommendationServed) -> tuple[str, ...]:
        key = (served.surface, served.kinds, served.exclude, served.candidates)
        hit = self._supports.get(key)
        if hit is not None:
            return hit
        try:
            surface = Surface(served.surface)
            kinds = allowed_kinds(surface, [ItemKind(k) for k in served.kinds])
        except ValueError:
            kinds = None  # a discovery set, or a surface this code no longer has: any kind
        excluded = set(served.exclude)
        pool = served.candidates if served.candidates is not None else self._live
        items = tuple(
            i
            for i in dict.fromkeys(pool)
            if i in self._live and i not in excluded and (kinds is None or self._live[i] in kinds)
        )
        self._supports[key] = items
        return items

    async def slate(self, served: RecommendationServed) -> SlateTarget:
        items = self.eligible(served)
        if not items:
            return SlateTarget([], None)
        at: PositionTarget = (items, 1.0 / len(items), {})
        return SlateTarget([at] * min(served.n, len(items)), None)


class CsvTarget:
    """A target read from CSV: per position for every request, or per logged slate."""

    def __init__(
        self,
        name: str,
        per_position: dict[int, dict[str, float]] | None,
        per_slate: dict[UUID, dict[int, dict[str, float]]] | None,
    ) -> None:
        self.name = name
        self._per_position = per_position
        self._per_slate = per_slate

    @staticmethod
    def read(path: Path) -> CsvTarget:
        """Parse and check the file; raises EvaluationError naming the line at fault."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise EvaluationError(f"cannot read {path}: {exc}") from None
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in reader.fieldnames or []]
        by_slate = header == ["recommendation_id", "item_id", "position", "probability"]
        if not by_slate and header != ["item_id", "position", "probability"]:
            raise EvaluationError(
                f"{path}: the header must be item_id,position,probability or "
                "recommendation_id,item_id,position,probability"
            )
        dists: dict[tuple[UUID | None, int], dict[str, float]] = defaultdict(dict)
        for line, row in enumerate(reader, start=2):
            try:
                values = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
                rec = UUID(values["recommendation_id"]) if by_slate else None
                item = values["item_id"]
                position = int(values["position"])
                probability = float(values["probability"])
            except (ValueError, KeyError, AttributeError) as exc:
                raise EvaluationError(f"{path}:{line}: {exc}") from None
            if not item:
                raise EvaluationError(f"{path}:{line}: empty item_id")
            if position < 0:
                raise EvaluationError(f"{path}:{line}: positions are 0-based, not {position}")
            if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
                raise EvaluationError(f"{path}:{line}: probability {probability} not in [0, 1]")
            dist = dists[(rec, position)]
            if item in dist:
                raise EvaluationError(f"{path}:{line}: {item} at position {position} repeated")
            dist[item] = probability
        if not dists:
            raise EvaluationError(f"{path}: no rows")
        for (rec, position), dist in dists.items():
            total = sum(dist.values())
            if abs(total - 1.0) > TOLERANCE:
                where = f"recommendation {rec}, " if rec is not None else ""
                raise EvaluationError(
                    f"{path}: the probabilities of {where}position {position} add up to "
                    f"{total:.6g}, not 1"
                )
        if by_slate:
            per_slate: dict[UUID, dict[int, dict[str, float]]] = defaultdict(dict)
            for (rec, k), d in dists.items():
                assert rec is not None
                per_slate[rec][k] = d
            return CsvTarget(str(path), None, dict(per_slate))
        return CsvTarget(str(path), {k: d for (_, k), d in dists.items()}, None)

    async def slate(self, served: RecommendationServed) -> SlateTarget:
        logged = {s.position for s in served.slate}
        if self._per_position is not None:
            given = self._per_position
        else:
            assert self._per_slate is not None
            given = self._per_slate.get(served.recommendation_id, {})
        missing = sorted(logged - set(given))
        if missing:
            rec = served.recommendation_id
            whose = "" if self._per_slate is None else f" for recommendation {rec}"
            raise EvaluationError(
                f"{self.name} gives no distribution{whose} at position {missing[0]}, "
                "which the log served"
            )
        size = max(given, default=-1) + 1
        positions = [(None, 0.0, given.get(k, {})) for k in range(size)]
        top = [_most_likely(d) for _, _, d in positions]
        return SlateTarget(positions, [t for t in top if t is not None])


class CurrentTarget:
    """Segue's policy with `params`, re-run on each logged request."""

    def __init__(self, recommender: Recommender, params: PolicyParams) -> None:
        self.name = f"current ({params.name} {params.version})"
        self._recommender = recommender
        self._params = params

    async def slate(self, served: RecommendationServed) -> SlateTarget:
        try:
            lists = await self._recommender.candidates_for(served)
        except ValueError as exc:  # a surface or kind this code no longer knows
            raise EvaluationError(
                f"cannot re-run recommendation {served.recommendation_id}: {exc}"
            ) from None
        pool: dict[str, Candidate] = {}
        for candidates in lists:
            for c in candidates:
                pool.setdefault(c.item_id, c)
        if not pool:
            return SlateTarget([], [])
        chosen = (
            blend_greedy(lists, served.n, self._params)
            if served.members
            else greedy(list(pool.values()), served.n, self._params)
        )
        top = [c.item_id for c, _ in chosen]
        support = tuple(pool)
        positions: list[PositionTarget] = []
        for k in range(len(top)):
            density, extras = policy_marginals(top, len(pool), k, self._params)
            positions.append((support, density, extras))
        return SlateTarget(positions, top)


async def current_target(pool: asyncpg.Pool, index_root: Path, params: PolicyParams) -> Target:
    """Segue's policy as it would rank now: today's index, item scores and catalogue."""
    store = PostgresEventStore(pool)  # never started: re-running a request appends nothing
    index = IndexHolder(index_root)
    await index.refresh()
    serving = build_serving(
        pool,
        store,
        index,
        lambda: datetime.now(UTC),
        ServingParams(policy=params, catalog_cache_seconds=3600.0),
    )
    await serving.scores.refresh()
    await serving.catalog.catch_up()
    serving.catalog.items.refresh_pools()
    recommender = serving.recommender
    return CurrentTarget(recommender, params)
