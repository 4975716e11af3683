"""`segue experiment` as a user runs it: real processes, a real database. The serving side is
tested over HTTP (tests/api/test_experiments_api.py); here, the commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.http import examples
from tests.integration.test_cli import run


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SEGUE_DATABASE_URL": db_url, "SEGUE_DATA_DIR": str(tmp_path)}


def test_start_list_status_ship_and_stop(env: dict[str, str], tmp_path: Path) -> None:
    definition = tmp_path / "experiment.json"
    definition.write_text(json.dumps(examples.START_EXPERIMENT_BODY))
    started = run(["experiment", "start", str(definition)], env)
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["status"] == "running"

    again = run(["experiment", "start", str(definition)], env)
    assert again.returncode == 1
    assert "names are never reused" in again.stderr
    assert again.stderr.rstrip().endswith("(name)")

    listed = run(["experiment", "list"], env)
    assert listed.stdout.split("\t")[:2] == [examples.EXPERIMENT, "running"]

    status = run(["experiment", "status", examples.EXPERIMENT], env)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[2].split("\t") == ["arm", "share", "listeners", "slates", "reward"]
    assert lines[3].split("\t")[:4] == ["control", "0.500", "0", "0"]
    assert "sample ratio: chi-square 0.000, p = 1 (ok)" in status.stdout
    assert "explore - control on reward: too few listeners" in status.stdout
    as_json = run(["experiment", "status", examples.EXPERIMENT, "--json"], env)
    assert json.loads(as_json.stdout)["experiment"]["name"] == examples.EXPERIMENT

    page = tmp_path / "page.html"
    reported = run(["experiment", "report", examples.EXPERIMENT, "--output", str(page)], env)
    assert reported.returncode == 0, reported.stderr
    assert f"Experiment {examples.EXPERIMENT}" in page.read_text()

    shipped = run(["experiment", "ship", examples.EXPERIMENT, "--arm", "explore"], env)
    assert shipped.returncode == 0, shipped.stderr
    assert json.loads(shipped.stdout)["shipped_arm"] == "explore"
    assert "SEGUE_POLICY_EPSILON=0.2" in shipped.stderr

    stopped = run(["experiment", "stop", examples.EXPERIMENT, "--reason", "late"], env)
    assert stopped.returncode == 1
    assert "has already shipped" in stopped.stderr
    unknown = run(["experiment", "status", "nothing"], env)
    assert unknown.returncode == 1
    assert "no experiment named 'nothing'" in unknown.stderr


def test_a_bad_definition_names_the_field(env: dict[str, str], tmp_path: Path) -> None:
    definition = tmp_path / "experiment.json"
    definition.write_text(json.dumps({**examples.START_EXPERIMENT_BODY, "arms": []}))
    refused = run(["experiment", "start", str(definition)], env)
    assert refused.returncode == 2
    assert "arms" in refused.stderr
