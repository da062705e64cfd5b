"""``telltale alerts``: scan for regressions (hourly, from cron), list alerts, acknowledge and
resolve them."""

from __future__ import annotations

import datetime as dt
import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from pydantic import ValidationError

import analysis
import warehouse
from app.alerting import (
    AlertDeliveryError,
    AlertSettings,
    Sink,
    build_sinks,
    change_status,
    describe_alert,
    run_alerts,
    scan_window,
)
from app.options import WarehouseUrl as Warehouse
from app.shadow_cli import _DATES, _error, _warehouse, console, out

__all__ = ["alerts_app"]

alerts_app = typer.Typer(
    help="Page on-call when a metric of a model version regresses, beyond seasonality and mix.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

EXIT_UNDELIVERED = 2
"""Exit status of a run that recorded alerts some sink did not take (the next run retries)."""

Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file with alert settings (top level or an [alerts] table); the environment "
        "(TELLTALE_ALERTS_*) fills the rest.",
        exists=True,
        dir_okay=False,
    ),
]
Sinks = Annotated[
    list[str] | None,
    typer.Option(
        "--sink",
        help="stdout, jsonl:PATH, slack[:URL] or pagerduty[:URL] (repeatable; default: "
        "TELLTALE_ALERTS_SINKS, else stdout). Without a URL, slack and pagerduty read theirs "
        "from the settings, which keeps the token out of the process list.",
    ),
]
By = Annotated[
    str | None,
    typer.Option("--by", help="Who is doing it (default: the login name).", show_default=False),
]
Note = Annotated[str, typer.Option("--note", help="Why, for the alert's history.")]


def _settings(config: Path | None) -> AlertSettings:
    try:
        return AlertSettings.from_toml(config) if config else AlertSettings()
    except (ValidationError, ValueError, OSError) as e:
        raise _error(f"invalid alert settings: {e}") from None


def _sinks(specs: list[str] | None, settings: AlertSettings) -> list[Sink]:
    try:
        return build_sinks(specs or settings.sinks, settings)
    except AlertDeliveryError as e:
        raise _error(str(e)) from None


@alerts_app.command("run")
def run(
    since: Annotated[
        dt.datetime | None,
        typer.Option(formats=_DATES, metavar="DATE", help="Scan from this hour (UTC)."),
    ] = None,
    until: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=_DATES,
            metavar="DATE",
            help="... up to this hour (UTC; default: the last complete hour).",
        ),
    ] = None,
    lookback_hours: Annotated[
        int | None,
        typer.Option(
            min=1, help="Hours to scan before --until (default: TELLTALE_ALERTS_LOOKBACK_HOURS)."
        ),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(help="A registered metric (repeatable; default: every hourly metric)."),
    ] = None,
    sink: Sinks = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print what would be alerted; record and send nothing."),
    ] = False,
    config: Config = None,
    url: Warehouse = None,
) -> None:
    """Scan every metric x model version x key segment for a regression and alert on new ones.

    Meant for cron every hour: a shift already alerted is not alerted again, and an alert a
    sink missed is sent by the next run. Exits 0 when every alert was delivered, 2 when a sink
    failed (the alerts are recorded; the next run retries), 1 on any other error.

    [bold]Examples[/]

      telltale alerts run --sink slack --sink pagerduty

      telltale alerts run --since 2026-10-05 --until 2026-10-08 --dry-run
    """
    settings = _settings(config)
    for name in metric or []:
        if name not in analysis.HOURLY_METRICS:
            raise _error(f"--metric {name!r}: choose from {', '.join(analysis.HOURLY_METRICS)}")
    window = scan_window(settings, since=since, until=until, lookback_hours=lookback_hours)
    if window[1] <= window[0]:
        raise _error(f"--since {window[0]:%Y-%m-%d %H:%M} is not before --until")
    sinks = [] if dry_run else _sinks(sink, settings)
    with _warehouse(url) as wh:
        try:
            result = run_alerts(
                wh,
                settings,
                since=window[0],
                until=window[1],
                metrics=metric,
                sinks=sinks,
                dry_run=dry_run,
            )
        except (analysis.AnalysisError, warehouse.WarehouseError) as e:
            raise _error(str(e)) from None
    if dry_run:
        for alert in result.new.iter_rows(named=True):
            out.print(f"would alert: {describe_alert(alert)}", markup=False, highlight=False)
    console.print(result.summary(), markup=False, highlight=False)
    if result.failures:
        raise typer.Exit(EXIT_UNDELIVERED)


@alerts_app.command("list")
def list_alerts(
    status: Annotated[
        str | None,
        typer.Option(help="open, acknowledged or resolved (default: all)."),
    ] = None,
    since: Annotated[
        dt.datetime | None,
        typer.Option(formats=_DATES, metavar="DATE", help="Detected from this time (UTC)."),
    ] = None,
    until: Annotated[
        dt.datetime | None,
        typer.Option(formats=_DATES, metavar="DATE", help="... up to this time (UTC)."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    url: Warehouse = None,
) -> None:
    """The alerts in their current state, newest first."""
    if fmt not in ("text", "json"):
        raise _error(f"--format must be text or json, not {fmt!r}")
    utc = [None if t is None else t.replace(tzinfo=dt.UTC) for t in (since, until)]
    with _warehouse(url) as wh:
        try:
            found = warehouse.alerts(wh, status=status, since=utc[0], until=utc[1])
        except warehouse.WarehouseError as e:
            raise _error(str(e)) from None
    if fmt == "json":
        out.print_json(json.dumps(found.to_dicts(), default=str))
        return
    if not found.height:
        console.print("no alerts")
        return
    table = found.select(
        "alert_id",
        "status",
        "severity",
        "metric",
        "model_version",
        pl.format("{}={}", "segment", "segment_value").alias("segment"),
        (pl.col("relative_shift") * 100).round(1).alias("shift %"),
        pl.col("opened_at").dt.strftime("%Y-%m-%d %H:%M").alias("since"),
        pl.col("detected_at").dt.strftime("%Y-%m-%d %H:%M").alias("detected"),
        "updated_by",
    )
    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        out.print(str(table), markup=False, highlight=False)


def _set_status(
    alert_id: str,
    status: str,
    by: str | None,
    note: str,
    sink: list[str] | None,
    config: Path | None,
    url: str | None,
) -> None:
    settings = _settings(config)
    sinks = _sinks(sink, settings)
    with _warehouse(url) as wh:
        try:
            row, failures = change_status(
                wh, alert_id, status, by=by or getpass.getuser(), note=note, sinks=sinks
            )
        except warehouse.WarehouseError as e:
            raise _error(str(e)) from None
    console.print(f"alert {alert_id} {row['status']} by {row['updated_by']}", highlight=False)
    for failure in failures:
        console.print(f"not delivered: {failure}", markup=False, highlight=False)
    if failures:
        raise typer.Exit(EXIT_UNDELIVERED)


def _status_command(status: str, doc: str) -> Callable[..., None]:
    """A command that moves an alert to ``status`` and tells the sinks."""

    def command(
        alert_id: Annotated[
            str, typer.Argument(help="The alert's id (see `telltale alerts list`).")
        ],
        by: By = None,
        note: Note = "",
        sink: Sinks = None,
        config: Config = None,
        url: Warehouse = None,
    ) -> None:
        _set_status(alert_id, status, by, note, sink, config, url)

    command.__doc__ = doc
    return command


alerts_app.command("ack")(
    _status_command(
        "acknowledged",
        "Acknowledge an alert: someone is on it (PagerDuty acknowledges the incident).",
    )
)
alerts_app.command("resolve")(
    _status_command(
        "resolved",
        "Resolve an alert (PagerDuty resolves the incident); its series may alert again after "
        "the cool-down.",
    )
)
