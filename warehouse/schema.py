"""Table and view definitions, rendered as DDL for one node (chdb or a server) or a cluster.

The write path, per event kind::

    <kind>_in (Null)  ──mv: drop event_ids already seen──►  <kind> (ReplacingMergeTree, raw)
                                                              ├─mv─► event_ids (EmbeddedRocksDB)
                                                              ├─mv─► request_attrs / session_attrs
                                                              └─mv─► rollup_hourly / sessions_hourly

The sink inserts into the ``_in`` tables with a deterministic ``insert_deduplication_token``
per batch, and stamps each row with that batch's name (``ingest_batch``). Two kinds of repeat:

- a **replayed batch** (the consumer died before committing; the batch is rebuilt from the
  offset ranges recorded in ``ingest_intents`` before it was first written) passes the
  ``event_ids`` filter, because the ids were seen in that very batch, and every table down the
  chain drops the blocks it already holds by token and writes the ones it missed: an insert
  interrupted half-way through the chain completes;
- a **producer duplicate** (the same ``event_id`` at another offset, in another batch) is dropped
  by the ``event_ids`` filter.

Raw tables are ReplacingMergeTree keyed on ``event_id`` as a last guard, so ``FINAL`` reads are
exact even if both guards were passed.

Feedback and retries carry no model version: their rollup rows take it from the response they
refer to (``request_attrs``, a key-value table joined by key lookup). Feedback whose response
has not arrived yet is rolled up with an empty ``model_version`` (visible, not lost); the raw
tables keep everything.

In cluster mode every table is sharded by ``cityHash64(user_id)``, so a user's responses,
feedback, retries and sessions, and the key-value lookups between them, live on one shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ALERT_TABLES",
    "ROLLUPS",
    "SHADOW_TABLES",
    "TABLES",
    "VIEWS",
    "Table",
    "View",
    "render_ddl",
    "render_rollup_rebuild",
    "render_tables",
]

DEDUP_WINDOW = 100_000
"""Insert blocks remembered per table for token deduplication. It must cover every block written
during ``REPLAY_GRACE_SECONDS``: one per batch per consumer (3,600 an hour per consumer at one
flush a second, so room for about 25 consumers)."""

REPLAY_GRACE_SECONDS = 3_600
"""How long after its first attempt a batch may be replayed and completed (see module doc)."""

EVENT_ID_TTL_SECONDS = 30 * 86_400
"""How long an event_id is remembered for producer-duplicate filtering."""

_RESPONSE_COLUMNS = """
    event_id String,
    ts DateTime64(3, 'UTC'),
    schema_version UInt8 DEFAULT 1,
    request_id String,
    conversation_id String,
    session_id String,
    user_id String,
    model_version LowCardinality(String),
    variant LowCardinality(String),
    turn_index UInt16,
    prompt Nullable(String),
    response Nullable(String),
    prompt_tokens UInt32,
    completion_tokens UInt32,
    latency_ms Float32,
    ttft_ms Nullable(Float32),
    finish_reason LowCardinality(String),
    refused Bool DEFAULT false,
    locale LowCardinality(String) DEFAULT 'und',
    platform LowCardinality(String) DEFAULT 'other',
    app_version LowCardinality(String),
    user_tenure_days Nullable(UInt16),
    cohort LowCardinality(String),
    intent LowCardinality(String),
    temperature Nullable(Float32),
    max_tokens Nullable(UInt32),
    opt_out Bool DEFAULT false,
    extra String DEFAULT '',
    ingest_batch String DEFAULT getSetting('insert_deduplication_token')"""

_FEEDBACK_COLUMNS = """
    event_id String,
    ts DateTime64(3, 'UTC'),
    schema_version UInt8 DEFAULT 1,
    request_id String,
    user_id String,
    rating Int8,
    reason_tags Array(String),
    comment Nullable(String),
    extra String DEFAULT '',
    ingest_batch String DEFAULT getSetting('insert_deduplication_token')"""

_RETRY_COLUMNS = """
    event_id String,
    ts DateTime64(3, 'UTC'),
    schema_version UInt8 DEFAULT 1,
    request_id String,
    new_request_id String,
    kind LowCardinality(String),
    user_id String,
    extra String DEFAULT '',
    ingest_batch String DEFAULT getSetting('insert_deduplication_token')"""

_SESSION_COLUMNS = """
    event_id String,
    ts DateTime64(3, 'UTC'),
    schema_version UInt8 DEFAULT 1,
    type LowCardinality(String),
    session_id String,
    user_id String,
    platform LowCardinality(String) DEFAULT 'other',
    locale LowCardinality(String) DEFAULT 'und',
    turns Nullable(UInt32),
    seconds Nullable(Float64),
    end_reason LowCardinality(String),
    task_completed Nullable(Bool),
    extra String DEFAULT '',
    ingest_batch String DEFAULT getSetting('insert_deduplication_token')"""

_ROLLUP_DIMS = """
    hour DateTime('UTC'),
    model_version LowCardinality(String),
    variant LowCardinality(String),
    locale LowCardinality(String),
    platform LowCardinality(String),
    intent LowCardinality(String),
    cohort LowCardinality(String)"""


@dataclass(frozen=True)
class Table:
    """One table: its columns and storage, independent of single-node or cluster rendering."""

    name: str
    columns: str
    engine: str  # MergeTree family name without "Replicated", or Null / EmbeddedRocksDB(...)
    order_by: str = ""
    partition_by: str = ""
    primary_key: str = ""
    dedup: bool = False
    ttl: str = ""
    shard_key: str = "cityHash64(user_id)"
    engine_args: str = ""  # e.g. a ReplacingMergeTree's version column

    @property
    def merge_tree(self) -> bool:
        """Whether this is a MergeTree-family table (replicated in cluster mode)."""
        return self.engine.endswith("MergeTree")


@dataclass(frozen=True)
class View:
    """A materialized view from one table into another (both named without ``_local``)."""

    name: str
    source: str
    target: str
    select: str  # uses {source} and {target}-side table names via {t[name]}


def _raw(name: str, columns: str, order_by: str) -> list[Table]:
    return [
        Table(f"{name}_in", columns, "Null"),
        Table(
            name,
            columns + ",\n    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)",
            "ReplacingMergeTree",
            order_by=order_by,
            partition_by="toDate(ts)",
            dedup=True,
        ),
    ]


TABLES: tuple[Table, ...] = (
    *_raw(
        "responses",
        _RESPONSE_COLUMNS,
        "(model_version, toStartOfHour(ts), event_id)",
    ),
    *_raw("feedback", _FEEDBACK_COLUMNS, "(toStartOfHour(ts), event_id)"),
    *_raw("retries", _RETRY_COLUMNS, "(toStartOfHour(ts), event_id)"),
    *_raw("sessions", _SESSION_COLUMNS, "(toStartOfHour(ts), event_id)"),
    Table(
        "event_ids",
        "event_id String,\n    kind LowCardinality(String),\n    ingest_batch String,\n"
        "    seen_at DateTime('UTC')",
        f"EmbeddedRocksDB({EVENT_ID_TTL_SECONDS})",
        primary_key="event_id",
    ),
    Table(
        "request_attrs",
        """
    request_id String,
    response_ts DateTime('UTC'),
    model_version LowCardinality(String),
    variant LowCardinality(String),
    locale LowCardinality(String),
    platform LowCardinality(String),
    intent LowCardinality(String),
    cohort LowCardinality(String)""",
        "EmbeddedRocksDB",
        primary_key="request_id",
    ),
    Table(
        "session_attrs",
        "session_id String,\n    model_version LowCardinality(String),\n"
        "    variant LowCardinality(String),\n    cohort LowCardinality(String),\n"
        "    locale LowCardinality(String),\n    platform LowCardinality(String)",
        "EmbeddedRocksDB",
        primary_key="session_id",
    ),
    Table(
        "rollup_hourly",
        _ROLLUP_DIMS
        + """,
    responses UInt64,
    refusals UInt64,
    errors UInt64,
    truncated UInt64,
    prompt_tokens UInt64,
    completion_tokens UInt64,
    latency_ms_sum Float64,
    latency_ms_q AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float32),
    ttft_ms_q AggregateFunction(quantilesTDigest(0.5, 0.95, 0.99), Float32),
    ratings UInt64,
    thumbs_down UInt64,
    thumbs_up UInt64,
    retries UInt64""",
        "SummingMergeTree",
        order_by="(model_version, hour, variant, locale, platform, intent, cohort)",
        partition_by="toYYYYMM(hour)",
        dedup=True,
    ),
    Table(
        "sessions_hourly",
        """
    hour DateTime('UTC'),
    model_version LowCardinality(String),
    variant LowCardinality(String),
    locale LowCardinality(String),
    platform LowCardinality(String),
    cohort LowCardinality(String),
    sessions UInt64,
    turns UInt64,
    seconds Float64,
    completion_known UInt64,
    completed UInt64""",
        "SummingMergeTree",
        order_by="(model_version, hour, variant, locale, platform, cohort)",
        partition_by="toYYYYMM(hour)",
        dedup=True,
    ),
    Table(
        "ingest_intents",
        """
    flight String,
    source LowCardinality(String),
    partition Int32,
    first_offset Int64,
    last_offset Int64,
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)""",
        "MergeTree",
        order_by="(source, partition, first_offset)",
        ttl="toDateTime(created_at) + INTERVAL 7 DAY",
        shard_key="cityHash64(source, partition)",
    ),
    Table(
        "dead_letters",
        """
    received_at DateTime64(3, 'UTC'),
    source LowCardinality(String),
    partition Int32,
    offset Int64,
    kind LowCardinality(String),
    reason String,
    event_id String,
    raw String""",
        "ReplacingMergeTree",
        order_by="(source, partition, offset)",
        partition_by="toYYYYMM(received_at)",
        dedup=True,
        shard_key="cityHash64(source, partition)",
    ),
    Table(
        "annotations",
        """
    id String,
    starts_at DateTime64(3, 'UTC'),
    ends_at Nullable(DateTime64(3, 'UTC')),
    kind LowCardinality(String),
    title String,
    model_version LowCardinality(String),
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)""",
        "ReplacingMergeTree",
        order_by="(id)",
        shard_key="cityHash64(id)",
    ),
)

SHADOW_TABLES: tuple[Table, ...] = (
    # One row per status change; the newest (by updated_at) is the run's state.
    Table(
        "shadow_runs",
        """
    run_id String,
    created_at DateTime64(3, 'UTC'),
    candidate_model String,
    baseline_model String,
    settings_json String,
    status LowCardinality(String),
    sample_size UInt32,
    updated_at DateTime64(6, 'UTC') DEFAULT now64(6)""",
        "ReplacingMergeTree",
        engine_args="updated_at",
        order_by="(run_id)",
        shard_key="cityHash64(run_id)",
    ),
    # A resumed run may write a sample again (a retried failure): the newest attempt wins, so
    # reads with FINAL see one row per (run_id, sample_id, arm).
    Table(
        "shadow_results",
        """
    run_id String,
    sample_id String,
    arm LowCardinality(String),
    model String,
    intent LowCardinality(String),
    locale LowCardinality(String),
    platform LowCardinality(String),
    cohort LowCardinality(String),
    status LowCardinality(String),
    error Nullable(String),
    attempts UInt8,
    ttft_ms Nullable(Float64),
    tpot_ms Nullable(Float64),
    latency_ms Nullable(Float64),
    prompt_tokens UInt32,
    completion_tokens UInt32,
    finish_reason LowCardinality(String),
    output String,
    production_output Nullable(String),
    production_completion_tokens UInt32,
    production_latency_ms Float64,
    expected Nullable(String),
    started_at DateTime64(3, 'UTC')""",
        "ReplacingMergeTree",
        engine_args="started_at",
        order_by="(run_id, sample_id, arm)",
        shard_key="cityHash64(run_id, sample_id)",
    ),
    Table(
        "shadow_judgments",
        """
    run_id String,
    sample_id String,
    judge_model String,
    model_a String,
    model_b String,
    `order` LowCardinality(String),
    verdict LowCardinality(String),
    judged_at DateTime64(3, 'UTC')""",
        "ReplacingMergeTree",
        engine_args="judged_at",
        order_by="(run_id, sample_id, judge_model, model_a, model_b, `order`)",
        shard_key="cityHash64(run_id, sample_id)",
    ),
)
"""Shadow replay storage (migration 3): runs, one result per sample and arm, judge verdicts."""

ALERT_TABLES: tuple[Table, ...] = (
    # One row per change of an alert (raised, notified, acknowledged, resolved): the newest by
    # updated_at is its state, the rest its history. Keyed on (alert_id, updated_at), so a
    # replayed insert collapses while every change is kept.
    Table(
        "alerts",
        """
    alert_id String,
    metric LowCardinality(String),
    model_version LowCardinality(String),
    segment LowCardinality(String),
    segment_value String,
    opened_at DateTime64(3, 'UTC'),
    detected_at DateTime64(3, 'UTC'),
    severity LowCardinality(String),
    expected Float64,
    observed Float64,
    shift Float64,
    shift_se Float64,
    relative_shift Float64,
    statistic Float64,
    threshold Float64,
    basis LowCardinality(String),
    baseline_version LowCardinality(String),
    segments_firing UInt16,
    status LowCardinality(String),
    notified_at Nullable(DateTime64(3, 'UTC')),
    updated_at DateTime64(6, 'UTC'),
    updated_by String,
    note String""",
        "ReplacingMergeTree",
        order_by="(alert_id, updated_at)",
        shard_key="cityHash64(alert_id)",
    ),
)
"""Regression alerts (migration 4): every alert with its history of status changes."""

# Keep an event unless its id was stored by another batch; a replay of the same batch passes, so
# an interrupted insert chain can complete (see the module docstring).
_NOT_SEEN = (
    "LEFT JOIN {t[event_ids]} AS s ON i.event_id = s.event_id WHERE s.kind = ''"
    " OR (s.ingest_batch = i.ingest_batch"
    f" AND s.seen_at > now() - INTERVAL {REPLAY_GRACE_SECONDS} SECOND)"
)
_DIRECT = "SETTINGS join_algorithm = 'direct'"
# Columns computed on the way in: a response without a cohort gets one from its tenure.
_DERIVED = {
    "responses": " REPLACE (if(i.cohort != '', i.cohort, multiIf(i.user_tenure_days IS NULL, '',"
    " i.user_tenure_days < 7, 'new', i.user_tenure_days < 30, 'early',"
    " i.user_tenure_days < 180, 'established', 'veteran')) AS cohort)"
}
_ROLLUP_KEYS = "hour, model_version, variant, locale, platform, intent, cohort"

VIEWS: tuple[View, ...] = (
    *(
        View(
            f"{name}_dedup_mv",
            f"{name}_in",
            name,
            f"SELECT i.*{_DERIVED.get(name, '')} FROM {{t[{name}_in]}} AS i {_NOT_SEEN} {_DIRECT}",
        )
        for name in ("responses", "feedback", "retries", "sessions")
    ),
    *(
        View(
            f"{name}_ids_mv",
            name,
            "event_ids",
            f"SELECT event_id, '{name}' AS kind, ingest_batch, now() AS seen_at FROM {{t[{name}]}}",
        )
        for name in ("responses", "feedback", "retries", "sessions")
    ),
    View(
        "request_attrs_mv",
        "responses",
        "request_attrs",
        "SELECT request_id, toDateTime(ts, 'UTC') AS response_ts, model_version, variant, locale,"
        " platform, intent, cohort FROM {t[responses]}",
    ),
    View(
        "session_attrs_mv",
        "responses",
        "session_attrs",
        "SELECT session_id, model_version, variant, cohort, locale, platform FROM {t[responses]}",
    ),
    View(
        "rollup_responses_mv",
        "responses",
        "rollup_hourly",
        "SELECT toStartOfHour(toDateTime(ts, 'UTC')) AS hour, model_version, variant, locale,"
        " platform, intent, cohort, count() AS responses, countIf(refused) AS refusals,"
        " countIf(finish_reason = 'error') AS errors, countIf(finish_reason = 'length') AS"
        " truncated, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS"
        " completion_tokens, sum(latency_ms) AS latency_ms_sum,"
        " quantilesTDigestState(0.5, 0.95, 0.99)(latency_ms) AS latency_ms_q,"
        " quantilesTDigestStateIf(0.5, 0.95, 0.99)(assumeNotNull(ttft_ms), ttft_ms IS NOT NULL)"
        " AS ttft_ms_q"
        f" FROM {{t[responses]}} GROUP BY {_ROLLUP_KEYS}",
    ),
    View(
        "rollup_feedback_mv",
        "feedback",
        "rollup_hourly",
        "SELECT toStartOfHour(if(a.request_id = '', toDateTime(f.ts, 'UTC'), a.response_ts)) AS"
        " hour, a.model_version AS model_version,"
        " a.variant AS variant, a.locale AS locale, a.platform AS platform, a.intent AS intent,"
        " a.cohort AS cohort, count() AS ratings, countIf(f.rating < 0) AS thumbs_down,"
        " countIf(f.rating > 0) AS thumbs_up"
        " FROM {t[feedback]} AS f LEFT JOIN {t[request_attrs]} AS a ON f.request_id ="
        f" a.request_id GROUP BY {_ROLLUP_KEYS} {_DIRECT}",
    ),
    View(
        "rollup_retries_mv",
        "retries",
        "rollup_hourly",
        "SELECT toStartOfHour(if(a.request_id = '', toDateTime(r.ts, 'UTC'), a.response_ts)) AS"
        " hour, a.model_version AS model_version,"
        " a.variant AS variant, a.locale AS locale, a.platform AS platform, a.intent AS intent,"
        " a.cohort AS cohort, count() AS retries"
        " FROM {t[retries]} AS r LEFT JOIN {t[request_attrs]} AS a ON r.request_id ="
        f" a.request_id GROUP BY {_ROLLUP_KEYS} {_DIRECT}",
    ),
    View(
        "rollup_sessions_mv",
        "sessions",
        "sessions_hourly",
        "SELECT toStartOfHour(toDateTime(s.ts, 'UTC')) AS hour, a.model_version AS model_version,"
        " a.variant AS variant, a.locale AS locale, a.platform AS platform, a.cohort AS cohort,"
        " count() AS sessions, sum(ifNull(s.turns, 0)) AS turns, sum(ifNull(s.seconds, 0)) AS"
        " seconds, countIf(s.task_completed IS NOT NULL) AS completion_known,"
        " countIf(s.task_completed = true) AS completed"
        " FROM {t[sessions]} AS s LEFT JOIN {t[session_attrs]} AS a ON s.session_id ="
        " a.session_id WHERE s.type = 'session_end'"
        f" GROUP BY hour, model_version, variant, locale, platform, cohort {_DIRECT}",
    ),
)


ROLLUPS = ("rollup_hourly", "sessions_hourly")
"""Tables filled by views as events arrive, and rebuildable from the raw tables."""


def render_rollup_rebuild(database: str = "default") -> list[tuple[str, str]]:
    """``(rollup, SELECT)`` pairs that recompute the rollups from the raw tables, with the
    views' own SQL (the source read with ``FINAL``).

    Useful after late events: feedback that arrived before its response is rolled up under an
    empty model version, and a rebuild attributes it. Run it with ingest stopped.
    """
    out = []
    for v in VIEWS:
        if v.target in ROLLUPS:
            names = _Names({t.name: f"{database}.{t.name}" for t in TABLES})
            names[v.source] = f"(SELECT * FROM {database}.{v.source} FINAL)"
            out.append((v.target, v.select.format(t=names)))
    return out


class _Names(dict[str, str]):
    """Table name lookup for view bodies: the local table in cluster mode."""

    def __missing__(self, key: str) -> str:
        raise KeyError(f"view refers to unknown table {key!r}")


def render_ddl(*, cluster: str | None = None, database: str = "default") -> list[str]:
    """DDL statements that create every table and view, in dependency order.

    With ``cluster``, each table becomes a ``Replicated*`` (or local) ``<name>_local`` on every
    node plus a ``Distributed`` ``<name>`` sharded by user, and views connect the local tables.
    """
    names = _Names({t.name: f"{database}.{t.name}{'_local' if cluster else ''}" for t in TABLES})
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    out = render_tables(TABLES, cluster=cluster, database=database)
    for v in VIEWS:
        out.append(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{v.name}{on_cluster}"
            f" TO {names[v.target]} AS {v.select.format(t=names)}"
        )
    return out


def render_tables(
    tables: Sequence[Table], *, cluster: str | None = None, database: str = "default"
) -> list[str]:
    """DDL statements that create ``tables`` (no views): on a cluster, a replicated
    ``<name>_local`` on every node plus a ``Distributed`` ``<name>``."""
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    out: list[str] = []
    for t in tables:
        local = f"{t.name}_local" if cluster else t.name
        out.append(_create_table(t, f"{database}.{local}", on_cluster, cluster))
        if cluster:
            out.append(
                f"CREATE TABLE IF NOT EXISTS {database}.{t.name}{on_cluster}"
                f" AS {database}.{local}"
                f" ENGINE = Distributed({cluster}, {database}, {local}, {t.shard_key})"
            )
    return out


def _create_table(t: Table, qualified: str, on_cluster: str, cluster: str | None) -> str:
    engine = f"{t.engine}({t.engine_args})" if t.engine_args else t.engine
    if cluster and t.merge_tree:
        name = qualified.split(".", 1)[1]
        args = f", {t.engine_args}" if t.engine_args else ""
        engine = (
            f"Replicated{t.engine}('/clickhouse/tables/{{shard}}/{{database}}/{name}',"
            f" '{{replica}}'{args})"
        )
    body = t.columns.strip("\n")
    parts = [f"CREATE TABLE IF NOT EXISTS {qualified}{on_cluster} (\n{body}\n) ENGINE = {engine}"]
    if t.partition_by:
        parts.append(f"PARTITION BY {t.partition_by}")
    if t.primary_key:
        parts.append(f"PRIMARY KEY {t.primary_key}")
    if t.order_by:
        parts.append(f"ORDER BY {t.order_by}")
    if t.ttl:
        parts.append(f"TTL {t.ttl}")
    if t.dedup:
        key = (
            "replicated_deduplication_window" if cluster else "non_replicated_deduplication_window"
        )
        parts.append(f"SETTINGS {key} = {DEDUP_WINDOW}")
    return "\n".join(parts)
