"""The v1 endpoints on their happy paths, and what they promise beyond a 200: what the log holds
afterwards (read behind the API with asyncpg and decoded as the analysts would), idempotency under
retries and concurrency, filters, retirement, pseudonymous listeners, and the service routes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout
from openapi_spec_validator import validate
from openapi_spec_validator.versions.shortcuts import get_spec_version
from prometheus_client.parser import text_string_to_metric_families

from domain.events import (
    DomainEvent,
    ItemRetired,
    ItemUpserted,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationServed,
)
from domain.ranking import PolicyParams
from domain.upcasting import decode
from gateway.client import SegueClient, SegueError, outcome
from gateway.http.routes import ENDPOINTS
from tests.api.conftest import Api, count_events, expect_problem, serving


async def stored(db: asyncpg.Connection, event_type: str) -> list[DomainEvent]:
    """Every stored event of `event_type`, in log order, decoded to the current shape."""
    rows = await db.fetch(
        "SELECT event_type, schema_version, payload::text FROM events "
        "WHERE event_type = $1 ORDER BY global_position",
        event_type,
    )
    return [decode(r[0], r[1], orjson.loads(r[2])) for r in rows]


async def served_events(db: asyncpg.Connection) -> dict[uuid.UUID, RecommendationServed]:
    out: dict[uuid.UUID, RecommendationServed] = {}
    for e in await stored(db, RecommendationServed.TYPE):
        assert isinstance(e, RecommendationServed)
        out[e.recommendation_id] = e
    return out


async def recorded_outcomes(db: asyncpg.Connection) -> list[OutcomeRecorded]:
    events = await stored(db, OutcomeRecorded.TYPE)
    assert all(isinstance(e, OutcomeRecorded) for e in events)
    return [e for e in events if isinstance(e, OutcomeRecorded)]


def catalogue(kinds: dict[str, int]) -> list[dict[str, Any]]:
    """{"track": 3, "episode": 2} -> items track-0..2, episode-0..1."""
    return [
        {"item_id": f"{kind}-{i}", "kind": kind, "attributes": {"n": i}}
        for kind, count in kinds.items()
        for i in range(count)
    ]


def slate_ids(answer: Mapping[str, Any]) -> list[str]:
    return [s["item_id"] for s in answer["items"]]


POLICY = PolicyParams()


def assert_exact_propensities(items: Sequence[Mapping[str, Any]], eligible: int) -> None:
    """Each propensity is one the policy's closed form allows for a pool of `eligible` items
    (domain/ranking.py): greedy or not, and in the explored tail or not."""
    head = max(0, len(items) - POLICY.tail)
    exploit = 1 - POLICY.epsilon - POLICY.tail_epsilon
    for s in items:
        tail_parts = [0.0, 1.0] if s["position"] < head else [0.0, 1 / (eligible - head)]
        allowed = {
            round(POLICY.epsilon / eligible + POLICY.tail_epsilon * t + exploit * g, 12)
            for g in (0.0, 1.0)
            for t in tail_parts
            if s["position"] >= head or t == g
        }
        assert round(s["propensity"], 12) in allowed, (s, allowed)


# --- catalogue ------------------------------------------------------------------------------


async def test_batch_upsert_then_read_each_item(client: SegueClient) -> None:
    items: list[dict[str, Any]] = [
        {"item_id": "tr-1", "kind": "track", "attributes": {"artist": "a", "bpm": 120}},
        {"item_id": "ep-1", "kind": "episode", "attributes": {}, "vector": [0.5, -1.25, 3.0]},
        {"item_id": "sh-1", "kind": "show", "attributes": {"tags": ["news", "daily"]}},
    ]
    stored_items = await client.upsert_items(items)
    assert [s["item_id"] for s in stored_items] == ["tr-1", "ep-1", "sh-1"]
    for sent, got in zip(items, stored_items, strict=True):
        expected = {"vector": None, **sent, "retired": False, "version": 1}
        assert got == expected
        assert await client.get_item(sent["item_id"]) == expected


async def test_upserting_again_replaces_the_item_and_bumps_its_version(
    client: SegueClient,
) -> None:
    first = await client.put_item("tr-1", "track", {"artist": "a", "year": 1999}, [1.0, 2.0])
    assert first["version"] == 1
    second = await client.put_item("tr-1", "album", {"artist": "b"})
    assert second == {
        "item_id": "tr-1",
        "kind": "album",
        "attributes": {"artist": "b"},
        "vector": None,
        "retired": False,
        "version": 2,
    }
    assert await client.get_item("tr-1") == second
    [third] = await client.upsert_items([{"item_id": "tr-1", "kind": "track"}])
    assert third["version"] == 3
    assert third["attributes"] == {}


async def test_get_unknown_item_is_a_404_problem(api: Api) -> None:
    expect_problem(await api.get("/v1/items/nope"), 404, "item_id", kind="not-found")


async def test_item_ids_with_reserved_characters_round_trip(client: SegueClient) -> None:
    item_id = "spotify:track/1 ü?#%"
    stored_item = await client.put_item(item_id, "track")
    assert stored_item["item_id"] == item_id
    assert (await client.get_item(item_id))["item_id"] == item_id


async def test_delete_retires_an_item_for_good(client: SegueClient, db: asyncpg.Connection) -> None:
    await client.upsert_items(catalogue({"track": 4}))
    retired = await client.retire_item("track-2")
    assert retired["retired"] is True
    assert retired["version"] == 2
    assert (await client.get_item("track-2"))["retired"] is True
    for _ in range(20):
        answer = await client.recommend("u1", n=100)
        assert sorted(slate_ids(answer)) == ["track-0", "track-1", "track-3"]
    # Not even when the caller asks for it by name.
    answer = await client.recommend("u1", surface="search", candidates=["track-2", "track-1"])
    assert slate_ids(answer) == ["track-1"]
    # Retiring again is harmless: same answer, nothing more in the log.
    assert await client.retire_item("track-2") == retired
    assert len(await stored(db, ItemRetired.TYPE)) == 1


def pause_commits_of(event_type: str) -> str:
    """Test-only fault injection: a deferred trigger that holds the commit of any transaction
    that appends an `event_type` event until advisory lock 4242 is free."""
    return f"""
CREATE FUNCTION test_pause() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(4242);
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER test_pause AFTER INSERT ON events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.event_type = '{event_type}') EXECUTE FUNCTION test_pause();
"""


async def _wait_for_blocked_backend(db: asyncpg.Connection, deadline_s: float = 10.0) -> None:
    """Poll (with a deadline: nothing signals it) until a session of this database waits on
    advisory lock 4242. Only that one: the gateway's own runners and builders wait on advisory
    locks too, and returning early would let the next request join the held transaction's
    group commit and wait for it."""
    waiting = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND classid = 0 AND objid = 4242 AND objsubid = 1 "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    async with asyncio.timeout(deadline_s):
        while True:
            if await db.fetchval(waiting):
                return
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("change", ["retire", "upsert"])
async def test_a_catalogue_change_is_seen_by_the_next_request_even_if_a_read_raced_its_commit(
    client: SegueClient, db: asyncpg.Connection, change: str
) -> None:
    """catalog.py promises that an item is recommendable the moment its upsert is acknowledged
    and never served after its retire is acknowledged. Here a recommendation reads the catalogue
    while the change's transaction is about to commit (held there by a test-only trigger)."""
    await client.upsert_items(catalogue({"track": 2}))
    before = ["track-0", "track-1"]
    if change == "retire":
        event_type, after = ItemRetired.TYPE, ["track-0"]
        changing = client.retire_item("track-1")
    else:
        event_type, after = ItemUpserted.TYPE, ["tr-new", "track-0", "track-1"]
        changing = client.put_item("tr-new", "track")
    await db.execute(pause_commits_of(event_type))
    await db.execute("SELECT pg_advisory_lock(4242)")
    task = asyncio.create_task(changing)
    try:
        await _wait_for_blocked_backend(db)
        # Not committed yet, so the old catalogue is right; this request reads it.
        during = await client.recommend("u1", n=10)
        assert sorted(slate_ids(during)) == before
    finally:
        await db.execute("SELECT pg_advisory_unlock(4242)")
        await task
    answer = await client.recommend("u1", n=10)
    assert sorted(slate_ids(answer)) == after, f"stale catalogue after an acknowledged {change}"


async def test_deleting_an_unknown_item_is_a_404_problem(api: Api, db: asyncpg.Connection) -> None:
    expect_problem(await api.delete("/v1/items/ghost"), 404, "item_id", kind="not-found")
    assert await count_events(db) == 0


async def test_client_raises_segue_error_with_the_problem(client: SegueClient) -> None:
    with pytest.raises(SegueError) as caught:
        await client.get_item("ghost")
    assert caught.value.status == 404
    assert caught.value.field == "item_id"
    assert caught.value.problem["type"].endswith("/not-found")


# --- recommendations ------------------------------------------------------------------------


async def test_a_recommendation_is_answered_and_logged_in_full(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    await client.upsert_items(catalogue({"track": 8, "episode": 4}))
    context = {"device": "phone", "hour": 21, "tags": ["commute", None], "nested": {"ok": True}}
    answer = await client.recommend(
        "listener-1",
        surface="home",
        n=5,
        context=context,
        exclude=["track-0", "episode-0"],
        kinds=["track", "episode"],
    )
    rec_id = uuid.UUID(answer["recommendation_id"])
    eligible = 12 - 2
    assert [s["position"] for s in answer["items"]] == [0, 1, 2, 3, 4]
    assert len(set(slate_ids(answer))) == 5
    assert not {"track-0", "episode-0"} & set(slate_ids(answer))
    assert_exact_propensities(answer["items"], eligible)
    assert answer["policy"] == {"name": POLICY.name, "version": POLICY.version}
    assert isinstance(answer["index_version"], str)
    assert answer["index_version"]

    events = await served_events(db)
    assert list(events) == [rec_id]
    event = events[rec_id]
    assert [
        {"item_id": s.item_id, "position": s.position, "score": s.score, "propensity": s.propensity}
        for s in event.slate
    ] == answer["items"]
    assert (event.policy_name, event.policy_version) == (POLICY.name, POLICY.version)
    assert event.index_version == answer["index_version"]
    assert event.surface == "home"
    assert event.context == context
    assert event.n == 5
    assert event.candidates is None
    assert event.exclude == ("track-0", "episode-0")
    assert event.kinds == ("track", "episode")
    # The event is its own stream's first event, keyed by the recommendation id.
    row = await db.fetchrow(
        "SELECT event_id, stream_id, stream_version FROM events WHERE event_type = $1",
        RecommendationServed.TYPE,
    )
    assert row is not None
    # The event has an id of its own, so an outcome reusing the recommendation id as its event id
    # is not mistaken for a duplicate.
    assert row[0] != rec_id
    assert (row[1], row[2]) == (f"recommendation-{rec_id}", 1)


async def test_the_slate_is_never_longer_than_the_eligible_items(client: SegueClient) -> None:
    await client.upsert_items(catalogue({"track": 3}))
    answer = await client.recommend("u1", n=10)
    assert sorted(slate_ids(answer)) == ["track-0", "track-1", "track-2"]
    assert [s["position"] for s in answer["items"]] == [0, 1, 2]
    assert_exact_propensities(answer["items"], 3)


async def test_every_recommendation_has_its_own_id(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    await client.upsert_items(catalogue({"track": 3}))
    answers = await asyncio.gather(*(client.recommend("u1", n=2) for _ in range(10)))
    ids = {a["recommendation_id"] for a in answers}
    assert len(ids) == 10
    assert {str(i) for i in await served_events(db)} == ids


async def test_rerank_returns_only_the_callers_live_candidates(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    await client.upsert_items(catalogue({"track": 10}))
    await client.retire_item("track-3")
    candidates = ["track-1", "track-3", "not-in-catalogue", "track-5", "track-7", "track-7"]
    answer = await client.recommend("u1", surface="search", n=10, candidates=candidates)
    assert sorted(slate_ids(answer)) == ["track-1", "track-5", "track-7"]
    assert_exact_propensities(answer["items"], 3)
    [event] = (await served_events(db)).values()
    assert event.candidates == tuple(candidates)
    assert event.surface == "search"
    # n smaller than the candidates: still only candidates.
    for _ in range(10):
        answer = await client.recommend("u1", surface="shelf", n=2, candidates=candidates)
        assert len(answer["items"]) == 2
        assert set(slate_ids(answer)) <= {"track-1", "track-5", "track-7"}


async def test_exclude_removes_items(client: SegueClient) -> None:
    await client.upsert_items(catalogue({"track": 5}))
    answer = await client.recommend("u1", n=10, exclude=["track-0", "track-4", "unknown"])
    assert sorted(slate_ids(answer)) == ["track-1", "track-2", "track-3"]
    assert_exact_propensities(answer["items"], 3)


async def test_kinds_filter(client: SegueClient) -> None:
    await client.upsert_items(catalogue({"track": 4, "episode": 3, "show": 2, "album": 1}))
    answer = await client.recommend("u1", n=100, kinds=["episode", "album"])
    assert sorted(slate_ids(answer)) == ["album-0", "episode-0", "episode-1", "episode-2"]
    assert_exact_propensities(answer["items"], 4)


@pytest.mark.parametrize(
    ("surface", "kinds"),
    [
        ("podcasts", {"episode", "show"}),
        ("music", {"track", "album", "artist", "playlist"}),
        ("home", {"track", "episode", "show", "album", "artist", "playlist", "audiobook"}),
    ],
)
async def test_surfaces_restrict_kinds(client: SegueClient, surface: str, kinds: set[str]) -> None:
    every = ["track", "episode", "show", "album", "artist", "playlist", "audiobook"]
    await client.upsert_items(catalogue(dict.fromkeys(every, 2)))
    answer = await client.recommend("u1", surface=surface, n=100)
    expected = sorted(f"{k}-{i}" for k in kinds for i in range(2))
    assert sorted(slate_ids(answer)) == expected
    assert_exact_propensities(answer["items"], len(expected))


async def test_an_empty_catalogue_gives_an_empty_slate(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    answer = await client.recommend("u1", n=10)
    assert answer["items"] == []
    rec_id = uuid.UUID(answer["recommendation_id"])
    # Still logged: "we had nothing to show" is a served slate too.
    events = await served_events(db)
    assert list(events) == [rec_id]
    assert events[rec_id].slate == ()


async def test_defaults_surface_home_and_n_10(api: Api, client: SegueClient) -> None:
    await client.upsert_items(catalogue({"track": 15, "episode": 1}))
    reply = await api.post("/v1/recommendations", {"user_id": "u1"})
    assert reply.status == 200, reply.body
    assert len(reply.json()["items"]) == 10
    assert_exact_propensities(reply.json()["items"], 16)


# --- outcomes -------------------------------------------------------------------------------


async def test_outcomes_are_accepted_once_and_resends_are_duplicates(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    batch = [
        outcome("u1", "tr-1", "stream_30s", value=31_000),
        outcome("u2", "tr-2", "save"),
        outcome("u3", "tr-3", "skip", value=4_000),
    ]
    assert await client.record_outcomes(batch) == {"accepted": 3, "duplicates": 0}
    assert await client.record_outcomes(batch) == {"accepted": 0, "duplicates": 3}
    assert await count_events(db, OutcomeRecorded.TYPE) == 3
    # A batch mixing old and new ids stores only the new one.
    mixed = [*batch[:2], outcome("u1", "tr-9", "like")]
    assert await client.record_outcomes(mixed) == {"accepted": 1, "duplicates": 2}
    assert await count_events(db, OutcomeRecorded.TYPE) == 4
    assert sorted(str(o.event_id) for o in await recorded_outcomes(db)) == sorted(
        o["event_id"] for o in [*batch, mixed[2]]
    )


async def test_an_outcome_is_stored_as_sent(client: SegueClient, db: asyncpg.Connection) -> None:
    await client.upsert_items(catalogue({"track": 3}))
    answer = await client.recommend("u1", n=1)
    [item_id] = slate_ids(answer)
    sent = outcome(
        "u1", item_id, "complete", recommendation_id=answer["recommendation_id"], value=215_000.5
    )
    sent["occurred_at"] = "2024-05-01T16:30:15.25+02:00"
    bare = outcome("u2", "track-0", "impression")
    before = datetime.now(UTC)
    assert await client.record_outcomes([sent, bare]) == {"accepted": 2, "duplicates": 0}
    after = datetime.now(UTC)
    first, second = await recorded_outcomes(db)
    assert str(first.event_id) == sent["event_id"]
    assert first.item_id == item_id
    assert first.kind is OutcomeKind.COMPLETE
    assert str(first.recommendation_id) == answer["recommendation_id"]
    assert first.value == 215_000.5
    assert first.occurred_at == datetime(2024, 5, 1, 14, 30, 15, 250_000, tzinfo=UTC)
    assert first.occurred_at.utcoffset() is not None
    # Without occurred_at: the time it was received.
    assert second.recommendation_id is None
    assert second.value is None
    assert before - timedelta(seconds=1) <= second.occurred_at <= after + timedelta(seconds=1)


@pytest.mark.parametrize("kind", [k.value for k in OutcomeKind])
async def test_every_outcome_kind_is_accepted(
    client: SegueClient, db: asyncpg.Connection, kind: str
) -> None:
    assert await client.record_outcomes([outcome("u1", "tr-1", kind)]) == {
        "accepted": 1,
        "duplicates": 0,
    }
    [event] = await recorded_outcomes(db)
    assert event.kind.value == kind


async def test_a_full_batch_of_1000_is_accepted(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    batch = [outcome(f"u{i % 37}", f"tr-{i}", "impression") for i in range(1000)]
    assert await client.record_outcomes(batch) == {"accepted": 1000, "duplicates": 0}
    assert await count_events(db, OutcomeRecorded.TYPE) == 1000


async def test_concurrent_identical_batches_store_each_event_once(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    batch = [outcome(f"u{i}", f"tr-{i}", "stream_start") for i in range(5)]
    answers = await asyncio.gather(*(client.record_outcomes(batch) for _ in range(10)))
    assert sum(a["accepted"] for a in answers) == 5
    assert sum(a["duplicates"] for a in answers) == 45
    assert all(a["accepted"] + a["duplicates"] == 5 for a in answers)
    assert await count_events(db, OutcomeRecorded.TYPE) == 5
    assert await db.fetchval("SELECT count(*) FROM event_ids") == 5
    assert sorted(str(o.event_id) for o in await recorded_outcomes(db)) == sorted(
        o["event_id"] for o in batch
    )


async def test_a_duplicate_event_id_inside_one_batch_is_stored_once(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    one = outcome("u1", "tr-1", "save")
    assert await client.record_outcomes([one, one]) == {"accepted": 1, "duplicates": 1}
    assert await count_events(db, OutcomeRecorded.TYPE) == 1


@pytest.mark.parametrize(
    ("change", "to"),
    [("user_id", "someone-else"), ("item_id", "tr-2"), ("kind", "skip"), ("value", 9.0)],
)
async def test_an_event_id_reused_for_another_outcome_is_a_409_naming_it(
    api: Api, db: asyncpg.Connection, change: str, to: object
) -> None:
    first = outcome("u1", "tr-1", "stream_30s", value=31_000)
    assert (await api.post("/v1/outcomes", {"outcomes": [first]})).status == 200
    other = {**first, change: to}
    fresh = outcome("u2", "tr-3", "save")
    reply = await api.post("/v1/outcomes", {"outcomes": [fresh, other]})
    problem = expect_problem(reply, 409, "outcomes[1].event_id", kind="event-id-reused")
    assert first["event_id"] in problem["detail"]
    # The original stays as it was; the same content resent is still a harmless duplicate.
    [stored, *_] = [o for o in await recorded_outcomes(db) if str(o.event_id) == first["event_id"]]
    assert stored.item_id == "tr-1"
    assert stored.value == 31_000
    again = await api.post("/v1/outcomes", {"outcomes": [first, fresh]})
    assert again.status == 200
    assert again.json() == {"accepted": 0, "duplicates": 2}


async def test_listeners_are_stored_only_as_pseudonyms(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    raw = f"person-{uuid.uuid4().hex}@example.com"
    await client.upsert_items(catalogue({"track": 3}))
    answer = await client.recommend(raw, n=1)
    [item_id] = slate_ids(answer)
    await client.record_outcomes(
        [
            outcome(raw, item_id, "stream_30s", recommendation_id=answer["recommendation_id"]),
            outcome(raw, "track-0", "save"),
        ]
    )
    assert await count_events(db) == 3 + 1 + 2
    leaks = await db.fetchval(
        "SELECT count(*) FROM events WHERE strpos(payload::text, $1) > 0 "
        "OR strpos(metadata::text, $1) > 0 OR strpos(stream_id, $1) > 0",
        raw,
    )
    assert leaks == 0
    pseudonym = await db.fetchval("SELECT pseudonym::text FROM listeners WHERE user_id = $1", raw)
    assert pseudonym is not None
    assert pseudonym != raw
    served = (await served_events(db))[uuid.UUID(answer["recommendation_id"])]
    assert served.user == pseudonym
    assert {o.user for o in await recorded_outcomes(db)} == {pseudonym}
    # The same listener always gets the same pseudonym; another listener another one.
    await client.recommend("someone-else", n=1)
    assert await db.fetchval("SELECT count(DISTINCT pseudonym) FROM listeners") == 2


# --- service routes -------------------------------------------------------------------------


async def test_healthz(api: Api) -> None:
    reply = await api.get("/healthz", key=None)
    assert reply.status == 200
    assert reply.content_type == "application/json"
    assert reply.json() == {"status": "ok"}


async def test_readyz_checks_the_database(api: Api) -> None:
    reply = await api.get("/readyz", key=None)
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok"


def _requests_total(text: str, route: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "segue_http_requests_total" and sample.labels["route"] == route:
                total += sample.value
    return total


async def test_metrics_count_requests_by_route(api: Api) -> None:
    before = await api.get("/metrics", key=None)
    assert before.status == 200
    assert before.content_type == "text/plain"
    assert "segue_http_requests_total" in before.text()
    for _ in range(3):
        await api.get("/v1/items/some-id")
    after = await api.get("/metrics", key=None)
    route = "/v1/items/{item_id}"
    assert _requests_total(after.text(), route) - _requests_total(before.text(), route) == 3
    # Labelled by route template, never by the raw path.
    assert "some-id" not in after.text()


def _appended(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "segue_events_appended_total":
                return float(sample.value)
    raise AssertionError("segue_events_appended_total is not exported")


async def test_appended_events_are_counted_and_duplicates_are_not(api: Api) -> None:
    before = _appended((await api.get("/metrics", key=None)).text())
    batch = [outcome(f"u{k}", f"tr-{k}", "save") for k in range(4)]
    assert (await api.post("/v1/outcomes", {"outcomes": batch})).status == 200
    assert (await api.post("/v1/outcomes", {"outcomes": batch})).status == 200  # duplicates
    after = _appended((await api.get("/metrics", key=None)).text())
    assert after - before == 4


async def test_openapi_is_valid_3_1_and_describes_every_route(api: Api) -> None:
    reply = await api.get("/openapi.json", key=None)
    assert reply.status == 200
    assert reply.content_type == "application/json"
    spec = reply.json()
    assert spec["openapi"].startswith("3.1")
    assert get_spec_version(spec).major == "3"
    assert get_spec_version(spec).minor == "1"
    validate(spec)
    for ep in ENDPOINTS:
        assert ep.path in spec["paths"], ep.path
        op = spec["paths"][ep.path].get(ep.method.lower())
        assert op is not None, (ep.method, ep.path)
        if ep.scope is not None:
            assert op["security"] == [{"bearer": []}]
            assert {"401", "403"} <= set(op["responses"])
        if ep.body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[-1] in spec["components"]["schemas"]
            assert {"400", "413", "415", "422"} <= set(op["responses"])
    described = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert described == {(ep.method, ep.path) for ep in ENDPOINTS}


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    expect_problem(await api.get("/v1/nowhere"), 404, None, kind="not-found")
    reply = await api.request("PATCH", "/v1/recommendations", json={})
    expect_problem(reply, 405, None, kind="method-not-allowed")
    assert "POST" in reply.headers.get("Allow", "")


# --- concurrency ----------------------------------------------------------------------------


async def test_concurrent_puts_of_one_new_item_each_get_their_own_version(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    answers = await asyncio.gather(
        *(client.put_item("tr-new", "track", {"writer": i}) for i in range(10))
    )
    assert sorted(a["version"] for a in answers) == list(range(1, 11))
    last = next(a for a in answers if a["version"] == 10)
    assert await client.get_item("tr-new") == last
    assert await count_events(db, ItemUpserted.TYPE) == 10


async def test_concurrent_first_requests_of_one_listener_share_one_pseudonym(
    client: SegueClient, db: asyncpg.Connection
) -> None:
    await client.upsert_items(catalogue({"track": 3}))
    recs = [client.recommend("brand-new", n=1) for _ in range(10)]
    batches = [
        client.record_outcomes([outcome("brand-new", "track-0", "click")]) for _ in range(10)
    ]
    answers = await asyncio.gather(*recs, *batches)
    assert all(dict(a) == {"accepted": 1, "duplicates": 0} for a in answers[10:])
    assert await db.fetchval("SELECT count(*) FROM listeners WHERE user_id = 'brand-new'") == 1
    pseudonym = await db.fetchval("SELECT pseudonym::text FROM listeners")
    assert {e.user for e in (await served_events(db)).values()} == {pseudonym}
    assert {o.user for o in await recorded_outcomes(db)} == {pseudonym}
    # One listener stream, its versions dense: concurrent appends neither collided nor skipped.
    versions = await db.fetch(
        "SELECT stream_version FROM events WHERE stream_id = $1 ORDER BY stream_version",
        f"listener-{pseudonym}",
    )
    assert [v[0] for v in versions] == list(range(1, 11))


# --- settings -------------------------------------------------------------------------------


@pytest.fixture
async def limited(db_url: str, all_scopes_key: str) -> AsyncIterator[Api]:
    """A gateway with a small body limit: 4 KiB."""
    async with (
        serving(db_url, max_body_bytes=4096) as url,
        ClientSession(timeout=ClientTimeout(total=30)) as session,
    ):
        yield Api(url, all_scopes_key, session)


async def test_the_body_limit_follows_the_setting(limited: Api) -> None:
    doc = orjson.dumps({"user_id": "u1"})
    ok = await limited.post(
        "/v1/recommendations",
        data=doc + b" " * (4096 - len(doc)),
        headers={"Content-Type": "application/json"},
    )
    assert ok.status == 200, ok.body
    big = await limited.post(
        "/v1/recommendations",
        data=doc + b" " * (4097 - len(doc)),
        headers={"Content-Type": "application/json"},
    )
    expect_problem(big, 413, "body")


async def test_the_client_covers_every_route_with_the_shapes_it_declares(
    client: SegueClient,
) -> None:
    """Each typed answer of the client has exactly the keys the server sends (a TypedDict is a
    plain dict at run time, so a drift would only show here)."""
    from gateway import client as typed

    def same_keys(answer: Mapping[str, Any], shape: type) -> None:
        assert set(answer) == set(shape.__annotations__), (shape.__name__, set(answer))

    [item] = await client.upsert_items(catalogue({"track": 1}))
    same_keys(item, typed.Item)
    same_keys(await client.get_item(item["item_id"]), typed.Item)
    slate = await client.recommend("u1", n=1)
    same_keys(slate, typed.Recommendation)
    same_keys(slate["items"][0], typed.SlateItem)
    same_keys(slate["policy"], typed.Policy)
    same_keys(await client.blend(["u1", "u2"], n=1), typed.Recommendation)
    same_keys(await client.discover("u1", n=1), typed.Recommendation)
    same_keys(
        await client.record_outcomes([outcome("u1", item["item_id"], "save")]), typed.Outcomes
    )
    rewards = await client.item_rewards(item["item_id"])
    same_keys(rewards, typed.ItemRewards)
    same_keys(rewards["reward"], typed.Reward)
    same_keys(rewards["long_term"], typed.LongTerm)
    status = await client.status()
    same_keys(status, typed.Status)
    same_keys(status["index"], typed.IndexStatus)
    for projection in status["projections"]:
        same_keys(projection, typed.ProjectionStatus)
    same_keys(await client.rebuild_index(), typed.IndexStatus)
    board = await client.dashboard()
    same_keys(board, typed.Dashboard)
    same_keys(board["index"], typed.DashboardIndex)
    same_keys(board["requests"], typed.Requests)
    same_keys(board["requests"]["total"], typed.RequestFigures)
    for figures in board["requests"]["routes"]:
        same_keys(figures, typed.RouteFigures)
    rebuild = await client.rebuild_projection("listeners")
    same_keys(rebuild, typed.Rebuild)
    series = await client.dashboard_series(days=3)
    same_keys(series, typed.Series)
    for day in series["rewards"]:
        same_keys(day, typed.SurfaceDay)
    for kinds in series["outcomes"]:
        same_keys(kinds, typed.KindDay)
    for _ in range(300):  # the rebuild asked for above, published and loaded
        if (await client.status())["index"]["version"] is not None:
            break
        await asyncio.sleep(0.1)
    same_keys(await client.similar(item["item_id"], n=3), typed.Similar)
    with pytest.raises(SegueError) as caught:
        await client.similar("ghost", n=3)
    assert caught.value.status == 404
    readiness = await client.readiness()
    same_keys(readiness, typed.Ready)
    assert readiness["status"] in ("ready", "degraded")
    assert await client.health()
    assert "segue_http_requests_total" in await client.metrics()
    same_keys(await client.forget("u2"), typed.Forgotten)
    same_keys(await client.retire_item(item["item_id"]), typed.Item)
