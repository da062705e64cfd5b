"""The one-command demo: two months of simulated product traffic through every part of Telltale.

1. simulate ~60 days (a staged A/B of a new model, its full switch, an influx of new users, a UI
   release and a holiday, every effect planted and written to ``truth.json``);
2. ingest them through the real ingest path (the backfill) into the embedded warehouse;
3. record the product changes a team would have annotated;
4. replay a sample of production prompts on the candidate, beside the production model replayed
   for the noise floor, and judge the answers pairwise: against a **simulated** candidate served
   over real HTTP on 127.0.0.1 (labelled so in every answer), or a real OpenAI-compatible endpoint
   with ``candidate_url``;
5. attribute every metric across the full switch;
6. run the regression alerts over the two months;
7. write the weekly release review of the switch week;

then open the app. Every step reports progress; the set-up time is printed at the end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console

import analysis
import shadow
import warehouse
from app.alerting import AlertSettings, run_alerts
from app.attribution import attribute_segments
from app.report import weekly_report
from ingest import EventSink, Scenario, backfill, scenario_annotations, write_files

__all__ = ["DemoSettings", "run_demo"]

STEPS = 7


@dataclass(frozen=True)
class DemoSettings:
    """What the demo simulates and where it replays."""

    days: int = 60
    start: dt.date = dt.date(2026, 8, 21)
    users: int = 8000
    seed: int = 7
    per_stratum: int = 40
    candidate_url: str | None = None
    candidate_model: str | None = None
    reports: Path = Path(".telltale/reports")


def _step(console: Console, n: int, text: str) -> Callable[[], None]:
    console.print(f"[bold]{n}/{STEPS}[/] {text}")
    started = time.perf_counter()

    def done() -> None:
        console.print(f"    [dim]{time.perf_counter() - started:.1f} s[/]")

    return done


def run_demo(wh: warehouse.Warehouse, settings: DemoSettings, console: Console) -> dict[str, Any]:
    """Run the seven steps on ``wh``; what each produced, for the closing summary."""
    base = Scenario.default()
    sc = base.evolve(
        start=settings.start,
        days=settings.days,
        population=base.population.model_copy(
            update={
                "initial_users": settings.users,
                "new_users_per_day": settings.users / 80,
            }
        ),
    )
    rollout = sc.rollout
    assert rollout is not None and rollout.full_switch is not None
    switch = dt.datetime.combine(rollout.full_switch, dt.time())
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="telltale-demo-") as tmp:
        done = _step(
            console, 1, f"simulating {settings.days} days of traffic (seed {settings.seed})"
        )
        sim = write_files(sc, Path(tmp), seed=settings.seed, fmt="jsonl.gz", progress=True)
        console.print(f"    {sim.total:,} events; planted effects in truth.json")
        done()
        done = _step(console, 2, "ingesting through the backfill path")
        backfill(EventSink(wh), list(sim.event_files), progress=True)
        done()
    done = _step(console, 3, "recording the product changes (rollout stages, UI release, holiday)")
    found["annotations"] = warehouse.record_annotations(wh, scenario_annotations(sc))
    done()

    done = _step(console, 4, _shadow_title(settings))
    found["shadow"] = _shadow(wh, settings, rollout.baseline, sc.start, console)
    done()

    done = _step(console, 5, f"attributing every metric across the full switch ({switch:%Y-%m-%d})")
    attributions = attribute_segments(
        wh,
        metrics=list(analysis.METRICS),
        candidate=rollout.candidate,
        baseline=rollout.baseline,
        at=switch,
        window_days=7,
    )
    found["attribution"] = attributions.to_frame()
    done()

    done = _step(console, 6, "scanning for regressions in the two weeks around the switch")
    alert_run = run_alerts(
        wh,
        AlertSettings(),
        since=switch.replace(tzinfo=dt.UTC) - dt.timedelta(days=7),
        until=switch.replace(tzinfo=dt.UTC) + dt.timedelta(days=7),
    )
    found["alerts"] = alert_run.summary()
    done()

    week = switch.isocalendar()
    done = _step(console, 7, f"writing the weekly release review of {week.year}-W{week.week:02d}")
    report = weekly_report(wh, f"{week.year}-W{week.week:02d}")
    found["report"] = report.write(settings.reports)
    done()
    return found


def _shadow_title(settings: DemoSettings) -> str:
    if settings.candidate_url:
        return f"shadow replay on {settings.candidate_model} at {settings.candidate_url}"
    return (
        "shadow replay on a SIMULATED candidate (an OpenAI-compatible server on 127.0.0.1 that "
        "answers as the simulator's candidate; pass --candidate-url for a real model)"
    )


def _shadow(
    wh: warehouse.Warehouse,
    settings: DemoSettings,
    production: str,
    start: dt.date,
    console: Console,
) -> dict[str, Any]:
    """Sample a week of production prompts, replay them, judge them, store everything."""
    since = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    sample = shadow.sample_traffic(
        wh,
        since=since,
        until=since + dt.timedelta(days=14),
        model_versions=[production],
        per_stratum=settings.per_stratum,
        seed=settings.seed,
    )
    console.print(
        f"    {len(sample.samples)} prompts sampled from {production} in "
        f"{sample.strata.height} strata; {sample.redaction.total} PII items redacted"
    )
    run_id = f"demo-{settings.seed}"
    if settings.candidate_url:
        config = shadow.ShadowSettings(
            candidate_urls=[settings.candidate_url],
            candidate_model=settings.candidate_model or "",
            concurrency=16,
        )
        summary = asyncio.run(shadow.ShadowRunner(wh, config).run(sample.samples, run_id=run_id))
        return {"run_id": run_id, "summary": summary.summary("text")}
    candidate = shadow.SimulatedModel(
        "simulated-assistant-2026-09", verbosity=1.25, refusal_rate=0.012
    )
    replay = shadow.SimulatedModel("simulated-assistant-2026-08", verbosity=1.0)
    judge = shadow.SimulatedModel("simulated-judge", judge_length_bias=0.7)
    with shadow.SimulatedEndpoint(candidate, replay, judge) as endpoint:
        config = shadow.ShadowSettings(
            candidate_urls=[endpoint.base_url],
            candidate_model=candidate.name,
            baseline_urls=[endpoint.base_url],
            baseline_model=replay.name,
            concurrency=32,
        )
        previous = warehouse.shadow_run(wh, run_id)
        summary = asyncio.run(
            shadow.ShadowRunner(wh, config).run(
                sample.samples, run_id=run_id, resume=previous is not None
            )
        )
        results = warehouse.shadow_results(wh, run_id)
        client = shadow.JudgeClient([endpoint.base_url], judge.name, constraint="choice")
        judgments = asyncio.run(client.judge_run(sample.samples, results))
    warehouse.insert_shadow_judgments(wh, judgments)
    comparison = shadow.compare_shadow(
        results, judgments, prices=shadow.load_prices(None), segment=None
    )
    return {"run_id": run_id, "summary": summary.summary("text"), "comparison": comparison}


def headline(found: dict[str, Any]) -> pl.DataFrame:
    """The attribution table the demo ends with: the model's effect per metric, all traffic."""
    frame = found["attribution"]
    return frame.filter(pl.col("segment") == "all").select(
        "metric", "effect", "ci_low", "ci_high", "observed_change", "population_shift"
    )
