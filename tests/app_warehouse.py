"""A small warehouse for the app and release-review tests: two weeks of simulated traffic around
the candidate's full switch, the scenario's annotations, one shadow run whose answers are
SIMULATED (derived from the recorded production answers, not produced by any model; the run's
settings say so), and two hand-made alerts (not found by the detector)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import polars as pl

import shadow
import warehouse
from ingest import EventSink, Scenario, backfill, scenario_annotations, write_files

START = dt.date(2026, 9, 28)
"""A Monday: the simulated weeks are 2026-W40 (A/B at 50%) and 2026-W41 (the full switch on
Tuesday 2026-10-06)."""
DAYS = 15
CANDIDATE = "assistant-2026-09"
BASELINE = "assistant-2026-08"
WEEK = "2026-W41"
RUN_ID = "sim-run-1"
JUDGE = "simulated-judge"
REFUSAL = "I'm sorry, but I can't help with that request."


def scenario() -> Scenario:
    """The default scenario over :data:`DAYS` days from :data:`START`, with few users."""
    base = Scenario.default()
    return base.evolve(
        start=START,
        days=DAYS,
        population=base.population.model_copy(
            update={"initial_users": 1000, "new_users_per_day": 20.0}
        ),
        population_shift=base.population_shift.model_copy(update={"extra_users": 300}),
    )


def build(path: Path, tmp: Path) -> str:
    """Simulate, ingest by backfill, record the annotations and a simulated shadow run into a
    new warehouse at ``path`` (closed on return); its URL."""
    sc = scenario()
    sim = write_files(sc, tmp / "sim", seed=5, progress=False)
    url = f"chdb://{path}"
    with warehouse.connect(url) as wh:
        warehouse.migrate(wh)
        backfill(EventSink(wh), list(sim.event_files), progress=False)
        warehouse.record_annotations(wh, scenario_annotations(sc))
        record_simulated_run(wh)
        warehouse.record_alerts(wh, hand_made_alerts(), by="tests")
    return url


def record_simulated_run(wh: warehouse.Warehouse, *, run_id: str = RUN_ID, seed: int = 0) -> int:
    """Sample production traffic of the baseline, make up the candidate's and the baseline
    replay's answers from production's (longer; refusing some writing requests; slower to the
    first token), judge them with made-up verdicts, and store it all as one shadow run labelled
    simulated. Returns the number of samples."""
    rng = np.random.default_rng(seed)
    start = dt.datetime.combine(START, dt.time(), tzinfo=dt.UTC)
    sample = shadow.sample_traffic(
        wh,
        since=start,
        until=start + dt.timedelta(days=7),
        model_versions=[BASELINE],
        per_stratum=8,
        seed=seed,
    )
    now = dt.datetime(2026, 10, 3, 12, tzinfo=dt.UTC)
    results, judgments = [], []
    for i, s in enumerate(sample.samples):
        prod = s.production_output or ""
        refuses = s.intent == "writing" and i % 2 == 0
        arms = {
            "candidate": (CANDIDATE, REFUSAL if refuses else f"{prod} Also worth noting: {prod}"),
            "baseline_replay": (BASELINE, prod.replace(".", ";", 1)),
        }
        for arm, (model, output) in arms.items():
            ttft = float(rng.lognormal(np.log(400 if arm == "candidate" else 350), 0.3))
            tokens = max(1, len(output) // 4)
            results.append(
                {"run_id": run_id, "sample_id": s.sample_id, "arm": arm, "model": model,
                 "intent": s.intent, "locale": s.locale, "platform": s.platform,
                 "cohort": s.cohort, "status": "ok", "error": None, "attempts": 1,
                 "ttft_ms": ttft, "tpot_ms": 12.0, "latency_ms": ttft + 12.0 * tokens,
                 "prompt_tokens": 50, "completion_tokens": tokens, "finish_reason": "stop",
                 "output": output, "production_output": s.production_output,
                 "production_completion_tokens": s.production_completion_tokens,
                 "production_latency_ms": s.production_latency_ms, "expected": s.expected,
                 "started_at": now}
            )  # fmt: skip
        # the made-up judge prefers the candidate on most samples, production where it refused
        prefers_candidate = not refuses and rng.random() < 0.7
        for order, (a, b) in (("ab", (CANDIDATE, BASELINE)), ("ba", (BASELINE, CANDIDATE))):
            winner = CANDIDATE if prefers_candidate else BASELINE
            judgments.append(
                {"run_id": run_id, "sample_id": s.sample_id, "judge_model": JUDGE, "model_a": a,
                 "model_b": b, "order": order, "verdict": "A" if winner == a else "B",
                 "judged_at": now}
            )  # fmt: skip
    warehouse.record_shadow_run(
        wh,
        run_id=run_id,
        created_at=now,
        candidate_model=CANDIDATE,
        baseline_model=BASELINE,
        settings_json=json.dumps(
            {"simulated": True, "note": "answers derived from production's, for tests"}
        ),
        status="done",
        sample_size=len(sample.samples),
    )
    warehouse.insert_shadow_results(
        wh, pl.DataFrame(results, schema=warehouse.SHADOW_RESULT_SCHEMA, orient="row")
    )
    warehouse.insert_shadow_judgments(
        wh, pl.DataFrame(judgments, schema=warehouse.SHADOW_JUDGMENT_SCHEMA, orient="row")
    )
    return len(sample.samples)


ALERT_IDS = ("alert-retry-coding", "alert-thumbs-all")


def hand_made_alerts() -> pl.DataFrame:
    """Two alerts on the candidate after its full switch: retries in coding (open, as the
    scenario plants) and thumbs down overall (to be resolved by a test)."""
    switch = dt.datetime(2026, 10, 6)
    rows = [
        {"alert_id": ALERT_IDS[0], "metric": "retry_rate", "model_version": CANDIDATE,
         "segment": "intent", "segment_value": "coding", "opened_at": switch,
         "detected_at": switch + dt.timedelta(hours=5), "severity": "major", "expected": 0.08,
         "observed": 0.1, "shift": 0.02, "shift_se": 0.005, "relative_shift": 0.25,
         "statistic": 6.1, "threshold": 5.2, "basis": "incumbent level",
         "baseline_version": BASELINE, "segments_firing": 1},
        {"alert_id": ALERT_IDS[1], "metric": "thumbs_down_rate", "model_version": CANDIDATE,
         "segment": "all", "segment_value": "all", "opened_at": switch + dt.timedelta(days=1),
         "detected_at": switch + dt.timedelta(days=1, hours=8), "severity": "minor",
         "expected": 0.3, "observed": 0.33, "shift": 0.03, "shift_se": 0.01,
         "relative_shift": 0.1, "statistic": 5.5, "threshold": 5.2, "basis": "own level",
         "baseline_version": BASELINE, "segments_firing": 0},
    ]  # fmt: skip
    return pl.DataFrame(rows)
