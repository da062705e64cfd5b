"""The metrics registry: what each product metric divides by what, and which way is good.

A metric is a ratio of two counts over a unit of analysis. The count names (``thumbs_down``,
``ratings``, ...) are the columns the warehouse's rollups and per-unit queries expose, so the
same definition serves a dashboard series, an A/B comparison and the release gate.
``docs/metrics.md`` is the human-readable form of this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

import polars as pl

from analysis.errors import AnalysisError, UnknownMetricError

__all__ = ["METRICS", "Direction", "Metric", "Unit", "get_metric", "metric_outcome"]


class Unit(StrEnum):
    """What one observation of the metric is; standard errors cluster above it, by user."""

    RESPONSE = "response"
    SESSION = "session"
    USER = "user"


class Direction(StrEnum):
    """Which way a change is an improvement."""

    LOWER_IS_BETTER = "lower"
    HIGHER_IS_BETTER = "higher"


@dataclass(frozen=True)
class Metric:
    """One product metric: ``numerator / denominator`` over ``unit``.

    ``owner`` answers for it at the release review; ``threshold`` is the relative change in the
    bad direction that fails the release gate (0.05: a 5% relative worsening).
    """

    name: str
    numerator: str
    denominator: str
    unit: Unit
    better: Direction
    owner: str
    threshold: float
    description: str

    def is_worse(self, relative_change: float) -> bool:
        """Whether a relative change (candidate / baseline - 1) goes the bad way."""
        if self.better is Direction.LOWER_IS_BETTER:
            return relative_change > 0
        return relative_change < 0


_ALL = (
    Metric(
        "thumbs_down_rate",
        "thumbs_down",
        "ratings",
        Unit.RESPONSE,
        Direction.LOWER_IS_BETTER,
        "product-quality",
        0.05,
        "Share of rated responses rated thumbs down. Only rated responses count: a change in "
        "who rates (a UI change) moves it without any change in quality.",
    ),
    Metric(
        "rating_rate",
        "ratings",
        "responses",
        Unit.RESPONSE,
        Direction.HIGHER_IS_BETTER,
        "product-analytics",
        0.10,
        "Share of responses that got a thumb at all: the base the thumbs-down rate stands on.",
    ),
    Metric(
        "retry_rate",
        "retries",
        "responses",
        Unit.RESPONSE,
        Direction.LOWER_IS_BETTER,
        "product-quality",
        0.05,
        "Retries (regenerate, rephrase, edit) per response: a dissatisfaction signal that does "
        "not depend on the user choosing to rate.",
    ),
    Metric(
        "refusal_rate",
        "refusals",
        "responses",
        Unit.RESPONSE,
        Direction.LOWER_IS_BETTER,
        "trust-and-safety",
        0.10,
        "Share of responses the refusal detector flagged.",
    ),
    Metric(
        "session_turns",
        "turns",
        "sessions",
        Unit.SESSION,
        Direction.HIGHER_IS_BETTER,
        "product-analytics",
        0.05,
        "Responses per ended session. Longer answers can move it either way: read it with the "
        "verbosity check, not alone.",
    ),
    Metric(
        "session_seconds",
        "seconds",
        "sessions",
        Unit.SESSION,
        Direction.HIGHER_IS_BETTER,
        "product-analytics",
        0.05,
        "Seconds per ended session. Slower or more verbose answers lengthen sessions without "
        "making them better: read it with the verbosity check.",
    ),
    Metric(
        "task_completion_rate",
        "completed",
        "completion_known",
        Unit.SESSION,
        Direction.HIGHER_IS_BETTER,
        "product-quality",
        0.03,
        "Share of ended sessions whose task was completed, among those where the product knows.",
    ),
    Metric(
        "retention_d7",
        "retained_d7",
        "new_users",
        Unit.USER,
        Direction.HIGHER_IS_BETTER,
        "growth",
        0.03,
        "Share of users first seen on a day who come back 7 days later, by the model version "
        "they were first exposed to. Feedback metrics computed only on returning users suffer "
        "survivorship: see the retention method.",
    ),
)

METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _ALL})
"""Every registered metric, by name."""


def get_metric(name: str) -> Metric:
    """The metric called ``name``; the error lists the known names."""
    try:
        return METRICS[name]
    except KeyError:
        raise UnknownMetricError(
            f"unknown metric {name!r}: choose from {', '.join(sorted(METRICS))}"
        ) from None


# The per-unit columns behind each count: the warehouse's ``response_outcomes`` and
# ``session_outcomes`` frames.
_UNIT_COLUMNS = {
    Unit.RESPONSE: {
        "ratings": "ratings",
        "thumbs_down": "thumbs_down",
        "retries": "retries",
        "refusals": "refused",
        "responses": None,
    },
    Unit.SESSION: {
        "turns": "turns",
        "seconds": "seconds",
        "completed": "completed",
        "completion_known": "known",
        "sessions": None,
    },
}


def metric_outcome(metric: Metric, units: pl.DataFrame) -> pl.DataFrame:
    """``units`` (one row per response, or per session) with an ``outcome`` column whose mean
    over the returned rows is the metric: the numerator per unit, over the units that count in
    the denominator (for ``thumbs_down_rate``, the rated responses)."""
    columns = _UNIT_COLUMNS.get(metric.unit, {})
    if metric.numerator not in columns or metric.denominator not in columns:
        raise AnalysisError(
            f"{metric.name} is measured per {metric.unit.value}; unit-level attribution covers "
            f"the response and session metrics: {', '.join(_unit_metrics())}"
        )
    num = pl.col(columns[metric.numerator]).cast(pl.Float64)  # type: ignore[arg-type]
    den_col = columns[metric.denominator]
    if den_col is None:
        return units.with_columns(num.alias("outcome"))
    den = pl.col(den_col).cast(pl.Float64)
    return units.filter(den > 0).with_columns((num / den).alias("outcome"))


def _unit_metrics() -> list[str]:
    return [
        m.name
        for m in METRICS.values()
        if {m.numerator, m.denominator} <= set(_UNIT_COLUMNS.get(m.unit, {}))
    ]
