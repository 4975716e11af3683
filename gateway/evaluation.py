"""Off-policy evaluation of the log: read the served slates and their rewards, describe a target
policy at every logged (slate, position), and hand both to `domain.ope`.

The reward of a served position is its reward definition's weighted sum of the outcomes
attributed to that (recommendation, item), found by running the rewards projection's own fold
(`domain.reward_fold`) over the log, so attribution here is exactly the projection's. An outcome
kind as the reward is the definition that weighs that kind 1 and every other 0, with the live
definition's windows.

Targets:
- `uniform`: a uniform slate of the items the request allows in today's catalogue (its kinds and
  surface, less its exclusions; in rerank mode, the caller's candidates that are still live).
  Listening history is not replayed, so items a `home` listener had already heard count.
- `current`: Segue's policy re-run on each logged request (`Recommender.candidates_for`) with
  today's catalogue, index, item scores and listening history, and the given parameters; its
  per-position probabilities are the exploring policy's exact marginals.
- a CSV of `item_id,position,probability` (one distribution per position, for every request) or
  `recommendation_id,item_id,position,probability` (one per logged slate and position).
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Protocol
from uuid import UUID

import asyncpg
import numpy as np
import orjson

from domain.events import OutcomeKind, RecommendationServed
from domain.ope import (
    Estimate,
    LoggedRounds,
    OpeConfig,
    TargetBuilder,
    TargetPolicy,
    evaluate,
    evaluate_difference,
    on_policy,
    policy_marginals,
)
from domain.ranking import Candidate, PolicyParams, blend_greedy, greedy
from domain.reward_fold import RewardChanges, RewardState, fold
from domain.rewards import DEFAULT, RewardDefinition
from domain.upcasting import decode
from gateway.catalog import Catalog
from gateway.database import create_pool
from gateway.event_store import PostgresEventStore
from gateway.indexes import IndexHolder
from gateway.listeners import Pseudonyms
from gateway.projector import live_version, load_definition
from gateway.recommendations import Recommender, allowed_kinds
from gateway.rewards_reader import LiveVersions
from gateway.schemas import ItemKind, Surface
from gateway.scores import ItemScores

Progress = Callable[[int, int], None]  # (events read so far, events in all)
TOLERANCE = 1e-6  # how far a CSV distribution's total may be from 1


class EvaluationError(ValueError):
    """Input that cannot be evaluated; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Filters:
    """Which slates to evaluate: by surface and by the time they were served ([since, until))."""

    surface: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def describe(self) -> str:
        parts = [
            f"surface {self.surface}" if self.surface else "",
            f"since {self.since.isoformat()}" if self.since else "",
            f"until {self.until.isoformat()}" if self.until else "",
        ]
        return ", ".join(p for p in parts if p) or "(the log holds none)"

    def keeps(self, e: RecommendationServed) -> bool:
        if self.surface is not None and e.surface != self.surface:
            return False
        if self.since is not None and e.requested_at < self.since:
            return False
        return self.until is None or e.requested_at < self.until


@dataclass(frozen=True, slots=True)
class LoggedSlate:
    event: RecommendationServed
    rewards: tuple[float, ...]  # one per slate entry, in slate order


# --- rewards ----------------------------------------------------------------------------------


async def reward_definition(conn: asyncpg.Connection, spec: str) -> RewardDefinition:
    """`spec` as a reward: an outcome kind, a JSON file holding a definition, or the version of a
    definition stored in `reward_definitions`."""
    live = await live_version(conn, "rewards")
    windows = (live.definition if live is not None else DEFAULT).windows
    if spec in set(OutcomeKind):
        kind = OutcomeKind(spec)
        return RewardDefinition(
            version=f"outcome:{kind.value}",
            weights={kind: Decimal(1)},
            windows=dict(windows),
        )
    from_file = _definition_file(spec)
    if from_file is not None:
        return from_file
    try:
        return await load_definition(conn, spec)
    except LookupError:
        kinds = ", ".join(k.value for k in OutcomeKind)
        raise EvaluationError(
            f"{spec!r} is neither an outcome kind ({kinds}), a JSON file, "
            "nor a stored reward definition version"
        ) from None


def _definition_file(spec: str) -> RewardDefinition | None:
    """The definition in file `spec`, or None when `spec` names no file (nor a .json)."""
    path = Path(spec)
    if path.suffix != ".json" and not path.is_file():
        return None
    try:
        return RewardDefinition.from_json(orjson.loads(path.read_bytes()))
    except OSError as exc:
        raise EvaluationError(f"cannot read {spec}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise EvaluationError(f"{spec}: {exc}") from None


# --- reading the log --------------------------------------------------------------------------

_WHERE = """
WHERE event_type = 'RecommendationServed'
   OR (event_type = 'OutcomeRecorded' AND payload->>'recommendation_id' IS NOT NULL)
"""


async def read_log(
    conn: asyncpg.Connection,
    filters: Filters,
    definition: RewardDefinition,
    progress: Progress | None = None,
    batch: int = 5000,
) -> list[LoggedSlate]:
    """The slates that pass `filters`, in log order, each position with its reward under
    `definition` (outcomes attributed by the rewards fold's rules)."""
    total = int(await conn.fetchval(f"SELECT count(*) FROM events {_WHERE}"))
    state, changes = RewardState(), RewardChanges()
    kept: list[RecommendationServed] = []
    done = 0
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        cursor = conn.cursor(
            "SELECT event_type, schema_version, payload::text, recorded_at FROM events "
            f"{_WHERE} ORDER BY events.tx_id, events.global_position",
            prefetch=batch,
        )
        chunk = []
        async for row in cursor:
            event = decode(row[0], row[1], orjson.loads(row[2]))
            done += 1
            if isinstance(event, RecommendationServed):
                if not filters.keeps(event):
                    continue  # its outcomes then find no slate and are not attributed
                kept.append(event)
            chunk.append((row[3], event))
            if len(chunk) == batch:
                fold(state, changes, chunk, definition)
                chunk = []
                if progress is not None:
                    progress(done, total)
        fold(state, changes, chunk, definition)
    if progress is not None:
        progress(total, total)
    return [
        LoggedSlate(
            e,
            tuple(
                float(state.impressions.get((e.recommendation_id, s.item_id), 0)) for s in e.slate
            ),
        )
        for e in kept
    ]


# --- targets ----------------------------------------------------------------------------------

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


# --- from the log to rounds -------------------------------------------------------------------


@dataclass
class Rounds:
    """The log as `domain.ope` rounds, the target beside it, and what replay reports need."""

    log: LoggedRounds
    target: TargetPolicy
    items: list[str]
    slates: list[LoggedSlate]
    tops: list[list[str] | None]


@dataclass
class _Index:
    ids: dict[str, int] = field(default_factory=dict)

    def __call__(self, item: str) -> int:
        i = self.ids.get(item)
        if i is None:
            i = self.ids[item] = len(self.ids)
        return i


async def build_rounds(
    slates: list[LoggedSlate], target: Target, progress: Progress | None = None
) -> Rounds:
    """One round per served position, with the target's distribution there."""
    index = _Index()
    builder = TargetBuilder()
    supports: dict[tuple[str, ...], int] = {}
    cols: dict[str, list[float]] = {k: [] for k in ("slate", "item", "position", "p", "r")}
    tops: list[list[str] | None] = []
    numbered = 0  # slates with at least one position: the bootstrap's and the folds' unit
    for n, logged in enumerate(slates):
        t = await target.slate(logged.event)
        tops.append(t.top)
        numbered += bool(logged.event.slate)
        for entry, reward in zip(logged.event.slate, logged.rewards, strict=True):
            support, density, extras = t.at(entry.position)
            sid = -1
            if support is not None:
                sid = supports.get(support, -2)
                if sid == -2:
                    sid = supports[support] = builder.support(index(i) for i in support)
            builder.add(sid, density, [index(i) for i in extras], extras.values())
            cols["slate"].append(numbered - 1)
            cols["item"].append(index(entry.item_id))
            cols["position"].append(entry.position)
            cols["p"].append(entry.propensity)
            cols["r"].append(reward)
        if progress is not None and (n + 1) % 500 == 0:
            progress(n + 1, len(slates))
    if progress is not None:
        progress(len(slates), len(slates))
    try:
        log = LoggedRounds(
            slate=np.array(cols["slate"], dtype=np.int64),
            item=np.array(cols["item"], dtype=np.int64),
            position=np.array(cols["position"], dtype=np.int64),
            pscore=np.array(cols["p"], dtype=np.float64),
            reward=np.array(cols["r"], dtype=np.float64),
            n_items=max(len(index.ids), 1),
        )
    except ValueError as exc:
        raise EvaluationError(f"the log cannot be evaluated: {exc}") from None
    return Rounds(log, builder.build(), list(index.ids), slates, tops)


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What `segue evaluate` reports: every estimator, the logging policy's own value, counts."""

    target: str
    reward: str
    slates: int
    rounds: int
    estimates: dict[str, Estimate]
    logged: Estimate

    def to_json(self) -> dict[str, object]:
        return {
            **{name: e.to_json() for name, e in self.estimates.items()},
            "logged": self.logged.to_json(),
            "target": self.target,
            "reward": self.reward,
            "slates": self.slates,
            "rounds": self.rounds,
        }


def evaluation_of(rounds: Rounds, target: str, reward: str, config: OpeConfig) -> Evaluation:
    return Evaluation(
        target=target,
        reward=reward,
        slates=len(rounds.slates),
        rounds=rounds.log.n_rounds,
        estimates=evaluate(rounds.log, rounds.target, config),
        logged=on_policy(rounds.log, config),
    )


@dataclass(frozen=True, slots=True)
class Overlap:
    k: int
    mean: float
    distribution: dict[int, int]  # shared items in the top k -> slates


@dataclass(frozen=True, slots=True)
class Replay:
    """How the target's slates differ from the logged ones, and by how much value."""

    target: str
    reward: str
    slates: int
    compared: int  # slates for which the target has a most likely slate
    overlap: Overlap
    gained: list[tuple[str, int]]
    lost: list[tuple[str, int]]
    logged: Estimate
    difference: dict[str, Estimate]

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "reward": self.reward,
            "slates": self.slates,
            "compared": self.compared,
            "overlap": {
                "k": self.overlap.k,
                "mean": None if math.isnan(self.overlap.mean) else self.overlap.mean,
                "distribution": {str(k): v for k, v in sorted(self.overlap.distribution.items())},
            },
            "gained": [{"item_id": i, "slates": n} for i, n in self.gained],
            "lost": [{"item_id": i, "slates": n} for i, n in self.lost],
            "logged": self.logged.to_json(),
            "difference": {name: e.to_json() for name, e in self.difference.items()},
        }


def replay_of(
    rounds: Rounds, target: str, reward: str, config: OpeConfig, k: int, top_n: int
) -> Replay:
    """overlap@k = |logged top k & target top k| / min(k, logged slate length), per slate;
    gained (lost) = items in the target's (logged) top k and not the other's, counted over
    slates; the OPE estimate of target minus logged value per served position."""
    shares: list[float] = []
    distribution: Counter[int] = Counter()
    gained: Counter[str] = Counter()
    lost: Counter[str] = Counter()
    for logged, top in zip(rounds.slates, rounds.tops, strict=True):
        if top is None:
            continue
        ordered = sorted(logged.event.slate, key=lambda s: s.position)
        old = {s.item_id for s in ordered[:k]}
        new = set(top[:k])
        if not old:
            continue
        shared = len(old & new)
        shares.append(shared / min(k, len(old)))
        distribution[shared] += 1
        gained.update(new - old)
        lost.update(old - new)
    return Replay(
        target=target,
        reward=reward,
        slates=len(rounds.slates),
        compared=len(shares),
        overlap=Overlap(k, float(np.mean(shares)) if shares else math.nan, dict(distribution)),
        gained=sorted(gained.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n],
        lost=sorted(lost.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n],
        logged=on_policy(rounds.log, config),
        difference=evaluate_difference(rounds.log, rounds.target, config),
    )


def utc(value: datetime) -> datetime:
    """A naive time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --- the service the CLI calls ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """What to evaluate: the target (`uniform`, `current` or a CSV path), the reward (an outcome
    kind, a definition file or a stored version), which slates, and the policy parameters that
    `current` runs with."""

    target: str
    reward: str
    filters: Filters = field(default_factory=Filters)
    params: PolicyParams = field(default_factory=PolicyParams)


async def load_rounds(
    dsn: str,
    request: Request,
    index_root: Path,
    progress: Callable[[str], Progress] | None = None,
) -> tuple[Rounds, str, str]:
    """The log's rounds with the target beside them, the target's name and the reward's
    version. `progress(label)` gives a callback for each phase (reading, then targeting)."""
    target_path: Path | None = None
    if request.target not in ("uniform", "current"):
        target_path = Path(request.target)
    conn = await asyncpg.connect(dsn)
    try:
        definition = await reward_definition(conn, request.reward)
        target: Target
        if target_path is not None:
            target = CsvTarget.read(target_path)
        elif request.target == "uniform":
            target = await UniformTarget.load(conn)
        slates = await read_log(
            conn, request.filters, definition, progress("events") if progress else None
        )
    finally:
        await conn.close()
    if not slates:
        raise EvaluationError(f"no logged slate matches {request.filters.describe()}")
    if request.target == "current":
        pool = await create_pool(dsn, min_size=1, max_size=4)
        try:
            target = await current_target(pool, index_root, request.params)
            rounds = await build_rounds(slates, target, progress("slates") if progress else None)
        finally:
            await pool.close()
    else:
        rounds = await build_rounds(slates, target, progress("slates") if progress else None)
    return rounds, target.name, definition.version


async def current_target(pool: asyncpg.Pool, index_root: Path, params: PolicyParams) -> Target:
    """Segue's policy as it would rank now: today's index, item scores and catalogue."""
    store = PostgresEventStore(pool)  # never started: re-running a request appends nothing
    versions = LiveVersions(pool)
    scores = ItemScores(pool, versions)
    await scores.refresh()
    index = IndexHolder(index_root)
    await index.refresh()
    recommender = Recommender(
        pool,
        store,
        Catalog(pool, store, cache_seconds=3600.0),
        Pseudonyms(pool),
        lambda: datetime.now(UTC),
        index,
        scores,
        versions,
        params,
    )
    return CurrentTarget(recommender, params)


async def evaluate_log(
    dsn: str,
    request: Request,
    config: OpeConfig,
    index_root: Path,
    progress: Callable[[str], Progress] | None = None,
) -> Evaluation:
    """`segue evaluate` as a function: every estimator's `Estimate` (value per served position,
    bootstrap interval) of `request.target` on the logged slates, beside the logged value."""
    rounds, target, reward = await load_rounds(dsn, request, index_root, progress)
    return evaluation_of(rounds, target, reward, config)


async def replay_log(
    dsn: str,
    request: Request,
    config: OpeConfig,
    index_root: Path,
    k: int = 10,
    top_n: int = 10,
    progress: Callable[[str], Progress] | None = None,
) -> Replay:
    """`segue replay` as a function: how the target's slates differ from the logged ones and
    the estimated change in value."""
    rounds, target, reward = await load_rounds(dsn, request, index_root, progress)
    return replay_of(rounds, target, reward, config, k, top_n)
