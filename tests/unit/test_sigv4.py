"""Signature Version 4 as verified by `gateway.http.sigv4`, against what botocore's own signer
produces for the same request: paths with dot segments and escapes, query strings, headers with
runs of spaces and repeated values; and any change to a signed part is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.http import sigv4

NOW = datetime(2026, 12, 7, 11, 30, tzinfo=UTC)
KEY_ID, SECRET = "SGAKTESTTESTTESTTEST", "a-secret-of-forty-characters-0123456789a"


def signed(
    url: str, body: bytes = b"", headers: dict[str, str] | None = None, **where: str
) -> AWSRequest:
    request = AWSRequest(method="POST", url=url, data=body, headers=headers or {})
    auth = botocore.auth.SigV4Auth(
        Credentials(KEY_ID, SECRET),
        where.get("service", "personalize"),
        where.get("region", "us-east-1"),
    )
    # botocore signs at its clock's time; this one is the tests'.
    naive = NOW.replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=naive):
        auth.add_auth(request)
    return request


def parts(request: AWSRequest) -> dict[str, Any]:
    url = urlsplit(str(request.url))
    headers: dict[str, list[str]] = {"host": [url.netloc]}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), []).append(value)
    return {
        "method": request.method,
        "raw_path": url.path,
        "raw_query": url.query,
        "headers": headers,
        "amz_date": request.headers["X-Amz-Date"],
        "body": request.body or b"",
    }


def check(request: AWSRequest, secret: str = SECRET, **changes: Any) -> None:
    credential = sigv4.parse_authorization([request.headers["Authorization"]])
    sigv4.check_scope(credential, region="us-east-1", service="personalize")
    sigv4.check_date(credential, request.headers["X-Amz-Date"], NOW)
    sigv4.verify(credential, secret, **{**parts(request), **changes})


@pytest.mark.parametrize(
    "url",
    [
        "http://segue.test/recommendations",
        "http://segue.test:8080/events",
        "https://segue.test/prefix/./personalize-ranking",
        "https://segue.test/a/b/../items/",
        "http://segue.test//users",
        "http://segue.test/caf%C3%A9/with%20space/~tilde",
        "http://segue.test/items?b=2&a=1&a=0",
        "http://segue.test/items?x=a%20b&empty=&k=%2F%2B",
    ],
)
def test_what_botocore_signs_verifies(url: str) -> None:
    check(
        signed(
            url,
            b'{"userId": "u"}',
            {"Content-Type": "application/json", "X-Custom": "  two   spaces  "},
        )
    )


def test_a_change_to_any_signed_part_is_refused() -> None:
    request = signed("http://segue.test/events", b'{"a": 1}', {"Content-Type": "application/json"})
    changes: list[dict[str, Any]] = [
        {"body": b'{"a": 2}'},
        {"raw_path": "/items"},
        {"raw_query": "a=1"},
        {"method": "PUT"},
        {"headers": {**parts(request)["headers"], "content-type": ["text/plain"]}},
        {"headers": {**parts(request)["headers"], "host": ["evil.test"]}},
    ]
    for change in changes:
        with pytest.raises(sigv4.SignatureError) as caught:
            check(request, **change)
        assert caught.value.code == "InvalidSignatureException", change
    with pytest.raises(sigv4.SignatureError):
        check(request, secret=SECRET + "x")


def test_scope_and_date_checks_name_the_problem() -> None:
    credential = sigv4.parse_authorization([signed("http://s/events").headers["Authorization"]])
    with pytest.raises(sigv4.SignatureError, match="region"):
        sigv4.check_scope(credential, region="eu-west-1", service="personalize")
    with pytest.raises(sigv4.SignatureError, match="service"):
        sigv4.check_scope(credential, region="us-east-1", service="dynamodb")
    stamp = NOW.strftime(sigv4.AMZ_DATE)
    sigv4.check_date(credential, stamp, NOW + timedelta(minutes=14))
    with pytest.raises(sigv4.SignatureError, match="expired"):
        sigv4.check_date(credential, stamp, NOW + timedelta(minutes=16))
    with pytest.raises(sigv4.SignatureError, match="not yet current"):
        sigv4.check_date(credential, stamp, NOW - timedelta(minutes=16))
    with pytest.raises(sigv4.SignatureError, match="date"):
        sigv4.check_date(credential, "20261206T235959Z", NOW)


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "MissingAuthenticationTokenException"),
        ("Bearer sk_x", "IncompleteSignatureException"),
        ("AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request", "IncompleteSignatureException"),
        (
            "AWS4-HMAC-SHA256 Credential=a/20261207/r/s/wrong, SignedHeaders=host, Signature="
            + "0" * 64,
            "IncompleteSignatureException",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=a/20261207/r/s/aws4_request, SignedHeaders=x-b;host, "
            "Signature=" + "0" * 64,
            "IncompleteSignatureException",
        ),
    ],
)
def test_malformed_authorization_headers(header: str | None, code: str) -> None:
    with pytest.raises(sigv4.SignatureError) as caught:
        sigv4.parse_authorization([header] if header is not None else [])
    assert caught.value.code == code


def test_host_and_date_must_be_signed() -> None:
    request = signed("http://segue.test/events")
    credential = sigv4.parse_authorization([request.headers["Authorization"]])
    bare = sigv4.Credential(
        credential.access_key_id,
        credential.date,
        credential.region,
        credential.service,
        ("x-amz-date",),
        credential.signature,
    )
    with pytest.raises(sigv4.SignatureError, match="host"):
        sigv4.verify(bare, SECRET, **parts(request))


def test_a_claimed_payload_hash_must_be_the_bodys() -> None:
    request = signed("http://segue.test/events", b"{}", {"X-Amz-Content-SHA256": "0" * 64})
    with pytest.raises(sigv4.SignatureError, match="SHA-256"):
        check(request)
