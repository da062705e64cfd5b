"""Clustered least squares, reproduced through our own API against published Stata figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from statsmodels.datasets import grunfeld

from analysis import InsufficientDataError, fit_clustered_ols

REFERENCE = json.loads(
    (Path(__file__).parent / "results" / "grunfeld_cluster_stata.json").read_text()
)


@pytest.fixture(scope="module")
def grunfeld_frame() -> pl.DataFrame:
    data = grunfeld.load_pandas().data.iloc[:200]  # Stata's example has the first 10 firms
    return pl.from_pandas(data[["invest", "value", "capital", "firm"]].astype({"firm": str}))


def test_grunfeld_cluster_robust_matches_stata(grunfeld_frame):
    result = fit_clustered_ols(
        grunfeld_frame, outcome="invest", regressors=["value", "capital"], cluster="firm"
    )
    tol = REFERENCE["tolerance"]
    assert (result.n_obs, result.n_clusters, result.df) == (
        REFERENCE["n_obs"],
        REFERENCE["n_clusters"],
        REFERENCE["df"],
    )
    for term, ref in REFERENCE["terms"].items():
        e = result.estimate(term)
        np.testing.assert_allclose(e.value, ref["b"], rtol=tol["b"], err_msg=term)
        np.testing.assert_allclose(e.se, ref["se"], rtol=tol["se"], err_msg=term)
        np.testing.assert_allclose((e.ci_low, e.ci_high), (ref["ll"], ref["ul"]), rtol=tol["ci"])
        np.testing.assert_allclose(e.p_value, ref["p"], rtol=tol["p"], err_msg=term)
    assert any("10 clusters" in w for w in result.warnings)


def test_summary_and_frame_carry_the_numbers(grunfeld_frame):
    result = fit_clustered_ols(
        grunfeld_frame, outcome="invest", regressors=["value", "capital"], cluster="firm"
    )
    assert result.to_frame()["term"].to_list() == ["value", "capital", "const"]
    for fmt, marker in (
        ("text", "0.115562"),
        ("markdown", "| value |"),
        ("html", "<td>value</td>"),
    ):
        text = result.summary(fmt)
        assert marker in text and "warning: only 10 clusters" in text.replace("<li>", "")


def test_too_few_clusters_is_refused(grunfeld_frame):
    few = grunfeld_frame.filter(pl.col("firm").is_in(grunfeld_frame["firm"].unique()[:3].to_list()))
    with pytest.raises(InsufficientDataError, match="3 clusters"):
        fit_clustered_ols(few, outcome="invest", regressors=["value"], cluster="firm")


def test_planted_effect_is_covered_at_the_nominal_rate():
    """Simulated users with correlated outcomes: the 95% interval covers the truth ~95% of the
    time only because errors are clustered (naive OLS would be far too narrow here)."""
    rng = np.random.default_rng(11)
    covered = 0
    runs = 200
    for _ in range(runs):
        users = 60
        per_user = rng.integers(5, 40, users)
        user = np.repeat(np.arange(users), per_user)
        treated = np.repeat(rng.integers(0, 2, users), per_user).astype(float)
        noise = np.repeat(rng.normal(0, 1.0, users), per_user) + rng.normal(0, 0.5, len(user))
        y = 0.3 * treated + noise
        frame = pl.DataFrame({"y": y, "treated": treated, "user": user})
        e = fit_clustered_ols(frame, outcome="y", regressors=["treated"], cluster="user").estimate(
            "treated"
        )
        covered += e.ci_low <= 0.3 <= e.ci_high
    assert 0.91 <= covered / runs <= 0.99
