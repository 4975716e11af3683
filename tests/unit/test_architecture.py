"""The dependency rule of DESIGN.md, and lint, as tests.

domain/ is pure: it never imports gateway, the I/O libraries, asyncio or os. Checked on the
syntax tree, so `import x as y`, `from x import y` and nested imports are all caught.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"gateway", "aiohttp", "asyncpg", "sqlalchemy", "annoy", "asyncio", "os"}


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_checker_catches_every_import_form() -> None:
    assert imported_roots("import os.path as p\nfrom asyncio import sleep\n") == {"os", "asyncio"}
    assert imported_roots("def f():\n    import gateway.app\n") == {"gateway"}


@pytest.mark.parametrize(
    "path", sorted((ROOT / "domain").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_domain_imports_nothing_impure(path: Path) -> None:
    bad = imported_roots(path.read_text()) & FORBIDDEN
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    assert found, f"{name} is not installed (pip install -e '.[test]')"
    return found


def test_ruff_clean() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [_tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_strict_clean() -> None:
    result = subprocess.run(
        [_tool("mypy"), "--strict", "domain", "gateway", "migrations", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


EXPLAINS_THE_TRAP = {"test_architecture.py", "test_read_order.py"}


def test_no_statement_orders_by_the_text_of_tx_id() -> None:
    """`SELECT tx_id::text ... ORDER BY tx_id` sorts by the text alias ('10' before '9'): a bug
    that only shows once transaction ids cross a power of ten. Qualify the column instead."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("gateway", "tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "ORDER BY tx_id" in line and path.name not in EXPLAINS_THE_TRAP
    ]
    assert not offenders, offenders
