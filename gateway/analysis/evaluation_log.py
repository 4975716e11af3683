"""Reading the log for off-policy evaluation: the served slates a filter keeps, each position's
reward by the rewards projection's own fold, and the reward definition asked for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson

from domain.events import OutcomeKind, RecommendationServed
from domain.reward_fold import RewardChanges, RewardState, fold
from domain.rewards import DEFAULT, RewardDefinition
from domain.upcasting import decode
from gateway.projections.runner import live_version, load_definition
from gateway.store import reads

Progress = Callable[[int, int], None]  # (events read so far, events in all)


class EvaluationError(ValueError):
    """Input that cannot be evaluated; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Filters:
    """Which slates to evaluate: by surface, by the time they were served ([since, until)), and
    by the experiment and arm that drew them (so that one arm's slates can estimate another
    arm offline, beside the experiment's online result)."""

    surface: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    experiment: str | None = None
    arm: str | None = None

    def describe(self) -> str:
        parts = [
            f"surface {self.surface}" if self.surface else "",
            f"since {self.since.isoformat()}" if self.since else "",
            f"until {self.until.isoformat()}" if self.until else "",
            f"experiment {self.experiment}" if self.experiment else "",
            f"arm {self.arm}" if self.arm else "",
        ]
        return ", ".join(p for p in parts if p) or "(the log holds none)"

    def keeps(self, e: RecommendationServed) -> bool:
        if self.surface is not None and e.surface != self.surface:
            return False
        if self.experiment is not None and e.experiment != self.experiment:
            return False
        if self.arm is not None and e.arm != self.arm:
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


async def read_log(
    conn: asyncpg.Connection,
    filters: Filters,
    definition: RewardDefinition,
    progress: Progress | None = None,
    batch: int = 5000,
) -> list[LoggedSlate]:
    """The slates that pass `filters`, in log order, each position with its reward under
    `definition` (outcomes attributed by the rewards fold's rules)."""
    total = await reads.count_slates_and_attributed(conn)
    state, changes = RewardState(), RewardChanges()
    kept: list[RecommendationServed] = []
    done = 0
    async with conn.transaction(readonly=True, isolation="repeatable_read"):
        cursor = reads.slates_and_attributed(conn, prefetch=batch)
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
