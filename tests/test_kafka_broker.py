"""Smoke tests for the real Kafka broker used by the integration tests."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer

from kafka_broker import KafkaBroker

pytestmark = pytest.mark.kafka


def _produce(broker: KafkaBroker, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    try:
        for value in values:
            producer.send(topic, value)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)


def _consume(broker: KafkaBroker, topic: str, expected: int, timeout: float = 30.0) -> list[bytes]:
    """Read ``expected`` messages from the start of ``topic`` with a new group."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while len(received) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                received.extend(record.value for record in records)
        consumer.commit()
        # Nothing beyond what was produced: one more short poll must be empty.
        extra = consumer.poll(timeout_ms=300)
        received.extend(r.value for records in extra.values() for r in records)
    finally:
        consumer.close()
    return received


def test_produce_and_consume_1000_with_consumer_group(
    kafka_broker: KafkaBroker, kafka_topics: dict[str, str]
) -> None:
    topic = kafka_topics["responses"]  # 2 partitions
    sent = [f"message-{i}".encode() for i in range(1000)]

    _produce(kafka_broker, topic, sent)
    received = _consume(kafka_broker, topic, expected=len(sent))

    assert len(received) == len(sent)
    assert set(received) == set(sent)


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "sigkill"])
def test_restart_keeps_data_and_accepts_new_messages(
    kafka_broker: KafkaBroker, kafka_topics: dict[str, str], hard: bool
) -> None:
    topic = kafka_topics["sessions"]
    before = [f"before-{i}".encode() for i in range(100)]
    after = [f"after-{i}".encode() for i in range(100)]
    bootstrap = kafka_broker.bootstrap
    _produce(kafka_broker, topic, before)

    kafka_broker.restart(hard=hard)

    assert kafka_broker.bootstrap == bootstrap
    assert set(_consume(kafka_broker, topic, expected=len(before))) == set(before)
    _produce(kafka_broker, topic, after)
    received = _consume(kafka_broker, topic, expected=len(before) + len(after))
    assert len(received) == len(before) + len(after)
    assert set(received) == set(before) | set(after)
