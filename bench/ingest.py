"""Ingest benchmark: raw kafka-python consume rate vs ``telltale ingest`` end to end, same run.

Produces N simulated events (default 1,000,000) to a real local Apache Kafka broker, then for
1 and for ``os.cpu_count()`` consumer processes in one group measures

  (a) raw: KafkaConsumer with the ingest's own client settings, records read and discarded;
  (b) ingest: KafkaIngest decoding, validating, inserting into chdb and committing; and the
      same with ``decode_process=False`` (decoding on the consumer's writer thread), the
      design before decoding moved to its own process.

Rate = events / (last record handled - first record received), across the group's processes.
With several processes each writes its own embedded warehouse: chdb cannot share a directory
across processes (in production they share a ClickHouse server). Prints figures; asserts nothing.

    .venv/bin/python bench/ingest.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import msgspec
from kafka import KafkaConsumer, KafkaProducer

REPO = Path(__file__).resolve().parent.parent
# Run as `python bench/ingest.py`, this directory comes first on sys.path and this very file
# would shadow the ingest package; the tests directory has the broker fixture.
sys.path[:] = [str(REPO / "tests")] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]

import warehouse  # noqa: E402
from ingest import EventSink, IngestSettings, KafkaIngest, Scenario, simulate  # noqa: E402

from kafka_broker import KafkaBroker  # noqa: E402

KINDS = {
    "response": "responses",
    "feedback": "feedback",
    "retry": "retries",
    "session_start": "sessions",
    "session_end": "sessions",
}
IDLE_SECONDS = 10.0  # a 200k-event flush under load can take several seconds


class _Tag(msgspec.Struct):
    type: str


def produce(bootstrap: str, prefix: str, n: int) -> int:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, acks=1
    )
    tag = msgspec.json.Decoder(_Tag)
    sent = 0
    for chunk in simulate(Scenario.default().evolve(days=60)):
        for raw in chunk:
            producer.send(f"{prefix}.{KINDS[tag.decode(raw).type]}", raw)
            sent += 1
            if sent >= n:
                producer.flush()
                producer.close()
                return sent
    producer.flush()
    producer.close()
    return sent


def _raw_worker(settings: IngestSettings, out: mp.Queue) -> None:
    consumer = KafkaConsumer(**settings.consumer_config())
    consumer.subscribe(settings.topics)
    count, first, last = 0, None, time.monotonic()
    while time.monotonic() - last < IDLE_SECONDS or first is None:
        polled = consumer.poll(timeout_ms=200, max_records=settings.max_poll_records)
        for records in polled.values():
            if records:
                now = time.monotonic()
                first = first or now
                last = now
                count += len(records)
    consumer.close(autocommit=False)
    out.put((count, first, last))


def _ingest_worker(settings: IngestSettings, url: str, out: mp.Queue) -> None:
    with warehouse.connect(url) as wh:
        warehouse.migrate(wh)
        runner = KafkaIngest(EventSink(wh), settings)
        thread = threading.Thread(target=runner.run, kwargs={"install_signal_handlers": False})
        thread.start()
        first, last, seen = None, time.monotonic(), 0
        while time.monotonic() - last < IDLE_SECONDS or first is None:
            time.sleep(0.02)
            handled = runner.metrics.total_events + runner.metrics.total_dead
            if handled != seen:
                now = time.monotonic()
                first = first or now
                last, seen = now, handled
        runner.stop()
        thread.join()
    out.put((seen, first, last))


def measure(kind: str, processes: int, bootstrap: str, prefix: str, tmp: Path) -> tuple[float, int]:
    settings = IngestSettings(
        bootstrap_servers=bootstrap,
        group_id=f"bench-{kind}-{processes}-{uuid.uuid4().hex[:6]}",
        topics=[f"{prefix}.{t}" for t in ("responses", "feedback", "retries", "sessions")],
        dead_letter_topic=None,
        log_every_seconds=3600,
        decode_process=kind != "ingest-inline",
    )
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = []
    for i in range(processes):
        if kind == "raw":
            args: tuple = (settings, out)
            target = _raw_worker
        else:
            args = (settings, f"chdb://{tmp}/{settings.group_id}-{i}", out)
            target = _ingest_worker
        procs.append(ctx.Process(target=target, args=args))
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    total = sum(r[0] for r in results)
    elapsed = max(r[2] for r in results if r[1]) - min(r[1] for r in results if r[1])
    return total / elapsed, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    with KafkaBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        broker.create_topics(
            [f"{prefix}.{t}" for t in ("responses", "feedback", "retries", "sessions")],
            partitions=4,
        )
        started = time.monotonic()
        n = produce(broker.bootstrap, prefix, args.events)
        print(f"produced {n:,} events in {time.monotonic() - started:.1f} s")
        rows = []
        for processes in sorted({1, cores}):
            raw, raw_n = measure("raw", processes, broker.bootstrap, prefix, Path(tmp))
            ing, ing_n = measure("ingest", processes, broker.bootstrap, prefix, Path(tmp))
            inl, inl_n = measure("ingest-inline", processes, broker.bootstrap, prefix, Path(tmp))
            rows.append((processes, raw, raw_n, ing, ing_n, inl, inl_n))
        print(
            f"\n{'processes':>9} {'(a) raw consume/s':>18} {'(b) ingest/s':>13} {'b/a':>6}"
            f" {'decoding inline/s':>18} {'/a':>5}"
        )
        for processes, raw, raw_n, ing, ing_n, inl, inl_n in rows:
            print(
                f"{processes:>9} {raw:>18,.0f} {ing:>13,.0f} {ing / raw:>6.2f}"
                f" {inl:>18,.0f} {inl / raw:>5.2f}"
            )
            if {raw_n, ing_n, inl_n} != {n}:
                print(f"          (records handled: raw {raw_n:,}, ingest {ing_n:,} / {inl_n:,})")
        best = max(r[3] for r in rows)
        print(f"\ntargets: b/a >= 0.6 with 1 process: {rows[0][3] / rows[0][1]:.2f};")
        print(
            f"         b >= 100,000/s with the best process count: {best:,.0f} ({best / 1e5:.2f}x)"
        )


if __name__ == "__main__":
    main()
