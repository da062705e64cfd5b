"""Regression alerts: the detector on simulated traffic ingested through the backfill path, the
`telltale alerts` commands as a user runs them, and the Slack and PagerDuty payloads as a local
HTTP receiver on 127.0.0.1 gets them."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import analysis
import warehouse
from app.alerting import (
    AlertDeliveryError,
    AlertSettings,
    build_sinks,
    pagerduty_event,
    run_alerts,
    slack_message,
)
from ingest import EventSink, Scenario, backfill, write_files
from ingest.simulate import Effect, PopulationShift

REPO = Path(__file__).resolve().parent.parent
CANDIDATE = "assistant-2026-09"
SWITCH = dt.datetime(2026, 9, 8, tzinfo=dt.UTC)
RESPONSE_METRICS = ("thumbs_down_rate", "rating_rate", "retry_rate", "refusal_rate")
ROUTING_KEY = "pd-routing-key-do-not-print"


# =============================================================================
# A local webhook receiver (Slack and PagerDuty stand-ins)
# =============================================================================


class Receiver:
    """Records every JSON POST; answers with the queued status codes first, then 202."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict]] = []
        self.answers: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((self.path, json.loads(body)))
                code = outer.answers.pop(0) if outer.answers else 202
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "success"}')

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def sent_to(self, path: str) -> list[dict]:
        return [body for p, body in self.posts if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


# =============================================================================
# Simulated warehouses (small: the calibration runs are in bench/alerts.py)
# =============================================================================


def small_scenario(start: dt.date, days: int) -> Scenario:
    """The default scenario with 2,000 users and nothing planted yet."""
    base = Scenario.default()
    return base.evolve(
        start=start,
        days=days,
        population=base.population.model_copy(
            update={"initial_users": 2000, "new_users_per_day": 25.0}
        ),
        rollout=None,
        population_shift=None,
        ui_release=None,
        holidays=(),
        truth_samples=20_000,
    )


def ingested(tmp: Path, scenario: Scenario, seed: int) -> str:
    """The scenario's events through the backfill path into a fresh embedded warehouse."""
    sim = write_files(scenario, tmp / "sim", seed=seed)
    url = f"chdb://{tmp}/wh"
    with warehouse.connect(url) as wh:
        warehouse.migrate(wh)
        backfill(EventSink(wh), list(sim.event_files), progress=False)
    return url


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> str:
    """Two weeks on the baseline, then a full switch on 2026-09-08 to a candidate whose
    responses get more thumbs down (+0.8 log-odds); the warehouse URL."""
    base = small_scenario(dt.date(2026, 8, 25), 16)
    rollout = Scenario.default().rollout.model_copy(  # type: ignore[union-attr]
        update={
            "stages": (),
            "full_switch": SWITCH.date(),
            "effects": (Effect(metric="thumbs_down", size=0.8),),
        }
    )
    return ingested(tmp_path_factory.mktemp("planted"), base.evolve(rollout=rollout), seed=11)


def telltale(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200", **env},
    )


@pytest.fixture
def fresh(planted) -> str:
    """The planted warehouse with no alerts yet (tests that record alerts share it)."""
    with warehouse.connect(planted) as wh:
        wh.command(f"TRUNCATE TABLE {wh.database}.alerts")
    return planted


# =============================================================================
# The planted rise pages, once
# =============================================================================

RUN = ["alerts", "run", "--since", "2026-09-08", "--until", "2026-09-10",
       "--metric", "thumbs_down_rate"]  # fmt: skip


def test_a_planted_thumbs_down_rise_pages_once(fresh, receiver, tmp_path):
    url = fresh
    sinks = ["--sink", f"slack:{receiver.url}/slack", "--sink", f"pagerduty:{receiver.url}/pd",
             "--sink", f"jsonl:{tmp_path / 'alerts.jsonl'}"]  # fmt: skip
    env = {"TELLTALE_ALERTS_PAGERDUTY_ROUTING_KEY": ROUTING_KEY}
    first = telltale(*RUN, *sinks, "-w", url, cwd=tmp_path, **env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert ROUTING_KEY not in first.stdout + first.stderr

    events = receiver.sent_to("/pd")
    assert events, first.stderr
    overall = [e for e in events if e["payload"]["custom_details"]["segment"] == "all"]
    assert len(overall) == 1  # the candidate over all traffic, once
    event = overall[0]
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["payload"]["component"] == CANDIDATE
    assert event["payload"]["group"] == "thumbs_down_rate"
    assert event["payload"]["severity"] == "critical"  # +40% or more of a 5% threshold
    detected = dt.datetime.fromisoformat(event["payload"]["timestamp"])
    opened = dt.datetime.fromisoformat(event["payload"]["custom_details"]["opened_at"])
    assert SWITCH <= opened <= detected < SWITCH + dt.timedelta(hours=24)
    assert event["payload"]["custom_details"]["relative_shift"] > 0.2
    # every sink got every alert, under one id per alert
    ids = {e["dedup_key"] for e in events}
    lines = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert {line["alert_id"] for line in lines} == ids
    assert len(receiver.sent_to("/slack")) == len(events) == len(ids)
    assert all(CANDIDATE in m["text"] for m in receiver.sent_to("/slack"))

    # cron an hour later, and again over a window that starts later: nothing new is sent
    for window in (RUN, [*RUN[:2], "--since", "2026-09-08 06:00:00", *RUN[4:]]):
        again = telltale(*window, *sinks, "-w", url, cwd=tmp_path, **env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "0 new alert(s), 0 sent" in again.stderr
    assert len(receiver.posts) == 2 * len(ids)


def test_acknowledge_and_resolve_round_trip(fresh, receiver, tmp_path):
    url = fresh
    env = {"TELLTALE_ALERTS_PAGERDUTY_ROUTING_KEY": ROUTING_KEY}
    config = AlertSettings(metrics=["thumbs_down_rate"])
    window = {"since": SWITCH, "until": SWITCH + dt.timedelta(days=2)}
    with warehouse.connect(url) as wh:
        assert run_alerts(wh, config, **window).new.height > 0
    listed = telltale("alerts", "list", "--status", "open", "--format", "json", "-w", url,
                      cwd=tmp_path)  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-3000:]
    alert = next(a for a in json.loads(listed.stdout) if a["segment"] == "all")
    alert_id = alert["alert_id"]

    pd = ["--sink", f"pagerduty:{receiver.url}/pd"]
    ack = telltale("alerts", "ack", alert_id, "--by", "alice", "--note", "looking", *pd,
                   "-w", url, cwd=tmp_path, **env)  # fmt: skip
    assert ack.returncode == 0, ack.stderr[-3000:]
    assert receiver.sent_to("/pd")[-1] == {
        "routing_key": ROUTING_KEY,
        "event_action": "acknowledge",
        "dedup_key": alert_id,
    }
    acked = telltale("alerts", "list", "--status", "acknowledged", "-w", url, cwd=tmp_path)
    assert alert_id in acked.stdout and "alice" in acked.stdout

    slack = ["--sink", f"slack:{receiver.url}/slack"]
    done = telltale("alerts", "resolve", alert_id, "--by", "bob", *pd, *slack, "-w", url,
                    cwd=tmp_path, **env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert receiver.sent_to("/pd")[-1]["event_action"] == "resolve"
    assert receiver.sent_to("/slack")[-1]["text"].startswith("Resolved by bob: ")

    with warehouse.connect(url) as wh:
        history = warehouse.alert_history(wh, alert_id)
        assert history["status"].to_list() == ["open", "open", "acknowledged", "resolved"]
        assert history["notified_at"][1] is not None  # the run's delivery mark
        assert history["updated_by"].to_list()[2:] == ["alice", "bob"]
        assert history["note"][2] == "looking"
        # the same shift, found again after it was resolved, is not a new alert
        assert run_alerts(wh, config, **window).new.height == 0
    unknown = telltale("alerts", "resolve", "nope", "-w", url, cwd=tmp_path)
    assert unknown.returncode == 1 and "no alert 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_an_alert_a_sink_missed_is_sent_by_the_next_run(fresh, receiver):
    url = fresh
    config = AlertSettings(metrics=["thumbs_down_rate"], http_retries=1)
    since, until = SWITCH, SWITCH + dt.timedelta(days=2)
    receiver.answers = [503] * 100  # down for the whole first run
    with warehouse.connect(url) as wh:
        sinks = build_sinks([f"slack:{receiver.url}/hook"], config)
        first = run_alerts(wh, config, since=since, until=until, sinks=sinks)
        assert first.new.height > 0 and first.sent.height == 0
        assert len(first.failures) == first.new.height
        assert "HTTP 503" in first.failures[0] and "/hook" not in first.failures[0]
        assert warehouse.alerts(wh, status="open")["notified_at"].is_null().all()
        receiver.answers = []
        second = run_alerts(wh, config, since=since, until=until, sinks=sinks)
    assert second.new.height == 0  # already recorded ...
    assert set(second.sent["alert_id"]) == set(first.new["alert_id"])  # ... and now delivered
    assert not second.failures


# =============================================================================
# Changes that are not the model's do not page
# =============================================================================

QUIET_SINCE = dt.datetime(2026, 9, 11, tzinfo=dt.UTC)  # a Friday: the scan takes the weekend


def quiet_run(url: str) -> tuple[object, pl.DataFrame]:
    """A dry run over the three days from QUIET_SINCE, and the hourly cells it read."""
    config = AlertSettings(metrics=list(RESPONSE_METRICS))
    with warehouse.connect(url) as wh:
        result = run_alerts(
            wh,
            config,
            since=QUIET_SINCE,
            until=QUIET_SINCE + dt.timedelta(days=3),
            dry_run=True,
        )
        cells = warehouse.hourly_rollup(
            wh,
            since=QUIET_SINCE - dt.timedelta(days=14),
            until=QUIET_SINCE + dt.timedelta(days=3),
            group_by=["cohort"],
        )
    return result, cells


def test_a_release_during_strong_seasonality_does_not_page(tmp_path):
    """Thumbs down at night and at weekends far above the day's; a new version with no effect
    takes over on Friday night. Nothing pages, though the hours swing by more than the shift
    the detector is tuned to."""
    base = small_scenario(dt.date(2026, 8, 28), 17)
    scenario = base.evolve(
        seasonality=base.seasonality.model_copy(
            update={"night_thumbs_down_log_odds": 0.6, "weekend_thumbs_down_log_odds": 0.4}
        ),
        rollout=Scenario.default().rollout.model_copy(  # type: ignore[union-attr]
            update={"stages": (), "full_switch": QUIET_SINCE.date(), "effects": ()}
        ),
    )
    result, cells = quiet_run(ingested(tmp_path, scenario, seed=12))
    assert len(result.scans) == len(RESPONSE_METRICS) and not result.skipped
    assert result.found.height == 0, result.found
    # not vacuous: the weekend's thumbs-down rate is well above the week's
    weekend = cells.with_columns(weekend=pl.col("hour").dt.weekday() >= 6)
    rates = weekend.group_by("weekend").agg(pl.col("thumbs_down").sum() / pl.col("ratings").sum())
    by = dict(rates.iter_rows())
    assert by[True] / by[False] - 1 > 0.10  # the detector's design shift for this metric


def test_an_influx_of_different_users_does_not_page(tmp_path):
    """5,000 new users in a day, mostly pt-BR and ja-JP on Android, who behave like other new
    users of their locale and platform: the thumbs-down rate of all traffic jumps, and nothing
    pages, because the expectation follows the mix."""
    base = small_scenario(dt.date(2026, 8, 28), 17)
    scenario = base.evolve(
        population_shift=PopulationShift(
            date=QUIET_SINCE.date(),
            days=1,
            extra_users=5000,
            thumbs_down_log_odds=0.0,
            locales={"pt-BR": 0.5, "ja-JP": 0.5},
            platforms={"android": 0.8, "ios": 0.2},
        )
    )
    result, cells = quiet_run(ingested(tmp_path, scenario, seed=13))
    assert len(result.scans) == len(RESPONSE_METRICS) and not result.skipped
    assert result.found.height == 0, result.found
    after = cells.with_columns(after=pl.col("hour") >= QUIET_SINCE)
    mix = after.group_by("after").agg(
        (pl.col("thumbs_down").sum() / pl.col("ratings").sum()).alias("down"),
        (pl.col("ratings").filter(pl.col("cohort") == "new").sum() / pl.col("ratings").sum()).alias(
            "new_share"
        ),
    )
    by = {r["after"]: r for r in mix.iter_rows(named=True)}
    assert by[True]["down"] / by[False]["down"] - 1 > 0.10  # a naive comparison would page
    assert by[True]["new_share"] > 0.5 > by[False]["new_share"]


# =============================================================================
# Payloads and sinks
# =============================================================================

ALERT = {
    "alert_id": "0123456789abcdef",
    "metric": "thumbs_down_rate",
    "model_version": CANDIDATE,
    "segment": "intent",
    "segment_value": "coding",
    "opened_at": dt.datetime(2026, 10, 6, 3),
    "detected_at": dt.datetime(2026, 10, 6, 11),
    "severity": "major",
    "expected": 0.30,
    "observed": 0.36,
    "shift": 0.06,
    "relative_shift": 0.2,
    "statistic": 7.1,
    "threshold": 6.2,
    "basis": "concurrent",
    "baseline_version": "assistant-2026-08",
    "segments_firing": 1,
    "note": "during: rating UI release (ui_release)",
}


def test_slack_and_pagerduty_payloads_reach_the_receiver(receiver):
    config = AlertSettings(
        pagerduty_routing_key=ROUTING_KEY, app_url="http://127.0.0.1:8501/alerts"
    )
    slack, pd = build_sinks([f"slack:{receiver.url}/s", f"pagerduty:{receiver.url}/p"], config)
    slack.notify(ALERT)
    pd.notify(ALERT)
    message = receiver.sent_to("/s")[0]
    assert message == slack_message(ALERT, app_url=config.app_url)
    assert "+20.0%" in message["text"] and "intent=coding" in message["text"]
    kinds = [b["type"] for b in message["blocks"]]
    assert kinds == ["header", "section", "context", "section"]
    assert len(message["blocks"][0]["text"]["text"]) <= 150  # Slack's header limit
    assert any("0.36 / 0.3" in f["text"] for f in message["blocks"][1]["fields"])
    event = receiver.sent_to("/p")[0]
    assert event == pagerduty_event(
        ALERT, routing_key=ROUTING_KEY, source="telltale", app_url=config.app_url
    )
    assert set(event) == {"routing_key", "event_action", "dedup_key", "payload", "client",
                          "client_url", "links"}  # fmt: skip
    assert event["payload"]["severity"] == "error"  # PagerDuty's word for major
    assert event["payload"]["timestamp"] == "2026-10-06T11:00:00+00:00"
    assert {"summary", "source", "severity", "timestamp", "component", "group", "class",
            "custom_details"} == set(event["payload"])  # fmt: skip
    assert len(event["payload"]["summary"]) <= 1024
    resolved = pagerduty_event(
        {**ALERT, "status": "resolved"}, routing_key=ROUTING_KEY, source="telltale"
    )
    assert resolved == {"routing_key": ROUTING_KEY, "event_action": "resolve",
                        "dedup_key": ALERT["alert_id"]}  # fmt: skip


def test_webhooks_retry_what_can_succeed_and_hide_their_tokens(receiver):
    config = AlertSettings(http_retries=2)
    secret_path = "/services/T000/B000/very-secret-token"
    (hook,) = build_sinks([f"slack:{receiver.url}{secret_path}"], config)
    receiver.answers = [503, 429]
    hook.notify(ALERT)  # third time lucky
    assert len(receiver.sent_to(secret_path)) == 3
    receiver.answers = [400]
    with pytest.raises(AlertDeliveryError, match="HTTP 400") as failure:
        hook.notify(ALERT)
    assert "very-secret-token" not in str(failure.value)
    assert len(receiver.sent_to(secret_path)) == 4  # a 400 is not retried
    with pytest.raises(AlertDeliveryError, match="routing key"):
        build_sinks(["pagerduty"], AlertSettings())
    with pytest.raises(AlertDeliveryError, match="unknown sink"):
        build_sinks(["email:me@example.com"], config)


def test_settings_come_from_the_environment_and_hide_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("TELLTALE_ALERTS_PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
    monkeypatch.setenv("TELLTALE_ALERTS_SINKS", '["stdout", "pagerduty"]')
    toml = tmp_path / "alerts.toml"
    toml.write_text("[alerts]\nfalse_alarm_days = 30\nmetrics = ['retry_rate']\n")
    config = AlertSettings.from_toml(toml)
    assert config.sinks == ["stdout", "pagerduty"]
    assert config.policy().false_alarm_days == 30 and config.metrics == ["retry_rate"]
    assert ROUTING_KEY not in repr(config) and ROUTING_KEY not in str(config.model_dump())


# =============================================================================
# The detector's parts
# =============================================================================


@settings(max_examples=50, deadline=None)
@given(
    c=st.floats(0.05, 3.0),
    days=st.floats(1.0, 400.0),
    bias=st.floats(0.0, 0.3),
)
def test_thresholds_rise_with_the_run_length_and_the_fit_error(c, days, bias):
    h = analysis.cusum_threshold(c * c, days * 24)
    assert analysis.cusum_threshold(c * c, days * 48) >= h
    assert analysis.cusum_threshold(c * c, days * 24, bias_sd=bias) >= h - 1e-9


def test_threshold_gives_the_stated_run_length_on_gaussian_increments():
    """Simulated in-control CUSUMs stop, on average, after about the run length asked for."""
    rng = np.random.default_rng(0)
    c, arl0 = 0.6, 500.0
    h = analysis.cusum_threshold(c * c, arl0)
    steps = c * rng.standard_normal((400, 4000)) - c * c / 2
    lengths = []
    for walk in steps:
        s = 0.0
        for i, step in enumerate(walk):
            s = max(0.0, s + step)
            if s >= h:
                lengths.append(i + 1)
                break
        else:
            lengths.append(len(walk))
    assert 0.8 * arl0 < np.mean(lengths) < 1.25 * arl0


def test_delay_matches_simulated_cusums_after_the_design_shift():
    """Once the shift the detector is tuned to has begun, simulated CUSUMs alarm after about
    the delay :func:`analysis.cusum_delay_hours` predicts (the same Siegmund approximation)."""
    rng = np.random.default_rng(1)
    for c, arl0 in ((0.5, 2160.0), (0.9, 720.0), (1.4, 720.0)):
        h = analysis.cusum_threshold(c * c, arl0)
        steps = c * rng.standard_normal((4000, 400)) + c * c / 2  # z ~ N(c, 1): shifted by D
        walks = np.zeros(len(steps))
        stopped = np.full(len(steps), len(steps[0]))
        for i in range(steps.shape[1]):
            walks = np.maximum(0.0, walks + steps[:, i])
            stopped = np.where((walks >= h) & (stopped == len(steps[0])), i + 1, stopped)
        assert (stopped < len(steps[0])).all()
        predicted = analysis.cusum_delay_hours(c * c, h)
        assert 0.85 * predicted < stopped.mean() < 1.15 * predicted, (c, predicted)


alarm_rows = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 200)), min_size=1, max_size=30
)


@settings(max_examples=100, deadline=None)
@given(rows=alarm_rows, cooldown=st.integers(0, 48))
def test_new_alerts_respect_open_alerts_and_the_cooldown(rows, cooldown):
    alarms = pl.DataFrame(
        [
            {
                "alert_id": f"{series}-{hour}",
                "metric": "thumbs_down_rate",
                "model_version": CANDIDATE,
                "segment": "locale",
                "segment_value": series,
                "detected_at": dt.datetime(2026, 9, 1) + dt.timedelta(hours=hour),
            }
            for series, hour in rows
        ]
    ).unique("alert_id")
    empty = alarms.clear().with_columns(pl.lit("open").alias("status"))
    first = analysis.select_new_alerts(alarms, empty, cooldown_hours=cooldown)
    assert first.height >= 1
    # with every series' first alert still open, nothing more is new
    opened = first.with_columns(pl.lit("open").alias("status"))
    assert analysis.select_new_alerts(alarms, opened, cooldown_hours=cooldown).height == 0
    # once resolved, only alarms at least a cool-down after the last alert come through
    resolved = first.with_columns(pl.lit("resolved").alias("status"))
    again = analysis.select_new_alerts(alarms, resolved, cooldown_hours=cooldown)
    last = dict(resolved.group_by("segment_value").agg(pl.col("detected_at").max()).iter_rows())
    for row in again.iter_rows(named=True):
        assert row["detected_at"] >= last[row["segment_value"]] + dt.timedelta(hours=cooldown)


@pytest.mark.parametrize(
    ("shift", "threshold", "overall", "firing", "severity"),
    [
        (0.06, 0.05, False, 1, "minor"),
        (0.11, 0.05, False, 1, "major"),
        (0.06, 0.05, False, 2, "major"),
        (0.11, 0.05, True, 0, "critical"),
        (-0.41, 0.10, False, 1, "critical"),
        (0.06, 0.05, False, 4, "critical"),
    ],
)
def test_severity_grows_with_the_shift_and_the_segments_firing(
    shift, threshold, overall, firing, severity
):
    assert analysis.severity_of(shift, threshold, overall=overall, firing=firing) == severity


def test_synthetic_step_is_found_where_it_starts():
    """Known hourly rates with daily and weekly cycles in two locales; a 30% rise in one
    locale from a known hour is found there, starting within a few hours of the step, and
    the other locale stays quiet."""
    rng = np.random.default_rng(7)
    hours = pl.datetime_range(
        dt.datetime(2026, 9, 1), dt.datetime(2026, 9, 19), "1h", eager=True, closed="left"
    )
    step = dt.datetime(2026, 9, 16, 6)
    rows = []
    for locale, base in (("en-US", 0.25), ("ja-JP", 0.32)):
        for t in hours:
            angle = 2 * np.pi * t.hour / 24
            rate = base * (1 + 0.2 * np.sin(angle) + 0.1 * (t.weekday() >= 5))
            if locale == "ja-JP" and t >= step:
                rate *= 1.3
            ratings = rng.poisson(80 * (1.2 + np.cos(angle)))
            rows.append((t, "m1", locale, int(rng.binomial(ratings, rate)), ratings))
    cells = pl.DataFrame(
        rows, schema=["hour", "model_version", "locale", "thumbs_down", "ratings"], orient="row"
    )
    scan = analysis.detect_regressions(
        cells,
        metric="thumbs_down_rate",
        since=dt.datetime(2026, 9, 15),
        until=dt.datetime(2026, 9, 19),
        segments=["locale"],
    )
    assert set(scan.alarms["segment_value"]) <= {"ja-JP", "all"}
    ja = scan.alarms.filter(pl.col("segment_value") == "ja-JP").row(0, named=True)
    assert abs((ja["opened_at"] - step).total_seconds()) <= 6 * 3600
    assert ja["detected_at"] - step <= dt.timedelta(hours=12)
    assert 0.15 < ja["relative_shift"] < 0.5
    assert ja["basis"] == "seasonal"
    assert "ja-JP" in scan.summary("markdown") and scan.to_frame().height == scan.alarms.height
    chart = scan.series.filter(pl.col("segment_value") == "en-US")
    assert (chart["statistic"] < chart["threshold"]).all()
    assert ((chart["lower"] < chart["expected"]) & (chart["expected"] < chart["upper"])).all()
