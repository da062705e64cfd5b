"""Least squares with standard errors clustered by unit, for a regression an analyst writes
down directly (outcomes on model version plus covariates, clustered by user).

Cluster-robust covariance as Stata's ``vce(cluster ...)`` computes it (CR1): the small-sample
factor G/(G-1) * (N-1)/(N-K), and t inference on G-1 degrees of freedom, so results match
Stata's. The concurrent comparison has its own estimator (absorbed fixed effects, CR2 and
Satterthwaite degrees of freedom: :mod:`analysis.concurrent`), because its many small hour
cells and heavy users are where CR1 on G-1 runs small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import statsmodels.api as sm

from analysis.errors import InsufficientDataError
from analysis.results import Estimate, complete_rows, find_estimate, render_summary

__all__ = ["RegressionResult", "fit_clustered_ols"]

_MIN_CLUSTERS = 5


@dataclass(frozen=True)
class RegressionResult:
    """Estimates of a clustered least-squares fit, with what they assume and what to doubt."""

    estimates: tuple[Estimate, ...]
    outcome: str
    cluster: str
    n_obs: int
    n_clusters: int
    df: int
    confidence: float
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...]

    def estimate(self, term: str) -> Estimate:
        """The estimate for ``term``."""
        return find_estimate(self.estimates, term)

    def to_frame(self) -> pl.DataFrame:
        """One row per term: value, se, confidence bounds, p-value."""
        return pl.DataFrame([e.__dict__ for e in self.estimates])

    def summary(self, fmt: str = "text") -> str:
        """The estimates, assumptions and warnings as ``text``, ``markdown`` or ``html``."""
        header = (
            f"{self.outcome}: least squares, {self.n_obs} observations in {self.n_clusters} "
            f"clusters of {self.cluster}; {self.confidence:.0%} intervals, t({self.df})"
        )
        return render_summary(header, self.estimates, self.assumptions, self.warnings, fmt)


def fit_clustered_ols(
    frame: pl.DataFrame,
    *,
    outcome: str,
    regressors: Sequence[str],
    cluster: str,
    intercept: bool = True,
    confidence: float = 0.95,
) -> RegressionResult:
    """Regress ``outcome`` on ``regressors`` with standard errors clustered by ``cluster``.

    Rows with a missing value in any used column are dropped (and counted in the warnings).
    """
    clean = complete_rows(frame, [outcome, *regressors, cluster])
    warnings = []
    if clean.height < frame.height:
        warnings.append(f"{frame.height - clean.height} rows with missing values were dropped")
    groups = clean[cluster].to_numpy()
    n_clusters = len(np.unique(groups))
    if n_clusters < _MIN_CLUSTERS:
        raise InsufficientDataError(
            f"{n_clusters} clusters of {cluster}: at least {_MIN_CLUSTERS} are needed for "
            "clustered standard errors to mean anything"
        )
    if n_clusters < 30:
        warnings.append(
            f"only {n_clusters} clusters: clustered standard errors are imprecise below ~30"
        )
    exog = clean.select(regressors).to_numpy().astype(float)
    names = list(regressors)
    if intercept:
        exog = np.column_stack([exog, np.ones(len(exog))])
        names.append("const")
    y = clean[outcome].to_numpy().astype(float)
    fit = sm.OLS(y, exog).fit(
        cov_type="cluster",
        cov_kwds={"groups": groups, "use_correction": True, "df_correction": True},
        use_t=True,
    )
    alpha = 1 - confidence
    ci = fit.conf_int(alpha=alpha)
    estimates = tuple(
        Estimate(name, float(b), float(se), float(lo), float(hi), float(p))
        for name, b, se, (lo, hi), p in zip(
            names, fit.params, fit.bse, ci, fit.pvalues, strict=True
        )
    )
    return RegressionResult(
        estimates=estimates,
        outcome=outcome,
        cluster=cluster,
        n_obs=clean.height,
        n_clusters=n_clusters,
        df=n_clusters - 1,
        confidence=confidence,
        assumptions=(
            "the outcome is linear in the regressors",
            f"observations are independent across {cluster}, dependent within it in any way",
        ),
        warnings=tuple(warnings),
    )
