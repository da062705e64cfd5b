"""Covariate-level population shift: Oaxaca-Blinder decomposition of a mean difference between
two windows into what the covariates explain (who the users are) and what they do not (how the
same kind of user now behaves), on statsmodels' ``OaxacaBlinder``.

Sign convention, everywhere in Telltale: **after minus before**. The three-fold split is
``gap = endowments + coefficients + interaction``, with the before window as reference; the
two-fold (pooled, Neumark) split is ``gap = explained + unexplained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from statsmodels.stats.oaxaca import OaxacaBlinder

from analysis.errors import InsufficientDataError
from analysis.results import Estimate, complete_rows, render_summary

__all__ = ["CovariateShift", "decompose_covariate_shift"]


@dataclass(frozen=True)
class CovariateShift:
    """A mean difference split by Oaxaca-Blinder, with bootstrap standard errors."""

    outcome: str
    covariates: tuple[str, ...]
    before: float
    after: float
    gap: Estimate
    endowments: Estimate
    coefficients: Estimate
    interaction: Estimate
    explained: Estimate
    unexplained: Estimate
    n_before: int
    n_after: int
    n_boot: int
    confidence: float
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def parts(self) -> tuple[Estimate, ...]:
        """Every estimate, the gap first."""
        return (
            self.gap,
            self.endowments,
            self.coefficients,
            self.interaction,
            self.explained,
            self.unexplained,
        )

    def to_frame(self) -> pl.DataFrame:
        """One row per part, with value, se and interval."""
        return pl.DataFrame([e.__dict__ for e in self.parts])

    def summary(self, fmt: str = "text") -> str:
        """The decomposition as ``text``, ``markdown`` or ``html``."""
        header = (
            f"{self.outcome}: {self.before:.4g} -> {self.after:.4g} (n {self.n_before} / "
            f"{self.n_after}), Oaxaca-Blinder on {', '.join(self.covariates)}; "
            f"{self.confidence:.0%} intervals from {self.n_boot} bootstrap resamples"
        )
        return render_summary(header, self.parts, self.assumptions, self.warnings, fmt)


def decompose_covariate_shift(
    frame: pl.DataFrame,
    *,
    outcome: str,
    covariates: Sequence[str],
    window: str,
    n_boot: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> CovariateShift:
    """Split ``mean(outcome | after) - mean(outcome | before)`` over ``covariates``; ``window``
    is false/0 for before and true/1 for after."""
    data = complete_rows(frame, [outcome, *covariates, window])
    after = data[window].cast(pl.Int8).to_numpy()
    n_after, n_before = int((after == 1).sum()), int((after == 0).sum())
    if min(n_after, n_before) <= len(covariates) + 1:
        raise InsufficientDataError(
            f"{n_before} rows before and {n_after} after: too few to fit {len(covariates)} "
            "covariates in each window"
        )
    # statsmodels subtracts its second group from its first when swap=False, and takes the
    # first as reference for the three-fold split: code after as 0, before as 1.
    group = (after == 0).astype(float)
    exog = np.column_stack(
        [data.select(covariates).to_numpy().astype(float), group, np.ones(len(group))]
    )
    y = data[outcome].to_numpy().astype(float)
    model = OaxacaBlinder(
        y, exog, len(covariates), hasconst=True, swap=False, rng=np.random.default_rng(seed)
    )
    three = model.three_fold(std=True, n=n_boot)
    two = model.two_fold(std=True, two_fold_type="pooled", n=n_boot)

    def estimate(term: str, value: float, se: float) -> Estimate:
        return Estimate.from_se(term, float(value), float(se), confidence=confidence)

    endow, coef, inter, gap = three.params
    endow_se, coef_se, inter_se = three.std
    unexplained, explained, _ = two.params
    unexplained_se, explained_se = two.std[:2]
    gap_se = float(
        np.sqrt(y[after == 1].var(ddof=1) / n_after + y[after == 0].var(ddof=1) / n_before)
    )
    warnings = []
    if min(n_after, n_before) < 100:
        warnings.append("fewer than 100 rows in a window: the decomposition is imprecise")
    return CovariateShift(
        outcome=outcome,
        covariates=tuple(covariates),
        before=float(y[after == 0].mean()),
        after=float(y[after == 1].mean()),
        gap=estimate("gap (after - before)", gap, gap_se),
        endowments=estimate("endowments (who the users are)", endow, endow_se),
        coefficients=estimate("coefficients (how they behave)", coef, coef_se),
        interaction=estimate("interaction", inter, inter_se),
        explained=estimate("explained (pooled)", explained, explained_se),
        unexplained=estimate("unexplained (pooled)", unexplained, unexplained_se),
        n_before=n_before,
        n_after=n_after,
        n_boot=n_boot,
        confidence=confidence,
        assumptions=(
            "the outcome is linear in the covariates within each window",
            "rows are independent (resample users, not responses, if a user has many)",
        ),
        warnings=tuple(warnings),
    )
