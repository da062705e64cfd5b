"""A metric over time, read from the hourly rollups, and the band it was expected to stay in:
the series behind the app's Overview page and the weekly report's charts."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import polars as pl

import analysis
import warehouse

__all__ = [
    "daily_volume",
    "expectation_band",
    "metric_cells",
    "metric_series",
    "model_versions",
]

# every hour the rollup can hold (its DateTime column ends in 2106)
_ALL_TIME = (dt.datetime(1970, 1, 2), dt.datetime(2106, 1, 1))

Granularity = Literal["hour", "day"]


def metric_cells(
    wh: warehouse.Warehouse,
    metric: str,
    *,
    since: dt.datetime,
    until: dt.datetime,
    segment: tuple[str, str] | None = None,
) -> pl.DataFrame:
    """Hourly ``numerator`` and ``denominator`` of ``metric`` per model version (``hour``,
    ``model_version``, then the metric's count columns), all traffic or one segment
    ``(column, value)``; rows without a model version (feedback that came before its response)
    are left out."""
    m = analysis.get_metric(metric)
    if m.unit is analysis.Unit.USER:
        raise analysis.AnalysisError(
            f"{metric} is measured per user, not per hour: see the release review or "
            "`telltale attribute --metric retention_d7`"
        )
    if segment is not None and segment[0] == "intent" and m.unit is analysis.Unit.SESSION:
        raise analysis.AnalysisError(f"sessions carry no intent: pick another segment for {metric}")
    dims = ["model_version", *([segment[0]] if segment else [])]
    if m.unit is analysis.Unit.SESSION:
        cells = warehouse.hourly_sessions(wh, since=since, until=until, group_by=dims)
    else:
        cells = warehouse.hourly_rollup(wh, since=since, until=until, group_by=dims, latency=False)
    if segment is not None:
        cells = cells.filter(pl.col(segment[0]) == segment[1])
    return (
        cells.filter(pl.col("model_version") != "")
        .group_by("hour", "model_version")
        .agg(pl.col(m.numerator).sum(), pl.col(m.denominator).sum())
        .sort("hour", "model_version")
    )


def metric_series(
    cells: pl.DataFrame, metric: str, *, granularity: Granularity = "hour"
) -> pl.DataFrame:
    """``metric`` per model version and hour (or UTC day) from :func:`metric_cells`:
    ``time``, ``series`` (the model version), ``value`` (null where nothing was counted),
    ``denominator``."""
    m = analysis.get_metric(metric)
    time = pl.col("hour").dt.truncate("1d") if granularity == "day" else pl.col("hour")
    return (
        cells.group_by(time.alias("time"), pl.col("model_version").alias("series"))
        .agg(pl.col(m.numerator).sum().cast(pl.Float64), pl.col(m.denominator).sum())
        .with_columns(
            pl.when(pl.col(m.denominator) > 0)
            .then(pl.col(m.numerator) / pl.col(m.denominator))
            .alias("value")
        )
        .select("time", "series", "value", pl.col(m.denominator).alias("denominator"))
        .sort("time", "series")
    )


def expectation_band(
    cells: pl.DataFrame,
    metric: str,
    *,
    candidate: str,
    baseline: str,
    at: dt.datetime,
    annotations: pl.DataFrame | None = None,
    granularity: Granularity = "hour",
) -> tuple[pl.DataFrame, analysis.Waterfall]:
    """Where ``metric`` was expected to be had ``candidate`` never served: the waterfall's
    counterfactual (seasonality, annotated changes and ``baseline``'s level, fitted on ``cells``
    from :func:`metric_cells` with ``at`` splitting them into before and after), as ``time``,
    ``expected``, ``lower``, ``upper``; and the fit itself.

    By day, each day's figures are the mean of its hours' (a guide for the eye, not a daily
    interval). Raises :class:`analysis.InsufficientDataError` under 7 days of cells.
    """
    m = analysis.get_metric(metric)
    first, last = cells["hour"].min(), cells["hour"].max()
    if first is None or last is None:
        raise analysis.InsufficientDataError(f"no {m.denominator} in the range")
    start = _naive(first)  # type: ignore[arg-type]
    end = _naive(last) + dt.timedelta(hours=1)  # type: ignore[operator]
    at = min(max(_naive(at), start + dt.timedelta(hours=1)), end - dt.timedelta(hours=1))
    fit = analysis.decompose_change(
        cells,
        numerator=m.numerator,
        denominator=m.denominator,
        candidate=candidate,
        baseline=baseline,
        before=(start, at),
        after=(at, end),
        segments=(),
        annotations=annotations,
        metric=metric,
    )
    band = fit.counterfactual.select(
        pl.col("hour").alias("time"),
        pl.col("expected_without_model").alias("expected"),
        "lower",
        "upper",
    )
    if granularity == "day":
        band = band.group_by(pl.col("time").dt.truncate("1d")).mean().sort("time")
    return band, fit


def daily_volume(wh: warehouse.Warehouse) -> pl.DataFrame:
    """Responses per UTC day and model version, all time: ``day``, ``model_version``,
    ``responses`` (the rollup's sums only, without ``daily_summary``'s latency quantiles)."""
    hourly = warehouse.hourly_rollup(wh, since=_ALL_TIME[0], until=_ALL_TIME[1], latency=False)
    return (
        hourly.filter(pl.col("model_version") != "")
        .group_by(pl.col("hour").dt.date().alias("day"), "model_version")
        .agg(pl.col("responses").sum())
        .sort("day", "model_version")
    )


def model_versions(daily: pl.DataFrame, *, since: dt.date, until: dt.date) -> list[str]:
    """The model versions that served in ``[since, until)`` (``daily`` as
    :func:`daily_volume` returns it), oldest first: by the first day each served, then by
    name."""
    served = daily.filter(
        (pl.col("day") >= since) & (pl.col("day") < until) & (pl.col("responses") > 0)
    )["model_version"].unique()
    first = (
        daily.filter(pl.col("model_version").is_in(served.implode()))
        .group_by("model_version")
        .agg(pl.col("day").min())
        .sort("day", "model_version")
    )
    return first["model_version"].to_list()


def _naive(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t
