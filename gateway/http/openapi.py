"""/openapi.json, generated from the route table and the pydantic schemas that validate requests,
so the description cannot drift from the behaviour. Every operation carries its parameters, its
request and answer schemas for every status, and an example of each (`gateway.http.examples`);
/docs shows it with Swagger UI (`gateway.http.docs`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

import gateway
from gateway.http import examples
from gateway.http.endpoint import Endpoint, Param
from gateway.http.problems import PROBLEM_JSON, ProblemError, from_validation, unknown_query
from gateway.http.schemas import Problem
from gateway.serving.requests import NO_NUL

REF = "#/components/schemas/{model}"

TAGS = [
    ("recommendations", "Slates for a listener or a group, discovery sets, similar items"),
    ("outcomes", "What listeners did with what they were shown"),
    ("catalogue", "The items that can be recommended"),
    ("rewards", "Reward aggregates per item, now or at an instant"),
    ("users", "Listeners' rights: erasure"),
    ("admin", "Projections, the event count and the index"),
    ("experiments", "Online experiments: start, read, stop and ship them"),
    ("service", "Health, readiness, metrics and these docs; no key needed"),
]

# What a path parameter is, and its example, unless its route describes it otherwise.
PATH_PARAMS = {
    "user_id": ("The listener's id in the client's system", examples.LISTENER),
    "item_id": ("The catalogue's item id", examples.ITEM),
}


def idempotency_key(ep: Endpoint) -> Param:
    return Param(
        "Idempotency-Key",
        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
        "Any unique string (a UUID) per logical request. A retry with the same key and body is "
        "answered with the recommendation first logged for it, not a new one; the same key with "
        "another body is a 422.",
        example=ep.example.idempotency_key if ep.example is not None else None,
    )


def path_param(name: str, ep: Endpoint) -> Param:
    """The route's own description of `{name}`, else an id: 1-256 characters without NUL."""
    for p in ep.path_params:
        if p.name == name:
            return p
    schema: dict[str, object] = {"type": "string", "minLength": 1, "maxLength": 256, **NO_NUL}
    text, example = PATH_PARAMS.get(name, ("", None))
    return Param(name, schema, text, required=True, example=example)


def _parameter(p: Param, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": p.name,
        "in": where,
        "required": p.required or where == "path",
        "schema": p.schema,
    }
    if p.description:
        out["description"] = p.description
    if p.example is not None:
        out["example"] = p.example
    return out


def _invalid_body(model: type[BaseModel]) -> dict[str, Any]:
    """What the gateway answers to `{}`: the first required fields, named."""
    try:
        model.model_validate_json(b"{}")
    except ValidationError as exc:
        return from_validation(exc).body()
    raise AssertionError(f"{model.__name__} accepts an empty object")


def error_answers(ep: Endpoint) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each error status of `ep`: what it means, and an answer worded as the gateway words it
    (tests/api compares the ones that can be provoked with real answers)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}

    def problem(status: int, text: str, kind: str, title: str, detail: str, **kw: Any) -> None:
        out[str(status)] = (text, ProblemError(status, kind, title, detail, **kw).body())

    if ep.body is not None:
        problem(
            400,
            "Malformed JSON or empty body",
            "malformed-json",
            "Malformed JSON",
            "the body is not valid JSON",
            field="body",
        )
        problem(
            413,
            "Body too large",
            "body-too-large",
            "Request Entity Too Large",
            "the request body is too large",
            field="body",
        )
        problem(
            415,
            "Not application/json",
            "unsupported-media-type",
            "Unsupported Media Type",
            "send application/json, not text/plain",
            field="Content-Type",
        )
        out["422"] = ("A field is invalid; `field` names it", _invalid_body(ep.body))
    if ep.scope is not None:
        if ep.body is None:
            example = unknown_query("limit", [q.name for q in ep.query]).body()
            out["422"] = (
                "A path or query parameter is invalid or unknown; `field` names it",
                example,
            )
        problem(
            401,
            "No key, or an unknown or revoked key",
            "unauthorized",
            "Unauthorized",
            "an API key is required: Authorization: Bearer <key>",
            field="Authorization",
        )
        problem(
            403,
            "The key lacks the scope",
            "forbidden",
            "Forbidden",
            f"this key lacks the {ep.scope.value!r} scope",
            field="Authorization",
        )
        problem(
            429,
            "The key is over its rate limit; see Retry-After",
            "rate-limited",
            "Too Many Requests",
            "this key is over its rate limit; retry in 0.40 s",
            field="Authorization",
        )
        problem(
            503,
            "The event store cannot be reached; retry (resending is safe)",
            "unavailable",
            "Service Unavailable",
            "the event store cannot be reached; retry later (resending is safe)",
        )
    if "{item_id}" in ep.path and ep.method in ("GET", "DELETE"):
        problem(
            404,
            "No such item",
            "not-found",
            "Not Found",
            f"no item {examples.ITEM!r} in the catalogue",
            field="item_id",
        )
    if ep.path.startswith("/v1/admin/experiments/{name}"):
        name = next(p.example for p in ep.path_params if p.name == "name")
        problem(
            404,
            "No such experiment",
            "unknown-experiment",
            "Unknown experiment",
            f"no experiment named {name!r}",
            field="name",
        )
    if ep.path.startswith("/v1/admin/experiments") and ep.method == "POST":
        problem(
            409,
            "The name is taken, a surface is in another running experiment, or the experiment "
            "has ended; `field` names which",
            "experiment-conflict",
            "Experiment conflict",
            "surfaces ['home'] are covered by a running experiment; a slate has one policy",
            field="surfaces",
        )
    if ep.path_params and ep.scope is None:
        # A public route's own path parameter names one of a fixed set (the assets of /docs).
        name = ep.path_params[0].name
        problem(404, f"No such {name}", "not-found", "Not Found", f"no such {name}", field=name)
    if ep.path == "/v1/outcomes":
        problem(
            409,
            "An outcome's event_id was stored before for another outcome; `field` names it",
            "event-id-reused",
            "Event id reused",
            "event_id a6e2d4b8-1c3f-4e5a-9b7d-0f8e6c4a2b19 was stored before for another outcome "
            "(a retry must resend the same user, item, kind, value and recommendation); use a "
            "new id for a new outcome",
            field="outcomes[1].event_id",
        )
    if ep.path == "/readyz":
        out["503"] = ("Not ready; the body says which check failed", examples.NOT_READY)
    return out


def _media(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {"schema": schema, "example": example} if example is not None else {"schema": schema}


def build_spec(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [(Problem, "serialization")]
    for ep in endpoints:
        if ep.body is not None:
            models.append((ep.body, "validation"))
        if ep.response is not None:
            models.append((ep.response, "serialization"))
    refs, defs = models_json_schema(models, ref_template=REF)
    schemas = defs.get("$defs", {})

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])  # type: ignore[index]

    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        example = ep.example
        op: dict[str, Any] = {
            "operationId": ep.handler.__name__,
            "summary": ep.summary,
            "tags": [ep.tag],
        }
        params = [_parameter(path_param(n, ep), "path") for n in re.findall(r"{(\w+)}", ep.path)]
        params += [_parameter(q, "query") for q in ep.query]
        if ep.idempotent:
            params.append(_parameter(idempotency_key(ep), "header"))
        if params:
            op["parameters"] = params
        if ep.body is not None:
            body = _media(ref(ep.body, "validation"), example.request if example else None)
            if example is not None and example.variants:
                del body["example"]
                body["examples"] = {
                    "example": {"summary": example.summary, "value": example.request},
                    **{
                        v.name: {"summary": v.summary, "value": v.request} for v in example.variants
                    },
                }
            op["requestBody"] = {"required": True, "content": {"application/json": body}}
        answer = example.response if example is not None else None
        ok: dict[str, Any] = {"description": "OK" if ep.status == 200 else "Accepted"}
        if ep.response is not None:
            ok["content"] = {ep.content_type: _media(ref(ep.response, "serialization"), answer)}
        else:
            kinds = ep.content_types or (ep.content_type,)
            ok["content"] = {
                kind: _media(
                    {"type": "object"} if kind == "application/json" else {"type": "string"},
                    answer if i == 0 else None,
                )
                for i, kind in enumerate(kinds)
            }
        responses: dict[str, Any] = {str(ep.status): ok}
        for status, (text, body) in sorted(error_answers(ep).items()):
            if ep.path == "/readyz" and ep.response is not None:
                # Not ready is the readiness answer itself, saying which check failed.
                content = {"application/json": _media(ref(ep.response, "serialization"), body)}
            else:
                content = {PROBLEM_JSON: _media(ref(Problem, "serialization"), body)}
            responses[status] = {"description": text, "content": content}
        op["responses"] = responses
        if ep.scope is not None:
            op["security"] = [{"bearer": []}]
            op["x-segue-scope"] = ep.scope.value
            op["description"] = f"Needs an API key with the `{ep.scope.value}` scope."
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Segue",
            "version": gateway.__version__,
            "description": "Event-sourced recommendation gateway. Errors are RFC 9457 "
            "problem+json with a `field` naming what was wrong. Positions are 0-based.\n\n"
            "To try a call here: **Authorize** with an API key (`segue keys create --name me "
            "--scopes recommend,ingest,catalog,admin`), open an operation, **Try it out**. "
            "The key stays in this tab and is sent only to this gateway.",
        },
        "tags": [{"name": name, "description": text} for name, text in TAGS],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "sk_<key id>_<secret>",
                    "description": "An API key made by `segue keys create`; each route needs "
                    "one scope of it (recommend, ingest, catalog or admin).",
                }
            },
        },
    }
