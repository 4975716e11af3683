"""Keys never reach the logs: a filter on the loggers that can see raw request text.

aiohttp's server logs a request it cannot parse with the offending header line in the exception
(`Authorization: Bearer sk_..._<secret>\\x00`), and its access log writes the request line, where a
careless client may put a key in the query string. The filter rewrites such records before any
handler sees them; `install` is idempotent, so building several apps in one process is fine.
"""

from __future__ import annotations

import logging
import re

_KEY = re.compile(r"(sk_[0-9A-Za-z]{1,16}_)[A-Za-z0-9_\-]+")
_BEARER = re.compile(r"(?i)(bearer(?:\s|%20|\+)+)[^\s'\"\\]+")
REDACTED = "[redacted]"
# Loggers that see what a client sent before (or without) the app validating it.
LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal")


def redact(text: str) -> str:
    """`text` with every API key's secret and every bearer token replaced by [redacted]."""
    return _BEARER.sub(r"\1" + REDACTED, _KEY.sub(r"\1" + REDACTED, text))


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


class RedactKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        # The access log passes its fields as `extra` too (first_request_line, request_header):
        # a structured handler would print them.
        for name, value in list(vars(record).items()):
            if name not in _STANDARD:
                setattr(record, name, _redact_value(value))
        if record.exc_info is not None and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            # The traceback is kept, as text: the exception object itself holds the secret.
            record.exc_text, record.exc_info = redact(text), None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install() -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
