"""The batching sink: decoded events and dead letters in, one insert per table out.

Shared by the Kafka consumer and the file backfill, so both count events the same way. A batch
is flushed as one insert per table with a deterministic ``insert_deduplication_token`` built from
where its records came from (topic:partition:first-last offset, or file:line range): replaying
the same batch after a crash inserts nothing twice. Producer duplicates (the same ``event_id``
at another offset) are dropped inside the batch here and across batches by the warehouse's
``event_ids`` filter (see ``warehouse/schema.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from array import array
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pyarrow as pa

from ingest.events import (
    DecodeFailure,
    Event,
    EventDecoder,
    Feedback,
    Response,
    Retry,
    SessionEnd,
    SessionStart,
)
from warehouse import TerminalWarehouseError, Warehouse

__all__ = [
    "Batch",
    "DeadLetter",
    "DecodeProcess",
    "EventSink",
    "FlushResult",
    "Position",
    "Prepared",
    "RawBatch",
    "Verdict",
]

log = logging.getLogger("telltale.ingest")

_TS = pa.timestamp("ms", tz="UTC")
_STR = pa.string()


@dataclass(frozen=True, slots=True)
class Position:
    """Where a raw message came from: a Kafka topic/partition/offset, or a file and line."""

    source: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected message, kept whole with where it came from and why."""

    position: Position
    raw: bytes
    failure: DecodeFailure


_TABLES = ("responses", "feedback", "retries", "sessions")


@dataclass(slots=True)
class Batch:
    """Events and dead letters gathered for one flush, with the offset range of each source.

    Valid events are kept as raw JSON (what is inserted; ClickHouse parses it) and as decoded
    events with their unknown fields (for the Arrow fallback); all references, no copies.
    """

    rows: dict[str, list[Event]] = field(default_factory=lambda: {t: [] for t in _TABLES})
    raws: dict[str, list[bytes]] = field(default_factory=lambda: {t: [] for t in _TABLES})
    extras: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in _TABLES})
    # Where each kept event was among all messages added, counting from 0.
    picks: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in _TABLES})
    dead: list[DeadLetter] = field(default_factory=list)
    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    size: int = 0

    def extend(
        self,
        source: str,
        partition: int,
        items: list[tuple[int, bytes | None]],
        decoder: EventDecoder,
    ) -> None:
        """Decode ``(offset, raw)`` messages of one source, in offset order, into the batch.

        A message that fails becomes a dead letter; an event_id already in the batch is
        counted as a duplicate and dropped. Nothing raises on bad input.
        """
        if not items:
            return
        key = (source, partition)
        lo, hi = items[0][0], items[-1][0]
        known = self.ranges.get(key)
        self.ranges[key] = (lo, hi) if known is None else (min(known[0], lo), max(known[1], hi))
        first = self.size
        self.size += len(items)
        decode, seen, rows, raws, extras, picks = (
            decoder.decode,
            self.seen,
            self.rows,
            self.raws,
            self.extras,
            self.picks,
        )
        for i, (offset, raw) in enumerate(items, start=first):
            decoded = decode(raw)
            if type(decoded) is not tuple:  # a DecodeFailure; `type` is cheaper on this hot path
                self.dead.append(
                    DeadLetter(Position(source, partition, offset), raw or b"", decoded)
                )
                continue
            event, extra = decoded
            event_id = event.event_id
            if event_id in seen:
                self.duplicates += 1
                continue
            seen.add(event_id)
            table = event.table
            rows[table].append(event)
            picks[table].append(i)
            extras[table].append(extra)
            raws[table].append(_with_extra(event, extra) if extra else raw)  # type: ignore[arg-type]

    def token(self) -> str:
        """A deterministic name for this batch: the same records always give the same token."""
        return _token(self.ranges)


def _token(ranges: dict[tuple[str, int], tuple[int, int]]) -> str:
    spec = ",".join(f"{s}:{p}:{lo}-{hi}" for (s, p), (lo, hi) in sorted(ranges.items()))
    return hashlib.sha256(spec.encode()).hexdigest()[:32]


@dataclass(slots=True)
class RawBatch:
    """Undecoded messages gathered for one flush, by source, with the same ranges and token as
    the :class:`Batch` they decode into.

    The Kafka consumer fills one of these and has it decoded in another process
    (:class:`DecodeProcess`): kafka-python decodes its records in pure Python, and our decoding
    beside it in one interpreter would halve the rate both can reach under one GIL.
    """

    parts: list[tuple[str, int, list[int], list[bytes | None]]] = field(default_factory=list)
    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    size: int = 0
    # For DecodeProcess.feed: this batch's name there, and how much of it was sent.
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    fed_parts: int = 0
    fed_items: int = 0

    def add(
        self, source: str, partition: int, offsets: list[int], values: list[bytes | None]
    ) -> None:
        """Append messages of one source, in offset order (``offsets[i]`` holds ``values[i]``)."""
        if not offsets:
            return
        self.parts.append((source, partition, offsets, values))
        key = (source, partition)
        lo, hi = offsets[0], offsets[-1]
        known = self.ranges.get(key)
        self.ranges[key] = (lo, hi) if known is None else (min(known[0], lo), max(known[1], hi))
        self.size += len(offsets)

    def token(self) -> str:
        """The token of the :class:`Batch` this decodes into."""
        return _token(self.ranges)

    def decode(self, decoder: EventDecoder) -> Batch:
        """Decode every message, in the order added."""
        batch = Batch()
        _extend(batch, self.parts, decoder)
        return batch


def _extend(
    batch: Batch, parts: list[tuple[str, int, list[int], list[bytes | None]]], decoder: EventDecoder
) -> None:
    for source, partition, offsets, values in parts:
        batch.extend(source, partition, list(zip(offsets, values, strict=True)), decoder)


def _with_extra(event: Event, extra: str) -> bytes:
    """The event re-encoded with its unknown fields folded into the ``extra`` column."""
    obj = msgspec.to_builtins(event)
    obj["type"] = event.__struct_config__.tag
    obj["extra"] = extra
    return msgspec.json.encode(obj)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A decoded batch reduced to what its insert needs: one JSONEachRow payload per table.

    Small to send between processes: a few large byte strings instead of one object per event.
    """

    payloads: dict[str, bytes]
    counts: dict[str, int]
    dead: list[DeadLetter]
    duplicates: int

    @classmethod
    def of(cls, batch: Batch) -> Prepared:
        """Join each table's raw events into one newline-separated payload."""
        return cls(
            payloads={t: b"\n".join(r) for t, r in batch.raws.items() if r},
            counts={t: len(r) for t, r in batch.raws.items() if r},
            dead=batch.dead,
            duplicates=batch.duplicates,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """What decoding a :class:`RawBatch` decided, without the events themselves: which messages
    go to which table (by position), the few re-encoded with their unknown fields, the dead
    letters. Tiny to send back from the decoding process; the payloads are then joined from the
    raw batch the consumer still holds.
    """

    picks: dict[str, array[int]]
    reencoded: dict[int, bytes]
    dead: list[DeadLetter]
    duplicates: int

    @classmethod
    def of(cls, batch: Batch) -> Verdict:
        """The verdict of a decoded batch."""
        reencoded = {
            i: raw
            for t in _TABLES
            for i, raw, extra in zip(batch.picks[t], batch.raws[t], batch.extras[t], strict=True)
            if extra
        }
        picks = {t: array("q", p) for t, p in batch.picks.items() if p}
        return cls(picks, reencoded, batch.dead, batch.duplicates)

    def prepare(self, batch: RawBatch) -> Prepared:
        """The insert payloads of ``batch``, the raw batch this verdict was given on."""
        values = [v for part in batch.parts for v in part[3]]
        payloads = {}
        for table, picks in self.picks.items():
            if self.reencoded:
                rows = [self.reencoded.get(i) or values[i] for i in picks]
            else:
                rows = list(map(values.__getitem__, picks))
            payloads[table] = b"\n".join(rows)  # type: ignore[arg-type]
        counts = {t: len(p) for t, p in self.picks.items()}
        return Prepared(payloads, counts, self.dead, self.duplicates)


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one flush wrote."""

    events: dict[str, int]
    dead_letters: int
    duplicates: int


def _col(values: list[Any], typ: pa.DataType) -> pa.Array:
    return pa.array(values, type=typ)


def _responses(events: list[Response], extras: list[str]) -> dict[str, pa.Array]:
    rows = list(zip(*(msgspec.structs.astuple(e) for e in events), strict=True))
    f = {name: rows[i] for i, name in enumerate(Response.__struct_fields__)}
    return {
        "event_id": _col(f["event_id"], _STR),
        "ts": _col(f["ts"], _TS),
        "schema_version": _col(f["schema_version"], pa.uint8()),
        "request_id": _col(f["request_id"], _STR),
        "conversation_id": _col(f["conversation_id"], _STR),
        "session_id": _col(f["session_id"], _STR),
        "user_id": _col(f["user_id"], _STR),
        "model_version": _col(f["model_version"], _STR),
        "variant": _col(f["variant"], _STR),
        "turn_index": _col(f["turn_index"], pa.uint16()),
        "prompt": _col(f["prompt"], _STR),
        "response": _col(f["response"], _STR),
        "prompt_tokens": _col(f["prompt_tokens"], pa.uint32()),
        "completion_tokens": _col(f["completion_tokens"], pa.uint32()),
        "latency_ms": _col(f["latency_ms"], pa.float32()),
        "ttft_ms": _col(f["ttft_ms"], pa.float32()),
        "finish_reason": _col(f["finish_reason"], _STR),
        "refused": _col(f["refused"], pa.bool_()),
        "locale": _col(f["locale"], _STR),
        "platform": _col(f["platform"], _STR),
        "app_version": _col(f["app_version"], _STR),
        "user_tenure_days": _col(f["user_tenure_days"], pa.uint16()),
        "cohort": _col([c or "" for c in f["cohort"]], _STR),
        "intent": _col([i or "" for i in f["intent"]], _STR),
        "temperature": _col(f["temperature"], pa.float32()),
        "max_tokens": _col(f["max_tokens"], pa.uint32()),
        "opt_out": _col(f["opt_out"], pa.bool_()),
        "extra": _col(extras, _STR),
    }


def _feedback(events: list[Feedback], extras: list[str]) -> dict[str, pa.Array]:
    return {
        "event_id": _col([e.event_id for e in events], _STR),
        "ts": _col([e.ts for e in events], _TS),
        "schema_version": _col([e.schema_version for e in events], pa.uint8()),
        "request_id": _col([e.request_id for e in events], _STR),
        "user_id": _col([e.user_id for e in events], _STR),
        "rating": _col([e.rating for e in events], pa.int8()),
        "reason_tags": _col([e.reason_tags for e in events], pa.list_(_STR)),
        "comment": _col([e.comment for e in events], _STR),
        "extra": _col(extras, _STR),
    }


def _retries(events: list[Retry], extras: list[str]) -> dict[str, pa.Array]:
    return {
        "event_id": _col([e.event_id for e in events], _STR),
        "ts": _col([e.ts for e in events], _TS),
        "schema_version": _col([e.schema_version for e in events], pa.uint8()),
        "request_id": _col([e.request_id for e in events], _STR),
        "new_request_id": _col([e.new_request_id for e in events], _STR),
        "kind": _col([e.kind for e in events], _STR),
        "user_id": _col([e.user_id for e in events], _STR),
        "extra": _col(extras, _STR),
    }


def _sessions(events: list[SessionStart | SessionEnd], extras: list[str]) -> dict[str, pa.Array]:
    ends = [e if isinstance(e, SessionEnd) else None for e in events]
    return {
        "event_id": _col([e.event_id for e in events], _STR),
        "ts": _col([e.ts for e in events], _TS),
        "schema_version": _col([e.schema_version for e in events], pa.uint8()),
        "type": _col(["session_end" if e else "session_start" for e in ends], _STR),
        "session_id": _col([e.session_id for e in events], _STR),
        "user_id": _col([e.user_id for e in events], _STR),
        "platform": _col([getattr(e, "platform", "other") for e in events], _STR),
        "locale": _col([getattr(e, "locale", "und") for e in events], _STR),
        "turns": _col([e.turns if e else None for e in ends], pa.uint32()),
        "seconds": _col([e.seconds if e else None for e in ends], pa.float64()),
        "end_reason": _col([e.end_reason if e else "" for e in ends], _STR),
        "task_completed": _col([e.task_completed if e else None for e in ends], pa.bool_()),
        "extra": _col(extras, _STR),
    }


# Responses first: feedback and retries in the same batch look their response up by request_id.
_BUILDERS: dict[str, Callable[[Any, list[str]], dict[str, pa.Array]]] = {
    "responses": _responses,
    "feedback": _feedback,
    "retries": _retries,
    "sessions": _sessions,
}


def _dead_letters(dead: list[DeadLetter], now: dt.datetime) -> pa.Table:
    return pa.table(
        {
            "received_at": _col([now] * len(dead), _TS),
            "source": _col([d.position.source for d in dead], _STR),
            "partition": _col([d.position.partition for d in dead], pa.int32()),
            "offset": _col([d.position.offset for d in dead], pa.int64()),
            "kind": _col([d.failure.kind for d in dead], _STR),
            "reason": _col([d.failure.reason for d in dead], _STR),
            "event_id": _col([d.failure.event_id for d in dead], _STR),
            "raw": _col([d.raw for d in dead], pa.binary()),
        }
    )


class EventSink:
    """Writes batches to the warehouse: events to their tables, rejects to ``dead_letters``."""

    def __init__(self, warehouse: Warehouse, decoder: EventDecoder | None = None) -> None:
        self.warehouse = warehouse
        self.decoder = decoder or EventDecoder()

    def flush(self, batch: Batch) -> FlushResult:
        """Insert the batch. On :class:`warehouse.WarehouseError` it may be retried as is."""
        result = self.write(Prepared.of(batch), batch.token(), lambda: batch)
        self.decoder.refresh_clock()
        return result

    def write(self, prepared: Prepared, token: str, decoded: Callable[[], Batch]) -> FlushResult:
        """Insert a prepared batch under ``token``; may be retried as is.

        ``decoded`` gives the decoded batch, asked for only if ClickHouse refuses a payload.
        """
        for table in _TABLES:
            payload = prepared.payloads.get(table)
            if payload is None:
                continue
            table_token = f"{token}:{table}"
            try:
                self.warehouse.insert_json(f"{table}_in", payload, dedup_token=table_token)
            except TerminalWarehouseError as e:
                # ClickHouse refused JSON that our decoder accepted: write the decoded events
                # as Arrow instead, so one odd event cannot stall its partition.
                log.warning("JSON insert into %s refused (%s); writing it as Arrow", table, e)
                batch = decoded()
                columns = _BUILDERS[table](batch.rows[table], batch.extras[table])
                columns["ingest_batch"] = pa.array([table_token] * len(batch.rows[table]), _STR)
                self.warehouse.insert_arrow(
                    f"{table}_in", pa.table(columns), dedup_token=table_token
                )
        if prepared.dead:
            self.warehouse.insert_arrow(
                "dead_letters",
                _dead_letters(prepared.dead, dt.datetime.now(dt.UTC)),
                dedup_token=f"{token}:dead_letters",
            )
        return FlushResult(dict(prepared.counts), len(prepared.dead), prepared.duplicates)


class DecodeProcess:
    """Decodes :class:`RawBatch` es in one worker process, started on first use.

    The consumer :meth:`feed` s the batch as it fills, so that by the time it is full most of
    it is decoded; :meth:`submit` then asks for the :class:`Verdict`, and :meth:`prepare` joins
    the payloads. If the worker dies (killed, out of memory), the batch is decoded on the
    calling thread instead and a new worker is started for the next one: decoding is
    deterministic, so where it runs changes nothing in what is written.
    """

    def __init__(self, decoder: EventDecoder) -> None:
        self._decoder = decoder
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker now rather than on the first batch (it takes about a second)."""
        self._submit(os.getpid)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        with self._lock:  # called from the consumer's, the writer's and Kafka's IO threads
            if self._pool is not None:
                try:
                    return self._pool.submit(fn, *args)
                except BrokenProcessPool:
                    pass
            # spawn, not fork: the parent runs kafka-python's and chdb's threads.
            self._pool = ProcessPoolExecutor(
                1, mp.get_context("spawn"), initializer=_start_worker, initargs=(self._decoder,)
            )
            return self._pool.submit(fn, *args)

    def feed(self, batch: RawBatch) -> None:
        """Send what was added to ``batch`` since the last feed, to be decoded meanwhile."""
        if batch.fed_parts == len(batch.parts):
            return
        parts = batch.parts[batch.fed_parts :]
        # A feed that fails leaves a gap the worker notices; the batch is then decoded whole.
        self._submit(_feed_in_worker, batch.key, batch.fed_items, parts)
        batch.fed_parts = len(batch.parts)
        batch.fed_items = batch.size

    def submit(self, batch: RawBatch) -> Future[Verdict | None]:
        """Ask for the verdict on ``batch``; :meth:`prepare` collects it."""
        if not batch.fed_items:
            return self._submit(_judge_in_worker, batch)
        self.feed(batch)
        return self._submit(_finish_in_worker, batch.key, batch.size)

    def prepare(self, batch: RawBatch, pending: Future[Verdict | None] | None = None) -> Prepared:
        """The insert payloads of ``batch``, from the verdict ``pending`` (its :meth:`submit`)
        or a new one."""
        try:
            verdict = (pending or self.submit(batch)).result()
            if verdict is None:  # the worker lost part of what was fed (it was restarted)
                verdict = self._submit(_judge_in_worker, batch).result()
            assert verdict is not None
            return verdict.prepare(batch)
        except BrokenProcessPool:
            log.warning("the decoding process died; decoding this batch in the consumer")
            self._decoder.refresh_clock()
            return Prepared.of(batch.decode(self._decoder))

    def close(self) -> None:
        """Stop the worker."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


_worker_decoder: EventDecoder | None = None
"""The decoding process's decoder, set when it starts."""


def _start_worker(decoder: EventDecoder) -> None:
    global _worker_decoder
    _worker_decoder = decoder
    # Ctrl-C reaches the whole process group; the consumer flushes and then stops the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()


def _exit_with(parent: int) -> None:
    # A consumer killed with SIGKILL cannot stop its pool, and the worker, blocked reading its
    # task pipe, would outlive it; it polls for its parent instead.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


_worker_batch: tuple[str, Batch] | None = None
"""The batch being fed to the decoding process, by key."""


def _decoder_in_worker() -> EventDecoder:
    decoder = _worker_decoder
    assert decoder is not None, "initializer not run"
    return decoder


def _judge_in_worker(batch: RawBatch) -> Verdict:
    decoder = _decoder_in_worker()
    decoder.refresh_clock()
    return Verdict.of(batch.decode(decoder))


def _feed_in_worker(
    key: str, start: int, parts: list[tuple[str, int, list[int], list[bytes | None]]]
) -> None:
    global _worker_batch
    decoder = _decoder_in_worker()
    if _worker_batch is None or _worker_batch[0] != key:
        if start:  # joined half-way (a restarted worker): the verdict will be asked whole
            return
        decoder.refresh_clock()
        _worker_batch = (key, Batch())
    batch = _worker_batch[1]
    if batch.size != start:
        return
    _extend(batch, parts, decoder)


def _finish_in_worker(key: str, size: int) -> Verdict | None:
    global _worker_batch
    if _worker_batch is None or _worker_batch[0] != key:
        return None
    batch = _worker_batch[1]
    _worker_batch = None
    return Verdict.of(batch) if batch.size == size else None
