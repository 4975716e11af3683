"""Tests that drive a program that is not a Python package (promtool, Chromium): skipped on a
machine without it, so that README's test command works with only Python installed; failed
under CI (`CI=true`), where .ci/run installs them, so that a CI run that could not check them
cannot pass."""

from __future__ import annotations

import os
import shutil

import pytest


def require(*programs: str, why: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if not missing:
        return
    message = f"needs {', '.join(missing)}: {why}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
