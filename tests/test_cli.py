"""The `telltale` command line, run as a user runs it (a subprocess), on a small scenario."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import warehouse
from app.attribution import attribute_segments
from ingest import EventSink, Scenario, backfill, scenario_annotations, write_files

REPO = Path(__file__).resolve().parent.parent


def telltale(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A directory where `telltale demo` ran once, small (1,000 users), without the app."""
    cwd = tmp_path_factory.mktemp("demo")
    first = telltale("demo", "--users", "1000", "--no-app", cwd=cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    (cwd / "demo.out").write_text(first.stdout + first.stderr)
    return cwd


def test_demo_runs_every_step_and_is_idempotent(demo_dir):
    said = (demo_dir / "demo.out").read_text()
    for step in range(1, 8):
        assert f"{step}/7" in said
    assert "SIMULATED candidate" in said  # the replay says what it is
    assert "the candidate's effect at full exposure" in said
    assert "set-up took" in said
    url = f"chdb://{demo_dir}/.telltale/warehouse"
    with warehouse.connect(url) as wh:
        counts = dict(warehouse.event_counts(wh).iter_rows())
        runs = warehouse.shadow_runs(wh)
        judged = warehouse.shadow_judgments(wh, "demo-7")
        notes = warehouse.annotations(
            wh, since=dt.datetime(2026, 8, 1), until=dt.datetime(2026, 11, 1)
        )
    assert counts["responses"] > 50_000
    assert runs.filter(pl.col("run_id") == "demo-7")["status"].to_list() == ["done"]
    assert judged.height > 100 and set(judged["verdict"]) <= {"A", "B", "tie", "invalid"}
    assert {"ui_release", "holiday", "model_rollout"} <= set(notes["kind"])
    reports = list((demo_dir / ".telltale" / "reports").glob("*"))
    assert {p.suffix for p in reports} >= {".html", ".md"}
    again = telltale("demo", "--users", "1000", "--no-app", cwd=demo_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    with warehouse.connect(url) as wh:
        assert dict(warehouse.event_counts(wh).iter_rows()) == counts


def test_attribute_reads_the_warehouse_and_reports(demo_dir):
    args = [
        "attribute", "--model-version", "assistant-2026-09", "--baseline", "assistant-2026-08",
        "--since", "2026-09-08", "--until", "2026-09-15", "--expected-share", "0.05",
    ]  # fmt: skip
    cwd = demo_dir
    res = telltale(*args, "--metric", "thumbs_down_rate", "--format", "json", cwd=cwd)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["metric"] == "thumbs_down_rate"
    assert report["effect"]["ci_low"] < report["effect"]["value"] < report["effect"]["ci_high"]
    assert report["sample_ratio"]["mismatch"] is False  # the simulator assigns 5% by user hash
    text = telltale(*args, "--metric", "retry_rate", "--segment", "locale", cwd=cwd)
    assert text.returncode == 0 and "effects by segment" in text.stdout
    sessions = telltale(*args, "--metric", "session_seconds", cwd=cwd)
    assert sessions.returncode == 0, sessions.stderr[-3000:]
    assert "verbosity check on session_seconds" in sessions.stdout
    no_boundary = telltale(*args, "--metric", "thumbs_down_rate", "--design", "switchover",
                           cwd=cwd)  # fmt: skip
    assert no_boundary.returncode == 1 and "--at" in no_boundary.stderr


def test_simulate_then_backfill_a_directory(tmp_path):
    out = tmp_path / "sim"
    sim = telltale("simulate", "--days", "1", "--out", str(out), cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr[-3000:]
    truth = json.loads((out / "truth.json").read_text())
    assert truth["seed"] is not None
    url = f"chdb://{tmp_path}/wh"
    ingest = telltale("ingest", "--from-file", str(out), "-w", url, cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    assert "0 dead letters" in ingest.stderr
    stats = telltale("warehouse", "stats", "-w", url, cwd=tmp_path)
    assert stats.returncode == 0 and "responses" in stats.stdout


def test_errors_say_what_to_do_without_a_traceback(tmp_path):
    missing = telltale("ingest", "--from-file", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert missing.returncode == 1
    assert "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_url = telltale("warehouse", "stats", "-w", "mysql://db", cwd=tmp_path)
    assert bad_url.returncode == 1
    assert "chdb://PATH" in bad_url.stderr
    assert "Traceback" not in bad_url.stderr


def test_cluster_ddl_is_printed(tmp_path):
    ddl = telltale("warehouse", "ddl", "--cluster", "prod", cwd=tmp_path)
    assert ddl.returncode == 0
    assert "ReplicatedReplacingMergeTree" in ddl.stdout
    assert "Distributed(prod" in ddl.stdout
    # every migration, in order: the shadow and alert tables too
    marks = [ddl.stdout.index(f"-- migration {m.version}:") for m in warehouse.MIGRATIONS]
    assert marks == sorted(marks)
    for table in ("shadow_results", "shadow_judgments", "alerts"):
        assert f"CREATE TABLE IF NOT EXISTS default.{table}_local ON CLUSTER prod" in ddl.stdout


@pytest.fixture(scope="module")
def switch_weeks(tmp_path_factory) -> str:
    """Three weeks around the full switch (50% -> 100% on 2026-10-06), ingested through the
    backfill path, with the scenario's annotations; the warehouse URL."""
    tmp = tmp_path_factory.mktemp("switch")
    base = Scenario.default()
    sc = base.evolve(
        start=dt.date(2026, 9, 22),
        days=21,
        population=base.population.model_copy(update={"initial_users": 1500}),
    )
    sim = write_files(sc, tmp / "sim", seed=3)
    url = f"chdb://{tmp}/wh"
    with warehouse.connect(url) as wh:
        warehouse.migrate(wh)
        backfill(EventSink(wh), list(sim.event_files), progress=False)
        warehouse.record_annotations(wh, scenario_annotations(sc))
    return url


def test_attribute_designs_across_the_full_switch(switch_weeks, tmp_path):
    """The waterfall, the mix decomposition and 7-day retention all come out of the CLI, with
    parts that add up."""
    url = switch_weeks
    args = [
        "attribute", "--model-version", "assistant-2026-09", "--baseline", "assistant-2026-08",
        "--since", "2026-09-22", "--until", "2026-10-13", "-w", url, "--format", "json",
    ]  # fmt: skip
    res = telltale(*args, "--metric", "thumbs_down_rate", "--design", "switchover",
                   "--at", "2026-10-06", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    parts = {e["term"]: e["value"] for e in report["estimates"]}
    explained = sum(
        v for k, v in parts.items() if k not in ("model effect at full exposure", "observed change")
    )
    assert explained == pytest.approx(report["observed"]["change"], abs=1e-9)
    assert report["candidate_share"][0] == pytest.approx(0.5, abs=0.1)
    assert report["candidate_share"][1] == pytest.approx(1.0, abs=0.01)
    assert len(report["counterfactual"]) == 14 * 24  # one row per hour of the two windows
    sessions = telltale(*args, "--metric", "session_turns", "--design", "switchover",
                        "--at", "2026-10-06", cwd=tmp_path)  # fmt: skip
    assert sessions.returncode == 0, sessions.stderr[-3000:]
    mix = telltale(*args, "--metric", "retry_rate", "--design", "population",
                   "--at", "2026-10-06", "--segment", "cohort", cwd=tmp_path)  # fmt: skip
    assert mix.returncode == 0, mix.stderr[-3000:]
    terms = " ".join(e["term"] for e in json.loads(mix.stdout)["estimates"])
    assert "composition" in terms and "rate" in terms
    retention = telltale(*args, "--metric", "retention_d7", cwd=tmp_path)
    assert retention.returncode == 0, retention.stderr[-3000:]
    assert json.loads(retention.stdout)["design"] == "retention"
    text = telltale(*args[:-2], "--metric", "thumbs_down_rate", "--design", "switchover",
                    "--at", "2026-10-06", cwd=tmp_path)  # fmt: skip
    assert "population shift" in text.stdout and "unexplained" in text.stdout


def test_every_metric_in_every_segment_from_one_read_per_rollup(switch_weeks):
    with warehouse.connect(switch_weeks) as wh:
        found = attribute_segments(
            wh,
            metrics=["thumbs_down_rate", "session_turns", "retention_d7"],
            candidate="assistant-2026-09",
            baseline="assistant-2026-08",
            at=dt.datetime(2026, 10, 6),
            segments=[("platform", "web"), ("intent", "coding")],
        )
    frame = found.to_frame()
    assert frame.height == 9  # 3 metrics x (all traffic + 2 segments)
    # sessions and users carry no intent: said, not guessed
    notes = frame.filter(pl.col("segment") == "intent")
    assert notes.filter(pl.col("metric") == "thumbs_down_rate")["effect"].is_not_null().all()
    assert (
        notes.filter(pl.col("metric") != "thumbs_down_rate")["note"].str.contains("no intent").all()
    )
    web = frame.filter((pl.col("metric") == "thumbs_down_rate") & (pl.col("value") == "web"))
    assert web["ci_low"][0] < web["effect"][0] < web["ci_high"][0]
    assert found.warehouse_seconds > 0 and found.analysis_seconds > 0


def test_annotations_are_recorded_listed_and_checked(tmp_path):
    url = f"chdb://{tmp_path}/wh"
    add = ["annotate", "add", "-w", url, "--kind", "ui_release", "--title", "rating UI v2"]
    assert telltale(*add, "--starts", "2026-10-13", cwd=tmp_path).returncode == 0
    again = telltale(*add, "--starts", "2026-10-13", cwd=tmp_path)  # same id: replaced, not doubled
    assert again.returncode == 0
    listed = telltale("annotate", "list", "-w", url, cwd=tmp_path)
    assert listed.stdout.count("rating UI v2") == 2  # id and title of one row
    bad = telltale("annotate", "add", "-w", url, "--kind", "holday", "--title", "x",
                   "--starts", "2026-09-07", cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 1 and "holiday" in bad.stderr and "Traceback" not in bad.stderr
