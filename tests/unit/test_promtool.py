"""`promtool` on deploy/prometheus: the rules and both configurations are valid, and the alert
unit tests (alerts_test.yml: each alert firing and quiet on given series) pass.

promtool is not a Python package: CI installs Debian's `prometheus` package (.ci/run). Without
it these tests are skipped, except under CI, where they fail (tests/needs.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.needs import require

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> str:
    require("promtool", why="Debian's prometheus package, or any Prometheus release")
    exe = shutil.which("promtool")
    assert exe is not None
    result = subprocess.run(
        [exe, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{output}"
    return output


def test_the_alert_rules_are_valid() -> None:
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml")


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml"])
def test_the_prometheus_configurations_are_valid(config: str) -> None:
    assert "SUCCESS" in promtool("check", "config", config)


def test_the_alerts_fire_and_stay_quiet_as_their_unit_tests_say() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")
