"""The Open Bandit Dataset sample as a Segue log, and an independent reference computation.

The sample ships inside the `obp==0.4.1` wheel (10,000 impressions per behaviour policy and
campaign under `obp/dataset/obd/<policy>/<campaign>/<campaign>.csv`, the 80 items in
`item_context.csv` beside it). It is fetched with `pip download --no-deps` into a cache folder
and read straight from the wheel; obp is never installed.

How it becomes a Segue log: every item is an `ItemUpserted` (kind `track`, id `obd-<n>`); every
CSV row, an impression of one item at one of the three positions, is one `RecommendationServed`
whose slate holds that item at its position (0-based, as obp's dense rank of `position`) with
the row's `propensity_score`, and a click is an `OutcomeRecorded` of kind `click` naming that
recommendation at the same instant. The sample keeps single impressions, not whole rounds of
three (the rows of one round were sampled apart: timestamps barely repeat), so a slate of one
position is what the data supports; it is also exactly how obp evaluates the sample (each row
its own round, with its `position`). Rows are taken in timestamp order (a stable sort), which
is the order they are appended and so the slates' order in the log.

`reference_estimates` computes every estimator of `domain.ope` again, on the CSV columns, in
obp's own dense form (an action distribution of shape rounds x actions x positions, `np.average`
over actions), sharing no code with `domain.ope`: the validation compares the two.
"""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from domain.events import (
    ItemUpserted,
    OutcomeKind,
    OutcomeRecorded,
    RecommendationServed,
    SlateEntry,
    to_payload,
)
from gateway.analysis import wheels
from gateway.store.api import NO_STREAM, EventStore, NewEvent

POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
NAMESPACE = uuid.UUID("2f1d8c4e-5a7b-4c3d-9e8f-0a1b2c3d4e5f")
SURFACE = "home"


def fetch_wheel(cache: Path) -> Path:
    """The obp 0.4.1 wheel in `cache`, downloaded there (without dependencies) if missing.
    Raises RuntimeError if it cannot be downloaded."""
    return wheels.fetch_wheel(cache, "obp==0.4.1")


@dataclass(frozen=True, slots=True)
class ObdLog:
    """One behaviour policy's log of one campaign, rows in timestamp order."""

    policy: str
    campaign: str
    n_actions: int
    timestamp: list[datetime]
    user: list[str]
    action: npt.NDArray[np.int64]
    position: npt.NDArray[np.int64]  # 0-based
    reward: npt.NDArray[np.float64]
    pscore: npt.NDArray[np.float64]

    @property
    def n_rounds(self) -> int:
        return int(self.action.shape[0])

    def item_id(self, action: int) -> str:
        return f"obd-{action}"


def read_obd(wheel: Path, policy: str, campaign: str) -> ObdLog:
    """The sample of `policy` ("random" or "bts") and `campaign` ("all", "men", "women")."""
    if policy not in POLICIES or campaign not in CAMPAIGNS:
        raise ValueError(f"no OBD sample for {policy}/{campaign}")
    folder = f"obp/dataset/obd/{policy}/{campaign}"
    with zipfile.ZipFile(wheel) as z:
        rows = list(csv.DictReader(io.StringIO(z.read(f"{folder}/{campaign}.csv").decode())))
        items = list(csv.DictReader(io.StringIO(z.read(f"{folder}/item_context.csv").decode())))
    rows.sort(key=lambda r: r["timestamp"])  # list.sort is stable
    raw_positions = sorted({int(r["position"]) for r in rows})
    dense = {p: k for k, p in enumerate(raw_positions)}
    return ObdLog(
        policy=policy,
        campaign=campaign,
        n_actions=len(items),
        timestamp=[datetime.fromisoformat(r["timestamp"]) for r in rows],
        user=[
            hashlib.blake2b(
                "/".join(r[f"user_feature_{i}"] for i in range(4)).encode(), digest_size=8
            ).hexdigest()
            for r in rows
        ],
        action=np.array([int(r["item_id"]) for r in rows], dtype=np.int64),
        position=np.array([dense[int(r["position"])] for r in rows], dtype=np.int64),
        reward=np.array([float(r["click"]) for r in rows], dtype=np.float64),
        pscore=np.array([float(r["propensity_score"]) for r in rows], dtype=np.float64),
    )


def recommendation_id(log: ObdLog, row: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{log.policy}/{log.campaign}/{row}")


def events(log: ObdLog) -> list[NewEvent]:
    """The catalogue, then every impression followed by its click, as events to append."""
    out = []
    for a in range(log.n_actions):
        item = ItemUpserted(log.item_id(a), "track", {"obd_item_id": a})
        out.append(
            NewEvent(
                uuid.uuid5(NAMESPACE, f"item/{a}"),
                item.stream_id(),
                item.TYPE,
                item.SCHEMA_VERSION,
                to_payload(item),
            )
        )
    for row in range(log.n_rounds):
        rec = recommendation_id(log, row)
        at = log.timestamp[row]
        item_id = log.item_id(int(log.action[row]))
        served = RecommendationServed(
            recommendation_id=rec,
            user=log.user[row],
            surface=SURFACE,
            context={"obd": {"policy": log.policy, "campaign": log.campaign, "row": row}},
            slate=(SlateEntry(item_id, int(log.position[row]), 0.0, float(log.pscore[row])),),
            policy_name=f"obd-{log.policy}",
            policy_version="0.4.1",
            index_version="none",
            requested_at=at,
            n=3,
        )
        out.append(
            NewEvent(
                rec, served.stream_id(), served.TYPE, served.SCHEMA_VERSION, to_payload(served)
            )
        )
        if log.reward[row] > 0:
            click = OutcomeRecorded(
                event_id=uuid.uuid5(NAMESPACE, f"click/{rec}"),
                user=log.user[row],
                item_id=item_id,
                kind=OutcomeKind.CLICK,
                occurred_at=at,
                recommendation_id=rec,
            )
            out.append(
                NewEvent(
                    click.event_id,
                    click.stream_id(),
                    click.TYPE,
                    click.SCHEMA_VERSION,
                    to_payload(click),
                )
            )
    return out


async def import_obd(store: EventStore, log: ObdLog, batch: int = 1000) -> int:
    """Append the log through `store` (idempotent: event ids are derived from the rows);
    returns the number of events appended."""
    new = events(log)
    appended = 0
    for start in range(0, len(new), batch):
        chunk = new[start : start + batch]
        expected = {
            e.stream_id: NO_STREAM for e in chunk if e.stream_id.startswith("recommendation-")
        }
        result = await store.append(chunk, expected=expected)
        appended += result.accepted
    return appended


# --- targets as CSV ---------------------------------------------------------------------------


def empirical_distribution(log: ObdLog) -> npt.NDArray[np.float64]:
    """How often `log`'s policy showed each item at each position: (actions, positions)."""
    counts = np.zeros((log.n_actions, int(log.position.max()) + 1))
    np.add.at(counts, (log.action, log.position), 1.0)
    dist: npt.NDArray[np.float64] = counts / counts.sum(axis=0, keepdims=True)
    return dist


def best_items(log: ObdLog, prior: float = 10.0) -> npt.NDArray[np.float64]:
    """A deterministic policy: at each position, the item with the best smoothed click rate in
    `log` (ties to the lower id); (actions, positions) of zeros and ones."""
    positions = int(log.position.max()) + 1
    shows = np.zeros((log.n_actions, positions))
    clicks = np.zeros((log.n_actions, positions))
    np.add.at(shows, (log.action, log.position), 1.0)
    np.add.at(clicks, (log.action, log.position), log.reward)
    rate = (clicks + prior * log.reward.mean()) / (shows + prior)
    dist: npt.NDArray[np.float64] = np.zeros_like(rate)
    dist[np.argmax(rate, axis=0), np.arange(positions)] = 1.0
    return dist


def write_target_csv(path: Path, log: ObdLog, dist: npt.NDArray[np.float64]) -> None:
    """`dist` (actions x positions) as an `item_id,position,probability` target (no zero rows;
    probabilities written with repr, so they read back exactly)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "position", "probability"])
        for a in range(dist.shape[0]):
            for k in range(dist.shape[1]):
                if dist[a, k] > 0:
                    w.writerow([log.item_id(a), k, repr(float(dist[a, k]))])


# --- the reference computation ----------------------------------------------------------------


def reference_estimates(
    log: ObdLog,
    action_dist: npt.NDArray[np.float64],
    *,
    clip: float = np.inf,
    tau: float = 1.0,
    prior_strength: float = 10.0,
    folds: int = 1,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, tuple[float, float, float] | None]:
    """Every estimator as obp writes it, on the CSV columns: `action_dist` has shape
    (rounds, actions, positions). Returns (estimate, ci low, ci high) per estimator, None where
    undefined. Each row is its own slate, so the bootstrap resamples rows."""
    n = log.n_rounds
    rows = np.arange(n)
    a, k, r, p = log.action, log.position, log.reward, log.pscore
    n_pos = action_dist.shape[2]

    # The reward model, dense: q_hat[i, a, k] for round i (from its fold's model).
    fold = rows % folds
    q_hat = np.empty((n, log.n_actions, n_pos))
    for f in range(folds):
        train = fold != f if folds > 1 else np.ones(n, dtype=bool)
        mu = r[train].mean()
        q = np.empty((log.n_actions, n_pos))
        for act in range(log.n_actions):
            mine = train & (a == act)
            q_item = (r[mine].sum() + prior_strength * mu) / (mine.sum() + prior_strength)
            for pos in range(n_pos):
                cell = mine & (k == pos)
                q[act, pos] = (r[cell].sum() + prior_strength * q_item) / (
                    cell.sum() + prior_strength
                )
        q_hat[fold == f] = q

    pi = action_dist[rows, a, k]
    iw = pi / p
    q_factual = q_hat[rows, a, k]
    dm = np.average(q_hat[rows, :, k], weights=action_dist[rows, :, k], axis=1)
    terms: dict[str, npt.NDArray[np.float64] | None] = {}
    match = pi == 1
    terms["replay"] = match * r / match.mean() if match.sum() > 0 else None
    terms["ipw"] = r * np.minimum(iw, clip)
    terms["snipw"] = r * iw / iw.mean()
    terms["dm"] = dm
    terms["dr"] = dm + iw * (r - q_factual)
    terms["switch_dr"] = dm + np.array(iw <= tau, dtype=int) * iw * (r - q_factual)

    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n, size=n) for _ in range(n_bootstrap)]
    out: dict[str, tuple[float, float, float] | None] = {}
    for name, t in terms.items():
        if t is None:
            out[name] = None
            continue
        boot = [np.mean(t[idx]) for idx in draws]
        out[name] = (
            float(np.mean(t)),
            float(np.percentile(boot, 100 * (alpha / 2))),
            float(np.percentile(boot, 100 * (1 - alpha / 2))),
        )
    return out


def dense(dist: npt.NDArray[np.float64], n_rounds: int) -> npt.NDArray[np.float64]:
    """A context-free (actions, positions) distribution repeated for every round."""
    out: npt.NDArray[np.float64] = np.broadcast_to(dist, (n_rounds, *dist.shape))
    return out


def compare(
    got: dict[str, object], want: dict[str, tuple[float, float, float] | None]
) -> tuple[float, list[str]]:
    """The largest absolute difference between `segue evaluate --json` output and the
    reference over every estimate and interval bound, and what disagreed in kind."""
    worst = 0.0
    problems: list[str] = []
    for name, expected in want.items():
        entry = got.get(name)
        if not isinstance(entry, dict):
            problems.append(f"{name}: missing")
            continue
        if expected is None:
            if entry.get("estimate") is not None:
                problems.append(f"{name}: expected no estimate, got {entry.get('estimate')}")
            continue
        ci = entry.get("ci")
        estimate = entry.get("estimate")
        if not isinstance(estimate, float | int) or not isinstance(ci, Sequence):
            problems.append(f"{name}: no estimate")
            continue
        for a, b in zip((estimate, *ci), expected, strict=True):
            worst = max(worst, abs(float(a) - b))
    return worst, problems
