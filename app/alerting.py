"""On-call regression alerts: scan the warehouse's hourly rollups, record what is new, and tell
someone (stdout, a JSON-lines file, a Slack webhook, PagerDuty Events v2).

``telltale alerts run`` (``app/alerts_cli.py``) calls :func:`run_alerts` from cron every hour,
and the Streamlit Alerts page reads :func:`warehouse.alerts` and :func:`alert_chart`. A run is
idempotent: the detector finds the same shift again on the next run with the same
``alert_id``, :func:`analysis.select_new_alerts` drops it, and only alerts that no run has
delivered yet are sent (an alert is marked ``notified_at`` once every sink took it, so a sink
that was down gets it on the next run; PagerDuty de-duplicates on the alert id, a Slack channel
may see it twice).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, TextIO
from urllib.parse import urlsplit

import httpx
import polars as pl
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

import analysis
import warehouse

__all__ = [
    "AlertDeliveryError",
    "AlertRun",
    "AlertSettings",
    "JsonlSink",
    "PagerDutySink",
    "Sink",
    "SlackSink",
    "StdoutSink",
    "alert_chart",
    "build_sinks",
    "change_status",
    "describe_alert",
    "pagerduty_event",
    "run_alerts",
    "scan_window",
    "slack_message",
]

log = logging.getLogger("telltale.alerts")

SEGMENTS = ("locale", "platform", "intent", "cohort")
_PAGERDUTY_SEVERITY = {"critical": "critical", "major": "error", "minor": "warning"}
_DETAILS = (
    "segment", "segment_value", "expected", "observed", "shift", "relative_shift", "statistic",
    "threshold", "basis", "baseline_version", "opened_at", "segments_firing", "note",
)  # fmt: skip
_PAGERDUTY_ACTION = {"open": "trigger", "acknowledged": "acknowledge", "resolved": "resolve"}


class AlertDeliveryError(Exception):
    """A sink could not take an alert (after retries); the next run tries again."""


class AlertSettings(BaseSettings):
    """What to scan, how sure to be, and whom to tell (environment: ``TELLTALE_ALERTS_*``, or a
    TOML file). The webhook URL and the routing key are secrets: never printed or logged."""

    model_config = SettingsConfigDict(env_prefix="TELLTALE_ALERTS_", frozen=True)

    sinks: list[str] = Field(
        ["stdout"],
        description="Where new alerts go: stdout, jsonl:PATH, slack (URL from "
        "slack_webhook_url), slack:URL, pagerduty (URL from pagerduty_url), pagerduty:URL. "
        "JSON list. TELLTALE_ALERTS_SINKS.",
    )
    slack_webhook_url: SecretStr = Field(
        SecretStr(""),
        description="Slack incoming-webhook URL (it carries a token). "
        "TELLTALE_ALERTS_SLACK_WEBHOOK_URL.",
    )
    pagerduty_url: str = Field(
        "https://events.pagerduty.com/v2/enqueue",
        description="PagerDuty Events API v2 endpoint. TELLTALE_ALERTS_PAGERDUTY_URL.",
    )
    pagerduty_routing_key: SecretStr = Field(
        SecretStr(""),
        description="PagerDuty integration (routing) key. TELLTALE_ALERTS_PAGERDUTY_ROUTING_KEY.",
    )
    metrics: list[str] = Field(
        list(analysis.HOURLY_METRICS),
        description="Metrics to scan (default: every hourly metric of the registry). JSON list. "
        "TELLTALE_ALERTS_METRICS.",
    )
    segments: list[str] = Field(
        list(SEGMENTS),
        description="Segment columns whose values are key segments. TELLTALE_ALERTS_SEGMENTS.",
    )
    lookback_hours: int = Field(
        72,
        ge=1,
        description="Hours each run scans, ending at the last complete hour; also the CUSUM's "
        "memory. TELLTALE_ALERTS_LOOKBACK_HOURS.",
    )
    settle_minutes: int = Field(
        10,
        ge=0,
        description="An hour counts as complete this long after it ends (late feedback). "
        "TELLTALE_ALERTS_SETTLE_MINUTES.",
    )
    baseline_days: int = Field(
        14, ge=7, description="Days the expectation is learnt from. TELLTALE_ALERTS_BASELINE_DAYS."
    )
    shift_multiple: float = Field(
        2.0,
        gt=0,
        description="The detector is tuned to this many times a metric's release threshold. "
        "TELLTALE_ALERTS_SHIFT_MULTIPLE.",
    )
    false_alarm_days: float = Field(
        90.0,
        gt=0,
        description="In-control days between false alarms, per series. "
        "TELLTALE_ALERTS_FALSE_ALARM_DAYS.",
    )
    cooldown_hours: int = Field(
        24, ge=0, description="Quiet hours after an alert. TELLTALE_ALERTS_COOLDOWN_HOURS."
    )
    min_history_days: int = Field(
        3,
        ge=1,
        description="Days before a new version is expected at its own level. "
        "TELLTALE_ALERTS_MIN_HISTORY_DAYS.",
    )
    min_segment_share: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="Least share of traffic for a segment value to be a key segment. "
        "TELLTALE_ALERTS_MIN_SEGMENT_SHARE.",
    )
    http_timeout_s: float = Field(
        10.0, gt=0, description="Webhook timeout. TELLTALE_ALERTS_HTTP_TIMEOUT_S."
    )
    http_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries after a 429, a 5xx or a dropped connection. "
        "TELLTALE_ALERTS_HTTP_RETRIES.",
    )
    source: str = Field("telltale", description="PagerDuty payload source. TELLTALE_ALERTS_SOURCE.")
    app_url: str = Field(
        "",
        description="Link to the Streamlit Alerts page, put in messages. TELLTALE_ALERTS_APP_URL.",
    )

    @classmethod
    def from_toml(cls, path: Path, **overrides: object) -> Self:
        """Settings from a TOML file (top-level keys or an ``[alerts]`` table), then
        ``overrides``; the environment fills what neither sets."""
        data = tomllib.loads(path.read_text())
        data = data.get("alerts", data)
        return cls(**{**data, **overrides})

    def policy(self) -> analysis.AlertPolicy:
        """The detector's policy from these settings."""
        return analysis.AlertPolicy(
            baseline_days=self.baseline_days,
            shift_multiple=self.shift_multiple,
            false_alarm_days=self.false_alarm_days,
            cooldown_hours=self.cooldown_hours,
            memory_hours=self.lookback_hours,
            min_history_days=self.min_history_days,
            min_segment_share=self.min_segment_share,
        )


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def _segment(alert: Mapping[str, Any]) -> str:
    if alert["segment"] == "all":
        return "all traffic"
    return f"{alert['segment']}={alert['segment_value']}"


def _hour(value: dt.datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC"


def describe_alert(alert: Mapping[str, Any]) -> str:
    """One line for a person: what moved, how much, where, since when."""
    line = (
        f"[{alert['severity']}] {alert['metric']} {alert['relative_shift']:+.1%} for "
        f"{alert['model_version']} ({_segment(alert)}): {alert['observed']:.4g} where "
        f"{alert['expected']:.4g} was expected ({alert['basis']}), since "
        f"{_hour(alert['opened_at'])}, detected {_hour(alert['detected_at'])}; "
        f"alert {alert['alert_id']}"
    )
    return f"{line}; {alert['note']}" if alert.get("note") else line


def slack_message(alert: Mapping[str, Any], *, app_url: str = "") -> dict[str, Any]:
    """A Slack incoming-webhook payload (``text`` fallback and Block Kit ``blocks``) for a new
    alert, or for its status change when ``status`` is not ``open``."""
    status = alert.get("status", "open")
    if status != "open":
        who = f" by {alert['updated_by']}" if alert.get("updated_by") else ""
        text = f"{status.capitalize()}{who}: {describe_alert(alert)}"
        return {"text": text, "blocks": [_section(text)]}
    title = (
        f"{alert['severity'].upper()}: {alert['metric']} {alert['relative_shift']:+.1%} for "
        f"{alert['model_version']} ({_segment(alert)})"
    )
    fields = [
        ("Metric", alert["metric"]),
        ("Model version", alert["model_version"]),
        ("Segment", _segment(alert)),
        ("Observed / expected", f"{alert['observed']:.4g} / {alert['expected']:.4g}"),
        ("Since", _hour(alert["opened_at"])),
        ("Detected", _hour(alert["detected_at"])),
    ]
    context = [f"alert `{alert['alert_id']}`", f"expected from {alert['basis']}"]
    if alert.get("note"):
        context.append(alert["note"])
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields],
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]},
    ]
    if app_url:
        blocks.append(_section(f"<{app_url}|Open the Alerts page>"))
    return {"text": describe_alert(alert), "blocks": blocks}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}


def pagerduty_event(
    alert: Mapping[str, Any], *, routing_key: str, source: str, app_url: str = ""
) -> dict[str, Any]:
    """A PagerDuty Events API v2 event: ``trigger`` for an open alert (deduplicated on the
    alert id), ``acknowledge`` or ``resolve`` when its status changed."""
    action = _PAGERDUTY_ACTION[alert.get("status", "open")]
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": alert["alert_id"],
    }
    if action != "trigger":
        return event
    event["payload"] = {
        "summary": describe_alert(alert)[:1024],
        "source": source,
        "severity": _PAGERDUTY_SEVERITY[alert["severity"]],
        "timestamp": alert["detected_at"].replace(tzinfo=dt.UTC).isoformat(),
        "component": alert["model_version"],
        "group": alert["metric"],
        "class": "regression",
        "custom_details": {k: _jsonable(alert[k]) for k in _DETAILS if k in alert},
    }
    event["client"] = "Telltale"
    if app_url:
        event["client_url"] = app_url
        event["links"] = [{"href": app_url, "text": "Telltale Alerts page"}]
    return event


def _jsonable(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC).isoformat()
    return value


# --------------------------------------------------------------------------------------------
# Sinks
# --------------------------------------------------------------------------------------------


class Sink(Protocol):
    """Somewhere alerts go. ``notify`` raises :class:`AlertDeliveryError` when it cannot."""

    name: str

    def notify(self, alert: Mapping[str, Any]) -> None:
        """Deliver a new alert (``status`` open) or a change of its status."""


@dataclass
class StdoutSink:
    """One line per alert on a stream (standard output: cron mails it)."""

    stream: TextIO = sys.stdout
    name: str = "stdout"

    def notify(self, alert: Mapping[str, Any]) -> None:
        """Print the alert's line; a status change is prefixed with it."""
        status = alert.get("status", "open")
        prefix = "" if status == "open" else f"{status} by {alert.get('updated_by', '')}: "
        print(prefix + describe_alert(alert), file=self.stream, flush=True)


@dataclass
class JsonlSink:
    """One JSON object per alert or change, appended to a file (for log shippers)."""

    path: Path
    name: str = "jsonl"

    def notify(self, alert: Mapping[str, Any]) -> None:
        """Append the alert as a JSON line with ``event`` = its status."""
        record = {
            "event": alert.get("status", "open"),
            **{k: _jsonable(v) for k, v in alert.items()},
        }
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        except OSError as e:
            raise AlertDeliveryError(f"cannot append to {self.path}: {e}") from e


class _Webhook:
    """POST JSON with retries (429, 5xx, dropped connections), errors without the URL's
    secret parts."""

    def __init__(self, url: str, settings: AlertSettings, client: httpx.Client | None) -> None:
        self._url = url
        self._retries = settings.http_retries
        self._client = client or httpx.Client(timeout=settings.http_timeout_s)

    @property
    def where(self) -> str:
        """The URL without path or credentials (Slack's path is its token)."""
        parts = urlsplit(self._url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"

    def post(self, payload: Mapping[str, Any]) -> None:
        for attempt in range(self._retries + 1):
            try:
                response = self._client.post(self._url, json=payload)
            except httpx.HTTPError as e:
                problem = f"{type(e).__name__}"
            else:
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    break  # the payload or the key is wrong: retrying cannot help
            if attempt < self._retries:
                time.sleep(min(2.0**attempt * 0.5, 5.0))
        raise AlertDeliveryError(f"{self.where} did not take the alert: {problem}")


class SlackSink:
    """A Slack incoming webhook (or anything that takes its payload)."""

    name = "slack"

    def __init__(
        self, url: SecretStr, settings: AlertSettings, client: httpx.Client | None = None
    ) -> None:
        self._hook = _Webhook(url.get_secret_value(), settings, client)
        self._app_url = settings.app_url

    def notify(self, alert: Mapping[str, Any]) -> None:
        """Post the Slack message of the alert or its change."""
        self._hook.post(slack_message(alert, app_url=self._app_url))


class PagerDutySink:
    """PagerDuty Events API v2: trigger, acknowledge and resolve on the alert id."""

    name = "pagerduty"

    def __init__(
        self,
        url: str,
        routing_key: SecretStr,
        settings: AlertSettings,
        client: httpx.Client | None = None,
    ) -> None:
        if not routing_key.get_secret_value():
            raise AlertDeliveryError(
                "the pagerduty sink needs a routing key: set TELLTALE_ALERTS_PAGERDUTY_ROUTING_KEY"
            )
        self._hook = _Webhook(url, settings, client)
        self._key = routing_key
        self._settings = settings

    def notify(self, alert: Mapping[str, Any]) -> None:
        """Send the Events v2 event of the alert or its change."""
        self._hook.post(
            pagerduty_event(
                alert,
                routing_key=self._key.get_secret_value(),
                source=self._settings.source,
                app_url=self._settings.app_url,
            )
        )


def build_sinks(
    specs: Sequence[str], settings: AlertSettings, *, client: httpx.Client | None = None
) -> list[Sink]:
    """Sinks from their specs (see :attr:`AlertSettings.sinks`)."""
    sinks: list[Sink] = []
    for spec in specs:
        kind, _, target = spec.partition(":")
        if kind == "stdout" and not target:
            sinks.append(StdoutSink())
        elif kind == "jsonl" and target:
            sinks.append(JsonlSink(Path(target)))
        elif kind == "slack":
            url = SecretStr(target) if target else settings.slack_webhook_url
            if not url.get_secret_value():
                raise AlertDeliveryError(
                    "the slack sink needs a URL: slack:URL or TELLTALE_ALERTS_SLACK_WEBHOOK_URL"
                )
            sinks.append(SlackSink(url, settings, client))
        elif kind == "pagerduty":
            url = target or settings.pagerduty_url
            sinks.append(PagerDutySink(url, settings.pagerduty_routing_key, settings, client))
        else:
            raise AlertDeliveryError(
                f"unknown sink {spec.split(':', 1)[0]!r}: use stdout, jsonl:PATH, slack[:URL] "
                "or pagerduty[:URL]"
            )
    return sinks


def _deliver(sinks: Sequence[Sink], alert: Mapping[str, Any]) -> list[str]:
    """Give the alert to every sink; the failures, as messages."""
    failures = []
    for sink in sinks:
        try:
            sink.notify(alert)
        except AlertDeliveryError as e:
            log.warning("alert %s not delivered to %s: %s", alert["alert_id"], sink.name, e)
            failures.append(f"{sink.name}: {e}")
    return failures


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def scan_window(
    settings: AlertSettings,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    lookback_hours: int | None = None,
    now: dt.datetime | None = None,
) -> tuple[dt.datetime, dt.datetime]:
    """The hours a run scans, ``[since, until)`` in UTC: by default the ``lookback_hours``
    ending at the last hour complete ``settle_minutes`` ago."""
    if until is None:
        now = now or dt.datetime.now(dt.UTC)
        until = (now - dt.timedelta(minutes=settings.settle_minutes)).replace(
            minute=0, second=0, microsecond=0
        )
    until = _utc(until)
    if since is None:
        since = until - dt.timedelta(hours=lookback_hours or settings.lookback_hours)
    return _utc(since), until


def _utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _cells(
    wh: warehouse.Warehouse,
    units: set[analysis.Unit],
    settings: AlertSettings,
    lo: dt.datetime,
    hi: dt.datetime,
) -> dict[analysis.Unit, pl.DataFrame]:
    """Hourly cells per version and segment values, one rollup read per unit."""
    out = {}
    if analysis.Unit.RESPONSE in units:
        out[analysis.Unit.RESPONSE] = warehouse.hourly_rollup(
            wh, since=lo, until=hi, group_by=["model_version", *settings.segments]
        )
    if analysis.Unit.SESSION in units:
        dims = [s for s in settings.segments if s != "intent"]
        out[analysis.Unit.SESSION] = warehouse.hourly_sessions(
            wh, since=lo, until=hi, group_by=["model_version", *dims]
        )
    return out


def _scan(
    wh: warehouse.Warehouse,
    settings: AlertSettings,
    metrics: Sequence[str],
    since: dt.datetime,
    until: dt.datetime,
) -> tuple[list[analysis.RegressionScan], list[tuple[str, str]]]:
    wanted = [analysis.get_metric(name) for name in metrics]
    policy = settings.policy()
    lo = since - dt.timedelta(days=policy.baseline_days)
    cells = _cells(wh, {m.unit for m in wanted}, settings, lo, until)
    notes = warehouse.annotations(wh, since=since, until=until)
    scans, skipped = [], []
    for m in wanted:
        if m.unit not in cells:
            skipped.append((m.name, f"per {m.unit.value}: not an hourly rate"))
            continue
        frame = cells[m.unit]
        try:
            scans.append(
                analysis.detect_regressions(
                    frame,
                    metric=m,
                    since=since,
                    until=until,
                    segments=[s for s in settings.segments if s in frame.columns],
                    policy=policy,
                    annotations=notes,
                )
            )
        except analysis.InsufficientDataError as e:
            skipped.append((m.name, str(e)))
    return scans, skipped


@dataclass(frozen=True)
class AlertRun:
    """What one ``telltale alerts run`` did."""

    since: dt.datetime
    until: dt.datetime
    scans: tuple[analysis.RegressionScan, ...]
    skipped: tuple[tuple[str, str], ...]
    """Metrics not scanned, with why (too little history, not an hourly rate)."""
    found: pl.DataFrame
    """Every alarm of the scans, new or not."""
    new: pl.DataFrame
    """Alarms that are new alerts (recorded, unless a dry run)."""
    sent: pl.DataFrame
    """Alerts delivered to every sink in this run (new ones, and earlier ones a sink missed)."""
    failures: tuple[str, ...]
    dry_run: bool

    def summary(self) -> str:
        """One paragraph for the log."""
        series = sum(s.diagnostics.height for s in self.scans)
        text = (
            f"scanned {len(self.scans)} metric(s), {series} series, from "
            f"{_hour(self.since)} to {_hour(self.until)}: {self.found.height} alarm(s), "
            f"{self.new.height} new alert(s)"
        )
        text += (
            " (dry run: nothing recorded or sent)" if self.dry_run else f", {self.sent.height} sent"
        )
        for metric, why in self.skipped:
            text += f"\nskipped {metric}: {why.removeprefix(metric + ': ')}"
        for failure in self.failures:
            text += f"\nnot delivered: {failure}"
        return text


def run_alerts(
    wh: warehouse.Warehouse,
    settings: AlertSettings,
    *,
    since: dt.datetime,
    until: dt.datetime,
    metrics: Sequence[str] | None = None,
    sinks: Sequence[Sink] = (),
    dry_run: bool = False,
    by: str = "telltale alerts run",
) -> AlertRun:
    """Scan ``[since, until)``, record the new alerts and deliver every undelivered one."""
    scans, skipped = _scan(wh, settings, metrics or settings.metrics, since, until)
    found = (
        pl.concat([s.alarms for s in scans])
        if scans
        else pl.DataFrame(schema=analysis.ALARM_SCHEMA)
    )
    recorded = warehouse.alerts(wh)
    new = analysis.select_new_alerts(found, recorded, cooldown_hours=settings.cooldown_hours)
    if dry_run:
        return AlertRun(
            since, until, tuple(scans), tuple(skipped), found, new, new.clear(), (), True
        )
    warehouse.record_alerts(wh, new, by=by)
    pending = warehouse.alerts(wh, status="open").filter(pl.col("notified_at").is_null())
    delivered, failures = [], []
    for alert in pending.sort("detected_at").iter_rows(named=True):
        problems = _deliver(sinks, alert)
        if problems:
            failures += [f"alert {alert['alert_id']}: {p}" for p in problems]
        else:
            delivered.append(alert["alert_id"])
    warehouse.mark_alerts_notified(wh, delivered, by=by)
    sent = pending.filter(pl.col("alert_id").is_in(delivered))
    return AlertRun(
        since, until, tuple(scans), tuple(skipped), found, new, sent, tuple(failures), False
    )


def change_status(
    wh: warehouse.Warehouse,
    alert_id: str,
    status: str,
    *,
    by: str,
    note: str = "",
    sinks: Sequence[Sink] = (),
) -> tuple[dict[str, Any], list[str]]:
    """Acknowledge or resolve an alert and tell the sinks (PagerDuty acknowledges or resolves
    the incident); the alert's new state and the delivery failures."""
    row = warehouse.set_alert_status(wh, alert_id, status, by=by, note=note).to_dicts()[0]
    return row, _deliver(sinks, row)


def alert_chart(
    wh: warehouse.Warehouse,
    alert: Mapping[str, Any],
    settings: AlertSettings | None = None,
    *,
    hours_before: int = 48,
    hours_after: int = 24,
) -> pl.DataFrame:
    """The series behind one alert (a row of :func:`warehouse.alerts`): per hour, observed,
    expected, its band (+-2 sd), the CUSUM statistic and threshold, from ``hours_before`` its
    start to ``hours_after`` its detection (as the detector saw them then)."""
    settings = settings or AlertSettings()
    since = _utc(alert["opened_at"]) - dt.timedelta(hours=hours_before)
    until = _utc(alert["detected_at"]) + dt.timedelta(hours=hours_after + 1)
    scans, skipped = _scan(wh, settings, [alert["metric"]], since, until)
    if not scans:
        raise analysis.InsufficientDataError(skipped[0][1] if skipped else "nothing to scan")
    return scans[0].series.filter(
        (pl.col("model_version") == alert["model_version"])
        & (pl.col("segment") == alert["segment"])
        & (pl.col("segment_value") == alert["segment_value"])
    )
