"""Regression alerts measured on the traffic simulator, at its default volume (20,000 users).

Three measurements, each over several seeds in one process:

- **false alarms**: the default scenario with nothing planted (the staged A/B and the full
  switch still happen, with no effect; no population shift, UI release or holiday), 14 days to
  learn from, then 30 days scanned as the hourly cron would (the expectation re-learnt every
  72 hours, the CUSUM's memory 72 hours); alarms per metric-segment series per 30 days;
- **time to alert**: a full switch at 00:00 UTC on 2026-09-15 to a candidate whose thumbs-down
  rate is 10% higher (relative; +0.158 log-odds, the simulator's truth is printed), no A/B
  before; hours from the switch to the first thumbs-down alarm of the candidate, over all
  traffic and in any segment;
- **changes that are not the model's**: a null switch into a weekend with strong night and
  weekend thumbs-down seasonality; an influx of 4,000 new users (pt-BR / ja-JP, Android) who
  behave like other new users of their locale and platform; and the default scenario's influx,
  whose users are also worse than anyone in their segments (0.5 log-odds: a change in who the
  users are that no segment column shows). Alarms in the three days after the change.

For the time to alert it also prints what no detector can beat: per seed, the candidate's
all-traffic signal-to-noise per hour at the 10% shift (``snr``), the expected delay of our
CUSUM at its threshold (``delay_hours``), and that of the optimal detector at the issue's
false-alarm target of one per 30 days (the CUSUM with the textbook threshold, optimal in
Lorden's sense: ``analysis.cusum_delay_hours``). ``--users`` scales the volume (initial users
and daily sign-ups) to see where the 6-hour target becomes reachable.

Cells come straight from the simulated events (``responses_frame`` of
``bench/validate_attribution.py``; the ingest path is tested on its own).

    python bench/alerts.py --null-seeds 6 --delay-seeds 20 --quiet-seeds 3 --out alerts.json
    python bench/alerts.py --null-seeds 0 --quiet-seeds 0 --delay-seeds 20 --users 60000
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

# Run as a script, this directory comes first on sys.path and its ingest.py would shadow the
# ingest package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import analysis  # noqa: E402
from ingest.simulate import Effect, PopulationShift, Scenario, ground_truth  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "validate_attribution", _HERE / "validate_attribution.py"
)
_validate = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(_validate)  # type: ignore[union-attr]
responses_frame, SEGMENTS = _validate.responses_frame, _validate.SEGMENTS

METRICS = ("thumbs_down_rate", "rating_rate", "retry_rate", "refusal_rate")
COUNTS = ("responses", "ratings", "thumbs_down", "retries", "refusals")
BASELINE_DAYS = 14
NULL_START = dt.datetime(2026, 9, 15)  # the scanned month: 2026-09-15 .. 2026-10-15
NULL_DAYS = 30
SWITCH = dt.datetime(2026, 9, 15)
QUIET_AT = dt.datetime(2026, 9, 18)  # a Friday
TEN_PERCENT = 0.158  # log-odds that raise the thumbs-down rate by about 10%
TARGET_FALSE_ALARM_DAYS = 30.0  # the bound: at most one false alarm per series per 30 days


def cells_of(sc: Scenario, seed: int) -> pl.DataFrame:
    """Hourly counts per version and segment values, as the warehouse's rollup holds them."""
    frame = responses_frame(sc, seed)
    return frame.group_by(["hour", "model_version", *SEGMENTS]).agg(pl.col(COUNTS).sum())


def null_scenario(users: int | None = None) -> Scenario:
    """The default scenario with nothing planted, 44 days from 2026-09-01; ``users`` scales
    the initial users and the daily sign-ups together (default: the scenario's 20,000)."""
    base = Scenario.default()
    if users is not None:
        scale = users / base.population.initial_users
        base = base.evolve(
            population={
                "initial_users": users,
                "new_users_per_day": base.population.new_users_per_day * scale,
            }
        )
    rollout = base.rollout.model_copy(update={"effects": ()})  # type: ignore[union-attr]
    return base.evolve(
        days=BASELINE_DAYS + NULL_DAYS,
        rollout=rollout,
        population_shift=None,
        ui_release=None,
        holidays=(),
        truth_samples=50_000,
    )


def planted_scenario(size: float, users: int | None = None) -> Scenario:
    """Two weeks on the baseline, then everyone on a candidate with thumbs-down +size."""
    base = null_scenario(users)
    rollout = base.rollout.model_copy(  # type: ignore[union-attr]
        update={
            "stages": (),
            "full_switch": SWITCH.date(),
            "effects": (Effect(metric="thumbs_down", size=size),),
        }
    )
    return base.evolve(days=BASELINE_DAYS + 3, rollout=rollout)


def quiet_scenarios() -> dict[str, Scenario]:
    """Changes that are not the model's, from QUIET_AT."""
    base = null_scenario().evolve(start=dt.date(2026, 9, 4), days=BASELINE_DAYS + 3)
    switch = base.rollout.model_copy(  # type: ignore[union-attr]
        update={"stages": (), "full_switch": QUIET_AT.date(), "effects": ()}
    )
    influx = {
        "date": QUIET_AT.date(),
        "days": 3,
        "extra_users": 4000,
        "locales": {"pt-BR": 0.5, "ja-JP": 0.5},
        "platforms": {"android": 0.8, "ios": 0.2},
    }
    return {
        "seasonal": base.evolve(
            rollout=switch,
            seasonality=base.seasonality.model_copy(
                update={"night_thumbs_down_log_odds": 0.6, "weekend_thumbs_down_log_odds": 0.4}
            ),
        ),
        "population (mix only)": base.evolve(
            rollout=None, population_shift=PopulationShift(**influx, thumbs_down_log_odds=0.0)
        ),
        "population (worse users)": base.evolve(
            rollout=None, population_shift=PopulationShift(**influx, thumbs_down_log_odds=0.5)
        ),
    }


def false_alarms(seed: int, policy: analysis.AlertPolicy) -> list[dict[str, Any]]:
    """One row per series of the null month: its alarms and how its expectation was formed."""
    cells = cells_of(null_scenario(), seed)
    rows = []
    for metric in METRICS:
        scan = analysis.detect_regressions(
            cells,
            metric=metric,
            since=NULL_START,
            until=NULL_START + dt.timedelta(days=NULL_DAYS),
            segments=SEGMENTS,
            policy=policy,
            refit_hours=72,
        )
        for d in scan.diagnostics.iter_rows(named=True):
            rows.append({"seed": seed, "metric": metric, "alarm": False, **d})
        for a in scan.alarms.iter_rows(named=True):
            rows.append({"seed": seed, "metric": metric, "alarm": True, **a})
    return rows


def delay(
    seed: int, size: float, policy: analysis.AlertPolicy, users: int | None = None
) -> dict[str, Any]:
    """Hours from the switch to the candidate's first thumbs-down alarm, with the expected
    delays of our detector and of the optimal one (module doc)."""
    cells = cells_of(planted_scenario(size, users), seed)
    scan = analysis.detect_regressions(
        cells,
        metric="thumbs_down_rate",
        since=SWITCH - dt.timedelta(hours=24),
        until=SWITCH + dt.timedelta(hours=72),
        segments=SEGMENTS,
        policy=policy,
    )
    mine = scan.alarms.filter(pl.col("model_version") == "assistant-2026-09")

    def hours(frame: pl.DataFrame) -> float:
        if not frame.height:
            return float("nan")
        return (frame["detected_at"].min() - SWITCH).total_seconds() / 3600 + 1  # hour's end

    overall = mine.filter(pl.col("segment") == "all")
    series = scan.diagnostics.filter(
        (pl.col("model_version") == "assistant-2026-09") & (pl.col("segment") == "all")
    )
    snr = float(series["snr"][0])
    best = analysis.cusum_threshold(snr**2, TARGET_FALSE_ALARM_DAYS * 24)
    return {
        "seed": seed,
        "overall_hours": hours(overall),
        "any_segment_hours": hours(mine),
        "severity": overall["severity"][0] if overall.height else None,
        "estimated_shift": overall["relative_shift"][0] if overall.height else None,
        "early_alarms": scan.alarms.filter(pl.col("detected_at") < SWITCH).height,
        "snr": snr,
        "delay_hours": float(series["delay_hours"][0]),
        "optimal_delay_hours": analysis.cusum_delay_hours(snr**2, best),
    }


def quiet(seed: int, policy: analysis.AlertPolicy) -> list[dict[str, Any]]:
    """Alarms in the three days after each change that is not the model's."""
    rows = []
    for name, sc in quiet_scenarios().items():
        cells = cells_of(sc, seed)
        for metric in METRICS:
            scan = analysis.detect_regressions(
                cells,
                metric=metric,
                since=QUIET_AT,
                until=QUIET_AT + dt.timedelta(days=3),
                segments=SEGMENTS,
                policy=policy,
            )
            rows.append(
                {
                    "seed": seed,
                    "scenario": name,
                    "metric": metric,
                    "series": scan.diagnostics.height,
                    "alarms": scan.alarms.height,
                    "where": [
                        f"{a['model_version']} {a['segment']}={a['segment_value']} "
                        f"{a['relative_shift']:+.0%}"
                        for a in scan.alarms.iter_rows(named=True)
                    ],
                }
            )
    return rows


def summarise_false_alarms(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Alarms per series per 30 days of its traffic (a version that stopped serving counts
    only the hours it served), by metric and over all."""
    frame = pl.DataFrame(rows, infer_schema_length=None)
    series, alarms = frame.filter(~pl.col("alarm")), frame.filter(pl.col("alarm"))
    per_metric = (
        series.group_by("metric")
        .agg(pl.len().alias("series"), (pl.col("hours").sum() / 720).alias("series_months"))
        .join(alarms.group_by("metric").agg(pl.len().alias("alarms")), on="metric", how="left")
        .with_columns(pl.col("alarms").fill_null(0))
    )
    total = per_metric.select(
        pl.lit("all").alias("metric"), pl.col("series", "series_months", "alarms").sum()
    )
    return pl.concat([per_metric.sort("metric"), total]).with_columns(
        (pl.col("alarms") / pl.col("series_months")).alias("per_series_per_30_days")
    )


def main() -> None:
    """Run the measurements, print the tables, optionally write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null-seeds", type=int, default=6)
    parser.add_argument("--delay-seeds", type=int, default=20)
    parser.add_argument("--quiet-seeds", type=int, default=3)
    parser.add_argument("--size", type=float, default=TEN_PERCENT)
    parser.add_argument("--users", type=int, default=None, help="initial users (default 20,000)")
    parser.add_argument(
        "--false-alarm-days", type=float, default=analysis.AlertPolicy().false_alarm_days,
        help="in-control days between false alarms per series (the threshold's calibration)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    policy = analysis.AlertPolicy(false_alarm_days=args.false_alarm_days)
    started = time.monotonic()
    report: dict[str, Any] = {
        "generator": "bench/alerts.py",
        "policy": str(policy),
        "users": args.users or Scenario.default().population.initial_users,
    }

    truth = ground_truth(planted_scenario(args.size, args.users), seed=1)
    planted = next(
        r for r in truth["expected_differences"]
        if r["metric"] == "thumbs_down_rate" and not r["segment"]
    )  # fmt: skip
    print(f"planted: thumbs-down {planted['baseline']:.4f} -> {planted['candidate']:.4f} "
          f"({planted['relative']:+.1%})", flush=True)  # fmt: skip
    report["planted_relative"] = planted["relative"]

    delays = []
    for seed in range(1, args.delay_seeds + 1):
        delays.append(delay(seed, args.size, policy, args.users))
        print(f"delay seed {seed}: {delays[-1]} ({time.monotonic() - started:.0f} s)", flush=True)
    report["delays"] = delays
    for column in ("overall_hours", "any_segment_hours") if delays else ():
        hours = pl.DataFrame(delays)[column].to_numpy()
        found = hours[~np.isnan(hours)]
        summary = {
            "detected_within_72h": f"{len(found)}/{len(hours)}",
            "median": float(np.median(found)) if len(found) else None,
            "p25": float(np.percentile(found, 25)) if len(found) else None,
            "p75": float(np.percentile(found, 75)) if len(found) else None,
            "within_6h": int((found <= 6).sum()),
            "within_24h": int((found <= 24).sum()),
        }
        report[column] = summary
        print(column, summary, flush=True)
    if delays:
        frame = pl.DataFrame(delays)
        expected = {
            "snr_median": float(frame["snr"].median()),  # type: ignore[arg-type]
            "our_cusum_expected_hours_median": float(frame["delay_hours"].median()),  # type: ignore[arg-type]
            "optimal_expected_hours_median": float(frame["optimal_delay_hours"].median()),  # type: ignore[arg-type]
        }
        report["expected_delay"] = expected
        print("expected delay at the 10% shift (all traffic):", expected, flush=True)

    quiet_rows = []
    for seed in range(1, args.quiet_seeds + 1):
        rows = quiet(seed, policy)
        quiet_rows += rows
        print(f"quiet seed {seed} ({time.monotonic() - started:.0f} s): "
              f"{[(r['scenario'], r['metric'], r['where']) for r in rows if r['alarms']]}",
              flush=True)  # fmt: skip
    if quiet_rows:
        where = pl.col("where").explode(keep_nulls=False, empty_as_null=False)
        q = (
            pl.DataFrame(quiet_rows)
            .group_by("scenario", "metric")
            .agg(pl.col("series", "alarms").sum(), where)
            .sort("scenario", "metric")
        )
        report["quiet"] = q.to_dicts()
        with pl.Config(tbl_rows=50, tbl_width_chars=200, fmt_str_lengths=120):
            print(q, flush=True)

    null_rows: list[dict[str, Any]] = []
    for seed in range(1, args.null_seeds + 1):
        null_rows += false_alarms(seed, policy)
        print(f"null seed {seed} ({time.monotonic() - started:.0f} s)", flush=True)
        print(summarise_false_alarms(null_rows), flush=True)
    if null_rows:
        report["false_alarms"] = summarise_false_alarms(null_rows).to_dicts()
        frame = pl.DataFrame(null_rows, infer_schema_length=None)
        alarms = frame.filter(pl.col("alarm"))
    if null_rows and alarms.height:
        by = alarms.group_by("severity", "basis").len().sort("severity", "basis")
        report["false_alarm_kinds"] = by.to_dicts()
        print(by)
    print(f"done in {time.monotonic() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
