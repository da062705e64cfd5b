"""Population-shift decomposition: did a metric move because the mix of users changed, or
because the rate changed within each kind of user?

Kitagawa's (1955) symmetric decomposition of the change in a ratio metric between two windows,
over segments s with weights w (share of the denominator) and rates r:

    R_after - R_before = sum_s (w_after - w_before) * (r_before + r_after) / 2    composition
                       + sum_s (r_after - r_before) * (w_before + w_after) / 2    rate

The two parts add up to the observed change exactly. Uncertainty comes from a bootstrap that
resamples whole clusters (users) within each window, so one heavy user cannot pass for many.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from analysis.errors import InsufficientDataError
from analysis.results import Estimate, complete_rows, render_summary

__all__ = ["PopulationShift", "decompose_population_shift"]


@dataclass(frozen=True)
class PopulationShift:
    """The change of a ratio metric split into composition (mix) and within-segment rate parts."""

    metric: str
    segments: tuple[str, ...]
    before: float
    after: float
    total: Estimate
    composition: Estimate
    rate: Estimate
    by_segment: pl.DataFrame
    confidence: float
    n_boot: int
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...]

    def to_frame(self) -> pl.DataFrame:
        """One row per part (total, composition, rate) with value, se and interval."""
        return pl.DataFrame([e.__dict__ for e in (self.total, self.composition, self.rate)])

    def summary(self, fmt: str = "text") -> str:
        """The decomposition as ``text``, ``markdown`` or ``html``."""
        header = (
            f"{self.metric}: {self.before:.4g} -> {self.after:.4g}, split over "
            f"{' x '.join(self.segments)}; {self.confidence:.0%} cluster-bootstrap intervals "
            f"({self.n_boot} resamples)"
        )
        return render_summary(
            header,
            (self.total, self.composition, self.rate),
            self.assumptions,
            self.warnings,
            fmt,
        )


def _parts(
    num: np.ndarray, den: np.ndarray, seg: np.ndarray, after: np.ndarray, k: int
) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    """Composition and rate parts, and per-segment contributions, from unit-level arrays."""
    n = np.zeros((2, k))
    d = np.zeros((2, k))
    np.add.at(n, (after, seg), num)
    np.add.at(d, (after, seg), den)
    totals = d.sum(axis=1, keepdims=True)
    w = d / totals
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(d > 0, n / d, np.nan)
    # A segment present in one window only: its rate there stands in for both, so its whole
    # effect counts as composition (it has no within-segment change to measure).
    r_before = np.where(np.isnan(r[0]), r[1], r[0])
    r_after = np.where(np.isnan(r[1]), r[0], r[1])
    comp = (w[1] - w[0]) * (r_before + r_after) / 2
    rate = (r_after - r_before) * (w[0] + w[1]) / 2
    return np.nansum(comp), np.nansum(rate), comp, rate, n.sum(axis=1) / totals[:, 0]


def decompose_population_shift(
    frame: pl.DataFrame,
    *,
    window: str,
    segments: Sequence[str],
    numerator: str,
    denominator: str,
    cluster: str,
    metric: str = "",
    n_boot: int = 400,
    confidence: float = 0.95,
    seed: int = 0,
) -> PopulationShift:
    """Split the change of ``sum(numerator) / sum(denominator)`` between the two values of
    ``window`` (false/0 = before, true/1 = after) into composition and rate parts over
    ``segments``. Rows are units (or unit-segment aggregates) belonging to ``cluster``.
    """
    data = complete_rows(frame, [window, *segments, numerator, denominator, cluster])
    after = data[window].cast(pl.Int8).to_numpy().astype(np.intp)
    if set(np.unique(after)) != {0, 1}:
        raise InsufficientDataError(f"{window} must have both a before (0) and an after (1) value")
    seg_codes = data.select(
        pl.concat_str([pl.col(s).cast(pl.String) for s in segments], separator=" / ")
    )
    labels, seg = np.unique(seg_codes.to_series().to_numpy(), return_inverse=True)
    num = data[numerator].to_numpy().astype(float)
    den = data[denominator].to_numpy().astype(float)
    k = len(labels)
    comp, rate, comp_s, rate_s, levels = _parts(num, den, seg, after, k)

    # Cluster bootstrap within each window: draw clusters with replacement, keep all their rows.
    rng = np.random.default_rng(seed)
    clusters = data[cluster].cast(pl.String).to_numpy()
    draws = np.empty((n_boot, 2))
    index_by_window = []
    for w in (0, 1):
        rows = np.flatnonzero(after == w)
        ids, inverse = np.unique(clusters[rows], return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[order], np.arange(len(ids)))
        ends = np.append(starts[1:], len(order))
        index_by_window.append((rows[order], starts, ends, len(ids)))
    for b in range(n_boot):
        picked = []
        for rows, starts, ends, n_ids in index_by_window:
            chosen = rng.integers(0, n_ids, n_ids)
            picked.append(np.concatenate([rows[starts[c] : ends[c]] for c in chosen]))
        idx = np.concatenate(picked)
        c, r, *_ = _parts(num[idx], den[idx], seg[idx], after[idx], k)
        draws[b] = (c, r)

    alpha = 1 - confidence

    def estimate(term: str, value: float, samples: np.ndarray) -> Estimate:
        lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
        share = min((samples <= 0).mean(), (samples >= 0).mean())
        return Estimate(term, float(value), float(samples.std(ddof=1)), float(lo), float(hi),
                        float(min(1.0, 2 * share)))  # fmt: skip

    n_clusters = min(entry[3] for entry in index_by_window)
    warnings = []
    if n_clusters < 50:
        warnings.append(f"only {n_clusters} clusters in a window: bootstrap intervals are rough")
    present = [np.bincount(seg[after == w], minlength=k) > 0 for w in (0, 1)]
    one_sided = int((present[0] != present[1]).sum())
    if one_sided:
        warnings.append(
            f"{one_sided} segments appear in one window only; their effect is all composition"
        )
    by_segment = pl.DataFrame(
        {"segment": labels, "composition": comp_s, "rate": np.nan_to_num(rate_s)}
    )
    return PopulationShift(
        metric=metric or f"{numerator}/{denominator}",
        segments=tuple(segments),
        before=float(levels[0]),
        after=float(levels[1]),
        total=estimate("total change", comp + rate, draws.sum(axis=1)),
        composition=estimate("composition (mix)", comp, draws[:, 0]),
        rate=estimate("within-segment rate", rate, draws[:, 1]),
        by_segment=by_segment,
        confidence=confidence,
        n_boot=n_boot,
        assumptions=(
            "the segments capture the mix change that matters; a shift inside a segment "
            "shows up as rate",
            f"{cluster}s are independent of one another",
        ),
        warnings=tuple(warnings),
    )
