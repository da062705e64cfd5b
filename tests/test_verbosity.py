"""Verbosity check: a model that lengthens sessions only by talking more is caught."""

from __future__ import annotations

import numpy as np
import polars as pl

from analysis import check_verbosity


def sessions(rng: np.random.Generator, *, direct: float, users: int = 800) -> pl.DataFrame:
    treated = rng.random(users) < 0.5
    n = rng.integers(1, 6, users)
    u = np.repeat(np.arange(users), n)
    t = treated[u]
    tokens = 400 * np.where(t, 1.25, 1.0) * rng.lognormal(0, 0.2, len(u))  # verbose candidate
    reader = np.repeat(rng.normal(0, 40, users), n)  # some users read slowly
    seconds = 120 + 0.8 * tokens + direct * t + reader + rng.normal(0, 30, len(u))
    return pl.DataFrame(
        {
            "user_id": u.astype(str),
            "treated": t,
            "hour": rng.integers(0, 168, len(u)),
            "seconds": seconds,
            "mean_completion_tokens": tokens,
        }
    )


def test_longer_sessions_from_longer_answers_only_are_flagged():
    r = check_verbosity(
        sessions(np.random.default_rng(1), direct=0.0),
        outcome="seconds", treated="treated", user="user_id", metric="session_seconds",
    )  # fmt: skip
    assert r.total.ci_low > 0  # sessions did get longer
    assert r.direct.ci_low <= 0 <= r.direct.ci_high  # but not with length held fixed
    assert r.mediated_share > 0.8 and r.carried_by_length
    assert "more verbose model" in r.summary()


def test_a_real_engagement_gain_is_not_explained_away():
    r = check_verbosity(
        sessions(np.random.default_rng(2), direct=150.0),
        outcome="seconds", treated="treated", user="user_id",
    )  # fmt: skip
    assert r.direct.ci_low > 100
    assert r.mediated_share < 0.5 and not r.carried_by_length
    assert r.on_mediator.value > 50  # the candidate is still wordier
