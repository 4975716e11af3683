"""The listener simulator: seeded determinism, response probabilities that behave as documented,
an oracle that picks the best slate, long-term returns, and purity."""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from domain import simulator
from domain.simulator import (
    SimConfig,
    World,
    content_vectors,
    examination,
    expected_reward,
    item_values,
    logits,
    make_world,
    oracle_slate,
    respond,
    return_probability,
    returns,
    sigmoid,
    slate_reward,
)

SMALL = SimConfig(listeners=30, items=60, artists=12, shows=4, genres=4)


def world(seed: int = 1, config: SimConfig = SMALL) -> World:
    return make_world(config, np.random.default_rng(seed))


def test_same_seed_same_world_and_responses() -> None:
    a, b = world(3), world(3)
    assert a.items == b.items
    assert a.listener_ids == b.listener_ids
    for x, y in [(a.tastes, b.tastes), (a.vectors, b.vectors), (a.quality, b.quality)]:
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.release_days, b.release_days)
    slate = list(range(10))
    assert respond(a, 5, slate, np.random.default_rng(9)) == respond(
        b, 5, slate, np.random.default_rng(9)
    )
    first = dict.fromkeys(range(20), 0)
    assert returns(a, 2, first, 3, np.random.default_rng(4)) == returns(
        b, 2, first, 3, np.random.default_rng(4)
    )


def test_another_seed_another_world() -> None:
    a, b = world(3), world(4)
    assert not np.array_equal(a.tastes, b.tastes)
    assert not np.array_equal(a.quality, b.quality)


def test_world_is_well_formed() -> None:
    w = world(2, SimConfig(listeners=50, items=400, released_at_start=0.5, release_days=10))
    assert len(w.items) == 400
    assert len(w.listener_ids) == 50
    assert len({i.item_id for i in w.items}) == 400
    np.testing.assert_allclose(np.linalg.norm(w.tastes, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(w.vectors, axis=1), 1.0)
    for item, episode in zip(w.items, w.is_episode, strict=True):
        assert item.kind == ("episode" if episode else "track")
        assert item.group.startswith("show-" if episode else "artist-")
        key = "show" if episode else "artist"
        assert item.attributes()[key] == item.group
    # About half out on day 0, the rest over days 1..10, and nothing after.
    assert 150 < w.released(0).sum() < 250
    assert w.released(10).all()
    assert w.release_days.max() <= 10


def test_examination_decreases_with_position() -> None:
    looked = examination(np.arange(10, dtype=np.int64), SMALL)
    assert looked[0] == 1.0
    assert np.all(np.diff(looked) < 0)


def test_responses_obey_the_model_rules() -> None:
    w = world()
    rng = np.random.default_rng(0)
    for _ in range(200):
        u = int(rng.integers(w.config.listeners))
        slate = [int(i) for i in rng.choice(len(w.items), 10, replace=False)]
        responses = respond(w, u, slate, rng)
        assert [r.item for r in responses] == slate
        assert [r.position for r in responses] == list(range(10))
        for r in responses:
            assert r.examined or not (r.streamed or r.skipped)
            assert r.streamed or not (r.completed or r.saved)
            assert not (r.streamed and r.skipped)
        assert slate_reward(responses) == sum(
            int(r.streamed) + int(r.saved) - int(r.skipped) for r in responses
        )


def test_empirical_frequencies_match_the_probabilities() -> None:
    w = world()
    u, trials, c = 0, 20_000, SMALL
    z = logits(w, u)
    liked, disliked = int(np.argmax(z)), int(np.argmin(z))
    filler = [i for i in range(len(w.items)) if i not in (liked, disliked)][:4]
    rng = np.random.default_rng(1)
    # (item, position) -> counts of (looked, streamed, skipped, saved)
    counts = {(i, k): np.zeros(4) for i in (liked, disliked) for k in (0, 5)}
    for _ in range(trials):
        for slate in ([liked, *filler, disliked], [disliked, *filler, liked]):
            for r in respond(w, u, slate, rng):
                if r.item in (liked, disliked):
                    counts[r.item, r.position] += [r.examined, r.streamed, r.skipped, r.saved]
    tol = 4 * np.sqrt(0.25 / trials)
    for (item, k), n in counts.items():
        looked, p = float(examination(k, c)), float(sigmoid(z[[item]])[0])
        save = float(sigmoid(z[[item]] + c.save_offset)[0])
        freq = n / trials
        assert freq[0] == pytest.approx(looked, abs=tol)
        assert freq[1] == pytest.approx(looked * p, abs=tol)
        assert freq[2] == pytest.approx(looked * (1 - p) * c.skip_if_not_streamed, abs=tol)
        assert freq[3] == pytest.approx(looked * p * save, abs=tol)
    # What the listener likes is streamed more and skipped less; the top slot is streamed more.
    assert counts[liked, 0][1] > counts[disliked, 0][1]
    assert counts[liked, 0][2] < counts[disliked, 0][2]
    assert counts[liked, 0][1] > counts[liked, 5][1]


def test_expected_reward_is_the_mean_realised_reward() -> None:
    w = world()
    rng = np.random.default_rng(2)
    slate = [3, 17, 42, 8, 25]
    mean = np.mean([slate_reward(respond(w, 4, slate, rng)) for _ in range(40_000)])
    assert mean == pytest.approx(expected_reward(w, 4, slate), abs=0.03)
    assert expected_reward(w, 4, []) == 0.0


def test_item_values_increase_with_appeal() -> None:
    w = world()
    z, v = logits(w, 7), item_values(w, 7)
    order = np.argsort(z)
    assert np.all(np.diff(v[order]) >= 0)


def test_the_oracle_picks_the_best_slate() -> None:
    w = world(5, SimConfig(listeners=5, items=9, artists=3, shows=2, genres=2))
    for u in range(5):
        best = oracle_slate(w, u, 3)
        brute = max(itertools.permutations(range(9), 3), key=lambda s: expected_reward(w, u, s))
        assert expected_reward(w, u, best) == pytest.approx(expected_reward(w, u, brute))
        assert best == list(brute)


def test_the_oracle_beats_random_slates_and_respects_exclusions() -> None:
    w = world(6, SimConfig(listeners=20, items=200, released_at_start=0.5, release_days=5))
    rng = np.random.default_rng(3)
    for u in range(20):
        exclude = {int(i) for i in rng.choice(200, 30, replace=False)}
        best = oracle_slate(w, u, 10, exclude, day=0)
        assert len(best) == 10
        assert not exclude.intersection(best)
        assert all(w.items[i].release_day == 0 for i in best)
        eligible = [i for i in range(200) if i not in exclude and w.release_days[i] == 0]
        for _ in range(20):
            other = [int(i) for i in rng.choice(eligible, 10, replace=False)]
            assert expected_reward(w, u, best) >= expected_reward(w, u, other)
    # Fewer eligible items than asked: all of them, and no excluded one.
    assert sorted(oracle_slate(w, 0, 10, range(195))) == [195, 196, 197, 198, 199]


def test_returns_follow_appeal_and_fade() -> None:
    w = world()
    z = logits(w, 0)
    liked, disliked = int(np.argmax(z)), int(np.argmin(z))
    days = np.array([1.0, 5.0, 30.0])
    p_liked = return_probability(w, 0, [liked] * 3, days)
    p_disliked = return_probability(w, 0, [disliked] * 3, days)
    assert np.all(p_liked > p_disliked)
    assert np.all(np.diff(p_liked) < 0)
    assert np.all((p_liked >= 0) & (p_liked <= w.config.return_max))
    # Nothing comes back the day it was first streamed; over many days, liked items come back
    # as often as the probabilities say.
    rng = np.random.default_rng(4)
    assert returns(w, 0, {liked: 3}, 3, rng) == []
    hits = sum(liked in returns(w, 0, {liked: 0}, 1, rng) for _ in range(20_000))
    assert hits / 20_000 == pytest.approx(p_liked[0], abs=0.015)


def test_content_vectors_blur_the_truth_by_the_noise_asked() -> None:
    w = world()
    exact = content_vectors(w, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(exact, w.vectors)
    a = content_vectors(w, 1.0, np.random.default_rng(5))
    np.testing.assert_array_equal(a, content_vectors(w, 1.0, np.random.default_rng(5)))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0)
    similarity = [
        float(np.mean(np.sum(content_vectors(w, x, np.random.default_rng(5)) * w.vectors, axis=1)))
        for x in (0.5, 1.0, 3.0)
    ]
    assert 1.0 > similarity[0] > similarity[1] > similarity[2] > 0.0


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="skip_if_not_streamed"):
        SimConfig(skip_if_not_streamed=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        SimConfig(items=0)


def test_the_simulator_is_pure() -> None:
    """numpy and the standard library only: no I/O, no event loop, no environment."""
    source = Path(simulator.__file__).read_text()
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots - {"numpy"} <= set(sys.stdlib_module_names) | {"__future__"}
    forbidden = {"gateway", "aiohttp", "asyncpg", "sqlalchemy", "annoy", "asyncio", "os", "random"}
    assert not roots & forbidden, sorted(roots & forbidden)
