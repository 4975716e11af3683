"""`segue demo`'s data: the organic history, and a few days of slates served by the gateway's
own policy on several surfaces, with outcomes attributed to them, that `segue report` and
`segue evaluate` can show; seeding again adds nothing."""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiohttp import web

from domain.events import ItemUpserted, OutcomeKind, OutcomeRecorded, RecommendationServed
from domain.ope import OpeConfig
from domain.upcasting import decode
from gateway.analysis.evaluation import Request, evaluate_log
from gateway.analysis.report import gather
from gateway.cli.demo_data import SLATE_DAYS, DemoClock, Listener, Seeded, respond, seed
from gateway.http.app import create_app
from gateway.http.appkeys import RUNNERS
from gateway.settings import Settings
from tests.integration.projection_helpers import log_end

pytestmark = pytest.mark.timeout(120)

ITEMS, USERS = 200, 30


async def test_demo_seeds_served_slates_that_report_and_evaluate_show(
    db_url: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    clock = DemoClock()
    settings = Settings(database_url=db_url, data_dir=tmp_path, key_cache_seconds=0)
    app = create_app(settings, db_url, clock=clock)
    runner = web.AppRunner(app)
    await runner.setup()  # the gateway's start-up, as `segue demo` runs it before listening
    try:
        now = datetime.now(UTC)
        started = time.monotonic()
        seeded = await seed(app, clock, ITEMS, USERS, now)
        took = time.monotonic() - started
        rewards = next(r for r in app[RUNNERS] if r.projection.name == "rewards")
        await rewards.wait_for(await log_end(conn), timeout=60)
        again = await seed(app, clock, ITEMS, USERS, now)
        assert clock() > now  # the real time again, after seeding
    finally:
        await runner.cleanup()
    print(f"seeded {seeded} in {took:.2f} s")
    assert seeded.items == ITEMS
    assert seeded.outcomes > 0
    assert seeded.slates > 0
    assert seeded.slate_outcomes > 0
    assert again == Seeded(items=0, outcomes=0, slates=0, slate_outcomes=0)

    # The store: slates on every surface, drawn by the policy, over the whole days before today.
    rows = await conn.fetch(
        "SELECT event_type, schema_version, payload FROM events "
        "WHERE event_type = ANY($1::text[]) ORDER BY global_position",
        [RecommendationServed.TYPE, OutcomeRecorded.TYPE],
    )
    events = [decode(t, v, orjson.loads(p)) for t, v, p in rows]
    served = [e for e in events if isinstance(e, RecommendationServed)]
    outcomes = [e for e in events if isinstance(e, OutcomeRecorded)]
    assert len(served) == seeded.slates
    by_surface = Counter(s.surface for s in served)
    assert set(by_surface) == {"home", "podcasts", "music", "search"}
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert {s.requested_at.date() for s in served} == {
        (today - timedelta(days=d)).date() for d in range(1, SLATE_DAYS + 1)
    }
    kinds: dict[str, str] = {
        r["item_id"]: r["kind"] for r in await conn.fetch("SELECT item_id, kind FROM catalog_items")
    }
    slates = {s.recommendation_id: s for s in served}
    for s in served:
        items = {e.item_id for e in s.slate}
        assert all(0 < e.propensity <= 1 for e in s.slate)
        if s.surface == "podcasts":
            assert {kinds[i] for i in items} <= {"episode"}
        if s.surface == "search":
            assert s.context["query"]
            assert s.candidates is not None
            assert items <= set(s.candidates)
    assert sum(1 for s in served if s.slate) > 0.9 * len(served)
    attributed = [(o, o.recommendation_id) for o in outcomes if o.recommendation_id is not None]
    assert len(attributed) == seeded.slate_outcomes
    assert len(outcomes) - len(attributed) == seeded.outcomes  # the organic history
    for o, rid in attributed:
        slate = slates[rid]
        assert o.item_id in {e.item_id for e in slate.slate}
        assert slate.requested_at <= o.occurred_at <= slate.requested_at + timedelta(hours=1)
    assert {slates[rid].surface for _, rid in attributed} == set(by_surface)

    # `segue report`: attributed rewards per surface and day.
    data = await gather(conn)
    assert sum(r.slates for r in data.rewards) == seeded.slates
    assert {r.surface for r in data.rewards} == set(by_surface)
    assert len({r.day for r in data.rewards}) == SLATE_DAYS
    assert any(r.reward != 0 for r in data.rewards)

    # `segue evaluate --target uniform --reward stream_30s --json`: finite estimates.
    result = await evaluate_log(
        db_url, Request("uniform", "stream_30s"), OpeConfig(n_bootstrap=50), tmp_path / "indexes"
    )
    assert result.slates == seeded.slates
    finite = {n: e for n, e in result.estimates.items() if e.estimate is not None}
    assert {"ipw", "dm", "dr"} <= set(finite)
    for e in [*finite.values(), result.logged]:
        assert e.estimate is not None
        assert math.isfinite(e.estimate)
        assert e.ci is not None
        assert all(math.isfinite(x) for x in e.ci)
    assert result.logged.estimate is not None
    assert result.logged.estimate > 0


def test_the_demo_listeners_stream_what_they_like_and_look_less_further_down() -> None:
    def item(i: int, genre: str) -> ItemUpserted:
        return ItemUpserted(f"tr-{i}", "track", {"genre": genre, "duration_s": 200})

    listener = Listener("user-0", frozenset({"tr-0"}), frozenset({"jazz"}), frozenset())
    slate = [item(0, "techno"), item(1, "jazz"), item(2, "techno"), item(3, "folk")]
    rng = random.Random(1)
    streams: Counter[str] = Counter()
    looked_first: Counter[str] = Counter()
    for _ in range(4000):
        for r in respond(listener, slate, rng):
            if r.kind is OutcomeKind.STREAM_30S:
                streams[r.item_id] += 1
            assert r.value >= 0
            assert r.after > timedelta(0)
        # The same slate reversed: the taste item further down is streamed less.
        for r in respond(listener, slate[::-1], rng):
            if r.kind is OutcomeKind.STREAM_30S:
                looked_first[r.item_id] += 1
    assert streams["tr-0"] > streams["tr-1"] > 3 * streams["tr-2"]
    assert streams["tr-0"] > 1.5 * looked_first["tr-0"]
    assert respond(listener, slate, random.Random(5)) == respond(listener, slate, random.Random(5))
