"""Switchover (interrupted time series): published Nile figures through our API, and planted
level shifts on seasonal series."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from statsmodels.datasets import nile

from analysis import InsufficientDataError, estimate_switchover

REF = json.loads((Path(__file__).parent / "results" / "nile_durbin_koopman.json").read_text())


@pytest.fixture(scope="module")
def nile_frame() -> pl.DataFrame:
    data = nile.load_pandas().data
    return pl.DataFrame({"year": data["year"].astype(int), "volume": data["volume"]})


def test_nile_level_shift_at_1899(nile_frame):
    r = estimate_switchover(
        nile_frame, time="year", value="volume", switch_at=1899, outliers=[1913]
    )
    tol = REF["tolerance"]
    ref = REF["level_shift"]
    assert r.effect is not None
    assert r.effect.value == pytest.approx(ref["shift"], abs=tol["coef_abs"])
    assert r.effect.se == pytest.approx(ref["shift_se"], abs=tol["se_abs"])
    assert r.term("const").value == pytest.approx(ref["const"], abs=tol["coef_abs"])
    assert r.effect.ci_high < 0
    band = r.counterfactual.filter(pl.col("year") >= 1899)
    assert (band["expected_without_switch"] > band["observed"]).mean() > 0.8


def test_nile_local_level_variances(nile_frame):
    r = estimate_switchover(
        nile_frame, time="year", value="volume", switch_at=None, model="local_level"
    )
    ref = REF["local_level"]
    rel = REF["tolerance"]["variance_rel"]
    assert r.effect is None
    assert r.variances["irregular"] == pytest.approx(ref["sigma2_irregular"], rel=rel)
    assert r.variances["level"] == pytest.approx(ref["sigma2_level"], rel=rel)


def hourly_series(
    rng: np.random.Generator, *, shift: float, days: int = 21
) -> tuple[pl.DataFrame, int]:
    hours = np.arange(days * 24)
    daily = 0.03 * np.sin(2 * np.pi * hours / 24)
    weekly = 0.02 * np.cos(2 * np.pi * hours / 168)
    switch = days * 24 // 2
    y = 0.30 + daily + weekly + shift * (hours >= switch) + rng.normal(0, 0.01, len(hours))
    return pl.DataFrame({"hour": hours, "thumbs_down_rate": y}), switch


def test_planted_shift_on_a_seasonal_series_is_covered():
    rng = np.random.default_rng(8)
    covered, runs = 0, 20
    for _ in range(runs):
        frame, switch = hourly_series(rng, shift=0.015)
        r = estimate_switchover(
            frame,
            time="hour",
            value="thumbs_down_rate",
            switch_at=switch,
            seasonal_periods=(24, 168),
        )
        covered += r.effect.ci_low <= 0.015 <= r.effect.ci_high
    assert covered / runs >= 0.85


def test_too_little_before_the_switch_is_refused(nile_frame):
    with pytest.raises(InsufficientDataError, match="before the switch"):
        estimate_switchover(nile_frame, time="year", value="volume", switch_at=1872)


def test_summary_names_the_shift_and_the_fit(nile_frame):
    r = estimate_switchover(nile_frame, time="year", value="volume", switch_at=1899)
    text = r.summary("markdown")
    assert "| shift |" in text and "log-likelihood" in text
