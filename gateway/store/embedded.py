"""The embedded PostgreSQL used when no `SEGUE_DATABASE_URL` is given (the `pgserver` package).

pgserver warns when `XDG_RUNTIME_DIR` is unset, and the tests treat warnings as errors, so a private
0700 runtime folder under the data dir is provided before pgserver is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _ensure_runtime_dir(data_dir: Path) -> None:
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    runtime = data_dir / "run"
    runtime.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(runtime)


def start_embedded(data_dir: Path, *, stop_on_exit: bool = True) -> tuple[str, Any]:
    """Start (or join) the embedded server under `data_dir/pg`; returns its URL and handle.

    Several processes may call this for the same folder: pgserver shares one running server.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    _ensure_runtime_dir(data_dir)
    from pgserver import get_server  # type: ignore[attr-defined]

    server = get_server(data_dir / "pg", cleanup_mode="stop" if stop_on_exit else None)
    return server.get_uri(), server
