"""What an index version is on disk: its files, their checksums in the manifest, and the checks
that refuse a damaged one. Shared by building (which records them) and holding (which checks)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# Everything a version folder holds; the manifest records each file's size and SHA-256.
FILES = ("items.ann", "ids.json", "listeners.npy", "item_vectors.npy")
# The precomputed candidates, in every folder built since they were introduced.
CANDIDATE_FILES = ("candidates.npy", "candidate_scores.npy")
MAPPED = ".mapped"  # under the index root: the verified copies this host's processes map


def digest(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check(manifest: dict[str, Any], name: str, size: int, sha256: str) -> None:
    expected = manifest.get("files", {}).get(name)
    if expected is None:
        return  # published before checksums were recorded: nothing to compare with
    if expected["bytes"] != size or expected["sha256"] != sha256:
        raise ValueError(
            f"index {manifest['version']} is damaged: {name} has {size} bytes and another "
            f"checksum than the {expected['bytes']} bytes it was published with"
        )


def read_checked(folder: Path, manifest: dict[str, Any], name: str) -> bytes:
    data = (folder / name).read_bytes()
    check(manifest, name, len(data), hashlib.sha256(data).hexdigest())
    return data


def files_of(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The files of a version: indexes published before candidates were precomputed have none
    (their listeners search the tree, as every listener did then)."""
    listed = manifest.get("files", {})
    return FILES + tuple(name for name in CANDIDATE_FILES if name in listed)


def hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
