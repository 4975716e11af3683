"""Off-policy evaluation of the log: read the served slates and their rewards
(`gateway.analysis.evaluation_log`), describe a target policy at every logged (slate, position)
(`gateway.analysis.targets`), and hand both to `domain.ope`; this module turns them into rounds,
estimates and replay reports, and is what the CLI and the report call.

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

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np

from domain.ope import (
    Estimate,
    LoggedRounds,
    OpeConfig,
    TargetBuilder,
    TargetPolicy,
    evaluate,
    evaluate_difference,
    on_policy,
)
from domain.ranking import PolicyParams
from gateway.analysis.evaluation_log import (
    EvaluationError,
    Filters,
    LoggedSlate,
    read_log,
    reward_definition,
)
from gateway.analysis.targets import CsvTarget, Target, UniformTarget, current_target
from gateway.store import reads
from gateway.store.database import create_pool

# How long an evaluation waits for transactions that may still commit into its window.
SETTLE_SECONDS = 60.0

Progress = Callable[[int, int], None]  # (events read so far, events in all)
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
        if request.filters.until is not None:
            # Read the window only once no slate or outcome recorded before its end can still
            # commit (docs/decisions.md §83), so that evaluating it again gives the same rounds.
            try:
                await reads.settle(conn, request.filters.until, timeout=SETTLE_SECONDS)
            except reads.NotSettled as exc:
                raise EvaluationError(str(exc)) from None
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
