"""Demo data: a small synthetic catalogue of tracks and podcast episodes, and a little listening
history, seeded so that every run produces the same data (and re-seeding is a no-op)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

from domain.events import ItemUpserted, OutcomeKind
from gateway.catalog import Catalog
from gateway.outcomes import OutcomeRecorder
from gateway.schemas import OutcomeIn, OutcomesIn

GENRES = ("indie", "jazz", "techno", "folk", "hip-hop", "classical", "ambient", "soul")
TOPICS = ("science", "history", "comedy", "news", "true-crime", "sport", "tech")
_NAMESPACE = uuid.UUID("5e6f1b1a-9d2b-4a57-8f4e-2d4c1c6a7b10")


def demo_items(count: int, seed: int = 7) -> list[ItemUpserted]:
    rng = random.Random(seed)
    items: list[ItemUpserted] = []
    for i in range(count):
        if i % 4 == 3:
            show = f"show-{i % 23}"
            items.append(
                ItemUpserted(
                    item_id=f"ep-{i:05d}",
                    kind="episode",
                    attributes={
                        "title": f"Episode {i}",
                        "show": show,
                        "topic": rng.choice(TOPICS),
                        "duration_s": rng.randint(900, 5400),
                    },
                )
            )
        else:
            items.append(
                ItemUpserted(
                    item_id=f"tr-{i:05d}",
                    kind="track",
                    attributes={
                        "title": f"Track {i}",
                        "artist": f"artist-{i % 97}",
                        "genre": rng.choice(GENRES),
                        "duration_s": rng.randint(120, 420),
                    },
                )
            )
    return items


def demo_history(
    items: list[ItemUpserted], users: int, now: datetime, seed: int = 11
) -> list[OutcomeIn]:
    """A few weeks of organic listening; event ids are derived from the seed, so re-seeding only
    produces duplicates (which the gateway ignores)."""
    rng = random.Random(seed)
    out: list[OutcomeIn] = []
    for u in range(users):
        taste = rng.sample(range(len(items)), k=min(40, len(items)))
        for j in range(rng.randint(5, 30)):
            item = items[rng.choice(taste)]
            kind = rng.choice(
                [
                    OutcomeKind.STREAM_30S,
                    OutcomeKind.STREAM_30S,
                    OutcomeKind.COMPLETE,
                    OutcomeKind.SKIP,
                    OutcomeKind.SAVE,
                ]
            )
            out.append(
                OutcomeIn(
                    event_id=uuid.uuid5(_NAMESPACE, f"{seed}/{u}/{j}"),
                    user_id=f"user-{u}",
                    item_id=item.item_id,
                    kind=kind,
                    occurred_at=(now - timedelta(days=rng.uniform(0, 28))).astimezone(UTC),
                    value=float(rng.randint(1_000, 300_000)),
                )
            )
    return out


async def seed(
    catalog: Catalog, recorder: OutcomeRecorder, items: int, users: int, now: datetime
) -> tuple[int, int]:
    """Seed the catalogue (if empty) and history; returns (items upserted, outcomes accepted)."""
    catalogue = demo_items(items)
    upserted = 0
    if not await catalog.live():
        for start in range(0, len(catalogue), 1000):
            upserted += len(await catalog.upsert(catalogue[start : start + 1000]))
    history = demo_history(catalogue, users, now)
    accepted = 0
    for start in range(0, len(history), 1000):
        result = await recorder.record(OutcomesIn(outcomes=history[start : start + 1000]))
        accepted += result.accepted
    return upserted, accepted
