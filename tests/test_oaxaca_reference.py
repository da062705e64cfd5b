"""Oaxaca-Blinder through our own API, against Stata's figures on the ccard data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from statsmodels.datasets import ccard

from analysis import InsufficientDataError, decompose_covariate_shift

REF = json.loads((Path(__file__).parent / "results" / "ccard_oaxaca_stata.json").read_text())


@pytest.fixture(scope="module")
def result():
    frame = pl.from_pandas(ccard.load_pandas().data)
    return decompose_covariate_shift(
        frame,
        outcome="AVGEXP",
        covariates=["AGE", "INCOME", "INCOMESQ"],
        window="OWNRENT",
        n_boot=1000,
        seed=1,
    )


def test_point_estimates_match_stata(result):
    tol = REF["tolerance"]["value_abs"]
    assert result.gap.value == pytest.approx(REF["gap"], abs=tol)
    for part, ref in REF["three_fold"].items():
        assert getattr(result, part).value == pytest.approx(ref, abs=tol), part
    for part, ref in REF["two_fold_pooled"].items():
        assert getattr(result, part).value == pytest.approx(ref, abs=tol), part
    assert result.endowments.value + result.coefficients.value + result.interaction.value == (
        pytest.approx(result.gap.value)
    )


def test_bootstrap_standard_errors_agree_with_stata_bootstrap(result):
    # both are bootstraps of 72 rows: agreement within a quarter is what resampling allows
    for part, ref in REF["three_fold_se"].items():
        assert getattr(result, part).se == pytest.approx(ref, rel=REF["tolerance"]["se_rel"]), part


def test_sign_convention_is_after_minus_before():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    after = np.r_[np.zeros(200), np.ones(200)]
    y = 2.0 * (x + after) + rng.normal(size=400)  # after: covariate shifted up by 1
    frame = pl.DataFrame({"y": y, "x": x + after, "after": after})
    r = decompose_covariate_shift(frame, outcome="y", covariates=["x"], window="after", n_boot=50)
    assert r.gap.value > 0 and r.after > r.before
    assert r.explained.value == pytest.approx(r.gap.value, rel=0.2)  # all of it is the mix
    assert abs(r.unexplained.value) < 3 * r.unexplained.se
    assert "endowments" in r.summary("markdown")


def test_too_few_rows_is_refused():
    frame = pl.DataFrame({"y": [1.0, 2.0, 3.0], "x": [1.0, 2.0, 3.0], "after": [0, 1, 1]})
    with pytest.raises(InsufficientDataError, match="too few"):
        decompose_covariate_shift(frame, outcome="y", covariates=["x"], window="after")
