"""The Personalizer-compatible routes, called by the official client `azure-ai-personalizer`
(sync and async) over real HTTP against the real app: nothing between the SDK and the gateway is
replaced. Every test then reads what the calls left behind: the log, the projections,
`segue evaluate`.

Sync clients block, so their calls run in a thread while the gateway serves in the test's loop.
Every SDK call goes through `COUNT`, a pipeline policy that counts the requests the clients send
(the number is in docs/personalizer.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from aiohttp import ClientSession, ClientTimeout
from azure.ai.personalizer import PersonalizerAdministrationClient, PersonalizerClient
from azure.ai.personalizer.aio import PersonalizerAdministrationClient as AioAdministrationClient
from azure.ai.personalizer.aio import PersonalizerClient as AioClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy

from domain.events import ItemUpserted, OutcomeKind, RecommendationDeferred
from domain.ranking import PolicyParams
from gateway.http.auth import Scope
from gateway.http.personalizer import paths
from gateway.serving.personalizer import recommendation_id
from tests.api.conftest import Api, KeyMaker, index_built, projections_caught_up, serving
from tests.api.served import Gateway as ServedGateway
from tests.api.served import run
from tests.api.test_endpoints import recorded_outcomes, served_events, stored
from tests.integration.projection_helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class Counting(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Counts the requests the SDK sends, by method and path (without the query)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def on_request(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
        path = request.http_request.url.split("/personalizer", 1)[1].split("?")[0]
        route = re.sub(r"/events/[^/]+/", "/events/{eventId}/", path)
        self.calls[f"{request.http_request.method} {route}"] += 1


COUNT = Counting()


@pytest.fixture(scope="module", autouse=True)
def _count_calls() -> Iterator[None]:
    """Print the SDK calls the module made (`pytest -s`); docs/personalizer.md gives the sum,
    with the guide sample's 5 calls, made by a client of its own."""
    yield
    print(f"\nSDK calls: {COUNT.calls.total()} {dict(sorted(COUNT.calls.items()))}")


@dataclass
class Gateway:
    url: str
    key: str
    db: asyncpg.Connection
    api: Api

    def sync(self, key: str | None = None) -> PersonalizerClient:
        return PersonalizerClient(
            self.url, AzureKeyCredential(key or self.key), per_call_policies=[COUNT]
        )

    def aio(self, key: str | None = None) -> AioClient:
        return AioClient(self.url, AzureKeyCredential(key or self.key), per_call_policies=[COUNT])

    def admin(self) -> PersonalizerAdministrationClient:
        return PersonalizerAdministrationClient(
            self.url, AzureKeyCredential(self.key), per_call_policies=[COUNT]
        )

    def aio_admin(self) -> AioAdministrationClient:
        return AioAdministrationClient(
            self.url, AzureKeyCredential(self.key), per_call_policies=[COUNT]
        )


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A sync SDK call, off the loop the gateway serves in."""
    return await asyncio.to_thread(fn, *args, **kwargs)


WAIT = 2.0  # the reward wait time these gateways run with, in seconds
DEFAULT_REWARD = -0.25


@pytest.fixture
async def gateway(
    db_url: str, make_key: KeyMaker, db: asyncpg.Connection
) -> AsyncIterator[Gateway]:
    key = await make_key(Scope.RECOMMEND, Scope.INGEST, Scope.CATALOG, Scope.ADMIN)
    async with (
        serving(
            db_url,
            run_index_builder=False,
            personalizer_reward_wait_seconds=WAIT,
            personalizer_default_reward=DEFAULT_REWARD,
        ) as url,
        ClientSession(timeout=ClientTimeout(total=30)) as session,
    ):
        yield Gateway(url, key, db, Api(url, key, session))


ARTICLES: list[dict[str, Any]] = [
    {"id": "sports", "features": [{"topic": "sports", "length": 320}, {"editor": {"pick": True}}]},
    {"id": "politics", "features": [{"topic": "politics", "length": 900}]},
    {"id": "food", "features": [{"topic": "food", "length": 450, "tags": ["recipe", "vegan"]}]},
    {"id": "weather", "features": []},
]
CONTEXT = [{"timeOfDay": "morning", "device": {"os": "android"}}, {"weekday": True}]


def rank_request(event_id: str | None = None, **more: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contextFeatures": CONTEXT, "actions": ARTICLES, **more}
    if event_id is not None:
        body["eventId"] = event_id
    return body


async def test_rank_and_reward_with_the_sync_client(gateway: Gateway) -> None:
    client = gateway.sync()
    answer = await call(client.rank, rank_request("ev-1", excludedActions=["politics"]))
    assert answer["eventId"] == "ev-1"
    ranked = [r["id"] for r in answer["ranking"]]
    assert sorted(ranked[:3]) == ["food", "sports", "weather"]
    assert ranked[3] == "politics"  # excluded: last, never chosen
    assert answer["ranking"][3]["probability"] == 0
    assert answer["rewardActionId"] == ranked[0]
    assert all(0 < r["probability"] <= 1 for r in answer["ranking"][:3])
    # A retry of the same rank is answered with the slate already logged.
    assert await call(client.rank, rank_request("ev-1", excludedActions=["politics"])) == answer
    await call(client.reward, "ev-1", {"value": 0.8})
    await call(client.reward, "ev-1", {"value": 0.1})  # the first reward counts
    # Without an event id, the gateway makes one, which the reward then names.
    fresh = await call(client.rank, rank_request())
    await call(client.reward, fresh["eventId"], {"value": 1})
    client.close()

    # The log: each action an item of kind `action` with its features and a content vector.
    upserts = [e for e in await stored(gateway.db, "ItemUpserted") if isinstance(e, ItemUpserted)]
    items = {e.item_id: e for e in upserts}
    assert set(items) == {"sports", "politics", "food", "weather"}
    assert all(e.kind == "action" for e in items.values())
    assert items["food"].attributes == {"features": ARTICLES[2]["features"]}
    assert items["food"].vector is not None
    assert len(items["food"].vector) == 64
    assert items["weather"].vector is None  # no features, no content
    assert len(await stored(gateway.db, "ItemUpserted")) == 4  # unchanged actions: no upsert

    # A rank is a slate on the `personalizer` surface among the actions, event id -> rec id.
    logged = await served_events(gateway.db)
    assert set(logged) == {recommendation_id("ev-1"), recommendation_id(fresh["eventId"])}
    slate = logged[recommendation_id("ev-1")]
    assert slate.surface == "personalizer"
    assert slate.candidates == ("sports", "politics", "food", "weather")
    assert slate.exclude == ("politics",)
    assert slate.kinds == ("action",)
    assert slate.context == {"contextFeatures": CONTEXT}
    assert [(s.item_id, s.propensity) for s in slate.slate] == [
        (r["id"], r["probability"]) for r in answer["ranking"][:3]
    ]

    # A reward is an outcome of kind `reward` on the chosen action, valued as sent.
    outcomes = await recorded_outcomes(gateway.db)
    assert [(o.recommendation_id, o.item_id, o.kind, o.value) for o in outcomes] == [
        (recommendation_id("ev-1"), answer["rewardActionId"], OutcomeKind.REWARD, 0.8),
        (recommendation_id(fresh["eventId"]), fresh["rewardActionId"], OutcomeKind.REWARD, 1.0),
    ]
    assert {o.user for o in outcomes} == {slate.user}


async def test_deferred_activation_with_the_async_client(gateway: Gateway) -> None:
    async with gateway.aio() as client:
        shown = await client.rank(rank_request("shown", deferActivation=True))
        never = await client.rank(rank_request("never", deferActivation=True))
        # Drawn, not shown: no slate is served, and a reward before activation is ignored.
        assert await served_events(gateway.db) == {}
        await client.reward("shown", {"value": 1.0})
        await client.reward("never", {"value": 1.0})
        assert await recorded_outcomes(gateway.db) == []
        deferred = await stored(gateway.db, RecommendationDeferred.TYPE)
        assert len(deferred) == 2
        await client.activate("shown")
        await client.activate("shown")  # again: nothing more
        # A retried rank finds the slate, served or not.
        assert await client.rank(rank_request("never", deferActivation=True)) == never
        await client.reward("shown", {"value": 0.5})

    logged = await served_events(gateway.db)
    assert list(logged) == [recommendation_id("shown")]
    slate = logged[recommendation_id("shown")]
    first = deferred[0]
    assert isinstance(first, RecommendationDeferred)
    assert first.served.slate == slate.slate  # the slate drawn is the slate served
    assert slate.slate[0].item_id == shown["rewardActionId"]
    assert slate.requested_at > first.served.requested_at  # shown when activated
    outcomes = await recorded_outcomes(gateway.db)
    assert [(o.recommendation_id, o.value) for o in outcomes] == [(recommendation_id("shown"), 0.5)]
    # The reward wait ends: "shown" was rewarded in time; "never" was never shown, so it gets
    # no default reward either.
    await asyncio.sleep(WAIT + 2)
    assert len(await recorded_outcomes(gateway.db)) == 1
    assert never["rewardActionId"] is not None


async def test_multi_slot_rank_reward_and_activation(gateway: Gateway) -> None:
    slots = [
        {"id": "hero", "baselineAction": "sports", "features": [{"size": "large"}]},
        {"id": "side", "baselineAction": "food", "excludedActions": ["politics", "sports"]},
        {"id": "footer", "baselineAction": "weather"},
    ]
    body = {"contextFeatures": CONTEXT, "actions": ARTICLES, "slots": slots}
    async with gateway.aio() as client:
        answer = await client.rank_multi_slot({**body, "eventId": "page-1"})
        await client.reward_multi_slot(
            "page-1", {"reward": [{"slotId": "hero", "value": 1.0}, {"slotId": "side", "value": 0}]}
        )
        deferred = await client.rank_multi_slot(
            {**body, "eventId": "page-2", "deferActivation": True}
        )
        await client.activate_multi_slot("page-2")
    client_sync = gateway.sync()
    await call(
        client_sync.reward_multi_slot, "page-2", {"reward": [{"slotId": "footer", "value": 0.3}]}
    )
    again = await call(client_sync.rank_multi_slot, {**body, "eventId": "page-1"})
    client_sync.close()
    assert again == answer

    for ranked in (answer, deferred):
        given = {s["id"]: s["rewardActionId"] for s in ranked["slots"]}
        assert list(given) == ["hero", "side", "footer"]
        assert len(set(given.values())) == 3  # an action fills one slot
        assert given["side"] not in {"politics", "sports"}
    logged = await served_events(gateway.db)
    assert set(logged) == {recommendation_id("page-1"), recommendation_id("page-2")}
    assert logged[recommendation_id("page-1")].context == {
        "contextFeatures": CONTEXT,
        "slots": slots,
    }
    got = {(o.recommendation_id, o.item_id, o.value) for o in await recorded_outcomes(gateway.db)}
    page1 = {s["id"]: s["rewardActionId"] for s in answer["slots"]}
    page2 = {s["id"]: s["rewardActionId"] for s in deferred["slots"]}
    assert got == {
        (recommendation_id("page-1"), page1["hero"], 1.0),
        (recommendation_id("page-1"), page1["side"], 0.0),
        (recommendation_id("page-2"), page2["footer"], 0.3),
    }


async def test_the_default_reward_applies_after_the_wait_time(gateway: Gateway) -> None:
    async with gateway.aio() as client:
        late = await client.rank(rank_request("late"))
        on_time = await client.rank(rank_request("on-time"))
        await client.reward("on-time", {"value": 0.9})
        slots = [{"id": "a", "baselineAction": "food"}, {"id": "b", "baselineAction": "sports"}]
        await client.rank_multi_slot({"actions": ARTICLES, "slots": slots, "eventId": "page"})
        await client.reward_multi_slot("page", {"reward": [{"slotId": "a", "value": 0.6}]})

        async def defaults_given() -> bool:
            return len(await recorded_outcomes(gateway.db)) == 4

        await eventually(defaults_given, "the default rewards")
        # After the wait time a reward is ignored, as Personalizer ignores it.
        await client.reward("late", {"value": 1.0})
    got = {(o.recommendation_id, o.item_id, o.value) for o in await recorded_outcomes(gateway.db)}
    page = await served_events(gateway.db)
    slate = page[recommendation_id("page")]
    assert got == {
        (recommendation_id("on-time"), on_time["rewardActionId"], 0.9),
        (recommendation_id("late"), late["rewardActionId"], DEFAULT_REWARD),
        (recommendation_id("page"), slate.slate[0].item_id, 0.6),
        (recommendation_id("page"), slate.slate[1].item_id, DEFAULT_REWARD),
    }
    for o in await recorded_outcomes(gateway.db):
        if o.value == DEFAULT_REWARD:
            assert o.recommendation_id is not None
            logged = page[o.recommendation_id]
            assert o.occurred_at == logged.requested_at + timedelta(seconds=WAIT)


async def test_the_service_configuration_the_sdk_reads(gateway: Gateway) -> None:
    admin = gateway.admin()
    config = await call(admin.get_service_configuration)
    policy = await call(admin.get_policy)
    admin.close()
    async with gateway.aio_admin() as aio_admin:
        assert await aio_admin.get_service_configuration() == config
    assert config["rewardWaitTime"] == "PT2S"
    assert config["defaultReward"] == DEFAULT_REWARD
    assert config["explorationPercentage"] == PolicyParams().epsilon
    assert config["rewardAggregation"] == "earliest"
    assert config["modelExportFrequency"] == "PT10M"
    assert config["logRetentionDays"] == -1
    assert policy["name"].startswith(PolicyParams().name)
    assert "--epsilon 0.03" in policy["arguments"]


async def test_errors_reach_the_sdk_in_personalizers_shape(
    gateway: Gateway, make_key: KeyMaker
) -> None:
    with (
        gateway.sync("sk_nope_nope") as stranger,
        pytest.raises(ClientAuthenticationError) as denied,
    ):
        await call(stranger.rank, rank_request())
    assert denied.value.status_code == 401
    assert denied.value.error is not None
    assert denied.value.error.code == "Unauthorized"
    ranker = await make_key(Scope.RECOMMEND)
    with gateway.sync() as sync_client:
        await call(sync_client.rank, rank_request("e"))
    async with gateway.aio(ranker) as client:
        with pytest.raises(HttpResponseError) as forbidden:
            await client.reward("e", {"value": 1})
        assert forbidden.value.status_code == 403
        assert "ingest" in str(forbidden.value.message)
    async with gateway.aio() as client:
        with pytest.raises(ResourceNotFoundError) as unknown:
            await client.reward("no-such-event", {"value": 1})
        assert unknown.value.error is not None
        assert unknown.value.error.code == "ResourceNotFound"
        with pytest.raises(ResourceNotFoundError):
            await client.activate("no-such-event")
        with pytest.raises(HttpResponseError) as too_big:
            await client.reward("e", {"value": 2})
        assert too_big.value.status_code == 400
        assert too_big.value.error is not None
        assert too_big.value.error.code == "BadRequest"
        assert "value" in str(too_big.value.error.message)
        with pytest.raises(HttpResponseError) as all_excluded:
            await client.rank(rank_request(excludedActions=[a["id"] for a in ARTICLES]))
        assert "excluded" in str(all_excluded.value.message)
        deep: dict[str, Any] = {"x": 1}
        for _ in range(7):
            deep = {"x": deep}
        with pytest.raises(HttpResponseError) as too_deep:
            await client.rank({"contextFeatures": [deep], "actions": ARTICLES})
        assert too_deep.value.status_code == 400
        assert "nested" in str(too_deep.value.message)
        with pytest.raises(HttpResponseError) as twice:
            await client.rank({"actions": [ARTICLES[0], ARTICLES[0]]})
        assert twice.value.status_code == 400
        with pytest.raises(HttpResponseError) as reused:
            await client.rank(rank_request("e", excludedActions=["food"]))
        assert reused.value.status_code == 409
        assert reused.value.error is not None
        assert reused.value.error.code == "Conflict"
        assert "event id 'e' was used before" in str(reused.value.error.message)
    # An action id that names a catalogue item of another kind is not taken over.
    put = await gateway.api.put("/v1/items/tr-1", {"kind": "track"})
    assert put.status == 200, put.body
    with gateway.sync() as sync_client, pytest.raises(HttpResponseError) as taken:
        await call(sync_client.rank, {"actions": [{"id": "tr-1", "features": []}]})
    assert taken.value.status_code == 409
    old = PersonalizerClient(
        gateway.url,
        AzureKeyCredential(gateway.key),
        api_version="2099-01-01",
        per_call_policies=[COUNT],
    )
    with old, pytest.raises(ResourceNotFoundError):
        await call(old.rank, rank_request())


async def test_the_listener_header_and_the_erasure_check(gateway: Gateway) -> None:
    async with gateway.aio() as client:
        await client.rank(rank_request("mine"), headers={"X-Segue-User-Id": "reader-7"})
        with pytest.raises(HttpResponseError) as named:
            await client.rank(
                {"contextFeatures": [{"user": "reader-7"}], "actions": ARTICLES},
                headers={"X-Segue-User-Id": "reader-7"},
            )
        assert named.value.status_code == 400
        assert "contextFeatures[0].user" in str(named.value.message)
    logged = await served_events(gateway.db)
    pseudonym = logged[recommendation_id("mine")].user
    forgotten = await gateway.api.post("/v1/users/reader-7/forget")
    assert forgotten.status == 202
    assert (
        await gateway.db.fetchval("SELECT count(*) FROM listeners WHERE pseudonym = $1", pseudonym)
        == 0
    )


async def test_the_versioned_rest_paths_of_older_clients(gateway: Gateway) -> None:
    headers = {"Ocp-Apim-Subscription-Key": gateway.key}
    api = gateway.api
    for version in ("v1.0", "v1.1-preview.3"):
        base = f"/personalizer/{version}"
        ranked = await api.post(
            f"{base}/rank", rank_request(f"old-{version}"), key=None, headers=headers
        )
        assert ranked.status == 201, ranked.body
        assert ranked.json()["eventId"] == f"old-{version}"
        rewarded = await api.post(
            f"{base}/events/old-{version}/reward", {"value": 0.4}, key=None, headers=headers
        )
        assert rewarded.status == 204, rewarded.body
        activated = await api.post(
            f"{base}/events/old-{version}/activate", key=None, headers=headers
        )
        assert activated.status == 204
        config = await api.get(f"{base}/configurations/service", key=None, headers=headers)
        assert config.status == 200
        assert config.json()["rewardWaitTime"] == "PT2S"
    slots = {"actions": ARTICLES, "slots": [{"id": "s", "baselineAction": "food"}], "eventId": "ms"}
    base = "/personalizer/v1.1-preview.3/multislot"
    assert (await api.post(f"{base}/rank", slots, key=None, headers=headers)).status == 201
    reward = {"reward": [{"slotId": "s", "value": 1}]}
    assert (
        await api.post(f"{base}/events/ms/reward", reward, key=None, headers=headers)
    ).status == 204
    # v1.0 had no multi-slot; no version at all needs the SDK's api-version.
    assert (
        await api.post("/personalizer/v1.0/multislot/rank", slots, key=None, headers=headers)
    ).status == 404
    bare = await api.post("/personalizer/rank", rank_request(), key=None, headers=headers)
    assert bare.status == 400
    assert bare.json()["error"]["code"] == "BadRequest"
    # A Segue key as a bearer token works too (what a token credential sends).
    bearer = await api.post("/personalizer/v1.0/rank", rank_request())
    assert bearer.status == 201
    assert len(await recorded_outcomes(gateway.db)) == 3


async def test_actions_are_served_only_where_asked_for(gateway: Gateway) -> None:
    items = [{"item_id": f"tr-{i}", "kind": "track"} for i in range(5)]
    assert (await gateway.api.post("/v1/items", {"items": items})).status == 200
    with gateway.sync() as sync_client:
        await call(sync_client.rank, rank_request("r"))
    for surface in ("home", "shelf", "music"):
        reply = await gateway.api.post(
            "/v1/recommendations", {"user_id": "u1", "surface": surface, "n": 20}
        )
        assert reply.status == 200, reply.body
        assert {i["item_id"] for i in reply.json()["items"]} <= {f"tr-{i}" for i in range(5)}


def segue_evaluate(db_url: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "evaluate", "--json", *args],
        cwd=ROOT,
        env={**os.environ, "SEGUE_DATABASE_URL": db_url, "SEGUE_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


async def test_projections_and_segue_evaluate_see_the_rewards(
    gateway: Gateway, db_url: str, tmp_path: Path
) -> None:
    rewards: dict[str, float] = {}
    async with gateway.aio() as client:
        for i in range(12):
            answer = await client.rank(rank_request(f"e{i}"))
            value = 1.0 if answer["rewardActionId"] == "food" else 0.25
            await client.reward(f"e{i}", {"value": value})
            rewards[answer["rewardActionId"]] = rewards.get(answer["rewardActionId"], 0) + value
        await client.rank(rank_request("hidden", deferActivation=True))  # never activated
    await projections_caught_up(gateway.api)
    for action, total in rewards.items():
        reply = await gateway.api.get(f"/v1/items/{action}/rewards")
        assert reply.status == 200, reply.body
        by_surface = reply.json()["by_surface"]
        assert by_surface["personalizer"]["reward"]["sum"] == pytest.approx(total)
    # The analysts' views weigh a reward by its value, as the projection does.
    viewed = await gateway.db.fetchval(
        "SELECT sum(reward)::float8 FROM analytics.attributed_outcomes "
        "WHERE surface = 'personalizer'"
    )
    assert viewed == pytest.approx(sum(rewards.values()))
    result = segue_evaluate(
        db_url, tmp_path, "--target", "uniform", "--reward", "reward", "--surface", "personalizer"
    )
    assert result["slates"] == 12  # the deferred rank that was never shown is not evaluated
    # Segue evaluates per served position: 12 slates of the 4 actions, rewarded at the top.
    assert result["ipw"]["rounds"] == 48
    assert result["logged"]["estimate"] == pytest.approx(sum(rewards.values()) / 48)
    for name in ("ipw", "snipw", "dm", "dr"):
        assert result[name]["estimate"] is not None
    # Segue's own policy, re-run on each logged rank: among that rank's actions only.
    current = segue_evaluate(
        db_url, tmp_path, "--target", "current", "--reward", "reward", "--surface", "personalizer"
    )
    assert current["slates"] == 12
    assert current["ipw"]["estimate"] is not None


def sample(marker: str) -> str:
    """The code block after `<!-- marker -->` in the migration guide."""
    text = (ROOT / "docs" / "personalizer.md").read_text()
    block = text.split(f"<!-- {marker} -->", 1)[1].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


async def test_the_migration_guide_sample_runs(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    before, after = sample("personalizer-before"), sample("personalizer-after")
    # Switching is a change of endpoint and key, and nothing else.
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert changed == [
        ('endpoint = os.environ["PERSONALIZER_ENDPOINT"]', 'endpoint = os.environ["SEGUE_URL"]'),
        ('key = os.environ["PERSONALIZER_KEY"]', 'key = os.environ["SEGUE_KEY"]'),
    ]
    monkeypatch.setenv("SEGUE_URL", gateway.url)
    monkeypatch.setenv("SEGUE_KEY", gateway.key)
    scope: dict[str, Any] = {}
    await call(exec, compile(after, "docs/personalizer.md", "exec"), scope)
    scope["client"].close()
    logged = await served_events(gateway.db)
    ids = {
        recommendation_id(scope["response"]["eventId"]),
        recommendation_id(scope["later"]["eventId"]),
    }
    assert set(logged) == ids
    rewards = sorted((o.value or 0.0) for o in await recorded_outcomes(gateway.db))
    assert rewards == sorted([1.0 if scope["chosen"] == "curry" else 0.0, 0.5])
    assert logged[recommendation_id(scope["response"]["eventId"])].exclude == ("salad",)


async def test_every_route_wants_a_key_with_its_scope(gateway: Gateway, make_key: KeyMaker) -> None:
    keys = {scope: await make_key(scope) for scope in Scope}
    for route, path, versioned in paths():
        url = path.replace("{eventId}", "e") + (
            "" if versioned else "?api-version=2022-09-01-preview"
        )
        body: dict[str, Any] | None = {} if route.method == "POST" else None
        missing = await gateway.api.request(route.method, url, json=body, key=None)
        assert missing.status == 401, (path, missing.body)
        assert missing.json()["error"]["code"] == "Unauthorized"
        for scope, key in keys.items():
            headers = {"Ocp-Apim-Subscription-Key": key}
            reply = await gateway.api.request(
                route.method, url, json=body, key=None, headers=headers
            )
            if scope is route.scope:
                assert reply.status not in (401, 403), (path, reply.body)
            else:
                assert reply.status == 403, (path, scope, reply.body)


async def test_the_sdk_against_segue_serve(
    served: ServedGateway,
    db: asyncpg.Connection,
) -> None:
    """As an operator runs it: `segue serve` in a process of its own, a key from `segue keys
    create`, the async client pointed at it."""
    code, out, err = await run(
        sys.executable,
        "-m",
        "gateway.cli",
        *("keys", "create", "--name", "personalizer", "--scopes", "recommend,ingest"),
        env=served.env,
        cwd=served.cwd,
        limit_s=60,
    )
    assert code == 0, err
    key = out.strip()
    async with AioClient(served.url, AzureKeyCredential(key), per_call_policies=[COUNT]) as client:
        answer = await client.rank(rank_request("served-1", excludedActions=["weather"]))
        await client.reward("served-1", {"value": 0.7})
    async with AioAdministrationClient(
        served.url, AzureKeyCredential(key), per_call_policies=[COUNT]
    ) as admin:
        config = await admin.get_service_configuration()
    assert config["rewardWaitTime"] == "PT10M"  # Personalizer's default, Segue's too
    assert config["defaultReward"] == 0
    slate = (await served_events(db))[recommendation_id("served-1")]
    assert slate.slate[0].item_id == answer["rewardActionId"]
    assert slate.exclude == ("weather",)
    [reward] = await recorded_outcomes(db)
    assert (reward.item_id, reward.kind, reward.value) == (
        answer["rewardActionId"],
        OutcomeKind.REWARD,
        0.7,
    )


async def test_action_features_reach_the_index(gateway: Gateway) -> None:
    """An index build embeds the actions, their hashed features blended in, and later ranks
    are scored with it (affinity of the listener to each action)."""
    async with gateway.aio() as client:
        for i in range(6):
            answer = await client.rank(rank_request(f"pre-{i}"))
            await client.reward(f"pre-{i}", {"value": 1.0})
        await projections_caught_up(gateway.api)
        version = await index_built(gateway.api)
        await client.rank(rank_request("post"))
    assert answer["rewardActionId"] is not None
    logged = await served_events(gateway.db)
    assert logged[recommendation_id("post")].index_version == version
    similar = await gateway.api.get("/v1/items/food/similar?n=3")
    assert similar.status == 200, similar.body
    near = {i["item_id"] for i in similar.json()["items"]}
    assert near
    assert near <= {"sports", "politics", "weather"}
