"""The dependency rules of docs/architecture.md, and lint, as tests.

domain/ is pure: it never imports gateway, the I/O libraries, asyncio or os. gateway/ is wings,
one package per part of the data's way, ranked:

    cli -> http | analysis -> serving -> index -> projections -> store -> root modules -> domain

A module imports its own wing or a lower one, never a higher one; http and analysis never import
each other; there is no import circle; migrations/ imports only store/ and domain/; only store/
names the `events` table; no module takes another module's private (`_`) names. Checked on the
syntax tree, so `import x as y`, `from x import y` and nested imports are all caught.
"""

from __future__ import annotations

import ast
import re
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
    assert imported_roots("def f():\n    import gateway.http.app\n") == {"gateway"}


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


# --- the wings ------------------------------------------------------------------------------

RANK = {
    "domain": 0,
    "root": 1,
    "store": 2,
    "projections": 3,
    "index": 4,
    "serving": 5,
    "http": 6,
    "analysis": 6,
    "cli": 7,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def wing_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "domain":
        return "domain"
    if len(parts) > 1 and parts[1] in RANK:
        return parts[1]
    return "root"


def imported_modules(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import of our own packages in `path`, `from a import b` giving
    a.b as well when b is a module."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in {"gateway", "domain"}:
                names = [a.name for a in node.names]
                found.append((node.module, names))
                for name in names:
                    sub = f"{node.module}.{name}"
                    if (ROOT / (sub.replace(".", "/") + ".py")).exists():
                        found.append((sub, []))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "gateway"]
    return found


GATEWAY = sorted((ROOT / "gateway").rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    return {
        module_name(p): {m for m, _ in imported_modules(p) if m.startswith("gateway")}
        - {module_name(p)}
        for p in GATEWAY
    }


def offence(source: str, target: str) -> str | None:
    ws, wt = wing_of(source), wing_of(target)
    if ws == wt:
        return None
    if {ws, wt} == {"http", "analysis"}:
        return "http and analysis never import each other"
    if RANK[wt] >= RANK[ws]:
        return f"{ws} may not import {wt} (a higher or equal wing)"
    return None


def test_the_rule_names_the_offending_import() -> None:
    assert offence("gateway.serving.outcomes", "gateway.http.problems") == (
        "serving may not import http (a higher or equal wing)"
    )
    assert offence("gateway.http.handlers", "gateway.analysis.report") is not None
    assert offence("gateway.settings", "gateway.store.database") is not None
    assert offence("gateway.cli.serve", "gateway.http.app") is None
    assert offence("gateway.serving.items", "gateway.serving.requests") is None


@pytest.mark.parametrize("path", GATEWAY, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_import_points_down_the_wings(path: Path) -> None:
    source = module_name(path)
    bad = [
        f"{source} imports {target}: {why}"
        for target, _ in imported_modules(path)
        if target.startswith("gateway") and (why := offence(source, target))
    ]
    assert not bad, "\n".join(bad)


def test_there_is_no_import_circle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module)):
            pytest.fail("import circle: " + " -> ".join(circle))


def test_migrations_import_only_the_store_and_the_domain() -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted((ROOT / "migrations").rglob("*.py"))
        for module, _ in imported_modules(path)
        if wing_of(module) not in {"store", "domain"}
    ]
    assert not bad, bad


EVENTS_SQL = re.compile(r"\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+events\b", re.IGNORECASE)


def test_only_the_store_names_the_events_table() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in GATEWAY
        if wing_of(module_name(path)) != "store"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if EVENTS_SQL.search(line)
    ]
    assert not bad, "\n".join(bad)


def test_modules_take_only_public_names_from_each_other() -> None:
    bad = [
        f"{path.relative_to(ROOT)} takes {name} from {module}"
        for folder in ("gateway", "migrations", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for module, names in imported_modules(path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not bad, "\n".join(bad)
