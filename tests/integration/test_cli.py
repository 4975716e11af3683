"""The `segue` CLI as a user runs it: real processes, a real database."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg
import pytest

from gateway.store.database import check_log_order

ROOT = Path(__file__).resolve().parents[2]
SEGUE = [sys.executable, "-m", "gateway.cli"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SEGUE, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SEGUE_DATABASE_URL": db_url, "SEGUE_DATA_DIR": str(tmp_path)}


async def test_keys_create_list_revoke(env: dict[str, str], db_url: str) -> None:
    created = run(["keys", "create", "--name", "ingest-bot", "--scopes", "ingest,recommend"], env)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sk_")
    assert "\n" not in secret  # the key alone, on stdout
    key_id = secret.split("_")[1]

    listed = run(["keys", "list"], env)
    assert key_id in listed.stdout
    assert "ingest-bot" in listed.stdout
    assert secret not in listed.stdout
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == ["key", "id", "name", "scopes", "created", "(UTC)", "state"]
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}\s+active$", row), row

    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
        assert stored is not None
        assert secret.encode() not in bytes(stored["key_hash"])
        assert sorted(stored["scopes"]) == ["ingest", "recommend"]
    finally:
        await conn.close()

    revoked = run(["keys", "revoke", key_id], env)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in run(["keys", "list"], env).stdout
    again = run(["keys", "revoke", key_id], env)
    assert again.returncode != 0
    assert "no active key" in again.stderr


def test_keys_create_rejects_unknown_scope(env: dict[str, str]) -> None:
    result = run(["keys", "create", "--name", "x", "--scopes", "recommend,root"], env)
    assert result.returncode == 2
    assert "unknown scope 'root'" in result.stderr


def test_bad_configuration_is_named(env: dict[str, str]) -> None:
    result = run(["db", "current"], {**env, "SEGUE_PORT": "eighty"})
    assert result.returncode != 0
    assert "SEGUE_PORT" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[str], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail("the server did not become ready")


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    env.pop("XDG_RUNTIME_DIR", None)  # what a new user's shell may well lack
    env["SEGUE_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.mark.timeout(180)
def test_serve_on_the_embedded_database(embedded_env: dict[str, str]) -> None:
    """No SEGUE_DATABASE_URL: `segue serve` starts PostgreSQL itself, migrates and serves."""
    port = free_port()
    proc = subprocess.Popen(
        [*SEGUE, "serve", "--port", str(port)],
        cwd=ROOT,
        env=embedded_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc)
        # A second process joins the same embedded server.
        created = run(
            ["keys", "create", "--name", "t", "--scopes", "catalog,recommend"], embedded_env
        )
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        put = urllib.request.Request(
            base + "/v1/items/tr-1", data=b'{"kind": "track"}', headers=headers, method="PUT"
        )
        with urllib.request.urlopen(put, timeout=10) as resp:
            assert resp.status == 200
        rec = urllib.request.Request(
            base + "/v1/recommendations",
            data=b'{"user_id": "u1"}',
            headers=headers,
            method="POST",
        )
        with urllib.request.urlopen(rec, timeout=10) as resp:
            assert b'"item_id":"tr-1"' in resp.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "RuntimeDirWarning" not in output


async def test_index_build_publishes_where_gateways_look(
    env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.executemany(
            "INSERT INTO catalog_items (item_id, kind, attributes, global_position) "
            "VALUES ($1, 'track', '{}', 0)",
            [(f"it{i}",) for i in range(25)],
        )
    finally:
        await conn.close()
    result = run(["index", "build"], env)
    assert result.returncode == 0, result.stderr
    assert "published: 25 items" in result.stdout
    manifest = tmp_path / "index" / "manifest.json"
    assert json.loads(manifest.read_text())["params"]["solver"] == "implicit"
    # The operator's choice of solver reaches the build and its manifest.
    result = run(["index", "build"], {**env, "SEGUE_INDEX_ALS_SOLVER": "numpy"})
    assert result.returncode == 0, result.stderr
    assert json.loads(manifest.read_text())["params"]["solver"] == "numpy"


async def test_a_migration_postgresql_refuses_is_one_line_and_changes_nothing(
    empty_db_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        # Something already in the way of the first migration.
        await conn.execute("CREATE TABLE events (id int)")
        env = {**os.environ, "SEGUE_DATABASE_URL": empty_db_url, "SEGUE_DATA_DIR": str(tmp_path)}
        done = run(["db", "upgrade"], env)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1] == (
            'Error: migration failed, nothing changed: relation "events" already exists'
        )
        assert "Traceback" not in done.stderr
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        )
        assert [r[0] for r in tables] == ["events"]
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "args", [["status"], ["keys", "list"], ["db", "current"], ["db", "upgrade"], ["index", "build"]]
)
def test_an_unreachable_database_is_one_line_not_a_traceback(
    args: list[str], tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "SEGUE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/segue",
        "SEGUE_DATA_DIR": str(tmp_path),
        "SEGUE_STARTUP_WAIT_SECONDS": "0",
    }
    result = run(args, env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: the database cannot be reached: ConnectionRefusedError: [Errno 111] "
        f"Connect call failed ('127.0.0.1', {port})"
    ], result.stderr
    assert len(result.stderr.splitlines()) <= 2, result.stderr


def test_a_database_not_migrated_says_how_to_migrate(empty_db_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "SEGUE_DATABASE_URL": empty_db_url, "SEGUE_DATA_DIR": str(tmp_path)}
    result = run(["keys", "list"], env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "the database is not migrated" in result.stderr
    assert "run `segue db upgrade`" in result.stderr


async def test_a_log_restored_into_a_younger_cluster_is_refused_at_start(
    env: dict[str, str], db_url: str
) -> None:
    """A logical restore keeps the events' transaction ids, above the new server's: readers
    would see none of the history. Simulated with one event written "by" a transaction a
    million ids ahead of this server."""
    await check_log_order(db_url)  # a log in order passes
    conn = await asyncpg.connect(db_url)
    try:
        ahead = int(await conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
        await conn.execute(
            "INSERT INTO events (tx_id, stream_id, stream_version, event_id, event_type, "
            "schema_version, payload) VALUES ($1::text::xid8, 'restored-1', 1, $2, 'Probe', 1, "
            "'{}')",
            str(ahead + 1_000_000),
            uuid.uuid4(),
        )
    finally:
        await conn.close()
    for args in (["serve", "--port", "0"], ["project"]):
        result = run(args, env)
        assert result.returncode == 1, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
        [line] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert line.startswith("Error: cannot start: the event log holds events of transaction")
        assert "`segue export` and `segue import`" in line


def test_status_shows_the_published_index_as_the_admin_route_does(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = run(["status"], env)
    assert result.returncode == 0, result.stderr
    assert f"index: none published under {tmp_path / 'index'}" in result.stdout
    index = tmp_path / "index"
    index.mkdir()
    (index / "manifest.json").write_text(
        json.dumps(
            {
                "version": "20261207T100000",
                "built_at": "2026-12-07T10:00:00+00:00",
                "items": 1234,
                "listeners": 56,
                "recall_at_10": 0.9876,
                "candidates": {"recall_at_10": 1.0},
            }
        )
    )
    shown = run(["status"], env).stdout
    assert (
        "index: version 20261207T100000 built 2026-12-07T10:00:00, 1,234 items, 56 listeners, "
        "recall@10 0.988, candidates recall@10 1.000"
    ) in shown


def _demo_until_explained(env: dict[str, str], tmp_path: Path, run_no: int) -> tuple[str, str]:
    """Run `segue demo` until it has printed its examples; returns (key, stderr)."""
    out, err = tmp_path / f"demo{run_no}.out", tmp_path / f"demo{run_no}.err"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [*SEGUE, "demo", "--port", str(port), "--items", "40", "--users", "8"],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 120
            while "export SEGUE_KEY=" not in out.read_text():
                assert proc.poll() is None, err.read_text()[-3000:]
                assert time.monotonic() < deadline, err.read_text()[-3000:]
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    [line] = [x for x in out.read_text().splitlines() if "export SEGUE_KEY=" in x]
    return line.split("=", 1)[1].strip(), err.read_text()


def test_running_the_demo_again_reuses_its_data_and_its_key(
    env: dict[str, str], tmp_path: Path
) -> None:
    first_key, first = _demo_until_explained(env, tmp_path, 1)
    assert "seeded 40 items" in first
    second_key, second = _demo_until_explained(env, tmp_path, 2)
    assert second_key == first_key
    assert "the demo data is already here (40 items)" in second
    assert "seeded 0 items" not in second
    kept = tmp_path / "demo-key"
    assert kept.stat().st_mode & 0o077 == 0  # the owner's alone
    listed = run(["keys", "list"], env).stdout
    assert sum(" demo " in line for line in listed.splitlines()) == 1


@pytest.mark.parametrize("how", ["setting", "flag"])
def test_serve_without_migrating_refuses_a_schema_behind_head(
    empty_db_url: str, tmp_path: Path, how: str
) -> None:
    """With SEGUE_MIGRATE_ON_START=false or `serve --no-migrate` (a migration job runs `segue db
    upgrade`), a gateway never touches the schema, and refuses one that is not at head."""
    env = {**os.environ, "SEGUE_DATABASE_URL": empty_db_url, "SEGUE_DATA_DIR": str(tmp_path)}
    args = ["serve", "--port", "0"]
    if how == "setting":
        env["SEGUE_MIGRATE_ON_START"] = "false"
    else:
        args.append("--no-migrate")
    result = run(args, env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "the database is at revision none" in result.stderr
    assert "run it (`segue db upgrade`) first" in result.stderr
    assert run(["db", "current"], env).stdout.strip() == "none (not migrated)"  # untouched
