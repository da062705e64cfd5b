"""Planted-effect validation of the attribution methods on the traffic simulator.

For each seed, the simulator runs two scenarios with a population shift, a UI release and a
holiday on other dates: the shipped default (a staged A/B, then a full switch) and a switchover
variant (no A/B: one version replaces the other on 2026-10-06). Each is analysed as an analyst
would, and the estimate is compared with the simulator's ground truth:

- **concurrent**: ``compare_concurrent`` on the A/B weeks (responses clustered by user, hour of
  week x intent cells), per metric;
- **switchover**: the waterfall (``decompose_change``) on hourly cells, the week before vs the week
  after the switch; its model effect at full exposure against the truth;
- **null**: the same two designs with no planted effect: how often an interval excludes 0, and
  how often any per-segment effect survives Benjamini-Hochberg at 5%.

Prints the table of coverage, bias (mean estimate minus truth, relative to the truth) and
false-positive rate per method and metric, and writes it as JSON (``--out``). Measured cells
come straight from the simulated events (the ingest path is tested on its own, and 200
simulations through it would take hours); feedback and retries are counted at the hour of their
response, as the warehouse's rollup counts them.

    python bench/validate_attribution.py --seeds 100 --rows rows.jsonl --out table.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import polars as pl

# Run as a script, this directory comes first on sys.path and its ingest.py would shadow the
# ingest package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import analysis  # noqa: E402
from ingest.simulate import Scenario, ground_truth, scenario_annotations, simulate  # noqa: E402

METRICS = ("thumbs_down_rate", "retry_rate", "refusal_rate")
SEGMENTS = ("cohort", "locale", "platform", "intent")
AB = (dt.datetime(2026, 9, 8), dt.datetime(2026, 10, 6))
SWITCH = dt.datetime(2026, 10, 6)
BEFORE = (dt.datetime(2026, 9, 29), SWITCH)
AFTER = (SWITCH, dt.datetime(2026, 10, 13))


def scenarios(users: int) -> dict[str, Scenario]:
    """The four scenarios: default and switchover designs, each with and without effects."""
    base = Scenario.default()
    base = base.evolve(
        population=base.population.model_copy(
            update={"initial_users": users, "new_users_per_day": users / 80}
        ),
        population_shift=base.population_shift.model_copy(  # type: ignore[union-attr]
            update={"extra_users": users // 5}
        ),
        truth_samples=50_000,
    )
    rollout = base.rollout
    assert rollout is not None
    switch = base.evolve(rollout=rollout.model_copy(update={"stages": ()}))
    return {
        "concurrent": base,
        "switchover": switch,
        "concurrent_null": base.evolve(rollout=rollout.model_copy(update={"effects": ()})),
        "switchover_null": switch.evolve(
            rollout=rollout.model_copy(update={"stages": (), "effects": ()})
        ),
    }


_FIELDS = {
    "type": pl.String,
    "request_id": pl.String,
    "user_id": pl.String,
    "ts": pl.String,
    "model_version": pl.String,
    "cohort": pl.String,
    "locale": pl.String,
    "platform": pl.String,
    "intent": pl.String,
    "refused": pl.Boolean,
    "rating": pl.Int64,
}


def responses_frame(sc: Scenario, seed: int) -> pl.DataFrame:
    """One row per response with the ratings, thumbs down and retries it received."""
    events = pl.concat(
        pl.read_ndjson(b"\n".join(chunk), schema=_FIELDS)
        for chunk in simulate(sc, seed=seed)
        if chunk
    )
    responses = events.filter(pl.col("type") == "response").select(
        "request_id",
        "user_id",
        pl.col("ts").str.to_datetime(time_zone="UTC").dt.replace_time_zone(None),
        "model_version",
        *(pl.col(s).fill_null("unknown") for s in SEGMENTS),
        pl.col("refused").fill_null(False).cast(pl.Int64),
    )
    feedback = (
        events.filter(pl.col("type") == "feedback")
        .group_by("request_id")
        .agg(pl.len().alias("ratings"), (pl.col("rating") < 0).sum().alias("thumbs_down"))
    )
    retries = (
        events.filter(pl.col("type") == "retry")
        .group_by("request_id")
        .agg(pl.len().alias("retries"))
    )
    return (
        responses.join(feedback, on="request_id", how="left")
        .join(retries, on="request_id", how="left")
        .with_columns(
            pl.col("ratings", "thumbs_down", "retries").fill_null(0),
            pl.lit(1).alias("responses"),
            pl.col("refused").alias("refusals"),
            pl.col("ts").dt.truncate("1h").alias("hour"),
        )
    )


def truth(sc: Scenario, seed: int) -> dict[str, float]:
    """Expected candidate-minus-baseline difference per metric (0 when nothing is planted)."""
    gt = ground_truth(sc, seed=seed)
    overall = {
        r["metric"]: r["difference"] for r in gt["expected_differences"] if not r.get("segment")
    }
    return {m: float(overall.get(m, 0.0)) for m in METRICS}


DESIGNS = ("concurrent", "switchover")


def run_seed(seed: int, users: int, designs: tuple[str, ...] = DESIGNS) -> list[dict[str, Any]]:
    """The estimates of ``designs`` (each with and without planted effects) for one seed."""
    rows: list[dict[str, Any]] = []
    for name, sc in scenarios(users).items():
        if name.removesuffix("_null") not in designs:
            continue
        rollout = sc.rollout
        assert rollout is not None
        planted = truth(sc, seed) if rollout.effects else dict.fromkeys(METRICS, 0.0)
        frame = responses_frame(sc, seed)
        for metric_name in METRICS:
            m = analysis.get_metric(metric_name)
            if name.startswith("concurrent"):
                window = frame.filter(pl.col("ts").is_between(*AB, closed="left"))
                units = analysis.metric_outcome(m, window).with_columns(
                    (pl.col("model_version") == rollout.candidate).alias("treated")
                )
                res = analysis.compare_concurrent(
                    units,
                    outcome="outcome",
                    treated="treated",
                    user="user_id",
                    segments=["intent"],
                    metric=metric_name,
                )
                est = res.effect
                seg_hits = int((res.by_segment["p_bh"] < 0.05).sum())
            else:
                cells = frame.group_by(["hour", "model_version", *SEGMENTS]).agg(
                    pl.col(m.numerator).sum(), pl.col(m.denominator).sum()
                )
                res = analysis.decompose_change(
                    cells,
                    numerator=m.numerator,
                    denominator=m.denominator,
                    candidate=rollout.candidate,
                    baseline=rollout.baseline,
                    before=BEFORE,
                    after=AFTER,
                    annotations=scenario_annotations(sc),
                    metric=metric_name,
                )
                est = res.model_effect
                seg_hits = 0
            rows.append(
                {
                    "seed": seed,
                    "design": name,
                    "metric": metric_name,
                    "truth": planted[metric_name],
                    "estimate": est.value,
                    "se": est.se,
                    "ci_low": est.ci_low,
                    "ci_high": est.ci_high,
                    "segment_hits": seg_hits,
                }
            )
    return rows


def summarise(rows: pl.DataFrame) -> pl.DataFrame:
    """Coverage, bias and false-positive rate per design and metric."""
    return (
        rows.with_columns(
            ((pl.col("ci_low") <= pl.col("truth")) & (pl.col("truth") <= pl.col("ci_high"))).alias(
                "covered"
            ),
            ((pl.col("ci_low") > 0) | (pl.col("ci_high") < 0)).alias("significant"),
        )
        .group_by("design", "metric")
        .agg(
            pl.len().alias("seeds"),
            pl.col("truth").mean().alias("truth"),
            pl.col("estimate").mean().alias("mean_estimate"),
            pl.col("covered").mean().alias("coverage"),
            ((pl.col("estimate").mean() - pl.col("truth").mean()) / pl.col("truth").mean()).alias(
                "relative_bias"
            ),
            pl.col("significant").mean().alias("positive_rate"),
            (pl.col("segment_hits") > 0).mean().alias("segment_positive_rate"),
            pl.col("se").mean().alias("mean_se"),
            pl.col("estimate").std().alias("sd_estimate"),
        )
        .sort("design", "metric")
    )


def main() -> None:
    """Run the seeds in parallel, appending each seed's rows to ``--rows`` (JSON lines) as it
    completes; then print the table of everything in ``--rows`` (earlier runs included, so
    designs can run as separate processes) and write it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=4000, help="initial simulated users")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated")
    parser.add_argument("--rows", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--out", type=Path, default=None, help="the table and rows as JSON")
    args = parser.parse_args()
    designs = tuple(args.designs.split(","))
    started = time.monotonic()
    if args.seeds:
        with ProcessPoolExecutor(args.workers) as pool, args.rows.open("a") as sink:
            seeds = range(args.first_seed, args.first_seed + args.seeds)
            futures = [pool.submit(run_seed, s, args.users, designs) for s in seeds]
            for i, f in enumerate(as_completed(futures), 1):
                for row in f.result():
                    sink.write(json.dumps(row) + "\n")
                sink.flush()
                print(f"seed {i}/{args.seeds} done, {time.monotonic() - started:.0f} s", flush=True)
    frame = pl.read_ndjson(args.rows).unique(["seed", "design", "metric"], keep="last")
    table = summarise(frame)
    with pl.Config(tbl_rows=50, tbl_cols=20, tbl_width_chars=200):
        print(table)
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "generator": "bench/validate_attribution.py",
                    "seeds": frame["seed"].n_unique(),
                    "users": args.users,
                    "table": table.to_dicts(),
                },
                indent=1,
                default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v),
            )
        )


if __name__ == "__main__":
    main()
