"""The id of the request being served, for log lines and for the events the request appends.

A context variable, so that code below the HTTP edge (the store stamping an append, a log call
deep in serving) finds it without every call passing it on; the append is stamped in the
caller's context, before the group-commit flusher (another task) takes it.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("segue_request_id", default=None)

HEADER = "X-Request-Id"

# What a caller's own id may be: enough for a UUID, a trace id or a load balancer's id, and
# nothing that could break a log line or a header.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:/-]{1,128}")


def request_id_from(header: str | None) -> str:
    """The caller's `X-Request-Id` if it is a plausible id, else a new one."""
    if header is not None and _ACCEPTED.fullmatch(header):
        return header
    return uuid.uuid4().hex


def stamped(metadata: dict[str, Any]) -> dict[str, Any]:
    """`metadata` with the current request's id, when there is a request (a projector or a
    CLI import appends none)."""
    rid = REQUEST_ID.get()
    if rid is None or metadata.get("request_id") == rid:
        return metadata
    return {**metadata, "request_id": rid}
