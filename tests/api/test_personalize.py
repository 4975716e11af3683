"""The Personalize-compatible routes driven by AWS's own SDK: boto3's `personalize-runtime` and
`personalize-events` clients, pointed with `endpoint_url` at the real gateway over real HTTP,
signing with a key `segue keys create --aws` printed. Nothing sits between the SDK and the
gateway; what the calls did is then read back from the log, the projections and `segue
evaluate`.

boto3 is synchronous: its calls run in a thread, while the gateway answers on this test's loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore
import botocore.auth
import pytest
from aiohttp import ClientSession, ClientTimeout
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner

from gateway.cli.main import main
from gateway.http.auth import Scope, create_key
from tests.api.conftest import Api, connected, serving

CREDENTIALS_KEY = base64.b64encode(b"k" * 32).decode()
REGION = "us-east-1"
ACCOUNT = "123456789012"
SURFACES = {"my-campaign": "home", "my-ranking": "search"}
EVENT_TYPES = {"watch": "stream_start"}
GATEWAY_SETTINGS: dict[str, Any] = {
    "credentials_key": CREDENTIALS_KEY,
    "personalize_surfaces": SURFACES,
    "personalize_event_types": EVENT_TYPES,
}


def arn(kind: str, name: str) -> str:
    return f"arn:aws:personalize:{REGION}:{ACCOUNT}:{kind}/{name}"


CAMPAIGN = arn("campaign", "my-campaign")
RANKING = arn("campaign", "my-ranking")
ITEMS_DATASET = arn("dataset", "my-group/ITEMS")
USERS_DATASET = arn("dataset", "my-group/USERS")


@dataclass
class Calls:
    """Every SDK call the clients made, by operation, whatever its answer."""

    made: list[str] = field(default_factory=list)

    def count(self, **kwargs: Any) -> None:
        self.made.append(kwargs["model"].name)


CALLS = Calls()


@pytest.fixture(scope="session", autouse=True)
def _report_calls() -> Iterator[None]:
    yield
    if CALLS.made:
        by_op: dict[str, int] = {}
        for name in CALLS.made:
            by_op[name] = by_op.get(name, 0) + 1
        print(
            f"\nboto3 {boto3.__version__} / botocore {botocore.__version__}: "
            f"{len(CALLS.made)} SDK calls {by_op}"
        )


def segue_cli(db_url: str, *args: str, **env: str) -> str:
    result = CliRunner().invoke(main, list(args), env={"SEGUE_DATABASE_URL": db_url, **env})
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def aws_key(db_url: str, scopes: str = "recommend,ingest,catalog") -> tuple[str, str]:
    """`segue keys create --aws` as a user runs it: (access key id, secret)."""
    out = segue_cli(
        db_url,
        *("keys", "create", "--aws", "--name", "sdk-test", "--scopes", scopes),
        SEGUE_CREDENTIALS_KEY=CREDENTIALS_KEY,
    )
    lines = dict(line.split(" = ", 1) for line in out.strip().splitlines())
    return lines["aws_access_key_id"], lines["aws_secret_access_key"]


@dataclass(frozen=True)
class Sdk:
    runtime: Any
    events: Any


def clients(url: str, key_id: str, secret: str, region: str = REGION, **config: Any) -> Sdk:
    session = boto3.session.Session(
        aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=region
    )
    # One attempt: a retry would hide an answer the test wants to see.
    cfg = Config(retries={"max_attempts": 1, "mode": "standard"}, **config)
    made = Sdk(
        session.client("personalize-runtime", endpoint_url=url, config=cfg),
        session.client("personalize-events", endpoint_url=url, config=cfg),
    )
    for client in (made.runtime, made.events):
        client.meta.events.register("before-call", CALLS.count)
    return made


async def call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, **kwargs)


async def error_of(fn: Callable[..., Any], **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        await call(fn, **kwargs)
    return caught.value


def code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


@pytest.fixture
async def gateway(db_url: str) -> AsyncIterator[str]:
    async with serving(db_url, **GATEWAY_SETTINGS) as url:
        yield url


@pytest.fixture
def key(db_url: str) -> tuple[str, str]:
    return aws_key(db_url)


@pytest.fixture
def sdk(gateway: str, key: tuple[str, str]) -> Sdk:
    return clients(gateway, *key)


@pytest.fixture
async def admin(gateway: str, db_url: str) -> AsyncIterator[Api]:
    async with connected(db_url) as conn:
        _, bearer = await create_key(conn, "admin", frozenset(Scope))
    async with ClientSession(timeout=ClientTimeout(total=60)) as session:
        yield Api(gateway, bearer, session)


TRACKS = [f"pt-{i}" for i in range(8)]


async def put_catalogue(sdk: Sdk) -> None:
    await call(
        sdk.events.put_items,
        datasetArn=ITEMS_DATASET,
        items=[
            {"itemId": t, "properties": json.dumps({"genre": "jazz", "position": i})}
            for i, t in enumerate(TRACKS[:5])
        ],
    )
    await call(
        sdk.events.put_items,
        datasetArn=ITEMS_DATASET,
        items=[{"itemId": t, "properties": json.dumps({"kind": "episode"})} for t in TRACKS[5:]],
    )


async def events_of(db_url: str, event_type: str) -> list[dict[str, Any]]:
    async with connected(db_url) as conn:
        rows = await conn.fetch(
            "SELECT payload FROM events WHERE event_type = $1 ORDER BY global_position",
            event_type,
        )
    return [json.loads(r[0]) if isinstance(r[0], str) else dict(r[0]) for r in rows]


async def test_recommend_then_track_through_the_sdk(db_url: str, sdk: Sdk) -> None:
    await put_catalogue(sdk)
    items = await events_of(db_url, "ItemUpserted")
    assert [i["item_id"] for i in items] == TRACKS
    assert items[0]["kind"] == "track"
    assert items[0]["attributes"] == {
        "genre": "jazz",
        "position": 0,
    }
    assert items[5]["kind"] == "episode"

    got = await call(
        sdk.runtime.get_recommendations, campaignArn=CAMPAIGN, userId="listener-1", numResults=3
    )
    slate = [i["itemId"] for i in got["itemList"]]
    assert len(slate) == 3
    assert set(slate) <= set(TRACKS)
    rid = got["recommendationId"]
    [served] = await events_of(db_url, "RecommendationServed")
    assert served["recommendation_id"] == rid
    assert served["surface"] == "home"
    assert [s["item_id"] for s in served["slate"]] == slate

    await call(
        sdk.events.put_events,
        trackingId="tracker-1",
        userId="listener-1",
        sessionId="session-1",
        eventList=[
            {
                "eventId": "e-1",
                "eventType": "click",
                "itemId": slate[0],
                "recommendationId": rid,
                "impression": slate,
                "sentAt": datetime.now(UTC),
            },
            {
                "eventType": "watch",
                "eventValue": 42.5,
                "itemId": slate[0],
                "recommendationId": rid,
                "sentAt": datetime.now(UTC),
            },
        ],
    )
    outcomes = await events_of(db_url, "OutcomeRecorded")
    kinds = sorted((o["kind"], o["item_id"]) for o in outcomes)
    assert kinds == sorted(
        [("click", slate[0]), ("stream_start", slate[0])] + [("impression", s) for s in slate]
    )
    assert all(o["recommendation_id"] == rid for o in outcomes)
    assert next(o for o in outcomes if o["kind"] == "stream_start")["value"] == 42.5
    # The listener is a pseudonym in the log, as on the /v1 routes.
    assert all(o["user"] != "listener-1" for o in outcomes)
