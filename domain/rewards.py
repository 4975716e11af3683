"""Reward definitions: versioned data saying what an outcome is worth, for how long after a
recommendation it still counts as that recommendation's doing, and the long-term horizon.

Weights are Decimals and aggregates are summed exactly, so folding events in any order or batch
split gives the same bytes (a float sum would depend on the order of additions).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from domain.events import OutcomeKind

K = OutcomeKind


@dataclass(frozen=True, slots=True)
class RewardDefinition:
    version: str
    weights: Mapping[OutcomeKind, Decimal]
    # Seconds after the recommendation was served during which an outcome is attributed to it.
    windows: Mapping[OutcomeKind, int]
    horizon_days: int = 60
    # A skip after this much listening is a listener moving on, not a rejection.
    skip_threshold_ms: float = 30_000
    # What starts a long-term trace, and what counts as coming back to an item on a later day.
    stream_kinds: frozenset[OutcomeKind] = field(
        default_factory=lambda: frozenset({K.STREAM_30S, K.COMPLETE})
    )

    def weight(self, kind: OutcomeKind, value: float | None) -> Decimal:
        if kind is K.REWARD:
            # The client's own score, scaled by the weight (a reward without a value is none).
            # str() first: Decimal(0.1) would carry the binary float's 55 digits into the sums.
            weight = self.weights.get(kind, Decimal(0))
            return weight * Decimal(str(value)) if value is not None and weight else Decimal(0)
        if kind is K.SKIP and value is not None and value >= self.skip_threshold_ms:
            return Decimal(0)
        return self.weights.get(kind, Decimal(0))

    def window(self, kind: OutcomeKind) -> timedelta:
        return timedelta(seconds=self.windows.get(kind, 0))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "weights": {k.value: str(w) for k, w in sorted(self.weights.items())},
            "windows_seconds": {k.value: s for k, s in sorted(self.windows.items())},
            "horizon_days": self.horizon_days,
            "skip_threshold_ms": self.skip_threshold_ms,
            "stream_kinds": sorted(k.value for k in self.stream_kinds),
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> RewardDefinition:
        """Parse and check a definition; raises ValueError naming what is wrong."""
        try:
            version = data["version"]
            weights = {K(k): Decimal(str(v)) for k, v in dict(data["weights"]).items()}
            windows = {K(k): int(v) for k, v in dict(data.get("windows_seconds", {})).items()}
            horizon = int(data.get("horizon_days", 60))
            threshold = float(data.get("skip_threshold_ms", 30_000))
            streams = frozenset(K(k) for k in data.get("stream_kinds", ["stream_30s", "complete"]))
        except (KeyError, TypeError, ArithmeticError) as exc:
            raise ValueError(f"invalid reward definition: {exc!r}") from None
        # str() would turn a null or a number into a version ("None"), so only text is one.
        if not isinstance(version, str) or not version or len(version) > 64:
            raise ValueError("version must be a string of 1-64 characters")
        if not 1 <= horizon <= 365:
            raise ValueError("horizon_days must be between 1 and 365")
        if any(s < 0 for s in windows.values()):
            raise ValueError("windows must not be negative")
        if any(not w.is_finite() or abs(w) > 1000 for w in weights.values()):
            raise ValueError("weights must be finite and at most 1000 in size")
        # NaN would make every skip count against (comparisons with it are false) and is stored
        # as JSON null, which would not load back; a negative threshold would excuse every skip.
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError("skip_threshold_ms must be a finite, non-negative number")
        if not streams:
            raise ValueError("stream_kinds must not be empty")
        return RewardDefinition(version, weights, windows, horizon, threshold, streams)


HOUR = 3600
DAY = 24 * HOUR

# The default for music and podcasts. Listening is what counts: a 30-second stream and a
# completion are worth one each (a completed episode usually also produced a stream_30s, so a
# finished podcast is worth two), keeping an item (save, follow) is worth more, and a quick skip
# or a dislike counts against. Listening outcomes are attributed for a few hours (a session);
# deliberate ones (save, like, follow, share) for a week, because listeners often act on an item
# after coming back to it.
#
# `reward` (a score the client computed, as Personalizer's callers send) counts its value, within
# two days: Personalizer's longest reward wait time; the compatible routes enforce the configured
# one before recording (docs/decisions.md, "Personalizer-compatible routes").
DEFAULT = RewardDefinition(
    version="music-podcasts-2",
    weights={
        K.IMPRESSION: Decimal(0),
        K.CLICK: Decimal("0.1"),
        K.STREAM_START: Decimal(0),
        K.STREAM_30S: Decimal(1),
        K.COMPLETE: Decimal(1),
        K.SKIP: Decimal("-0.5"),
        K.SAVE: Decimal(2),
        K.LIKE: Decimal(1),
        K.DISLIKE: Decimal(-2),
        K.FOLLOW: Decimal(3),
        K.SHARE: Decimal("1.5"),
        K.ACTIVE_DAY: Decimal(0),
        K.REWARD: Decimal(1),
    },
    windows={
        K.IMPRESSION: HOUR,
        K.CLICK: HOUR,
        K.STREAM_START: 6 * HOUR,
        K.STREAM_30S: 6 * HOUR,
        K.COMPLETE: DAY,
        K.SKIP: HOUR,
        K.SAVE: 7 * DAY,
        K.LIKE: 7 * DAY,
        K.DISLIKE: 7 * DAY,
        K.FOLLOW: 7 * DAY,
        K.SHARE: 7 * DAY,
        K.ACTIVE_DAY: 0,
        K.REWARD: 2 * DAY,
    },
)
