"""Online experiments in the gateway: start, stop and ship them as events, and tell the
recommender which arm's policy serves a listener.

Every experiment's lifecycle is on the one `experiments` stream, read back whole and folded by
`domain.experiments.fold_lifecycles` (a deployment runs a handful of experiments a quarter, so
the stream stays short); each process keeps the fold for a few seconds, so a start or a stop
reaches every process within that time. Writes append at the version the fold was read at: two
operators starting experiments at once cannot both pass the name and surface checks.

A listener's arm is computed, never looked up (`domain.experiments.assign`); the first slate a
process serves them in an experiment also appends `ExperimentAssigned`, with an event id derived
from (experiment, salt, pseudonym), so the log holds it once however many processes and
requests race to write it.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from domain.events import (
    EXPERIMENTS_STREAM,
    DomainEvent,
    ExperimentAssigned,
    ExperimentShipped,
    ExperimentStarted,
    ExperimentStopped,
    OutcomeKind,
    to_payload,
)
from domain.experiments import (
    PRE_PERIOD_DAYS,
    Analysis,
    Arm,
    Experiment,
    Lifecycle,
    Outcome,
    Slate,
    analyse,
    assign,
    covering,
    daily,
    fold_lifecycles,
    listener_records,
    overlapping,
)
from domain.experiments import InvalidExperiment as DomainInvalid
from domain.rewards import DEFAULT
from domain.upcasting import decode
from gateway.serving.errors import ExperimentConflict, InvalidExperiment, UnknownExperiment
from gateway.serving.requests import ExperimentIn
from gateway.store import reads
from gateway.store.api import EventStore, NewEvent, WrongExpectedVersion

ASSIGNMENT_NAMESPACE = uuid.UUID("5b8e2d41-0c7f-4a93-b6e1-8f2d4c9a7e10")
# Assignments this process has appended: bounded, because forgetting one only costs a duplicate
# append that the store recognises by its event id.
REMEMBERED = 100_000


def new_event(event: DomainEvent, event_id: uuid.UUID | None = None) -> NewEvent:
    return NewEvent(
        event_id or uuid.uuid4(),
        event.stream_id(),
        event.TYPE,
        event.SCHEMA_VERSION,
        to_payload(event),
    )


@dataclass(frozen=True, slots=True)
class Chosen:
    """The experiment covering a request and the listener's arm in it; `assignment` is the
    `ExperimentAssigned` to append with the slate, or None when this process has already."""

    experiment: Experiment
    arm: Arm
    assignment: NewEvent | None


class Experiments:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        clock: Callable[[], datetime],
        ttl_seconds: float = 5.0,
    ) -> None:
        self._pool = pool
        self._store = store
        self._clock = clock
        self._ttl = ttl_seconds
        self._cached: tuple[float, int, dict[str, Lifecycle]] | None = None
        self._assigned: OrderedDict[uuid.UUID, None] = OrderedDict()

    async def _read(self, fresh: bool = False) -> tuple[int, dict[str, Lifecycle]]:
        now = time.monotonic()
        if not fresh and self._cached is not None and now - self._cached[0] < self._ttl:
            return self._cached[1], self._cached[2]
        stored = await self._store.read_stream(EXPERIMENTS_STREAM)
        events = [decode(e.event_type, e.schema_version, e.payload) for e in stored]
        version = stored[-1].stream_version if stored else 0
        folded = fold_lifecycles(events)
        self._cached = (now, version, folded)
        return version, folded

    async def all(self) -> dict[str, Lifecycle]:
        """Every experiment, running or ended, by name (read now, not from the cache)."""
        return (await self._read(fresh=True))[1]

    async def get(self, name: str) -> Lifecycle:
        found = (await self.all()).get(name)
        if found is None:
            raise UnknownExperiment(f"no experiment named {name!r}", field="name")
        return found

    async def start(self, body: ExperimentIn) -> Lifecycle:
        """Check and record a new experiment; its salt is drawn here."""
        definition: dict[str, Any] = body.model_dump(mode="json")
        for metric in (definition["primary"], *definition["guardrails"]):
            if metric["reward"] is None:
                metric["reward"] = DEFAULT.to_json()
        try:
            experiment = Experiment.from_json({**definition, "salt": secrets.token_hex(8)})
        except DomainInvalid as exc:
            raise InvalidExperiment(str(exc), field=exc.field) from None
        version, known = await self._read(fresh=True)
        if experiment.name in known:
            raise ExperimentConflict(
                f"an experiment named {experiment.name!r} exists; names are never reused, so "
                "that its log stays unambiguous",
                field="name",
            )
        taken = overlapping(known.values(), experiment)
        if taken:
            raise ExperimentConflict(
                f"surfaces {taken} are covered by a running experiment; a slate has one policy",
                field="surfaces",
            )
        event = ExperimentStarted(experiment.name, experiment.to_json(), self._clock())
        await self._append(event, version)
        return Lifecycle(experiment, event.started_at)

    async def stop(self, name: str, reason: str) -> Lifecycle:
        version, _ = await self._running(name)
        await self._append(ExperimentStopped(name, reason, self._clock()), version)
        return await self.get(name)

    async def ship(self, name: str, arm: str) -> Lifecycle:
        version, lc = await self._running(name)
        if arm not in {a.name for a in lc.experiment.arms}:
            raise UnknownExperiment(f"{name!r} has no arm {arm!r}", field="arm")
        await self._append(ExperimentShipped(name, arm, self._clock()), version)
        return await self.get(name)

    async def _running(self, name: str) -> tuple[int, Lifecycle]:
        version, known = await self._read(fresh=True)
        lc = known.get(name)
        if lc is None:
            raise UnknownExperiment(f"no experiment named {name!r}", field="name")
        if not lc.running:
            raise ExperimentConflict(f"{name!r} has already {lc.status}", field="name")
        return version, lc

    async def _append(self, event: DomainEvent, version: int) -> None:
        try:
            await self._store.append([new_event(event)], expected={EXPERIMENTS_STREAM: version})
        except WrongExpectedVersion:
            raise ExperimentConflict(
                "another change to the experiments was recorded meanwhile; try again"
            ) from None
        self._cached = None

    async def arm_for(self, user: str, surface: str) -> Chosen | None:
        """The arm whose policy serves `user` (a pseudonym) on `surface`, or None outside every
        running experiment."""
        _, known = await self._read()
        experiment = covering(known.values(), surface)
        if experiment is None:
            return None
        arm = assign(experiment, user)
        event_id = uuid.uuid5(ASSIGNMENT_NAMESPACE, f"{experiment.name}/{experiment.salt}/{user}")
        if event_id in self._assigned:
            self._assigned.move_to_end(event_id)
            return Chosen(experiment, arm, None)
        event = ExperimentAssigned(experiment.name, user, arm.name, self._clock())
        return Chosen(experiment, arm, new_event(event, event_id))

    def appended(self, chosen: Chosen) -> None:
        """Remember that `chosen`'s assignment is in the log (after its append committed)."""
        if chosen.assignment is None:
            return
        self._assigned[chosen.assignment.event_id] = None
        while len(self._assigned) > REMEMBERED:
            self._assigned.popitem(last=False)

    async def _read_log(self, name: str) -> tuple[Lifecycle, list[Slate], list[Outcome]]:
        """The experiment, its slates and its listeners' pre-period slates, and the outcomes
        naming them. Read from the log at each call (a projection would keep per-listener sums
        current as events arrive; an experiment's slates and outcomes are few enough to read for
        now). Forgotten listeners are left out, as the projections drop their rows."""
        lc = await self.get(name)
        pre_from = lc.started_at - timedelta(days=PRE_PERIOD_DAYS)
        slates, pre, outcomes, forgotten = await reads.experiment_log(
            self._pool, name, pre_from, lc.started_at
        )
        parsed = [
            Slate(r[0], r[1], r[2], datetime.fromisoformat(r[3]))
            for r in slates
            if r[1] not in forgotten
        ]
        parsed += [
            Slate(r[0], r[1], None, datetime.fromisoformat(r[2]))
            for r in pre
            if r[1] not in forgotten
        ]
        found = [
            Outcome(r[0], OutcomeKind(r[1]), r[2], datetime.fromisoformat(r[3])) for r in outcomes
        ]
        return lc, parsed, found

    async def status(self, name: str) -> tuple[Lifecycle, Analysis]:
        """The experiment and the analysis of its log so far: per arm, listeners, slates and
        metric means; every arm against the first with always-valid intervals; the split's
        check."""
        lc, slates, outcomes = await self._read_log(name)
        return lc, analyse(lc.experiment, listener_records(lc.experiment, slates, outcomes))

    async def history(self, name: str) -> tuple[Lifecycle, list[tuple[date, Analysis]]]:
        """The analysis as it stood at the end of every UTC day of the experiment, up to its
        end (or today)."""
        lc, slates, outcomes = await self._read_log(name)
        until = lc.ended_at or self._clock()
        return lc, daily(lc.experiment, slates, outcomes, until)
