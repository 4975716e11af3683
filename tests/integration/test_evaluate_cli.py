"""`segue evaluate` and `segue replay` as a user runs them, on a log appended through the event
store, against answers worked out here by plain Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from click.testing import CliRunner

from domain.events import (
    ItemRetired,
    ItemUpserted,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationServed,
    SlateEntry,
    to_payload,
)
from domain.ope import OpeConfig
from domain.rewards import RewardDefinition
from gateway.analysis.evaluation import Request, evaluate_log, replay_log
from gateway.analysis.evaluation_log import Filters
from gateway.cli.main import main
from gateway.projections.catalog import CatalogProjection
from gateway.projections.runner import save_definition
from gateway.serving.recommendations import tiebreak
from gateway.store.api import NewEvent
from gateway.store.postgres import PostgresEventStore

ROOT = Path(__file__).resolve().parents[2]
DAY1 = datetime(2026, 3, 2, 12, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
R1, R2, R3, R4 = (uuid.UUID(int=i) for i in (1, 2, 3, 4))
K = OutcomeKind


@dataclass(frozen=True)
class Slate:
    rec: uuid.UUID
    user: str
    surface: str
    at: datetime
    entries: tuple[tuple[str, float], ...]  # (item, propensity) by position


SLATES = [
    Slate(R1, "u1", "home", DAY1, (("t1", 0.5), ("t2", 0.25))),
    Slate(R2, "u2", "home", DAY1, (("t2", 0.5), ("t3", 0.25))),
    Slate(R3, "u1", "music", DAY2, (("t1", 0.8), ("t4", 0.1))),
    Slate(R4, "u3", "home", DAY3, (("t3", 0.5), ("t1", 0.5))),
]
# (recommendation, user, item, kind, minutes after the slate, value)
OUTCOMES = [
    (R1, "u1", "t1", K.STREAM_30S, 5, None),
    (R1, "u1", "t1", K.SAVE, 24 * 60, None),
    (R1, "u1", "t2", K.STREAM_30S, 7 * 60, None),  # past the 6 h window: not attributed
    (R2, "u2", "t3", K.STREAM_30S, 1, None),
    (R2, "u2", "t3", K.SKIP, 2, 5000.0),
    (R2, "u2", "t1", K.STREAM_30S, 3, None),  # t1 was not in R2: not attributed
    (R3, "u1", "t4", K.STREAM_30S, 10, None),
    (R4, "u3", "t3", K.STREAM_30S, 10, None),
]
DEFINITION = {
    "version": "eval-test-1",
    "weights": {"stream_30s": 1, "save": 2, "skip": -0.5},
    "windows_seconds": {"stream_30s": 6 * 3600, "save": 7 * 86400, "skip": 3600},
}


def new_event(event: Any) -> NewEvent:
    event_id = getattr(event, "event_id", None) or uuid.uuid4()
    return NewEvent(
        event_id, event.stream_id(), event.TYPE, event.SCHEMA_VERSION, to_payload(event)
    )


@pytest.fixture
async def logged(pool: asyncpg.Pool) -> AsyncIterator[None]:
    store = PostgresEventStore(pool, inline=[CatalogProjection()])
    await store.start()
    try:
        items = [ItemUpserted(i, "track") for i in ("t1", "t2", "t3", "t4")]
        items.append(ItemUpserted("e1", "episode"))
        await store.append([new_event(i) for i in items])
        await store.append([new_event(ItemRetired("e1"))])
        for s in SLATES:
            served = RecommendationServed(
                recommendation_id=s.rec,
                user=s.user,
                surface=s.surface,
                context={},
                slate=tuple(SlateEntry(item, k, 0.0, p) for k, (item, p) in enumerate(s.entries)),
                policy_name="test",
                policy_version="1",
                index_version="none",
                requested_at=s.at,
                n=2,
            )
            await store.append([new_event(served)])
        at = {s.rec: s.at for s in SLATES}
        await store.append(
            [
                new_event(
                    OutcomeRecorded(
                        uuid.uuid4(), user, item, kind, at[rec] + timedelta(minutes=m), rec, value
                    )
                )
                for rec, user, item, kind, m, value in OUTCOMES
            ]
        )
        yield
    finally:
        await store.close()


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def segue(db_url: str, tmp_path: Path, *args: str, process: bool = False) -> Ran:
    """The CLI on `args`: in a real process with `process`, else in this one (click's runner:
    the same commands, without a second of interpreter start-up per call)."""
    env = {"SEGUE_DATABASE_URL": db_url, "SEGUE_DATA_DIR": str(tmp_path / "data")}
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            cwd=ROOT,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Ran(done.returncode, done.stdout, done.stderr)
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def run_json(db_url: str, tmp_path: Path, *args: str, process: bool = False) -> dict[str, Any]:
    result = segue(db_url, tmp_path, *args, "--json", process=process)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


# --- the answers, by plain Python -------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    slate: int
    item: str
    position: int
    pscore: float
    reward: float
    target: dict[str, float]  # the target's distribution at this round's position


def expected(rounds: Sequence[Round], tau: float = 1.0) -> dict[str, float | None]:
    """obp's formulas with the reward model at prior strength 0: the (item, position) mean,
    else the item's mean, else the global mean."""
    n = len(rounds)
    mu = sum(r.reward for r in rounds) / n

    def q(item: str, k: int) -> float:
        cell = [r.reward for r in rounds if r.item == item and r.position == k]
        if cell:
            return sum(cell) / len(cell)
        mine = [r.reward for r in rounds if r.item == item]
        return sum(mine) / len(mine) if mine else mu

    pi = [r.target.get(r.item, 0.0) for r in rounds]
    w = [p / r.pscore for p, r in zip(pi, rounds, strict=True)]
    match = [p == 1.0 for p in pi]
    dm = [
        sum(p * q(a, r.position) for a, p in r.target.items()) / sum(r.target.values())
        for r in rounds
    ]
    corr = [wi * (r.reward - q(r.item, r.position)) for wi, r in zip(w, rounds, strict=True)]
    return {
        "replay": (
            sum(r.reward for m, r in zip(match, rounds, strict=True) if m) / sum(match)
            if any(match)
            else None
        ),
        "ipw": sum(wi * r.reward for wi, r in zip(w, rounds, strict=True)) / n,
        "snipw": sum(wi * r.reward for wi, r in zip(w, rounds, strict=True)) / sum(w),
        "dm": sum(dm) / n,
        "dr": (sum(dm) + sum(corr)) / n,
        "switch_dr": (sum(dm) + sum(c for c, wi in zip(corr, w, strict=True) if wi <= tau)) / n,
    }


def assert_estimates(got: dict[str, Any], want: dict[str, float | None]) -> None:
    for name, value in want.items():
        if value is None:
            assert got[name]["estimate"] is None, name
        else:
            assert got[name]["estimate"] == pytest.approx(value, abs=1e-12), name
            low, high = got[name]["ci"]
            assert low <= high


STREAMS = {  # reward of each (recommendation, item) with the reward `stream_30s`
    (R1, "t1"): 1.0,
    (R2, "t3"): 1.0,
    (R3, "t4"): 1.0,
    (R4, "t3"): 1.0,
}
WEIGHTED = {  # ... and under DEFINITION
    (R1, "t1"): 3.0,
    (R2, "t3"): 0.5,
    (R3, "t4"): 1.0,
    (R4, "t3"): 1.0,
}


def rounds_of(
    slates: Sequence[Slate], rewards: dict[tuple[uuid.UUID, str], float], target: Any
) -> list[Round]:
    return [
        Round(n, item, k, p, rewards.get((s.rec, item), 0.0), target(s, k))
        for n, s in enumerate(slates)
        for k, (item, p) in enumerate(s.entries)
    ]


BEST = {0: {"t1": 1.0}, 1: {"t3": 1.0}}


def write_csv(path: Path, rows: list[tuple[Any, ...]], header: str) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


# --- evaluate ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("logged")
def test_csv_target_and_time_filter(db_url: str, tmp_path: Path) -> None:
    target = write_csv(
        tmp_path / "t.csv",
        [("t1", 0, 1.0), ("t3", 1, 1.0)],
        "item_id,position,probability",
    )
    got = run_json(
        db_url,
        tmp_path,
        *("evaluate", "--target", str(target), "--reward", "stream_30s"),
        *("--prior-strength", "0", "--until", DAY3.date().isoformat(), "--bootstrap", "300"),
        process=True,
    )
    kept = SLATES[:3]
    rounds = rounds_of(kept, STREAMS, lambda s, k: BEST[k])
    assert_estimates(got, expected(rounds))
    assert got["replay"]["estimate"] == pytest.approx(2 / 3)  # worked by hand, too
    assert got["ipw"]["estimate"] == pytest.approx(1.0)
    assert got["slates"] == 3
    assert got["rounds"] == 6
    assert got["logged"]["estimate"] == pytest.approx(0.5)

    # The interval: slates resampled whole, as the estimator's docstring says.
    terms = np.array([1 / r.pscore * r.reward * (r.target.get(r.item, 0.0)) for r in rounds])
    per_slate = np.array([terms[0:2].sum(), terms[2:4].sum(), terms[4:6].sum()])
    rng = np.random.default_rng(0)
    means = [per_slate[idx].sum() / 6 for idx in (rng.integers(0, 3, 3) for _ in range(300))]
    assert got["ipw"]["ci"] == pytest.approx(
        [np.percentile(means, 2.5), np.percentile(means, 97.5)]
    )


@pytest.fixture
async def stored_definition(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await save_definition(conn, RewardDefinition.from_json(DEFINITION))
    finally:
        await conn.close()


@pytest.mark.usefixtures("logged")
def test_uniform_target_reward_definition_and_surface(
    db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    definition = tmp_path / "reward.json"
    definition.write_text(json.dumps(DEFINITION))
    got = run_json(
        db_url,
        tmp_path,
        *("evaluate", "--target", "uniform", "--reward", str(definition)),
        *("--surface", "home", "--prior-strength", "0", "--tau", "2"),
    )
    kept = [s for s in SLATES if s.surface == "home"]
    # The live catalogue less the retired episode: four tracks.
    uniform = dict.fromkeys(("t1", "t2", "t3", "t4"), 0.25)
    assert_estimates(got, expected(rounds_of(kept, WEIGHTED, lambda s, k: uniform), tau=2.0))
    assert got["reward"] == "eval-test-1"

    # The same definition stored in the database, named by its version.
    request.getfixturevalue("stored_definition")
    again = run_json(
        db_url,
        tmp_path,
        *("evaluate", "--target", "uniform", "--reward", "eval-test-1"),
        *("--surface", "home", "--prior-strength", "0", "--tau", "2"),
    )
    assert again["dr"] == got["dr"]

    table = segue(db_url, tmp_path, "evaluate", "--target", "uniform", "--reward", "stream_30s")
    assert table.returncode == 0, table.stderr
    assert "switch_dr" in table.stdout
    assert "events:" in table.stderr  # progress goes to stderr


@pytest.mark.usefixtures("logged")
def test_per_recommendation_csv(db_url: str, tmp_path: Path) -> None:
    rows: list[tuple[Any, ...]] = []
    dists: dict[uuid.UUID, dict[int, dict[str, float]]] = {}
    for s in SLATES:
        # Prefer the slate's own second item first, then an even split.
        a, b = s.entries[1][0], s.entries[0][0]
        dists[s.rec] = {0: {a: 0.75, b: 0.25}, 1: {a: 0.5, "t2": 0.5} if a != "t2" else {a: 1.0}}
        for k, dist in dists[s.rec].items():
            rows.extend((s.rec, item, k, p) for item, p in dist.items())
    path = write_csv(tmp_path / "r.csv", rows, "recommendation_id,item_id,position,probability")
    got = run_json(
        db_url,
        tmp_path,
        *("evaluate", "--target", str(path), "--reward", "stream_30s", "--prior-strength", "0"),
    )
    assert_estimates(got, expected(rounds_of(SLATES, STREAMS, lambda s, k: dists[s.rec][k])))

    missing = write_csv(
        tmp_path / "m.csv",
        [r for r in rows if r[0] != R3],
        "recommendation_id,item_id,position,probability",
    )
    result = segue(db_url, tmp_path, "evaluate", "--target", str(missing), "--reward", "stream_30s")
    assert result.returncode == 1
    assert f"no distribution for recommendation {R3} at position 0" in result.stderr


@pytest.mark.usefixtures("logged")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "nowhere.csv", "--reward", "click"], "not uniform, current, nor a CSV"),
        (["--target", "uniform", "--reward", "clickz"], "neither an outcome kind"),
        (["--target", "uniform", "--reward", "click", "--alpha", "2"], "--alpha"),
        (["--target", "uniform", "--reward", "click", "--since", "yesterday"], "ISO 8601"),
        (["--target", "uniform", "--reward", "click", "--clip", "0"], "--clip"),
        (["--target", "BAD_SUM", "--reward", "click"], "position 1 add up to 0.9, not 1"),
        (["--target", "BAD_HEADER", "--reward", "click"], "the header must be"),
        (["--target", "BAD_ROW", "--reward", "click"], ":3: "),
        (["--target", "FEW", "--reward", "click"], "at position 1, which the log served"),
        (["--target", "uniform", "--reward", "BAD_DEF"], "weights"),
        (["--target", "uniform", "--reward", "click", "--surface", "radio"], "no logged slate"),
    ],
)
def test_bad_arguments_are_named(
    db_url: str, tmp_path: Path, args: list[str], message: str
) -> None:
    files = {
        "BAD_SUM": "item_id,position,probability\nt1,0,1\nt1,1,0.5\nt2,1,0.4\n",
        "BAD_HEADER": "item,position,probability\nt1,0,1\n",
        "BAD_ROW": "item_id,position,probability\nt1,0,1\nt2,one,1\n",
        "FEW": "item_id,position,probability\nt1,0,1\n",
        "BAD_DEF": '{"version": "x"}',
    }
    for name, text in files.items():
        (tmp_path / f"{name}.{'json' if name == 'BAD_DEF' else 'csv'}").write_text(text)
    args = [
        str(tmp_path / f"{a}.{'json' if a == 'BAD_DEF' else 'csv'}") if a in files else a
        for a in args
    ]
    result = segue(db_url, tmp_path, "evaluate", *args)
    assert result.returncode in (1, 2), result.stdout
    assert message in result.stderr


@pytest.mark.usefixtures("logged")
def test_a_bad_target_in_a_real_process_is_one_line(db_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,position,probability\nt1,0,2\n")
    result = segue(
        db_url, tmp_path, "evaluate", "--target", str(bad), "--reward", "click", process=True
    )
    assert result.returncode == 1
    assert "probability 2.0 not in [0, 1]" in result.stderr
    assert "Traceback" not in result.stderr


# --- current and replay -----------------------------------------------------------------------


def greedy_now(user: str, n: int) -> list[str]:
    """With no index and no rewards yet every live track scores the same, so the policy's
    greedy slate is the tracks ordered by the listener's tie-break."""
    live = ("t1", "t2", "t3", "t4")
    return sorted(live, key=lambda i: (tiebreak(user, i), i))[:n]


@pytest.mark.usefixtures("logged")
def test_current_policy_re_run(db_url: str, tmp_path: Path) -> None:
    # Exploring every time, the policy is a uniform slate of the same pool.
    explore = run_json(
        db_url,
        tmp_path,
        *("replay", "--epsilon", "1", "--tail-epsilon", "0", "--reward", "stream_30s"),
        *("--prior-strength", "0"),
    )
    uniform = dict.fromkeys(("t1", "t2", "t3", "t4"), 0.25)
    want = expected(rounds_of(SLATES, STREAMS, lambda s, k: uniform))
    logged_value = sum(STREAMS.values()) / 8  # four of the eight positions were streamed
    assert explore["logged"]["estimate"] == pytest.approx(logged_value)
    for name, value in want.items():
        if value is None:
            assert explore["difference"][name]["estimate"] is None
        else:
            assert explore["difference"][name]["estimate"] == pytest.approx(value - logged_value)

    # Never exploring, it is its greedy slate: deterministic, so replay is defined.
    greedy = run_json(
        db_url,
        tmp_path,
        *("replay", "--params", str(write_params(tmp_path)), "--reward", "stream_30s"),
        *("--prior-strength", "0", "--k", "2"),
    )
    tops = {s.rec: greedy_now(s.user, 2) for s in SLATES}
    rounds = rounds_of(SLATES, STREAMS, lambda s, k: {tops[s.rec][k]: 1.0})
    want = expected(rounds)
    for name, value in want.items():
        got = greedy["difference"][name]["estimate"]
        assert got == (None if value is None else pytest.approx(value - logged_value)), name
    shared = [len({i for i, _ in s.entries} & set(tops[s.rec])) for s in SLATES]
    assert greedy["overlap"]["mean"] == pytest.approx(sum(shared) / (2 * len(SLATES)))
    assert greedy["overlap"]["distribution"] == {
        str(v): shared.count(v) for v in sorted(set(shared))
    }
    # `evaluate --target current` runs the default parameters on the same requests.
    current = run_json(
        db_url, tmp_path, "evaluate", "--target", "current", "--reward", "stream_30s"
    )
    assert current["rounds"] == 8
    assert current["target"].startswith("current")


def write_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"epsilon": 0.0, "tail_epsilon": 0.0}))
    return path


@pytest.mark.usefixtures("logged")
def test_replay_with_a_csv_target(db_url: str, tmp_path: Path) -> None:
    target = write_csv(
        tmp_path / "t.csv", [("t1", 0, 1.0), ("t3", 1, 1.0)], "item_id,position,probability"
    )
    got = run_json(
        db_url,
        tmp_path,
        *("replay", "--target", str(target), "--reward", "stream_30s", "--k", "2"),
        *("--until", DAY3.isoformat(), "--prior-strength", "0"),
    )
    # Logged top 2 against [t1, t3]: R1 [t1, t2], R2 [t2, t3], R3 [t1, t4] share one each.
    assert got["overlap"] == {"k": 2, "mean": 0.5, "distribution": {"1": 3}}
    assert got["gained"] == [{"item_id": "t3", "slates": 2}, {"item_id": "t1", "slates": 1}]
    assert got["lost"] == [{"item_id": "t2", "slates": 2}, {"item_id": "t4", "slates": 1}]
    assert got["logged"]["estimate"] == pytest.approx(0.5)
    assert got["difference"]["ipw"]["estimate"] == pytest.approx(1.0 - 0.5)
    assert got["difference"]["replay"]["estimate"] == pytest.approx(2 / 3 - 0.5)

    table = segue(db_url, tmp_path, "replay", "--target", str(target), "--reward", "click")
    assert table.returncode == 0, table.stderr
    assert "overlap@10" in table.stdout

    bad = segue(db_url, tmp_path, "replay", "--reward", "click", "--epsilon", "2")
    assert bad.returncode == 2
    assert "epsilon must be in [0, 1]" in bad.stderr
    bad = segue(db_url, tmp_path, "replay", "--reward", "click", "--params", str(target))
    assert bad.returncode == 2
    assert "--params" in bad.stderr


@pytest.mark.usefixtures("logged")
async def test_the_python_api_gives_the_cli_answers(db_url: str, tmp_path: Path) -> None:
    """What `segue report` will call: typed estimates with their intervals."""
    target = write_csv(
        tmp_path / "t.csv", [("t1", 0, 1.0), ("t3", 1, 1.0)], "item_id,position,probability"
    )
    request = Request(str(target), "stream_30s", Filters(until=DAY3))
    config = OpeConfig(prior_strength=0.0, n_bootstrap=100)
    result = await evaluate_log(db_url, request, config, tmp_path / "indexes")
    want = expected(rounds_of(SLATES[:3], STREAMS, lambda s, k: BEST[k]))
    assert set(result.estimates) == set(want)
    for name, value in want.items():
        e = result.estimates[name]
        assert e.estimate == pytest.approx(value)
        assert e.ci is not None
        assert e.ci[0] <= e.ci[1]
    assert result.logged.estimate == pytest.approx(0.5)
    replay = await replay_log(db_url, request, config, tmp_path / "indexes", k=2)
    assert replay.overlap.mean == pytest.approx(0.5)
    assert replay.difference["ipw"].estimate == pytest.approx(0.5)
