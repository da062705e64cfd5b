"""Verbosity check: is a change in session length carried by longer answers?

A more verbose model makes sessions longer (more reading, more scrolling) without making them
better. Comparing the version's effect on a session metric with and without the session's mean
response length as a covariate separates the part that goes through length (mediated) from
the rest (direct). Length is itself moved by the version, so this is a mediation analysis: it
assumes nothing else that the version changes drives both length and the outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from analysis.concurrent import absorb_and_fit, cell_keys, fixed_effects
from analysis.results import Estimate, complete_rows, render_summary

__all__ = ["VerbosityCheck", "check_verbosity"]


@dataclass(frozen=True)
class VerbosityCheck:
    """The version's total and direct (length held fixed) effects, and the share via length."""

    metric: str
    mediator: str
    total: Estimate
    direct: Estimate
    on_mediator: Estimate
    mediated_share: float
    confidence: float
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def carried_by_length(self) -> bool:
        """Whether most of a real total effect goes through response length."""
        significant = self.total.ci_low > 0 or self.total.ci_high < 0
        return significant and self.mediated_share > 0.5

    def to_frame(self) -> pl.DataFrame:
        """Total, direct and on-mediator effects as rows."""
        return pl.DataFrame([e.__dict__ for e in (self.total, self.direct, self.on_mediator)])

    def summary(self, fmt: str = "text") -> str:
        """The check as ``text``, ``markdown`` or ``html``."""
        verdict = (
            "mostly carried by response length: a more verbose model, not a more engaging one"
            if self.carried_by_length
            else "not mostly carried by response length"
        )
        header = (
            f"verbosity check on {self.metric}: {self.mediated_share:.0%} of the effect goes "
            f"through {self.mediator}; {verdict}"
        )
        return render_summary(
            header, (self.total, self.direct, self.on_mediator), self.assumptions,
            self.warnings, fmt,
        )  # fmt: skip


def check_verbosity(
    frame: pl.DataFrame,
    *,
    outcome: str,
    treated: str,
    user: str,
    mediator: str = "mean_completion_tokens",
    period: str | None = "hour",
    segments: Sequence[str] = (),
    metric: str = "",
    confidence: float = 0.95,
) -> VerbosityCheck:
    """Effect of ``treated`` on ``outcome`` with and without ``mediator`` held fixed."""
    data = complete_rows(
        frame,
        [outcome, treated, user, mediator, *segments, *([period] if period else [])],
    )
    y = data[outcome].cast(pl.Float64).to_numpy()
    d = data[treated].cast(pl.Float64).to_numpy()
    m = data[mediator].cast(pl.Float64).to_numpy()
    users = cell_keys(data, user)
    effects = fixed_effects(data, period, segments)

    def effect(term: str, target: np.ndarray, x: np.ndarray) -> Estimate:
        fit = absorb_and_fit(target, x, effects, users)
        se = float(np.sqrt(fit.cov[0, 0]))
        return Estimate.from_se(term, float(fit.beta[0]), se, confidence=confidence, df=fit.df)

    total = effect("total effect", y, d[:, None])
    direct = effect(f"direct effect ({mediator} held fixed)", y, np.column_stack([d, m]))
    on_mediator = effect(f"effect on {mediator}", m, d[:, None])
    share = 1 - direct.value / total.value if total.value else float("nan")
    warnings = []
    if not (total.ci_low > 0 or total.ci_high < 0):
        warnings.append("the total effect is not distinguishable from zero: the share is noise")
    return VerbosityCheck(
        metric=metric or outcome,
        mediator=mediator,
        total=total,
        direct=direct,
        on_mediator=on_mediator,
        mediated_share=float(share),
        confidence=confidence,
        assumptions=(
            "users were assigned to versions at random",
            f"nothing else the version changes drives both {mediator} and the outcome",
            f"the outcome moves linearly with {mediator}",
        ),
        warnings=tuple(warnings),
    )
