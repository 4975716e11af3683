"""Real processes for the fault tests, started and stopped in one place, each with a timeout so
that a hung process can never hang the suite.

- `Gateway`: `python -m gateway.cli serve` on a free port, with its log in a file; `kill()` is
  SIGKILL, `start()` again restarts it on the same port and database.
- `PrivateCluster`: a PostgreSQL server of the test's own, which the test may stop and start
  (the suite's shared server must never be stopped). Its binaries are pgserver's, the ones the
  embedded default uses, so it works on a machine with no system PostgreSQL (CI).
- `Load`: client tasks posting outcome batches (unique event ids) and recommendations as fast as
  they are answered, recording what was acknowledged with a 2xx and every other answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from gateway.store.embedded import _ensure_runtime_dir

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def segue_env(db_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGUE_")}
    return {
        **env,
        "SEGUE_DATABASE_URL": db_url,
        "SEGUE_DATA_DIR": str(data_dir),
        "SEGUE_LOG_LEVEL": "WARNING",
        "SEGUE_KEY_CACHE_SECONDS": "0",
        # The clients here are the load, not abuse: rate limits stay out of the way.
        "SEGUE_RATE_LIMIT_PER_SECOND": "1000000",
        "SEGUE_RATE_LIMIT_BURST": "1000000",
        **extra,
    }


def summary(scenario: str, **figures: object) -> None:
    """The one line per scenario the report collects (run pytest with -s to see it)."""
    print(f"\nFAULTS {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, deadline: float = 30.0, every: float = 0.05
) -> float:
    """Poll `check` until it holds; returns the seconds it took, fails naming `what`."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > deadline:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        await asyncio.sleep(every)
    return time.monotonic() - start


# --- the gateway ------------------------------------------------------------------------------


class Gateway:
    """`segue serve` in a process of its own. Use as a context manager: whatever happens, the
    process is gone when the block ends."""

    def __init__(self, db_url: str, data_dir: Path, **settings: str) -> None:
        self.db_url = db_url
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"gateway-{self.port}-{self.starts}.log"

    def spawn(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=segue_env(self.db_url, self.data_dir, **self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start(self) -> None:
        """Start the process and wait until it answers /healthz."""
        self.spawn()
        await wait_until(self._healthy, f"the gateway on port {self.port}", START_TIMEOUT, 0.1)

    async def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}: {self.log()}")
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s,
                s.get(self.base_url + "/healthz") as r,
            ):
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing, no goodbyes."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        assert self.proc.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def all_logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.data_dir.glob("gateway-*.log"))
        )

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()


class Projector:
    """`segue project` in a process of its own, for killing; gone when the block ends."""

    def __init__(self, db_url: str, data_dir: Path, **settings: str) -> None:
        self.db_url = db_url
        self.data_dir = data_dir
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with (self.data_dir / f"project-{self.starts}.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "project"],
                cwd=ROOT,
                env=segue_env(self.db_url, self.data_dir, **self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the projector had exited with {self.proc.returncode}")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> Projector:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)


def segue(db_url: str, data_dir: Path, *args: str, timeout: float = 120.0) -> str:
    """Run one `segue` command to the end; its stdout, or a failure with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env=segue_env(db_url, data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"segue {' '.join(args)}: {done.stderr[-3000:]}"
    return done.stdout


# --- a PostgreSQL server the test may stop ---------------------------------------------------


def _pg_bin() -> Path:
    # pgserver warns (an error under the suite's filters) without a runtime folder; give it
    # one that outlives every cluster, as the embedded default does.
    _ensure_runtime_dir(Path(tempfile.gettempdir()) / "segue-fault-tests")
    from pgserver._commands import POSTGRES_BIN_PATH

    path: Path = POSTGRES_BIN_PATH
    return path


class PrivateCluster:
    """A throw-away PostgreSQL cluster in a folder of its own, listening on a unix socket there.

    As root, PostgreSQL must run as another user: the `pgserver` system user, as the embedded
    default does."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="segue-fault-pg-"))
        self.data = self.folder / "data"
        self.user: str | None = None
        _pg_bin()
        if os.geteuid() == 0:
            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            self.user = "pgserver"
            ensure_user_exists(self.user)
            ensure_prefix_permissions(_pg_bin())
            ensure_folder_permissions(_pg_bin(), 0o555)
            ensure_folder_permissions(_pg_bin().parent / "lib", 0o444)
            shutil.chown(self.folder, self.user)
            self.folder.chmod(0o755)
        self.stops = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:@/{database}?host={self.folder}"

    def _run(self, exe: str, *args: str, timeout: float = 60.0) -> None:
        done = subprocess.run(
            [str(_pg_bin() / exe), *args],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{exe} {args}: {done.stderr}\n{tail}")

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "--auth=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
            "--no-sync",
        )

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-t",
            "30",
            "-l",
            str(self.folder / "server.log"),
            "-o",
            f"-h '' -k {self.folder} -c fsync=on -c max_connections=100",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session (they see an admin shutdown); `immediate` is a crash: the
        server restarts with recovery, and whatever was committed must still be there."""
        self.stops += 1
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, WAL writer...),
        read from /proc: the postmaster's pid file, then its children."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                # The command name is in parentheses and may hold spaces: split after it.
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> list[int]:
        """SIGSTOP every process of the cluster: it still accepts connections (the kernel queues
        them) but answers nothing, like a server behind a network black hole. Returns the pids,
        for `thaw`."""
        # The postmaster first, so that it forks nothing after its children were listed.
        postmaster, *_ = self.pids()
        os.kill(postmaster, signal.SIGSTOP)
        pids = self.pids()
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    cluster = PrivateCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


# --- load -------------------------------------------------------------------------------------

ITEM_KINDS = ("track", "episode")
OUTCOME_KINDS = ("stream_start", "stream_30s", "complete", "skip", "save", "like")


def catalogue(n: int) -> list[dict[str, Any]]:
    return [
        {
            "item_id": f"it-{i}",
            "kind": ITEM_KINDS[i % 2],
            "attributes": {"artist": f"artist-{i % 7}", "show": f"show-{i % 5}"},
        }
        for i in range(n)
    ]


@dataclass
class Load:
    """What a set of clients sent and what they were told."""

    base_url: str
    key: str
    items: int = 40
    users: int = 30
    batch: int = 20
    timeout: float = 10.0
    acked_events: set[uuid.UUID] = field(default_factory=set)
    acked_recommendations: set[uuid.UUID] = field(default_factory=set)
    duplicates_reported: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # connection errors, timeouts
    problems: list[tuple[int, str, Mapping[str, str], bytes]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}

    def outcome_batch(self, rng: random.Random) -> list[dict[str, Any]]:
        recs = list(self.acked_recommendations)
        out = []
        for _ in range(self.batch):
            o: dict[str, Any] = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "user_id": f"user-{rng.randrange(self.users)}",
                "item_id": f"it-{rng.randrange(self.items)}",
                "kind": rng.choice(OUTCOME_KINDS),
                "value": rng.randrange(1, 300_000),
            }
            out.append(o)
        # Some outcomes name a slate they came from: the attribution path is exercised too.
        if recs and self.slates:
            rid = rng.choice(recs)
            slate = self.slates.get(rid)
            if slate:
                out[0]["recommendation_id"] = str(rid)
                out[0]["item_id"] = rng.choice(slate)
        return out

    slates: dict[uuid.UUID, list[str]] = field(default_factory=dict)
    # (started, seconds, status or the error's name) of every request: what a soak checks for
    # requests in flight while the database was frozen.
    timeline: list[tuple[float, float, int | str]] = field(default_factory=list)

    async def send(
        self, session: aiohttp.ClientSession, path: str, body: Any
    ) -> tuple[int, Any] | None:
        """One request; None if no HTTP answer came (connection refused or reset, timeout)."""
        started = time.monotonic()
        try:
            async with session.post(
                self.base_url + path, data=orjson.dumps(body), headers=self.headers
            ) as r:
                raw = await r.read()
                took = time.monotonic() - started
                self.latencies.append(took)
                self.timeline.append((started, took, r.status))
                self.statuses[r.status] += 1
                if r.status >= 300:
                    self.problems.append((r.status, r.content_type, dict(r.headers), raw))
                    return r.status, None
                return r.status, orjson.loads(raw)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            self.failures[type(exc).__name__] += 1
            self.timeline.append((started, time.monotonic() - started, type(exc).__name__))
            return None

    async def outcomes_client(self, seed: int) -> None:
        rng = random.Random(seed)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout)
        ) as session:
            while not self.stop.is_set():
                batch = self.outcome_batch(rng)
                got = await self.send(session, "/v1/outcomes", {"outcomes": batch})
                if got is not None and 200 <= got[0] < 300:
                    self.acked_events.update(uuid.UUID(o["event_id"]) for o in batch)
                    self.duplicates_reported += got[1]["duplicates"]
                else:
                    await asyncio.sleep(0.02)  # gone or unavailable: don't spin

    async def recommendations_client(self, seed: int) -> None:
        rng = random.Random(seed)
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout)
        ) as session:
            while not self.stop.is_set():
                body = {"user_id": f"user-{rng.randrange(self.users)}", "surface": "home", "n": 5}
                got = await self.send(session, "/v1/recommendations", body)
                if got is not None and 200 <= got[0] < 300:
                    rid = uuid.UUID(got[1]["recommendation_id"])
                    self.acked_recommendations.add(rid)
                    self.slates[rid] = [i["item_id"] for i in got[1]["items"]]
                else:
                    await asyncio.sleep(0.02)

    @contextlib.asynccontextmanager
    async def running(self, outcome_clients: int = 3, recommendation_clients: int = 2) -> Any:
        self.stop.clear()
        tasks = [
            asyncio.create_task(self.outcomes_client(1000 + i + len(self.acked_events)))
            for i in range(outcome_clients)
        ] + [
            asyncio.create_task(self.recommendations_client(2000 + i + len(self.slates)))
            for i in range(recommendation_clients)
        ]
        try:
            yield self
        finally:
            self.stop.set()
            done, pending = await asyncio.wait(tasks, timeout=self.timeout + 5)
            for t in pending:
                t.cancel()
            for t in done:
                t.result()  # a client's own bug fails the test


async def seed_catalogue(base_url: str, key: str, n: int) -> None:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
        s.post(
            base_url + "/v1/items",
            json={"items": catalogue(n)},
            headers={"Authorization": f"Bearer {key}"},
        ) as r,
    ):
        assert r.status == 200, await r.text()


async def make_key(db_url: str) -> str:
    from gateway.http.auth import Scope, create_key

    conn = await asyncpg.connect(db_url)
    try:
        _, secret = await create_key(conn, "faults", frozenset(Scope))
        return secret
    finally:
        await conn.close()


# --- what the store holds ---------------------------------------------------------------------


async def stored_counts(
    conn: asyncpg.Connection, event_ids: set[uuid.UUID], recommendation_ids: set[uuid.UUID]
) -> tuple[dict[uuid.UUID, int], dict[uuid.UUID, int]]:
    """How many times each acknowledged outcome and recommendation is in the log."""
    rows = await conn.fetch(
        "SELECT event_id, count(*) FROM events WHERE event_id = ANY($1::uuid[]) GROUP BY 1",
        list(event_ids),
    )
    events = {r[0]: r[1] for r in rows}
    rows = await conn.fetch(
        "SELECT substr(stream_id, 16)::uuid, count(*) FROM events "
        "WHERE stream_id = ANY($1::text[]) AND event_type = 'RecommendationServed' GROUP BY 1",
        [f"recommendation-{r}" for r in recommendation_ids],
    )
    recs = {r[0]: r[1] for r in rows}
    return events, recs


async def assert_acknowledged_stored_once(conn: asyncpg.Connection, load: Load) -> int:
    """Every 2xx'd outcome and recommendation is in the log exactly once; the log holds no
    event id twice. Returns how many acknowledged events were checked."""
    events, recs = await stored_counts(conn, load.acked_events, load.acked_recommendations)
    missing = load.acked_events - events.keys()
    assert not missing, f"{len(missing)} acknowledged outcomes lost, e.g. {list(missing)[:3]}"
    twice = {k: n for k, n in events.items() if n != 1}
    assert not twice, f"outcomes stored more than once: {list(twice.items())[:3]}"
    missing_recs = load.acked_recommendations - recs.keys()
    assert not missing_recs, f"{len(missing_recs)} acknowledged recommendations lost"
    assert all(n == 1 for n in recs.values())
    dup = await conn.fetchval(
        "SELECT count(*) FROM (SELECT event_id FROM events GROUP BY 1 HAVING count(*) > 1) d"
    )
    assert dup == 0, f"{dup} event ids are in the log more than once"
    per_stream = await conn.fetchval(
        "SELECT count(*) FROM (SELECT stream_id, stream_version FROM events "
        "GROUP BY 1, 2 HAVING count(*) > 1) d"
    )
    assert per_stream == 0, "a stream version is in the log twice"
    return len(load.acked_events) + len(load.acked_recommendations)


# --- asking a running gateway -------------------------------------------------------------------


async def get_json(
    base_url: str, path: str, key: str | None = None, method: str = "GET", body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s,
        s.request(method, base_url + path, json=body, headers=headers) as r,
    ):
        raw = await r.read()
        return r.status, orjson.loads(raw) if raw else None


async def metric(base_url: str, name: str) -> float | None:
    """One unlabelled sample of the gateway's /metrics, or None if it is not there."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.get(base_url + "/metrics") as r,
    ):
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def data_routes() -> list[tuple[str, str, Any]]:
    """One request per data route (every route that needs the database)."""
    return [
        ("POST", "/v1/recommendations", {"user_id": "user-1", "surface": "home", "n": 3}),
        ("POST", "/v1/blends", {"user_ids": ["user-1", "user-2"], "surface": "home", "n": 3}),
        ("GET", "/v1/users/user-1/discover?n=3", None),
        ("GET", "/v1/items/it-1/similar?n=3", None),
        (
            "POST",
            "/v1/outcomes",
            {
                "outcomes": [
                    {
                        "event_id": str(uuid.uuid4()),
                        "user_id": "user-1",
                        "item_id": "it-1",
                        "kind": "stream_30s",
                    }
                ]
            },
        ),
        ("PUT", "/v1/items/it-new", {"kind": "track", "attributes": {}}),
        ("POST", "/v1/items", {"items": [{"item_id": "it-new-2", "kind": "track"}]}),
        ("GET", "/v1/items/it-1", None),
        ("DELETE", "/v1/items/it-2", None),
        ("GET", "/v1/items/it-1/rewards", None),
        ("GET", "/v1/admin/status", None),
    ]


async def ready(base_url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
            s.get(base_url + "/readyz") as r,
        ):
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
