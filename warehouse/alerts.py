"""Named queries of regression alerts: record them, list them, and change their status.

The table is in :data:`warehouse.schema.ALERT_TABLES` (migration 4). Every change of an alert
is a new row (raised, notified, acknowledged, resolved) keyed on ``(alert_id, updated_at)``:
the newest row is the alert's state (:func:`alerts`), all of them its history
(:func:`alert_history`). Nothing is updated in place, so the history is the audit trail.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import polars as pl

from warehouse.connection import Warehouse
from warehouse.errors import TerminalWarehouseError

__all__ = [
    "ALERT_COLUMNS",
    "ALERT_STATUSES",
    "alert_history",
    "alerts",
    "mark_alerts_notified",
    "record_alerts",
    "set_alert_status",
]

ALERT_STATUSES = ("open", "acknowledged", "resolved")
"""What an alert can be: raised and not yet looked at, someone is on it, or over."""

_UTC_S = pl.Datetime("us", "UTC")
_FOUND: dict[str, pl.DataType] = {
    "alert_id": pl.String(),
    "metric": pl.String(),
    "model_version": pl.String(),
    "segment": pl.String(),
    "segment_value": pl.String(),
    "opened_at": _UTC_S,
    "detected_at": _UTC_S,
    "severity": pl.String(),
    "expected": pl.Float64(),
    "observed": pl.Float64(),
    "shift": pl.Float64(),
    "shift_se": pl.Float64(),
    "relative_shift": pl.Float64(),
    "statistic": pl.Float64(),
    "threshold": pl.Float64(),
    "basis": pl.String(),
    "baseline_version": pl.String(),
    "segments_firing": pl.UInt16(),
}
ALERT_COLUMNS: dict[str, pl.DataType] = {
    **_FOUND,
    "status": pl.String(),
    "notified_at": _UTC_S,
    "updated_at": _UTC_S,
    "updated_by": pl.String(),
    "note": pl.String(),
}
"""Columns of an alert row, in table order (what :func:`alerts` returns)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _insert(wh: Warehouse, rows: pl.DataFrame) -> None:
    frame = rows.select(pl.col(c).cast(t) for c, t in ALERT_COLUMNS.items())
    wh.insert_arrow("alerts", frame.to_arrow())


def record_alerts(wh: Warehouse, found: pl.DataFrame, *, by: str) -> int:
    """Store newly found alerts as ``open`` (columns: :data:`ALERT_COLUMNS` up to
    ``segments_firing``, plus an optional ``note``); returns how many were written.

    Whether an alert is new is the caller's judgement (``analysis.select_new_alerts``): an
    ``alert_id`` recorded twice gets a second history row, not a second alert.
    """
    if not found.height:
        return 0
    missing = [c for c in _FOUND if c not in found.columns]
    if missing:
        raise TerminalWarehouseError(f"alerts need columns {missing}")
    now = _now()
    rows = found.with_columns(
        pl.lit("open").alias("status"),
        pl.lit(None, _UTC_S).alias("notified_at"),
        pl.lit(now, _UTC_S).alias("updated_at"),
        pl.lit(by).alias("updated_by"),
        (pl.col("note") if "note" in found.columns else pl.lit("")).fill_null("").alias("note"),
    )
    _insert(wh, rows)
    return rows.height


def _current(db: str, where: str = "") -> str:
    """The newest row of each alert, then ``where`` on it (a status filter must see the
    alert's state, not any row of its history)."""
    columns = ", ".join(f"`{c}`" for c in ALERT_COLUMNS)
    return (
        f"SELECT {columns} FROM (SELECT {columns} FROM {db}.alerts FINAL"
        f" ORDER BY alert_id, updated_at DESC LIMIT 1 BY alert_id) {where}"
    )


def alerts(
    wh: Warehouse,
    *,
    status: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> pl.DataFrame:
    """Every alert in its current state, newest detection first; only those with ``status``
    and detected in ``[since, until)`` when given (columns: :data:`ALERT_COLUMNS`)."""
    conditions, params = [], {}
    if status is not None:
        _check_status(status)
        conditions.append("status = {status:String}")
        params["status"] = status
    if since is not None:
        conditions.append("detected_at >= {since:DateTime64(3)}")
        params["since"] = since
    if until is not None:
        conditions.append("detected_at < {until:DateTime64(3)}")
        params["until"] = until
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    frame = wh.query_frame(
        _current(wh.database, where) + " ORDER BY detected_at DESC, alert_id", parameters=params
    )
    return _typed(frame)


def alert_history(wh: Warehouse, alert_id: str) -> pl.DataFrame:
    """Every row of one alert, oldest first: when it was raised, notified, acknowledged and
    resolved, and by whom."""
    columns = ", ".join(f"`{c}`" for c in ALERT_COLUMNS)
    frame = wh.query_frame(
        f"SELECT {columns} FROM {wh.database}.alerts FINAL WHERE alert_id = {{id:String}}"
        " ORDER BY updated_at",
        parameters={"id": alert_id},
    )
    return _typed(frame)


def set_alert_status(
    wh: Warehouse, alert_id: str, status: str, *, by: str, note: str = ""
) -> pl.DataFrame:
    """Acknowledge, resolve or reopen an alert (``status`` in :data:`ALERT_STATUSES`), noting
    who did it and why; returns the alert's new state (one row). The old state stays in its
    history."""
    _check_status(status)
    current = _latest(wh, [alert_id])
    if not current.height:
        raise TerminalWarehouseError(
            f"no alert {alert_id!r}: `telltale alerts list` shows the alerts there are"
        )
    row = _next_version(current).with_columns(
        pl.lit(status).alias("status"), pl.lit(by).alias("updated_by"), pl.lit(note).alias("note")
    )
    _insert(wh, row)
    return row.select(list(ALERT_COLUMNS))


def mark_alerts_notified(wh: Warehouse, alert_ids: Sequence[str], *, by: str) -> int:
    """Record that the alerts were delivered to every sink (``notified_at``); an alert not
    marked is sent again by the next run. Returns how many were marked."""
    current = _latest(wh, alert_ids)
    if not current.height:
        return 0
    rows = _next_version(current)
    rows = rows.with_columns(
        pl.col("updated_at").alias("notified_at"), pl.lit(by).alias("updated_by")
    )
    _insert(wh, rows)
    return rows.height


def _latest(wh: Warehouse, alert_ids: Sequence[str]) -> pl.DataFrame:
    frame = wh.query_frame(
        _current(wh.database, "WHERE alert_id IN {ids:Array(String)}"),
        parameters={"ids": list(alert_ids)},
    )
    return _typed(frame)


def _next_version(current: pl.DataFrame) -> pl.DataFrame:
    """The rows as a new history entry: stamped now, and always after the entry before (two
    changes within a microsecond must not collapse into one)."""
    now = _now()
    return current.with_columns(
        pl.max_horizontal(
            pl.lit(now, _UTC_S), pl.col("updated_at") + pl.duration(microseconds=1)
        ).alias("updated_at")
    )


def _typed(frame: pl.DataFrame) -> pl.DataFrame:
    """Query results in :data:`ALERT_COLUMNS` types (an empty result has none to infer)."""
    if not frame.height:
        return pl.DataFrame(schema=ALERT_COLUMNS)
    return frame.select(pl.col(c).cast(t) for c, t in ALERT_COLUMNS.items())


def _check_status(status: str) -> None:
    if status not in ALERT_STATUSES:
        raise TerminalWarehouseError(
            f"status must be one of {', '.join(ALERT_STATUSES)}, not {status!r}"
        )
