"""Erasure over real HTTP on a real database: after `POST /v1/users/{id}/forget`, the id is in no
table or view of any schema, in no export and in no file the gateway wrote; the rest of the
system works on, with the same item aggregates and a rebuild equal to the incremental state."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pyarrow.parquet as pq
import pytest
from aiohttp import ClientSession, ClientTimeout
from aiohttp.test_utils import TestServer

from gateway.analysis.event_io import Filters, JsonlSink, ParquetSink, export_events
from gateway.client import SegueClient, outcome
from gateway.http.access_log import RouteAccessLogger
from gateway.http.app import create_app
from gateway.http.auth import Scope
from gateway.projections.definitions import PROJECTIONS
from gateway.settings import Settings
from tests.api.conftest import (
    Api,
    KeyMaker,
    expect_problem,
    index_built,
    projections_caught_up,
    serving,
)
from tests.integration.projection_helpers import assert_same_rows, build_from_zero, dump, eventually

# Distinctive: mixed case, punctuation, a non-ASCII letter (so its bytes differ from its text).
SECRET = "Forget-Me.Zoë_7341"
OTHERS = ("alice-77", "bob-88")
FORGOTTEN = {"status": "accepted"}


def needles(user_id: str) -> dict[str, str]:
    """Every spelling of the id that could betray it: as is, case variants, JSON-escaped,
    URL-quoted, and its UTF-8 bytes as PostgreSQL prints bytea (hex)."""
    return {
        "text": user_id,
        "lower": user_id.lower(),
        "upper": user_id.upper(),
        "casefold": user_id.casefold(),
        "json": json.dumps(user_id)[1:-1],
        "url": quote(user_id, safe=""),
        "utf8-hex": user_id.encode().hex(),
    }


def found_in(text: str, user_id: str) -> list[str]:
    lowered = text.lower()
    return [name for name, n in needles(user_id).items() if n.lower() in lowered]


async def scan_database(conn: asyncpg.Connection, user_id: str) -> dict[str, list[str]]:
    """Every table, view, materialized view and foreign table of every non-system schema, each
    row cast to text, searched for every spelling of `user_id`."""
    relations = await conn.fetch(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' "
        "ORDER BY 1, 2"
    )
    assert len(relations) > 10, relations  # the scan sees the log, the side tables, projections
    hits: dict[str, list[str]] = {}
    for schema, name in relations:
        rows = await conn.fetch(f'SELECT t::text FROM "{schema}"."{name}" AS t')
        for row in rows:
            spelled = found_in(row[0], user_id)
            if spelled:
                hits.setdefault(f"{schema}.{name}", []).extend(spelled)
    return hits


def scan_files(folder: Path, user_id: str) -> dict[str, list[str]]:
    """Every file under `folder`, as bytes (UTF-8 and Latin-1 views) and, for Parquet, decoded."""
    hits: dict[str, list[str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        texts = [raw.decode("utf-8", "replace"), raw.decode("latin-1")]
        if path.suffix == ".parquet":
            texts.append(str(pq.read_table(path).to_pylist()))
        spelled = sorted({s for t in texts for s in found_in(t, user_id)})
        if user_id.encode() in raw:
            spelled.append("utf8-bytes")
        if spelled:
            hits[str(path.relative_to(folder))] = spelled
    return hits


async def export_everything(db_url: str, folder: Path) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        with (folder / "log.jsonl").open("wb") as f:
            await export_events(conn, JsonlSink(f), Filters())
        sink = ParquetSink(folder / "log.parquet")
        try:
            await export_events(conn, sink, Filters())
        finally:
            sink.close()
    finally:
        await conn.close()


async def live_schema(conn: asyncpg.Connection, name: str) -> str:
    schema: str = await conn.fetchval(
        "SELECT schema_name FROM projections WHERE name = $1 AND status = 'live'", name
    )
    return schema


async def rewards_of(api: Api, items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        reply = await api.get(f"/v1/items/{item}/rewards")
        assert reply.status == 200, reply.body
        body = reply.json()
        body.pop("projected_through")
        body.pop("as_of")
        out[item] = body
    return out


async def listener_rows(conn: asyncpg.Connection, pseudonyms: list[str]) -> list[str]:
    schema = await live_schema(conn, "listeners")
    rows = []
    for table in ("affinity", "history"):
        rows += [
            f"{table}:{r[0]}"
            for r in await conn.fetch(
                f'SELECT t::text FROM "{schema}".{table} t WHERE listener = ANY($1::text[]) '
                "ORDER BY 1",
                pseudonyms,
            )
        ]
    return rows


async def pseudonym(conn: asyncpg.Connection, user_id: str) -> str | None:
    value = await conn.fetchval("SELECT pseudonym::text FROM listeners WHERE user_id = $1", user_id)
    return str(value) if value is not None else None


@pytest.fixture
async def world(
    db_url: str, tmp_path: Path, all_scopes_key: str
) -> AsyncIterator[tuple[Api, SegueClient, Path]]:
    data_dir = tmp_path / "gateway"
    data_dir.mkdir()
    async with (
        serving(db_url, run_index_builder=False, data_dir=data_dir) as url,
        ClientSession(timeout=ClientTimeout(total=60)) as session,
        SegueClient(url, all_scopes_key, timeout=60) as client,
    ):
        yield Api(url, all_scopes_key, session), client, data_dir


async def test_a_forgotten_listener_is_nowhere_and_the_rest_works_on(
    world: tuple[Api, SegueClient, Path], db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    api, client, data_dir = world
    items = [f"tr-{i:02d}" for i in range(30)]
    await client.upsert_items(
        {"item_id": i, "kind": "track", "attributes": {"artist": f"a{n % 10}"}}
        for n, i in enumerate(items)
    )
    everyone = [SECRET, *OTHERS]
    await client.record_outcomes(
        outcome(u, items[(k * 7 + n) % 30], "stream_30s")
        for k, u in enumerate(everyone)
        for n in range(8)
    )
    await projections_caught_up(api)
    await index_built(api)

    # Everything a listener can do: slates, a blend, the weekly set, outcomes naming each.
    mine = await client.recommend(SECRET, n=5, context={"device": "phone"})
    theirs = await client.recommend(OTHERS[0], n=5)
    blend = await client.blend([SECRET, OTHERS[0]], n=4)
    weekly = await client.discover(SECRET, n=3)
    assert (await client.discover(SECRET, n=3))["recommendation_id"] == weekly["recommendation_id"]
    reported = []
    for slate, who in ((mine, SECRET), (blend, SECRET), (blend, OTHERS[0]), (weekly, SECRET)):
        for kind in ("stream_30s", "complete", "like"):
            reported.append(
                outcome(
                    who,
                    slate["items"][0]["item_id"],
                    kind,
                    recommendation_id=slate["recommendation_id"],
                )
            )
    reported.append(outcome(OTHERS[1], items[3], "save"))
    assert (await client.record_outcomes(reported))["accepted"] == len(reported)
    await projections_caught_up(api)

    forgotten = await pseudonym(db, SECRET)
    assert forgotten is not None
    others = [p for p in [await pseudonym(db, u) for u in OTHERS] if p is not None]
    assert await listener_rows(db, [forgotten])  # they had a profile
    others_before = await listener_rows(db, others)
    rewards_before = await rewards_of(api, items)
    # The positive control: before forgetting, the scan finds the id, and only in the mapping.
    before = await scan_database(db, SECRET)
    assert list(before) == ["public.listeners"], before

    for user in (SECRET, SECRET, "never-seen-before"):
        reply = await api.post(f"/v1/users/{quote(user, safe='')}/forget")
        assert (reply.status, reply.json()) == (202, FORGOTTEN)
    await projections_caught_up(api)

    assert await pseudonym(db, SECRET) is None
    assert await listener_rows(db, [forgotten]) == []
    rewards_schema = await live_schema(db, "rewards")
    assert not await db.fetchval(
        f'SELECT count(*) FROM "{rewards_schema}".user_days WHERE listener = $1', forgotten
    )
    for schema in (rewards_schema, await live_schema(db, "listeners")):
        assert await db.fetchval(f'SELECT count(*) FROM "{schema}".forgotten') == 1
    events = await db.fetch(
        "SELECT event_id, payload::text FROM events WHERE event_type = 'ListenerForgotten'"
    )
    assert [json.loads(e[1]) for e in events] == [{"user": forgotten}]  # once, pseudonym only

    # Nothing reveals the id: no table or view, no export, no file the gateway wrote.
    assert await scan_database(db, SECRET) == {}
    exports = tmp_path / "exports"
    exports.mkdir()
    await export_everything(db_url, exports)
    assert (exports / "log.jsonl").stat().st_size > 0
    assert scan_files(exports, SECRET) == {}
    assert any(data_dir.rglob("*.npy"))  # the index was written here
    assert scan_files(data_dir, SECRET) == {}
    # The scans can see: the other listeners' ids are still in the mapping.
    assert "public.listeners" in await scan_database(db, OTHERS[0])

    # The rest works on: same item aggregates, same other listeners, a rebuild equals the
    # incremental state.
    assert await rewards_of(api, items) == rewards_before
    assert await listener_rows(db, others) == others_before
    for name, projection in PROJECTIONS.items():
        rebuilt = await build_from_zero(db_url, db, projection)
        assert_same_rows(
            await dump(db, projection, rebuilt.schema),
            await dump(db, projection, await live_schema(db, name)),
        )
    again = await client.recommend(OTHERS[0], n=5)
    assert len(again["items"]) == 5
    assert theirs["recommendation_id"] != again["recommendation_id"]

    # The same id arriving again is a new listener, with a new pseudonym and no past.
    back = await client.recommend(SECRET, n=5)
    fresh = await pseudonym(db, SECRET)
    assert fresh is not None
    assert fresh != forgotten
    served = await db.fetchval(
        "SELECT payload->>'user' FROM events WHERE stream_id = $1",
        f"recommendation-{back['recommendation_id']}",
    )
    assert served == fresh
    new_week = await client.discover(SECRET, n=3)
    assert new_week["recommendation_id"] != weekly["recommendation_id"]


async def test_gateways_that_cached_the_pseudonym_stop_using_it(
    db_url: str, all_scopes_key: str
) -> None:
    """Another process keeps a cached pseudonym for at most SEGUE_PSEUDONYM_CACHE_SECONDS; what
    it records meanwhile is not folded into the forgotten listener's profile."""
    quiet = {"run_index_builder": False, "run_projectors": False}
    async with (
        serving(db_url, run_index_builder=False) as main_url,
        serving(db_url, pseudonym_cache_seconds=3600, **quiet) as stale_url,
        serving(db_url, pseudonym_cache_seconds=0.2, **quiet) as brief_url,
        SegueClient(main_url, all_scopes_key) as main,
        SegueClient(stale_url, all_scopes_key) as stale,
        SegueClient(brief_url, all_scopes_key) as brief,
        ClientSession(timeout=ClientTimeout(total=30)) as session,
    ):
        await main.put_item("tr-1", "track", {"artist": "x"})
        await main.record_outcomes([outcome(SECRET, "tr-1", "stream_30s")])
        await stale.recommend(SECRET)
        await brief.recommend(SECRET)
        conn = await asyncpg.connect(db_url)
        try:
            old = await pseudonym(conn, SECRET)
            assert old is not None
            await main.forget(SECRET)
            assert await pseudonym(conn, SECRET) is None

            # The stale process still uses the old pseudonym (its bound is an hour here)...
            late = outcome(SECRET, "tr-1", "complete")
            await stale.record_outcomes([late])
            user = await conn.fetchval(
                "SELECT payload->>'user' FROM events WHERE event_id = $1::uuid", late["event_id"]
            )
            assert user == old
            # ...but that is not folded back into the forgotten listener's profile.
            await projections_caught_up(Api(main_url, all_scopes_key, session))
            assert await listener_rows(conn, [old]) == []

            # A process with a short bound moves to a new pseudonym once it has passed.
            async def moved_on() -> bool:
                slate = await brief.recommend(SECRET)
                user = await conn.fetchval(
                    "SELECT payload->>'user' FROM events WHERE stream_id = $1",
                    f"recommendation-{slate['recommendation_id']}",
                )
                return user is not None and user != old

            await eventually(moved_on, "the short-lived cache to drop the old pseudonym", 10)
            assert await pseudonym(conn, SECRET) not in (None, old)
        finally:
            await conn.close()


async def test_forget_needs_admin_and_a_valid_id(api: Api, make_key: KeyMaker) -> None:
    for scope in (Scope.RECOMMEND, Scope.INGEST, Scope.CATALOG):
        reply = await api.post("/v1/users/someone/forget", key=await make_key(scope))
        expect_problem(reply, 403, "Authorization")
    reply = await api.post("/v1/users/someone/forget", key=None)
    expect_problem(reply, 401, "Authorization")
    reply = await api.post(f"/v1/users/{'x' * 257}/forget")
    expect_problem(reply, 422, "user_id")
    reply = await api.post("/v1/users/someone/forget", key=await make_key(Scope.ADMIN))
    assert (reply.status, reply.json()) == (202, FORGOTTEN)


async def test_a_listener_id_in_the_logged_context_is_refused(api: Api) -> None:
    body = {"user_id": SECRET, "context": {"device": {"owner": SECRET}}}
    expect_problem(await api.post("/v1/recommendations", body), 422, "context.device.owner")
    body = {"user_id": SECRET, "context": {"seen": ["a", SECRET]}}
    expect_problem(await api.post("/v1/recommendations", body), 422, "context.seen[1]")
    body = {"user_id": SECRET, "context": {SECRET: 1}}
    expect_problem(await api.post("/v1/recommendations", body), 422, "context")
    blend = {"user_ids": ["a-1", SECRET], "context": {"host": SECRET}}
    expect_problem(await api.post("/v1/blends", blend), 422, "context.host")
    fine = {"user_id": SECRET, "context": {"device": "phone"}}
    assert (await api.post("/v1/recommendations", fine)).status == 200


async def test_access_log_names_the_route_not_the_path(
    db_url: str, all_scopes_key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(database_url=db_url, data_dir=tmp_path), db_url)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log_class=RouteAccessLogger)  # as `segue serve` runs it
    try:
        with caplog.at_level(logging.INFO, logger="aiohttp.access"):
            async with SegueClient(str(server.make_url("")).rstrip("/"), all_scopes_key) as c:
                await c.discover(SECRET)
                await c.forget(SECRET)
    finally:
        await server.close()
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "aiohttp.access")
    assert "POST /v1/users/{user_id}/forget 202" in logged
    assert "GET /v1/users/{user_id}/discover 200" in logged
    assert not found_in(logged, SECRET)
