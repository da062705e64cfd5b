"""Shadow replay: storage, the HTTP and in-process targets, the runner and its CLI, against real
chdb and a real vLLM server (with a fault-injecting proxy between them where faults are needed)."""

from __future__ import annotations

import datetime as dt

import polars as pl

import warehouse
from warehouse import schema

UTC = dt.UTC


def _result(sample_id: str, arm: str, *, status: str = "ok", at: int = 0, **over) -> dict:
    row = {
        "run_id": "run-1",
        "sample_id": sample_id,
        "arm": arm,
        "model": "tiny",
        "intent": "coding",
        "locale": "en-US",
        "platform": "web",
        "cohort": "new",
        "status": status,
        "error": None if status == "ok" else "HTTP 503",
        "attempts": 1,
        "ttft_ms": 12.5,
        "tpot_ms": 3.0,
        "latency_ms": 80.0,
        "prompt_tokens": 20,
        "completion_tokens": 16,
        "finish_reason": "length",
        "output": "some words",
        "production_output": "prod words",
        "production_completion_tokens": 40,
        "production_latency_ms": 900.0,
        "expected": None,
        "started_at": dt.datetime(2026, 9, 1, 12, 0, at, tzinfo=UTC),
    }
    row.update(over)
    return row


# =============================================================================
# Storage (migration 3)
# =============================================================================


def test_results_round_trip_and_newest_row_wins(wh):
    rows = [_result("s1", "candidate"), _result("s2", "candidate", status="error")]
    warehouse.insert_shadow_results(wh, pl.DataFrame(rows))
    # A resumed run retries the failure: the newer row replaces the old one.
    warehouse.insert_shadow_results(wh, pl.DataFrame([_result("s2", "candidate", at=5)]))
    got = warehouse.shadow_results(wh, "run-1")
    assert got.columns == list(warehouse.SHADOW_RESULT_SCHEMA)
    assert got.select("sample_id", "status").rows() == [("s1", "ok"), ("s2", "ok")]
    assert got["production_output"].to_list() == ["prod words", "prod words"]
    assert got["error"].to_list() == [None, None]
    done = warehouse.shadow_completed(wh, "run-1")
    assert sorted(done["sample_id"].to_list()) == ["s1", "s2"]
    assert warehouse.shadow_results(wh, "another-run").height == 0


def test_run_state_is_the_newest_row(wh):
    created = dt.datetime(2026, 9, 1, tzinfo=UTC)
    for status in ("running", "cancelled", "running", "done"):
        warehouse.record_shadow_run(
            wh,
            run_id="r",
            created_at=created,
            candidate_model="tiny",
            baseline_model="",
            settings_json="{}",
            status=status,
            sample_size=3,
        )
    run = warehouse.shadow_run(wh, "r")
    assert run is not None and run["status"] == "done" and run["sample_size"] == 3
    assert warehouse.shadow_run(wh, "missing") is None
    listed = warehouse.shadow_runs(wh)
    assert listed.select("run_id", "status", "results").rows() == [("r", "done", 0)]


def test_judgments_round_trip(wh):
    at = dt.datetime(2026, 9, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "run_id": ["r", "r"],
            "sample_id": ["s1", "s1"],
            "judge_model": ["judge", "judge"],
            "model_a": ["cand", "prod"],
            "model_b": ["prod", "cand"],
            "order": ["ab", "ba"],
            "verdict": ["A", "tie"],
            "judged_at": [at, at],
        }
    )
    warehouse.insert_shadow_judgments(wh, frame)
    warehouse.insert_shadow_judgments(wh, frame)  # written twice, counted once
    got = warehouse.shadow_judgments(wh, "r")
    assert got.select("order", "verdict").rows() == [("ab", "A"), ("ba", "tie")]


def test_arm_figures_summarise_stored_results(wh):
    rows = [_result(f"s{i}", "candidate", latency_ms=float(i)) for i in range(1, 11)]
    rows.append(_result("s11", "candidate", status="timeout", completion_tokens=0))
    rows.append(_result("s1", "baseline_replay", model="prod"))
    warehouse.insert_shadow_results(wh, pl.DataFrame(rows))
    fig = warehouse.shadow_arm_figures(wh, "run-1")
    cand = fig.filter(pl.col("arm") == "candidate").row(0, named=True)
    assert (cand["requests"], cand["ok"], cand["timeouts"]) == (11, 10, 1)
    assert 5.0 <= cand["latency_ms_p50"] <= 6.0
    assert cand["length_ratio"] == 16 / 40


def test_shadow_tables_replicate_on_a_cluster():
    ddl = schema.render_tables(schema.SHADOW_TABLES, cluster="c1", database="prod")
    for t in schema.SHADOW_TABLES:
        local = next(
            s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS prod.{t.name}_local")
        )
        assert (
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{{database}}/"
            f"{t.name}_local', '{{replica}}', {t.engine_args})" in local
        )
        dist = next(s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS prod.{t.name} ON"))
        assert f"Distributed(c1, prod, {t.name}_local, {t.shard_key})" in dist
        # Rows of one key must land on one shard for FINAL to replace them.
        key = t.order_by.strip("()").split(", ")
        assert all(
            c in key for c in t.shard_key.removeprefix("cityHash64(").rstrip(")").split(", ")
        )
    single = schema.render_tables(schema.SHADOW_TABLES)
    assert all("ReplacingMergeTree(" in s and "Replicated" not in s for s in single)
