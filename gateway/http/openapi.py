"""/openapi.json and /docs, generated from the route table and the pydantic schemas that
validate requests, so the description cannot drift from the behaviour."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import gateway
from gateway.http.endpoint import Endpoint
from gateway.http.problems import PROBLEM_JSON
from gateway.http.schemas import Problem
from gateway.serving.requests import NO_NUL

REF = "#/components/schemas/{model}"

_ERRORS_WITH_BODY = {
    "400": "Malformed JSON or empty body",
    "413": "Body too large",
    "415": "Not application/json",
    "422": "A field is invalid; `field` names it",
}
_ERRORS_AUTH = {
    "401": "No key, or an unknown or revoked key",
    "403": "The key lacks the scope",
    "429": "The key is over its rate limit; see Retry-After",
}
_ERRORS_ALWAYS = {"503": "The event store cannot be reached; retry (resending is safe)"}


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

    problem = {PROBLEM_JSON: {"schema": ref(Problem, "serialization")}}
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "operationId": ep.handler.__name__,
            "summary": ep.summary,
            "tags": [ep.tag],
        }
        params: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 256, **NO_NUL},
            }
            for name in re.findall(r"{(\w+)}", ep.path)
        ]
        params += [
            {
                "name": q.name,
                "in": "query",
                "required": q.required,
                "schema": q.schema,
                "description": q.description,
            }
            for q in ep.query
        ]
        if ep.idempotent:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": "^[\\x21-\\x7e]+$",
                    },
                    "description": "Any unique string (a UUID) per logical request. A retry "
                    "with the same key and body is answered with the recommendation first "
                    "logged for it, not a new one; the same key with another body is a 422.",
                }
            )
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(ep.body, "validation")}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if ep.response is not None:
            ok["content"] = {ep.content_type: {"schema": ref(ep.response, "serialization")}}
        elif ep.content_type != "application/json" or ep.path == "/openapi.json":
            ok["content"] = {
                ep.content_type: {
                    "schema": {"type": "string"}
                    if ep.content_type != "application/json"
                    else {"type": "object"}
                }
            }
        responses: dict[str, Any] = {str(ep.status): ok}
        errors: dict[str, str] = {}
        if ep.body is not None:
            errors |= _ERRORS_WITH_BODY
        if params or ep.scope is not None:  # /v1 routes refuse unknown query parameters too
            errors["422"] = "A field or query parameter is invalid or unknown; `field` names it"
        if "{item_id}" in ep.path and ep.method in ("GET", "DELETE"):
            errors["404"] = "No such item"
        if ep.path == "/v1/outcomes":
            errors["409"] = (
                "An outcome's event_id was stored before for another outcome; `field` names it"
            )
        if ep.scope is not None:
            errors |= _ERRORS_AUTH | _ERRORS_ALWAYS
            op["security"] = [{"bearer": []}]
            op["x-segue-scope"] = ep.scope.value
            op["description"] = f"Needs an API key with the `{ep.scope.value}` scope."
        if ep.path == "/readyz":
            errors["503"] = "Not ready; the body says which check failed"
        for status, text in sorted(errors.items()):
            content = (
                {"application/json": {"schema": ref(ep.response, "serialization")}}
                if ep.path == "/readyz" and ep.response is not None
                else problem
            )
            responses[status] = {"description": text, "content": content}
        op["responses"] = responses
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Segue",
            "version": gateway.__version__,
            "description": "Event-sourced recommendation gateway. Errors are RFC 9457 "
            "problem+json with a `field` naming what was wrong. Positions are 0-based.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def render_html(spec: dict[str, Any]) -> str:
    """A self-contained page (no CDN): every operation with its scope, body and answer schemas."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Segue API</title><style>"
        "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
        "h2{border-bottom:1px solid #ddd;margin-top:2.5rem}code,pre{background:#f5f5f5}"
        "pre{padding:.75rem;overflow-x:auto;font-size:13px}.m{font-weight:bold;color:#05a}"
        "</style></head><body>",
        f"<h1>{e(spec['info']['title'])} API {e(spec['info']['version'])}</h1>",
        f"<p>{e(spec['info']['description'])}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1). "
        "Authenticate with <code>Authorization: Bearer &lt;key&gt;</code>.</p>",
    ]
    schemas = spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            parts.append(f"<h2><span class='m'>{method.upper()}</span> <code>{e(path)}</code></h2>")
            parts.append(f"<p>{e(op['summary'])}. {e(op.get('description', ''))}</p>")
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                name = body["schema"]["$ref"].rsplit("/", 1)[-1]
                parts.append(
                    f"<h3>Body: {e(name)}</h3><pre>{e(json.dumps(schemas[name], indent=2))}</pre>"
                )
            for status, resp in op["responses"].items():
                parts.append(f"<p><b>{e(status)}</b> {e(resp['description'])}</p>")
    parts.append("</body></html>")
    return "".join(parts)
