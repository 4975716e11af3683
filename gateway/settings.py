"""Typed settings, read once from `SEGUE_*` environment variables (and a `.env` file)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.events import OutcomeKind
from domain.listener_fold import RECENT_KEPT
from domain.ranking import PolicyParams

_POLICY = PolicyParams()

# `SEGUE_*` variables that are not the gateway's settings: the API key `segue demo` tells the
# user to export for the example calls, and what the test suite and the benchmarks read.
NOT_SETTINGS = frozenset(
    {
        "SEGUE_KEY",
        "SEGUE_TEST_DATABASE_URL",
        "SEGUE_BENCH_DATABASE_URL",
        "SEGUE_FUZZ_EXAMPLES",
        "SEGUE_CACHE_DIR",
        "SEGUE_SCREENSHOT_DIR",
    }
)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "segue"


class Settings(BaseSettings):
    """Everything the gateway can be told. Unknown `SEGUE_*` variables are an error, not ignored."""

    model_config = SettingsConfigDict(
        env_prefix="SEGUE_", env_file=".env", env_file_encoding="utf-8", extra="forbid", frozen=True
    )

    database_url: str | None = Field(
        default=None,
        description="postgresql://user:pass@host:port/db; unset: the embedded pgserver.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the embedded database and index files live.",
    )
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    pool_min_size: Annotated[int, Field(ge=1)] = 2
    pool_max_size: Annotated[int, Field(ge=1)] = 10
    migrate_on_start: bool = Field(
        default=True,
        description="`segue serve` migrates the database first (one process at a time); false: "
        "it refuses to start unless the schema is at head, for deployments that migrate in a "
        "job of their own (`segue db upgrade`).",
    )
    startup_wait_seconds: Annotated[float, Field(ge=0)] = Field(
        default=60.0,
        description="How long `segue serve` waits for an unreachable database at start-up, "
        "retrying with jittered exponential backoff, before it exits non-zero; 0: fail at once.",
    )
    query_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        default=5.0,
        description="The longest any statement on the gateway's pool may take: a database that "
        "accepts but does not answer is a 503 after this, not a hang.",
    )
    slow_query_timeout_seconds: Annotated[float, Field(gt=0)] = Field(
        default=60.0,
        description="The bound for the few pool statements that scan a table growing with the "
        "log (the event count of /v1/admin/status, the item-scores refresh).",
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = 2 * 1024 * 1024
    group_commit_max_events: Annotated[int, Field(ge=1)] = 2000
    group_commit_flushers: Annotated[int, Field(ge=1, le=16)] = 2
    key_cache_seconds: Annotated[float, Field(ge=0)] = 5.0
    pseudonym_cache_seconds: Annotated[float, Field(ge=0)] = Field(
        default=5.0,
        description="How long a process trusts a cached listener pseudonym: the longest another "
        "gateway may keep using a forgotten listener's pseudonym.",
    )
    catalog_cache_seconds: Annotated[float, Field(ge=0)] = 1.0
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="json: one JSON object per line, with the request id (for a log pipeline); "
        "text: plain lines; auto: text when stderr is a terminal, json otherwise",
    )
    metrics_port: Annotated[int | None, Field(ge=0, le=65535)] = Field(
        default=None,
        description="Serve /metrics on this port only (not on the API port), for a scraper "
        "inside the cluster; unset: /metrics is on the API port",
    )
    run_projectors: bool = Field(
        default=True,
        description="Run the projectors inside `segue serve` (single-node mode); turn off when "
        "`segue project` runs them elsewhere.",
    )
    projector_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 2000
    index_dir: Path | None = Field(
        default=None, description="Where index versions are written; default <data_dir>/index"
    )
    index_cache_dir: Path | None = Field(
        default=None,
        description="Where each host keeps the verified copies of index files its processes "
        "map; default <index dir>/.mapped. Set it to a host-local path when the index dir is a "
        "volume shared by many hosts",
    )
    run_index_builder: bool = Field(
        default=True,
        description="Build indexes inside `segue serve` (single-node mode); one process builds "
        "at a time, every process loads what was published.",
    )
    index_build_interval_seconds: Annotated[float, Field(gt=0)] = 600.0
    index_min_new_events: Annotated[int, Field(ge=1)] = 1000
    index_als_solver: Literal["implicit", "numpy"] = Field(
        default="implicit",
        description="How index builds fit ALS: the implicit library's conjugate gradient, or "
        "the exact numpy solve (slower, the same quality; docs/decisions.md 58)",
    )
    scores_refresh_seconds: Annotated[float, Field(gt=0)] = Field(
        default=10.0, description="How often each process re-reads every item's reward posterior"
    )
    rate_limit_per_second: Annotated[float, Field(gt=0)] = Field(
        default=500.0,
        description="Requests per second per API key, across the gateway processes sharing "
        "the database (each process alone when rate_limit_sync_seconds is 0)",
    )
    rate_limit_burst: Annotated[float, Field(ge=1)] = Field(
        default=1000.0, description="Requests a key may make at once before being limited"
    )
    rate_limit_sync_seconds: Annotated[float, Field(ge=0)] = Field(
        default=0.25,
        description="How often each process shares its rate-limit spending with the others "
        "(0: every process limits alone)",
    )
    credentials_key: SecretStr | None = Field(
        default=None,
        description="32 random bytes, base64 (`segue keys seal-key` prints a new one): encrypts "
        "the secret of every `segue keys create --aws` key in the database; every gateway "
        "needs the one the keys were created with to verify their signatures",
    )
    aws_region: str = Field(
        default="us-east-1",
        description="The region AWS SDK clients of the Personalize-compatible routes sign for",
    )
    personalize_surfaces: dict[str, str] = Field(
        default_factory=dict,
        description="Personalize campaign or recommender names (the ARN's last part) -> the "
        "Segue surface they serve; a name that is a surface needs no entry",
    )
    personalize_event_types: dict[str, OutcomeKind] = Field(
        default_factory=dict,
        description="PutEvents eventType -> outcome kind, beside the kinds' own names",
    )
    personalize_item_kind: str = Field(
        default="track",
        description="The kind of a PutItems item whose properties name none",
    )
    # Personalizer's own bounds (5 s - 2 days), but for 1 s, which the tests wait for; its
    # default is 10 minutes (docs/personalizer.md).
    personalizer_reward_wait_seconds: Annotated[float, Field(ge=1, le=172_800)] = Field(
        default=600.0,
        description="Personalizer routes: how long after a rank is shown its reward is awaited; "
        "then the default reward applies, and a later reward is ignored",
    )
    personalizer_default_reward: Annotated[float, Field(ge=-1, le=1)] = Field(
        default=0.0,
        description="Personalizer routes: the reward of a rank none was sent for in time",
    )
    policy_optimism: Annotated[float, Field(ge=0)] = Field(
        default=_POLICY.optimism,
        description="Score bonus per posterior standard deviation of an item's reward",
    )
    policy_epsilon: Annotated[float, Field(ge=0, le=1)] = Field(
        default=_POLICY.epsilon, description="Share of slates drawn uniformly at random"
    )
    policy_tail_epsilon: Annotated[float, Field(ge=0, le=1)] = Field(
        default=_POLICY.tail_epsilon,
        description="Share of slates whose last `policy_tail` positions are drawn at random",
    )
    policy_tail: Annotated[int, Field(ge=1)] = Field(
        default=_POLICY.tail, description="Positions re-drawn in a tail-explored slate"
    )
    policy_long_term_weight: Annotated[float, Field(ge=0)] = Field(
        default=_POLICY.w_long_term,
        description="Weight of an item's long-term estimate (active days) in its score",
    )
    policy_recency_blend: Annotated[float, Field(ge=0, le=1)] = Field(
        default=_POLICY.recency_blend,
        description="How far the listener vector turns towards what they played last (0: not "
        "at all, the last index build's profile alone; 1: the recent items alone)",
    )
    policy_recency_decay: Annotated[float, Field(gt=0)] = Field(
        default=_POLICY.recency_decay,
        description="Items: a recent item played this many items before the last weighs 1/e "
        "of the last's",
    )
    policy_recency_floor: Annotated[float, Field(ge=0)] = Field(
        default=_POLICY.recency_floor,
        description="The weight every recent item keeps, however long ago it was played",
    )
    policy_recency_items: Annotated[int, Field(ge=1, le=RECENT_KEPT)] = Field(
        default=_POLICY.recency_items,
        description="How many of the listener's latest items are read for the recency vector",
    )

    @property
    def policy(self) -> PolicyParams:
        """The ranking policy these settings select; its logged version names any departure
        from the defaults."""
        return PolicyParams(
            optimism=self.policy_optimism,
            epsilon=self.policy_epsilon,
            tail_epsilon=self.policy_tail_epsilon,
            tail=self.policy_tail,
            w_long_term=self.policy_long_term_weight,
            recency_blend=self.policy_recency_blend,
            recency_decay=self.policy_recency_decay,
            recency_floor=self.policy_recency_floor,
            recency_items=self.policy_recency_items,
        )

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, data: Any) -> Any:
        """pydantic-settings ignores environment variables it has no field for; a misspelt
        `SEGUE_DATABSE_URL` would then start on the embedded database and answer from no data.
        Every `SEGUE_*` variable must be a setting (or one the tests and benchmarks read)."""
        known = {f"SEGUE_{name.upper()}" for name in cls.model_fields} | NOT_SETTINGS
        unknown = sorted(
            k for k in os.environ if k.upper().startswith("SEGUE_") and k.upper() not in known
        )
        if unknown:
            hints = []
            for name in unknown:
                close = difflib.get_close_matches(name.upper(), sorted(known), n=1)
                hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
            raise ValueError(
                "unknown environment variable"
                + ("s " if len(unknown) > 1 else " ")
                + ", ".join(hints)
                + "; unset it, or see README.md's Configuration for the settings"
            )
        return data

    @model_validator(mode="after")
    def _policy_is_valid(self) -> Settings:
        if self.policy_epsilon + self.policy_tail_epsilon > 1:
            raise ValueError("policy_epsilon + policy_tail_epsilon must be at most 1")
        return self

    @property
    def index_root(self) -> Path:
        return self.index_dir or self.data_dir / "index"

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(
            ("postgresql://", "postgres://", "postgresql+asyncpg://")
        ):
            raise ValueError("must be a postgresql:// URL")
        return v


def asyncpg_dsn(url: str) -> str:
    """The URL in the form asyncpg takes (no SQLAlchemy driver suffix)."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def sqlalchemy_url(url: str) -> str:
    """The URL in the form SQLAlchemy's asyncpg dialect takes."""
    return "postgresql+asyncpg://" + asyncpg_dsn(url)[len("postgresql://") :]
