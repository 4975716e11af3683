"""Every field of every endpoint is validated at the edge: a bad request is a 4xx problem+json that
names the offending field, never a 500, never a silent drop, and never a partial write.

The tables below go field by field (missing, wrong type, out of range, malformed, unknown extra,
NUL characters, non-finite numbers, ...), then body by body (not JSON, empty, too large, wrong
content type, invalid UTF-8, lone surrogates), for every endpoint that takes a body.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from gateway.serving.requests import (
    MAX_ITEMS,
    MAX_JSON_DEPTH,
    MAX_JSON_NODES,
    MAX_OUTCOMES,
    ItemKind,
)
from gateway.settings import Settings
from tests.api.conftest import Api, count_events, expect_problem
from tests.conftest import unhandled_loop_errors_fail

# Hundreds of small requests that each leave the data as they found it (or add fresh ids only):
# one gateway and database for the whole module keeps the run fast.
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


DROP: Any = ...  # in `outcome(...)` and friends: leave this field out altogether

MAX_BODY = Settings.model_fields["max_body_bytes"].default
assert isinstance(MAX_BODY, int)
ITEM = "/v1/items/it1"
ITEMS, OUTCOMES, RECS = "/v1/items", "/v1/outcomes", "/v1/recommendations"


def _with(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not DROP}


def outcome(**changes: Any) -> dict[str, Any]:
    base = {"event_id": str(uuid.uuid4()), "user_id": "u1", "item_id": "it1", "kind": "save"}
    return _with(base, changes)


def outcomes(**changes: Any) -> dict[str, Any]:
    """A batch whose second outcome is `outcome(**changes)`: the field names its index, 1."""
    return {"outcomes": [outcome(), outcome(**changes)]}


def rec(**changes: Any) -> dict[str, Any]:
    return _with({"user_id": "u1", "surface": "home", "n": 5}, changes)


def item(**changes: Any) -> dict[str, Any]:
    return _with({"item_id": "it1", "kind": "track", "attributes": {"artist": "a"}}, changes)


def items(**changes: Any) -> dict[str, Any]:
    """A batch whose second item is `item(**changes)`."""
    return {"items": [item(item_id="it0"), item(**changes)]}


def body(**changes: Any) -> dict[str, Any]:
    """A PUT /v1/items/it1 body."""
    return _with({"kind": "track", "attributes": {"artist": "a"}}, changes)


def raw(document: Any, **literals: str) -> bytes:
    """`document` as JSON, with every string "<name>" replaced by the raw JSON text
    `literals[name]`: how to send what no JSON encoder will write (1e400, NaN, lone surrogates)."""
    out = orjson.dumps(document)
    for name, text in literals.items():
        out = out.replace(f'"<{name}>"'.encode(), text.encode())
    return out


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"k": value}
    return value


NUL = "a\x00b"
LONG = "x" * 257

OUTCOME_FIELDS = [
    # event_id
    ("event_id", DROP, "outcomes[1].event_id"),
    ("event_id", None, "outcomes[1].event_id"),
    ("event_id", 123, "outcomes[1].event_id"),
    ("event_id", "not-a-uuid", "outcomes[1].event_id"),
    ("event_id", "", "outcomes[1].event_id"),
    ("event_id", "6f1c0f7e-8d6a-4a77-9d3f-1b2c3d4e5f6", "outcomes[1].event_id"),
    ("event_id", "6f1c0f7e-8d6a-4a77-9d3f-1b2c3d4e5f6z", "outcomes[1].event_id"),
    ("event_id", ["6f1c0f7e-8d6a-4a77-9d3f-1b2c3d4e5f60"], "outcomes[1].event_id"),
    # user_id
    ("user_id", DROP, "outcomes[1].user_id"),
    ("user_id", None, "outcomes[1].user_id"),
    ("user_id", 7, "outcomes[1].user_id"),
    ("user_id", {"x": 1}, "outcomes[1].user_id"),
    ("user_id", "", "outcomes[1].user_id"),
    ("user_id", LONG, "outcomes[1].user_id"),
    ("user_id", NUL, "outcomes[1].user_id"),
    # item_id
    ("item_id", DROP, "outcomes[1].item_id"),
    ("item_id", 5, "outcomes[1].item_id"),
    ("item_id", "", "outcomes[1].item_id"),
    ("item_id", LONG, "outcomes[1].item_id"),
    ("item_id", NUL, "outcomes[1].item_id"),
    # kind
    ("kind", DROP, "outcomes[1].kind"),
    ("kind", "teleport", "outcomes[1].kind"),
    ("kind", "", "outcomes[1].kind"),
    ("kind", "SAVE", "outcomes[1].kind"),
    ("kind", 3, "outcomes[1].kind"),
    ("kind", None, "outcomes[1].kind"),
    # recommendation_id
    ("recommendation_id", "nope", "outcomes[1].recommendation_id"),
    ("recommendation_id", 12, "outcomes[1].recommendation_id"),
    ("recommendation_id", "", "outcomes[1].recommendation_id"),
    # value
    ("value", "lots", "outcomes[1].value"),
    ("value", "31000", "outcomes[1].value"),
    ("value", True, "outcomes[1].value"),
    ("value", -1, "outcomes[1].value"),
    ("value", 1e13, "outcomes[1].value"),
    ("value", [1], "outcomes[1].value"),
    # occurred_at
    ("occurred_at", "yesterday", "outcomes[1].occurred_at"),
    ("occurred_at", "2024-01-01T12:00:00", "outcomes[1].occurred_at"),  # naive: no time zone
    ("occurred_at", "2024-01-01", "outcomes[1].occurred_at"),
    ("occurred_at", "2024-13-01T00:00:00Z", "outcomes[1].occurred_at"),
    ("occurred_at", 1_700_000_000, "outcomes[1].occurred_at"),
    ("occurred_at", "", "outcomes[1].occurred_at"),
    # unknown extra field
    ("extra", 1, "outcomes[1].extra"),
    ("userId", "u1", "outcomes[1].userId"),
]

REC_FIELDS = [
    ("user_id", DROP, "user_id"),
    ("user_id", None, "user_id"),
    ("user_id", 1, "user_id"),
    ("user_id", "", "user_id"),
    ("user_id", LONG, "user_id"),
    ("user_id", NUL, "user_id"),
    ("surface", "moon", "surface"),
    ("surface", "HOME", "surface"),
    ("surface", "", "surface"),
    ("surface", 1, "surface"),
    ("surface", None, "surface"),
    ("n", 0, "n"),
    ("n", 101, "n"),
    ("n", -1, "n"),
    ("n", 100_000, "n"),
    ("n", "5", "n"),
    ("n", 5.5, "n"),
    ("n", True, "n"),
    ("n", None, "n"),
    ("context", "x", "context"),
    ("context", [1], "context"),
    ("context", {"a": NUL}, "context"),
    ("context", {"a": {"b": [1, {"c": NUL}]}}, "context"),
    ("context", {NUL: 1}, "context"),
    ("context", nested(MAX_JSON_DEPTH + 1), "context"),
    ("context", {"xs": list(range(MAX_JSON_NODES + 1))}, "context"),
    ("candidates", 7, "candidates"),
    ("candidates", "it1", "candidates"),
    ("candidates", [], "candidates"),
    ("candidates", [f"it{i}" for i in range(1001)], "candidates"),
    ("candidates", ["it1", 1], "candidates[1]"),
    ("candidates", ["it1", ""], "candidates[1]"),
    ("candidates", ["it1", LONG], "candidates[1]"),
    ("candidates", ["it1", NUL], "candidates[1]"),
    ("exclude", "it1", "exclude"),
    ("exclude", None, "exclude"),
    ("exclude", [f"it{i}" for i in range(1001)], "exclude"),
    ("exclude", ["it1", 2], "exclude[1]"),
    ("exclude", [NUL], "exclude[0]"),
    ("kinds", ["podcast"], "kinds[0]"),
    ("kinds", ["track", "song"], "kinds[1]"),
    ("kinds", "track", "kinds"),
    ("kinds", [1], "kinds[0]"),
    ("kinds", ["track"] * (len(ItemKind) + 1), "kinds"),
    ("extra", True, "extra"),
]

ITEM_FIELDS = [
    ("item_id", DROP, "items[1].item_id"),
    ("item_id", None, "items[1].item_id"),
    ("item_id", 1, "items[1].item_id"),
    ("item_id", "", "items[1].item_id"),
    ("item_id", LONG, "items[1].item_id"),
    ("item_id", NUL, "items[1].item_id"),
    ("item_id", "it0", "items[1].item_id"),  # the same id twice in one batch
    ("kind", DROP, "items[1].kind"),
    ("kind", "song", "items[1].kind"),
    ("kind", 1, "items[1].kind"),
    ("attributes", "x", "items[1].attributes"),
    ("attributes", [1], "items[1].attributes"),
    ("attributes", {"a": NUL}, "items[1].attributes"),
    ("attributes", {"a": [{"b": {"c": NUL}}]}, "items[1].attributes"),
    ("attributes", {NUL: "a"}, "items[1].attributes"),
    ("attributes", nested(MAX_JSON_DEPTH + 1), "items[1].attributes"),
    ("vector", "x", "items[1].vector"),
    ("vector", [], "items[1].vector"),
    ("vector", [0.5, "1"], "items[1].vector[1]"),
    ("vector", [True], "items[1].vector[0]"),
    ("vector", [0.0] * 1025, "items[1].vector"),
    ("extra", 1, "items[1].extra"),
]

PUT_FIELDS = [
    ("kind", DROP, "kind"),
    ("kind", "song", "kind"),
    ("kind", None, "kind"),
    ("item_id", "other", "item_id"),  # the body's id differs from the path's
    ("item_id", "", "item_id"),
    ("item_id", 1, "item_id"),
    ("attributes", None, "attributes"),
    ("attributes", {"a": NUL}, "attributes"),
    ("attributes", {"deep": {"er": [NUL]}}, "attributes"),
    ("vector", [1, 2, "3"], "vector[2]"),
    ("vector", {"0": 1.0}, "vector"),
    ("vector", [0.0] * 1025, "vector"),
    ("retired", True, "retired"),
]


def _case_id(prefix: str, name: str, value: Any) -> str:
    shown = "missing" if value is DROP else repr(value)
    return f"{prefix}.{name}={shown[:24]}"


def _field_cases() -> list[Any]:
    tables = [
        ("POST", "/v1/outcomes", outcomes, OUTCOME_FIELDS, "outcome"),
        ("POST", "/v1/recommendations", rec, REC_FIELDS, "rec"),
        ("POST", "/v1/items", items, ITEM_FIELDS, "item"),
        ("PUT", ITEM, body, PUT_FIELDS, "put"),
    ]
    return [
        pytest.param(method, path, build(**{name: value}), field, id=_case_id(tag, name, value))
        for method, path, build, table, tag in tables
        for name, value, field in table
    ]


# Whole-document shapes, and the oversized batches.
SHAPE_CASES = [
    pytest.param("/v1/outcomes", {}, "outcomes", id="outcomes-missing"),
    pytest.param("/v1/outcomes", {"outcomes": "x"}, "outcomes", id="outcomes-not-a-list"),
    pytest.param("/v1/outcomes", {"outcomes": None}, "outcomes", id="outcomes-null"),
    pytest.param("/v1/outcomes", {"outcomes": []}, "outcomes", id="outcomes-empty"),
    pytest.param("/v1/outcomes", {"outcomes": [outcome(), "x"]}, "outcomes[1]", id="outcome-str"),
    pytest.param(
        "/v1/outcomes",
        {"outcomes": [outcome() for _ in range(MAX_OUTCOMES + 1)]},
        "outcomes",
        id="outcomes-1001",
    ),
    pytest.param(
        "/v1/outcomes", {"outcomes": [outcome()], "extra": 1}, "extra", id="outcomes-extra"
    ),
    pytest.param("/v1/outcomes", [outcome()], "body", id="outcomes-array-body"),
    pytest.param("/v1/recommendations", {}, "user_id", id="rec-empty-object"),
    pytest.param("/v1/recommendations", [rec()], "body", id="rec-array-body"),
    pytest.param("/v1/recommendations", "u1", "body", id="rec-string-body"),
    pytest.param("/v1/items", {}, "items", id="items-missing"),
    pytest.param("/v1/items", {"items": []}, "items", id="items-empty"),
    pytest.param("/v1/items", {"items": {"it1": item()}}, "items", id="items-not-a-list"),
    pytest.param(
        "/v1/items",
        {"items": [item(item_id=f"it{i}") for i in range(MAX_ITEMS + 1)]},
        "items",
        id="items-1001",
    ),
    pytest.param(ITEM, [body()], "body", id="put-array-body"),
    pytest.param(ITEM, {}, "kind", id="put-empty-object"),
]

# Numbers no JSON encoder writes, sent as raw text: refused with a 422, not stored (nor a 500).
BIG = "1" + "0" * 30  # past 64 bits: valid JSON, but not storable (or re-encodable) faithfully
UNREPRESENTABLE_NUMBERS = [
    (OUTCOMES, outcomes(value="<n>"), "1e400", "outcomes[1].value"),
    (OUTCOMES, outcomes(value="<n>"), "-1e400", "outcomes[1].value"),
    (OUTCOMES, outcomes(value="<n>"), "NaN", "outcomes[1].value"),
    (OUTCOMES, outcomes(value="<n>"), "Infinity", "outcomes[1].value"),
    (ITEMS, items(vector=[1.0, "<n>"]), "1e400", "items[1].vector[1]"),
    (ITEMS, items(vector=["<n>"]), "NaN", "items[1].vector[0]"),
    (ITEM, body(vector=[0.1, 0.2, "<n>"]), "1e400", "vector[2]"),
    (ITEM, body(vector=["<n>"]), "-Infinity", "vector[0]"),
    (ITEM, body(attributes={"x": ["<n>"]}), "1e400", "attributes"),
    (RECS, rec(context={"a": "<n>"}), "1e400", "context"),
    (RECS, rec(context={"a": "<n>"}), "NaN", "context"),
    (RECS, rec(n="<n>"), "1e400", "n"),
    (RECS, rec(n="<n>"), BIG, "n"),
    (RECS, rec(context={"a": "<n>"}), BIG, "context"),
    (RECS, rec(context={"a": ["<n>"]}), "-" + BIG, "context"),
    (ITEMS, items(attributes={"plays": "<n>"}), BIG, "items[1].attributes"),
    (ITEM, body(attributes={"plays": "<n>"}), str(2**64), "attributes"),
]


@pytest.mark.parametrize(("method", "path", "payload", "field"), _field_cases())
async def test_each_bad_field_is_a_422_naming_it(
    api: Api, db: asyncpg.Connection, method: str, path: str, payload: Any, field: str
) -> None:
    before = await count_events(db)
    reply = await api.request(method, path, json=payload)
    problem = expect_problem(reply, 422, field)
    if "errors" in problem:  # validation errors list every field; the first is the one named
        assert problem["errors"][0]["field"] == field
    assert await count_events(db) == before


@pytest.mark.parametrize(("path", "payload", "field"), SHAPE_CASES)
async def test_bad_document_shapes_are_422(
    api: Api, db: asyncpg.Connection, path: str, payload: Any, field: str
) -> None:
    method = "PUT" if path == ITEM else "POST"
    before = await count_events(db)
    reply = await api.request(method, path, json=payload)
    expect_problem(reply, 422, field)
    assert await count_events(db) == before


@pytest.mark.parametrize(
    ("path", "document", "number", "field"),
    [pytest.param(*case, id=f"{case[3]}={case[2][:12]}") for case in UNREPRESENTABLE_NUMBERS],
)
async def test_unrepresentable_numbers_are_refused(
    api: Api, db: asyncpg.Connection, path: str, document: Any, number: str, field: str
) -> None:
    method = "PUT" if path == ITEM else "POST"
    before = await count_events(db)
    reply = await api.request(method, path, data=raw(document, n=number), headers=JSON_CT)
    expect_problem(reply, 422, field)
    assert await count_events(db) == before


# --- bodies, for every endpoint that takes one --------------------------------------------

BODY_ENDPOINTS = [
    pytest.param("POST", "/v1/recommendations", rec(), id="recommendations"),
    pytest.param("POST", "/v1/outcomes", outcomes(), id="outcomes"),
    pytest.param("POST", "/v1/items", items(), id="items"),
    pytest.param("PUT", ITEM, body(), id="put-item"),
]

BODY_ROUTES = [pytest.param(*p.values[:2], id=p.id) for p in BODY_ENDPOINTS]
JSON_CT = {"Content-Type": "application/json"}
UNREADABLE = [
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b'{"user_id": "u1"', id="truncated"),
    pytest.param(b"{} x", id="trailing-garbage"),
    pytest.param(b"{'user_id': 'u1'}", id="single-quotes"),
    pytest.param(b'{"user_id": "u\\ud800"}', id="lone-high-surrogate"),
    pytest.param(b'{"user_id": "\\udc00x"}', id="lone-low-surrogate"),
    pytest.param(b'{"context": {"a": "\\ud83d"}}', id="lone-surrogate-nested"),
    pytest.param(b'{"user_id": "\xff\xfe"}', id="invalid-utf8"),
    pytest.param(b'{"user_id": "caf\xe9"}', id="latin-1-byte"),
    pytest.param(b'{"user_id": "\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
    pytest.param(b"\xef\xbb\xbf\xff", id="bom-then-garbage"),
]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize("payload", UNREADABLE)
async def test_unreadable_bodies_are_400(
    api: Api, db: asyncpg.Connection, method: str, path: str, payload: bytes
) -> None:
    before = await count_events(db)
    reply = await api.request(method, path, data=payload, headers=JSON_CT)
    expect_problem(reply, 400, "body")
    assert await count_events(db) == before


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
@pytest.mark.parametrize("payload", [b"", b"  \r\n\t "], ids=["empty", "whitespace"])
async def test_empty_bodies_are_400(api: Api, method: str, path: str, payload: bytes) -> None:
    reply = await api.request(method, path, data=payload, headers=JSON_CT)
    expect_problem(reply, 400, "body")


@pytest.mark.parametrize(("method", "path", "good"), BODY_ENDPOINTS)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream", "text/json"],
)
async def test_wrong_content_type_is_415(
    api: Api, db: asyncpg.Connection, method: str, path: str, good: Any, content_type: str
) -> None:
    # The body itself is good: only the declared type is wrong.
    before = await count_events(db)
    reply = await api.request(
        method, path, data=orjson.dumps(good), headers={"Content-Type": content_type}
    )
    expect_problem(reply, 415, "Content-Type")
    assert await count_events(db) == before


@pytest.mark.parametrize(("method", "path", "good"), BODY_ENDPOINTS)
async def test_a_body_over_the_limit_is_413(
    api: Api, db: asyncpg.Connection, method: str, path: str, good: Any
) -> None:
    # Valid JSON padded with whitespace: refused for its size alone.
    before = await count_events(db)
    doc = orjson.dumps(good)
    reply = await api.request(
        method, path, data=doc + b" " * (MAX_BODY + 1 - len(doc)), headers=JSON_CT
    )
    expect_problem(reply, 413, "body")
    assert await count_events(db) == before


@pytest.mark.parametrize(("method", "path", "good"), BODY_ENDPOINTS)
async def test_a_body_at_the_limit_is_accepted(api: Api, method: str, path: str, good: Any) -> None:
    """The other side of the 413 edge: the limit itself is allowed, so the test above is about
    size and not about something else in the padded body."""
    doc = orjson.dumps(good)
    reply = await api.request(
        method, path, data=doc + b" " * (MAX_BODY - len(doc)), headers=JSON_CT
    )
    assert reply.status == 200, reply.body[:300]


async def test_a_body_far_over_the_limit_is_413(api: Api) -> None:
    reply = await api.post("/v1/outcomes", data=b"x" * (8 << 20), headers=JSON_CT)
    expect_problem(reply, 413, "body")


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/problem+json"]
)
async def test_json_content_types_with_parameters_or_suffixes_are_accepted(
    api: Api, content_type: str
) -> None:
    reply = await api.post(
        "/v1/recommendations", data=orjson.dumps(rec()), headers={"Content-Type": content_type}
    )
    assert reply.status == 200, reply.body[:300]


# --- path parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize(
    "item_id", ["x" * 257, "%00", "a%00b"], ids=["257-chars", "nul", "embedded-nul"]
)
async def test_bad_path_item_ids_are_422(
    api: Api, db: asyncpg.Connection, method: str, item_id: str
) -> None:
    before = await count_events(db)
    reply = await api.request(method, f"/v1/items/{item_id}", json=body())
    expect_problem(reply, 422, "item_id")
    assert await count_events(db) == before


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        pytest.param("/v1/recommendations", rec(user_id=LONG), "user_id", id="user_id"),
        pytest.param("/v1/outcomes", outcomes(item_id=LONG), "outcomes[1].item_id", id="item_id"),
        pytest.param(f"/v1/items/{LONG}", body(), "item_id", id="path"),
    ],
)
async def test_a_too_long_id_is_explained_in_characters(
    api: Api, path: str, payload: Any, field: str
) -> None:
    """The detail is for people: a string is too long by characters, not by "items"."""
    method = "PUT" if path.startswith("/v1/items/") else "POST"
    problem = expect_problem(await api.request(method, path, json=payload), 422, field)
    assert "at most 256 characters" in problem["detail"], problem["detail"]


async def test_a_path_item_id_of_256_chars_is_accepted(api: Api) -> None:
    item_id = "x" * 256
    reply = await api.put(f"/v1/items/{item_id}", body())
    assert reply.status == 200, reply.body[:300]
    assert reply.json()["item_id"] == item_id


async def test_put_body_item_id_must_match_the_path(api: Api) -> None:
    path_id, body_id = fresh("path"), fresh("body")
    reply = await api.put(f"/v1/items/{path_id}", body(item_id=body_id))
    problem = expect_problem(reply, 422, "item_id")
    assert "path" in problem["detail"]
    # Neither id was created.
    for item_id in (path_id, body_id):
        expect_problem(await api.get(f"/v1/items/{item_id}"), 404, "item_id")
    # The matching id is fine.
    reply = await api.put(f"/v1/items/{path_id}", body(item_id=path_id))
    assert reply.status == 200, reply.body


# --- nothing partial is written -----------------------------------------------------------


async def test_a_batch_whose_last_outcome_is_bad_writes_nothing(
    api: Api, db: asyncpg.Connection
) -> None:
    batch = [outcome(user_id=fresh("listener")) for _ in range(4)] + [outcome(kind="teleport")]
    events, listeners = await count_events(db), await db.fetchval("SELECT count(*) FROM listeners")
    expect_problem(await api.post("/v1/outcomes", {"outcomes": batch}), 422, "outcomes[4].kind")
    assert await count_events(db) == events
    assert await db.fetchval("SELECT count(*) FROM listeners") == listeners
    # Fixed, the same batch goes through whole: the first four were not half-stored before.
    batch[-1]["kind"] = "skip"
    reply = await api.post("/v1/outcomes", {"outcomes": batch})
    assert reply.status == 200, reply.body
    assert reply.json() == {"accepted": 5, "duplicates": 0}
    assert await count_events(db) == events + 5


async def test_a_batch_whose_last_item_is_bad_writes_nothing(
    api: Api, db: asyncpg.Connection
) -> None:
    ids = [fresh("item") for _ in range(4)]
    batch = [item(item_id=i) for i in ids[:3]] + [item(item_id=ids[3], kind="song")]
    before = await count_events(db)
    expect_problem(await api.post("/v1/items", {"items": batch}), 422, "items[3].kind")
    assert await count_events(db) == before
    for item_id in ids:
        expect_problem(await api.get(f"/v1/items/{item_id}"), 404, "item_id")


async def _served(api: Api) -> tuple[str, list[str], list[str]]:
    """A recommendation of 3 out of 6 new items: its id, its slate, the 6 items."""
    ids = [fresh("item") for _ in range(6)]
    reply = await api.post("/v1/items", {"items": [item(item_id=i) for i in ids]})
    assert reply.status == 200, reply.body
    reply = await api.post("/v1/recommendations", rec(n=3, candidates=ids))
    assert reply.status == 200, reply.body
    served = reply.json()
    return served["recommendation_id"], [s["item_id"] for s in served["items"]], ids


async def test_an_outcome_for_an_unknown_recommendation_writes_nothing(
    api: Api, db: asyncpg.Connection
) -> None:
    rec_id, slate, _ = await _served(api)
    before = await count_events(db)
    batch = [
        outcome(item_id=slate[0], recommendation_id=rec_id),
        outcome(),
        outcome(item_id=slate[0], recommendation_id=str(uuid.uuid4())),
    ]
    reply = await api.post("/v1/outcomes", {"outcomes": batch})
    problem = expect_problem(reply, 422, "outcomes[2].recommendation_id")
    assert problem["type"].endswith("/unknown-recommendation")
    assert await count_events(db) == before


async def test_an_outcome_for_an_item_not_in_its_slate_writes_nothing(
    api: Api, db: asyncpg.Connection
) -> None:
    rec_id, slate, ids = await _served(api)
    assert len(slate) == 3
    other = next(i for i in ids if i not in slate)
    before = await count_events(db)
    batch = [
        outcome(item_id=slate[0], recommendation_id=rec_id),
        outcome(item_id=other, recommendation_id=rec_id),
    ]
    reply = await api.post("/v1/outcomes", {"outcomes": batch})
    problem = expect_problem(reply, 422, "outcomes[1].item_id")
    assert problem["type"].endswith("/item-not-in-slate")
    assert await count_events(db) == before
    # Only the offending outcome was wrong: without it the batch is accepted.
    reply = await api.post("/v1/outcomes", {"outcomes": batch[:1]})
    assert reply.json() == {"accepted": 1, "duplicates": 0}
