"""Online experiments over real HTTP: a running experiment serves each listener with their arm's
policy and logs its exact propensities, the experiment and the arm; the assignment is logged once
per listener; status reads the arms back; erasure takes a listener out; stopping ends it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from domain.events import ExperimentAssigned, ExperimentStarted, RecommendationServed
from domain.experiments import Experiment, assign
from domain.ranking import PolicyParams
from gateway.client import outcome
from tests.api.conftest import Api, expect_problem
from tests.api.test_endpoints import served_events, stored
from tests.integration.test_evaluate_cli import run_json

ITEMS = [f"exp-{i:02d}" for i in range(20)]
UNIFORM = {"epsilon": 1.0, "tail_epsilon": 0.0}


def definition(name: str = "rerank-uniform", surface: str = "search") -> dict[str, Any]:
    return {
        "name": name,
        "hypothesis": "a uniform rerank is worse",
        "arms": [{"name": "control"}, {"name": "uniform", "params": UNIFORM}],
        "surfaces": [surface],
        "primary": {"name": "reward"},
        "guardrails": [{"name": "streams", "reward": {"version": "s", "weights": {"save": 1}}}],
        "minimum_detectable_effect": 0.1,
    }


async def started(db: asyncpg.Connection, name: str) -> Experiment:
    for e in await stored(db, ExperimentStarted.TYPE):
        assert isinstance(e, ExperimentStarted)
        if e.name == name:
            return Experiment.from_json(e.definition)
    raise AssertionError(f"{name} was not started")


async def rerank(api: Api, user: str) -> dict[str, Any]:
    body = {"user_id": user, "surface": "search", "n": 5, "candidates": ITEMS}
    reply = await api.post("/v1/recommendations", body)
    assert reply.status == 200, reply.body
    answer: dict[str, Any] = reply.json()
    return answer


async def test_arms_serve_their_policy_with_exact_propensities_and_status_reads_them(
    api: Api, db: asyncpg.Connection, db_url: str, tmp_path: Path
) -> None:
    items = [{"item_id": i, "kind": "track", "attributes": {"artist": i}} for i in ITEMS]
    assert (await api.post("/v1/items", {"items": items})).status == 200
    reply = await api.post("/v1/admin/experiments", definition())
    assert reply.status == 200, reply.body
    out = reply.json()
    assert out["status"] == "running"
    assert (
        out["arms"][1]["logged_version"]
        == PolicyParams(epsilon=1.0, tail_epsilon=0.0).logged_version
    )
    experiment = await started(db, "rerank-uniform")

    users = [f"exp-user-{u}" for u in range(40)]
    answers = {}
    for user in users:
        answers[user] = await rerank(api, user)
        await rerank(api, user)  # a second slate: the assignment is not logged again
    await rerank(api, "exp-user-0")

    served = [e for e in (await served_events(db)).values() if e.surface == "search"]
    assert len(served) == 81
    arms = {}
    for e in served:
        assert e.experiment == "rerank-uniform"
        arm = assign(experiment, e.user)
        assert e.arm == arm.name
        assert e.policy_version == arm.policy().logged_version
        arms[e.user] = arm.name
        if arm.name == "uniform":
            # Every item anywhere with probability 1/20: the arm's own propensities.
            assert all(s.propensity == pytest.approx(1 / 20) for s in e.slate)
        else:
            # The default policy: at the head, the greedy item has epsilon / N + 1 - epsilon,
            # any other epsilon / N (a uniform slate drawn by the control's own 3%).
            p = PolicyParams()
            greedy, other = p.epsilon / 20 + 1 - p.epsilon, p.epsilon / 20
            assert e.slate[0].propensity in (pytest.approx(greedy), pytest.approx(other))
    assert set(arms.values()) == {"control", "uniform"}

    assigned = await stored(db, ExperimentAssigned.TYPE)
    assert all(isinstance(e, ExperimentAssigned) for e in assigned)
    assert len(assigned) == len(arms) == 40
    assert {e.user: e.arm for e in assigned if isinstance(e, ExperimentAssigned)} == arms

    # Outcomes on the first slate of each listener: the status attributes them per arm.
    first = [answers[u] for u in users]
    outcomes = [
        outcome(
            u,
            a["items"][0]["item_id"],
            "stream_30s",
            recommendation_id=a["recommendation_id"],
        )
        for u, a in zip(users, first, strict=True)
    ]
    assert (await api.post("/v1/outcomes", {"outcomes": outcomes})).status == 200
    status = (await api.get("/v1/admin/experiments/rerank-uniform")).json()
    by_arm = {a["name"]: a for a in status["arms"]}
    counts = {name: sum(1 for v in arms.values() if v == name) for name in by_arm}
    assert {n: a["listeners"] for n, a in by_arm.items()} == counts
    assert sum(a["slates"] for a in status["arms"]) == 81
    assert status["sample_ratio"]["counts"] == [counts["control"], counts["uniform"]]
    assert [(c["metric"], c["guardrail"]) for c in status["comparisons"]] == [
        ("reward", False),
        ("streams", True),
    ]
    assert all(a["means"]["reward"] > 0 for a in status["arms"])

    # Offline, beside the online result: one arm's slates alone, as `segue evaluate` reads them.
    for arm_name in ("control", "uniform"):
        offline = run_json(
            db_url,
            tmp_path,
            "evaluate",
            "--target",
            "uniform",
            "--reward",
            "stream_30s",
            "--experiment",
            "rerank-uniform",
            "--arm",
            arm_name,
            process=True,
        )
        assert offline["slates"] == by_arm[arm_name]["slates"]

    # Erasure takes the listener's assignment with their pseudonym: status no longer counts them.
    assert (await api.post("/v1/users/exp-user-0/forget")).status == 202
    after = (await api.get("/v1/admin/experiments/rerank-uniform")).json()
    assert sum(a["listeners"] for a in after["arms"]) == 39

    stopped = await api.post("/v1/admin/experiments/rerank-uniform/stop", {"reason": "done"})
    assert stopped.status == 200, stopped.body
    assert (stopped.json()["status"], stopped.json()["reason"]) == ("stopped", "done")
    answer = await rerank(api, "exp-user-1")
    assert answer["policy"]["version"] == PolicyParams().logged_version
    later = await served_events(db)
    assert later[uuid.UUID(answer["recommendation_id"])].experiment is None


async def test_conflicts_and_mistakes_are_refused_naming_the_field(api: Api) -> None:
    assert (await api.post("/v1/admin/experiments", definition("first", "music"))).status == 200
    expect_problem(
        await api.post("/v1/admin/experiments", definition("second", "music")), 409, "surfaces"
    )
    expect_problem(
        await api.post("/v1/admin/experiments", definition("first", "shelf")), 409, "name"
    )
    bad = definition("third", "shelf")
    bad["arms"][1]["params"] = {"epsilon": 0.9, "tail_epsilon": 0.5}
    expect_problem(await api.post("/v1/admin/experiments", bad), 422, "arms[1].params")
    expect_problem(await api.get("/v1/admin/experiments/nothing"), 404, "name")
    expect_problem(await api.get("/v1/admin/experiments/Not%20A%20Name"), 422, "name")
    expect_problem(await api.post("/v1/admin/experiments/first/ship", {"arm": "nope"}), 404, "arm")
    shipped = await api.post("/v1/admin/experiments/first/ship", {"arm": "uniform"})
    assert shipped.status == 200, shipped.body
    assert shipped.json()["shipped_arm"] == "uniform"
    expect_problem(await api.post("/v1/admin/experiments/first/stop", {"reason": "x"}), 409, "name")
    listed = (await api.get("/v1/admin/experiments")).json()["experiments"]
    assert [(e["name"], e["status"]) for e in listed] == [("first", "shipped")]
    # Its surface is free again.
    assert (await api.post("/v1/admin/experiments", definition("second", "music"))).status == 200


async def test_outside_any_experiment_slates_carry_none(api: Api, db: asyncpg.Connection) -> None:
    items = [{"item_id": i, "kind": "track"} for i in ITEMS]
    assert (await api.post("/v1/items", {"items": items})).status == 200
    assert (await api.post("/v1/admin/experiments", definition("elsewhere", "music"))).status == 200
    answer = await rerank(api, "someone")
    served = [e for e in (await served_events(db)).values() if e.surface == "search"]
    assert [e.experiment for e in served] == [None]
    assert str(served[0].recommendation_id) == answer["recommendation_id"]
    assert isinstance(served[0], RecommendationServed)
    assert await stored(db, ExperimentAssigned.TYPE) == []
