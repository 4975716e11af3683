"""One example call of every route, shown in /openapi.json and so on /docs.

The values are what a real gateway answered (ids and numbers tidied): the tests check each one
against the published schemas and send each request to a real gateway, so they stay true.
"""

from __future__ import annotations

from typing import Any

from gateway.http.endpoint import Example, Variant

LISTENER = "listener-7"
ITEM = "track-0042"
RECOMMENDATION_ID = "0d7c6f0e-5b8a-5c61-9d3e-2f4a6b8c1e90"
INDEX_VERSION = "20260302T114501123456"
AS_OF = "2026-03-02T12:00:00Z"

_POLICY = {"name": "segue-eps-greedy", "version": "2"}


def _slate(*items: tuple[str, float, float], rid: str = RECOMMENDATION_ID) -> dict[str, Any]:
    return {
        "recommendation_id": rid,
        "items": [
            {"item_id": item, "position": i, "score": score, "propensity": propensity}
            for i, (item, score, propensity) in enumerate(items)
        ],
        "policy": _POLICY,
        "index_version": INDEX_VERSION,
    }


_ITEM = {
    "item_id": ITEM,
    "kind": "track",
    "attributes": {"title": "Blue Hour", "genre": "jazz", "duration_s": 337},
    "vector": [0.12, -0.4, 0.33],
    "retired": False,
    "version": 2,
}

RECOMMEND = Example(
    request={
        "user_id": LISTENER,
        "surface": "home",
        "n": 3,
        "context": {"device": "ios", "hour": 21, "session": ["track-0088", "track-0102"]},
        "exclude": ["track-0009"],
        "kinds": ["track", "episode"],
    },
    idempotency_key="9b2f6c1e-3d4a-4f0b-8e57-1c2d3e4f5a6b",
    response=_slate(
        (ITEM, 0.8731, 0.9033),
        ("episode-0007", 0.8164, 0.8812),
        ("track-0131", 0.4472, 0.0042),
    ),
)

BLEND = Example(
    request={"user_ids": [LISTENER, "listener-3"], "surface": "music", "n": 3},
    idempotency_key="2c7d9e41-0b6a-4f3e-9d85-6a1b3c5e7f20",
    response=_slate(
        ("track-0006", 0.7912, 0.9033),
        ("track-0017", 0.7723, 0.9033),
        (ITEM, 0.6405, 0.0967),
        rid="c8a16d96-0f4b-4ce4-87ea-b27a21ea6510",
    ),
)

DISCOVER = Example(
    response=_slate(
        ("track-0208", 0.6931, 0.9043),
        ("episode-0012", 0.6518, 0.9043),
        ("track-0077", 0.6120, 0.0957),
        rid="157e3a80-6541-55ca-968b-38750901fc78",
    ),
)

FORGET = Example(response={"status": "accepted"})

SIMILAR = Example(
    response={
        "item_id": ITEM,
        "items": [
            {"item_id": "track-0043", "score": 0.9412},
            {"item_id": "track-0311", "score": 0.8807},
            {"item_id": "episode-0007", "score": 0.7125},
        ],
        "index_version": INDEX_VERSION,
    }
)

_ORGANIC = [
    {
        "event_id": "3f1c9a52-7e0b-4d8e-a1f6-5b2c8d9e0a17",
        "user_id": LISTENER,
        "item_id": ITEM,
        "kind": "stream_start",
    },
    {
        "event_id": "a6e2d4b8-1c3f-4e5a-9b7d-0f8e6c4a2b19",
        "user_id": LISTENER,
        "item_id": ITEM,
        "kind": "stream_30s",
        "value": 31500,
        "occurred_at": AS_OF,
    },
]

# Outcomes of a served slate name it; its recommendation_id is that of a slate this gateway
# served, so this variant is refused (422) until it is replaced by one.
_ATTRIBUTED = [
    {
        "event_id": "5c0e7f3a-9d21-4b6e-8a4f-2e7d1c9b0f36",
        "user_id": LISTENER,
        "item_id": ITEM,
        "kind": "impression",
        "recommendation_id": RECOMMENDATION_ID,
    },
    {
        "event_id": "e1b4a7c2-6f3d-4d09-b5e8-7a2c9f1d4e63",
        "user_id": LISTENER,
        "item_id": ITEM,
        "kind": "save",
        "recommendation_id": RECOMMENDATION_ID,
        "occurred_at": AS_OF,
    },
]

OUTCOMES = Example(
    summary="Listening outside any slate",
    request={"outcomes": _ORGANIC},
    variants=(
        Variant(
            "attributed",
            "Outcomes of a slate: put the recommendation_id the slate came with (its items only)",
            {"outcomes": _ATTRIBUTED},
        ),
    ),
    response={"accepted": 2, "duplicates": 0},
)

UPSERT_ITEMS = Example(
    request={
        "items": [
            {
                "item_id": ITEM,
                "kind": "track",
                "attributes": {"title": "Blue Hour", "genre": "jazz", "duration_s": 337},
            },
            {
                "item_id": "episode-0007",
                "kind": "episode",
                "attributes": {"show": "The Long Take", "duration_s": 2710},
            },
        ]
    },
    response={
        "items": [
            {**_ITEM, "vector": None, "version": 1},
            {
                "item_id": "episode-0007",
                "kind": "episode",
                "attributes": {"show": "The Long Take", "duration_s": 2710},
                "vector": None,
                "retired": False,
                "version": 1,
            },
        ]
    },
)

PUT_ITEM = Example(
    request={
        "kind": "track",
        "attributes": {"title": "Blue Hour", "genre": "jazz", "duration_s": 337},
        "vector": [0.12, -0.4, 0.33],
    },
    response=_ITEM,
)

GET_ITEM = Example(response=_ITEM)

RETIRE_ITEM = Example(response={**_ITEM, "retired": True, "version": 3})

_REWARD = {"sum": 4.5, "mean": 0.375, "count": 12}

ITEM_REWARDS = Example(
    response={
        "item_id": ITEM,
        "as_of": AS_OF,
        "definition_version": "music-podcasts-2",
        "served": 12,
        "outcomes": {"impression": 12, "stream_30s": 5, "save": 1},
        "reward": _REWARD,
        "positions": {"0": 7, "1": 4, "2": 1},
        "by_surface": {
            "home": {"served": 9, "outcomes": {"stream_30s": 4, "save": 1}, "reward": _REWARD},
            "music": {"served": 3, "outcomes": {"stream_30s": 1}, "reward": _REWARD},
        },
        "long_term": {
            "estimate": 6.0,
            "variance": 91.2,
            "observed_traces": 3,
            "horizon_days": 60,
        },
        "projected_through": "2026-03-02T11:59:58.940082Z",
    }
)

_INDEX = {
    "version": INDEX_VERSION,
    "built_at": "2026-03-02T11:45:01.123456Z",
    "items": 1200,
    "recall_at_10": 0.94,
    "position": 9184,
    "building": False,
    "error": None,
}


def _projection(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": 1,
        "status": "live",
        "definition_version": "music-podcasts-2",
        "position": 9210,
        "events_applied": 9210,
        "lag_events": 0,
        "lag_seconds": 0.0,
        "error": None,
        "failed_position": None,
    }


ADMIN_STATUS = Example(
    response={
        "projections": [_projection("listeners"), _projection("rewards")],
        "events": 9210,
        "index": _INDEX,
    }
)

REBUILD_INDEX = Example(response={**_INDEX, "building": True})

_REBUILD = {
    "projection": "rewards",
    "state": "running",
    "definition_version": "music-podcasts-2",
    "version": 2,
    "position": 4100,
    "target": 9210,
    "started_at": "2026-03-02T11:58:12.441001Z",
    "finished_at": None,
    "error": None,
}

_FIGURES = {
    "requests": 1840,
    "rate_per_second": 30.7,
    "client_errors": 12,
    "errors": 0,
    "p50_seconds": 0.004,
    "p95_seconds": 0.011,
    "p99_seconds": 0.024,
    "mean_seconds": 0.005,
}

DASHBOARD = Example(
    response={
        "generated_at": "2026-03-02T12:00:00Z",
        "projections": [_projection("listeners"), _projection("rewards")],
        "rebuilds": [_REBUILD],
        "index": {**_INDEX, "age_seconds": 899.0},
        "requests": {
            "process_id": 4711,
            "window_seconds": 60.0,
            "total": _FIGURES,
            "routes": [{**_FIGURES, "method": "POST", "route": "/v1/recommendations"}],
        },
    }
)

DASHBOARD_SERIES = Example(
    response={
        "since": "2026-03-01",
        "until": "2026-03-02",
        "definition_version": "music-podcasts-2",
        "rewards": [
            {
                "day": "2026-03-01",
                "surface": "home",
                "slates": 118,
                "outcomes": 64,
                "reward": 3.5,
                "reward_per_slate": 0.0297,
            }
        ],
        "outcomes": [{"day": "2026-03-01", "kind": "stream_30s", "count": 41}],
    }
)

REBUILD_PROJECTION = Example(request={"projection": "rewards"}, response=_REBUILD)

HEALTHZ = Example(response={"status": "ok"})

READYZ = Example(
    response={
        "status": "ready",
        "checks": {
            "database": "ok",
            "index": f"ok (version {INDEX_VERSION})",
            "projections": "ok",
        },
    }
)
NOT_READY = {"status": "not ready", "checks": {"database": "unreachable: TimeoutError"}}

OPENAPI = Example(
    response={"openapi": "3.1.0", "info": {"title": "Segue", "version": "0.1.0"}, "paths": {}}
)

PAGE = Example(response="<!doctype html><html lang='en'><head><meta charset='utf-8'>…")

ASSET = Example(response=".swagger-ui{font-family:sans-serif;…}")

METRICS = Example(
    response="# HELP segue_http_requests_total HTTP requests answered\n"
    "# TYPE segue_http_requests_total counter\n"
    'segue_http_requests_total{method="POST",route="/v1/outcomes",status="200"} 1042.0\n'
)

# --- experiments ----------------------------------------------------------------------------

EXPERIMENT = "eps-home"
# Stopped by its example; tests/api starts it first (one start example cannot start both).
STOPPED_EXPERIMENT = "tail-music"

START_EXPERIMENT_BODY = {
    "name": EXPERIMENT,
    "hypothesis": "Exploring in 20% of slates costs more reward than it teaches",
    "arms": [
        {"name": "control"},
        {"name": "explore", "params": {"epsilon": 0.2}},
    ],
    "surfaces": ["home"],
    "primary": {"name": "reward"},
    "minimum_detectable_effect": 0.05,
}

_ARMS = [
    {
        "name": "control",
        "weight": 1.0,
        "params": {},
        "policy_version": None,
        "logged_version": "2",
    },
    {
        "name": "explore",
        "weight": 1.0,
        "params": {"epsilon": 0.2},
        "policy_version": None,
        "logged_version": "2+0d46a549",
    },
]


def _experiment(status: str = "running", **changes: Any) -> dict[str, Any]:
    return {
        "name": EXPERIMENT,
        "status": status,
        "hypothesis": START_EXPERIMENT_BODY["hypothesis"],
        "arms": _ARMS,
        "surfaces": ["home"],
        "primary": "reward",
        "guardrails": [],
        "minimum_detectable_effect": 0.05,
        "alpha": 0.05,
        "started_at": "2026-03-02T12:00:00Z",
        "ended_at": None,
        "shipped_arm": None,
        "reason": "",
        **changes,
    }


START_EXPERIMENT = Example(request=START_EXPERIMENT_BODY, response=_experiment())

EXPERIMENTS = Example(response={"experiments": [_experiment()]})

EXPERIMENT_STATUS = Example(
    response={
        "experiment": _experiment(),
        "method": "normal-mixture always-valid interval (mSPRT), tau = minimum detectable "
        "effect; listener-level means; CUPED on the pre-period's reward per slate",
        "arms": [
            {
                "name": "control",
                "share": 0.5,
                "listeners": 5012,
                "slates": 40210,
                "means": {"reward": 0.412},
            },
            {
                "name": "explore",
                "share": 0.5,
                "listeners": 4988,
                "slates": 39874,
                "means": {"reward": 0.371},
            },
        ],
        "sample_ratio": {
            "counts": [5012, 4988],
            "expected": [5000.0, 5000.0],
            "statistic": 0.0576,
            "p_value": 0.8103,
            "mismatch": False,
        },
        "comparisons": [
            {
                "metric": "reward",
                "arm": "explore",
                "guardrail": False,
                "difference": -0.041,
                "low": -0.063,
                "high": -0.019,
                "cuped": True,
                "verdict": "worse",
            }
        ],
    }
)

STOP_EXPERIMENT = Example(
    request={"reason": "the guardrail on skips was breached"},
    response=_experiment(
        "stopped",
        name=STOPPED_EXPERIMENT,
        surfaces=["music"],
        ended_at="2026-03-09T12:00:00Z",
        reason="the guardrail on skips was breached",
    ),
)

SHIP_EXPERIMENT = Example(
    request={"arm": "control"},
    response=_experiment("shipped", ended_at="2026-03-16T12:00:00Z", shipped_arm="control"),
)
