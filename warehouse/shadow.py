"""Named queries of shadow replay: what to sample, and the runs, results and judgments stored.

The tables are in :data:`warehouse.schema.SHADOW_TABLES` (migration 3). Results and judgments are
ReplacingMergeTree tables read with ``FINAL``, so a sample written twice (a resumed run that
retried a failure) counts once, its newest row winning.

Sampling happens here in SQL because it must see every candidate response, and only the sample
should leave the warehouse:

1. eligible: responses in ``[since, until)`` of the given versions that carry prompt text, from
   users who never opted out (a user who opted out once is excluded everywhere), whose
   conversation's earlier turns all carry prompt and response text (so the turn can be replayed
   with its real history), matching the segment filter;
2. deduplicated by prompt: of the responses with the same prompt text, the one with the smallest
   seeded draw ``cityHash64(seed, request_id)`` is kept;
3. stratified: per stratum (a segment column), the ``limit`` smallest draws.

Same data + same seed -> the same sample.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from warehouse.connection import Warehouse
from warehouse.errors import TerminalWarehouseError

__all__ = [
    "SAMPLE_SEGMENTS",
    "SHADOW_JUDGMENT_SCHEMA",
    "SHADOW_RESULT_SCHEMA",
    "SHADOW_RUN_SCHEMA",
    "conversation_turns",
    "insert_shadow_judgments",
    "insert_shadow_results",
    "record_shadow_run",
    "shadow_candidates",
    "shadow_completed",
    "shadow_judgments",
    "shadow_results",
    "shadow_run",
    "shadow_runs",
    "shadow_stratum_counts",
]

SAMPLE_SEGMENTS = ("intent", "locale", "platform", "cohort", "variant")
"""Columns a sample may be filtered or stratified by."""

_UTC_MS = pl.Datetime("ms", "UTC")

SHADOW_RESULT_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "sample_id": pl.String(),
    "arm": pl.String(),
    "model": pl.String(),
    "intent": pl.String(),
    "locale": pl.String(),
    "platform": pl.String(),
    "cohort": pl.String(),
    "status": pl.String(),
    "error": pl.String(),
    "attempts": pl.UInt8(),
    "ttft_ms": pl.Float64(),
    "tpot_ms": pl.Float64(),
    "latency_ms": pl.Float64(),
    "prompt_tokens": pl.UInt32(),
    "completion_tokens": pl.UInt32(),
    "finish_reason": pl.String(),
    "output": pl.String(),
    "production_output": pl.String(),
    "production_completion_tokens": pl.UInt32(),
    "production_latency_ms": pl.Float64(),
    "expected": pl.String(),
    "started_at": _UTC_MS,
}
"""Columns of a ``shadow_results`` frame, in table order (nullable ones may hold nulls)."""

SHADOW_JUDGMENT_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "sample_id": pl.String(),
    "judge_model": pl.String(),
    "model_a": pl.String(),
    "model_b": pl.String(),
    "order": pl.String(),
    "verdict": pl.String(),
    "judged_at": _UTC_MS,
}
"""Columns of a ``shadow_judgments`` frame."""

SHADOW_RUN_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "created_at": _UTC_MS,
    "candidate_model": pl.String(),
    "baseline_model": pl.String(),
    "settings_json": pl.String(),
    "status": pl.String(),
    "sample_size": pl.UInt32(),
}
"""Columns of a ``shadow_runs`` row as written (``updated_at`` is set by the table)."""

# Earlier turns of a sampled conversation are looked for this far before the window.
_HISTORY_LOOKBACK = "INTERVAL 1 DAY"


def _eligible(
    db: str, segment_filter: Mapping[str, Sequence[str]], stratify_by: str
) -> tuple[str, dict[str, Any]]:
    """The eligible, deduplicated responses (steps 1-2 of the module doc) as a subquery."""
    columns = [*segment_filter, stratify_by]
    unknown = [c for c in columns if c not in SAMPLE_SEGMENTS]
    if unknown:
        raise TerminalWarehouseError(
            f"cannot sample by {unknown}: choose from {', '.join(SAMPLE_SEGMENTS)}"
        )
    params: dict[str, Any] = {}
    filters = ""
    for i, (column, values) in enumerate(segment_filter.items()):
        filters += f" AND {column} IN {{f{i}:Array(String)}}"
        params[f"f{i}"] = list(values)
    window = "ts >= {since:DateTime64(3)} AND ts < {until:DateTime64(3)}"
    sql = f"""
        SELECT * FROM (
            SELECT r.request_id AS request_id, r.conversation_id AS conversation_id,
                r.turn_index AS turn_index, r.ts AS ts, r.model_version AS model_version,
                r.variant AS variant, r.intent AS intent, r.locale AS locale,
                r.platform AS platform, r.cohort AS cohort, r.{stratify_by} AS stratum,
                assumeNotNull(r.prompt) AS prompt, r.response AS response,
                r.completion_tokens AS completion_tokens, toFloat64(r.latency_ms) AS latency_ms,
                r.finish_reason AS finish_reason,
                round(toFloat64(r.temperature), 4) AS temperature,
                r.max_tokens AS max_tokens,
                if(JSONType(r.extra, 'stop') = 'String', [JSONExtractString(r.extra, 'stop')],
                    JSONExtract(r.extra, 'stop', 'Array(String)')) AS stop,
                if(JSONHas(r.extra, 'expected'), JSONExtractString(r.extra, 'expected'), NULL)
                    AS expected,
                cityHash64(r.prompt) AS prompt_hash,
                cityHash64({{seed:UInt64}}, r.request_id) AS draw
            FROM (
                SELECT * FROM {db}.responses FINAL
                WHERE {window} AND model_version IN {{versions:Array(String)}}
                    AND prompt IS NOT NULL AND prompt != '' AND NOT opt_out{filters}
                    AND user_id GLOBAL NOT IN (SELECT user_id FROM {db}.responses WHERE opt_out)
            ) AS r
            LEFT JOIN (
                SELECT conversation_id, groupUniqArray(turn_index) AS text_turns
                FROM {db}.responses FINAL
                WHERE ts >= {{since:DateTime64(3)}} - {_HISTORY_LOOKBACK}
                    AND ts < {{until:DateTime64(3)}} AND prompt IS NOT NULL AND prompt != ''
                    AND response IS NOT NULL
                GROUP BY conversation_id
            ) AS h ON h.conversation_id = r.conversation_id
            WHERE r.turn_index = 0
                OR arrayCount(x -> x < r.turn_index, h.text_turns) = r.turn_index
            ORDER BY draw, request_id
            LIMIT 1 BY prompt_hash
        )
    """
    return sql, params


def _window(
    since: dt.datetime, until: dt.datetime, model_versions: Sequence[str], seed: int
) -> dict[str, Any]:
    return {"since": since, "until": until, "versions": list(model_versions), "seed": seed}


def shadow_stratum_counts(
    wh: Warehouse,
    *,
    since: dt.datetime,
    until: dt.datetime,
    model_versions: Sequence[str],
    segment_filter: Mapping[str, Sequence[str]] | None = None,
    stratify_by: str = "intent",
) -> pl.DataFrame:
    """Eligible distinct prompts per stratum: columns ``stratum``, ``candidates``."""
    sql, params = _eligible(wh.database, segment_filter or {}, stratify_by)
    return wh.query_frame(
        f"SELECT stratum, count() AS candidates FROM ({sql}) GROUP BY stratum ORDER BY stratum",
        parameters={**params, **_window(since, until, model_versions, 0)},
    )


def shadow_candidates(
    wh: Warehouse,
    *,
    since: dt.datetime,
    until: dt.datetime,
    model_versions: Sequence[str],
    seed: int,
    limit_per_stratum: int,
    segment_filter: Mapping[str, Sequence[str]] | None = None,
    stratify_by: str = "intent",
) -> pl.DataFrame:
    """Up to ``limit_per_stratum`` eligible responses per stratum, in seeded draw order (see the
    module doc). Unredacted: the caller redacts before any text goes further."""
    sql, params = _eligible(wh.database, segment_filter or {}, stratify_by)
    return wh.query_frame(
        f"SELECT * FROM ({sql}) ORDER BY stratum, draw, request_id"
        " LIMIT {per_stratum:UInt32} BY stratum",
        parameters={
            **params,
            **_window(since, until, model_versions, seed),
            "per_stratum": limit_per_stratum,
        },
    )


def conversation_turns(
    wh: Warehouse,
    conversation_ids: Sequence[str],
    *,
    since: dt.datetime,
    until: dt.datetime,
) -> pl.DataFrame:
    """Every turn with text of the given conversations (from a day before ``since``), ordered:
    columns ``conversation_id``, ``turn_index``, ``prompt``, ``response``. Unredacted."""
    return wh.query_frame(
        f"""
        SELECT conversation_id, turn_index, assumeNotNull(prompt) AS prompt,
            assumeNotNull(response) AS response
        FROM {wh.database}.responses FINAL
        WHERE conversation_id IN {{ids:Array(String)}}
            AND ts >= {{since:DateTime64(3)}} - {_HISTORY_LOOKBACK} AND ts < {{until:DateTime64(3)}}
            AND prompt IS NOT NULL AND prompt != '' AND response IS NOT NULL
        ORDER BY conversation_id, turn_index
        """,
        parameters={"ids": list(conversation_ids), "since": since, "until": until},
    )


def _insert(wh: Warehouse, table: str, frame: pl.DataFrame, schema: Mapping[str, Any]) -> None:
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise TerminalWarehouseError(f"insert into {table}: the frame lacks columns {missing}")
    if frame.height:
        wh.insert_arrow(
            table, frame.select(pl.col(c).cast(t) for c, t in schema.items()).to_arrow()
        )


def insert_shadow_results(wh: Warehouse, frame: pl.DataFrame) -> None:
    """Append result rows (columns :data:`SHADOW_RESULT_SCHEMA`)."""
    _insert(wh, "shadow_results", frame, SHADOW_RESULT_SCHEMA)


def insert_shadow_judgments(wh: Warehouse, frame: pl.DataFrame) -> None:
    """Append judge verdicts (columns :data:`SHADOW_JUDGMENT_SCHEMA`)."""
    _insert(wh, "shadow_judgments", frame, SHADOW_JUDGMENT_SCHEMA)


def record_shadow_run(
    wh: Warehouse,
    *,
    run_id: str,
    created_at: dt.datetime,
    candidate_model: str,
    baseline_model: str,
    settings_json: str,
    status: str,
    sample_size: int,
) -> None:
    """Write a run's current state; the newest row of a run is its state."""
    row = {
        "run_id": run_id,
        "created_at": created_at,
        "candidate_model": candidate_model,
        "baseline_model": baseline_model,
        "settings_json": settings_json,
        "status": status,
        "sample_size": sample_size,
    }
    _insert(wh, "shadow_runs", pl.DataFrame([row]), SHADOW_RUN_SCHEMA)


def shadow_run(wh: Warehouse, run_id: str) -> dict[str, Any] | None:
    """A run's current state, or None if no run has this id."""
    frame = wh.query_frame(
        f"SELECT * FROM {wh.database}.shadow_runs FINAL WHERE run_id = {{run_id:String}}",
        parameters={"run_id": run_id},
    )
    return frame.row(0, named=True) if frame.height else None


def shadow_runs(wh: Warehouse, *, limit: int = 100) -> pl.DataFrame:
    """The newest runs with their status and how many results each has stored."""
    db = wh.database
    return wh.query_frame(
        f"""
        SELECT r.run_id AS run_id, r.created_at AS created_at, r.status AS status,
            r.candidate_model AS candidate_model, r.baseline_model AS baseline_model,
            r.sample_size AS sample_size, ifNull(s.results, 0) AS results
        FROM (SELECT * FROM {db}.shadow_runs FINAL) AS r
        LEFT JOIN (
            SELECT run_id, count() AS results FROM {db}.shadow_results FINAL GROUP BY run_id
        ) AS s ON s.run_id = r.run_id
        ORDER BY created_at DESC LIMIT {{limit:UInt32}}
        """,
        parameters={"limit": limit},
    )


def shadow_results(wh: Warehouse, run_id: str) -> pl.DataFrame:
    """A run's results, one row per (sample_id, arm) (columns :data:`SHADOW_RESULT_SCHEMA`)."""
    columns = ", ".join(SHADOW_RESULT_SCHEMA)
    return wh.query_frame(
        f"SELECT {columns} FROM {wh.database}.shadow_results FINAL"
        " WHERE run_id = {run_id:String} ORDER BY sample_id, arm",
        parameters={"run_id": run_id},
    )


def shadow_completed(wh: Warehouse, run_id: str, *, only_ok: bool = False) -> pl.DataFrame:
    """``(sample_id, arm, status)`` of every stored result of a run (with ``only_ok``, those that
    succeeded): what a resumed run skips."""
    ok = " AND status = 'ok'" if only_ok else ""
    return wh.query_frame(
        f"SELECT sample_id, arm, status FROM {wh.database}.shadow_results FINAL"
        f" WHERE run_id = {{run_id:String}}{ok}",
        parameters={"run_id": run_id},
    )


def shadow_judgments(wh: Warehouse, run_id: str) -> pl.DataFrame:
    """A run's judge verdicts (columns :data:`SHADOW_JUDGMENT_SCHEMA`)."""
    columns = ", ".join(f"`{c}`" for c in SHADOW_JUDGMENT_SCHEMA)
    return wh.query_frame(
        f"SELECT {columns} FROM {wh.database}.shadow_judgments FINAL"
        " WHERE run_id = {run_id:String} ORDER BY sample_id, judge_model, `order`",
        parameters={"run_id": run_id},
    )
