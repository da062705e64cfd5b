"""The waterfall: planted seasonality, mix shift, model effect and annotated change are each
recovered with honest intervals, the parts add up to what was observed, and a change that is
only a shift in who the users are is not blamed on the model (Simpson's paradox)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from analysis import InsufficientDataError, decompose_change

START = dt.datetime(2026, 9, 7)  # a Monday
SWITCH = START + dt.timedelta(days=14)
UI = START + dt.timedelta(days=21)
BEFORE = (SWITCH - dt.timedelta(days=7), SWITCH)
AFTER = (SWITCH, SWITCH + dt.timedelta(days=7))


def cells(
    rng: np.random.Generator,
    *,
    model: float,
    ui: float,
    mix_at: dt.datetime,
    new_share: tuple[float, float] = (0.2, 0.5),
    days: int = 28,
) -> pl.DataFrame:
    """Hourly binomial counts for two cohorts; the candidate replaces the baseline at SWITCH.

    Rates: 0.20 (established) or 0.35 (new) + a daily cycle + a weekend bump + a per-day shock
    + ``model`` after the switch + ``ui`` from the UI release. New users' share of traffic
    moves from ``new_share[0]`` to ``new_share[1]`` at ``mix_at``.
    """
    rows = []
    shocks = rng.normal(0, 0.01, days)
    for h in range(days * 24):
        hour = START + dt.timedelta(hours=h)
        volume = 400 * (1 + 0.5 * np.sin(2 * np.pi * (h % 24) / 24))
        base = 0.03 * np.cos(2 * np.pi * (h % 24) / 24) + 0.02 * (hour.weekday() >= 5)
        base += shocks[h // 24] + ui * (hour >= UI)
        version = "cand" if hour >= SWITCH else "base"
        share_new = new_share[1] if hour >= mix_at else new_share[0]
        for cohort, share, rate in (("new", share_new, 0.35), ("est", 1 - share_new, 0.20)):
            n = rng.poisson(volume * share)
            p = np.clip(rate + base + model * (version == "cand"), 0.01, 0.99)
            rows.append((hour, version, cohort, rng.binomial(n, p), n))
    return pl.DataFrame(
        rows, schema=["hour", "model_version", "cohort", "down", "rated"], orient="row"
    )


UI_ANNOTATION = pl.DataFrame(
    {
        "title": ["rating UI"],
        "kind": ["ui_release"],
        "starts_at": [UI],
        "ends_at": [None],
    },
    schema_overrides={"ends_at": pl.Datetime("us")},
)


def run(frame: pl.DataFrame, annotations: pl.DataFrame | None = UI_ANNOTATION, **kw):
    return decompose_change(
        frame,
        numerator="down",
        denominator="rated",
        candidate="cand",
        baseline="base",
        before=kw.pop("before", BEFORE),
        after=kw.pop("after", AFTER),
        segments=["cohort"],
        annotations=annotations,
        metric="thumbs_down_rate",
        **kw,
    )


def test_planted_parts_are_recovered_with_calibrated_intervals():
    rng = np.random.default_rng(11)
    runs, covered, estimates, ui_covered = 100, 0, [], 0
    for _ in range(runs):
        frame = cells(rng, model=-0.03, ui=0.02, mix_at=START + dt.timedelta(days=10))
        w = run(frame, before=BEFORE, after=(SWITCH, UI + dt.timedelta(days=7)))
        covered += w.model_effect.ci_low <= -0.03 <= w.model_effect.ci_high
        estimates.append(w.model_effect.value)
        ui_part = w.part("annotation:rating UI")
        ui_share = 0.5  # the UI release covers half of the after window
        ui_covered += ui_part.ci_low <= 0.02 * ui_share <= ui_part.ci_high
    assert 0.90 <= covered / runs <= 0.99
    assert abs(np.mean(estimates) + 0.03) < 0.003  # bias under 10% of the effect
    assert ui_covered / runs >= 0.88


def test_parts_add_up_to_the_observed_change():
    frame = cells(np.random.default_rng(2), model=-0.03, ui=0.0, mix_at=SWITCH)
    w = run(frame, annotations=None)
    total = sum(p.value for p in w.parts)
    assert total == pytest.approx(w.observed_change, abs=1e-12)
    assert w.candidate_share == (0.0, 1.0)
    assert w.part("model").value == pytest.approx(w.model_effect.value)
    # the counterfactual: observed hours after the switch sit below the no-model expectation
    cf = w.counterfactual.filter(pl.col("hour") >= SWITCH)
    assert (cf["observed"] < cf["expected_without_model"]).mean() > 0.8
    assert (cf["lower"] < cf["expected_without_model"]).all()
    assert {"model", "seasonality", "population shift", "unexplained"} <= {
        e["term"] for e in w.to_frame().to_dicts()
    }
    assert "population shift" in w.summary("markdown")


def test_simpsons_paradox_goes_to_population_shift_not_the_model():
    """The mix moves to the worse cohort on the day of the switch and the model does nothing:
    the aggregate worsens, the population part takes it, the model's interval covers zero."""
    rng = np.random.default_rng(5)
    runs, covered, pop_share = 60, 0, []
    for _ in range(runs):
        frame = cells(rng, model=0.0, ui=0.0, mix_at=SWITCH, new_share=(0.2, 0.6))
        w = run(frame, annotations=None)
        assert w.observed_change > 0.03  # the aggregate got clearly worse
        covered += w.model_effect.ci_low <= 0.0 <= w.model_effect.ci_high
        pop_share.append(w.part("population shift").value / w.observed_change)
    assert covered / runs >= 0.9
    assert 0.85 < np.mean(pop_share) < 1.15


def test_an_annotation_on_the_switch_day_is_flagged_not_silently_split():
    frame = cells(np.random.default_rng(3), model=-0.03, ui=0.0, mix_at=SWITCH)
    same_day = UI_ANNOTATION.with_columns(pl.lit(SWITCH).alias("starts_at"))
    w = run(frame, annotations=same_day)
    assert any("rank-deficient" in x for x in w.warnings)


def test_too_little_history_is_refused_with_the_reason():
    frame = cells(np.random.default_rng(4), model=0.0, ui=0.0, mix_at=SWITCH, days=5)
    with pytest.raises(InsufficientDataError, match="days of cells"):
        run(frame, annotations=None, before=(START, START + dt.timedelta(days=2)),
            after=(START + dt.timedelta(days=2), START + dt.timedelta(days=4)))  # fmt: skip


def test_cr2_by_day_matches_the_dense_textbook_formula():
    """The low-rank CR2 and its Satterthwaite degrees of freedom equal the dense formulas:
    V = B^-1 sum_g Z_g' A_g e_g e_g' A_g Z_g B^-1 with A_g = (I - H_gg)^(-1/2), and
    df = tr(M)^2 / tr(M^2) with M = P'(I - H)P (Pustejovsky and Tipton 2018)."""
    from scipy.linalg import sqrtm

    from analysis.waterfall import _ByDay

    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 12, 6)
    days = np.repeat(np.arange(6), sizes)
    n = len(days)
    x = np.column_stack(
        [np.ones(n), rng.normal(size=n), (days >= 3).astype(float), rng.normal(size=n)]
    )
    w = rng.uniform(0.5, 3, n)
    y = x @ [1, 2, 0.5, -1] + rng.normal(size=n) + rng.normal(size=6)[days]
    gram = x.T @ (x * w[:, None])
    resid = y - x @ np.linalg.solve(gram, x.T @ (w * y))
    grams = np.stack([x[days == g].T @ (x[days == g] * w[days == g, None]) for g in range(6)])
    scores = np.stack([x[days == g].T @ (w * resid)[days == g] for g in range(6)])
    fast = _ByDay(grams, scores, gram)

    bread = np.linalg.inv(gram)
    z, e = np.sqrt(w)[:, None] * x, np.sqrt(w) * resid
    c = np.array([0.0, 0.0, 1.0, 0.0])
    meat, p = np.zeros((4, 4)), np.zeros((n, 6))
    for g in range(6):
        on = days == g
        a = np.real(sqrtm(np.linalg.inv(np.eye(on.sum()) - z[on] @ bread @ z[on].T)))
        u = z[on].T @ a @ e[on]
        meat += np.outer(u, u)
        p[on, g] = a @ z[on] @ bread @ c
    m = p.T @ (np.eye(n) - z @ bread @ z.T) @ p
    np.testing.assert_allclose(fast.cov, bread @ meat @ bread, atol=1e-12)
    assert fast.df(c) == pytest.approx(np.trace(m) ** 2 / np.trace(m @ m), rel=1e-10)


def test_sums_give_the_fit_on_the_cells_themselves():
    """The fit is built from sums by hour, version and segment pairs, never from a design row
    per cell: it must equal weighted least squares on the dense cell-by-cell design, with two
    versions serving at once, three segment columns (with a missing value) and an annotation."""
    from analysis.waterfall import _ByDay, _fourier

    rng = np.random.default_rng(5)
    rows = []
    for h in range(8 * 24):
        hour = START + dt.timedelta(hours=h)
        for version in ("base", "cand"):
            for locale in ("en", "de", "ja"):
                for platform in ("ios", "web"):
                    for intent in ("code", "chat", None):
                        if rng.random() < 0.3:  # sparse, as rollup cells are
                            continue
                        n = int(rng.integers(1, 30))
                        rows.append(
                            (hour, version, locale, platform, intent, rng.binomial(n, 0.3), n)
                        )
    frame = pl.DataFrame(
        rows,
        schema=["hour", "model_version", "locale", "platform", "intent", "down", "rated"],
        orient="row",
    )
    release = UI_ANNOTATION.with_columns(pl.lit(START + dt.timedelta(days=5)).alias("starts_at"))
    segments = ["locale", "platform", "intent"]
    before = (START, START + dt.timedelta(days=4))
    after = (START + dt.timedelta(days=4), START + dt.timedelta(days=8))
    result = decompose_change(
        frame, numerator="down", denominator="rated", candidate="cand", baseline="base",
        before=before, after=after, segments=segments, annotations=release,
    )  # fmt: skip

    values = frame.with_columns(pl.col("intent").fill_null("unknown"))
    hours = ((frame["hour"] - dt.datetime(2001, 1, 1)).dt.total_hours()).to_numpy()
    x = np.column_stack(
        [
            np.ones(frame.height),
            (frame["model_version"] == "cand").to_numpy().astype(float),
            *[
                (values[s] == v).to_numpy().astype(float)
                for s in segments
                for v in sorted(values[s].unique())[1:]
            ],
            _fourier(hours),
            (frame["hour"] >= release["starts_at"][0]).to_numpy().astype(float),
        ]
    )
    w = frame["rated"].to_numpy().astype(float)
    y = frame["down"].to_numpy() / w
    gram = x.T @ (x * w[:, None])
    beta = np.linalg.solve(gram, x.T @ (w * y))
    resid = y - x @ beta
    days = frame["hour"].dt.date().rank("dense").to_numpy() - 1
    grams = np.stack([x[days == g].T @ (x[days == g] * w[days == g, None]) for g in range(8)])
    scores = np.stack([x[days == g].T @ (w * resid)[days == g] for g in range(8)])
    cov = _ByDay(grams, scores, gram).cov

    assert result.model_effect.value == pytest.approx(beta[1], rel=1e-9)
    assert result.model_effect.se == pytest.approx(np.sqrt(cov[1, 1]), rel=1e-7)
    inside = [(frame["hour"] >= lo) & (frame["hour"] < hi) for lo, hi in (before, after)]
    shift = [
        (x[m.to_numpy()] * w[m.to_numpy(), None]).sum(0) / w[m.to_numpy()].sum() for m in inside
    ]
    ui = result.part("annotation:rating UI")
    assert ui.value == pytest.approx((shift[1] - shift[0])[-1] * beta[-1], rel=1e-9)
    mix = slice(2, 2 + 5)  # en/ja, web, code/unknown (the first level is the reference)
    assert result.part("population shift").value == pytest.approx(
        (shift[1] - shift[0])[mix] @ beta[mix], rel=1e-9
    )
    assert result.n_cells == frame.height and result.n_days == 8


def test_a_large_mix_shift_is_flagged_and_a_stable_mix_is_not():
    """Segments see only part of who the users are: when one segment's share swings, the result
    says the model effect may carry what the segments miss."""
    rng = np.random.default_rng(8)
    shifted = run(cells(rng, model=0.0, ui=0.0, mix_at=SWITCH, new_share=(0.2, 0.6)))
    flagged = [x for x in shifted.warnings if "share moved" in x]
    assert len(flagged) == 1
    # the cohort whose share moved most, with its shares of the rated responses in each window
    assert flagged[0].startswith("cohort=")
    assert "20% to 60%" in flagged[0] or "80% to 40%" in flagged[0]
    stable = run(cells(rng, model=0.0, ui=0.0, mix_at=SWITCH, new_share=(0.2, 0.25)))
    assert not any("share moved" in x for x in stable.warnings)
