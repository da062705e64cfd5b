"""Exactly-once effect from a real Kafka broker into the real engine, through crashes.

Each test produces a known stream (distinct valid events, producer duplicates, malformed
messages), disturbs the consumer (kill -9, a second group member, a broker restart, a warehouse
outage), and then checks that the warehouse holds exactly the distinct valid events and
``dead_letters`` exactly the malformed messages.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

import warehouse
from ingest import EventSink, IngestSettings, KafkaIngest
from warehouse import TransientWarehouseError

from events_factory import encode, feedback, response, retry, session_end

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parent.parent

MALFORMED = [
    b"{not json",
    b"\xff\xfe\xfd",
    b"",
    encode(response(10**9, latency_ms="slow")),
    encode({"type": "purchase", "event_id": "p-1"}),
    encode(response(10**9 + 1, ts="2199-01-01T00:00:00Z")),
    encode(feedback(10**9 + 2, rating=5)),
]


@dataclass
class Stream:
    """What was produced, and what the warehouse must end up holding."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    distinct: dict[str, int] = field(
        default_factory=lambda: {"responses": 0, "feedback": 0, "retries": 0, "sessions": 0}
    )
    malformed: int = 0


def make_stream(n_events: int, *, seed: int, dup_rate: float = 0.01, bad_rate: float = 0.005):
    """Distinct valid events with producer duplicates and malformed messages mixed in."""
    rng = random.Random(seed)
    stream = Stream()
    valid: list[tuple[str, bytes]] = []
    for i in range(n_events):
        r = i % 10
        if r < 6:
            valid.append(("responses", encode(response(i, event_id=f"r-{seed}-{i}"))))
            stream.distinct["responses"] += 1
        elif r < 8:
            valid.append(("feedback", encode(feedback(i - 1, event_id=f"f-{seed}-{i}"))))
            stream.distinct["feedback"] += 1
        elif r < 9:
            valid.append(("retries", encode(retry(i - 2, event_id=f"t-{seed}-{i}"))))
            stream.distinct["retries"] += 1
        else:
            valid.append(("sessions", encode(session_end(i, event_id=f"s-{seed}-{i}"))))
            stream.distinct["sessions"] += 1
    for kind, raw in valid:
        stream.messages.append((kind, raw))
        if rng.random() < dup_rate:  # the producer retried: same bytes, later offset
            stream.messages.append((kind, raw))
        if rng.random() < bad_rate:
            stream.messages.append((rng.choice(list(stream.distinct)), rng.choice(MALFORMED)))
            stream.malformed += 1
    return stream


def produce(bootstrap: str, topics: dict[str, str], messages: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=256 * 1024
    )
    for kind, raw in messages:
        producer.send(topics[kind], raw)
    producer.flush()
    producer.close()


def settings_for(broker, topics: dict[str, str], group: str) -> IngestSettings:
    return IngestSettings(
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        topics=[topics[k] for k in ("responses", "feedback", "retries", "sessions")],
        dead_letter_topic=topics["dead_letters"],
        batch_max_events=5_000,
        batch_max_seconds=0.5,
        backoff_max_seconds=2.0,
    )


def lag(bootstrap: str, group: str, topics: list[str]) -> int:
    """Messages not yet committed by ``group`` across ``topics``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        parts = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        ends = consumer.end_offsets(parts)
        try:
            committed = admin.list_group_offsets({group: None}).get(group, {})
        except KafkaError:  # no coordinator yet (a fresh broker): nothing is committed
            committed = {}
        return sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in parts)
    finally:
        consumer.close()
        admin.close()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_consumer(settings: IngestSettings, url: str, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "TELLTALE_INGEST_TOPICS": json.dumps(settings.topics),
        "TELLTALE_INGEST_DEAD_LETTER_TOPIC": settings.dead_letter_topic or "",
        "TELLTALE_INGEST_BATCH_MAX_EVENTS": str(settings.batch_max_events),
        "TELLTALE_INGEST_BATCH_MAX_SECONDS": str(settings.batch_max_seconds),
    }
    cmd = [
        sys.executable, "-m", "app", "ingest", "-w", url,
        "--bootstrap", settings.bootstrap_servers, "--group", settings.group_id,
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


@pytest.fixture
def consumers():
    """Start consumer processes like ``start_consumer``; any still running at the end (a test
    that failed half-way) is killed, so it cannot load the machine for the tests after it."""
    started: list[subprocess.Popen] = []

    def start(settings: IngestSettings, url: str, log: Path) -> subprocess.Popen:
        started.append(start_consumer(settings, url, log))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_exact(url: str, stream: Stream) -> None:
    with warehouse.connect(url) as wh:
        counts = dict(warehouse.event_counts(wh).iter_rows())
        assert counts == stream.distinct
        raw_rows = wh.query_frame("SELECT count() AS n FROM responses")["n"][0]
        assert raw_rows == stream.distinct["responses"], "duplicates reached the raw table"
        dead = wh.query_frame("SELECT count() AS n FROM dead_letters FINAL")["n"][0]
        assert dead == stream.malformed
        rolled = wh.query_frame("SELECT sum(responses) AS r, sum(ratings) AS f FROM rollup_hourly")
        assert rolled.row(0) == (stream.distinct["responses"], stream.distinct["feedback"])


def dead_letter_keys(bootstrap: str, topic: str) -> set[bytes]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000
    )
    keys = {m.key for m in consumer}
    consumer.close()
    return keys


def test_kill_9_three_times_still_exactly_once(kafka_broker, kafka_topics, tmp_path, consumers):
    stream = make_stream(200_000, seed=1)
    produce(kafka_broker.bootstrap, kafka_topics, stream.messages)
    total = len(stream.messages)
    settings = settings_for(kafka_broker, kafka_topics, "kill9")
    url = f"chdb://{tmp_path}/wh"
    log = tmp_path / "consumer.log"
    rng = random.Random(7)
    for moment in range(3):
        proc = consumers(settings, url, log)
        # kill at a random point while it is mid-stream: after some progress, before the end
        target = total * rng.uniform(0.15 + 0.25 * moment, 0.3 + 0.25 * moment)
        wait_for(
            lambda t=target, p=proc: (
                total - lag(kafka_broker.bootstrap, "kill9", settings.topics) >= t
                or p.poll() is not None
            ),
            180,
            f"consumer progress to {target:.0f}",
        )
        time.sleep(rng.uniform(0, 0.4))  # land anywhere inside a batch
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = consumers(settings, url, log)
    wait_for(lambda: lag(kafka_broker.bootstrap, "kill9", settings.topics) == 0, 300, "lag 0")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert_exact(url, stream)
    # every malformed message also reached the dead-letter topic (at least once: keyed by origin)
    keys = dead_letter_keys(kafka_broker.bootstrap, kafka_topics["dead_letters"])
    assert len(keys) == stream.malformed


def _run_member(runner: KafkaIngest, errors: list[BaseException]) -> threading.Thread:
    def target() -> None:
        try:
            runner.run(install_signal_handlers=False)
        except BaseException as e:  # surfaced by the test
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_two_consumers_and_a_rebalance(kafka_broker, kafka_topics, wh):
    # chdb holds its directory in one process, so both group members share it from threads;
    # with a ClickHouse server they would be separate processes.
    stream = make_stream(60_000, seed=2)
    half = len(stream.messages) // 2
    produce(kafka_broker.bootstrap, kafka_topics, stream.messages[:half])
    settings = settings_for(kafka_broker, kafka_topics, "pair")
    errors: list[BaseException] = []
    first = KafkaIngest(EventSink(wh), settings)
    t1 = _run_member(first, errors)
    wait_for(lambda: first.metrics.total_events > 5_000, 60, "first member progress")
    second = KafkaIngest(EventSink(wh), settings)  # joins: the group rebalances
    t2 = _run_member(second, errors)
    # the group settles when each member owns a share and no partition is owned twice
    wait_for(
        lambda: (
            second.assignment and first.assignment and not (second.assignment & first.assignment)
        ),
        60,
        "both members assigned",
    )
    produce(kafka_broker.bootstrap, kafka_topics, stream.messages[half:])
    wait_for(lambda: second.metrics.total_events > 0, 60, "second member progress")
    first.stop()  # leaves mid-stream: another rebalance hands its partitions over
    t1.join(timeout=60)
    wait_for(lambda: lag(kafka_broker.bootstrap, "pair", settings.topics) == 0, 120, "lag 0")
    second.stop()
    t2.join(timeout=60)
    assert not errors, errors
    assert_exact_open(wh, stream)


def test_an_idle_member_rejoins_and_nothing_is_lost(kafka_broker, kafka_topics, wh):
    """Three members for two partitions a topic: one is assigned nothing and rejoins the group
    (the mend for a rebalance that ran without metadata); each rejoin is a rebalance for all,
    mid-stream, and every event still lands once."""
    stream = make_stream(40_000, seed=4)
    half = len(stream.messages) // 2
    produce(kafka_broker.bootstrap, kafka_topics, stream.messages[:half])
    settings = settings_for(kafka_broker, kafka_topics, "idle").model_copy(
        update={"rejoin_empty_after_seconds": 2.0}
    )
    errors: list[BaseException] = []
    members = [KafkaIngest(EventSink(wh), settings) for _ in range(3)]
    threads = [_run_member(m, errors) for m in members]
    wait_for(lambda: sum(m.rejoins for m in members) >= 1, 120, "an idle member rejoining")
    produce(kafka_broker.bootstrap, kafka_topics, stream.messages[half:])
    wait_for(lambda: lag(kafka_broker.bootstrap, "idle", settings.topics) == 0, 180, "lag 0")
    for m in members:
        m.stop()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert_exact_open(wh, stream)


def assert_exact_open(wh, stream: Stream) -> None:
    counts = dict(warehouse.event_counts(wh).iter_rows())
    assert counts == stream.distinct
    assert wh.query_frame("SELECT count() AS n FROM dead_letters FINAL")["n"][0] == stream.malformed
    rolled = wh.query_frame("SELECT sum(responses) AS r, sum(ratings) AS f FROM rollup_hourly")
    assert rolled.row(0) == (stream.distinct["responses"], stream.distinct["feedback"])


def test_broker_restart_mid_stream(kafka_broker, kafka_topics, tmp_path, consumers):
    stream = make_stream(60_000, seed=3)
    half = len(stream.messages) // 2
    produce(kafka_broker.bootstrap, kafka_topics, stream.messages[:half])
    settings = settings_for(kafka_broker, kafka_topics, "restart")
    url = f"chdb://{tmp_path}/wh"
    log = tmp_path / "consumer.log"
    proc = consumers(settings, url, log)
    wait_for(
        lambda: half - lag(kafka_broker.bootstrap, "restart", settings.topics) > half // 3,
        120,
        "consumer progress",
    )
    kafka_broker.restart(hard=True)  # SIGKILL the broker, same ports and data
    produce(kafka_broker.bootstrap, kafka_topics, stream.messages[half:])
    wait_for(lambda: lag(kafka_broker.bootstrap, "restart", settings.topics) == 0, 300, "lag 0")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert_exact(url, stream)


class FlakyWarehouse:
    """The real warehouse, but the next ``failures`` inserts fail as if the server were down."""

    def __init__(self, inner: warehouse.Warehouse, failures: int) -> None:
        self._inner = inner
        self.failures = failures
        self.attempts = 0

    def __getattr__(self, name):  # queries and the rest go to the real warehouse
        return getattr(self._inner, name)

    def insert_arrow(self, table, data, *, dedup_token=None):
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise TransientWarehouseError("insert: the warehouse is unreachable (injected)")
        return self._inner.insert_arrow(table, data, dedup_token=dedup_token)


def test_warehouse_outage_backs_off_without_committing(kafka_broker, kafka_topics, wh):
    stream = make_stream(20_000, seed=4)
    produce(kafka_broker.bootstrap, kafka_topics, stream.messages)
    settings = settings_for(kafka_broker, kafka_topics, "outage")
    flaky = FlakyWarehouse(wh, failures=4)
    runner = KafkaIngest(EventSink(flaky), settings)  # type: ignore[arg-type]
    errors: list[BaseException] = []
    thread = _run_member(runner, errors)
    wait_for(lambda: runner.metrics.flush_failures._value.get() >= 2, 60, "failed flushes")
    # while inserts fail, nothing is committed
    assert lag(kafka_broker.bootstrap, "outage", settings.topics) == len(stream.messages)
    wait_for(lambda: lag(kafka_broker.bootstrap, "outage", settings.topics) == 0, 120, "lag 0")
    runner.stop()
    thread.join(timeout=60)
    assert not errors, errors
    assert runner.metrics.flush_failures._value.get() == 4
    assert_exact_open(wh, stream)
