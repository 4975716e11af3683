"""Data sets that ship inside published wheels (the Open Bandit Dataset in obp, MovieLens in
recbole): fetched with `pip download --no-deps` into a folder at run time and read straight from
the zip; the packages are never installed and the data never committed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def fetch_wheel(folder: Path, requirement: str) -> Path:
    """The wheel of `requirement` (`name==version`) in `folder`, downloaded there (without
    dependencies) if it is not there yet. Raises RuntimeError if it cannot be downloaded."""
    name, _, version = requirement.partition("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    found = sorted(folder.glob(pattern))
    if result.returncode != 0 or not found:
        raise RuntimeError(f"could not download {requirement}: {result.stderr.strip()[-500:]}")
    return found[0]
