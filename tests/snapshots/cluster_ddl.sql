CREATE TABLE IF NOT EXISTS prod.responses_in_local ON CLUSTER telltale (
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
    ingest_batch String DEFAULT getSetting('insert_deduplication_token')
) ENGINE = Null;

CREATE TABLE IF NOT EXISTS prod.responses_in ON CLUSTER telltale AS prod.responses_in_local ENGINE = Distributed(telltale, prod, responses_in_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.responses_local ON CLUSTER telltale (
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
    ingest_batch String DEFAULT getSetting('insert_deduplication_token'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/responses_local', '{replica}')
PARTITION BY toDate(ts)
ORDER BY (model_version, toStartOfHour(ts), event_id)
SETTINGS replicated_deduplication_window = 100000;

CREATE TABLE IF NOT EXISTS prod.responses ON CLUSTER telltale AS prod.responses_local ENGINE = Distributed(telltale, prod, responses_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.feedback_in_local ON CLUSTER telltale (
    event_id String,
    ts DateTime64(3, 'UTC'),
    schema_version UInt8 DEFAULT 1,
    request_id String,
    user_id String,
    rating Int8,
    reason_tags Array(String),
    comment Nullable(String),
    extra String DEFAULT '',
    ingest_batch String DEFAULT getSetting('insert_deduplication_token')
) ENGINE = Null;

CREATE TABLE IF NOT EXISTS prod.feedback_in ON CLUSTER telltale AS prod.feedback_in_local ENGINE = Distributed(telltale, prod, feedback_in_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.feedback_local ON CLUSTER telltale (
    event_id String,
    ts DateTime64(3, 'UTC'),
    schema_version UInt8 DEFAULT 1,
    request_id String,
    user_id String,
    rating Int8,
    reason_tags Array(String),
    comment Nullable(String),
    extra String DEFAULT '',
    ingest_batch String DEFAULT getSetting('insert_deduplication_token'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/feedback_local', '{replica}')
PARTITION BY toDate(ts)
ORDER BY (toStartOfHour(ts), event_id)
SETTINGS replicated_deduplication_window = 100000;

CREATE TABLE IF NOT EXISTS prod.feedback ON CLUSTER telltale AS prod.feedback_local ENGINE = Distributed(telltale, prod, feedback_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.retries_in_local ON CLUSTER telltale (
    event_id String,
    ts DateTime64(3, 'UTC'),
    schema_version UInt8 DEFAULT 1,
    request_id String,
    new_request_id String,
    kind LowCardinality(String),
    user_id String,
    extra String DEFAULT '',
    ingest_batch String DEFAULT getSetting('insert_deduplication_token')
) ENGINE = Null;

CREATE TABLE IF NOT EXISTS prod.retries_in ON CLUSTER telltale AS prod.retries_in_local ENGINE = Distributed(telltale, prod, retries_in_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.retries_local ON CLUSTER telltale (
    event_id String,
    ts DateTime64(3, 'UTC'),
    schema_version UInt8 DEFAULT 1,
    request_id String,
    new_request_id String,
    kind LowCardinality(String),
    user_id String,
    extra String DEFAULT '',
    ingest_batch String DEFAULT getSetting('insert_deduplication_token'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/retries_local', '{replica}')
PARTITION BY toDate(ts)
ORDER BY (toStartOfHour(ts), event_id)
SETTINGS replicated_deduplication_window = 100000;

CREATE TABLE IF NOT EXISTS prod.retries ON CLUSTER telltale AS prod.retries_local ENGINE = Distributed(telltale, prod, retries_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.sessions_in_local ON CLUSTER telltale (
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
    ingest_batch String DEFAULT getSetting('insert_deduplication_token')
) ENGINE = Null;

CREATE TABLE IF NOT EXISTS prod.sessions_in ON CLUSTER telltale AS prod.sessions_in_local ENGINE = Distributed(telltale, prod, sessions_in_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.sessions_local ON CLUSTER telltale (
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
    ingest_batch String DEFAULT getSetting('insert_deduplication_token'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/sessions_local', '{replica}')
PARTITION BY toDate(ts)
ORDER BY (toStartOfHour(ts), event_id)
SETTINGS replicated_deduplication_window = 100000;

CREATE TABLE IF NOT EXISTS prod.sessions ON CLUSTER telltale AS prod.sessions_local ENGINE = Distributed(telltale, prod, sessions_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.event_ids_local ON CLUSTER telltale (
event_id String,
    kind LowCardinality(String),
    ingest_batch String,
    seen_at DateTime('UTC')
) ENGINE = EmbeddedRocksDB(2592000)
PRIMARY KEY event_id;

CREATE TABLE IF NOT EXISTS prod.event_ids ON CLUSTER telltale AS prod.event_ids_local ENGINE = Distributed(telltale, prod, event_ids_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.request_attrs_local ON CLUSTER telltale (
    request_id String,
    response_ts DateTime('UTC'),
    model_version LowCardinality(String),
    variant LowCardinality(String),
    locale LowCardinality(String),
    platform LowCardinality(String),
    intent LowCardinality(String),
    cohort LowCardinality(String)
) ENGINE = EmbeddedRocksDB
PRIMARY KEY request_id;

CREATE TABLE IF NOT EXISTS prod.request_attrs ON CLUSTER telltale AS prod.request_attrs_local ENGINE = Distributed(telltale, prod, request_attrs_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.session_attrs_local ON CLUSTER telltale (
session_id String,
    model_version LowCardinality(String),
    variant LowCardinality(String),
    cohort LowCardinality(String),
    locale LowCardinality(String),
    platform LowCardinality(String)
) ENGINE = EmbeddedRocksDB
PRIMARY KEY session_id;

CREATE TABLE IF NOT EXISTS prod.session_attrs ON CLUSTER telltale AS prod.session_attrs_local ENGINE = Distributed(telltale, prod, session_attrs_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.rollup_hourly_local ON CLUSTER telltale (
    hour DateTime('UTC'),
    model_version LowCardinality(String),
    variant LowCardinality(String),
    locale LowCardinality(String),
    platform LowCardinality(String),
    intent LowCardinality(String),
    cohort LowCardinality(String),
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
    retries UInt64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/rollup_hourly_local', '{replica}')
PARTITION BY toYYYYMM(hour)
ORDER BY (model_version, hour, variant, locale, platform, intent, cohort)
SETTINGS replicated_deduplication_window = 100000;

CREATE TABLE IF NOT EXISTS prod.rollup_hourly ON CLUSTER telltale AS prod.rollup_hourly_local ENGINE = Distributed(telltale, prod, rollup_hourly_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.sessions_hourly_local ON CLUSTER telltale (
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
    completed UInt64
) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/sessions_hourly_local', '{replica}')
PARTITION BY toYYYYMM(hour)
ORDER BY (model_version, hour, variant, locale, platform, cohort)
SETTINGS replicated_deduplication_window = 100000;

CREATE TABLE IF NOT EXISTS prod.sessions_hourly ON CLUSTER telltale AS prod.sessions_hourly_local ENGINE = Distributed(telltale, prod, sessions_hourly_local, cityHash64(user_id));

CREATE TABLE IF NOT EXISTS prod.ingest_intents_local ON CLUSTER telltale (
    flight String,
    source LowCardinality(String),
    partition Int32,
    first_offset Int64,
    last_offset Int64,
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/ingest_intents_local', '{replica}')
ORDER BY (source, partition, first_offset)
TTL toDateTime(created_at) + INTERVAL 7 DAY;

CREATE TABLE IF NOT EXISTS prod.ingest_intents ON CLUSTER telltale AS prod.ingest_intents_local ENGINE = Distributed(telltale, prod, ingest_intents_local, cityHash64(source, partition));

CREATE TABLE IF NOT EXISTS prod.dead_letters_local ON CLUSTER telltale (
    received_at DateTime64(3, 'UTC'),
    source LowCardinality(String),
    partition Int32,
    offset Int64,
    kind LowCardinality(String),
    reason String,
    event_id String,
    raw String
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/dead_letters_local', '{replica}')
PARTITION BY toYYYYMM(received_at)
ORDER BY (source, partition, offset)
SETTINGS replicated_deduplication_window = 100000;

CREATE TABLE IF NOT EXISTS prod.dead_letters ON CLUSTER telltale AS prod.dead_letters_local ENGINE = Distributed(telltale, prod, dead_letters_local, cityHash64(source, partition));

CREATE TABLE IF NOT EXISTS prod.annotations_local ON CLUSTER telltale (
    id String,
    starts_at DateTime64(3, 'UTC'),
    ends_at Nullable(DateTime64(3, 'UTC')),
    kind LowCardinality(String),
    title String,
    model_version LowCardinality(String),
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/annotations_local', '{replica}')
ORDER BY (id);

CREATE TABLE IF NOT EXISTS prod.annotations ON CLUSTER telltale AS prod.annotations_local ENGINE = Distributed(telltale, prod, annotations_local, cityHash64(id));

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.responses_dedup_mv ON CLUSTER telltale TO prod.responses_local AS SELECT i.* REPLACE (if(i.cohort != '', i.cohort, multiIf(i.user_tenure_days IS NULL, '', i.user_tenure_days < 7, 'new', i.user_tenure_days < 30, 'early', i.user_tenure_days < 180, 'established', 'veteran')) AS cohort) FROM prod.responses_in_local AS i LEFT JOIN prod.event_ids_local AS s ON i.event_id = s.event_id WHERE s.kind = '' OR (s.ingest_batch = i.ingest_batch AND s.seen_at > now() - INTERVAL 3600 SECOND) SETTINGS join_algorithm = 'direct';

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.feedback_dedup_mv ON CLUSTER telltale TO prod.feedback_local AS SELECT i.* FROM prod.feedback_in_local AS i LEFT JOIN prod.event_ids_local AS s ON i.event_id = s.event_id WHERE s.kind = '' OR (s.ingest_batch = i.ingest_batch AND s.seen_at > now() - INTERVAL 3600 SECOND) SETTINGS join_algorithm = 'direct';

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.retries_dedup_mv ON CLUSTER telltale TO prod.retries_local AS SELECT i.* FROM prod.retries_in_local AS i LEFT JOIN prod.event_ids_local AS s ON i.event_id = s.event_id WHERE s.kind = '' OR (s.ingest_batch = i.ingest_batch AND s.seen_at > now() - INTERVAL 3600 SECOND) SETTINGS join_algorithm = 'direct';

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.sessions_dedup_mv ON CLUSTER telltale TO prod.sessions_local AS SELECT i.* FROM prod.sessions_in_local AS i LEFT JOIN prod.event_ids_local AS s ON i.event_id = s.event_id WHERE s.kind = '' OR (s.ingest_batch = i.ingest_batch AND s.seen_at > now() - INTERVAL 3600 SECOND) SETTINGS join_algorithm = 'direct';

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.responses_ids_mv ON CLUSTER telltale TO prod.event_ids_local AS SELECT event_id, 'responses' AS kind, ingest_batch, now() AS seen_at FROM prod.responses_local;

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.feedback_ids_mv ON CLUSTER telltale TO prod.event_ids_local AS SELECT event_id, 'feedback' AS kind, ingest_batch, now() AS seen_at FROM prod.feedback_local;

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.retries_ids_mv ON CLUSTER telltale TO prod.event_ids_local AS SELECT event_id, 'retries' AS kind, ingest_batch, now() AS seen_at FROM prod.retries_local;

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.sessions_ids_mv ON CLUSTER telltale TO prod.event_ids_local AS SELECT event_id, 'sessions' AS kind, ingest_batch, now() AS seen_at FROM prod.sessions_local;

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.request_attrs_mv ON CLUSTER telltale TO prod.request_attrs_local AS SELECT request_id, toDateTime(ts, 'UTC') AS response_ts, model_version, variant, locale, platform, intent, cohort FROM prod.responses_local;

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.session_attrs_mv ON CLUSTER telltale TO prod.session_attrs_local AS SELECT session_id, model_version, variant, cohort, locale, platform FROM prod.responses_local;

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.rollup_responses_mv ON CLUSTER telltale TO prod.rollup_hourly_local AS SELECT toStartOfHour(toDateTime(ts, 'UTC')) AS hour, model_version, variant, locale, platform, intent, cohort, count() AS responses, countIf(refused) AS refusals, countIf(finish_reason = 'error') AS errors, countIf(finish_reason = 'length') AS truncated, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, sum(latency_ms) AS latency_ms_sum, quantilesTDigestState(0.5, 0.95, 0.99)(latency_ms) AS latency_ms_q, quantilesTDigestStateIf(0.5, 0.95, 0.99)(assumeNotNull(ttft_ms), ttft_ms IS NOT NULL) AS ttft_ms_q FROM prod.responses_local GROUP BY hour, model_version, variant, locale, platform, intent, cohort;

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.rollup_feedback_mv ON CLUSTER telltale TO prod.rollup_hourly_local AS SELECT toStartOfHour(if(a.request_id = '', toDateTime(f.ts, 'UTC'), a.response_ts)) AS hour, a.model_version AS model_version, a.variant AS variant, a.locale AS locale, a.platform AS platform, a.intent AS intent, a.cohort AS cohort, count() AS ratings, countIf(f.rating < 0) AS thumbs_down, countIf(f.rating > 0) AS thumbs_up FROM prod.feedback_local AS f LEFT JOIN prod.request_attrs_local AS a ON f.request_id = a.request_id GROUP BY hour, model_version, variant, locale, platform, intent, cohort SETTINGS join_algorithm = 'direct';

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.rollup_retries_mv ON CLUSTER telltale TO prod.rollup_hourly_local AS SELECT toStartOfHour(if(a.request_id = '', toDateTime(r.ts, 'UTC'), a.response_ts)) AS hour, a.model_version AS model_version, a.variant AS variant, a.locale AS locale, a.platform AS platform, a.intent AS intent, a.cohort AS cohort, count() AS retries FROM prod.retries_local AS r LEFT JOIN prod.request_attrs_local AS a ON r.request_id = a.request_id GROUP BY hour, model_version, variant, locale, platform, intent, cohort SETTINGS join_algorithm = 'direct';

CREATE MATERIALIZED VIEW IF NOT EXISTS prod.rollup_sessions_mv ON CLUSTER telltale TO prod.sessions_hourly_local AS SELECT toStartOfHour(toDateTime(s.ts, 'UTC')) AS hour, a.model_version AS model_version, a.variant AS variant, a.locale AS locale, a.platform AS platform, a.cohort AS cohort, count() AS sessions, sum(ifNull(s.turns, 0)) AS turns, sum(ifNull(s.seconds, 0)) AS seconds, countIf(s.task_completed IS NOT NULL) AS completion_known, countIf(s.task_completed = true) AS completed FROM prod.sessions_local AS s LEFT JOIN prod.session_attrs_local AS a ON s.session_id = a.session_id WHERE s.type = 'session_end' GROUP BY hour, model_version, variant, locale, platform, cohort SETTINGS join_algorithm = 'direct';
