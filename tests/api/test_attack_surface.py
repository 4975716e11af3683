"""Hostile text in every text field of every endpoint, through real HTTP to the real app on
PostgreSQL: SQL metacharacters, control characters, NUL, look-alike Unicode, lengths at and past
the limits, bytes that are not UTF-8. Each value is either stored verbatim (read back, through the
API or straight from the database, and compared exactly) or refused with a 4xx problem+json that
names the field. Never executed: the `events` table is still there at the end, and nothing else
was written. Never a 500.

test_bad_input.py checks each field's validation rules one by one; this module checks that any
text the rules let through comes back byte for byte, and that what they refuse is refused cleanly.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
import pytest
import pytest_asyncio

from gateway.http.problems import PROBLEM_JSON
from tests.api.conftest import Api, Reply, expect_problem, raw_http
from tests.conftest import unhandled_loop_errors_fail

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", autouse=True)
async def _no_unhandled_loop_errors() -> AsyncIterator[None]:
    with unhandled_loop_errors_fail():
        yield


@pytest.fixture
def api(shared_api: Api) -> Api:
    return shared_api


@pytest.fixture
def db(shared_db: asyncpg.Connection) -> asyncpg.Connection:
    return shared_db


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


ID_LIMIT = 256  # characters, for user and item ids (schemas.UserId, schemas.ItemId)

# name -> text. Every one is valid JSON text once encoded; what each field makes of it is decided
# by `expected` below, from the field's rules, not case by case.
HOSTILE: dict[str, str] = {
    "sql-drop": "'; DROP TABLE events; --",
    "sql-or": "' OR '1'='1",
    "sql-comment": "x'/*",
    "sql-semicolon": "a; SELECT pg_sleep(10);",
    "like-percent": "%",
    "like-underscore": "_",
    "like-both": "a%_b%",
    "backslash": "\\",
    "backslashes": "\\\\'\\x00\\u0000",
    "dollar-param": "$1",
    "dollar-quote": "$$; DROP TABLE events; $$",
    "quotes": "\"'`\u2018\u2019\u201c\u201d",
    "json-text": '{"a": [1, "b"]}',
    "markup": "<script>alert(1)</script>&amp;",
    "format-string": "%s%n%x{0}{}",
    "path-ish": "../../etc/passwd",
    "slash-query-hash": "a/b?c=d#e",
    "spaces": "  ",
    "tab-newlines": "a\tb\nc\r\nd",
    "control": "\x01\x02\x1b[31m\x7f\x9f",
    "separators": "\u2028\u2029\x85",
    "bom-zero-width": "\ufeffa\u200bb\u200d",
    "bidi-override": "\u202egnp.exe",
    "nfc": "\u00e9",
    "nfd": "e\u0301",
    "angstrom-sign": "\u212b",
    "a-ring": "\u00c5",
    "fullwidth": "\uff55\uff11",
    "cyrillic-a": "\u0430dmin",
    "emoji-zwj": "\U0001f469\u200d\U0001f469\u200d\U0001f467",
    "astral-max": "\U0010ffff",
    "noncharacters": "\ufffe\uffff",
    "at-id-limit": "\u00e9" * ID_LIMIT,  # 256 characters, 512 UTF-8 bytes
    "past-id-limit": "x" * (ID_LIMIT + 1),
    "long": "'; --" * 20_000,  # 100,000 characters: only ids have a length limit
    "nul": "a\x00b",
    "nul-only": "\x00",
}

# Refused whatever the field: JSON text that is not Unicode (a lone surrogate), sent as raw bytes.
RAW: dict[str, str] = {
    "lone-high-surrogate": '"a\\ud800b"',
    "lone-low-surrogate": '"\\udfff"',
}
INVALID_UTF8: dict[str, bytes] = {"invalid-utf8": b"\xff\xfe", "utf8-surrogate": b"\xed\xa0\x80"}


@dataclass(frozen=True, slots=True)
class Rule:
    """What a field accepts: `None` means "stored verbatim"; else (status, field) of the refusal."""

    # "id": 1-256 chars, no NUL; "json": no NUL; "closed": enum/uuid/date/int/key;
    # "token": 1-255 visible ASCII characters (the Idempotency-Key header)
    kind: str

    def expected(self, text: str) -> tuple[int, str | None] | None:
        if self.kind == "closed":
            return (422, None)
        if self.kind == "token":
            visible = all("\x21" <= c <= "\x7e" for c in text)
            return None if visible and 1 <= len(text) <= 255 else (422, None)
        if "\x00" in text:
            return (422, None)
        if self.kind == "id" and not 1 <= len(text) <= ID_LIMIT:
            return (422, None)
        return None


ID, JSON, CLOSED, TOKEN = Rule("id"), Rule("json"), Rule("closed"), Rule("token")


# --- one function per (endpoint, field): send `text` there; if accepted, read it back --------


@dataclass(frozen=True, slots=True)
class Sent:
    reply: Reply
    field: str  # the field a refusal must name
    read_back: Callable[[], Awaitable[object]] | None = None  # what was stored, if accepted


Probe = Callable[[Api, asyncpg.Connection, Any], Awaitable[Sent]]


def _outcome(**fields: Any) -> dict[str, Any]:
    base = {"event_id": str(uuid.uuid4()), "user_id": fresh("u"), "item_id": fresh("i")}
    return {**base, "kind": "save", **fields}


async def _listener(db: asyncpg.Connection, user_id: str) -> object:
    return await db.fetchval("SELECT user_id FROM listeners WHERE user_id = $1", user_id)


async def _served_context(db: asyncpg.Connection, rec_id: str) -> object:
    payload = await db.fetchval(
        "SELECT payload::text FROM events WHERE event_type = 'RecommendationServed' "
        "AND payload->>'recommendation_id' = $1",
        rec_id,
    )
    return orjson.loads(payload)["context"]


async def outcome_user_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/outcomes", {"outcomes": [_outcome(user_id=v)]})
    return Sent(r, "outcomes[0].user_id", lambda: _listener(db, v))


async def outcome_item_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    o = _outcome(item_id=v)
    r = await api.post("/v1/outcomes", {"outcomes": [o]})
    return Sent(
        r,
        "outcomes[0].item_id",
        lambda: db.fetchval(
            "SELECT payload->>'item_id' FROM events WHERE event_id = $1", uuid.UUID(o["event_id"])
        ),
    )


async def outcome_kind(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/outcomes", {"outcomes": [_outcome(kind=v)]})
    return Sent(r, "outcomes[0].kind")


async def outcome_event_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/outcomes", {"outcomes": [_outcome(event_id=v)]})
    return Sent(r, "outcomes[0].event_id")


async def outcome_recommendation_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/outcomes", {"outcomes": [_outcome(recommendation_id=v)]})
    return Sent(r, "outcomes[0].recommendation_id")


async def outcome_occurred_at(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/outcomes", {"outcomes": [_outcome(occurred_at=v)]})
    return Sent(r, "outcomes[0].occurred_at")


def _rec(**fields: Any) -> dict[str, Any]:
    return {"user_id": fresh("u"), "n": 2, **fields}


async def rec_user_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/recommendations", _rec(user_id=v))
    return Sent(r, "user_id", lambda: _listener(db, v))


async def rec_surface(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    return Sent(await api.post("/v1/recommendations", _rec(surface=v)), "surface")


async def rec_kinds(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    return Sent(await api.post("/v1/recommendations", _rec(kinds=["track", v])), "kinds[1]")


async def rec_context_value(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/recommendations", _rec(context={"k": [v, {"deeper": v}]}))

    async def back() -> object:
        context = await _served_context(db, r.json()["recommendation_id"])
        assert context == {"k": [v, {"deeper": v}]}
        return context["k"][0]

    return Sent(r, "context", back)


async def rec_context_key(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/recommendations", _rec(context={v: 1}))

    async def back() -> object:
        context = await _served_context(db, r.json()["recommendation_id"])
        assert isinstance(context, dict)
        assert len(context) == 1, context
        return next(iter(context))

    return Sent(r, "context", back)


async def _catalogue(api: Api, *item_ids: str) -> None:
    r = await api.post("/v1/items", {"items": [{"item_id": i, "kind": "track"} for i in item_ids]})
    assert r.status == 200, r.body[:300]


async def rec_candidates(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    """An item whose id is `v` is in the catalogue: as the only candidate, it is the slate."""
    if ID.expected(v) is None:
        await _catalogue(api, v)
    r = await api.post("/v1/recommendations", _rec(candidates=[fresh("absent"), v], n=1))

    async def back() -> object:
        [entry] = r.json()["items"]
        return entry["item_id"]

    return Sent(r, "candidates[1]", back)


async def rec_exclude(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    """Excluding `v` leaves only the other candidate in the slate: `v` was matched exactly."""
    other = fresh("other")
    valid = ID.expected(v) is None
    if valid:
        await _catalogue(api, v, other)
    candidates = [v, other] if valid else [other]  # so that a refusal can only be about exclude
    r = await api.post("/v1/recommendations", _rec(candidates=candidates, exclude=[v], n=2))

    async def back() -> object:
        slate = [e["item_id"] for e in r.json()["items"]]
        assert slate == [other], slate
        # And without the exclusion both are served: `v` was a real, servable item.
        again = await api.post("/v1/recommendations", _rec(candidates=[v, other], n=2))
        served = {e["item_id"] for e in again.json()["items"]}
        assert served == {v, other}, served
        return v

    return Sent(r, "exclude[0]", back)


async def blend_user_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/blends", {"user_ids": [fresh("u"), v], "n": 2})
    return Sent(r, "user_ids[1]", lambda: _listener(db, v))


async def blend_context_value(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/blends", {"user_ids": [fresh("u"), fresh("u")], "context": {"k": v}})

    async def back() -> object:
        context = await _served_context(db, r.json()["recommendation_id"])
        assert isinstance(context, dict)
        return context["k"]

    return Sent(r, "context", back)


async def items_item_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/items", {"items": [{"item_id": v, "kind": "track"}]})

    async def back() -> object:
        assert r.json()["items"][0]["item_id"] == v
        # The catalogue projection has it under exactly this id, and found by exactly it.
        got = await api.request("GET", "/v1/items/" + quote(v, safe=""), encoded=True)
        assert got.status == 200, got.body[:300]
        return got.json()["item_id"]

    return Sent(r, "items[0].item_id", back)


async def _attributes_round_trip(api: Api, path: str, reply: Reply) -> Any:
    assert reply.status == 200, reply.body[:300]
    got = await api.get(path)
    assert got.status == 200, got.body[:300]
    return got.json()["attributes"]


async def items_attribute_value(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    item_id = fresh("item")
    r = await api.post(
        "/v1/items", {"items": [{"item_id": item_id, "kind": "track", "attributes": {"a": v}}]}
    )

    async def back() -> object:
        return (await _attributes_round_trip(api, f"/v1/items/{item_id}", r))["a"]

    return Sent(r, "items[0].attributes", back)


async def items_attribute_key(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    item_id = fresh("item")
    r = await api.post(
        "/v1/items", {"items": [{"item_id": item_id, "kind": "track", "attributes": {v: "x"}}]}
    )

    async def back() -> object:
        attributes = await _attributes_round_trip(api, f"/v1/items/{item_id}", r)
        assert isinstance(attributes, dict)
        assert len(attributes) == 1, attributes
        return next(iter(attributes))

    return Sent(r, "items[0].attributes", back)


async def items_kind(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.post("/v1/items", {"items": [{"item_id": fresh("i"), "kind": v}]})
    return Sent(r, "items[0].kind")


async def put_path_item_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    path = "/v1/items/" + quote(v, safe="")
    r = await api.request("PUT", path, json={"kind": "episode"}, encoded=True)

    async def back() -> object:
        assert r.json()["item_id"] == v
        # Every item route finds it under exactly this id.
        for route in ("", "/similar", "/rewards"):
            got = await api.request("GET", path + route, encoded=True)
            assert got.status == 200, (route, got.body[:300])
            assert got.json()["item_id"] == v, route
        gone = await api.request("DELETE", path, encoded=True)
        assert gone.status == 200, gone.body[:300]
        assert gone.json()["retired"] is True
        return gone.json()["item_id"]

    return Sent(r, "item_id", back)


async def put_attribute_value(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    path = f"/v1/items/{fresh('item')}"
    r = await api.put(path, {"kind": "track", "attributes": {"nested": {"list": [v]}}})

    async def back() -> object:
        return (await _attributes_round_trip(api, path, r))["nested"]["list"][0]

    return Sent(r, "attributes", back)


async def put_kind(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    return Sent(await api.put(f"/v1/items/{fresh('i')}", {"kind": v}), "kind")


async def get_path_item_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    """Every GET route of an item answers alike: 404 naming item_id, the same refusal, or (when
    another case created an item of this id) that very item."""
    path = "/v1/items/" + quote(v, safe="")
    first = await api.request("GET", path, encoded=True)
    for route in ("/similar", "/rewards"):
        r = await api.request("GET", path + route, encoded=True)
        assert (r.status, r.content_type) == (first.status, first.content_type), route
        assert r.json().get("field") == first.json().get("field"), route
        if r.status == 200:
            assert r.json()["item_id"] == v, route
    if first.status == 404:
        expect_problem(first, 404, "item_id", kind="not-found")
        # Answered as an `Sent` with nothing stored: turn the 404 into "accepted, nothing to read".
        return Sent(Reply(200, first.content_type, first.headers, first.body), "item_id")
    return Sent(first, "item_id", lambda: _item_id_of(first))


async def _item_id_of(reply: Reply) -> object:
    return reply.json()["item_id"]


async def discover_user_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.request("GET", f"/v1/users/{quote(v, safe='')}/discover?n=2", encoded=True)
    return Sent(r, "user_id", lambda: _listener(db, v))


async def forget_user_id(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    """A listener known by exactly `v` is forgotten: its row, and no look-alike's, is gone."""
    path = f"/v1/users/{quote(v, safe='')}/forget"
    known = ID.expected(v) is None
    if known:
        seen = await api.request("GET", f"/v1/users/{quote(v, safe='')}/discover", encoded=True)
        assert seen.status == 200, seen.body[:300]
        assert await _listener(db, v) == v
    listeners = await db.fetchval("SELECT count(*) FROM listeners")
    r = await api.request("POST", path, encoded=True)

    async def back() -> object:
        assert await _listener(db, v) is None
        assert await db.fetchval("SELECT count(*) FROM listeners") == listeners - 1
        return v

    return Sent(r, "user_id", back)


async def rec_idempotency_key(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    """The header is not stored but hashed into the slate's id: the same key answers the same
    slate, and a key one character longer a different one."""
    body = _rec()
    r = await api.post("/v1/recommendations", body, headers={"Idempotency-Key": v})

    async def back() -> object:
        again = await api.post("/v1/recommendations", body, headers={"Idempotency-Key": v})
        other = await api.post("/v1/recommendations", body, headers={"Idempotency-Key": v + "x"})
        first = r.json()["recommendation_id"]
        assert again.json()["recommendation_id"] == first
        if len(v) < 255:
            assert other.json()["recommendation_id"] != first
        return v

    return Sent(r, "Idempotency-Key", back)


async def query_as_of(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.request("GET", f"/v1/items/x/rewards?as_of={quote(v, safe='')}", encoded=True)
    return Sent(r, "as_of")


async def query_n(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.request("GET", f"/v1/users/u1/discover?n={quote(v, safe='')}", encoded=True)
    return Sent(r, "n")


async def similar_n(api: Api, db: asyncpg.Connection, v: Any) -> Sent:
    r = await api.request("GET", f"/v1/items/x/similar?n={quote(v, safe='')}", encoded=True)
    return Sent(r, "n")


# (probe, rule): the table's rows. Every text field of every endpoint is here.
FIELDS: list[tuple[Probe, Rule]] = [
    (outcome_user_id, ID),
    (outcome_item_id, ID),
    (outcome_kind, CLOSED),
    (outcome_event_id, CLOSED),
    (outcome_recommendation_id, CLOSED),
    (outcome_occurred_at, CLOSED),
    (rec_user_id, ID),
    (rec_surface, CLOSED),
    (rec_kinds, CLOSED),
    (rec_context_value, JSON),
    (rec_context_key, JSON),
    (rec_candidates, ID),
    (rec_exclude, ID),
    (blend_user_id, ID),
    (blend_context_value, JSON),
    (items_item_id, ID),
    (items_attribute_value, JSON),
    (items_attribute_key, JSON),
    (items_kind, CLOSED),
    (put_path_item_id, ID),
    (put_attribute_value, JSON),
    (put_kind, CLOSED),
    (get_path_item_id, ID),
    (discover_user_id, ID),
    (forget_user_id, ID),
    (rec_idempotency_key, TOKEN),
    (query_as_of, CLOSED),
    (query_n, CLOSED),
    (similar_n, CLOSED),
]
PATH_PROBES = {put_path_item_id, get_path_item_id, discover_user_id, forget_user_id}
HEADER_PROBES = {rec_idempotency_key}
# The client refuses to send these in a header (test_unparseable_http_is_a_4xx sends them raw).
UNSENDABLE = set("\x00\r\n\x01\x1b\x7f\t\x85")
QUERY_PROBES = {query_as_of, query_n, similar_n}
# Long values in a URL: past an 8 KiB request line the HTTP parser refuses them (a plain 400, see
# test_unparseable_http_is_a_4xx); up to the id limit they are tried like any other.
URL_TOO_LONG = {"long"}


def _cases() -> list[Any]:
    return [
        pytest.param(probe, rule, text, id=f"{probe.__name__}-{name}")
        for probe, rule in FIELDS
        for name, text in HOSTILE.items()
        if not (probe in PATH_PROBES | QUERY_PROBES and name in URL_TOO_LONG)
        and not (probe in HEADER_PROBES and (UNSENDABLE & set(text) or len(text) > 8000))
    ]


async def _tables(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


@pytest.mark.parametrize(("probe", "rule", "text"), _cases())
async def test_hostile_text_is_stored_verbatim_or_refused(
    api: Api, db: asyncpg.Connection, probe: Probe, rule: Rule, text: str
) -> None:
    tables = await _tables(db)
    events = await db.fetchval("SELECT count(*) FROM events")
    sent = await probe(api, db, text)
    refusal = rule.expected(text)
    if refusal is None:
        assert sent.reply.status in (200, 202), sent.reply.body[:500]  # 202: forget
        if sent.read_back is not None:
            stored = await sent.read_back()
            assert stored == text, f"stored {stored!r:.200} for {text!r:.200}"
            assert isinstance(stored, str)
    else:
        problem = expect_problem(sent.reply, refusal[0], sent.field)
        assert "errors" not in problem or problem["errors"][0]["field"] == sent.field
        if probe not in (rec_candidates, rec_exclude):  # those create their items first
            assert await db.fetchval("SELECT count(*) FROM events") == events
    # Nothing was executed: the schema is as it was.
    assert await _tables(db) == tables


# --- what is not even JSON text, or not UTF-8 ----------------------------------------------

BODY_FIELDS: list[tuple[str, str, Callable[[str], dict[str, Any]]]] = [
    ("POST", "/v1/outcomes", lambda v: {"outcomes": [_outcome(user_id=v)]}),
    ("POST", "/v1/outcomes", lambda v: {"outcomes": [_outcome(item_id=v)]}),
    ("POST", "/v1/outcomes", lambda v: {"outcomes": [_outcome(kind=v)]}),
    ("POST", "/v1/recommendations", lambda v: _rec(user_id=v)),
    ("POST", "/v1/recommendations", lambda v: _rec(surface=v)),
    ("POST", "/v1/recommendations", lambda v: _rec(context={"k": v})),
    ("POST", "/v1/recommendations", lambda v: _rec(context={v: 1})),
    ("POST", "/v1/recommendations", lambda v: _rec(candidates=[v])),
    ("POST", "/v1/recommendations", lambda v: _rec(exclude=[v])),
    ("POST", "/v1/recommendations", lambda v: _rec(kinds=[v])),
    ("POST", "/v1/blends", lambda v: {"user_ids": ["a", v]}),
    ("POST", "/v1/items", lambda v: {"items": [{"item_id": v, "kind": "track"}]}),
    (
        "POST",
        "/v1/items",
        lambda v: {"items": [{"item_id": "i", "kind": "track", "attributes": {"a": v}}]},
    ),
    ("PUT", "/v1/items/i1", lambda v: {"kind": "track", "attributes": {v: v}}),
]
MARK = "\u2603MARK\u2603"


def _undecodable_cases() -> list[Any]:
    out = []
    for method, path, build in BODY_FIELDS:
        doc = orjson.dumps(build(MARK))
        for name, literal in RAW.items():
            body = doc.replace(orjson.dumps(MARK), literal.encode())
            out.append(pytest.param(method, path, body, id=f"{method}{path}-{name}"))
        for name, raw in INVALID_UTF8.items():
            body = doc.replace(MARK.encode(), raw)
            out.append(pytest.param(method, path, body, id=f"{method}{path}-{name}"))
    return out


@pytest.mark.parametrize(("method", "path", "body"), _undecodable_cases())
async def test_text_that_is_not_unicode_is_a_400(
    api: Api, db: asyncpg.Connection, method: str, path: str, body: bytes
) -> None:
    events = await db.fetchval("SELECT count(*) FROM events")
    reply = await api.request(method, path, data=body, headers={"Content-Type": "application/json"})
    expect_problem(reply, 400, "body")
    assert await db.fetchval("SELECT count(*) FROM events") == events


PATHS_WITH_TEXT = [
    ("GET", "/v1/items/{}", "item_id"),
    ("PUT", "/v1/items/{}", "item_id"),
    ("DELETE", "/v1/items/{}", "item_id"),
    ("GET", "/v1/items/{}/similar", "item_id"),
    ("GET", "/v1/items/{}/rewards", "item_id"),
    ("GET", "/v1/users/{}/discover", "user_id"),
]


@pytest.mark.parametrize(("method", "template", "field"), PATHS_WITH_TEXT)
@pytest.mark.parametrize(
    "segment",
    ["%FF", "a%FEb", "%ED%A0%80", "%C3", "%E2%82", "%F8%88%80%80%80", "%C0%AF"],
    ids=["ff", "fe", "encoded-surrogate", "truncated-2", "truncated-3", "5-byte", "overlong"],
)
async def test_path_bytes_that_are_not_utf8_are_422(
    api: Api, db: asyncpg.Connection, method: str, template: str, field: str, segment: str
) -> None:
    """The router leaves such bytes percent-encoded: without the check `%FF` would be stored as
    the three-character id "%FF", the very id a client means by `%25FF`."""
    events = await db.fetchval("SELECT count(*) FROM events")
    body = {"kind": "track"} if method == "PUT" else None
    reply = await api.request(method, template.format(segment), json=body, encoded=True)
    problem = expect_problem(reply, 422, field)
    assert "UTF-8" in problem["detail"]
    assert await db.fetchval("SELECT count(*) FROM events") == events


async def test_percent_encoded_percent_is_the_literal_id(api: Api) -> None:
    """The other side of the test above: `%25FF` is the id "%FF", stored and found verbatim."""
    reply = await api.request("PUT", "/v1/items/%25FF", json={"kind": "track"}, encoded=True)
    assert reply.status == 200, reply.body
    assert reply.json()["item_id"] == "%FF"
    got = await api.request("GET", "/v1/items/%25FF", encoded=True)
    assert got.json()["item_id"] == "%FF"


async def test_look_alikes_are_different_ids(api: Api) -> None:
    """No normalisation anywhere: NFC and NFD, the Angstrom sign and A-ring, Latin and Cyrillic
    are separate items, each found only by its own spelling."""
    groups = [["\u00e9", "e\u0301"], ["\u212b", "\u00c5", "A\u030a"], ["admin", "\u0430dmin"]]
    for group in groups:
        tag = fresh("look")
        ids = [f"{tag}{g}" for g in group]
        for n, item_id in enumerate(ids):
            r = await api.put(
                "/v1/items/" + quote(item_id, safe=""), {"kind": "track", "attributes": {"n": n}}
            )
            assert r.status == 200, r.body
            assert r.json()["version"] == 1, f"{item_id!r} was taken as an existing item"
        for n, item_id in enumerate(ids):
            got = await api.get("/v1/items/" + quote(item_id, safe=""))
            assert got.json()["item_id"] == item_id
            assert got.json()["attributes"] == {"n": n}


# --- the Authorization header --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [t for n, t in HOSTILE.items() if not any(c in t for c in "\x00\r\n\x01\x1b\x7f\t\x85")],
    ids=[n for n, t in HOSTILE.items() if not any(c in t for c in "\x00\r\n\x01\x1b\x7f\t\x85")],
)
async def test_hostile_authorization_is_401(api: Api, db: asyncpg.Connection, text: str) -> None:
    events = await db.fetchval("SELECT count(*) FROM events")
    for header in (f"Bearer {text}", f"Bearer sk_{text}_{text}", text):
        reply = await api.get("/v1/items/x", headers={"Authorization": header}, key=None)
        if len(header.encode()) > 8190:  # the HTTP parser's limit on one header line
            assert 400 <= reply.status < 500, reply.status
            continue
        expect_problem(reply, 401, "Authorization", kind="unauthorized")
    assert await db.fetchval("SELECT count(*) FROM events") == events


def _request(target: bytes, authorization: bytes) -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: t\r\nAuthorization: "
        + authorization
        + b"\r\nConnection: close\r\n\r\n"
    )


async def test_header_bytes_that_are_not_utf8_are_401(api: Api) -> None:
    """Header bytes that are not UTF-8 reach the app as lone surrogates: a 401 like any unknown
    key (this was a 500: hashing the token could not encode it)."""
    for junk in (b"\xff\xfe", b"\xed\xa0\x80", b"sk_\xc3_x", b"\x80" * 40):
        answer = await raw_http(api.base_url, _request(b"/v1/items/x", b"Bearer " + junk))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), answer[:300]
        assert PROBLEM_JSON.encode() in head
        assert orjson.loads(body)["field"] == "Authorization"


async def test_unparseable_http_is_a_4xx(api: Api) -> None:
    """What is not HTTP/1.1 at all (control characters in a header value or the request line,
    raw non-ASCII in the target, a header line over 8 KiB) is refused by aiohttp's parser before
    the app runs: a plain-text 400, never a 5xx, never reaching a handler or the database."""
    key = (api.key or "").encode()
    for target, authorization in (
        (b"/v1/items/x", b"Bearer " + key + b"\x00"),
        (b"/v1/items/x", b"Bearer \x01" + key),
        (b"/v1/items/x", b"Bearer " + b"k" * 9000),
        (b"/v1/items/\xff", b"Bearer " + key),
        (b"/v1/items/\xc3\xa9", b"Bearer " + key),
        (b"/v1/items/a\x00b", b"Bearer " + key),
        (b"/v1/items/x/rewards?as_of=\x7f", b"Bearer " + key),
    ):
        answer = await raw_http(api.base_url, _request(target, authorization))
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:300]


# --- query strings and instants: strict like the bodies -------------------------------------

GUARDED_GETS = [
    ("GET", "/v1/items/q1"),
    ("GET", "/v1/items/q1/similar"),
    ("GET", "/v1/items/q1/rewards"),
    ("GET", "/v1/users/q1/discover"),
    ("GET", "/v1/admin/status"),
    ("DELETE", "/v1/items/never-q"),
    ("POST", "/v1/admin/index/rebuild"),
]


@pytest.mark.parametrize(("method", "path"), GUARDED_GETS)
@pytest.mark.parametrize("query", ["asof=2020-01-01T00:00:00Z", "N=3", "x=1", "=0", "n=2&debug"])
async def test_an_unknown_query_parameter_is_422_naming_it(
    api: Api, method: str, path: str, query: str
) -> None:
    """A misspelt `?asof=` must not silently mean "now" (found by schemathesis)."""
    name = next(p.partition("=")[0] for p in query.split("&") if p.partition("=")[0] != "n")
    reply = await api.request(method, f"{path}?{query}", encoded=True)
    problem = expect_problem(reply, 422, name)
    assert "unknown query parameter" in problem["detail"]


@pytest.mark.parametrize(
    "instant",
    ["0", "1700000000", "2026-03-02T12:00Z", "2026-03-02 12:00:00Z", "2026-03-02T12:00:00",
     "2026-03-02T12:00:00.1234567891Z", "2026-02-30T12:00:00Z", "2026-03-02T12:00:00+24:00",
     "+2026-03-02T12:00:00Z", "2026-03-02T12:00:00Z\n", "２０２６-03-02T12:00:00Z"],
)  # fmt: skip
async def test_instants_are_rfc_3339_only(api: Api, db: asyncpg.Connection, instant: str) -> None:
    """pydantic alone takes "0" as 1970 and "1700000000" as epoch seconds (found by
    schemathesis on `as_of`); both `as_of` and `occurred_at` now take RFC 3339 only."""
    events = await db.fetchval("SELECT count(*) FROM events")
    reply = await api.post("/v1/outcomes", {"outcomes": [_outcome(occurred_at=instant)]})
    expect_problem(reply, 422, "outcomes[0].occurred_at")
    reply = await api.request(
        "GET", f"/v1/items/x/rewards?as_of={quote(instant, safe='')}", encoded=True
    )
    expect_problem(reply, 422, "as_of")
    assert await db.fetchval("SELECT count(*) FROM events") == events


@pytest.mark.parametrize(
    ("instant", "stored"),
    [
        ("2026-03-02T12:00:00Z", "2026-03-02T12:00:00+00:00"),
        ("2026-03-02t12:00:00z", "2026-03-02T12:00:00+00:00"),
        ("2026-03-02T13:30:00+01:30", "2026-03-02T12:00:00+00:00"),
        ("2026-03-02T12:00:00.5-00:00", "2026-03-02T12:00:00.500000+00:00"),
        ("2026-03-02T12:00:00.123456789Z", "2026-03-02T12:00:00.123456+00:00"),  # Go's Nano
    ],
)
async def test_rfc_3339_instants_are_accepted(
    api: Api, db: asyncpg.Connection, instant: str, stored: str
) -> None:
    o = _outcome(occurred_at=instant)
    reply = await api.post("/v1/outcomes", {"outcomes": [o]})
    assert reply.status == 200, reply.body
    payload = await db.fetchval(
        "SELECT payload::text FROM events WHERE event_id = $1", uuid.UUID(o["event_id"])
    )
    got = datetime.fromisoformat(orjson.loads(payload)["occurred_at"])
    assert got == datetime.fromisoformat(stored)
    reply = await api.request(
        "GET", f"/v1/items/{o['item_id']}/rewards?as_of={quote(instant, safe='')}", encoded=True
    )
    assert reply.status in (200, 404), reply.body  # 404: the outcome's item is not catalogued
    if reply.status == 404:
        expect_problem(reply, 404, "item_id")
