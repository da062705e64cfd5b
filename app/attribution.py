"""From a question about a metric to an attribution: read what the design needs from the
warehouse, run the method, and hand back one report for the CLI, the app and the weekly review.

Designs:

- ``concurrent``: both versions serve at once (a staged rollout, an A/B): responses or sessions
  compared within calendar-hour cells, clustered by user (``analysis.compare_concurrent``);
- ``switchover``: the waterfall across a boundary (a full switch, or any date): the week before
  vs the week after, split into seasonality, population shift, the model, annotated changes and
  the unexplained rest, from the hourly rollups (``analysis.decompose_change``);
- ``population``: the same two windows, split into segment mix and within-segment rates
  (``analysis.decompose_population_shift``, days as the bootstrap clusters);
- ``retention``: 7-day retention by first-exposed version with late entry handled
  (``analysis.compare_retention``); chosen for ``retention_d7`` whatever the design.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

import analysis
import warehouse

__all__ = ["DESIGNS", "Attribution", "SegmentAttributions", "attribute", "attribute_segments"]

Design = Literal["concurrent", "switchover", "population", "retention"]
DESIGNS: tuple[str, ...] = ("concurrent", "switchover", "population", "retention")
SEGMENTS = ("cohort", "locale", "platform", "intent")
_CHURN_DAYS = 7


@dataclass(frozen=True)
class Attribution:
    """What ``attribute`` found: the method's result, and the verbosity check where it applies."""

    metric: str
    design: str
    result: Any
    verbosity: analysis.VerbosityCheck | None = None

    def summary(self, fmt: str = "text") -> str:
        """The result (and the verbosity check) as ``text``, ``markdown`` or ``html``."""
        parts = [self.result.summary(fmt)]
        if self.verbosity is not None:
            parts.append(self.verbosity.summary(fmt))
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready builtins: estimates, intervals, assumptions and warnings."""
        r = self.result
        if isinstance(r, analysis.ConcurrentComparison):
            report = r.to_dict()
        else:
            report = {
                "metric": self.metric,
                "estimates": r.to_frame().to_dicts(),
                "assumptions": list(r.assumptions),
                "warnings": list(r.warnings),
            }
        report["design"] = self.design
        if isinstance(r, analysis.Waterfall):
            report["observed"] = {
                "before": r.observed_before,
                "after": r.observed_after,
                "change": r.observed_change,
            }
            report["candidate_share"] = list(r.candidate_share)
            report["counterfactual"] = r.counterfactual.with_columns(
                pl.col("hour").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            ).to_dicts()
        if self.verbosity is not None:
            report["verbosity"] = {
                "mediated_share": self.verbosity.mediated_share,
                "carried_by_length": self.verbosity.carried_by_length,
                "effects": self.verbosity.to_frame().to_dicts(),
            }
        return report


def attribute(
    wh: warehouse.Warehouse,
    *,
    metric: str,
    candidate: str,
    baseline: str,
    since: dt.datetime,
    until: dt.datetime,
    design: Design = "concurrent",
    at: dt.datetime | None = None,
    window_days: int = 7,
    segments: Sequence[str] = (),
    expected_share: float | None = None,
) -> Attribution:
    """Attribute ``metric``'s difference between ``candidate`` and ``baseline`` over
    ``[since, until)`` with ``design``; ``at`` is the boundary of the before/after windows of the
    switchover and population designs (``window_days`` each side)."""
    m = analysis.get_metric(metric)
    bad = [s for s in segments if s not in SEGMENTS]
    if bad:
        raise analysis.AnalysisError(f"unknown segment {bad}: choose from {', '.join(SEGMENTS)}")
    versions = [candidate, baseline]
    if m.unit is analysis.Unit.USER or design == "retention":
        return Attribution(m.name, "retention", _retention(wh, candidate, versions, since, until))
    if design == "concurrent":
        return _concurrent(wh, m, candidate, versions, since, until, segments, expected_share)
    if design not in DESIGNS:
        raise analysis.AnalysisError(f"unknown design {design!r}: choose from {DESIGNS}")
    if at is None:
        raise analysis.AnalysisError(
            f"the {design} design compares the days before and after a boundary: give --at "
            "(the switch date, say)"
        )
    span = dt.timedelta(days=window_days)
    before, after = (at - span, at), (at, at + span)
    if before[0] < since or after[1] > until:
        raise analysis.AnalysisError(
            f"the windows {before[0]:%Y-%m-%d}..{after[1]:%Y-%m-%d} must lie within --since "
            f"{since:%Y-%m-%d} and --until {until:%Y-%m-%d}; widen them or shorten --window-days"
        )
    dims = [s for s in (segments or SEGMENTS) if s != "intent" or m.unit is analysis.Unit.RESPONSE]
    cells = _cells(wh, m, before[0], after[1], versions, dims)
    if design == "switchover":
        result = analysis.decompose_change(
            cells,
            numerator=m.numerator,
            denominator=m.denominator,
            candidate=candidate,
            baseline=baseline,
            before=before,
            after=after,
            segments=dims,
            annotations=warehouse.annotations(wh, since=before[0], until=after[1]),
            metric=m.name,
        )
        return Attribution(m.name, design, result)
    result = analysis.decompose_population_shift(
        cells.with_columns(
            (pl.col("hour") >= at.replace(tzinfo=dt.UTC)).alias("after"),
            pl.col("hour").dt.date().alias("day"),
        ),
        window="after",
        segments=dims,
        numerator=m.numerator,
        denominator=m.denominator,
        cluster="day",
        metric=m.name,
    )
    return Attribution(m.name, design, result)


@dataclass(frozen=True)
class SegmentAttributions:
    """The switchover attribution of many metrics in many segments, and where the time went."""

    candidate: str
    baseline: str
    at: dt.datetime
    results: tuple[tuple[str, str, str, Any], ...]
    """(metric, segment column, segment value, result): a Waterfall, a RetentionComparison, or
    the reason the pair could not be attributed (a string)."""
    warehouse_seconds: float
    analysis_seconds: float

    def to_frame(self) -> pl.DataFrame:
        """One row per metric and segment: the model's effect with its interval, the observed
        change, and the population part where there is one (null where none is defined)."""
        rows = []
        for metric, column, value, r in self.results:
            row: dict[str, Any] = {"metric": metric, "segment": column, "value": value}
            if isinstance(r, analysis.Waterfall):
                e = r.model_effect
                row |= {"effect": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high,
                        "p_value": e.p_value, "observed_change": r.observed_change,
                        "population_shift": r.part("population shift").value}  # fmt: skip
            elif isinstance(r, analysis.RetentionComparison):
                e = r.hazard_ratio
                row |= {"effect": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high,
                        "p_value": e.p_value}  # fmt: skip
            else:
                row["note"] = str(r)
            rows.append(row)
        return pl.DataFrame(rows, infer_schema_length=None)


def attribute_segments(
    wh: warehouse.Warehouse,
    *,
    metrics: Sequence[str],
    candidate: str,
    baseline: str,
    at: dt.datetime,
    window_days: int = 7,
    segments: Sequence[tuple[str, str]] = (),
) -> SegmentAttributions:
    """The switchover waterfall (retention comparison for per-user metrics) of every metric, for
    all traffic (segment ``("all", "all")``) and for each ``(column, value)`` in ``segments``.

    Reads each rollup once for the two windows and slices it in memory, so many segments cost
    one query per unit rather than one per pair.
    """
    span = dt.timedelta(days=window_days)
    since, until = at - span, at + span
    versions = [candidate, baseline]
    wanted = [analysis.get_metric(name) for name in metrics]
    started = time.perf_counter()
    cells: dict[analysis.Unit, pl.DataFrame] = {}
    for m in wanted:
        if m.unit not in cells:
            cells[m.unit] = (
                warehouse.user_activity(wh, since=since, until=until, model_versions=versions)
                if m.unit is analysis.Unit.USER
                else _cells(wh, m, since, until, versions, _dims(m))
            )
    notes = warehouse.annotations(wh, since=since, until=until)
    queried = time.perf_counter()
    results: list[tuple[str, str, str, Any]] = []
    # Each (unit, column) split once into its values' slices, not filtered once per value.
    slices: dict[tuple[analysis.Unit, str], dict[Any, pl.DataFrame]] = {}
    for m in wanted:
        for column, value in [("all", "all"), *segments]:
            frame = cells[m.unit]
            if column != "all":
                if column not in frame.columns:
                    results.append((m.name, column, value, f"{m.unit.value}s have no {column}"))
                    continue
                if (m.unit, column) not in slices:
                    slices[m.unit, column] = {
                        key[0]: part
                        for key, part in frame.partition_by(column, as_dict=True).items()
                    }
                frame = slices[m.unit, column].get(value, frame.clear())
            try:
                if m.unit is analysis.Unit.USER:
                    result: Any = _retention_from(frame, candidate, since, until)
                else:
                    result = analysis.decompose_change(
                        frame,
                        numerator=m.numerator,
                        denominator=m.denominator,
                        candidate=candidate,
                        baseline=baseline,
                        before=(since, at),
                        after=(at, until),
                        segments=[d for d in _dims(m) if d != column],
                        annotations=notes,
                        metric=m.name,
                    )
            except analysis.AnalysisError as e:
                result = str(e)
            results.append((m.name, column, value, result))
    return SegmentAttributions(
        candidate=candidate,
        baseline=baseline,
        at=at,
        results=tuple(results),
        warehouse_seconds=queried - started,
        analysis_seconds=time.perf_counter() - queried,
    )


def _dims(m: analysis.Metric) -> list[str]:
    return [s for s in SEGMENTS if s != "intent" or m.unit is analysis.Unit.RESPONSE]


def _cells(
    wh: warehouse.Warehouse,
    m: analysis.Metric,
    since: dt.datetime,
    until: dt.datetime,
    versions: list[str],
    dims: list[str],
) -> pl.DataFrame:
    """Hourly counts per version and segment values, from the rollup of the metric's unit."""
    keys = ["model_version", *dims]
    if m.unit is analysis.Unit.SESSION:
        return warehouse.hourly_sessions(
            wh, since=since, until=until, group_by=keys, model_versions=versions
        )
    # the counts only: merging the latency t-digests would cost most of the query
    return warehouse.hourly_rollup(
        wh, since=since, until=until, group_by=keys, model_versions=versions, latency=False
    )


def _concurrent(
    wh: warehouse.Warehouse,
    m: analysis.Metric,
    candidate: str,
    versions: list[str],
    since: dt.datetime,
    until: dt.datetime,
    segments: Sequence[str],
    expected_share: float | None,
) -> Attribution:
    if m.unit is analysis.Unit.SESSION:
        units = warehouse.session_outcomes(wh, since=since, until=until, model_versions=versions)
    else:
        units = warehouse.response_outcomes(wh, since=since, until=until, model_versions=versions)
    frame = analysis.metric_outcome(m, units).with_columns(
        (pl.col("model_version") == candidate).alias("treated")
    )
    if frame["treated"].n_unique() < 2:
        raise analysis.InsufficientDataError(
            f"{versions[0]} and {versions[1]} did not both serve between {since:%Y-%m-%d} and "
            f"{until:%Y-%m-%d}: a concurrent comparison needs traffic on both (after a full "
            "switch, use --design switchover --at THE_SWITCH_DATE)"
        )
    result = analysis.compare_concurrent(
        frame,
        outcome="outcome",
        treated="treated",
        user="user_id",
        segments=list(segments),
        expected_share=expected_share,
        metric=m.name,
    )
    # Longer sessions may only mean longer answers: say how much goes through length.
    verbosity = (
        analysis.check_verbosity(
            frame, outcome="outcome", treated="treated", user="user_id", metric=m.name
        )
        if m.name in ("session_turns", "session_seconds")
        else None
    )
    return Attribution(m.name, "concurrent", result, verbosity)


def _retention(
    wh: warehouse.Warehouse,
    candidate: str,
    versions: list[str],
    since: dt.datetime,
    until: dt.datetime,
) -> analysis.RetentionComparison:
    """Churn (no response for 7 days) by first-exposed version, users entering at their tenure
    when the window opened (late entry), censored when the window closes."""
    users = warehouse.user_activity(wh, since=since, until=until, model_versions=versions)
    return _retention_from(users, candidate, since, until)


def _retention_from(
    users: pl.DataFrame, candidate: str, since: dt.datetime, until: dt.datetime
) -> analysis.RetentionComparison:
    if users.is_empty():
        raise analysis.InsufficientDataError(
            f"no users between {since:%Y-%m-%d} and {until:%Y-%m-%d}"
        )
    day = 86_400.0
    start, end = since.replace(tzinfo=dt.UTC), until.replace(tzinfo=dt.UTC)
    frame = (
        users.with_columns(
            (pl.col("first_seen") - pl.duration(days=pl.col("tenure_days").fill_null(0))).alias(
                "origin"
            )
        )
        .with_columns(
            (pl.col("last_seen") < end - dt.timedelta(days=_CHURN_DAYS))
            .cast(pl.Int8)
            .alias("churned"),
            (pl.col("first_version") == candidate).alias("treated"),
            ((pl.lit(start) - pl.col("origin")).dt.total_seconds() / day).clip(0).alias("entry"),
        )
        .with_columns(
            (
                pl.when(pl.col("churned") == 1)
                .then(pl.col("last_seen") - pl.col("origin"))
                .otherwise(pl.lit(end) - pl.col("origin"))
                .dt.total_seconds()
                / day
            ).alias("duration")
        )
    )
    # A user last seen at the moment the window opened has no time at risk inside it.
    frame = frame.filter(pl.col("duration") > pl.col("entry"))
    return analysis.compare_retention(
        frame, duration="duration", churned="churned", treated="treated", entry="entry"
    )
