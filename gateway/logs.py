"""Logging for every command: JSON lines for a log pipeline, or plain text for a terminal; each
line of a request carries its id."""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

from gateway.tracing import REQUEST_ID

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_installed: logging.Handler | None = None


class RequestIdFilter(logging.Filter):
    """Gives each record `request_id`: the request being served where it was logged, or null.
    The access log passes its own (it is written after the request's context has ended)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def setup_logging(level: str, fmt: Literal["auto", "json", "text"] = "auto") -> None:
    """Configure the root logger once per process (`--workers` processes each call it)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    # Replace only the handler a previous call installed (a test harness may have its own).
    global _installed
    if _installed is not None:
        root.removeHandler(_installed)
    _installed = handler
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Their INFO lines (initdb output, Alembic plugin set-up) drown the gateway's own.
    for chatty in ("pgserver", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
