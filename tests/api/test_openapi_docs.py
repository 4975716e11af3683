"""/openapi.json as a reader of /docs needs it: every parameter, every request body whole, an
answer schema for every status, and an example of every call; the examples are checked against
the schemas, sent to a real gateway (the success examples must succeed, the problem examples must
be what the gateway answers); /docs and / serve their pages and files to anyone, with nothing
loaded from elsewhere.

The browser's view of the same pages is tests/api/test_docs_browser.py.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import BaseModel

import gateway
from domain.events import OutcomeKind
from gateway.http import docs
from gateway.http import examples as ex
from gateway.http.auth import Scope
from gateway.http.endpoint import Endpoint
from gateway.http.openapi import build_spec, path_param
from gateway.http.problems import PROBLEM_JSON
from gateway.http.routes import ENDPOINTS
from gateway.http.schemas import Problem
from gateway.serving.requests import ItemKind, Surface
from tests.api.conftest import Api, KeyMaker, projections_caught_up, serving

SPEC = build_spec(ENDPOINTS)
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]


def _ids(ep: Endpoint) -> str:
    return f"{ep.method} {ep.path}"


def operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = SPEC["paths"][ep.path][ep.method.lower()]
    return op


def media_examples(media: dict[str, Any]) -> list[Any]:
    if "examples" in media:
        return [e["value"] for e in media["examples"].values()]
    return [media["example"]] if "example" in media else []


def fits(schema: dict[str, Any], value: Any) -> list[str]:
    """Why `value` does not fit `schema` (a schema of this document, refs and all), if it does
    not. The components ride along so that `#/components/...` resolves."""
    whole = {"components": SPEC["components"], "allOf": [schema]}
    checker = Draft202012Validator(whole, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in checker.iter_errors(value)
    ]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


# --- the document ---------------------------------------------------------------------------


def test_the_description_is_valid_openapi_3_1() -> None:
    validate(SPEC)
    assert SPEC["openapi"] == "3.1.0"
    assert SPEC["info"]["version"] == gateway.__version__
    assert SPEC["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for ref in refs(SPEC):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in SCHEMAS, ref
    assert {t["name"] for t in SPEC["tags"]} == {ep.tag for ep in ENDPOINTS}


@pytest.mark.parametrize("ep", ENDPOINTS, ids=_ids)
def test_every_parameter_is_described_with_an_example(ep: Endpoint) -> None:
    op = operation(ep)
    published = {(p["in"], p["name"]): p for p in op.get("parameters", [])}
    expected = {("path", name) for name in re.findall(r"{(\w+)}", ep.path)}
    expected |= {("query", q.name) for q in ep.query}
    if ep.idempotent:
        expected.add(("header", "Idempotency-Key"))
    assert set(published) == expected
    for (where, name), p in published.items():
        assert p["schema"], (where, name)
        assert p.get("description"), (where, name)
        assert "example" in p, (where, name)
        assert not fits(p["schema"], p["example"]), (where, name)
        assert p["required"] == (where == "path"), (where, name)


@pytest.mark.parametrize("ep", ENDPOINTS, ids=_ids)
def test_every_answer_has_a_schema_and_an_example(ep: Endpoint) -> None:
    op = operation(ep)
    responses = op["responses"]
    assert str(ep.status) in responses
    expected = set()
    if ep.body is not None:
        expected |= {"400", "413", "415", "422"}
    if ep.scope is not None:
        expected |= {"401", "403", "422", "429", "503"}
    assert expected <= set(responses), sorted(expected - set(responses))
    for status, answer in responses.items():
        assert answer["description"], status
        assert answer["content"], f"{status} has no content"
        for kind, media in answer["content"].items():
            assert "schema" in media, (status, kind)
            for example in media_examples(media):
                if kind.endswith("json"):
                    assert not fits(media["schema"], example), (status, kind, example)
                else:
                    assert isinstance(example, str), (status, kind)
        examples = [e for m in answer["content"].values() for e in media_examples(m)]
        assert examples, f"{status} has no example"
        if status.startswith(("4", "5")) and ep.path != "/readyz":
            assert set(answer["content"]) == {PROBLEM_JSON}, status
            assert answer["content"][PROBLEM_JSON]["schema"]["$ref"].endswith("/Problem")
            assert examples[0]["status"] == int(status)
            Problem.model_validate_json(orjson.dumps(examples[0]))
    if ep.response is not None:
        schema = responses[str(ep.status)]["content"][ep.content_type]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{ep.response.__name__}"}


@pytest.mark.parametrize("ep", [ep for ep in ENDPOINTS if ep.body is not None], ids=_ids)
def test_every_request_body_is_published_whole_with_an_example(ep: Endpoint) -> None:
    assert ep.body is not None
    media = operation(ep)["requestBody"]["content"]["application/json"]
    name = ep.body.__name__
    assert media["schema"] == {"$ref": f"#/components/schemas/{name}"}
    # Every field the model takes, nested models included, is in the components.
    seen: set[str] = set()

    def check(model: type[BaseModel]) -> None:
        if model.__name__ in seen:
            return
        seen.add(model.__name__)
        published = SCHEMAS[model.__name__]
        assert set(published["properties"]) == set(model.model_fields), model.__name__
        required = {n for n, f in model.model_fields.items() if f.is_required()}
        assert set(published.get("required", [])) == required, model.__name__
        assert published.get("additionalProperties") is False, model.__name__
        for f in model.model_fields.values():
            for arg in _models_in(f.annotation):
                check(arg)

    check(ep.body)
    bodies = media_examples(media)
    assert bodies, "no example body"
    for body in bodies:
        assert not fits(media["schema"], body), body
        ep.body.model_validate_json(orjson.dumps(body))  # the model takes it too


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _models_in(arg)


@pytest.mark.parametrize("ep", [ep for ep in ENDPOINTS if ep.response is not None], ids=_ids)
def test_success_examples_are_what_the_answer_model_prints(ep: Endpoint) -> None:
    """Parsed by the answer's own model and printed again, each example comes back unchanged:
    it is written exactly as the gateway writes that answer."""
    assert ep.response is not None
    assert ep.example is not None
    parsed = ep.response.model_validate_json(orjson.dumps(ep.example.response))
    assert orjson.loads(parsed.model_dump_json()) == ep.example.response


def test_outcome_kinds_are_the_domains() -> None:
    assert SCHEMAS["OutcomeKind"]["enum"] == [k.value for k in OutcomeKind]
    assert SCHEMAS["OutcomeIn"]["properties"]["kind"] == {
        "$ref": "#/components/schemas/OutcomeKind"
    }
    assert SCHEMAS["OutcomesIn"]["properties"]["outcomes"]["items"] == {
        "$ref": "#/components/schemas/OutcomeIn"
    }
    assert SCHEMAS["ItemKind"]["enum"] == [k.value for k in ItemKind]
    assert SCHEMAS["Surface"]["enum"] == [s.value for s in Surface]


def test_the_bundled_swagger_ui_reads_openapi_3_1() -> None:
    """Swagger UI renders 3.1 documents from 5.0 on; an older bundle shows an error instead."""
    bundle, _ = docs.asset_bytes("swagger-ui-bundle.js")
    found = re.search(rb'PACKAGE_VERSION:"(\d+)\.(\d+)\.(\d+)"', bundle)
    assert found, "no version in swagger-ui-bundle.js"
    assert int(found[1]) >= 5, found[0]


# --- against a real gateway -----------------------------------------------------------------

# Every route once, in an order where each example can succeed: the catalogue first, the slates
# before their outcomes, retirement last.
ORDER = [
    ("PUT", "/v1/items/{item_id}"),
    ("POST", "/v1/items"),
    ("GET", "/v1/items/{item_id}"),
    ("GET", "/v1/items/{item_id}/similar"),
    ("POST", "/v1/recommendations"),
    ("POST", "/v1/blends"),
    ("GET", "/v1/users/{user_id}/discover"),
    ("POST", "/v1/outcomes"),
    ("GET", "/v1/items/{item_id}/rewards"),
    ("GET", "/v1/admin/status"),
    ("POST", "/v1/admin/index/rebuild"),
    ("GET", "/v1/admin/dashboard"),
    ("GET", "/v1/admin/dashboard/series"),
    ("POST", "/v1/admin/projections/rebuild"),
    ("POST", "/v1/admin/experiments"),
    ("GET", "/v1/admin/experiments"),
    ("GET", "/v1/admin/experiments/{name}"),
    ("POST", "/v1/admin/experiments/{name}/stop"),
    ("POST", "/v1/admin/experiments/{name}/ship"),
    ("POST", "/v1/users/{user_id}/forget"),
    ("DELETE", "/v1/items/{item_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
    ("GET", "/docs"),
    ("GET", "/docs/static/{asset}"),
    ("GET", "/metrics"),
    ("GET", "/admin"),
]


def example_call(ep: Endpoint) -> tuple[str, dict[str, str]]:
    """The path (with its query) and headers of `ep`'s example, from the published examples."""
    path = ep.path
    for name in re.findall(r"{(\w+)}", ep.path):
        path = path.replace("{" + name + "}", str(path_param(name, ep).example))
    query = "&".join(f"{q.name}={q.example}" for q in ep.query)
    headers = {}
    for p in operation(ep).get("parameters", []):
        if p["in"] == "header":
            headers[p["name"]] = str(p["example"])
    return path + ("?" + query if query else ""), headers


async def test_every_example_call_succeeds_on_a_real_gateway(api: Api) -> None:
    by_route = {(ep.method, ep.path): ep for ep in ENDPOINTS}
    assert sorted(ORDER) == sorted(by_route), "a route is missing from ORDER"
    answers: dict[tuple[str, str], Any] = {}
    for route in ORDER:
        ep = by_route[route]
        assert ep.example is not None, _ids(ep)
        if route == ("GET", "/v1/items/{item_id}/rewards"):
            await projections_caught_up(api)  # the rewards projection must have started
        if route == ("POST", "/v1/admin/experiments/{name}/stop"):
            # The stop example stops an experiment of its own (the start example's is shipped).
            start = by_route[("POST", "/v1/admin/experiments")].example
            assert start is not None
            other = {**start.request, "name": ex.STOPPED_EXPERIMENT, "surfaces": ["music"]}
            assert (await api.post("/v1/admin/experiments", other)).status == 200
        path, headers = example_call(ep)
        reply = await api.request(ep.method, path, json=ep.example.request, headers=headers or None)
        assert reply.status == ep.status, (_ids(ep), reply.body[:500])
        kinds = ep.content_types or (ep.content_type,)
        assert reply.content_type in kinds, (_ids(ep), reply.content_type)
        if ep.response is not None:
            answer = ep.response.model_validate_json(reply.body)
            assert answer.model_fields_set == set(ep.example.response), _ids(ep)
            answers[route] = reply.json()
    # The attributed variant works once its recommendation_id is one this gateway served.
    slate = answers[("POST", "/v1/recommendations")]
    outcomes = by_route[("POST", "/v1/outcomes")].example
    assert outcomes is not None
    assert outcomes.variants
    body = outcomes.variants[0].request
    refused = await api.post("/v1/outcomes", body)
    assert refused.status == 422, refused.body
    assert refused.json()["type"].endswith("unknown-recommendation"), refused.body
    fixed = [
        {
            **o,
            "recommendation_id": slate["recommendation_id"],
            "item_id": slate["items"][0]["item_id"],
        }
        for o in body["outcomes"]
    ]
    accepted = await api.post("/v1/outcomes", {"outcomes": fixed})
    assert accepted.status == 200, accepted.body
    assert accepted.json() == {"accepted": 2, "duplicates": 0}


def problem_example(ep: Endpoint, status: int) -> dict[str, Any]:
    media = operation(ep)["responses"][str(status)]["content"][PROBLEM_JSON]
    example: dict[str, Any] = media["example"]
    return example


async def test_the_problem_examples_are_what_the_gateway_answers(
    db_url: str, make_key: KeyMaker
) -> None:
    """Each problem a test can provoke cheaply, provoked on every route that documents it: the
    answer is the example, word for word (409, 429 and 503 are illustrations)."""
    key = await make_key(*Scope)
    checked: set[tuple[str, str, int]] = set()
    async with (
        serving(db_url, max_body_bytes=1024) as url,
        ClientSession(timeout=ClientTimeout(total=30)) as session,
    ):
        api = Api(url, key, session)

        async def expect(ep: Endpoint, status: int, path: str, **kw: Any) -> None:
            reply = await api.request(ep.method, path, **kw)
            assert reply.status == status, (_ids(ep), reply.body)
            assert reply.json() == problem_example(ep, status), _ids(ep)
            checked.add((ep.method, ep.path, status))

        for ep in ENDPOINTS:
            path, _ = example_call(ep)
            path = path.partition("?")[0]
            if ep.scope is not None:
                await expect(ep, 401, path, key=None)
                lacking = await make_key(*(s for s in Scope if s != ep.scope))
                await expect(ep, 403, path, key=lacking)
                if ep.body is None:
                    await expect(ep, 422, path + "?limit=1")
            if ep.body is not None:
                ct = {"Content-Type": "application/json"}
                await expect(ep, 400, path, data=b"{", headers=ct)
                await expect(ep, 415, path, data=b"{}", headers={"Content-Type": "text/plain"})
                await expect(ep, 413, path, data=b"{}" + b" " * 2048, headers=ct)
                await expect(ep, 422, path, json={})
            if "404" in operation(ep)["responses"]:
                if ep.path.startswith("/docs/static/"):
                    path = "/docs/static/nothing.js"
                # A route with a body reads it before it looks the name up.
                body = {"json": ep.example.request} if ep.body and ep.example else {}
                await expect(ep, 404, path, **body)
    documented = {
        (ep.method, ep.path, int(s))
        for ep in ENDPOINTS
        for s in operation(ep)["responses"]
        if s.startswith(("4", "5")) and s not in ("409", "429", "503")
    }
    assert documented == checked, sorted(documented - checked)


# --- the pages ------------------------------------------------------------------------------


async def test_docs_page_and_its_files_are_served_by_the_gateway(api: Api) -> None:
    reply = await api.get("/docs", key=None)
    assert reply.status == 200
    assert reply.content_type == "text/html"
    policy = reply.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    page = reply.text()
    assert page.lower().startswith("<!doctype html>")
    assert 'id="swagger-ui"' in page
    linked = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert set(linked) >= {f"{docs.STATIC}{name}" for name in docs.ASSETS}
    assert "//" not in "".join(u for u in linked if u != "/openapi.json"), linked
    for url in linked:
        assert url.startswith("/"), url  # this gateway's own
        got = await api.get(url, key=None)
        assert got.status == 200, url
    for name, asset in docs.ASSETS.items():
        raw = await api.get(docs.STATIC + name, key=None, headers={"Accept-Encoding": "identity"})
        assert raw.status == 200, name
        assert raw.content_type == asset.content_type, name
        assert raw.body == docs.asset_bytes(name)[0], name
        assert "Content-Encoding" not in raw.headers, name
        # aiohttp's client would undo the gzip itself; read it raw to see what was sent.
        async with api.session.get(
            api.base_url + docs.STATIC + name,
            headers={"Accept-Encoding": "gzip"},
            auto_decompress=False,
        ) as packed:
            assert packed.headers["Content-Encoding"] == "gzip", name
            assert gzip.decompress(await packed.read()) == raw.body, name
    start = (await api.get(docs.STATIC + "segue-docs.js", key=None)).text()
    assert 'url: "/openapi.json"' in start
    assert "persistAuthorization: false" in start


@pytest.mark.parametrize(
    ("header", "gzipped"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("*", True),
        ("gzip;q=0", False),
        ("identity", False),
        ("", False),
        ("gzip;q=junk", False),
    ],
)
def test_accept_encoding(header: str, gzipped: bool) -> None:
    assert docs.accepts_gzip(header) is gzipped


async def test_an_unknown_asset_is_a_404_problem(api: Api) -> None:
    for path in ("/docs/static/../../pyproject.toml", "/docs/static/%2e%2e%2fsettings.py"):
        reply = await api.get(path, key=None, encoded=True)
        assert reply.status == 404, path
        assert reply.content_type == PROBLEM_JSON


async def test_landing_page_links_every_service_page(api: Api) -> None:
    reply = await api.get("/", key=None)
    assert reply.status == 200
    assert reply.content_type == "text/html"
    page = reply.text()
    assert f'<span id="version">{gateway.__version__}</span>' in page
    links = re.findall(r'<a href="([^"]+)"', page)
    assert links == ["/docs", "/openapi.json", "/healthz", "/readyz", "/metrics", "/admin"]
    routed = {ep.path for ep in ENDPOINTS if ep.method == "GET"}
    for link in links:
        if link not in routed:
            # The admin dashboard is its own piece of work; until it is served the link waits.
            assert link == "/admin", link
            continue
        got = await api.get(link, key=None)
        assert got.status == 200, (link, got.body[:300])
