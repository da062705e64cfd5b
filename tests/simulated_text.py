"""Simulated events that carry text (prompts, responses, comments), for the shadow tests."""

from __future__ import annotations

import json
from collections.abc import Iterator

from ingest.simulate import Scenario, simulate


def text_events(responses: dict[str, float], *, seed: int) -> Iterator[dict]:
    """One day of a small population's events as dicts, every response carrying text; the
    ``responses`` settings (``pii_share``, ``refusal_rate``...) override the defaults."""
    scenario = Scenario.default().evolve(
        days=1,
        population={"initial_users": 300, "new_users_per_day": 0},
        responses={"text_share": 1.0, **responses},
        rollout=None,
        population_shift=None,
        ui_release=None,
        holidays=[],
        truth_samples=1000,
    )
    for chunk in simulate(scenario, seed=seed):
        for raw in chunk:
            yield json.loads(raw)
