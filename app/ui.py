"""What every page of the Streamlit app shares: the warehouse connection, cached queries, filters
that live in the URL, and errors shown as what to do.

- The connection is a ``st.cache_resource`` (one per warehouse URL, from
  ``TELLTALE_WAREHOUSE_URL``), closed when the cache is cleared: an embedded (chdb) warehouse is
  held by one process, so a second process gets :class:`warehouse.WarehouseBusyError`, shown as
  a message that says which process to stop.
- Queries and analyses are ``st.cache_data`` functions of plain values (the URL, dates, names),
  so a second visit with the same filters is a cache hit; they expire after
  :data:`CACHE_SECONDS`, as ingest keeps adding data.
- Every filter is mirrored in ``st.query_params``: the URL reproduces the view.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import polars as pl
import streamlit as st

import analysis
import shadow
import warehouse
from app.attribution import Attribution, SegmentAttributions, attribute, attribute_segments
from app.report import WeeklyReport, parse_week, weekly_report
from app.review import (
    GateError,
    ReleaseReview,
    parse_gates,
    review_release,
    segment_effects,
    segment_values,
)
from app.telemetry import (
    daily_volume,
    expectation_band,
    metric_cells,
    metric_series,
    model_versions,
)

__all__ = [
    "CACHE_SECONDS",
    "UNEXPECTED",
    "alert_list",
    "attribution",
    "band",
    "connection",
    "daily",
    "data_days",
    "default_boundary",
    "notes",
    "page_guard",
    "release_review",
    "require_data",
    "segment_attribution",
    "segments",
    "series",
    "shadow_comparison",
    "shadow_results",
    "shadow_runs",
    "shadow_settings",
    "shown_url",
    "table",
    "url_date",
    "url_multiselect",
    "url_select",
    "versions",
    "warehouse_url",
    "weekly",
]

CACHE_SECONDS = 600
"""How long a query's answer is reused (ingest keeps adding data)."""

UNEXPECTED = "Something went wrong drawing this page"
"""How an error nobody anticipated starts: the page says so in one line, the log has the rest."""

log = logging.getLogger("telltale.app")
T = TypeVar("T")


def warehouse_url() -> str:
    """The warehouse the app reads: ``TELLTALE_WAREHOUSE_URL``, else the embedded default."""
    return os.environ.get("TELLTALE_WAREHOUSE_URL") or warehouse.DEFAULT_URL


def shown_url() -> str:
    """:func:`warehouse_url` fit to print: without its password."""
    url = warehouse_url()
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@") if password else url


def require_data() -> tuple[str, dt.date, dt.date]:
    """The warehouse URL and its first and last day with responses; an empty warehouse stops
    the page with what to run."""
    url = warehouse_url()
    connection()
    days = data_days(url)
    if days is None:
        st.info(
            f"The warehouse at `{shown_url()}` holds no responses yet. Fill it with "
            "`telltale demo`, or `telltale ingest --from-file DIR` / a Kafka consumer, then "
            "reload."
        )
        st.stop()
    return url, days[0], days[1]


def _close(wh: warehouse.Warehouse) -> None:
    wh.close()


@st.cache_resource(on_release=_close, show_spinner="Opening the warehouse...")
def _open(url: str) -> warehouse.Warehouse:
    wh = warehouse.connect(url)
    try:
        warehouse.migrate(wh)
    except BaseException:
        wh.close()
        raise
    return wh


def connection() -> warehouse.Warehouse:
    """The app's warehouse connection (opened once per process and URL)."""
    return _open(warehouse_url())


@contextmanager
def page_guard() -> Iterator[None]:
    """Show an error as a message that says what to do, never as a stack trace."""
    try:
        yield
    except warehouse.WarehouseBusyError:
        st.error(
            f"The warehouse at `{shown_url()}` is in use by another process (an ingest, "
            "a demo or another app). An embedded warehouse can be open in one process at a "
            "time: stop the other process and reload this page, or point "
            "`TELLTALE_WAREHOUSE_URL` at a ClickHouse server (`http://host:8123`)."
        )
    except warehouse.WarehouseError as e:
        st.error(
            f"The warehouse could not answer: {e}\n\nCheck `TELLTALE_WAREHOUSE_URL` "
            f"(now `{shown_url()}`) and reload."
        )
    except (analysis.AnalysisError, shadow.ShadowError, GateError) as e:
        st.warning(f"{e}\n\nChange the filters in the sidebar and try again.")
    except Exception as e:
        log.exception("page failed")
        st.error(f"{UNEXPECTED} ({type(e).__name__}: {e}). The app's log has the details.")


def table(frame: pl.DataFrame, *, percent: Sequence[str] = ()) -> None:
    """A frame as a table: floats to 4 significant digits, ``percent`` columns as percentages."""
    config: dict[str, Any] = {
        name: st.column_config.NumberColumn(format="percent" if name in percent else "%.4g")
        for name, dtype in frame.schema.items()
        if dtype.is_float()
    }
    st.dataframe(frame, hide_index=True, column_config=config)


# ------------------------------------------------------------------------------------------
# Filters in the URL
# ------------------------------------------------------------------------------------------


def _seed(key: str, value: Any) -> None:
    """Put the URL's (or the default) value in the widget's state before it is drawn."""
    if key not in st.session_state:
        st.session_state[key] = value


def url_select(
    label: str,
    options: Sequence[T],
    *,
    key: str,
    default: T | None = None,
    format_func: Callable[[T], str] = str,
    help: str | None = None,
) -> T:
    """A sidebar selectbox whose value lives in the URL as ``?key=...``."""
    options = list(options)
    text = [str(o) for o in options]
    wanted = st.query_params.get(key)
    fallback = default if default in options else options[0]
    _seed(key, options[text.index(wanted)] if wanted in text else fallback)
    if st.session_state[key] not in options:
        st.session_state[key] = fallback
    value = st.sidebar.selectbox(label, options, key=key, format_func=format_func, help=help)
    st.query_params[key] = str(value)
    return value  # type: ignore[return-value]


def url_multiselect(
    label: str, options: Sequence[str], *, key: str, default: Sequence[str], help: str | None = None
) -> list[str]:
    """A sidebar multiselect whose values live in the URL as ``?key=a,b``."""
    options = list(options)
    wanted = st.query_params.get(key)
    chosen = [v for v in wanted.split(",") if v in options] if wanted is not None else None
    _seed(key, chosen if chosen is not None else [v for v in default if v in options])
    st.session_state[key] = [v for v in st.session_state[key] if v in options]
    values = st.sidebar.multiselect(label, options, key=key, help=help)
    st.query_params[key] = ",".join(values)
    return values


def url_date(
    label: str, *, key: str, default: dt.date, low: dt.date, high: dt.date, help: str | None = None
) -> dt.date:
    """A sidebar date input whose value lives in the URL as ``?key=YYYY-MM-DD``."""
    try:
        wanted = dt.date.fromisoformat(st.query_params.get(key, ""))
    except ValueError:
        wanted = default
    _seed(key, min(max(wanted, low), high))
    if not low <= st.session_state[key] <= high:
        st.session_state[key] = min(max(st.session_state[key], low), high)
    value = st.sidebar.date_input(label, key=key, min_value=low, max_value=high, help=help)
    st.query_params[key] = value.isoformat()  # type: ignore[union-attr]
    return value  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------
# Cached queries and analyses (plain values in, picklable results out)
# ------------------------------------------------------------------------------------------


def _wh(url: str) -> warehouse.Warehouse:
    return _open(url)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def daily(url: str) -> pl.DataFrame:
    """Responses per day and model version (``app.telemetry.daily_volume``)."""
    return daily_volume(_wh(url))


def data_days(url: str) -> tuple[dt.date, dt.date] | None:
    """The first and last day with responses, or None when the warehouse is empty."""
    frame = daily(url)
    if not frame.height:
        return None
    return frame["day"].min(), frame["day"].max()  # type: ignore[return-value]


def versions(url: str, since: dt.date, until: dt.date) -> list[str]:
    """Model versions that served in ``[since, until)``, oldest first."""
    return model_versions(daily(url), since=since, until=until)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def segments(url: str, since: dt.date, until: dt.date) -> list[tuple[str, str]]:
    """Every ``(column, value)`` segment seen in ``[since, until)``."""
    return segment_values(_wh(url), since=_midnight(since), until=_midnight(until))


def default_boundary(url: str, since: dt.date, until: dt.date, candidate: str | None) -> dt.date:
    """The day of the latest model rollout annotated in ``[since, until)`` (the candidate's, if
    any), else the middle of the range."""
    rollouts = notes(url, since, until).filter(pl.col("kind") == "model_rollout")
    if candidate is not None and (rollouts["model_version"] == candidate).any():
        rollouts = rollouts.filter(pl.col("model_version") == candidate)
    days = [d for d in rollouts["starts_at"].dt.date().to_list() if since < d < until]
    return max(days) if days else since + (until - since) / 2


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def notes(url: str, since: dt.date, until: dt.date) -> pl.DataFrame:
    """Annotations overlapping ``[since, until)``."""
    return warehouse.annotations(_wh(url), since=_midnight(since), until=_midnight(until))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Reading the rollups...")
def series(
    url: str,
    metric: str,
    since: dt.date,
    until: dt.date,
    segment: tuple[str, str] | None,
    granularity: str,
) -> pl.DataFrame:
    """The metric per model version and hour or day (``app.telemetry.metric_series``)."""
    cells = metric_cells(_wh(url), metric, since=_midnight(since), until=_midnight(until),
                         segment=segment)  # fmt: skip
    return metric_series(cells, metric, granularity=granularity)  # type: ignore[arg-type]


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Fitting the expectation band...")
def band(
    url: str,
    metric: str,
    since: dt.date,
    until: dt.date,
    segment: tuple[str, str] | None,
    granularity: str,
    candidate: str,
    baseline: str,
    at: dt.date,
) -> tuple[pl.DataFrame, analysis.Waterfall]:
    """The expectation band without ``candidate`` (``app.telemetry.expectation_band``)."""
    wh = _wh(url)
    start, end = _midnight(since), _midnight(until)
    cells = metric_cells(wh, metric, since=start, until=end, segment=segment)
    return expectation_band(
        cells, metric, candidate=candidate, baseline=baseline, at=_midnight(at),
        annotations=warehouse.annotations(wh, since=start, until=end),
        granularity=granularity,  # type: ignore[arg-type]
    )  # fmt: skip


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Attributing the change...")
def attribution(
    url: str, metric: str, candidate: str, baseline: str, at: dt.date, window_days: int, design: str
) -> Attribution:
    """``app.attribution.attribute`` across ``at`` with ``window_days`` on each side."""
    start = _midnight(at)
    span = dt.timedelta(days=window_days)
    return attribute(
        _wh(url), metric=metric, candidate=candidate, baseline=baseline, since=start - span,
        until=start + span, design=design, at=start, window_days=window_days,  # type: ignore[arg-type]
    )  # fmt: skip


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Attributing every segment...")
def segment_attribution(
    url: str,
    metrics: tuple[str, ...],
    candidate: str,
    baseline: str,
    at: dt.date,
    window_days: int,
    columns: tuple[str, ...],
) -> tuple[SegmentAttributions, pl.DataFrame]:
    """The waterfall of every metric in every value of ``columns``, and the effects frame with
    BH-adjusted significance (``app.review.segment_effects``)."""
    wh = _wh(url)
    start, span = _midnight(at), dt.timedelta(days=window_days)
    pairs = segment_values(wh, since=start - span, until=start + span, columns=columns)
    found = attribute_segments(wh, metrics=metrics, candidate=candidate, baseline=baseline,
                               at=start, window_days=window_days, segments=pairs)  # fmt: skip
    return found, segment_effects(found)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def shadow_runs(url: str) -> pl.DataFrame:
    """The stored shadow runs, newest first."""
    return warehouse.shadow_runs(_wh(url))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def shadow_settings(url: str, run_id: str) -> dict[str, Any]:
    """The settings a run was started with (``{"simulated": true}`` marks made-up answers)."""
    stored = warehouse.shadow_run(_wh(url), run_id) or {}
    try:
        settings = json.loads(stored.get("settings_json") or "{}")
    except json.JSONDecodeError:
        return {}
    return settings if isinstance(settings, dict) else {}


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def shadow_results(url: str, run_id: str) -> pl.DataFrame:
    """A run's results, one row per sample and arm."""
    return warehouse.shadow_results(_wh(url), run_id)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Comparing the run with production...")
def shadow_comparison(
    url: str, run_id: str, segment: str | None, value: str | None
) -> shadow.ShadowComparison:
    """The run compared with production, by ``segment``, optionally only its ``value``."""
    wh = _wh(url)
    results = warehouse.shadow_results(wh, run_id)
    judgments = warehouse.shadow_judgments(wh, run_id)
    if segment is not None and value is not None:
        keep = results.filter(pl.col(segment) == value)["sample_id"].unique().implode()
        results = results.filter(pl.col("sample_id").is_in(keep))
        judgments = judgments.filter(pl.col("sample_id").is_in(keep))
    return shadow.compare_shadow(results, judgments, prices=shadow.load_prices(), segment=segment)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def alert_list(url: str, status: str | None, since: dt.date, until: dt.date) -> pl.DataFrame:
    """Alerts in their current state detected in ``[since, until)``, newest first (cleared
    when the app changes one)."""
    return warehouse.alerts(_wh(url), status=status, since=_midnight(since), until=_midnight(until))


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Reviewing the release...")
def release_review(
    url: str, week: str, candidate: str, baseline: str, gates_toml: str | None
) -> ReleaseReview:
    """``candidate`` against ``baseline`` over ``week`` and the week before
    (``app.review.review_release``); gates from the TOML text, else the registry's."""
    since, until = parse_week(week)
    gates = parse_gates(gates_toml) if gates_toml else None
    source = "the uploaded gates file" if gates_toml else "registry defaults"
    return review_release(_wh(url), candidate=candidate, baseline=baseline, since=since,
                          until=until, gates=gates, gates_source=source)  # fmt: skip


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False)
def weekly(
    url: str, week: str, candidate: str, baseline: str, gates_toml: str | None
) -> WeeklyReport:
    """The report the export buttons download: :func:`release_review` with the week's telemetry
    (``app.report.weekly_report``)."""
    review = release_review(url, week, candidate, baseline, gates_toml)
    return weekly_report(_wh(url), week, candidate=candidate, baseline=baseline,
                         reviews=[review])  # fmt: skip


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())
