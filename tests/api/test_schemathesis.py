"""schemathesis against the gateway's own /openapi.json: generated requests, valid and invalid, with
a good key, no key, an unknown key and a key lacking the route's scope, through real HTTP to the
real app on PostgreSQL. Every answer must be a non-5xx that the published spec documents: its
status, its content type, its body schema and its headers.

The budget is small here (`SEGUE_FUZZ_EXAMPLES`, default 8 per operation and mode); the large run
in the README's "Testing" section is this same test with a bigger budget.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import ClientSession, ClientTimeout
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.http.auth import Scope
from tests.api.conftest import Api, KeyMaker, admin_status, serving
from tests.integration.projection_helpers import eventually

EXAMPLES = int(os.environ.get("SEGUE_FUZZ_EXAMPLES", "8"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,  # what the spec calls invalid is refused, never accepted
]


@dataclass
class Report:
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return (
            f"schemathesis {schemathesis.__version__}: {sum(self.requests.values())} generated "
            f"requests over {len(self.requests)} operations, {len(self.failures)} failures "
            f"(statuses {statuses}; keys {dict(sorted(self.keys.items()))})\n"
            + "\n".join(f"  {n:6d}  {op}" for op, n in sorted(self.requests.items()))
        )


def fuzz(base_url: str, keys: dict[str, str | None], scope_less: dict[str, str]) -> Report:
    """Run every operation in both generation modes; record failures instead of stopping at the
    first, so one run reports them all."""
    report = Report()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    with requests.Session() as session:
        for result in schema.get_all_operations():
            # An operation the loader cannot read is a broken spec: fail on it.
            assert isinstance(result, Ok), result.err()
            operation = result.ok()
            scope = operation.definition.raw.get("x-segue-scope")
            # Mostly the good key, so requests get past the guard to validation and handlers.
            auth = {**keys, "scope-less": scope_less[scope]} if scope else {"good": keys["good"]}
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    fuzz_operation(operation, mode, auth, base_url, session, report)
                except Unsatisfiable:
                    # No invalid request exists for an operation without parameters or body.
                    assert mode is GenerationMode.NEGATIVE, operation.label
    return report


def fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    auth: dict[str, str | None],
    base_url: str,
    session: requests.Session,
    report: Report,
) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    def cases(who: str) -> st.SearchStrategy[tuple[str, Any]]:
        # A key given to the strategy is fixed: schemathesis neither mutates it nor blames an
        # accepted request on an Authorization header it meant to drop but that we re-added.
        key = auth[who]
        fixed = {"Authorization": f"Bearer {key}"} if key is not None else None
        strategy: st.SearchStrategy[Any] = operation.as_strategy(
            generation_mode=mode, headers=fixed
        )
        return strategy.map(lambda case: (who, case))

    # Mostly the good key, so requests get past the guard to validation and handlers.
    whos = ["good"] * 6 + sorted(set(auth) - {"good"})

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # failures are recorded, not shrunk
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn=st.sampled_from(whos).flatmap(cases))
    def one(drawn: tuple[str, Any]) -> None:
        who, case = drawn
        if auth[who] is None and case.headers:
            case.headers.pop("Authorization", None)  # whatever was generated: no key at all
        response = case.call(base_url=base_url, session=session)
        report.requests[label] += 1
        report.statuses[response.status_code] += 1
        report.keys[who] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (FailureGroup, AssertionError) as exc:
            report.failures.append(
                f"{label} [{mode.value}, key {who}] -> {response.status_code}: {exc}"
            )

    one()


@pytest.mark.slow
async def test_generated_requests_get_documented_answers(
    db_url: str, make_key: KeyMaker, caplog: pytest.LogCaptureFixture
) -> None:
    keys: dict[str, str | None] = {
        "good": await make_key(*Scope),
        "none": None,
        "unknown": "sk_00000000_not-a-key-of-this-gateway",
    }
    scope_less = {s.value: await make_key(*(o for o in Scope if o != s)) for s in Scope}
    # The limiter is tested on its own; here it would only turn generated requests into 429s.
    async with (
        serving(db_url, rate_limit_burst=1e6, rate_limit_per_second=1e6) as url,
        ClientSession(timeout=ClientTimeout(total=60)) as session,
    ):
        report = await asyncio.to_thread(fuzz, url, keys, scope_less)
        # The generated catalogue and outcomes must still make an index: build one now, after
        # the last request, and wait for it.
        api = Api(url, keys["good"], session)
        assert (await api.post("/v1/admin/index/rebuild")).status == 202

        async def built() -> bool:
            index = (await admin_status(api))["index"]
            return not index["building"] and index["version"] is not None

        await eventually(built, "an index over the generated data")
    print(report.summary(), file=sys.stderr)
    assert report.requests, "nothing was generated"
    assert not report.failures, report.summary() + "\n\n" + "\n\n".join(report.failures[:20])
    # A 2xx can still hide a failure in the background (an index build over the generated
    # catalogue, a projector batch): nothing may have been logged as an error.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(caplog.text.splitlines()[-60:])
