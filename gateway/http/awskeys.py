"""AWS access keys: what `segue keys create --aws` issues for the Personalize-compatible routes.

Signature Version 4 is checked by signing the request again with the secret, so the gateway needs
the secret itself, not a hash. It is stored encrypted (AES-256-GCM) with SEGUE_CREDENTIALS_KEY,
a key that lives in the gateways' environment and never in the database: a copy of the database
(a backup, a replica, the analysts' role) holds no usable secret (docs/decisions.md, "AWS keys").
The access key id is the key's id in `api_keys`, so listing, revoking and rate limits treat both
kinds of key alike.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.http.auth import ApiKey, Scope

# Not AWS's own prefixes (AKIA, ASIA): a Segue key found in a leak should not pass for an AWS
# account's, nor send its finder to AWS.
ACCESS_KEY_PREFIX = "SGAK"
SEALED_VERSION = b"\x01"
NONCE_BYTES = 12


class CredentialsKeyError(ValueError):
    """SEGUE_CREDENTIALS_KEY is missing, malformed, or not the one a key was sealed with."""


def new_credentials_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def parse_credentials_key(text: str | None) -> bytes:
    if not text:
        raise CredentialsKeyError(
            "SEGUE_CREDENTIALS_KEY is not set: AWS keys are stored encrypted with it "
            "(`segue keys seal-key` prints a new one)"
        )
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise CredentialsKeyError("SEGUE_CREDENTIALS_KEY must be 32 bytes, base64-encoded")
    return raw


def _aad(access_key_id: str) -> bytes:
    # Bound to its row: a sealed secret copied onto another key id does not open.
    return b"segue-aws-secret\0" + access_key_id.encode()


def seal(key: bytes, access_key_id: str, secret: str) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return SEALED_VERSION + nonce + AESGCM(key).encrypt(nonce, secret.encode(), _aad(access_key_id))


def unseal(key: bytes, access_key_id: str, sealed: bytes) -> str:
    if sealed[:1] != SEALED_VERSION:
        raise CredentialsKeyError(f"key {access_key_id}: unknown sealed format")
    nonce, box = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, box, _aad(access_key_id)).decode()
    except InvalidTag:
        raise CredentialsKeyError(
            f"key {access_key_id} was sealed with another SEGUE_CREDENTIALS_KEY"
        ) from None


def new_access_key_id() -> str:
    # 16 characters of base 32: 80 random bits, 20 characters in all, as AWS's ids are.
    return ACCESS_KEY_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode()


async def create_aws_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    name: str,
    scopes: frozenset[Scope],
    credentials_key: bytes,
) -> tuple[ApiKey, str]:
    """Store a new AWS key; returns it (its key_id is the access key id) and the secret access
    key, which is never shown again."""
    access_key_id = new_access_key_id()
    secret = secrets.token_urlsafe(30)  # 40 characters, as AWS's secrets are
    await conn.execute(
        "INSERT INTO api_keys (key_id, name, aws_secret, scopes) VALUES ($1, $2, $3, $4)",
        access_key_id,
        name,
        seal(credentials_key, access_key_id, secret),
        sorted(s.value for s in scopes),
    )
    return ApiKey(access_key_id, name, scopes), secret


class AwsKeys:
    """Access key id -> (key, secret), with the bearer keys' short cache, so a revocation takes
    effect within `cache_seconds` here too."""

    def __init__(
        self, pool: asyncpg.Pool, credentials_key: str | None, cache_seconds: float
    ) -> None:
        self._pool = pool
        self._key_text = credentials_key
        self._ttl = cache_seconds
        self._cache: dict[str, tuple[float, tuple[ApiKey, str] | None]] = {}

    async def lookup(self, access_key_id: str) -> tuple[ApiKey, str] | None:
        """The key and its secret; None when unknown or revoked. Raises CredentialsKeyError
        when the key exists but this gateway cannot open its secret."""
        now = time.monotonic()
        hit = self._cache.get(access_key_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        row = await self._pool.fetchrow(
            "SELECT key_id, name, aws_secret, scopes FROM api_keys "
            "WHERE key_id = $1 AND aws_secret IS NOT NULL AND revoked_at IS NULL",
            access_key_id,
        )
        found: tuple[ApiKey, str] | None = None
        if row is not None:
            secret = unseal(
                parse_credentials_key(self._key_text), access_key_id, bytes(row["aws_secret"])
            )
            found = (
                ApiKey(row["key_id"], row["name"], frozenset(Scope(s) for s in row["scopes"])),
                secret,
            )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[access_key_id] = (now, found)
        return found
