"""The waterfall: an observed change in a metric between two windows, split into seasonality,
population shift, the model, annotated other changes, and what is left unexplained.

One weighted least-squares fit on hourly cells (hour x model version x segment values, the
shape of the warehouse's hourly rollup) explains each cell's rate by

    rate = const + delta * [version = candidate] + segment main effects
           + daily and weekly Fourier terms + one dummy per annotated change + e

weighted by the cell's denominator. Every part of the waterfall is then a fixed linear
combination of the coefficients: the change, between the windows, of the denominator-weighted
mean of that part's columns, times the part's coefficients. Its standard error follows from the
coefficients' covariance, clustered by day (hours of one day share shocks: weather, news,
an outage), in its bias-reduced form (CR2) with Satterthwaite degrees of freedom. The usual
sandwich (CR1) runs small here: two one-week windows are 14 clusters, and the weekly
seasonality takes most of the day-to-day variation with it (89% coverage of a planted effect);
the delete-a-day jackknife over-corrects (99%); CR2 covers it in 95.5% of 200 runs.
``unexplained`` is the change in the weighted mean residual: it is what the model does
not know, so it carries no interval.

The same fit is an interrupted time series when one version replaces the other (``delta`` is
the level shift at the switch, net of seasonality, mix and annotations) and a concurrent
comparison with hour effects when both serve at once.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from scipy import stats

from analysis.errors import InsufficientDataError
from analysis.results import Estimate, find_estimate, render_summary, require_columns

__all__ = ["ANNOTATION_KINDS", "Waterfall", "decompose_change"]

ANNOTATION_KINDS = ("model_rollout", "ui_release", "holiday", "incident", "other")
"""What an annotation can record. Model rollouts are drawn on charts; the model term covers them."""

_SEASONAL_PERIODS = (24, 168)
_HARMONICS = 3
_MIN_DAYS = 7


@dataclass(frozen=True)
class Waterfall:
    """How the change of a metric between two windows divides into its causes."""

    metric: str
    candidate: str
    baseline: str
    before: tuple[dt.datetime, dt.datetime]
    after: tuple[dt.datetime, dt.datetime]
    observed_before: float
    observed_after: float
    parts: tuple[Estimate, ...]
    """``seasonality``, ``population shift``, ``model``, one per annotation, ``unexplained``."""
    model_effect: Estimate
    """The candidate's effect on the metric at full exposure (everyone on it)."""
    candidate_share: tuple[float, float]
    """Share of the denominator served by the candidate, before and after."""
    counterfactual: pl.DataFrame
    """Per hour: observed, expected, expected without the model, and its band."""
    n_cells: int
    n_days: int
    confidence: float
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def observed_change(self) -> float:
        """After minus before, as observed."""
        return self.observed_after - self.observed_before

    def part(self, name: str) -> Estimate:
        """The part called ``name`` (``model``, ``seasonality``, ``annotation:NAME``, ...)."""
        return find_estimate(self.parts, name)

    def to_frame(self) -> pl.DataFrame:
        """One row per part, then the model effect at full exposure, then the observed change."""
        rows = [*self.parts, self.model_effect]
        frame = pl.DataFrame([e.__dict__ for e in rows])
        observed = pl.DataFrame(
            {
                "term": ["observed change"],
                "value": [self.observed_change],
                "se": [float("nan")],
                "ci_low": [float("nan")],
                "ci_high": [float("nan")],
                "p_value": [float("nan")],
            }
        )
        return pl.concat([frame, observed])

    def summary(self, fmt: str = "text") -> str:
        """The waterfall as ``text``, ``markdown`` or ``html``."""
        header = (
            f"{self.metric}: {self.observed_before:.4g} -> {self.observed_after:.4g} "
            f"(change {self.observed_change:+.4g}) from {_window(self.before)} to "
            f"{_window(self.after)}; {self.candidate} served {self.candidate_share[0]:.0%} then "
            f"{self.candidate_share[1]:.0%} (vs {self.baseline}); {self.n_cells} hourly cells "
            f"over {self.n_days} days; {self.confidence:.0%} intervals"
        )
        return render_summary(
            header, [*self.parts, self.model_effect], self.assumptions, self.warnings, fmt
        )


def _window(w: tuple[dt.datetime, dt.datetime]) -> str:
    return f"{w[0]:%Y-%m-%d %H:%M}..{w[1]:%Y-%m-%d %H:%M}"


def _fourier(hours: np.ndarray) -> np.ndarray:
    cols = []
    for period in _SEASONAL_PERIODS:
        for k in range(1, _HARMONICS + 1):
            angle = 2 * np.pi * k * (hours % period) / period
            cols += [np.sin(angle), np.cos(angle)]
    return np.column_stack(cols)


def _naive_utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def _annotation_columns(
    hours: pl.Series, annotations: pl.DataFrame | None
) -> tuple[list[np.ndarray], list[str]]:
    """One 0/1 column per annotated change (not model rollouts): 1 from its start, until its end
    when it has one (a holiday), for good when it has none (a release)."""
    if annotations is None or annotations.is_empty():
        return [], []
    require_columns(annotations, ["title", "kind", "starts_at", "ends_at"])
    cols, names = [], []
    for row in annotations.filter(pl.col("kind") != "model_rollout").iter_rows(named=True):
        on = hours >= _naive_utc(row["starts_at"])
        if row["ends_at"] is not None:
            on = on & (hours < _naive_utc(row["ends_at"]))
        col = on.cast(pl.Float64).to_numpy()
        if 0 < col.sum() < len(col):
            cols.append(col)
            names.append(f"annotation:{row['title']}")
    return cols, names


def decompose_change(
    cells: pl.DataFrame,
    *,
    numerator: str,
    denominator: str,
    candidate: str,
    baseline: str,
    before: tuple[dt.datetime, dt.datetime],
    after: tuple[dt.datetime, dt.datetime],
    segments: Sequence[str] = ("cohort", "locale", "platform", "intent"),
    annotations: pl.DataFrame | None = None,
    confidence: float = 0.95,
    metric: str = "",
) -> Waterfall:
    """Split the change of ``numerator / denominator`` from ``before`` to ``after`` into parts.

    ``cells`` holds hourly counts: ``hour`` (UTC datetime), ``model_version``, the ``segments``
    columns, ``numerator`` and ``denominator``. The fit uses the cells from the first window's
    start to the last one's end: a longer series learns seasonality better but lets slow drift
    (churn reshaping the user base, new users maturing) pass for a level shift, which on the
    simulator biased a seven-week fit by 30-40% where the two-week fit is unbiased.
    ``annotations`` has ``title``, ``kind`` (one of :data:`ANNOTATION_KINDS`), ``starts_at`` and
    ``ends_at`` (null: for good). Windows are ``[start, end)``.
    """
    require_columns(cells, ["hour", "model_version", *segments, numerator, denominator])
    first = _naive_utc(min(before[0], after[0]))
    last = _naive_utc(max(before[1], after[1]))
    data = (
        cells.with_columns(
            pl.col("hour").dt.replace_time_zone(None),
            pl.col(numerator).cast(pl.Float64),
            pl.col(denominator).cast(pl.Float64),
        )
        .filter(
            pl.col("model_version").is_in([candidate, baseline])
            & (pl.col(denominator) > 0)
            & (pl.col("hour") >= first)
            & (pl.col("hour") < last)
        )
        .sort("hour")
    )
    if data.is_empty():
        raise InsufficientDataError(f"no {denominator} for {candidate} or {baseline} in the cells")
    hours = data["hour"]
    days = hours.dt.date().to_numpy()
    n_days = len(np.unique(days))
    if n_days < _MIN_DAYS:
        raise InsufficientDataError(
            f"{n_days} days of cells: at least {_MIN_DAYS} are needed to learn weekly seasonality"
        )
    w = data[denominator].to_numpy()
    y = data[numerator].to_numpy() / w

    # Design: [const | model | segments... | seasonal... | annotations...], with each part's
    # columns remembered so its contribution can be read off.
    epoch = dt.datetime(2001, 1, 1)  # a Monday 00:00: hour-of-week 0 is Monday midnight UTC
    since_epoch = ((hours - epoch).dt.total_seconds() // 3600).to_numpy()
    model = (data["model_version"] == candidate).cast(pl.Float64).to_numpy()
    seg_cols, seg_names = [], []
    for s in segments:
        values = data[s].cast(pl.String).fill_null("unknown")
        for level in sorted(values.unique().to_list())[1:]:
            seg_cols.append((values == level).cast(pl.Float64).to_numpy())
            seg_names.append(f"{s}={level}")
    fourier = _fourier(since_epoch)
    ann_cols, ann_names = _annotation_columns(hours, annotations)
    blocks = {
        "const": [np.ones(len(y))],
        "model": [model],
        "population shift": seg_cols,
        "seasonality": list(fourier.T),
        **{name: [col] for name, col in zip(ann_names, ann_cols, strict=True)},
    }
    x = np.column_stack([c for cols in blocks.values() for c in cols])
    spans, start = {}, 0
    for name, cols in blocks.items():
        spans[name] = slice(start, start + len(cols))
        start += len(cols)

    gram = x.T @ (x * w[:, None])
    beta = np.linalg.pinv(gram) @ (x.T @ (w * y))
    resid = y - x @ beta
    robust = _ByDay(days, x, w, resid, gram)
    cov = robust.cov
    n, k = x.shape
    warnings: list[str] = []
    rank = np.linalg.matrix_rank(gram)
    if rank < k:
        warnings.append(
            f"the design is rank-deficient ({rank} of {k} columns): some parts are not "
            "separately identified (an annotation on the day of the switch, a segment value "
            "only one version saw); their split is arbitrary"
        )

    def window_mean(window: tuple[dt.datetime, dt.datetime]) -> tuple[np.ndarray, float, float]:
        lo, hi = (_naive_utc(t) for t in window)
        inside = ((hours >= lo) & (hours < hi)).to_numpy()
        if not inside.any():
            raise InsufficientDataError(f"no cells in the window {_window(window)}")
        ww = w[inside]
        return (
            (x[inside] * ww[:, None]).sum(0) / ww.sum(),
            float((y[inside] * ww).sum() / ww.sum()),
            float((resid[inside] * ww).sum() / ww.sum()),
        )

    x_before, y_before, r_before = window_mean(before)
    x_after, y_after, r_after = window_mean(after)
    d = x_after - x_before
    parts = []
    for name in ("seasonality", "population shift", "model", *ann_names):
        c = np.zeros(k)
        c[spans[name]] = d[spans[name]]
        se = float(np.sqrt(max(c @ cov @ c, 0.0)))
        df_c = robust.df(c) if se > 0 else None
        parts.append(Estimate.from_se(name, float(c @ beta), se, confidence=confidence, df=df_c))
    nan = float("nan")
    parts.append(Estimate("unexplained", r_after - r_before, nan, nan, nan, nan))
    m = spans["model"].start
    unit = np.zeros(k)
    unit[m] = 1.0
    df_model = robust.df(unit)
    model_effect = Estimate.from_se(
        "model effect at full exposure",
        float(beta[m]),
        float(np.sqrt(cov[m, m])),
        confidence=confidence,
        df=df_model,
    )
    share = (float(x_before[m]), float(x_after[m]))
    if abs(share[1] - share[0]) < 0.05:
        warnings.append(
            f"the candidate's share barely moved between the windows ({share[0]:.0%} -> "
            f"{share[1]:.0%}): the model part is near zero by construction; read the model "
            "effect at full exposure instead"
        )
    counterfactual = _counterfactual(data, x, y, w, beta, cov, spans["model"], confidence, df_model)
    return Waterfall(
        metric=metric or f"{numerator}/{denominator}",
        candidate=candidate,
        baseline=baseline,
        before=before,
        after=after,
        observed_before=y_before,
        observed_after=y_after,
        parts=tuple(parts),
        model_effect=model_effect,
        candidate_share=share,
        counterfactual=counterfactual,
        n_cells=n,
        n_days=n_days,
        confidence=confidence,
        assumptions=(
            "the candidate shifts the rate by the same amount in every segment and hour",
            "segment differences are additive and stable over time (the mix moves, the "
            "within-segment rates do not, except through the modelled parts)",
            "seasonality is daily plus weekly (3 harmonics each, UTC) and stable",
            "an annotated change is a step from its start (until its end, if it has one)",
            "days are independent of each other; hours within a day may be correlated",
        ),
        warnings=tuple(warnings),
    )


class _ByDay:
    """Cluster-robust covariance by day, bias-reduced (CR2, Bell and McCaffrey 2002), with
    Satterthwaite degrees of freedom per contrast (Imbens and Kolesar 2016; Pustejovsky and
    Tipton 2018).

    Each day's residuals are inflated by ``(I - H_gg)^(-1/2)``, the inverse square root of what
    the fit leaves of that day; ``H_gg`` has rank at most the number of columns, so its
    eigen-decomposition comes from a columns x columns problem per day, never a cells x cells
    one. The degrees of freedom come from the same pieces.
    """

    def __init__(
        self, days: np.ndarray, x: np.ndarray, w: np.ndarray, resid: np.ndarray, gram: np.ndarray
    ) -> None:
        self.bread = np.linalg.pinv(gram)
        vals, vecs = np.linalg.eigh(self.bread)
        half = (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T
        order = np.argsort(days, kind="stable")
        _, starts = np.unique(days[order], return_index=True)
        meat = np.zeros_like(gram)
        self._days: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for lo, hi in itertools.pairwise([*starts, len(days)]):
            rows = order[lo:hi]
            xg, wg = x[rows], w[rows]
            gram_g = xg.T @ (xg * wg[:, None])
            score = xg.T @ (wg * resid[rows])
            lam, v = np.linalg.eigh(half @ gram_g @ half)
            keep = lam > 1e-10
            # A day that alone identifies a direction (a one-day holiday) has eigenvalue 1 there:
            # its residual carries no information about that direction, and is left as it is.
            lam = lam[keep]
            inflate = np.where(lam < 1 - 1e-9, 1 / np.sqrt(np.clip(1 - lam, 1e-18, None)) - 1, 0.0)
            r = half @ v[:, keep] / np.sqrt(lam)
            zq = gram_g @ r
            u = score + zq @ (inflate * (r.T @ score))
            meat += np.outer(u, u)
            self._days.append((gram_g, r, zq, inflate))
        self.cov = self.bread @ meat @ self.bread

    def df(self, c: np.ndarray) -> float:
        """Satterthwaite degrees of freedom of the contrast ``c @ beta`` (working model: the
        cells' weighted errors independent and equal in variance)."""
        a = self.bread @ c
        norms, cols = [], []
        for gram_g, r, zq, inflate in self._days:
            za = r.T @ (gram_g @ a)
            t = inflate * za
            norms.append(a @ gram_g @ a + 2 * za @ t + t @ t)
            cols.append(gram_g @ a + zq @ t)
        zp = np.column_stack(cols)
        m = np.diag(norms) - zp.T @ self.bread @ zp
        tr = float(np.trace(m))
        return tr * tr / float(np.sum(m * m)) if tr > 0 else float(len(self._days) - 1)


def _counterfactual(
    data: pl.DataFrame,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    beta: np.ndarray,
    cov: np.ndarray,
    model: slice,
    confidence: float,
    df_t: float,
) -> pl.DataFrame:
    """Per hour: what was observed, what the fit expects, and what it expects had the candidate
    never served, with a band for the latter (coefficient uncertainty plus the hourly noise)."""
    without = x.copy()
    without[:, model] = 0.0
    hours = data["hour"]
    k = x.shape[1]
    frame = pl.DataFrame({"hour": hours, "w": w, "wy": w * y, "wfit": w * (x @ beta)}).with_columns(
        [pl.Series(f"g{i}", w * without[:, i]) for i in range(k)]
    )
    per_hour = frame.group_by("hour").sum().sort("hour")
    total = per_hour["w"].to_numpy()
    g = per_hour.select([f"g{i}" for i in range(k)]).to_numpy() / total[:, None]
    observed = per_hour["wy"].to_numpy() / total
    expected = per_hour["wfit"].to_numpy() / total
    noise = float(np.var(observed - expected, ddof=k))
    band = float(stats.t(df_t).ppf(0.5 + confidence / 2)) * np.sqrt(
        np.einsum("ij,jk,ik->i", g, cov, g) + noise
    )
    without_model = g @ beta
    return pl.DataFrame(
        {
            "hour": per_hour["hour"],
            "observed": observed,
            "expected": expected,
            "expected_without_model": without_model,
            "lower": without_model - band,
            "upper": without_model + band,
        }
    )
