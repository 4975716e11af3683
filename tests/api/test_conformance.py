"""The shared black-box contract check (`../shared/conformance/contract.py URL KEY`) against the
gateway as an operator runs it: `segue serve` in its own process on a fresh database, and a key
made with `segue keys create`."""

from __future__ import annotations

import sys

import pytest

from tests.api.served import REPO, Gateway, run

CONTRACT = REPO.parent / "shared" / "conformance" / "contract.py"
ALL_SCOPES = "recommend,ingest,catalog,admin"


@pytest.mark.slow
@pytest.mark.skipif(
    not CONTRACT.is_file(),
    reason=f"the shared contract check is not on this machine: {CONTRACT} is missing",
)
async def test_the_gateway_passes_the_shared_contract(served: Gateway) -> None:
    create = ("keys", "create", "--name", "t", "--scopes", ALL_SCOPES)
    code, out, err = await run(
        sys.executable, "-m", "gateway.cli", *create, env=served.env, cwd=served.cwd, limit_s=60
    )
    assert code == 0, err
    key = out.strip()
    assert key.startswith("sk_"), f"stdout should be the key alone: {out!r}"
    assert "\n" not in key
    code, out, err = await run(
        sys.executable, str(CONTRACT), served.url, key, env=served.env, cwd=served.cwd, limit_s=120
    )
    assert code == 0, f"contract failed (exit {code}):\n{out}\n{err}"
    assert "contract checks passed" in out
