"""Every typed key the aiohttp application holds, in one place."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from gateway.http.auth import KeyVerifier
from gateway.http.ratelimit import RateLimiter
from gateway.http.traffic import RequestWindow
from gateway.index.holder import IndexHolder
from gateway.index.service import IndexService
from gateway.projections.rebuilds import Rebuilds
from gateway.projections.rewards import LiveVersions, RewardsReader
from gateway.projections.runner import Runner
from gateway.serving.catalog import Catalog
from gateway.serving.erasure import Erasure
from gateway.serving.experiments import Experiments
from gateway.serving.listeners import Pseudonyms
from gateway.serving.outcomes import OutcomeRecorder
from gateway.serving.recommendations import Recommender
from gateway.serving.scores import ItemScores
from gateway.settings import Settings
from gateway.store.postgres import PostgresEventStore

SETTINGS = web.AppKey("settings", Settings)
DSN = web.AppKey("dsn", str)
Clock = Callable[[], datetime]
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
POOL = web.AppKey("pool", asyncpg.Pool)
STORE = web.AppKey("store", PostgresEventStore)
CATALOG = web.AppKey("catalog", Catalog)
PSEUDONYMS = web.AppKey("pseudonyms", Pseudonyms)
ERASURE = web.AppKey("erasure", Erasure)
RECOMMENDER = web.AppKey("recommender", Recommender)
OUTCOMES = web.AppKey("outcomes", OutcomeRecorder)
EXPERIMENTS = web.AppKey("experiments", Experiments)
KEYS = web.AppKey("keys", KeyVerifier)
OPENAPI = web.AppKey("openapi", dict[str, Any])
REWARDS = web.AppKey("rewards", RewardsReader)
RUNNERS = web.AppKey("runners", list[Runner])
LIMITER = web.AppKey("limiter", RateLimiter)
INDEX = web.AppKey("index", IndexHolder)
INDEX_SERVICE = web.AppKey("index_service", IndexService)
SCORES = web.AppKey("scores", ItemScores)
VERSIONS = web.AppKey("versions", LiveVersions)
REBUILDS = web.AppKey("rebuilds", Rebuilds)
REQUEST_WINDOW = web.AppKey("request_window", RequestWindow)
