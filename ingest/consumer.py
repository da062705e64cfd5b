"""The Kafka consumer: at-least-once delivery in, exactly-once effect in the warehouse out.

The loop polls raw messages into a :class:`~ingest.sink.RawBatch`. When the batch is full or
old enough it becomes a *flight*: its offset ranges are recorded (``ingest_intents``), it is
decoded and validated in a separate process (:class:`~ingest.sink.DecodeProcess`; the Kafka
client keeps this interpreter's GIL to itself) and written on a background thread (one insert
per table, deterministic dedup token) while the next batch fills, and only then are its offsets
committed.

- Crash before the commit: when a partition is next assigned (to this process or another), the
  flight that began at its committed offset is rebuilt from exactly the recorded ranges, all
  partitions included, and written again under the same token; the warehouse completes what
  was half written and drops what was already there. Then its offsets are committed.
- Rebalance: the listener lands the flight and writes the batch before partitions are revoked.
- Warehouse down: the flight is retried with capped exponential backoff; partitions are paused
  meanwhile and ``poll`` keeps the group membership alive.
- SIGTERM / SIGINT: finish the current step, flush, commit, close, return.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.errors import IngestError, TransientIngestError
from ingest.metrics import IngestMetrics
from ingest.sink import Batch, DeadLetter, DecodeProcess, EventSink, Prepared, RawBatch, Verdict
from warehouse import (
    TransientWarehouseError,
    WarehouseError,
    pending_flight,
    record_ingest_intents,
)

__all__ = ["IngestSettings", "KafkaIngest"]

log = logging.getLogger("telltale.ingest")

_REJOIN_MAX_SECONDS = 600.0


class IngestSettings(BaseSettings):
    """Kafka ingest configuration (environment: ``TELLTALE_INGEST_*``)."""

    model_config = SettingsConfigDict(env_prefix="TELLTALE_INGEST_", frozen=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers. TELLTALE_INGEST_BOOTSTRAP_SERVERS."
    )
    group_id: str = Field(
        "telltale-ingest", description="Consumer group. TELLTALE_INGEST_GROUP_ID."
    )
    topics: list[str] = Field(
        ["telltale.responses", "telltale.feedback", "telltale.retries", "telltale.sessions"],
        description="Event topics (JSON list). TELLTALE_INGEST_TOPICS.",
    )
    dead_letter_topic: str | None = Field(
        "telltale.dead_letters",
        description="Topic for rejected messages (besides the dead_letters table); empty to "
        "disable. TELLTALE_INGEST_DEAD_LETTER_TOPIC.",
    )
    batch_max_events: int = Field(
        200_000,
        ge=1,
        description="Flush after this many messages. TELLTALE_INGEST_BATCH_MAX_EVENTS.",
    )
    batch_max_seconds: float = Field(
        2.0, gt=0, description="Flush a batch this old. TELLTALE_INGEST_BATCH_MAX_SECONDS."
    )
    max_poll_records: int = Field(
        10_000, ge=1, description="Records per poll. TELLTALE_INGEST_MAX_POLL_RECORDS."
    )
    max_partition_fetch_bytes: int = Field(
        4 * 1024 * 1024,
        description="Bytes per partition per fetch. TELLTALE_INGEST_MAX_PARTITION_FETCH_BYTES.",
    )
    decode_process: bool = Field(
        True,
        description="Decode and validate in a separate process, so the Kafka client keeps this "
        "one's GIL to itself; false decodes on the writer thread, faster when every core already "
        "runs a consumer. TELLTALE_INGEST_DECODE_PROCESS.",
    )
    backoff_max_seconds: float = Field(
        30.0,
        gt=0,
        description="Cap of the flush retry backoff. TELLTALE_INGEST_BACKOFF_MAX_SECONDS.",
    )
    rejoin_empty_after_seconds: float = Field(
        60.0,
        gt=0,
        description="A member assigned no partition for this long rejoins the group (then after "
        "twice as long, up to 10 minutes): a rebalance that ran without the topics' metadata "
        "leaves it idle otherwise. TELLTALE_INGEST_REJOIN_EMPTY_AFTER_SECONDS.",
    )
    metrics_port: int | None = Field(
        None,
        description="Serve Prometheus metrics on 127.0.0.1:PORT. TELLTALE_INGEST_METRICS_PORT.",
    )
    log_every_seconds: float = Field(
        10.0, gt=0, description="Status log interval. TELLTALE_INGEST_LOG_EVERY_SECONDS."
    )
    security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_SSL. TELLTALE_INGEST_SECURITY_PROTOCOL."
    )
    sasl_mechanism: str | None = Field(
        None, description="e.g. PLAIN, SCRAM-SHA-512. TELLTALE_INGEST_SASL_MECHANISM."
    )
    sasl_username: str | None = Field(None, description="TELLTALE_INGEST_SASL_USERNAME.")
    sasl_password: SecretStr | None = Field(None, description="TELLTALE_INGEST_SASL_PASSWORD.")

    def client_config(self) -> dict[str, object]:
        """Connection settings shared by the consumer, the producer and the benchmark."""
        config: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_username
            config["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return config

    def consumer_config(self) -> dict[str, object]:
        """KafkaConsumer settings; the raw-consume benchmark uses the same ones."""
        return {
            **self.client_config(),
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": self.max_poll_records,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "fetch_max_bytes": max(52_428_800, self.max_partition_fetch_bytes),
            # Fresher metadata for the next rebalance (the default refresh is 5 minutes); an
            # empty assignment is mended by the member rejoining (see rejoin_empty_after_seconds).
            "metadata_max_age_ms": 30_000,
        }


@dataclass
class _Flight:
    """A batch handed to the writer thread, and the future of its write."""

    batch: RawBatch
    future: Future[dict[TopicPartition, OffsetAndMetadata]]
    commit_only: set[TopicPartition] | None = None
    abandoned: bool = False


class _Listener(AsyncConsumerRebalanceListener):
    """Flush and commit before partitions go to another member.

    kafka-python runs listeners on its IO thread while ``poll()`` waits on the main thread, so
    the batches are not being touched; the commit must be awaited (a blocking commit from the IO
    thread would deadlock), hence the async listener.
    """

    def __init__(self, ingest: KafkaIngest) -> None:
        self._ingest = ingest

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        ingest = self._ingest
        try:
            offsets = ingest._drain()
            if offsets:
                assert ingest._consumer is not None
                await ingest._consumer.commit_async(offsets)
                log.info("flushed and committed before losing %d partitions", len(revoked))
        except Exception as e:
            # Left uncommitted: whoever owns the partitions next rebuilds the same batches from
            # the recorded intents, and the warehouse completes or drops them.
            log.warning("could not flush before rebalance (%s); the new owner will replay", e)
        ingest._reset_batch()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._ingest._checked.difference_update(assigned)
        log.info("assigned %s", sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))


class KafkaIngest:
    """A consumer-group member that writes event topics to the warehouse.

    See the module docstring for the guarantees and how a crashed batch is recovered.

    ``run()`` blocks until :meth:`stop` (or SIGTERM/SIGINT when ``install_signal_handlers``) and
    returns the total events written.
    """

    def __init__(
        self,
        sink: EventSink,
        settings: IngestSettings | None = None,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.sink = sink
        self.settings = settings or IngestSettings()
        self.metrics = metrics or IngestMetrics(log_every=self.settings.log_every_seconds)
        self._stop = threading.Event()
        self._batch = RawBatch()
        self._oldest = time.monotonic()
        # Partitions checked for an unfinished flight since they were assigned, and for those
        # whose flight was recovered, the last offset it covered (records up to it are written).
        self._checked: set[TopicPartition] = set()
        self._written_until: dict[TopicPartition, int] = {}
        # One flight of batches is written in the background while the next one fills: the
        # warehouse insert releases the GIL, so it overlaps with fetching and decoding.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telltale-writer")
        self._inflight: _Flight | None = None
        self._decoding = DecodeProcess(sink.decoder) if self.settings.decode_process else None
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._idle_since = time.monotonic()  # assigned nothing since (reset while assigned)
        self._rejoin_after = self.settings.rejoin_empty_after_seconds
        self.rejoins = 0  # times this member rejoined the group after an empty assignment

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this member owns right now (empty before it joins the group)."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def stop(self) -> None:
        """Ask the loop to flush, commit and return."""
        self._stop.set()

    @contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: flushing and stopping", signum)
            self.stop()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def run(self, *, install_signal_handlers: bool = True) -> int:
        """Consume until stopped; returns the number of events written."""
        s = self.settings
        try:
            self._consumer = KafkaConsumer(**s.consumer_config())
            if s.dead_letter_topic:
                self._producer = KafkaProducer(**s.client_config(), acks="all", linger_ms=5)
        except KafkaError as e:
            raise TransientIngestError(f"cannot reach Kafka at {s.bootstrap_servers}: {e}") from e
        self._subscribe()
        if self._decoding is not None:
            self._decoding.start()  # while the group forms
        if s.metrics_port:
            self.metrics.serve(s.metrics_port)
        guard = self._signals() if install_signal_handlers else contextmanager(_noop)()
        try:
            with guard:
                self._loop()
        finally:
            self._close()
        return self.metrics.total_events

    def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        s = self.settings
        while not self._stop.is_set():
            polled = consumer.poll(timeout_ms=200, max_records=s.max_poll_records)
            for tp, records in polled.items():
                self._add(tp, records)
            if polled and self._decoding is not None:
                self._decoding.feed(self._batch)
            if self._inflight is not None and self._inflight.future.done():
                self._land()  # commit as soon as the write is done, not at the next flush
            if not self._batch.size:
                self._oldest = time.monotonic()
            elif (
                self._batch.size >= s.batch_max_events
                or time.monotonic() - self._oldest >= s.batch_max_seconds
            ):
                self._rotate()
            if self.metrics.log_due():
                self.metrics.log_status(lag=self._lag())
            self._rejoin_if_idle()
        self._rotate(wait=True)

    def _subscribe(self) -> None:
        """Join the group for the configured topics, flushing before partitions are revoked."""
        assert self._consumer is not None
        self._consumer.subscribe(self.settings.topics, listener=_Listener(self))

    def _rejoin_if_idle(self) -> None:
        """Rejoin the group after ``rejoin_empty_after_seconds`` assigned nothing, then after
        twice as long each time (up to 10 minutes).

        kafka-python's leader assigns nothing for topics it has no metadata for ("No partition
        metadata"), and seen here (after SIGKILLed members, and once on a first join) the
        metadata refreshes that followed did not trigger the rebalance that should mend it: the
        member stayed idle with the partitions unowned. Rejoining costs one rebalance. A member
        of a group with more members than partitions is idle by design; the doubling bounds
        what it costs them.
        """
        consumer = self._consumer
        assert consumer is not None
        now = time.monotonic()
        if consumer.assignment():
            self._idle_since = now
            self._rejoin_after = self.settings.rejoin_empty_after_seconds
            return
        if now - self._idle_since < self._rejoin_after:
            return
        # Not consumer.partitions_for_topic() here: on unknown topics it fetches every topic's
        # metadata, and a consumer that did so before joining stopped committing after a broker
        # restart in the tests.
        log.info("assigned nothing for %.0f s: rejoining the group", now - self._idle_since)
        consumer.unsubscribe()
        self._subscribe()
        self.rejoins += 1
        self._idle_since = now
        self._rejoin_after = min(2 * self._rejoin_after, _REJOIN_MAX_SECONDS)

    def _add(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        """Decode records into the batch, after recovering an unfinished flight if there is one."""
        if tp not in self._checked:
            self._checked.add(tp)
            start = max(records[0].offset, self._written_until.get(tp, -1) + 1)
            while (last := self._recover(tp, start)) is not None:
                start = last + 1  # a later batch may be unfinished too (a failed commit)
        done = self._written_until.get(tp)
        if done is not None:
            records = [r for r in records if r.offset > done]
        self._batch.add(
            tp.topic, tp.partition, [r.offset for r in records], [r.value for r in records]
        )

    def _recover(self, tp: TopicPartition, committed: int) -> int | None:
        """Rebuild and write the flight that began at ``committed`` of ``tp`` and never committed;
        return the last offset of ``tp`` it covered, or None if there was none.

        The flight may span partitions this member does not own: they are read directly
        (assign + seek, outside the group). Every owner of one of its partitions may do this;
        the writes share a token, so the second is a no-op.
        """
        found = pending_flight(self.sink.warehouse, tp.topic, tp.partition, committed)
        if found is None:
            return None
        flight, ranges = found
        log.info("recovering unfinished batch %s: %s", flight, ranges)
        batch = RawBatch()
        reader = KafkaConsumer(**self.settings.client_config(), enable_auto_commit=False)
        try:
            parts = {TopicPartition(s, p): (lo, hi) for s, p, lo, hi in ranges}
            reader.assign(list(parts))
            for part, (lo, _) in parts.items():
                reader.seek(part, lo)
            pending = dict(parts)
            deadline = time.monotonic() + 120
            while pending and time.monotonic() < deadline:
                for part, recs in reader.poll(timeout_ms=500).items():
                    if part not in pending:
                        continue
                    lo, hi = pending[part]
                    take = [r for r in recs if lo <= r.offset <= hi]
                    batch.add(
                        part.topic,
                        part.partition,
                        [r.offset for r in take],
                        [r.value for r in take],
                    )
                    if take and take[-1].offset >= hi:
                        del pending[part]
                        reader.pause(part)
        finally:
            reader.close(autocommit=False)
        if pending or batch.token() != flight:
            # Records gone (retention) or not reachable: write what this member owns normally.
            log.error("cannot rebuild batch %s (missing %s); continuing without", flight, pending)
            return None
        self._land()
        owned = self.assignment
        # Commit only what this member owns: other partitions' owners commit their own.
        self._inflight = _Flight(batch, self._writer.submit(self._write, batch), owned)
        self._land()
        for part, (_, hi) in parts.items():
            if part in owned:
                self._written_until[part] = hi
        return parts[tp][1]

    def _lag(self) -> dict[tuple[str, int], int]:
        consumer = self._consumer
        assert consumer is not None
        lag = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                lag[(tp.topic, tp.partition)] = max(0, high - consumer.position(tp))
        self.metrics.record_lag(lag)
        return lag

    def _write(
        self, batch: RawBatch, decoding: Future[Verdict | None] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Record the batch's ranges, write it and its dead letters; return the offsets that may
        then be committed. Runs on the writer thread (or in the rebalance listener); raises on
        failure, and may be called again with the same batch.
        """
        if not batch.size:
            return {}
        token = batch.token()
        ranges = [(s, p, lo, hi) for (s, p), (lo, hi) in sorted(batch.ranges.items())]
        record_ingest_intents(self.sink.warehouse, token, ranges)
        started = time.monotonic()
        prepared = self._prepare(batch, decoding)
        result = self.sink.write(prepared, token, lambda: self._decode(batch))
        if prepared.dead and self._producer is not None:
            self._send_dead_letters(prepared.dead)
        self.metrics.record_flush(result, time.monotonic() - started)
        return {TopicPartition(s, p): OffsetAndMetadata(hi + 1, None, -1) for s, p, _, hi in ranges}

    def _prepare(self, batch: RawBatch, decoding: Future[Verdict | None] | None) -> Prepared:
        if self._decoding is not None:
            return self._decoding.prepare(batch, decoding)
        return Prepared.of(self._decode(batch))

    def _decode(self, batch: RawBatch) -> Batch:
        self.sink.decoder.refresh_clock()
        return batch.decode(self.sink.decoder)

    def _take_batch(self) -> RawBatch:
        batch = self._batch
        self._reset_batch()
        return batch

    def _rotate(self, *, wait: bool = False) -> None:
        """Land the flight in the air, then send the current batch off as the next one.

        The batch starts decoding first, so its decoding overlaps the previous batch's insert.
        """
        filled = self._batch
        decoding = self._decoding.submit(filled) if self._decoding and filled.size else None
        self._land()
        batch = self._take_batch()
        if batch.size:
            # A rebalance while landing may have written the batch already and started another.
            prepared = decoding if batch is filled else None
            self._inflight = _Flight(batch, self._writer.submit(self._write, batch, prepared))
            if wait:
                self._land()

    def _land(self) -> None:
        """Wait for the flight in the air; retry it with backoff while failures are transient;
        then commit its offsets. Offsets are committed in flight order, never past a failure."""
        flight = self._inflight
        if flight is None:
            return
        consumer = self._consumer
        assert consumer is not None
        delay = 0.5
        paused = False
        try:
            while True:
                try:
                    offsets = flight.future.result()
                    break
                except (TransientWarehouseError, TransientIngestError, KafkaError) as e:
                    self.metrics.flush_failures.inc()
                    log.warning("flush failed (%s); retrying in %.1f s", e, delay)
                    if not paused:
                        consumer.pause(*consumer.assignment())
                        paused = True
                    deadline = time.monotonic() + delay
                    while time.monotonic() < deadline and not flight.abandoned:
                        # Paused partitions return nothing, but polling keeps us in the group.
                        consumer.poll(timeout_ms=100)
                    if flight.abandoned:  # revoked meanwhile: left uncommitted, recovered later
                        return
                    delay = min(delay * 2, self.settings.backoff_max_seconds)
                    flight.future = self._writer.submit(self._write, flight.batch)
                except WarehouseError as e:
                    raise IngestError(f"cannot write to the warehouse, not retrying: {e}") from e
        finally:
            if paused:
                consumer.resume(*consumer.paused())
            if self._inflight is flight:
                self._inflight = None
        if flight.commit_only is not None:
            offsets = {tp: o for tp, o in offsets.items() if tp in flight.commit_only}
        if flight.abandoned or not offsets:
            return
        self._commit(offsets)

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Commit, retrying while Kafka is unreachable. Giving up is safe: an uncommitted batch
        is recovered from its recorded ranges by whoever next owns the partitions."""
        consumer = self._consumer
        assert consumer is not None
        delay = 0.5
        while True:
            try:
                consumer.commit(offsets)
                return
            except CommitFailedError as e:
                log.warning("commit failed after a rebalance; the batch will be recovered: %s", e)
                return
            except KafkaError as e:
                if self._stop.is_set():
                    log.warning("commit failed while stopping (%s); left for recovery", e)
                    return
                log.warning("commit failed (%s); retrying in %.1f s", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max_seconds)

    def _drain(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """Finish the flight and write the current batch now (before partitions are revoked).

        Raises if anything failed: then nothing may be committed.
        """
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        flight = self._inflight
        if flight is not None:
            flight.abandoned = True  # the main thread must not commit or retry it
            self._inflight = None
            done = flight.future.result()
            if flight.commit_only is not None:
                done = {tp: o for tp, o in done.items() if tp in flight.commit_only}
            offsets.update(done)
        offsets.update(self._write(self._take_batch()))
        return offsets

    def _send_dead_letters(self, dead: list[DeadLetter]) -> None:
        producer = self._producer
        topic = self.settings.dead_letter_topic
        assert producer is not None and topic
        for d in dead:
            p = d.position
            producer.send(
                topic,
                value=d.raw,
                key=f"{p.source}:{p.partition}:{p.offset}".encode(),
                headers=[
                    ("telltale.reason", d.failure.reason.encode()),
                    ("telltale.kind", d.failure.kind.encode()),
                    ("telltale.source", f"{p.source}:{p.partition}:{p.offset}".encode()),
                ],
            )
        try:
            producer.flush(timeout=30)
        except KafkaError as e:
            raise TransientIngestError(f"dead-letter topic {topic}: {e}") from e

    def _reset_batch(self) -> None:
        self._batch = RawBatch()
        self._oldest = time.monotonic()

    def _close(self) -> None:
        # The consumer first: closing it revokes partitions, and the listener may still need
        # the dead-letter producer.
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
        self._writer.shutdown(wait=True)
        if self._decoding is not None:
            self._decoding.close()
        if self._producer is not None:
            self._producer.close(timeout=10)


def _noop() -> Iterator[None]:
    yield
