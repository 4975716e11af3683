"""AWS Signature Version 4 (header form), verified: the request is signed again with the key's
secret and the signatures compared in constant time.

Only what AWS SDKs send for a JSON service is accepted: the `Authorization` header (no presigned
query strings), `X-Amz-Date`, `host` among the signed headers, and the payload's SHA-256 signed
(no `UNSIGNED-PAYLOAD`). Each failure is a `SignatureError` carrying the error code an SDK
expects from AWS for it, so clients raise what they raise against AWS.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
MAX_SKEW = timedelta(minutes=15)
AMZ_DATE = "%Y%m%dT%H%M%SZ"
_PARAM = re.compile(r"\s*(Credential|SignedHeaders|Signature)\s*=\s*([^,\s]*)\s*")


class SignatureError(Exception):
    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _incomplete(message: str) -> SignatureError:
    return SignatureError("IncompleteSignatureException", message, 400)


def _invalid(message: str) -> SignatureError:
    return SignatureError("InvalidSignatureException", message)


@dataclass(frozen=True, slots=True)
class Credential:
    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"


def parse_authorization(values: Sequence[str]) -> Credential:
    """The `Authorization` header's parts; the error AWS answers when it is missing or
    malformed."""
    if not values:
        raise SignatureError(
            "MissingAuthenticationTokenException",
            "no Authorization header: sign the request with AWS Signature Version 4",
        )
    if len(values) > 1:
        raise _incomplete("send one Authorization header")
    algorithm, _, rest = values[0].strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(f"the Authorization header must use {ALGORITHM}")
    params: dict[str, str] = {}
    for part in rest.split(","):
        match = _PARAM.fullmatch(part)
        if match is None or match[1] in params:
            raise _incomplete(f"malformed Authorization parameter {part.strip()[:40]!r}")
        params[match[1]] = match[2]
    missing = [p for p in ("Credential", "SignedHeaders", "Signature") if p not in params]
    if missing:
        raise _incomplete(f"the Authorization header lacks {', '.join(missing)}")
    parts = params["Credential"].split("/")
    if len(parts) != 5 or parts[4] != TERMINATOR or not all(parts):
        raise _incomplete(
            "Credential must be <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request"
        )
    signed = tuple(params["SignedHeaders"].split(";"))
    if list(signed) != sorted(set(signed)) or any(h != h.lower() or not h for h in signed):
        raise _incomplete("SignedHeaders must be lower-case names, sorted, each once")
    if not re.fullmatch(r"[0-9a-f]{64}", params["Signature"]):
        raise _incomplete("Signature must be 64 lower-case hexadecimal digits")
    return Credential(parts[0], parts[1], parts[2], parts[3], signed, params["Signature"])


def canonical_uri(raw_path: str) -> str:
    """The path as sent (percent-encoded), dot segments and repeated slashes removed, encoded
    once more: what non-S3 services sign."""
    segments: list[str] = []
    for segment in raw_path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    path = "/" + "/".join(segments)
    if raw_path.endswith("/") and segments:
        path += "/"
    return quote(path, safe="/~")


def canonical_query(raw_query: str) -> str:
    pairs = []
    for pair in raw_query.split("&") if raw_query else ():
        name, _, value = pair.partition("=")
        pairs.append(
            (
                quote(unquote(name), safe="-_.~"),
                quote(unquote(value), safe="-_.~"),
            )
        )
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, Sequence[str]],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    """`headers`: every value of each header, by lower-case name."""
    lines = [
        f"{name}:{','.join(' '.join(v.split()) for v in headers.get(name, ()))}"
        for name in signed_headers
    ]
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            "\n".join(lines) + "\n",
            ";".join(signed_headers),
            payload_hash,
        ]
    )


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def string_to_sign(amz_date: str, scope: str, request: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(request.encode()).hexdigest()])


def check_scope(credential: Credential, *, region: str, service: str) -> None:
    if credential.service != service:
        raise _invalid(f"Credential should be scoped to the service {service!r}")
    if credential.region != region:
        raise _invalid(
            f"Credential should be scoped to the region {region!r}, not {credential.region!r}"
        )


def check_date(credential: Credential, amz_date: str | None, now: datetime) -> None:
    """The request's time must be within 15 minutes of the gateway's, and on the scope's day."""
    if amz_date is None:
        raise _incomplete("the X-Amz-Date header is required")
    try:
        when = datetime.strptime(amz_date, AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise _incomplete("X-Amz-Date must be YYYYMMDD'T'HHMMSS'Z'") from None
    if amz_date[:8] != credential.date:
        raise _invalid("the Credential's date is not the date of X-Amz-Date")
    if when < now - MAX_SKEW:
        raise _invalid(
            f"Signature expired: X-Amz-Date {amz_date} is more than 15 minutes before the "
            f"gateway's time, {now.strftime(AMZ_DATE)}"
        )
    if when > now + MAX_SKEW:
        raise _invalid(
            f"Signature not yet current: X-Amz-Date {amz_date} is more than 15 minutes after "
            f"the gateway's time, {now.strftime(AMZ_DATE)}"
        )


def verify(
    credential: Credential,
    secret: str,
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, Sequence[str]],
    amz_date: str,
    body: bytes,
) -> None:
    """Raises InvalidSignatureException unless the request was signed with `secret`. The scope
    and date are checked first (`check_scope`, `check_date`), without the secret."""
    for needed in ("host", "x-amz-date"):
        if needed not in credential.signed_headers:
            raise _incomplete(f"SignedHeaders must include {needed}")
    payload_hash = hashlib.sha256(body).hexdigest()
    claimed = headers.get("x-amz-content-sha256")
    if claimed and claimed[0] != payload_hash:
        raise _invalid("X-Amz-Content-SHA256 is not the SHA-256 of the body")
    request = canonical_request(
        method, raw_path, raw_query, headers, credential.signed_headers, payload_hash
    )
    expected = hmac.new(
        signing_key(secret, credential.date, credential.region, credential.service),
        string_to_sign(amz_date, credential.scope, request).encode(),
        hashlib.sha256,
    ).hexdigest()
    if not hmac.compare_digest(expected, credential.signature):
        raise _invalid(
            "the signature is not this request's, signed with this access key's secret: check "
            "the secret access key, the endpoint and the signing method"
        )
