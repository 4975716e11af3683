"""A seeded simulator of listeners, for the closed-loop benchmark (bench/closed_loop.py).

Pure: numpy and the standard library only, no I/O, and every draw comes from a
`numpy.random.Generator` the caller passes in, so the same generator state gives the same world
and the same responses.

The world
---------
Genres are random unit directions in a `dims`-dimensional taste space; some are far more popular
than others (listeners pick their genre with Zipf-like weights). Every artist and every show
belongs to one genre, and every item to one artist (a track) or one show (an episode); an item's
latent vector is its genre's direction blurred by its artist's or show's own direction and its
own. A listener's taste is their genre's direction blurred the same way, plus a liking (or not)
for podcasts. Items also have a quality that everybody feels alike. A share of the catalogue is
out on day 0; the rest is released over the following days (`World.released`).

The appeal of item i to listener u is a logit:

    logit(u, i) = base_logit + quality_i + taste_scale * (taste_u . vector_i)
                  + [i is an episode] * podcast_u

Responses to a slate
--------------------
Position k (0-based) is looked at with probability (k + 1) ** -position_decay. An item looked at
is streamed (`stream_30s`) with probability sigmoid(logit); a stream is also completed with
probability sigmoid(logit + complete_offset) and saved with probability
sigmoid(logit + save_offset). An item looked at and not streamed is skipped (a short listen,
under 30 s) with probability `skip_if_not_streamed`; otherwise the listener scrolls past. Each
slate position always uses the same four uniform draws, whatever happens, so that two policies
shown to the same listener with generators in the same state face the same dice.

The short-term reward of a slate, as the benchmarks count it, is

    reward = streams + saves - skips

Long-term returns
-----------------
A listener who streamed item i on day t0 comes back to it on a later day t0 + d (d >= 1) with
probability

    return_max * sigmoid(logit(u, i) + return_offset)
               * (return_floor + (1 - return_floor) * exp(-(d - 1) / return_decay_days))

independently each day: what they truly like keeps bringing them back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float64]
Matrix = NDArray[np.float64]

TRACK = "track"
EPISODE = "episode"


@dataclass(frozen=True, slots=True)
class SimConfig:
    listeners: int = 200
    items: int = 500
    dims: int = 16
    genres: int = 8
    genre_skew: float = 1.0  # genre g is chosen with weight (g + 1) ** -genre_skew
    artists: int = 100
    shows: int = 20
    episode_share: float = 0.25
    taste_blur: float = 0.5  # how far a listener strays from their genre's direction
    group_blur: float = 0.5  # an artist's or show's own direction
    item_blur: float = 0.35  # an item's own direction, on top of its artist's or show's
    taste_scale: float = 3.0
    quality_sd: float = 0.8
    base_logit: float = -2.5
    podcast_mean: float = -0.5  # how much listeners like podcasts, on average, as a logit
    podcast_sd: float = 1.0
    position_decay: float = 0.6
    skip_if_not_streamed: float = 0.15
    complete_offset: float = 0.5
    save_offset: float = -2.0
    return_max: float = 0.5
    return_offset: float = -1.0
    return_floor: float = 0.2
    return_decay_days: float = 5.0
    released_at_start: float = 1.0  # share of the catalogue out on day 0
    release_days: int = 30  # the rest is released uniformly over days 1..release_days

    def __post_init__(self) -> None:
        if self.listeners < 1 or self.items < 1 or self.dims < 1 or self.genres < 1:
            raise ValueError("listeners, items, dims and genres must be at least 1")
        if self.artists < 1 or self.shows < 1:
            raise ValueError("artists and shows must be at least 1")
        if self.release_days < 1:
            raise ValueError("release_days must be at least 1")
        for name in (
            "episode_share",
            "skip_if_not_streamed",
            "return_max",
            "return_floor",
            "released_at_start",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.position_decay < 0 or self.return_decay_days <= 0:
            raise ValueError("position_decay must be >= 0 and return_decay_days > 0")


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    kind: str  # "track" or "episode"
    group: str  # the artist of a track, the show of an episode
    genre: int
    release_day: int  # the first day it can be recommended

    def attributes(self) -> dict[str, str]:
        """The attributes a catalogue upsert carries (`artist` or `show`, and the genre)."""
        key = "artist" if self.kind == TRACK else "show"
        return {key: self.group, "genre": f"genre-{self.genre}"}


@dataclass(frozen=True, slots=True)
class World:
    config: SimConfig
    listener_ids: tuple[str, ...]
    listener_genres: NDArray[np.int64]
    tastes: Matrix  # (listeners, dims)
    podcast: Vector  # (listeners,)
    items: tuple[Item, ...]
    vectors: Matrix  # (items, dims)
    quality: Vector  # (items,)
    is_episode: NDArray[np.bool_]  # (items,)
    release_days: NDArray[np.int64]  # (items,)

    def released(self, day: int) -> NDArray[np.bool_]:
        """Which items are out on `day`."""
        out: NDArray[np.bool_] = self.release_days <= day
        return out

    def item_index(self) -> dict[str, int]:
        return {item.item_id: i for i, item in enumerate(self.items)}


@dataclass(frozen=True, slots=True)
class Response:
    """What one listener did with one slate position."""

    item: int
    position: int
    examined: bool
    streamed: bool
    completed: bool
    saved: bool
    skipped: bool

    @property
    def reward(self) -> float:
        return float(self.streamed) + float(self.saved) - float(self.skipped)


def sigmoid(x: Vector) -> Vector:
    out: Vector = 1.0 / (1.0 + np.exp(-x))
    return out


def _unit(m: Matrix) -> Matrix:
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    out: Matrix = m / np.where(norms > 0, norms, 1.0)
    return out


def make_world(config: SimConfig, rng: np.random.Generator) -> World:
    """Draw a population and a catalogue. Same config and generator state, same world."""
    c = config
    centres = _unit(rng.normal(size=(c.genres, c.dims)))
    weights = (np.arange(c.genres) + 1.0) ** -c.genre_skew
    weights /= weights.sum()
    # Artists and shows spread evenly over genres, so that the catalogue does not simply follow
    # the audience: popular genres have as many items as niche ones.
    artist_genre = rng.permutation(np.arange(c.artists) % c.genres)
    show_genre = rng.permutation(np.arange(c.shows) % c.genres)
    noise = c.group_blur / math.sqrt(c.dims)
    artist_vec = _unit(centres[artist_genre] + noise * rng.normal(size=(c.artists, c.dims)))
    show_vec = _unit(centres[show_genre] + noise * rng.normal(size=(c.shows, c.dims)))

    is_episode = rng.random(c.items) < c.episode_share
    group_of = np.where(
        is_episode, rng.integers(0, c.shows, c.items), rng.integers(0, c.artists, c.items)
    )
    base = np.where(
        is_episode[:, None], show_vec[group_of % c.shows], artist_vec[group_of % c.artists]
    )
    item_noise = c.item_blur / math.sqrt(c.dims) * rng.normal(size=(c.items, c.dims))
    vectors = _unit(base + item_noise)
    quality = c.quality_sd * rng.normal(size=c.items)
    release = np.where(
        rng.random(c.items) < c.released_at_start,
        0,
        rng.integers(1, c.release_days + 1, c.items),
    ).astype(np.int64)
    items = tuple(
        Item(
            item_id=f"ep-{i:05d}" if is_episode[i] else f"tr-{i:05d}",
            kind=EPISODE if is_episode[i] else TRACK,
            group=f"show-{group_of[i]:03d}" if is_episode[i] else f"artist-{group_of[i]:03d}",
            genre=int(show_genre[group_of[i]] if is_episode[i] else artist_genre[group_of[i]]),
            release_day=int(release[i]),
        )
        for i in range(c.items)
    )

    genres = rng.choice(c.genres, size=c.listeners, p=weights)
    taste_noise = c.taste_blur / math.sqrt(c.dims) * rng.normal(size=(c.listeners, c.dims))
    tastes = _unit(centres[genres] + taste_noise)
    podcast = c.podcast_mean + c.podcast_sd * rng.normal(size=c.listeners)
    return World(
        config=c,
        listener_ids=tuple(f"listener-{u:05d}" for u in range(c.listeners)),
        listener_genres=genres.astype(np.int64),
        tastes=tastes,
        podcast=podcast,
        items=items,
        vectors=vectors,
        quality=quality,
        is_episode=is_episode,
        release_days=release,
    )


def content_vectors(world: World, noise: float, rng: np.random.Generator) -> Matrix:
    """What a content model (audio, transcripts) might say about each item: its latent direction
    blurred by `noise` (0 gives the true vectors; 1 blurs about as much as an item differs from
    its artist's). Listeners' tastes are never revealed."""
    c = world.config
    blurred = world.vectors + noise / math.sqrt(c.dims) * rng.normal(size=world.vectors.shape)
    return _unit(blurred)


def logits(world: World, listener: int) -> Vector:
    """The appeal of every item to `listener`, as a logit."""
    c = world.config
    out: Vector = (
        c.base_logit
        + world.quality
        + c.taste_scale * (world.vectors @ world.tastes[listener])
        + world.is_episode * world.podcast[listener]
    )
    return out


def examination(position: int | NDArray[np.int64], config: SimConfig) -> Vector:
    """The probability that a listener looks at slate position `position` (0-based)."""
    out: Vector = (np.asarray(position, dtype=np.float64) + 1.0) ** -config.position_decay
    return out


def item_values(world: World, listener: int) -> Vector:
    """The expected short-term reward of every item for `listener` once looked at:
    P(stream) * (1 + P(save)) - P(not streamed) * P(skip | not streamed)."""
    c = world.config
    z = logits(world, listener)
    p = sigmoid(z)
    out: Vector = p * (1.0 + sigmoid(z + c.save_offset)) - (1.0 - p) * c.skip_if_not_streamed
    return out


def expected_reward(world: World, listener: int, slate: Sequence[int]) -> float:
    """The expected short-term reward of showing `slate` (item indices, in order)."""
    if not slate:
        return 0.0
    values = item_values(world, listener)[np.asarray(slate, dtype=np.int64)]
    looked = examination(np.arange(len(slate), dtype=np.int64), world.config)
    return float(values @ looked)


def oracle_slate(
    world: World, listener: int, n: int, exclude: Iterable[int] = (), day: int | None = None
) -> list[int]:
    """The slate with the highest expected reward: the n best items by true value, best first,
    leaving out `exclude` and, given a `day`, what is not released yet. (Values do not depend on
    position and looking decreases with it, so sorting is optimal.)"""
    values = item_values(world, listener).copy()
    allowed = np.ones(len(values), dtype=np.bool_) if day is None else world.released(day)
    allowed[np.fromiter(exclude, dtype=np.int64)] = False
    order = np.argsort(-np.where(allowed, values, -np.inf), kind="stable")
    return [int(i) for i in order[: min(n, int(allowed.sum()))]]


def respond(
    world: World, listener: int, slate: Sequence[int], rng: np.random.Generator
) -> list[Response]:
    """What `listener` does with `slate` (item indices in position order)."""
    c = world.config
    if not slate:
        return []
    idx = np.asarray(slate, dtype=np.int64)
    z = logits(world, listener)[idx]
    draws = rng.random((len(idx), 4))  # looked, streamed, completed, saved-or-skipped
    looked = draws[:, 0] < examination(np.arange(len(idx), dtype=np.int64), c)
    streamed = looked & (draws[:, 1] < sigmoid(z))
    completed = streamed & (draws[:, 2] < sigmoid(z + c.complete_offset))
    saved = streamed & (draws[:, 3] < sigmoid(z + c.save_offset))
    skipped = looked & ~streamed & (draws[:, 3] < c.skip_if_not_streamed)
    return [
        Response(
            item=int(idx[k]),
            position=k,
            examined=bool(looked[k]),
            streamed=bool(streamed[k]),
            completed=bool(completed[k]),
            saved=bool(saved[k]),
            skipped=bool(skipped[k]),
        )
        for k in range(len(idx))
    ]


def slate_reward(responses: Iterable[Response]) -> float:
    """streams + saves - skips."""
    return sum(r.reward for r in responses)


def return_probability(world: World, listener: int, items: Sequence[int], days: Vector) -> Vector:
    """The probability that `listener` comes back to each of `items`, `days` (>= 1) after
    first streaming it."""
    c = world.config
    z = logits(world, listener)[np.asarray(items, dtype=np.int64)]
    decay = c.return_floor + (1.0 - c.return_floor) * np.exp(-(days - 1.0) / c.return_decay_days)
    out: Vector = c.return_max * sigmoid(z + c.return_offset) * decay
    return out


def returns(
    world: World,
    listener: int,
    first_streamed: Mapping[int, int],
    day: int,
    rng: np.random.Generator,
) -> list[int]:
    """The items `listener` comes back to on `day`, given the day each item was first streamed
    (items first streamed on `day` or later are not eligible). Draws one uniform per item in
    `first_streamed`, in ascending item order."""
    items = sorted(first_streamed)
    if not items:
        return []
    days = day - np.array([first_streamed[i] for i in items], dtype=np.float64)
    draws = rng.random(len(items))
    eligible = days >= 1
    p = np.where(eligible, return_probability(world, listener, items, np.maximum(days, 1.0)), 0.0)
    return [items[k] for k in np.flatnonzero(draws < p)]
