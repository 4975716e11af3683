"""Policy settings: read from SEGUE_* variables, defaulting to the measured policy."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from domain.ranking import PolicyParams
from gateway.cli.main import main
from gateway.settings import Settings


def test_the_defaults_are_the_policys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OPTIMISM",
        "EPSILON",
        "TAIL_EPSILON",
        "TAIL",
        "LONG_TERM_WEIGHT",
        "RECENCY_BLEND",
        "RECENCY_DECAY",
        "RECENCY_FLOOR",
        "RECENCY_ITEMS",
    ):
        monkeypatch.delenv(f"SEGUE_POLICY_{name}", raising=False)
    assert Settings().policy == PolicyParams()


def test_policy_variables_select_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_POLICY_OPTIMISM", "0.5")
    monkeypatch.setenv("SEGUE_POLICY_EPSILON", "0.1")
    monkeypatch.setenv("SEGUE_POLICY_TAIL_EPSILON", "0")
    monkeypatch.setenv("SEGUE_POLICY_TAIL", "2")
    monkeypatch.setenv("SEGUE_POLICY_LONG_TERM_WEIGHT", "0")
    policy = Settings().policy
    assert policy == PolicyParams(
        optimism=0.5, epsilon=0.1, tail_epsilon=0.0, tail=2, w_long_term=0.0
    )
    assert policy.logged_version != PolicyParams().version


def test_recency_variables_select_the_recency_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_POLICY_RECENCY_BLEND", "0.4")
    monkeypatch.setenv("SEGUE_POLICY_RECENCY_DECAY", "5")
    monkeypatch.setenv("SEGUE_POLICY_RECENCY_FLOOR", "0.2")
    monkeypatch.setenv("SEGUE_POLICY_RECENCY_ITEMS", "20")
    policy = Settings().policy
    assert policy == PolicyParams(
        recency_blend=0.4, recency_decay=5.0, recency_floor=0.2, recency_items=20
    )
    # Named in the version every slate logs.
    assert policy.logged_version.startswith(f"{PolicyParams().version}+")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SEGUE_POLICY_OPTIMISM": "-1"}, "policy_optimism"),
        ({"SEGUE_POLICY_EPSILON": "lots"}, "policy_epsilon"),
        ({"SEGUE_POLICY_TAIL": "0"}, "policy_tail"),
        ({"SEGUE_POLICY_RECENCY_BLEND": "1.5"}, "policy_recency_blend"),
        ({"SEGUE_POLICY_RECENCY_DECAY": "0"}, "policy_recency_decay"),
        # The projection keeps 50 per listener: more could never be read.
        ({"SEGUE_POLICY_RECENCY_ITEMS": "51"}, "policy_recency_items"),
        ({"SEGUE_POLICY_EPSILON": "0.6", "SEGUE_POLICY_TAIL_EPSILON": "0.5"}, "policy_epsilon"),
    ],
)
def test_bad_policy_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError, match=named):
        Settings()


def test_a_misspelt_variable_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignored, it would start the gateway on the embedded database: an empty one."""
    monkeypatch.setenv("SEGUE_DATABSE_URL", "postgresql://db.internal/segue")
    with pytest.raises(
        ValidationError, match=r"SEGUE_DATABSE_URL \(did you mean SEGUE_DATABASE_URL\?\)"
    ):
        Settings()
    monkeypatch.delenv("SEGUE_DATABSE_URL")
    monkeypatch.setenv("SEGUE_KEY", "sk_from_the_demo")  # not a setting, but expected around
    Settings()  # no error


def test_the_cli_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGUE_PORTT", "9000")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 1
    assert "unknown environment variable SEGUE_PORTT (did you mean SEGUE_PORT?)" in result.output
    assert "Traceback" not in result.output
