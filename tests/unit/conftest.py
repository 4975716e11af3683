"""Hypothesis profiles for the property tests. `dev` (the default) keeps the suite quick; `ci`
(`HYPOTHESIS_PROFILE=ci`) tries more examples, derandomized so a CI run cannot flake on a draw
that a developer's run never saw. No deadline in either: a loaded 2-core machine makes per-example
timings meaningless. Tests that set `max_examples` themselves keep their own count."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("dev"),
    max_examples=400,
    derandomize=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
