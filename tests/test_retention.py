"""Retention: planted churn hazard ratios are recovered with late entry handled; ignoring late
entry is shown to bias; the survivorship warning fires when churn differs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import compare_retention, survivorship_warning


def cohort(rng: np.random.Generator, *, hr: float, users: int = 3000, window: float = 28.0):
    """Users with exponential churn (treated hazard x hr); half joined before the window, so
    they are observed from the window's start (late entry) only if they had not churned yet."""
    treated = rng.random(users) < 0.5
    rate = 0.05 * np.where(treated, hr, 1.0)
    churn_at = rng.exponential(1 / rate)
    joined_before = rng.random(users) < 0.5
    entry = np.where(joined_before, rng.uniform(0, 30, users), 0.0)  # tenure at window start
    seen = churn_at > entry  # those who churned before the window are never seen
    end = entry + window
    duration = np.minimum(churn_at, end)
    return pl.DataFrame(
        {
            "treated": treated[seen],
            "entry": entry[seen],
            "duration": duration[seen],
            "churned": (churn_at <= end)[seen].astype(int),
        }
    )


def test_planted_hazard_ratio_is_covered_with_late_entry():
    rng = np.random.default_rng(7)
    runs, covered, naive_survival, survival = 40, 0, [], []
    for _ in range(runs):
        frame = cohort(rng, hr=1.3)
        r = compare_retention(
            frame, duration="duration", churned="churned", treated="treated", entry="entry"
        )
        covered += r.hazard_ratio.ci_low <= 1.3 <= r.hazard_ratio.ci_high
        naive = compare_retention(frame, duration="duration", churned="churned", treated="treated")
        survival.append(r.survival["control"].value)
        naive_survival.append(naive.survival["control"].value)
    assert covered / runs >= 0.85
    # counting users who joined before the window as at risk from their first day credits
    # them with days nobody observed: week-one retention comes out too rosy
    truth = np.exp(-0.05 * 7)
    assert abs(np.mean(survival) - truth) < 0.01
    assert np.mean(naive_survival) - truth > 0.05


def test_survival_at_day_7_and_the_survivorship_warning():
    r = compare_retention(
        cohort(np.random.default_rng(3), hr=1.6),
        duration="duration", churned="churned", treated="treated", entry="entry",
    )  # fmt: skip
    assert r.survival["treated"].value < r.survival["control"].value
    assert abs(r.survival["control"].value - np.exp(-0.05 * 7)) < 0.04
    warning = survivorship_warning(r, "thumbs_down_rate")
    assert warning and "survivors" in warning
    same = compare_retention(
        cohort(np.random.default_rng(4), hr=1.0, users=800),
        duration="duration", churned="churned", treated="treated", entry="entry",
    )  # fmt: skip
    assert same.hazard_ratio.ci_low <= 1 <= same.hazard_ratio.ci_high
    assert survivorship_warning(same, "thumbs_down_rate") is None
    assert "hazard ratio" in same.summary("markdown")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    hr=st.floats(0.5, 2.0),
    grid=st.sampled_from([0.0, 1 / 24, 1.0]),
)
def test_cox_fit_is_statsmodels_phreg(seed, hr, grid):
    """The one-covariate Cox fit gives statsmodels' PHReg (Breslow ties, late entry) estimate
    and standard error, with and without tied times."""
    import statsmodels.api as sm

    from analysis.retention import cox_binary

    frame = cohort(np.random.default_rng(seed), hr=hr, users=600)
    time = frame["duration"].to_numpy()
    entry = frame["entry"].to_numpy()
    if grid:  # times on a grid: many ties
        time, entry = np.ceil(time / grid) * grid, np.floor(entry / grid) * grid
    status = frame["churned"].to_numpy().astype(float)
    group = frame["treated"].to_numpy().astype(float)
    reference = sm.PHReg(time, group[:, None], status=status, entry=entry).fit()
    beta, se = cox_binary(time, status, group, entry)
    assert beta == pytest.approx(reference.params[0], rel=1e-9, abs=1e-12)
    assert se == pytest.approx(reference.bse[0], rel=1e-7)
