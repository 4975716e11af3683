"""Every answer carries an `X-Request-Id` (the caller's, if plausible, else a new one), and every
event a request appends records it in its metadata: a client's report, a log line and an event
join on it. The metrics count what the gateway did, by kind."""

from __future__ import annotations

import re
import uuid

import asyncpg
import pytest

from gateway.http.problems import PROBLEM_JSON
from tests.api.conftest import Api

HEX = re.compile(r"[0-9a-f]{32}")


def outcome(user: str = "u-1", item: str = "it-1", kind: str = "stream_30s") -> dict[str, object]:
    return {"event_id": str(uuid.uuid4()), "user_id": user, "item_id": item, "kind": kind}


async def test_the_callers_id_is_echoed_and_recorded_with_the_events(
    api: Api, db: asyncpg.Connection
) -> None:
    r = await api.post(
        "/v1/outcomes",
        {"outcomes": [outcome(), outcome(kind="skip")]},
        headers={"X-Request-Id": "checkout-7f3a:retry-1"},
    )
    assert r.status == 200, r.body
    assert r.headers["X-Request-Id"] == "checkout-7f3a:retry-1"
    rows = await db.fetch(
        "SELECT metadata->>'request_id' FROM events WHERE event_type = 'OutcomeRecorded'"
    )
    assert [row[0] for row in rows] == ["checkout-7f3a:retry-1"] * 2

    r = await api.post("/v1/recommendations", {"user_id": "u-1", "n": 3})
    assert r.status == 200, r.body
    generated = r.headers["X-Request-Id"]
    assert HEX.fullmatch(generated)
    served = await db.fetchval(
        "SELECT metadata->>'request_id' FROM events WHERE event_type = 'RecommendationServed'"
    )
    assert served == generated


@pytest.mark.parametrize(
    "sent", ["", "x" * 129, "two words", "line\tbreak", "ünïcode", "<script>"], ids=repr
)
async def test_an_implausible_id_is_replaced(api: Api, sent: str) -> None:
    r = await api.get("/healthz", headers={"X-Request-Id": sent})
    assert r.status == 200
    assert HEX.fullmatch(r.headers["X-Request-Id"]), r.headers["X-Request-Id"]


async def test_problems_and_unknown_routes_carry_an_id_too(api: Api) -> None:
    bad = await api.post("/v1/outcomes", {"outcomes": []}, headers={"X-Request-Id": "req-1"})
    assert bad.status == 422
    assert bad.content_type == PROBLEM_JSON
    assert bad.headers["X-Request-Id"] == "req-1"
    missing = await api.get("/no/such/route", headers={"X-Request-Id": "req-2"})
    assert missing.status == 404
    assert missing.headers["X-Request-Id"] == "req-2"
    refused = await api.get("/v1/admin/status", key=None, headers={"X-Request-Id": "req-3"})
    assert refused.status == 401
    assert refused.headers["X-Request-Id"] == "req-3"


async def test_a_duplicate_keeps_the_original_requests_id(api: Api, db: asyncpg.Connection) -> None:
    """The log is immutable: a retry under another request id is a duplicate, not a rewrite."""
    sent = outcome()
    first = await api.post("/v1/outcomes", {"outcomes": [sent]}, headers={"X-Request-Id": "a"})
    again = await api.post("/v1/outcomes", {"outcomes": [sent]}, headers={"X-Request-Id": "b"})
    assert first.status == again.status == 200
    stored = await db.fetch(
        "SELECT metadata->>'request_id' FROM events WHERE event_id = $1",
        uuid.UUID(str(sent["event_id"])),
    )
    assert [r[0] for r in stored] == ["a"]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        got_name, _, rest = metric.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if got_name == name and got == wanted:
            return float(value)
    return 0.0


async def test_metrics_count_outcomes_by_kind_slates_by_branch_and_the_pool(api: Api) -> None:
    before = (await api.get("/metrics")).text()
    kinds = ["stream_30s", "stream_30s", "skip", "save"]
    r = await api.post("/v1/outcomes", {"outcomes": [outcome(kind=k) for k in kinds]})
    assert r.status == 200, r.body
    for _ in range(5):
        assert (await api.post("/v1/recommendations", {"user_id": "u-2", "n": 2})).status == 200
    after = (await api.get("/metrics")).text()

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("segue_outcomes_total", kind="stream_30s") == 2
    assert grew("segue_outcomes_total", kind="skip") == 1
    assert grew("segue_outcomes_total", kind="save") == 1
    branches = ("greedy", "uniform", "tail")
    assert sum(grew("segue_slates_total", surface="home", branch=b) for b in branches) == 5
    # The outcomes' append is one group-commit batch of four events, or more batches of fewer.
    assert grew("segue_append_batch_events_sum") >= 4
    assert grew("segue_append_commit_seconds_count") >= 1
    assert sample(after, "segue_pool_connections", state="max") == 10
    assert sample(after, "segue_pool_connections", state="in_use") >= 0
