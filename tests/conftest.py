"""Shared pytest fixtures for Telltale.

Sections are independent; keep each one self-contained.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import warehouse

from kafka_broker import KafkaBroker, KafkaBrokerUnavailable
from tiny_model import build_tiny_model
from vllm_server import VllmServer, VllmUnavailable, vllm_missing_reason

# =============================================================================
# Kafka: one real broker per test session (see tests/kafka_broker.py)
# =============================================================================

#: Event kinds that get their own topic in ``kafka_topics``, with partitions.
KAFKA_TOPIC_PARTITIONS: dict[str, int] = {
    "responses": 2,
    "feedback": 2,
    "retries": 2,
    "sessions": 2,
    "dead_letters": 1,
}


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """A started single-node Kafka broker on 127.0.0.1 (free ports, temp dir).

    If Java or the broker jars cannot be obtained, the test is skipped, or it
    fails when ``CI=true`` so that CI never silently loses Kafka coverage.
    Tests may call ``kafka_broker.restart()`` (same ports and data); they
    must leave it running.
    """
    broker = KafkaBroker()
    try:
        broker.start()
    except KafkaBrokerUnavailable as exc:
        broker.close()
        reason = f"Kafka broker unavailable: {exc}"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    except BaseException:
        broker.close()
        raise
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def kafka_topics(kafka_broker: KafkaBroker) -> dict[str, str]:
    """Fresh topics for this test: ``{"responses": "<uuid>-responses", ...}``.

    Keys are the event kinds in ``KAFKA_TOPIC_PARTITIONS``; each name is
    prefixed with a new uuid so tests never share data. Topics are not
    deleted afterwards (the broker and its temp dir die with the session).
    """
    prefix = uuid.uuid4().hex
    topics = {kind: f"{prefix}-{kind}" for kind in KAFKA_TOPIC_PARTITIONS}
    for partitions in sorted(set(KAFKA_TOPIC_PARTITIONS.values())):
        names = [
            topics[kind] for kind, count in KAFKA_TOPIC_PARTITIONS.items() if count == partitions
        ]
        kafka_broker.create_topics(names, partitions=partitions)
    return topics


# =============================================================================
# Warehouse: a fresh embedded ClickHouse (chdb) per test
# =============================================================================


@pytest.fixture
def wh(tmp_path: Path) -> Iterator[warehouse.Warehouse]:
    """A migrated, empty embedded warehouse in a temp dir, closed after the test.

    One process can hold one chdb directory at a time, so the fixture always closes it.
    """
    with warehouse.connect(f"chdb://{tmp_path}/warehouse") as conn:
        warehouse.migrate(conn)
        yield conn


# =============================================================================
# vLLM: one real server (CPU build) per test session, serving a tiny random-weight model
# (see tests/vllm_server.py and tests/tiny_model.py)
# =============================================================================


def _vllm_unavailable(reason: str) -> None:
    """Skip the test, or fail it when ``CI=true`` so that CI never silently loses vLLM coverage."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"vLLM unavailable: {reason}", pytrace=False)
    pytest.skip(f"vLLM unavailable: {reason}")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random-weight Llama (built once into .cache/tiny-llama; seeded, so greedy
    outputs are the same on every build)."""
    reason = vllm_missing_reason()
    if reason is not None:
        _vllm_unavailable(reason)
    return build_tiny_model()


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path) -> Iterator[VllmServer]:
    """A healthy vLLM OpenAI-compatible server on 127.0.0.1 serving ``tiny_model_dir``.

    Use ``vllm_server.base_url`` (".../v1"), ``.model`` ("tiny-llama"), ``.model_dir`` and
    ``.metrics_url``. Startup takes about a minute; the server is stopped (whole process
    group) at the end of the session. Tests must not stop it.
    """
    server = VllmServer(tiny_model_dir)
    try:
        server.start()
    except VllmUnavailable as exc:
        server.close()
        _vllm_unavailable(str(exc))
    except BaseException:
        server.close()
        raise
    try:
        yield server
    finally:
        server.close()
