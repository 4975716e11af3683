"""API keys: created by the CLI, stored as SHA-256 hashes, checked on every /v1 route.

A key looks like `sk_<key_id>_<secret>`; only its hash is stored, and it is shown once, when
created. Lookups are by hash and cached for a few seconds, so a revocation takes effect within
`key_cache_seconds` on every process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from gateway.http.problems import ProblemError


class Scope(StrEnum):
    RECOMMEND = "recommend"
    INGEST = "ingest"
    CATALOG = "catalog"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    scopes: frozenset[Scope]


# The key the request being handled was authenticated with (set by the route guard; each
# request runs in a task, and so in a context, of its own).
CURRENT_KEY: ContextVar[ApiKey | None] = ContextVar("segue_current_key", default=None)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_scopes(text: str) -> frozenset[Scope]:
    """'recommend,ingest' -> scopes; raises ValueError naming an unknown one."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError("at least one scope is needed")
    try:
        return frozenset(Scope(n) for n in names)
    except ValueError:
        bad = next(n for n in names if n not in Scope.__members__.values())
        raise ValueError(
            f"unknown scope {bad!r}; choose from {', '.join(s.value for s in Scope)}"
        ) from None


async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool, name: str, scopes: frozenset[Scope]
) -> tuple[ApiKey, str]:
    """Store a new key; returns it and the secret text, which is never retrievable again."""
    key_id = secrets.token_hex(4)
    secret = f"sk_{key_id}_{secrets.token_urlsafe(32)}"
    await conn.execute(
        "INSERT INTO api_keys (key_id, name, key_hash, scopes) VALUES ($1, $2, $3, $4)",
        key_id,
        name,
        hash_key(secret),
        sorted(s.value for s in scopes),
    )
    return ApiKey(key_id, name, scopes), secret


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT key_id, name, scopes, created_at, revoked_at, aws_secret IS NOT NULL AS aws "
        "FROM api_keys ORDER BY created_at"
    )


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    return bool(status.endswith(" 1"))


class KeyVerifier:
    """Resolves bearer tokens to keys, with a short cache so a request costs no query."""

    def __init__(self, pool: asyncpg.Pool, cache_seconds: float) -> None:
        self._pool = pool
        self._ttl = cache_seconds
        self._cache: dict[bytes, tuple[float, ApiKey | None]] = {}

    async def lookup(self, token: str) -> ApiKey | None:
        digest = hash_key(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        row = await self._pool.fetchrow(
            "SELECT key_id, name, key_hash, scopes FROM api_keys "
            "WHERE key_hash = $1 AND revoked_at IS NULL",
            digest,
        )
        key: ApiKey | None = None
        # The row was found by its hash; comparing again in constant time keeps the check honest
        # even if the lookup ever changes to something prefix-based.
        if row is not None and hmac.compare_digest(bytes(row["key_hash"]), digest):
            key = ApiKey(row["key_id"], row["name"], frozenset(Scope(s) for s in row["scopes"]))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, key)
        return key

    async def require(self, authorization: str | None, scope: Scope) -> ApiKey:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:  # the scheme is case-insensitive (RFC 9110)
            raise ProblemError(
                401,
                "unauthorized",
                "Unauthorized",
                "an API key is required: Authorization: Bearer <key>",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer realm="segue"'},
            )
        # Keys are ASCII; anything else (header bytes that are not even UTF-8 arrive as lone
        # surrogates) is unknown without asking the database, and cannot fail to hash.
        key = await self.lookup(token) if token.isascii() else None
        if key is None:
            raise ProblemError(
                401,
                "unauthorized",
                "Unauthorized",
                "the API key is unknown or revoked",
                field="Authorization",
                headers={"WWW-Authenticate": 'Bearer realm="segue", error="invalid_token"'},
            )
        if scope not in key.scopes:
            raise ProblemError(
                403,
                "forbidden",
                "Forbidden",
                f"this key lacks the {scope.value!r} scope",
                field="Authorization",
            )
        return key
