"""The Personalize-compatible routes driven by AWS's own SDK: boto3's `personalize-runtime` and
`personalize-events` clients, pointed with `endpoint_url` at the real gateway over real HTTP,
signing with a key `segue keys create --aws` printed. Nothing sits between the SDK and the
gateway; what the calls did is then read back from the log, the projections and `segue
evaluate`.

boto3 is synchronous: its calls run in a thread, while the gateway answers on this test's loop.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import difflib
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
from gateway.http import personalize
from gateway.http.auth import Scope, create_key
from gateway.settings import Settings
from tests.api.conftest import Api, connected, projections_caught_up, serving
from tests.api.served import Gateway as ServedGateway
from tests.api.served import run

ROOT = Path(__file__).resolve().parents[2]
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

    # Ranking the caller's list: GetPersonalizedRanking's inputList is the candidates; an item
    # the catalogue does not hold is left out.
    ranked = await call(
        sdk.runtime.get_personalized_ranking,
        campaignArn=RANKING,
        userId="listener-1",
        inputList=[*TRACKS[:4], "not-in-the-catalogue"],
        context={"DEVICE": "phone"},
    )
    order = [i["itemId"] for i in ranked["personalizedRanking"]]
    assert sorted(order) == sorted(TRACKS[:4])
    ranking = (await events_of(db_url, "RecommendationServed"))[-1]
    assert ranking["recommendation_id"] == ranked["recommendationId"]
    assert ranking["surface"] == "search"
    assert ranking["context"] == {"DEVICE": "phone"}
    assert ranking["request"]["candidates"] == [*TRACKS[:4], "not-in-the-catalogue"]

    before = len(await events_of(db_url, "OutcomeRecorded"))
    late = {
        "eventType": "like",
        "itemId": order[0],
        "recommendationId": ranked["recommendationId"],
        "sentAt": datetime(2026, 12, 1, 12, tzinfo=UTC),
    }
    track = {"trackingId": "tracker-1", "userId": "listener-1", "sessionId": "session-2"}
    await call(sdk.events.put_events, **track, eventList=[late])
    # The SDK's retry of the same call (no eventId) is a duplicate, not a second like.
    await call(sdk.events.put_events, **track, eventList=[late])
    # Anonymous: the session is the listener. A recommendation id Personalize issued before
    # the switch attributes nothing, and is not refused.
    await call(
        sdk.events.put_events,
        trackingId="tracker-1",
        sessionId="anonymous-session",
        eventList=[
            {
                "eventType": "stream_30s",
                "itemId": TRACKS[6],
                "recommendationId": "RID-from-personalize",
                "sentAt": datetime.now(UTC),
            }
        ],
    )
    outcomes = await events_of(db_url, "OutcomeRecorded")
    assert len(outcomes) == before + 2
    like, anonymous = outcomes[-2:]
    assert like["kind"] == "like"
    assert like["recommendation_id"] == ranked["recommendationId"]
    assert like["occurred_at"].startswith("2026-12-01T12:00:00")
    assert anonymous["recommendation_id"] is None
    assert anonymous["user"] not in {o["user"] for o in outcomes[:-1]}

    # PutUsers is acknowledged and changes nothing (docs/decisions.md NN).
    async with connected(db_url) as conn:
        count = await conn.fetchval("SELECT count(*) FROM events")
    await call(
        sdk.events.put_users,
        datasetArn=USERS_DATASET,
        users=[{"userId": "listener-1", "properties": json.dumps({"age": "30"})}],
    )
    async with connected(db_url) as conn:
        assert await conn.fetchval("SELECT count(*) FROM events") == count


async def test_what_the_sdk_did_is_projected_and_evaluated(
    db_url: str, sdk: Sdk, admin: Api, tmp_path: Path
) -> None:
    await put_catalogue(sdk)
    clicked: list[str] = []
    for n in range(6):
        got = await call(
            sdk.runtime.get_recommendations,
            recommenderArn=arn("recommender", "home"),
            userId=f"listener-{n}",
            numResults=3,
        )
        top = got["itemList"][0]["itemId"]
        clicked.append(top)
        await call(
            sdk.events.put_events,
            trackingId="tracker-1",
            userId=f"listener-{n}",
            sessionId=f"session-{n}",
            eventList=[
                {
                    "eventId": f"click-{n}",
                    "eventType": "CLICK",
                    "itemId": top,
                    "recommendationId": got["recommendationId"],
                    "sentAt": datetime.now(UTC),
                }
            ],
        )
    await projections_caught_up(admin)
    item = clicked[0]
    rewards = (await admin.get(f"/v1/items/{item}/rewards")).json()
    assert rewards["outcomes"]["click"] == clicked.count(item)
    assert rewards["by_surface"]["home"]["outcomes"]["click"] == clicked.count(item)
    assert rewards["served"] >= clicked.count(item)

    # `segue evaluate`, in a process of its own, on the log the SDK wrote.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *("evaluate", "--target", "uniform", "--reward", "click", "--surface", "home", "--json"),
        env={
            **os.environ,
            "SEGUE_DATABASE_URL": db_url,
            "SEGUE_DATA_DIR": str(tmp_path),
            "PYTHONPATH": str(ROOT),
        },
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["slates"] == 6
    assert result["logged"]["estimate"] > 0  # every slate's top item was clicked


# --- what the SDK raises ----------------------------------------------------------------------


async def test_signature_failures_are_the_errors_the_sdk_expects(
    gateway: str, key: tuple[str, str], sdk: Sdk, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_id, secret = key
    ask = {"campaignArn": CAMPAIGN, "userId": "listener-1", "numResults": 2}

    wrong_secret = clients(gateway, key_id, secret[:-1] + ("x" if secret[-1] != "x" else "y"))
    exc = await error_of(wrong_secret.runtime.get_recommendations, **ask)
    assert code(exc) == "InvalidSignatureException"
    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    wrong_region = clients(gateway, key_id, secret, region="eu-west-1")
    exc = await error_of(wrong_region.runtime.get_recommendations, **ask)
    assert code(exc) == "InvalidSignatureException"
    assert "region" in str(exc)

    # The SDK's own signer, told to sign for another service.
    other_service = clients(gateway, key_id, secret)

    def sign_as_dynamodb(request: Any, **_: Any) -> None:
        request.context.setdefault("signing", {})["signing_name"] = "dynamodb"

    other_service.runtime.meta.events.register("before-sign", sign_as_dynamodb)
    exc = await error_of(other_service.runtime.get_recommendations, **ask)
    assert code(exc) == "InvalidSignatureException"
    assert "service" in str(exc)

    unknown = clients(gateway, "SGAKAAAAAAAAAAAAAAAA", secret)
    exc = await error_of(unknown.runtime.get_recommendations, **ask)
    assert code(exc) == "UnrecognizedClientException"

    unsigned = clients(gateway, key_id, secret, signature_version=botocore.UNSIGNED)
    exc = await error_of(
        unsigned.events.put_users, datasetArn=USERS_DATASET, users=[{"userId": "u"}]
    )
    assert code(exc) == "MissingAuthenticationTokenException"

    # Signed 20 minutes ago by the SDK's clock: past the 15 minutes allowed.
    stale = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=20)
    with monkeypatch.context() as m:
        m.setattr(botocore.auth, "get_current_datetime", lambda: stale)
        exc = await error_of(sdk.runtime.get_recommendations, **ask)
    assert code(exc) == "InvalidSignatureException"
    assert "expired" in str(exc)

    # And the same client, on time, is answered.
    assert "recommendationId" in await call(sdk.runtime.get_recommendations, **ask)


async def test_keys_scopes_and_revocation(db_url: str, gateway: str) -> None:
    # The CLI runs its own event loop: in a thread, beside the gateway's.
    key_id, secret = await asyncio.to_thread(aws_key, db_url, "recommend")
    recommend_only = clients(gateway, key_id, secret)
    exc = await error_of(
        recommend_only.events.put_items,
        datasetArn=ITEMS_DATASET,
        items=[{"itemId": "x"}],
    )
    assert code(exc) == "AccessDeniedException"
    ask = {"campaignArn": CAMPAIGN, "userId": "listener-1"}
    assert (await call(recommend_only.runtime.get_recommendations, **ask))["itemList"] == []

    listed = await asyncio.to_thread(segue_cli, db_url, "keys", "list")
    assert "active (AWS key)" in next(line for line in listed.splitlines() if key_id in line)
    await asyncio.to_thread(segue_cli, db_url, "keys", "revoke", key_id)
    exc = await error_of(recommend_only.runtime.get_recommendations, **ask)
    assert code(exc) == "UnrecognizedClientException"

    # Without SEGUE_CREDENTIALS_KEY no AWS key can be made.
    result = CliRunner().invoke(
        main,
        ["keys", "create", "--aws", "--name", "x", "--scopes", "recommend"],
        env={"SEGUE_DATABASE_URL": db_url, "SEGUE_CREDENTIALS_KEY": ""},
    )
    assert result.exit_code != 0
    assert "SEGUE_CREDENTIALS_KEY" in result.output


async def test_secrets_are_stored_sealed(db_url: str, key: tuple[str, str]) -> None:
    key_id, secret = key
    async with connected(db_url) as conn:
        row = await conn.fetchrow(
            "SELECT key_hash, aws_secret FROM api_keys WHERE key_id = $1", key_id
        )
    assert row is not None
    assert row["key_hash"] is None
    assert secret.encode() not in bytes(row["aws_secret"])


async def test_requests_the_gateway_refuses_as_personalize_would(sdk: Sdk) -> None:
    await put_catalogue(sdk)
    exc = await error_of(
        sdk.runtime.get_recommendations,
        campaignArn=arn("campaign", "no-such-campaign"),
        userId="listener-1",
    )
    assert code(exc) == "ResourceNotFoundException"
    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404

    served = await call(
        sdk.runtime.get_recommendations, campaignArn=CAMPAIGN, userId="u", numResults=2
    )
    rid, slate = served["recommendationId"], [i["itemId"] for i in served["itemList"]]
    elsewhere = next(t for t in TRACKS if t not in slate)

    def one_event(**event: Any) -> dict[str, Any]:
        return {
            "trackingId": "t",
            "sessionId": "s",
            "eventList": [{"eventType": "click", "sentAt": datetime.now(UTC), **event}],
        }

    refusals: list[tuple[Callable[..., Any], dict[str, Any], str]] = [
        (sdk.runtime.get_recommendations, {"campaignArn": CAMPAIGN}, "userId"),
        (sdk.runtime.get_recommendations, {"campaignArn": CAMPAIGN, "userId": "a\x00b"}, "userId"),
        (
            sdk.runtime.get_recommendations,
            {"campaignArn": CAMPAIGN, "userId": "u", "context": {"owner": "u"}},
            "context",
        ),
        (
            sdk.events.put_events,
            one_event(itemId=elsewhere, recommendationId=rid),
            "eventList[0].itemId",
        ),
        (
            sdk.events.put_events,
            one_event(
                itemId=slate[0], recommendationId=rid, impression=[slate[0], slate[0], elsewhere]
            ),
            "eventList[0].impression[2]",
        ),
        (
            sdk.events.put_events,
            one_event(itemId=slate[0], eventValue=-1.0),
            "eventList[0].eventValue",
        ),
        (sdk.events.put_events, one_event(), "eventList[0]: an itemId or an impression"),
        (
            sdk.events.put_items,
            {"datasetArn": ITEMS_DATASET, "items": [{"itemId": "x\x00"}]},
            "items[0].itemId",
        ),
        (
            sdk.runtime.get_recommendations,
            {"campaignArn": CAMPAIGN, "userId": "u", "filterArn": arn("filter", "f")},
            "filterArn",
        ),
        (
            sdk.runtime.get_recommendations,
            {"campaignArn": CAMPAIGN, "userId": "u", "numResults": 501},
            "numResults",
        ),
        (
            sdk.runtime.get_recommendations,
            {"campaignArn": "not-an-arn", "userId": "u"},
            "campaignArn",
        ),
        (
            sdk.runtime.get_personalized_ranking,
            {"campaignArn": RANKING, "userId": "u", "inputList": [f"i{n}" for n in range(101)]},
            "inputList",
        ),
        (
            sdk.events.put_events,
            {
                "trackingId": "t",
                "sessionId": "s",
                "eventList": [
                    {"eventType": "purchase", "itemId": TRACKS[0], "sentAt": datetime.now(UTC)}
                ],
            },
            "eventList[0].eventType",
        ),
        (
            sdk.events.put_events,
            {
                "trackingId": "t",
                "sessionId": "s",
                "eventList": [
                    {
                        "eventType": "click",
                        "itemId": TRACKS[0],
                        "recommendationId": str(uuid.uuid4()),
                        "sentAt": datetime.now(UTC),
                    }
                ],
            },
            "eventList[0].recommendationId",
        ),
        (
            sdk.events.put_items,
            {"datasetArn": ITEMS_DATASET, "items": [{"itemId": "x", "properties": "[1]"}]},
            "items[0].properties",
        ),
    ]
    for fn, kwargs, named in refusals:
        exc = await error_of(fn, **kwargs)
        assert code(exc) == "InvalidInputException", (kwargs, exc)
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert named in str(exc), (named, str(exc))


# --- the migration guide ----------------------------------------------------------------------

GUIDE = ROOT / "docs" / "personalize.md"


def guide_samples() -> dict[str, str]:
    found = re.findall(r"<!-- sample: (\w+) -->\n```python\n(.*?)```", GUIDE.read_text(), re.S)
    return dict(found)


async def run_sample(code: str, env: dict[str, str]) -> tuple[str, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    rid, shown = out.decode().strip().split(" ", 1)
    return rid, ast.literal_eval(shown)


async def test_the_migration_guide_samples_run(
    db_url: str, gateway: str, key: tuple[str, str], tmp_path: Path
) -> None:
    """Both programs of docs/personalize.md, as printed there: the one written for Amazon
    Personalize, pointed at the gateway by its environment only, and the one that names the
    endpoint and a profile holding the lines `segue keys create --aws` printed."""
    samples = guide_samples()
    assert set(samples) == {"before", "after"}
    # The programs differ in how their clients are made, and in nothing else.
    changed = [
        line
        for line in difflib.ndiff(samples["before"].splitlines(), samples["after"].splitlines())
        if line[:2] in ("- ", "+ ")
    ]
    assert changed
    assert all("client(" in line or "Session(" in line or "SEGUE =" in line for line in changed)
    key_id, secret = key
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[segue]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
    )
    # No AWS settings of this machine's: only what each sample is given.
    clean = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
    }
    before = await run_sample(
        samples["before"],
        {
            **clean,
            "AWS_ENDPOINT_URL": gateway,
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
        },
    )
    placeholder = 'SEGUE = "http://127.0.0.1:8080"'
    assert placeholder in samples["after"]
    after = await run_sample(samples["after"].replace(placeholder, f'SEGUE = "{gateway}"'), clean)

    served = {s["recommendation_id"]: s for s in await events_of(db_url, "RecommendationServed")}
    outcomes = await events_of(db_url, "OutcomeRecorded")
    for rid, shown in (before, after):
        assert [s["item_id"] for s in served[rid]["slate"]] == shown
        assert served[rid]["surface"] == "home"
        mine = sorted((o["kind"], o["item_id"]) for o in outcomes if o["recommendation_id"] == rid)
        assert mine == sorted([("click", shown[0])] + [("impression", s) for s in shown])
    # 3 calls each, made in the samples' own processes.
    CALLS.made += ["PutItems", "GetRecommendations", "PutEvents"] * 2


@pytest.mark.parametrize("route", personalize.ROUTES, ids=lambda r: r.operation)
async def test_every_route_needs_a_signature(gateway: str, route: personalize.Route) -> None:
    """Unsigned, or with a bearer key: refused before the body is looked at."""
    async with ClientSession(timeout=ClientTimeout(total=30)) as session:
        for headers, want in (
            ({}, "MissingAuthenticationTokenException"),
            ({"Authorization": "Bearer sk_x_y"}, "IncompleteSignatureException"),
        ):
            async with session.request(
                route.method, gateway + route.path, data=b"{}", headers=headers
            ) as resp:
                assert resp.headers["x-amzn-ErrorType"] == want
                assert resp.status in (400, 403)
                assert isinstance((await resp.json())["message"], str)


async def test_a_gateway_with_another_credentials_key_cannot_verify(
    db_url: str, key: tuple[str, str]
) -> None:
    other = base64.b64encode(b"o" * 32).decode()
    async with serving(db_url, **{**GATEWAY_SETTINGS, "credentials_key": other}) as url:
        sdk = clients(url, *key)
        exc = await error_of(sdk.runtime.get_recommendations, campaignArn=CAMPAIGN, userId="u")
    assert code(exc) == "InternalFailure"
    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 500


async def test_throttled_calls_are_throttling_exceptions(db_url: str, key: tuple[str, str]) -> None:
    async with serving(
        db_url, **GATEWAY_SETTINGS, rate_limit_burst=1, rate_limit_per_second=0.01
    ) as url:
        sdk = clients(url, *key)
        ask = {"campaignArn": CAMPAIGN, "userId": "u"}
        first = await call(sdk.runtime.get_recommendations, **ask)
        # The SDK names the call by the gateway's request id, as it does by AWS's.
        meta = first["ResponseMetadata"]
        assert meta["RequestId"] == meta["HTTPHeaders"]["x-request-id"]
        exc = await error_of(sdk.runtime.get_recommendations, **ask)
    assert code(exc) == "ThrottlingException"
    assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_a_mapping_to_no_surface_or_kind_stops_the_gateway_starting() -> None:
    with pytest.raises(ValueError, match="unknown surface"):
        personalize.check_settings(Settings(personalize_surfaces={"c": "nowhere"}))
    with pytest.raises(ValueError, match="unknown kind"):
        personalize.check_settings(Settings(personalize_item_kind="shirt"))


@pytest.fixture
def served_env() -> dict[str, str]:
    return {
        "SEGUE_CREDENTIALS_KEY": CREDENTIALS_KEY,
        "SEGUE_PERSONALIZE_SURFACES": json.dumps(SURFACES),
        "SEGUE_PERSONALIZE_EVENT_TYPES": json.dumps(EVENT_TYPES),
    }


async def test_the_sdk_against_segue_serve(
    served: ServedGateway,
    served_env: dict[str, str],
    db_url: str,
) -> None:
    """As an operator runs it: `segue serve` in a process of its own, a key from `segue keys
    create --aws` in another, boto3 pointed at it; every call of both clients once."""
    code, out, err = await run(
        sys.executable,
        "-m",
        "gateway.cli",
        *("keys", "create", "--aws", "--name", "served", "--scopes", "recommend,ingest,catalog"),
        env=served.env,
        cwd=served.cwd,
        limit_s=60,
    )
    assert code == 0, err
    lines = dict(line.split(" = ", 1) for line in out.strip().splitlines())
    sdk = clients(served.url, lines["aws_access_key_id"], lines["aws_secret_access_key"])
    await put_catalogue(sdk)
    got = await call(
        sdk.runtime.get_recommendations, campaignArn=CAMPAIGN, userId="listener-9", numResults=3
    )
    slate = [i["itemId"] for i in got["itemList"]]
    ranked = await call(
        sdk.runtime.get_personalized_ranking,
        campaignArn=RANKING,
        userId="listener-9",
        inputList=TRACKS[:4],
    )
    assert sorted(i["itemId"] for i in ranked["personalizedRanking"]) == sorted(TRACKS[:4])
    await call(
        sdk.events.put_events,
        trackingId="tracker-9",
        userId="listener-9",
        sessionId="session-9",
        eventList=[
            {
                "eventId": "served-e-1",
                "eventType": "watch",
                "itemId": slate[0],
                "recommendationId": got["recommendationId"],
                "sentAt": datetime.now(UTC),
            }
        ],
    )
    await call(
        sdk.events.put_users,
        datasetArn=arn("dataset", "users"),
        users=[{"userId": "listener-9", "properties": json.dumps({"plan": "family"})}],
    )
    served_slates = await events_of(db_url, "RecommendationServed")
    assert {s["recommendation_id"] for s in served_slates} >= {got["recommendationId"]}
    [outcome] = await events_of(db_url, "OutcomeRecorded")
    assert outcome["recommendation_id"] == got["recommendationId"]
    assert outcome["kind"] == "stream_start"
