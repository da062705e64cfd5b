"""Switchover: one model version replaces another for everyone at once, so there is no concurrent
control; the effect is a level shift in the metric's time series at the switch, net of
seasonality, annotated product changes and population mix (an interrupted time series).

Two models, both fitted by maximum likelihood in statsmodels' state-space framework:

- ``"regression"``: ``y_t = c + delta * step_t + seasonal Fourier terms + exog + pulses + e_t``
  (SARIMAX with exogenous regressors; ``ar=True`` adds AR(1) errors);
- ``"local_level"``: a random-walk level plus noise (``UnobservedComponents``) with the same
  regressors: the counterfactual drifts as the series did before the switch.

Maximum likelihood on these surfaces is flat enough that one optimizer can stop early (on the
Nile data statsmodels' default lands 0.3 away in the intercept), so every fit starts from least
squares where it can, runs several optimizers and keeps the best likelihood; disagreement
between them becomes a warning on the result.
"""

from __future__ import annotations

import warnings as pywarnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl
import statsmodels.api as sm
from scipy import stats

from analysis.errors import InsufficientDataError
from analysis.results import Estimate, find_estimate, render_summary, require_columns

__all__ = ["SwitchoverEffect", "estimate_switchover"]

_OPTIMIZERS = ("lbfgs", "bfgs", "nm")


@dataclass(frozen=True)
class SwitchoverEffect:
    """The level shift at a switchover, the fitted terms, and the counterfactual band."""

    metric: str
    model: str
    switch_at: Any
    effect: Estimate | None
    terms: tuple[Estimate, ...]
    variances: dict[str, float]
    counterfactual: pl.DataFrame
    loglik: float
    optimizer: str
    converged: bool
    confidence: float
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    def term(self, name: str) -> Estimate:
        """The fitted term called ``name`` (``const``, ``shift``, an exog column, ``pulse:T``)."""
        return find_estimate(self.terms, name)

    def to_frame(self) -> pl.DataFrame:
        """One row per fitted term."""
        return pl.DataFrame([e.__dict__ for e in self.terms])

    def summary(self, fmt: str = "text") -> str:
        """The fit as ``text``, ``markdown`` or ``html``."""
        variances = ", ".join(f"{k} {v:.5g}" for k, v in self.variances.items())
        header = (
            f"{self.metric}: {self.model} model, switch at {self.switch_at}; "
            f"{self.confidence:.0%} intervals; variances: {variances}; "
            f"log-likelihood {self.loglik:.4f} ({self.optimizer})"
        )
        return render_summary(header, self.terms, self.assumptions, self.warnings, fmt)


def _fourier(t: np.ndarray, period: int, harmonics: int) -> tuple[np.ndarray, list[str]]:
    cols, names = [], []
    for k in range(1, harmonics + 1):
        angle = 2 * np.pi * k * t / period
        cols += [np.sin(angle), np.cos(angle)]
        names += [f"sin{period}_{k}", f"cos{period}_{k}"]
    return np.column_stack(cols), names


def _best_fit(model: Any, start: np.ndarray | None) -> tuple[Any, str, list[float]]:
    """Fit with several optimizers; return the best result, its optimizer and every loglik."""
    fits = []
    for method in _OPTIMIZERS:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")  # convergence is judged below, across optimizers
            try:
                res = model.fit(
                    start_params=start, method=method, maxiter=5000, disp=False, cov_type="oim"
                )
            except (np.linalg.LinAlgError, ValueError):
                continue
        if np.isfinite(res.llf):
            fits.append((res.llf, method, res))
    if not fits:
        raise InsufficientDataError("no optimizer could fit the model to this series")
    fits.sort(key=lambda f: f[0], reverse=True)
    _, method, best = fits[0]
    return best, method, [f[0] for f in fits]


def estimate_switchover(
    frame: pl.DataFrame,
    *,
    time: str,
    value: str,
    switch_at: Any | None,
    model: Literal["regression", "local_level"] = "regression",
    seasonal_periods: Sequence[int] = (),
    harmonics: int = 3,
    exog: Sequence[str] = (),
    outliers: Sequence[Any] = (),
    ar: bool = False,
    confidence: float = 0.95,
    metric: str = "",
) -> SwitchoverEffect:
    """Estimate the level shift of ``value`` at ``switch_at`` (``None``: fit without a switch,
    for a baseline or a reference check).

    ``frame`` is one row per period, sorted by ``time``. ``seasonal_periods`` are in rows (24
    and 168 for hourly data); ``exog`` names columns of ``frame`` (population mix shares,
    annotation dummies); ``outliers`` are ``time`` values that get a one-period pulse.
    """
    require_columns(frame, [time, value, *exog])
    data = frame.sort(time)
    y = data[value].to_numpy().astype(float)
    times = data[time].to_list()
    t = np.arange(len(y))
    cols: list[np.ndarray] = []
    names: list[str] = []
    if switch_at is not None:
        step = np.array([x >= switch_at for x in times], dtype=float)
        before = int((step == 0).sum())
        if before < 3 or step.sum() < 1:
            raise InsufficientDataError(
                f"{before} periods before the switch and {int(step.sum())} after: need at "
                "least 3 before and 1 after"
            )
        cols.append(step)
        names.append("shift")
    for x in outliers:
        cols.append(np.array([v == x for v in times], dtype=float))
        names.append(f"pulse:{x}")
    for period in seasonal_periods:
        f, n = _fourier(t, period, harmonics)
        cols.extend(f.T)
        names.extend(n)
    for c in exog:
        cols.append(data[c].to_numpy().astype(float))
        names.append(c)
    x = np.column_stack(cols) if cols else None

    warnings: list[str] = []
    if model == "regression":
        ols = sm.OLS(
            y, np.column_stack([np.ones(len(y)), x]) if x is not None else np.ones(len(y))
        ).fit()
        start = np.r_[ols.params, [0.0] if ar else [], ols.ssr / len(y)]
        ssm = sm.tsa.SARIMAX(y, exog=x, order=(1 if ar else 0, 0, 0), trend="c")
        fit, optimizer, lls = _best_fit(ssm, start)
        param_names = ["const", *names, *(["ar.L1"] if ar else []), "sigma2"]
        variances = {"noise": float(fit.params[-1])}
        coef_count = 1 + len(names)
    else:
        ssm = sm.tsa.UnobservedComponents(y, level="llevel", exog=x)
        fit, optimizer, lls = _best_fit(ssm, None)
        param_names = ["sigma2.irregular", "sigma2.level", *names]
        variances = {"irregular": float(fit.params[0]), "level": float(fit.params[1])}
        coef_count = 0
    if len(lls) > 1 and abs(lls[0] - lls[1]) > 1e-3 * max(1.0, abs(lls[0])):
        warnings.append(
            f"optimizers disagree (log-likelihoods {', '.join(f'{v:.3f}' for v in lls)}): the "
            "surface is flat or multimodal; the best fit is reported"
        )
    converged = bool(fit.mle_retvals.get("converged", True)) if fit.mle_retvals else True
    if not converged:
        warnings.append(f"the best optimizer ({optimizer}) did not report convergence")

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    params, bse = np.asarray(fit.params), np.asarray(fit.bse)
    regressors = (
        list(enumerate(param_names[:coef_count]))
        if model == "regression"
        else [(2 + i, n) for i, n in enumerate(names)]
    )
    terms = tuple(
        Estimate.from_se(name, float(params[i]), float(bse[i]), confidence=confidence)
        for i, name in regressors
    )
    effect = next((e for e in terms if e.term == "shift"), None)

    fitted = (
        np.asarray(fit.fittedvalues)
        if model == "regression"
        else np.asarray(fit.smoothed_state[0] + (x @ params[2:] if x is not None else 0))
    )
    shift = (effect.value if effect else 0.0) * (cols[0] if effect else np.zeros(len(y)))
    expected = fitted - shift
    sd = np.sqrt(variances.get("noise", variances.get("irregular", 0.0)))
    counterfactual = pl.DataFrame(
        {
            time: times,
            "observed": y,
            "expected_without_switch": expected,
            "lower": expected - z * sd,
            "upper": expected + z * sd,
        }
    )
    return SwitchoverEffect(
        metric=metric or value,
        model=model,
        switch_at=switch_at,
        effect=effect,
        terms=terms,
        variances=variances,
        counterfactual=counterfactual,
        loglik=float(fit.llf),
        optimizer=optimizer,
        converged=converged,
        confidence=confidence,
        assumptions=(
            "the switch moves the level once and for all (no ramp, no decay)",
            "nothing else happened at the switch beyond the modelled regressors",
            "seasonality is stable (Fourier terms of the given periods)"
            if seasonal_periods
            else "no seasonality is modelled",
        ),
        warnings=tuple(warnings),
    )
