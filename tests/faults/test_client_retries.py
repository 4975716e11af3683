"""Scenario 5: a client retries every request, at once (both copies in flight together) and
after giving up on a first attempt the server was still working on (a client timeout far
shorter than the server's latency). Duplicates are harmless:

- outcomes are idempotent by `event_id`: every retry is a 2xx that counts them as `duplicates`,
  and each event is stored once;
- a recommendation retried with the same `Idempotency-Key` is answered with the slate first
  logged for it (one `RecommendationServed` per key), and the key reused for another request is
  a 422; without a key a retry is a new recommendation (docs/decisions.md);
- catalogue PUTs, batch upserts and DELETEs leave the same state however often they are sent.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from gateway.http.problems import PROBLEM_JSON
from tests.faults.helpers import Gateway, catalogue, make_key, seed_catalogue, summary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Client:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, key: str) -> None:
        self.session = session
        self.base_url = base_url
        self.key = key
        self.timeouts = 0

    async def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a client timeout is what is tested
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, str] | None:
        """The answer, or None if this attempt gave up first."""
        sent = {"Authorization": f"Bearer {self.key}", **(headers or {})}
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                json=body,
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None,
            ) as r:
                raw = await r.read()
                return r.status, orjson.loads(raw) if raw else None, r.content_type
        except TimeoutError:
            self.timeouts += 1
            return None

    async def answer(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """(status, body, content type) of one attempt with the default timeout."""
        got = await self.send(method, path, body, **kw)
        assert got is not None
        return got

    async def retried(
        self, method: str, path: str, body: Any = None, *, first_timeout: float, **kw: Any
    ) -> tuple[list[tuple[int, Any, str]], bool]:
        """A first attempt that gives up after `first_timeout`, then retries until answered.
        Returns every answer received, and whether the first attempt gave up."""
        answers = []
        first = await self.send(method, path, body, timeout=first_timeout, **kw)
        if first is not None:
            answers.append(first)
        while True:
            again = await self.send(method, path, body, **kw)
            assert again is not None
            answers.append(again)
            if again[0] < 500:
                return answers, first is None

    async def twice_at_once(
        self, method: str, path: str, body: Any = None, **kw: Any
    ) -> list[tuple[int, Any, str]]:
        answers = await asyncio.gather(
            self.send(method, path, body, **kw), self.send(method, path, body, **kw)
        )
        assert None not in answers
        return [a for a in answers if a is not None]


def outcomes(rng: random.Random, n: int, recommendation: Any = None) -> list[dict[str, Any]]:
    out = [
        {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "user_id": f"user-{rng.randrange(20)}",
            "item_id": f"it-{rng.randrange(40)}",
            "kind": rng.choice(["stream_30s", "skip", "complete", "save"]),
            "value": rng.randrange(1000, 200_000),
        }
        for _ in range(n)
    ]
    if recommendation is not None:
        assert recommendation["items"], recommendation
        out[0]["recommendation_id"] = recommendation["recommendation_id"]
        out[0]["item_id"] = recommendation["items"][0]["item_id"]
    return out


async def test_every_request_sent_twice_or_retried_after_a_timeout_is_harmless(
    db_url: str, tmp_path: Path
) -> None:
    rng = random.Random(55)
    key = await make_key(db_url)
    sent_events: set[str] = set()
    retries = 0
    late_duplicates = 0  # retries whose first attempt had committed although the client gave up
    async with (
        Gateway(db_url, tmp_path, SEGUE_RUN_INDEX_BUILDER="false") as gateway,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
    ):
        await seed_catalogue(gateway.base_url, key, 40)
        client = Client(session, gateway.base_url, key)

        # Outcomes, both copies at once.
        for _ in range(20):
            batch = outcomes(rng, 10)
            sent_events.update(o["event_id"] for o in batch)
            answers = await client.twice_at_once("POST", "/v1/outcomes", {"outcomes": batch})
            retries += 1
            assert [a[0] for a in answers] == [200, 200], answers
            assert sum(a[1]["accepted"] for a in answers) == 10, answers
            assert sum(a[1]["duplicates"] for a in answers) == 10, answers

        # Outcomes, retried after the client gave up on a first attempt still being served. How
        # long "still being served" lasts depends on the machine's load, so the client's patience
        # adapts: shorter when the first attempt was answered, longer when it gave up before the
        # server had committed anything.
        patience = 0.02
        tries = 0
        while tries < 10 or (late_duplicates < 3 and tries < 40):
            tries += 1
            batch = outcomes(rng, 500)
            sent_events.update(o["event_id"] for o in batch)
            answers, gave_up = await client.retried(
                "POST", "/v1/outcomes", {"outcomes": batch}, first_timeout=patience
            )
            retries += 1
            assert all(a[0] == 200 for a in answers), answers
            last = answers[-1][1]
            assert last["accepted"] + last["duplicates"] == 500
            if not gave_up:
                patience /= 2
            elif last["duplicates"] == 500:
                late_duplicates += 1
            else:
                assert last["accepted"] == 500, "all or nothing"
                patience *= 1.5

        # Recommendations with an Idempotency-Key: the same slate, logged once.
        keyed: dict[str, dict[str, Any]] = {}
        for i in range(15):
            idem = {"Idempotency-Key": str(uuid.uuid4())}
            body = {"user_id": f"user-{i % 5}", "surface": "music", "n": 5}
            at_once = await client.twice_at_once("POST", "/v1/recommendations", body, headers=idem)
            later, gave_up = await client.retried(
                "POST", "/v1/recommendations", body, first_timeout=0.002, headers=idem
            )
            retries += 2
            answers = at_once + later
            assert all(a[0] == 200 for a in answers), answers
            assert len({orjson.dumps(a[1]) for a in answers}) == 1, "one slate per key"
            keyed[idem["Idempotency-Key"]] = answers[0][1]
        blend = {"user_ids": ["user-1", "user-2"], "surface": "home", "n": 4}
        idem = {"Idempotency-Key": "blend-" + str(uuid.uuid4())}
        blends = await client.twice_at_once("POST", "/v1/blends", blend, headers=idem)
        retries += 1
        assert [a[0] for a in blends] == [200, 200]
        assert blends[0][1] == blends[1][1]

        # Outcomes name the slate the retries were answered with.
        for answer in keyed.values():
            batch = outcomes(rng, 2, recommendation=answer)
            sent_events.update(o["event_id"] for o in batch)
            status, body, _ = await client.answer("POST", "/v1/outcomes", {"outcomes": batch})
            assert status == 200, body

        # A key reused for a different request is refused, naming the header.
        reused = next(iter(keyed))
        status, problem, ctype = await client.answer(
            "POST",
            "/v1/recommendations",
            {"user_id": "someone-else", "surface": "home", "n": 5},
            headers={"Idempotency-Key": reused},
        )
        assert (status, ctype) == (422, PROBLEM_JSON), problem
        assert problem["field"] == "Idempotency-Key"
        status, problem, _ = await client.answer(
            "POST",
            "/v1/recommendations",
            {"user_id": "user-1"},
            headers={"Idempotency-Key": "has space"},
        )
        assert status == 422
        assert problem["field"] == "Idempotency-Key"

        # Without a key a retry is a new recommendation: a slate the client never saw.
        plain = await client.twice_at_once(
            "POST", "/v1/recommendations", {"user_id": "user-3", "n": 5}
        )
        assert plain[0][1]["recommendation_id"] != plain[1][1]["recommendation_id"]

        # The catalogue: the same state however often a change is sent.
        item = {"kind": "episode", "attributes": {"show": "retries", "title": "twice"}}
        puts = await client.twice_at_once("PUT", "/v1/items/it-retried", item)
        puts += (await client.retried("PUT", "/v1/items/it-retried", item, first_timeout=0.001))[0]
        assert all(a[0] == 200 for a in puts), puts
        assert len({orjson.dumps({**a[1], "version": 0}) for a in puts}) == 1
        batch_items = {"items": catalogue(5)}
        posts = await client.twice_at_once("POST", "/v1/items", batch_items)
        assert all(a[0] == 200 for a in posts)
        assert [{**it, "version": 0} for it in posts[0][1]["items"]] == [
            {**it, "version": 0} for it in posts[1][1]["items"]
        ]
        deletes = await client.twice_at_once("DELETE", "/v1/items/it-retried")
        deletes.append(await client.answer("DELETE", "/v1/items/it-retried"))
        assert all(a[0] == 200 and a[1]["retired"] for a in deletes), deletes
        assert len({a[1]["version"] for a in deletes}) == 1, "retired once"
        retries += 6
        status, got, _ = await client.answer("GET", "/v1/items/it-retried")
        assert (status, got["retired"], got["attributes"]) == (200, True, item["attributes"])

    conn = await asyncpg.connect(db_url)
    try:
        counts = await conn.fetch(
            "SELECT event_id::text, count(*) FROM events WHERE event_id = ANY($1::uuid[]) "
            "GROUP BY 1",
            list(sent_events),
        )
        assert len(counts) == len(sent_events), "every outcome sent is stored"
        assert all(c[1] == 1 for c in counts), "and stored once"
        for idem_key, answer in keyed.items():
            n = await conn.fetchval(
                "SELECT count(*) FROM events WHERE stream_id = $1",
                f"recommendation-{answer['recommendation_id']}",
            )
            assert n == 1, idem_key
        retired = await conn.fetchval(
            "SELECT count(*) FROM events WHERE stream_id = 'item-it-retried' "
            "AND event_type = 'ItemRetired'"
        )
        assert retired == 1
    finally:
        await conn.close()
    assert client.timeouts > 0, "some first attempts must have given up"
    assert late_duplicates > 0, "some abandoned first attempts must have committed"
    summary(
        "client retries",
        requests_retried=retries,
        first_attempts_abandoned=client.timeouts,
        abandoned_but_committed=late_duplicates,
        outcome_events_checked=len(sent_events),
        keyed_recommendations=len(keyed) + 1,
        patience_ms=round(patience * 1000, 1),
    )
