"""`segue serve --workers N`: N gateway processes sharing one port, kept alive by the parent.

The parent only supervises:
- SIGTERM or SIGINT stops every worker (SIGTERM, so each drains like a single `serve`) and waits
  for them, killing the ones that outlast `STOP_SECONDS`;
- a worker that dies (a crash, the OOM killer) is replaced, at most once a second, so the port
  keeps its N processes;
- a worker whose parent dies, even by SIGKILL, gets SIGTERM (the kernel's parent-death signal on
  Linux, and its own watch of the parent's sentinel anywhere), and ends at once if its drain
  outlasts `STOP_SECONDS`, so no orphan keeps serving a port nobody supervises.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SECONDS = 30.0  # what a worker gets to finish its requests and flush its appends
RESPAWN_SECONDS = 1.0  # a worker that keeps dying at start must not spin the parent

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Ask the kernel for SIGTERM when the parent process dies (Linux only; elsewhere a no-op).

    The request only covers a death after it is made: a parent killed while this worker was
    still starting (importing takes seconds on a busy host) would leave it an orphan serving the
    port for good, so a worker whose parent is already gone exits at once."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        log.error("the supervising process %d is gone; this worker stops", parent)
        raise SystemExit(1)


def watch_parent() -> None:
    """A second way to notice the parent's death, beside the kernel's signal: multiprocessing's
    sentinel of the parent becomes readable when it dies (whatever thread started this worker,
    on any platform). Then SIGTERM, the graceful stop; and if the worker is still there
    `STOP_SECONDS` later (a drain that hangs), it ends at once, so that no orphan serves on."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        log.error("the supervising process is gone; this worker stops")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker(target: Callable[..., None], args: tuple[Any, ...], parent: int) -> None:
    die_with_parent(parent)
    watch_parent()
    target(*args)


def supervise(
    target: Callable[..., None],
    args: tuple[Any, ...],
    workers: int,
    *,
    on_exit: Callable[[int], None] | None = None,
) -> int:
    """Run `target(*args)` in `workers` processes until SIGTERM or SIGINT; returns the exit code.
    `on_exit(pid)` is told of each worker that died and was replaced."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}

    def start() -> BaseProcess:
        p = ctx.Process(target=_worker, args=(target, args, os.getpid()), daemon=False)
        p.start()
        return p

    procs = [start() for _ in range(workers)]
    try:
        last_respawn = 0.0
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in procs], timeout=0.5)
            for i, p in enumerate(procs):
                if stopping or p.exitcode is None:
                    continue
                wait = last_respawn + RESPAWN_SECONDS - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                log.error("worker %s exited with %s; starting another", p.pid, p.exitcode)
                if on_exit is not None and p.pid is not None:
                    on_exit(p.pid)
                procs[i] = start()
                last_respawn = time.monotonic()
    finally:
        for p in procs:
            if p.exitcode is None:
                p.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                log.error("worker %s did not stop within %.0f s; killing it", p.pid, STOP_SECONDS)
                p.kill()
                p.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
