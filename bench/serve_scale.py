"""Serving at catalogue scale: recommendation throughput, latency and CPU per request of a real
`segue serve --workers W` over catalogues of growing size, each beside a minimal aiohttp app under
the same process model, so that what the catalogue's size costs shows apart from the machine.

    python bench/serve_scale.py [--sizes 1000,100000,1000000] [--workers 1,2] [--seconds 20]
                                [--connections 32] [--listeners 500] [--outcomes 20000]
                                [--keep DIR [--reuse]] [--url postgresql://...]

For each catalogue size N, on a throw-away database (one per size):

1. load: a `segue serve` (one worker) takes N items through `POST /v1/items`, 1,000 a request
   (the most the API takes), --load-concurrency requests in flight. Items are `it0`..`it<N-1>`,
   90% tracks and 10% episodes, each with an `artist` attribute drawn from N/10 artists and a
   64-dimension content vector (its artist's direction plus noise, seeded numpy). The API is
   fast enough to load the way a client would (6,400 items/s loading 10,000 on a 2-core box:
   some 3 minutes for 1M if the rate holds); `segue import` of a file of ItemUpserted events
   would be the bulk path otherwise. The rate is printed, with what 1M would take at it.
2. history: --listeners listeners `lu0`.. ask for home slates (`POST /v1/recommendations`) round
   after round, and answer each slate through `POST /v1/outcomes` with its recommendation id
   (stream_30s, sometimes complete and save, for items near the listener's taste; skip for the
   rest) until --outcomes outcomes are recorded; then the bench waits for the projections to
   catch up and stops that gateway.
3. index: `segue index build` runs as a subprocess (its output shown), under /usr/bin/time -v
   when there is one (else its memory is sampled): wall seconds, peak resident memory, the size
   of the published version folder, and the recall@10 its manifest records.
4. serve: for each worker count W, `segue serve --workers W` on a free port over that database
   and index (scheduled index builds off, rate limit out of the way, projectors in-process as in
   single-node mode), warmed up for --warmup seconds, then wrk (1 thread, --connections
   connections, --latency) for --seconds, posting `{"user_id": "lu<k>", "surface": "home",
   "n": 10}` for k = 0..listeners-1 in turn with the key. Requests/s, p50 and p99 come from
   wrk's own summary (a `done` hook prints it); the CPU seconds of the gateway's processes (the
   supervisor and its workers, by psutil) and of the database's backends serving this database
   give CPU ms per request.
5. minimal: an aiohttp app whose POST handler answers a real 10-item response body (captured
   from the gateway just before) runs with the same W under the same process model (W = 1: one
   process; W > 1: `gateway.cli.supervisor.supervise`, SO_REUSEPORT, as `segue serve --workers`),
   warmed up and measured with the same wrk script. Throughput ratio = Segue / minimal (1 is
   as fast as aiohttp can be here); p99 ratio = Segue's p99 / minimal's.

At the end one markdown table has a row per size and worker count, followed by the derived rows:
each ratio at the largest size over the same at the smallest (1.0: the catalogue's size costs
nothing), the throughput with the most workers over the fewest, per size, and the index builds.

--keep DIR keeps each size's database (its name in DIR/items-<N>/state.json) and data folder
(DIR/items-<N>/data, the index); with --reuse a size whose state is there skips steps 1-3.
Without --keep everything is dropped at the end of its size.

wrk, PostgreSQL and the gateway share the machine: on a 2-core box the minimal app's figures
are bounded by wrk's own CPU as much as by aiohttp's, and --workers 2 competes with both; read
the ratios side by side, not the absolute figures. Keep other load off the machine while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import orjson
import psutil  # type: ignore[import-untyped]  # comes with pgserver; ships no types
from aiohttp import web
from numpy.typing import NDArray

from gateway.client import Recommendation, SegueClient, outcome

from _common import ROOT, add_url_argument, bench_key, free_port, serving, throwaway_database

DIMS = 64
ITEMS_PER_REQUEST = 1000  # the API's largest batch (gateway.serving.requests.MAX_ITEMS)
OUTCOMES_PER_REQUEST = 1000
TIME = "/usr/bin/time"
SELF = Path(__file__).resolve()
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f} s] {message}", flush=True)


# --- the synthetic catalogue and listeners -------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """N items: kind, artist, and a content vector near the artist's unit direction."""

    size: int
    seed: int
    artist_of: NDArray[np.int64]
    episode: NDArray[np.bool_]
    centers: NDArray[np.float32]

    @classmethod
    def make(cls, size: int, seed: int) -> Catalogue:
        rng = np.random.default_rng([seed, size])
        artists = max(1, size // 10)
        centers = rng.normal(size=(artists, DIMS)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        return cls(
            size=size,
            seed=seed,
            artist_of=rng.integers(0, artists, size=size),
            episode=rng.random(size) < 0.1,
            centers=centers,
        )

    def body(self, start: int, stop: int) -> bytes:
        """The `POST /v1/items` body of items start..stop-1 (vectors rounded to 4 decimals)."""
        rng = np.random.default_rng([self.seed, self.size, start])
        artists = self.artist_of[start:stop]
        vectors = self.centers[artists] + rng.normal(scale=0.07, size=(len(artists), DIMS))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.round(vectors, 4).astype(np.float32)
        items = [
            {
                "item_id": f"it{i}",
                "kind": "episode" if self.episode[i] else "track",
                "attributes": {"artist": f"ar{artists[j]}"},
                "vector": vectors[j],
            }
            for j, i in enumerate(range(start, stop))
        ]
        return orjson.dumps({"items": items}, option=orjson.OPT_SERIALIZE_NUMPY)

    def tastes(self, listeners: int) -> NDArray[np.float32]:
        """Each listener's taste: the sum of three artists' directions, normalised."""
        rng = np.random.default_rng([self.seed, self.size, 1])
        picks = rng.integers(0, len(self.centers), size=(listeners, 3))
        t = self.centers[picks].sum(axis=1)
        out: NDArray[np.float32] = t / np.linalg.norm(t, axis=1, keepdims=True)
        return out

    def appeal(self, taste: NDArray[np.float32], item_id: str) -> float:
        """Probability that a listener of `taste` streams `item_id`."""
        dot = float(self.centers[self.artist_of[int(item_id[2:])]] @ taste)
        return 1.0 / (1.0 + math.exp(-(8.0 * dot - 0.3)))


async def load_items(
    client: SegueClient, key: str, catalogue: Catalogue, concurrency: int
) -> float:
    """Upsert the catalogue through the API; returns the seconds it took."""
    started = time.perf_counter()
    batches = iter(range(0, catalogue.size, ITEMS_PER_REQUEST))
    done = 0
    last_report = time.monotonic()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal done, last_report
            for start in batches:
                stop = min(catalogue.size, start + ITEMS_PER_REQUEST)
                body = catalogue.body(start, stop)
                async with session.post(client.base_url + "/v1/items", data=body) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"POST /v1/items: {resp.status} {await resp.text()}")
                    await resp.read()
                done += stop - start
                if time.monotonic() - last_report > 10:
                    last_report = time.monotonic()
                    rate = done / (time.perf_counter() - started)
                    say(f"  {done:,} / {catalogue.size:,} items ({rate:,.0f}/s)")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def give_history(
    client: SegueClient, catalogue: Catalogue, listeners: int, target: int, concurrency: int
) -> tuple[int, int]:
    """Rounds of real slates and their outcomes until `target` outcomes are recorded;
    returns (slates, outcomes)."""
    tastes = catalogue.tastes(listeners)
    sem = asyncio.Semaphore(concurrency)
    slates = recorded = answered = 0
    round_ = 0
    last_report = time.monotonic()

    async def ask(k: int) -> tuple[int, Recommendation]:
        nonlocal answered, last_report
        async with sem:
            rec = await client.recommend(f"lu{k}", surface="home", n=10)
        answered += 1
        if time.monotonic() - last_report > 10:  # slow slates: show they are coming
            last_report = time.monotonic()
            say(f"  {answered:,} slates so far")
        return k, rec

    async def post(batch: list[dict[str, Any]]) -> None:
        async with sem:
            await client.record_outcomes(batch)

    while recorded < target:
        started = time.perf_counter()
        asked = listeners
        if slates:  # the last round asks only as many listeners as the outcomes still need
            per_slate = recorded / slates
            asked = min(listeners, math.ceil(1.25 * (target - recorded) / per_slate))
        answers = await asyncio.gather(*(ask(k) for k in range(asked)))
        slates += len(answers)
        outcomes: list[dict[str, Any]] = []
        for k, rec in answers:
            rng = np.random.default_rng([catalogue.seed, k, round_])
            user, rid = f"lu{k}", rec["recommendation_id"]
            for entry in rec["items"]:
                item = entry["item_id"]
                if rng.random() < catalogue.appeal(tastes[k], item):
                    played = float(rng.integers(31_000, 240_000))
                    kinds = [("stream_30s", played)]
                    if rng.random() < 0.5:
                        kinds.append(("complete", played))
                    if rng.random() < 0.15:
                        kinds.append(("save", 0.0))
                else:
                    kinds = [("skip", 5_000.0)]
                outcomes += [
                    outcome(user, item, kind, recommendation_id=rid, value=value)
                    for kind, value in kinds
                ]
        if not outcomes:
            raise RuntimeError("the gateway answered empty slates: nothing to record")
        outcomes = outcomes[: target - recorded]
        await asyncio.gather(
            *(
                post(outcomes[i : i + OUTCOMES_PER_REQUEST])
                for i in range(0, len(outcomes), OUTCOMES_PER_REQUEST)
            )
        )
        recorded += len(outcomes)
        round_ += 1
        say(
            f"  round {round_}: {len(answers)} slates, {len(outcomes):,} outcomes "
            f"({recorded:,} / {target:,}) in {time.perf_counter() - started:.1f} s"
        )
    return slates, recorded


async def caught_up(client: SegueClient, timeout: float) -> None:  # noqa: ASYNC109
    """Wait until every live projection has applied the whole log."""
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while True:
        status: dict[str, Any] = await client.request("GET", "/v1/admin/status")
        live = [p for p in status["projections"] if p["status"] == "live"]
        if live and all(p["lag_events"] == 0 for p in live):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"projections did not catch up: {status['projections']}")
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            lag = ", ".join(f"{p['name']} {p['lag_events']:,}" for p in status["projections"])
            say(f"  projections behind by: {lag or 'not started'}")
        await asyncio.sleep(0.2)  # polling another process's progress


# --- index build ---------------------------------------------------------------------------------


@dataclass
class Build:
    seconds: float  # wall time of `segue index build`
    fit_seconds: float  # what the manifest records (learning and writing the index)
    peak_mb: float
    file_mb: float
    recall_at_10: float
    items: int
    listeners: int
    search_k: int = 0  # as the build tuned it for the recall target
    search: str = ""  # how listeners the build has not seen are searched: annoy or exact
    candidates_recall: float = math.nan  # the precomputed lists' recall@10 against exact


def tree(pid: int) -> list[Any]:
    """The process and its descendants (psutil.Process objects)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process and its live descendants have used."""
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            total += float(t.user) + float(t.system)
    return total


def tree_pss(pid: int) -> float:
    """Proportional set size of the process tree, in bytes: pages shared by several of its
    processes (a mapped index) are counted once in all, not once per process."""
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += float(p.memory_full_info().pss)
    return total


def tree_rss(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += float(p.memory_info().rss)
    return total


def max_rss_mb(report: Path) -> float:
    """The peak resident memory a `/usr/bin/time -v` report gives, in MB."""
    for line in report.read_text().splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1]) / 1024
    raise RuntimeError(f"no maximum resident set size in {report}")


def published(index_root: Path) -> tuple[dict[str, Any], int]:
    """The manifest, and the bytes of the version folder it names."""
    manifest: dict[str, Any] = json.loads((index_root / "manifest.json").read_text())
    folder = index_root / manifest["folder"]
    return manifest, sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


async def build_index(env: dict[str, str], index_root: Path) -> Build:
    """`segue index build`, its output passed through; peak memory by /usr/bin/time -v when
    there is one, else by sampling the process tree every 0.1 s."""
    with tempfile.NamedTemporaryFile(prefix="segue-time-", suffix=".txt") as report:
        argv = [sys.executable, "-m", "gateway.cli", "index", "build"]
        timed = os.access(TIME, os.X_OK)
        if timed:
            argv = [TIME, "-v", "-o", report.name, *argv]
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=env)
        sampled = 0.0
        while proc.returncode is None:
            if not timed:
                sampled = max(sampled, tree_rss(proc.pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.1)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"segue index build exited with {proc.returncode}")
        peak_mb = max_rss_mb(Path(report.name)) if timed else sampled / 2**20
    manifest, size = published(index_root)
    return Build(
        seconds=seconds,
        fit_seconds=float(manifest["seconds"]),
        peak_mb=peak_mb,
        file_mb=size / 2**20,
        recall_at_10=float(manifest["recall_at_10"]),
        items=int(manifest["items"]),
        listeners=int(manifest["listeners"]),
        search_k=int(manifest["params"]["search_k"]),
        search=str(manifest.get("search", {}).get("method", "annoy")),
        candidates_recall=float(manifest.get("candidates", {}).get("recall_at_10", math.nan)),
    )


# --- processes under load ------------------------------------------------------------------------


def listening(pid: int, port: int) -> int:
    """How many processes of the tree listen on `port`."""
    count = 0
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port
                for c in p.net_connections(kind="tcp")
            ):
                count += 1
    return count


def tail_of(log: Path, chars: int = 3000) -> str:
    return log.read_bytes()[-chars:].decode(errors="replace")


@contextlib.asynccontextmanager
async def process(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    log: Path,
    port: int,
    workers: int,
    ready: Callable[[], Awaitable[bool]],
) -> AsyncIterator[int]:
    """A server process (its output in `log`); yields its pid once `workers` processes listen on
    `port` and `ready()` says yes. Terminated (SIGTERM, as a deployment stops it) at the end."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 180
        while listening(proc.pid, port) < workers or not await ready():
            if proc.returncode is not None:
                tail = await asyncio.to_thread(tail_of, log)
                raise RuntimeError(f"{name} exited with {proc.returncode}; its log ends:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not get ready; see {log}")
            await asyncio.sleep(0.2)  # polling another process's start-up
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def get_ok(url: str) -> bool:
    """One GET on a fresh connection: 200?"""
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=5),
            ) as session,
            session.get(url) as resp,
        ):
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def gateway_env(db_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SEGUE_DATABASE_URL": db_url,
        "SEGUE_DATA_DIR": str(data_dir),
        "SEGUE_LOG_LEVEL": "WARNING",
        # The index is built once, by the bench; a scheduled build must not land in a run.
        "SEGUE_RUN_INDEX_BUILDER": "false",
        "SEGUE_RATE_LIMIT_PER_SECOND": "1000000000",
        "SEGUE_RATE_LIMIT_BURST": "1000000000",
    }


# --- wrk -----------------------------------------------------------------------------------------

LUA = """
local requests = {}
local i = 0

function init(args)
  for k = 0, LISTENERS - 1 do
    local body = '{"user_id": "lu' .. k .. '", "surface": "home", "n": 10}'
    requests[k + 1] = wrk.format("POST", "/v1/recommendations",
      {["Content-Type"] = "application/json", ["Authorization"] = "Bearer KEY"}, body)
  end
end

function request()
  i = i % #requests + 1
  return requests[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_SUMMARY %d %d %.1f %.1f %.1f %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class Wrk:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors, timeouts and non-2xx/3xx answers

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def lua_script(folder: Path, key: str, listeners: int) -> Path:
    if not key.replace("_", "").replace("-", "").isalnum():
        raise ValueError("the API key has characters the Lua script would need escaped")
    path = folder / "recommend.lua"
    path.write_text(LUA.replace("LISTENERS", str(listeners)).replace("KEY", key))
    return path


async def wrk(
    port: int, script: Path, seconds: int, connections: int, wrk_timeout: int, log: Path
) -> Wrk:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={wrk_timeout}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/v1/recommendations",
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    with log.open("a") as f:
        f.write(" ".join(argv) + "\n" + text + "\n")
    summary = [line for line in text.splitlines() if line.startswith("WRK_SUMMARY ")]
    if proc.returncode != 0 or not summary:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    f_ = summary[-1].split()[1:]
    requests, duration_us = int(f_[0]), int(f_[1])
    return Wrk(
        requests=requests,
        seconds=duration_us / 1e6,
        p50_ms=float(f_[2]) / 1000,
        p99_ms=float(f_[3]) / 1000,
        max_ms=float(f_[4]) / 1000,
        errors=sum(int(x) for x in f_[5:]),
    )


async def backend_cpu(admin: asyncpg.Connection, database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to `database` (readable only when the
    server runs on this machine; empty otherwise)."""
    pids = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    out: dict[int, float] = {}
    for (pid,) in pids:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = psutil.Process(pid).cpu_times()
            out[pid] = float(t.user) + float(t.system)
    return out


@dataclass
class Measured:
    wrk: Wrk
    cpu_ms: float  # the server's processes, per request
    db_cpu_ms: float | None  # the database backends serving it, per request
    pss_mb: float = math.nan  # the server's processes at the end of the run


async def measure(
    pid: int,
    port: int,
    script: Path,
    args: argparse.Namespace,
    log: Path,
    db: tuple[asyncpg.Connection, str] | None = None,
) -> Measured:
    if args.warmup:
        await wrk(port, script, args.warmup, args.connections, args.wrk_timeout, log)
    cpu0 = tree_cpu(pid)
    db0 = await backend_cpu(*db) if db else {}
    result = await wrk(port, script, args.seconds, args.connections, args.wrk_timeout, log)
    cpu = tree_cpu(pid) - cpu0
    db_ms: float | None = None
    if db:
        db1 = await backend_cpu(*db)
        if db1:
            spent = sum(t - db0.get(p, 0.0) for p, t in db1.items())
            db_ms = spent * 1000 / max(1, result.requests)
    return Measured(result, cpu * 1000 / max(1, result.requests), db_ms, tree_pss(pid) / 2**20)


# --- the minimal app -----------------------------------------------------------------------------


def run_minimal(body_path: str, host: str, port: int, reuse_port: bool) -> None:
    """One process of the minimal app: POST answers the captured body, as JSON."""
    body = Path(body_path).read_bytes()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    async def alive(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/recommendations", answer)
    app.router.add_get("/", alive)
    web.run_app(app, host=host, port=port, reuse_port=reuse_port, print=None, access_log=None)


def minimal_main(argv: Sequence[str]) -> None:
    """`serve_scale.py minimal-server BODY PORT WORKERS`: what `segue serve --workers` does,
    with the minimal app as the worker."""
    body, port, workers = argv[0], int(argv[1]), int(argv[2])
    if workers == 1:
        run_minimal(body, "127.0.0.1", port, False)
        return
    from gateway.cli.supervisor import supervise

    sys.exit(supervise(run_minimal, (body, "127.0.0.1", port, True), workers))


# --- one catalogue size --------------------------------------------------------------------------


@dataclass
class Prepared:
    db_url: str
    key: str
    data_dir: Path
    build: Build
    load_seconds: float


@dataclass
class Row:
    items: int
    workers: int
    segue: Measured
    minimal: Measured


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


async def prepare(args: argparse.Namespace, size: int, db_url: str, data_dir: Path) -> Prepared:
    """Load, give history, build the index."""
    key = await bench_key(db_url)
    catalogue = Catalogue.make(size, args.seed)
    settings = {k: v for k, v in gateway_env(db_url, data_dir).items() if k.startswith("SEGUE_")}
    say(f"items {size:,}: starting a gateway to load through")
    async with serving(db_url, key, timeout=600, settings=settings, stop_timeout=120) as client:
        say(f"items {size:,}: loading {size:,} items, {ITEMS_PER_REQUEST} a request")
        load_seconds = await load_items(client, key, catalogue, args.load_concurrency)
        say(
            f"items {size:,}: loaded in {load_seconds:.1f} s ({size / load_seconds:,.0f} items/s; "
            f"1M would take ~{1e6 / (size / load_seconds) / 60:.1f} min at this rate)"
        )
        started = time.perf_counter()
        slates, outcomes = await give_history(
            client, catalogue, args.listeners, args.outcomes, args.history_concurrency
        )
        say(
            f"items {size:,}: history of {args.listeners} listeners: {slates:,} slates, "
            f"{outcomes:,} outcomes in {time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        await caught_up(client, timeout=max(300.0, size / 500))
        say(f"items {size:,}: projections caught up in {time.perf_counter() - started:.1f} s")
    say(f"items {size:,}: segue index build")
    build = await build_index(gateway_env(db_url, data_dir), data_dir / "index")
    say(
        f"items {size:,}: index built in {build.seconds:.1f} s ({build.fit_seconds:.1f} s "
        f"learning and writing), peak {build.peak_mb:,.0f} MB, files {build.file_mb:,.1f} MB, "
        f"recall@10 {build.recall_at_10:.3f}, {build.items:,} items, {build.listeners} listeners"
    )
    return Prepared(db_url, key, data_dir, build, load_seconds)


async def serve_rows(
    args: argparse.Namespace, size: int, prepared: Prepared, work: Path
) -> list[Row]:
    log = work / "servers.log"
    wrk_log = work / "wrk.log"
    script = lua_script(work, prepared.key, args.listeners)
    body_path = work / "response.json"
    rows = []
    captured = False
    admin = await asyncpg.connect(args.url)
    try:
        for workers in args.workers:
            port = free_port()
            argv = [sys.executable, "-m", "gateway.cli", "serve"]
            argv += ["--port", str(port), "--workers", str(workers)]
            base = f"http://127.0.0.1:{port}"
            say(f"items {size:,}, {workers} worker(s): segue serve on port {port}")
            async with process(
                "segue serve",
                argv,
                gateway_env(prepared.db_url, prepared.data_dir),
                log,
                port,
                workers,
                functools.partial(get_ok, base + "/readyz"),
            ) as pid:
                if not captured:
                    body_path.write_bytes(await capture(base, prepared.key))
                    captured = True
                say(
                    f"items {size:,}, {workers} worker(s): wrk {args.warmup} s warm-up, "
                    f"{args.seconds} s measured"
                )
                segue = await measure(
                    pid, port, script, args, wrk_log, (admin, database_name(prepared.db_url))
                )
            report("segue", size, workers, segue)
            port = free_port()
            argv = [sys.executable, str(SELF), "minimal-server"]
            argv += [str(body_path), str(port), str(workers)]
            base = f"http://127.0.0.1:{port}"
            async with process(
                "minimal app",
                argv,
                dict(os.environ),
                log,
                port,
                workers,
                functools.partial(get_ok, base + "/"),
            ) as pid:
                minimal = await measure(pid, port, script, args, wrk_log)
            report("minimal", size, workers, minimal)
            rows.append(Row(size, workers, segue, minimal))
    finally:
        await admin.close()
    return rows


async def capture(base: str, key: str) -> bytes:
    """One real 10-item response body, for the minimal app to answer with."""
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.post(
            base + "/v1/recommendations", json={"user_id": "lu0", "surface": "home", "n": 10}
        ) as resp,
    ):
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST /v1/recommendations: {resp.status} {body!r}")
    items = len(orjson.loads(body)["items"])
    say(f"  captured a real response: {len(body):,} bytes, {items} items")
    return body


def report(name: str, size: int, workers: int, m: Measured) -> None:
    w = m.wrk
    db = f", database {m.db_cpu_ms:.2f}" if m.db_cpu_ms is not None else ""
    say(
        f"items {size:,}, {workers} worker(s), {name}: {w.rps:,.0f} req/s, p50 {w.p50_ms:.1f} ms, "
        f"p99 {w.p99_ms:.1f} ms, max {w.max_ms:.0f} ms, {w.errors} errors; "
        f"CPU ms/request: server {m.cpu_ms:.2f}{db}; PSS {m.pss_mb:,.0f} MB"
    )


@contextlib.contextmanager
def folder_for(keep: Path | None, size: int) -> Iterator[Path]:
    if keep is not None:
        path = keep / f"items-{size}"
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"segue-serve-scale-{size}-") as tmp:
        yield Path(tmp)


async def database_exists(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url)
    except (asyncpg.InvalidCatalogNameError, OSError):
        return False
    await conn.close()
    return True


async def one_size(args: argparse.Namespace, size: int) -> tuple[list[Row], Build]:
    with folder_for(args.keep, size) as work:
        state_path = work / "state.json"
        if args.reuse and state_path.exists():
            state = json.loads(state_path.read_text())
            if await database_exists(state["db_url"]):
                say(f"items {size:,}: reusing {database_name(state['db_url'])} and {work}")
                prepared = Prepared(
                    state["db_url"],
                    state["key"],
                    Path(state["data_dir"]),
                    Build(**state["build"]),
                    float(state["load_seconds"]),
                )
                return await serve_rows(args, size, prepared, work), prepared.build
            say(f"items {size:,}: {state_path} names a database that is gone; loading again")
        async with throwaway_database(args.url, keep=args.keep is not None) as db_url:
            data_dir = work / "data"
            shutil.rmtree(data_dir, ignore_errors=True)
            data_dir.mkdir()
            prepared = await prepare(args, size, db_url, data_dir)
            if args.keep is not None:
                state = {
                    "db_url": db_url,
                    "key": prepared.key,
                    "data_dir": str(data_dir),
                    "build": asdict(prepared.build),
                    "load_seconds": prepared.load_seconds,
                }
                state_path.write_text(json.dumps(state, indent=2))
            return await serve_rows(args, size, prepared, work), prepared.build


# --- the table -----------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def table(rows: list[Row], builds: dict[int, Build]) -> None:
    print()
    print(
        "| items | workers | Segue req/s | p50 ms | p99 ms | errors | minimal req/s "
        "| minimal p99 ms | throughput ratio | p99 ratio | CPU ms/req | DB CPU ms/req "
        "| PSS MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s, m = r.segue.wrk, r.minimal.wrk
        db = f"{r.segue.db_cpu_ms:.2f}" if r.segue.db_cpu_ms is not None else "-"
        print(
            f"| {r.items:,} | {r.workers} | {s.rps:,.0f} | {s.p50_ms:.1f} | {s.p99_ms:.1f} "
            f"| {s.errors} | {m.rps:,.0f} | {m.p99_ms:.1f} | {ratio(s.rps, m.rps):.3f} "
            f"| {ratio(s.p99_ms, m.p99_ms):.1f} | {r.segue.cpu_ms:.2f} | {db} "
            f"| {r.segue.pss_mb:,.0f} |"
        )
    sizes = sorted({r.items for r in rows})
    workers = sorted({r.workers for r in rows})
    at = {(r.items, r.workers): r for r in rows}
    derived: list[str] = []
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        for w in workers:
            a, b = at[(large, w)], at[(small, w)]
            throughput = ratio(
                ratio(a.segue.wrk.rps, a.minimal.wrk.rps), ratio(b.segue.wrk.rps, b.minimal.wrk.rps)
            )
            p99 = ratio(
                ratio(a.segue.wrk.p99_ms, a.minimal.wrk.p99_ms),
                ratio(b.segue.wrk.p99_ms, b.minimal.wrk.p99_ms),
            )
            derived.append(
                f"| throughput ratio at {large:,} / at {small:,} items, {w} worker(s) "
                f"| {throughput:.3f} |"
            )
            derived.append(
                f"| p99 ratio at {large:,} / at {small:,} items, {w} worker(s) | {p99:.2f} |"
            )
    if len(workers) > 1:
        few, many = workers[0], workers[-1]
        for size in sizes:
            a, b = at[(size, many)], at[(size, few)]
            derived.append(
                f"| Segue throughput, {many} workers / {few}, {size:,} items "
                f"| {ratio(a.segue.wrk.rps, b.segue.wrk.rps):.2f} |"
            )
            derived.append(
                f"| minimal throughput, {many} workers / {few}, {size:,} items "
                f"| {ratio(a.minimal.wrk.rps, b.minimal.wrk.rps):.2f} |"
            )
            derived.append(
                f"| Segue memory (PSS), {many} workers / {few}, {size:,} items "
                f"| {ratio(a.segue.pss_mb, b.segue.pss_mb):.2f} |"
            )
    if derived:
        print()
        print("| derived | value |")
        print("|---|---:|")
        print("\n".join(derived))
    print()
    print(
        "| index build, items | seconds | peak MB | file MB | recall@10 | search_k "
        "| unseen listeners | candidates recall@10 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---:|")
    for size, build in sorted(builds.items()):
        print(
            f"| {size:,} | {build.seconds:.1f} | {build.peak_mb:,.0f} | {build.file_mb:,.1f} "
            f"| {build.recall_at_10:.3f} | {build.search_k:,} | {build.search} "
            f"| {build.candidates_recall:.3f} |"
        )


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_url_argument(ap, help="the PostgreSQL server; each size gets a throw-away database there")
    ap.add_argument("--sizes", type=int_list, default=[1000, 100_000, 1_000_000])
    ap.add_argument("--workers", type=int_list, default=[1, 2])
    ap.add_argument("--seconds", type=int, default=20, help="per measured wrk run")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of wrk before each run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--wrk-timeout", type=int, default=30, help="wrk's per-request timeout, s")
    ap.add_argument("--listeners", type=int, default=500)
    ap.add_argument("--outcomes", type=int, default=20_000, help="history outcomes to record")
    ap.add_argument("--load-concurrency", type=int, default=2, help="item requests in flight")
    ap.add_argument("--history-concurrency", type=int, default=8, help="requests in flight")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--keep", type=Path, default=None, help="keep databases and indexes here")
    ap.add_argument("--reuse", action="store_true", help="with --keep: skip loading what is kept")
    args = ap.parse_args()
    if args.reuse and args.keep is None:
        ap.error("--reuse needs --keep DIR")
    if shutil.which("wrk") is None:
        ap.error("wrk is not installed")
    say(f"sizes {args.sizes}, workers {args.workers}, {args.seconds} s per wrk run")
    rows: list[Row] = []
    builds: dict[int, Build] = {}
    for size in args.sizes:
        started = time.perf_counter()
        size_rows, builds[size] = await one_size(args, size)
        rows += size_rows
        say(f"items {size:,}: done in {time.perf_counter() - started:.0f} s")
    table(rows, builds)
    print(f"\n({time.monotonic() - STARTED:.0f} s in all)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["minimal-server"]:
        minimal_main(sys.argv[2:])
    else:
        asyncio.run(main())
