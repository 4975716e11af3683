"""A longer soak of the fault scenarios the test suite runs briefly (tests/faults/), all at once.

Clients post outcomes and recommendations through a real `segue serve` against a PostgreSQL
cluster of its own while, every few seconds, one fault chosen at random (seeded) is injected:

- the gateway SIGKILLed and restarted;
- PostgreSQL stopped (fast or immediate), kept down `--down` seconds and started again;
- PostgreSQL frozen (every process of the cluster SIGSTOPped) for `--down` seconds: data routes
  probed meanwhile must answer 503 within the bound, and no request may hang;
- an event the projectors cannot fold appended below HTTP: they must stop at it (status failed,
  /readyz degraded, `segue_projection_failed` 1), and go on once it is rewritten foldable.

Beside the plain load, for the whole soak:

- a producer below HTTP (a `PostgresEventStore` of the soak's own, same database) appends rounds
  where one or two appends carry an event PostgreSQL refuses beside good ones: only those fail;
- a client posts outcomes, resends them unchanged (harmless duplicates) and with an id reused
  for other content (409 event-id-reused);
- `SegueClient` callers (retries, Idempotency-Key) recommend, blend and record outcomes through
  the faults, and some ask with a context naming their listener (422).

At the end: every 2xx and every good append is in the log exactly once, no event of a refused
append is, every 409 left its original untouched, every keyed recommendation logged one slate
(the one answered), no refused context is in the log, and the projections equal versions rebuilt
from zero. Prints one line of counts.

    python bench/fault_soak.py [--minutes 5] [--every 6] [--down 3] [--seed 1] [--query-timeout 1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domain.events import OutcomeKind, OutcomeRecorded, to_payload
from gateway.client import SegueClient, SegueError, outcome
from gateway.serving.recommendations import idempotent_id
from gateway.store.api import AppendResult, NewEvent, StoredEvent, StoreUnavailable
from gateway.store.database import create_pool, migrate
from gateway.store.postgres import Connection, PostgresEventStore
from tests.faults.helpers import (
    OUTCOME_KINDS,
    Gateway,
    Load,
    PrivateCluster,
    assert_acknowledged_stored_once,
    data_routes,
    make_key,
    private_cluster,
    seed_catalogue,
    wait_until,
)
from tests.faults.projections import assert_equal_to_rebuilds, caught_up

ITEMS = 200
USERS = 500
# Seen in the log only in a context that was refused: finding it there is a refused context
# stored.
MARKER = "soak-refused-context"
FAULTS = (
    "gateway SIGKILL",
    "postgres fast",
    "postgres immediate",
    "postgres frozen",
    "projector cannot fold",
)
# The projections that fold outcomes: an outcome they cannot read stops both.
FOLDING_OUTCOMES = frozenset({"rewards", "listeners"})


def rng_uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


class Problems(list[str]):
    """What the soak saw go wrong while it ran (the first 200); none may be left at the end."""

    def add(self, what: str) -> None:
        if len(self) < 200:
            self.append(what)


# --- 2. refused events in a flush, below HTTP ---------------------------------------------------

REFUSALS = ("nul-in-stream-id", "nul-in-payload", "schema-version-out-of-range", "projection")


class Refusing:
    """An inline projection that fails on its event type, as a broken one would."""

    event_types = frozenset({"Refused"})

    async def apply(self, conn: Connection, events: Sequence[StoredEvent]) -> None:
        raise RuntimeError("this projection refuses the event")


def outcome_event(rng: random.Random, listener: str, item: int) -> NewEvent:
    """A good outcome, as the gateway would append it (the listener is a pseudonym)."""
    event = OutcomeRecorded(
        event_id=rng_uuid(rng),
        user=listener,
        item_id=f"it-{item}",
        kind=rng.choice(list(OutcomeKind)),
        occurred_at=datetime.now(UTC),
    )
    return NewEvent(
        event.event_id, event.stream_id(), event.TYPE, event.SCHEMA_VERSION, to_payload(event)
    )


def refused_event(rng: random.Random, kind: str, listener: str) -> NewEvent:
    e = outcome_event(rng, listener, rng.randrange(ITEMS))
    if kind == "nul-in-stream-id":
        return NewEvent(e.event_id, e.stream_id + "\x00", e.event_type, 1, e.payload)
    if kind == "nul-in-payload":
        return NewEvent(
            e.event_id, e.stream_id, e.event_type, 1, {**e.payload, "item_id": "a\x00b"}
        )
    if kind == "schema-version-out-of-range":
        return NewEvent(e.event_id, e.stream_id, e.event_type, 70000, e.payload)
    return NewEvent(e.event_id, e.stream_id, "Refused", 1, {})


@dataclass
class Producer:
    """Rounds of appends queued together (one flusher: they share flushes), one or two of them
    refused, the others good. A good append answered "unavailable" (an outage: unknown outcome)
    is sent again with the same ids until it is answered."""

    store: PostgresEventStore
    rng: random.Random
    problems: Problems
    listeners: list[str] = field(default_factory=list)
    acked: set[uuid.UUID] = field(default_factory=set)
    good_appends: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    refused_ids: set[uuid.UUID] = field(default_factory=set)  # every event of a bad append
    unavailable: int = 0  # appends answered "unavailable" (retried if good)
    # Rounds where a refused append was answered "unavailable" while others were accepted:
    # an outage that began mid-round, or the refusal mistaken for an outage (its caller would
    # retry it for ever). Kept as (start, end) to be told apart by the outages' times.
    refusal_as_outage: list[tuple[float, float]] = field(default_factory=list)
    rounds: int = 0
    retry: list[list[NewEvent]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listeners = [str(rng_uuid(self.rng)) for _ in range(50)]

    def good(self) -> list[NewEvent]:
        return [
            outcome_event(self.rng, self.rng.choice(self.listeners), self.rng.randrange(ITEMS))
            for _ in range(self.rng.randint(1, 3))
        ]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() or self.retry:
            await self.round(bad=not stop.is_set())
            await asyncio.sleep(0.2 if not self.retry else 0.5)

    async def round(self, bad: bool) -> None:
        self.rounds += 1
        started = time.monotonic()
        appends: list[tuple[str | None, list[NewEvent]]] = [(None, e) for e in self.retry]
        # Through an outage the appends to retry pile up: no new ones then.
        appends += [(None, self.good()) for _ in range(12 if len(self.retry) < 24 else 0)]
        self.retry = []
        for _ in range(self.rng.randint(1, 2) if bad else 0):
            refusal = self.rng.choice(REFUSALS)
            events = [refused_event(self.rng, refusal, self.rng.choice(self.listeners))]
            if self.rng.random() < 0.5:  # an append is atomic: its good events go with it
                events.insert(self.rng.randrange(2), self.good()[0])
            self.refused_ids.update(e.event_id for e in events)
            appends.insert(self.rng.randrange(len(appends) + 1), (refusal, events))
        results = await asyncio.gather(
            *(self.store.append(events) for _, events in appends), return_exceptions=True
        )
        accepted = any(isinstance(r, AppendResult) for r in results)
        mistaken = False
        for (kind, events), result in zip(appends, results, strict=True):
            if isinstance(result, StoreUnavailable):
                self.unavailable += 1
                if kind is None:
                    self.retry.append(events)
                elif accepted:
                    mistaken = True
            elif kind is None:
                if isinstance(result, AppendResult):
                    self.good_appends += 1
                    self.acked.update(e.event_id for e in events)
                else:
                    self.problems.add(f"a good append failed beside a refused one: {result!r}")
            elif isinstance(result, AppendResult):
                self.problems.add(f"an append carrying {kind} was accepted")
            elif isinstance(result, BaseException):
                self.refused[kind] += 1
        if mistaken:
            self.refusal_as_outage.append((started, time.monotonic()))


async def append_until_answered(store: PostgresEventStore, events: list[NewEvent]) -> AppendResult:
    deadline = time.monotonic() + 120
    while True:
        try:
            return await store.append(events)
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


# --- 4. reused ids with other content -----------------------------------------------------------


@dataclass
class Reuser:
    """Posts fresh outcomes, then the same body again (a harmless duplicate), then the body
    with one id reused for another outcome (409 event-id-reused, naming it)."""

    base_url: str
    key: str
    timeout: float
    rng: random.Random
    problems: Problems
    statuses: Counter[int] = field(default_factory=Counter)
    acked: set[uuid.UUID] = field(default_factory=set)
    originals: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)  # reused ids
    conflicts: int = 0
    plain_retries: int = 0

    def fresh(self) -> list[dict[str, Any]]:
        rng = self.rng
        return [
            {
                "event_id": str(rng_uuid(rng)),
                "user_id": f"user-{rng.randrange(USERS)}",
                "item_id": f"it-{rng.randrange(ITEMS)}",
                "kind": rng.choice(OUTCOME_KINDS),
                "value": rng.randrange(1, 300_000),
            }
            for _ in range(4)
        ]

    def other(self, o: dict[str, Any]) -> dict[str, Any]:
        changed = dict(o)
        what = self.rng.choice(["user_id", "item_id", "kind", "value"])
        if what == "user_id":
            changed["user_id"] = f"{o['user_id']}-other"
        elif what == "item_id":
            changed["item_id"] = f"it-{(int(o['item_id'][3:]) + 1) % ITEMS}"
        elif what == "kind":
            changed["kind"] = next(k for k in OUTCOME_KINDS if k != o["kind"])
        else:
            changed["value"] = o["value"] + 1
        return changed

    async def post(
        self, session: aiohttp.ClientSession, outcomes: list[dict[str, Any]], stop: asyncio.Event
    ) -> tuple[int, Any] | None:
        """Send until the answer is neither 503 nor missing (a plain retry: same body)."""
        while True:
            try:
                async with session.post(
                    self.base_url + "/v1/outcomes",
                    data=orjson.dumps({"outcomes": outcomes}),
                    headers={
                        "Authorization": f"Bearer {self.key}",
                        "Content-Type": "application/json",
                    },
                ) as r:
                    raw = await r.read()
                    self.statuses[r.status] += 1
                    if r.status != 503:
                        return r.status, orjson.loads(raw)
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                pass
            if stop.is_set():
                return None
            await asyncio.sleep(0.2)

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout)
        ) as session:
            while not stop.is_set():
                await self.once(session, stop)
                await asyncio.sleep(0.3)

    async def once(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        batch = self.fresh()
        got = await self.post(session, batch, stop)
        if got is None:
            return
        if got[0] != 200:
            self.problems.add(f"fresh outcomes answered {got}")
            return
        self.acked.update(uuid.UUID(o["event_id"]) for o in batch)
        got = await self.post(session, batch, stop)
        if got is not None:
            if got[0] == 200 and got[1] == {"accepted": 0, "duplicates": len(batch)}:
                self.plain_retries += 1
            else:
                self.problems.add(f"a plain retry answered {got}")
        i = self.rng.randrange(1, len(batch))
        sent = [*batch[:i], self.other(batch[i])]
        got = await self.post(session, sent, stop)
        if got is None:
            return
        self.originals[uuid.UUID(batch[i]["event_id"])] = batch[i]
        status, body = got
        if (
            status == 409
            and str(body.get("type", "")).endswith("event-id-reused")
            and body.get("field") == f"outcomes[{i}].event_id"
        ):
            self.conflicts += 1
        else:
            self.problems.add(f"an id reused for another outcome answered {got}")


# --- 5 and 6. the Python client, and contexts naming the listener -------------------------------


@dataclass
class Callers:
    """`SegueClient` callers through the faults; every call that returned is checked later."""

    base_url: str
    key: str
    timeout: float
    problems: Problems
    keyed: list[tuple[str, str, list[str]]] = field(default_factory=list)  # key, rid, items
    unanswered_keys: list[str] = field(default_factory=list)  # keyed calls that raised
    refused_keys: list[str] = field(default_factory=list)  # contexts naming the listener
    acked: set[uuid.UUID] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)
    raised: Counter[str] = field(default_factory=Counter)
    retries: int = 0

    async def run(self, seed: int, stop: asyncio.Event) -> None:
        rng = random.Random(seed)
        async with SegueClient(
            self.base_url, self.key, timeout=self.timeout, retry_seconds=90
        ) as client:
            try:
                while not stop.is_set():
                    await self.call(client, rng, seed)
                    await asyncio.sleep(0.1)
            finally:
                self.retries += client.retries

    async def call(self, client: SegueClient, rng: random.Random, seed: int) -> None:
        user = f"user-{rng.randrange(USERS)}"
        key = f"soak-{seed}-{sum(self.calls.values())}"
        what = rng.choices(["recommend", "blend", "outcomes", "context"], [4, 2, 3, 1])[0]
        try:
            if what == "recommend":
                context = {"device": "phone"} if rng.random() < 0.5 else None
                answer = await client.recommend(user, n=5, context=context, idempotency_key=key)
                self.keyed.append((key, answer["recommendation_id"], ids(answer)))
            elif what == "blend":
                users = [user, f"user-{(int(user[5:]) + 1) % USERS}"]
                answer = await client.blend(users, n=5, idempotency_key=key)
                self.keyed.append((key, answer["recommendation_id"], ids(answer)))
            elif what == "outcomes":
                sent = [
                    outcome(user, f"it-{rng.randrange(ITEMS)}", rng.choice(OUTCOME_KINDS))
                    for _ in range(3)
                ]
                got = await client.record_outcomes(sent)
                if got["accepted"] + got["duplicates"] != len(sent):
                    self.problems.add(f"the client's outcomes answered {got}")
                self.acked.update(uuid.UUID(o["event_id"]) for o in sent)
            else:
                # The listener's id as a token of a path: the token rule refuses it (422).
                context = {"page": f"/users/{user}/home", "tag": MARKER}
                self.refused_keys.append(key)
                await client.recommend(user, n=5, context=context, idempotency_key=key)
                self.problems.add(f"a context naming {user} was accepted")
            self.calls[what] += 1
        except SegueError as exc:
            if what == "context" and exc.status == 422 and exc.field == "context.page":
                self.calls["context refused 422"] += 1
            else:
                self.raised[f"{what} {exc.status}"] += 1
                if what in ("recommend", "blend"):
                    self.unanswered_keys.append(key)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.raised[f"{what} {type(exc).__name__}"] += 1
            if what in ("recommend", "blend"):
                self.unanswered_keys.append(key)


def ids(answer: Any) -> list[str]:
    return [i["item_id"] for i in answer["items"]]


# --- the faults -----------------------------------------------------------------------------------


async def get(
    session: aiohttp.ClientSession, url: str, key: str | None = None
) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with session.get(url, headers=headers) as r:
        raw = await r.read()
        text = raw.decode(errors="replace")
        body = orjson.loads(raw) if r.content_type.endswith("json") and raw else None
        return r.status, body, text


@dataclass
class Faults:
    gateway: Gateway
    cluster: PrivateCluster
    db_url: str
    key: str
    store: PostgresEventStore
    rng: random.Random
    down: float
    bound: float
    problems: Problems
    injected: Counter[str] = field(default_factory=Counter)
    outages: list[tuple[float, float]] = field(default_factory=list)  # PostgreSQL stopped/frozen
    frozen: list[tuple[float, float]] = field(default_factory=list)  # windows, monotonic
    probes: Counter[int] = field(default_factory=Counter)  # answers while frozen
    slowest_probe: float = 0.0
    broken: int = 0  # events the projectors could not fold, rewritten foldable

    async def inject(self, fault: str) -> None:
        if fault == "gateway SIGKILL":
            self.gateway.kill()
            await asyncio.sleep(self.rng.uniform(0.1, 1.0))
            await self.gateway.start()
        elif fault == "projector cannot fold":
            await self.unfoldable()
        else:
            began = time.monotonic()
            if fault == "postgres frozen":
                await self.freeze()
            else:
                await asyncio.to_thread(self.cluster.stop, fault.split()[1])
                await asyncio.sleep(self.down)
                await asyncio.to_thread(self.cluster.start)
            self.outages.append((began, time.monotonic()))
        self.injected[fault] += 1

    async def freeze(self) -> None:
        """Every cluster process stopped: the data routes, probed all at once, answer 503
        problem+json with Retry-After within the bound; /readyz fails, /healthz does not."""
        pids: list[int] = []
        try:
            pids = self.cluster.freeze()
            frozen_at = time.monotonic()
            await asyncio.sleep(0.5)
            await self.probe_frozen()
            await asyncio.sleep(max(0.0, self.down - (time.monotonic() - frozen_at)))
        finally:
            self.cluster.thaw(pids)  # whatever failed, never leave the cluster stopped
        self.frozen.append((frozen_at, time.monotonic()))

    async def probe_frozen(self) -> None:
        base = self.gateway.base_url
        headers = {"Authorization": f"Bearer {self.key}"}
        # Catalogue writes are left out: one whose statement was sent as the server froze
        # commits when it thaws, and a retired item would change what the load may post.
        routes = [r for r in data_routes() if "/v1/items" not in r[1] or r[0] == "GET"]
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.bound + 5)
        ) as session:

            async def probe(method: str, path: str, body: object) -> None:
                started = time.monotonic()
                try:
                    async with session.request(
                        method, base + path, json=body, headers=headers
                    ) as r:
                        await r.read()
                        took = time.monotonic() - started
                        self.probes[r.status] += 1
                        self.slowest_probe = max(self.slowest_probe, took)
                        if r.status != 503 or not r.headers.get("Retry-After", "").isdigit():
                            self.problems.add(f"frozen: {method} {path} answered {r.status}")
                        if took > self.bound:
                            self.problems.add(f"frozen: {method} {path} took {took:.1f} s")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.problems.add(f"frozen: {method} {path} no answer ({exc!r})")

            await asyncio.gather(*(probe(*route) for route in routes))
            status, body, _ = await get(session, base + "/readyz")
            if status != 503:
                self.problems.add(f"frozen: /readyz answered {status} {body}")
            status, _, _ = await get(session, base + "/healthz")
            if status != 200:
                self.problems.add(f"frozen: /healthz answered {status}")

    async def unfoldable(self) -> None:
        """An outcome whose payload the decoder cannot read, appended below HTTP (a producer
        bypassing the API): the projections folding outcomes stop exactly at it and say so;
        rewritten foldable (the owner's opt-in), they apply it and go on."""
        rng = self.rng
        listener = str(rng_uuid(rng))
        good = outcome_event(rng, listener, rng.randrange(ITEMS))
        broken = NewEvent(good.event_id, good.stream_id, good.event_type, 1, {"kind": 42})
        position = (await append_until_answered(self.store, [broken])).recorded[0].global_position
        base = self.gateway.base_url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            last: list[object] = []

            async def failed() -> dict[str, int | None]:
                status, body, text = await get(session, base + "/v1/admin/status", self.key)
                last[:] = [status, text[:3000]]
                if status != 200:
                    return {}
                return {
                    p["name"]: p["failed_position"]
                    for p in body["projections"]
                    if p["status"] == "failed"
                }

            async def stopped() -> bool:
                return (await failed()).keys() >= FOLDING_OUTCOMES

            try:
                await wait_until(stopped, "the projectors to stop at the broken event", 90, 0.5)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {last}\n{self.gateway.log()}") from None
            stuck = await failed()
            if any(stuck[n] != position for n in FOLDING_OUTCOMES):
                self.problems.add(f"stopped at {stuck}, not at the broken event {position}")
            status, body, _ = await get(session, base + "/readyz")
            if status != 200 or body["status"] != "degraded":
                self.problems.add(f"stopped projector: /readyz answered {status} {body}")
            elif f"stopped at event {position}" not in body["checks"].get("projections", ""):
                self.problems.add(f"stopped projector: /readyz says {body}")
            _, _, metrics = await get(session, base + "/metrics")
            if 'segue_projection_failed{projection="rewards"} 1.0' not in metrics:
                self.problems.add("stopped projector: segue_projection_failed is not 1")

            # The fix: the event rewritten foldable, in a transaction that opts in to rewriting.
            conn = await asyncpg.connect(self.db_url, timeout=10, command_timeout=30)
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL segue.allow_event_rewrite = on")
                    await conn.execute(
                        "UPDATE events SET payload = $2::jsonb WHERE event_id = $1",
                        good.event_id,
                        orjson.dumps(good.payload).decode(),
                    )
            finally:
                await conn.close()

            async def going_on() -> bool:
                if await failed():
                    return False
                _, _, metrics = await get(session, base + "/metrics")
                return 'segue_projection_failed{projection="rewards"} 0.0' in metrics

            # Its retries back off up to 30 s.
            await wait_until(going_on, "the projectors to go past the rewritten event", 90, 0.5)
            status, body, _ = await get(session, base + "/readyz")
            if status != 200 or body["status"] != "ready":
                self.problems.add(f"after the rewrite: /readyz answered {status} {body}")
        self.broken += 1


# --- checks at the end ----------------------------------------------------------------------------


async def stored(conn: asyncpg.Connection, event_ids: set[uuid.UUID]) -> dict[uuid.UUID, int]:
    rows = await conn.fetch(
        "SELECT event_id, count(*) FROM events WHERE event_id = ANY($1::uuid[]) GROUP BY 1",
        list(event_ids),
    )
    return {r[0]: r[1] for r in rows}


async def assert_stored_once(conn: asyncpg.Connection, what: str, event_ids: set[uuid.UUID]) -> int:
    counts = await stored(conn, event_ids)
    missing = event_ids - counts.keys()
    assert not missing, f"{len(missing)} acknowledged {what} lost, e.g. {list(missing)[:3]}"
    assert all(n == 1 for n in counts.values()), f"{what} stored more than once"
    return len(event_ids)


async def assert_originals_untouched(conn: asyncpg.Connection, reuser: Reuser) -> None:
    rows = await conn.fetch(
        "SELECT e.event_id, e.payload, l.user_id FROM events e "
        "LEFT JOIN listeners l ON l.pseudonym::text = e.payload->>'user' "
        "WHERE e.event_id = ANY($1::uuid[])",
        list(reuser.originals),
    )
    assert len(rows) == len(reuser.originals), "an outcome whose id was reused is missing"
    for r in rows:
        sent, kept = reuser.originals[r["event_id"]], orjson.loads(r["payload"])
        assert r["user_id"] == sent["user_id"], (sent, kept)
        assert (kept["item_id"], kept["kind"], kept["value"]) == (
            sent["item_id"],
            sent["kind"],
            sent["value"],
        ), (sent, kept)


async def assert_one_slate_per_key(conn: asyncpg.Connection, key_id: str, callers: Callers) -> int:
    """A keyed recommendation answered is logged once, under the key's id, with the slate
    answered; one that raised is logged at most once; a refused context is not logged."""
    keys = [k for k, _, _ in callers.keyed] + callers.unanswered_keys + callers.refused_keys
    rows = await conn.fetch(
        "SELECT stream_id, payload FROM events WHERE stream_id = ANY($1::text[]) "
        "AND event_type = 'RecommendationServed'",
        [f"recommendation-{idempotent_id(key_id, k)}" for k in keys],
    )
    logged: dict[str, list[list[str]]] = {}
    for r in rows:
        slate = [s["item_id"] for s in orjson.loads(r["payload"])["slate"]]
        logged.setdefault(r["stream_id"], []).append(slate)
    for key, rid, items in callers.keyed:
        assert rid == str(idempotent_id(key_id, key)), (key, rid)
        assert logged.get(f"recommendation-{rid}") == [items], (key, rid, items)
    for key in callers.unanswered_keys:
        assert len(logged.get(f"recommendation-{idempotent_id(key_id, key)}", [])) <= 1, key
    for key in callers.refused_keys:
        assert f"recommendation-{idempotent_id(key_id, key)}" not in logged, key
    return len(callers.keyed)


def check_no_hang(
    load: Load, windows: list[tuple[float, float]], bound: float, problems: Problems
) -> int:
    """Every load request in flight while the database was frozen was answered within the
    bound. Returns how many there were."""
    seen = 0
    for started, took, status in load.timeline:
        # In flight at some moment of a window: one that failed at once before it (a connection
        # the gateway killed by the fault before) is no business of the freeze.
        window = next(((a, b) for a, b in windows if started <= b and started + took >= a), None)
        if window is None:
            continue
        seen += 1
        when = f"{started - window[0]:+.2f} s from the freeze, {window[1] - window[0]:.1f} s long"
        if not isinstance(status, int):
            problems.add(f"a request in flight while frozen: {status} after {took:.1f} s ({when})")
        elif took >= bound:
            problems.add(f"a request in flight while frozen took {took:.1f} s ({when})")
    return seen


# --- the soak -------------------------------------------------------------------------------------


async def until_stopped(tasks: list[asyncio.Task[None]], seconds: float) -> None:
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for t in pending:
        t.cancel()
    assert not pending, f"{len(pending)} soak tasks did not finish"
    for t in done:
        t.result()


async def soak(
    minutes: float,
    every: float,
    down: float,
    seed: int,
    query_timeout: float,
    kinds: Sequence[str] = FAULTS,
) -> None:
    rng = random.Random(seed)
    problems = Problems()
    # The soak's own store logs every refusal it is made to meet, and its pool every failed
    # reconnect during an outage; they are counted instead.
    logging.getLogger("gateway.store").setLevel(logging.CRITICAL)
    logging.getLogger("asyncpg.pool").setLevel(logging.CRITICAL)
    # The worst a request may meet while frozen (tests/faults/test_database_stalled.py): each of
    # waiting for a connection, the statement and the release bounded by the statement bound.
    bound = 3 * query_timeout + 1.5
    with private_cluster() as cluster, tempfile.TemporaryDirectory() as data:
        admin = await asyncpg.connect(cluster.url())
        await admin.execute("CREATE DATABASE segue")
        await admin.close()
        db_url = cluster.url("segue")
        await migrate(db_url)
        key = await make_key(db_url)
        key_id = key.split("_")[1]  # sk_<key id>_<secret>
        gateway = Gateway(
            db_url,
            Path(data),
            SEGUE_KEY_CACHE_SECONDS="3600",
            SEGUE_QUERY_TIMEOUT_SECONDS=str(query_timeout),
        )
        pool = await create_pool(db_url, min_size=1, max_size=3, command_timeout=query_timeout)
        store = PostgresEventStore(pool, flushers=1, inline=[Refusing()])
        await store.start()
        try:
            async with gateway:
                await seed_catalogue(gateway.base_url, key, ITEMS)
                timeout = max(10.0, bound + 5)
                load = Load(gateway.base_url, key, items=ITEMS, users=USERS, timeout=timeout)
                producer = Producer(store, random.Random(seed + 1), problems)
                reuser = Reuser(gateway.base_url, key, timeout, random.Random(seed + 2), problems)
                callers = Callers(gateway.base_url, key, timeout, problems)
                faults = Faults(gateway, cluster, db_url, key, store, rng, down, bound, problems)
                stop = asyncio.Event()
                end = time.monotonic() + minutes * 60
                async with load.running(outcome_clients=4, recommendation_clients=2):
                    side = [
                        asyncio.create_task(producer.run(stop)),
                        asyncio.create_task(reuser.run(stop)),
                        *(asyncio.create_task(callers.run(seed * 10 + i, stop)) for i in range(2)),
                    ]
                    try:
                        while time.monotonic() < end:
                            await asyncio.sleep(rng.uniform(every / 2, every * 1.5))
                            fault = rng.choice(kinds)
                            await faults.inject(fault)
                            print(
                                f"{fault} ({faults.injected.total()}), "
                                f"{len(load.acked_events)} events acknowledged",
                                file=sys.stderr,
                            )
                    finally:
                        stop.set()
                        # A client call in its retries finishes them (90 s at most).
                        await until_stopped(side, 120)
                in_freeze = check_no_hang(load, faults.frozen, bound, problems)
                # A refused append answered "unavailable" is an outage's doing only during one
                # (a statement sent before it may fail up to a bound after it ended).
                for a, b in producer.refusal_as_outage:
                    if not any(a <= end + bound and b >= begin for begin, end in faults.outages):
                        problems.add(
                            "a refused append answered unavailable, no outage near its "
                            f"round ({b - a:.1f} s)"
                        )
                assert set(load.statuses) <= {200, 503}, load.statuses
                conn = await asyncpg.connect(db_url, timeout=10, command_timeout=600)
                try:
                    checked = await assert_acknowledged_stored_once(conn, load)
                    checked += await assert_stored_once(conn, "appends", producer.acked)
                    checked += await assert_stored_once(conn, "reused batches", reuser.acked)
                    checked += await assert_stored_once(conn, "client outcomes", callers.acked)
                    checked += await assert_one_slate_per_key(conn, key_id, callers)
                    leaked = await stored(conn, producer.refused_ids)
                    assert not leaked, f"events of refused appends stored: {list(leaked)[:3]}"
                    await assert_originals_untouched(conn, reuser)
                    contexts = await conn.fetchval(
                        "SELECT count(*) FROM events WHERE event_type = 'RecommendationServed' "
                        "AND payload->'context'->>'tag' = $1",
                        MARKER,
                    )
                    assert contexts == 0, f"{contexts} refused contexts are in the log"
                    await wait_until(lambda: caught_up(conn), "the projections to catch up", 300)
                    events = await assert_equal_to_rebuilds(db_url, conn)
                finally:
                    await conn.close()
                log = gateway.all_logs()
                for sign in ("Task exception was never retrieved", "unhandled error"):
                    if sign in log:
                        problems.add(f"the gateway logged: {log[log.index(sign) - 2000 :][:4000]}")
                assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
        finally:
            await store.close()
            await pool.close()
    requests = load.statuses + reuser.statuses
    injected = faults.injected.total()
    print(
        f"faults injected {injected} ({counts(faults.injected)}), survived {injected}; "
        f"requests by status {counts(requests)} (load {counts(load.statuses)}, "
        f"no answer {load.failures.total()}; while frozen {in_freeze} answered within "
        f"{bound:g} s, probes {counts(faults.probes)} slowest {faults.slowest_probe:.2f} s); "
        f"refused appends {producer.refused.total()} ({counts(producer.refused)}) beside "
        f"{producer.good_appends} good appends stored once, none of theirs stored (appends "
        f"answered unavailable {producer.unavailable}, of them refused ones in a round with "
        f"accepted appends {len(producer.refusal_as_outage)}, all during outages); "
        f"409s {reuser.conflicts} (originals untouched), plain retries {reuser.plain_retries} "
        f"harmless; client calls {callers.calls.total()} returned ({counts(callers.calls)}), "
        f"raised {callers.raised.total()}, retries {callers.retries}; "
        f"acknowledged events checked {checked} (in the log {events})"
    )


def counts(c: Counter[Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=6.0, help="seconds between faults, about")
    parser.add_argument(
        "--down", type=float, default=3.0, help="seconds PostgreSQL stays down or frozen"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--query-timeout",
        type=float,
        default=1.0,
        help="the gateway's statement bound (SEGUE_QUERY_TIMEOUT_SECONDS); a frozen database "
        "must be a 503 within three of them and 1.5 s",
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"the kinds to draw from, comma-separated (default: all of {', '.join(FAULTS)})",
    )
    args = parser.parse_args()
    kinds = [k.strip() for k in args.faults.split(",")]
    if unknown := set(kinds) - set(FAULTS):
        parser.error(f"unknown faults {sorted(unknown)}")
    asyncio.run(soak(args.minutes, args.every, args.down, args.seed, args.query_timeout, kinds))


if __name__ == "__main__":
    main()
