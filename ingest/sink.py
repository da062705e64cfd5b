"""The batching sink: decoded events and dead letters in, one Arrow insert per table out.

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
from collections.abc import Callable
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

__all__ = ["Batch", "DeadLetter", "EventSink", "FlushResult", "Position"]

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
        self.size += len(items)
        decode, seen, rows, raws, extras = (
            decoder.decode,
            self.seen,
            self.rows,
            self.raws,
            self.extras,
        )
        for offset, raw in items:
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
            extras[table].append(extra)
            raws[table].append(_with_extra(event, extra) if extra else raw)  # type: ignore[arg-type]

    def token(self) -> str:
        """A deterministic name for this batch: the same records always give the same token."""
        spec = ",".join(f"{s}:{p}:{lo}-{hi}" for (s, p), (lo, hi) in sorted(self.ranges.items()))
        return hashlib.sha256(spec.encode()).hexdigest()[:32]


def _with_extra(event: Event, extra: str) -> bytes:
    """The event re-encoded with its unknown fields folded into the ``extra`` column."""
    obj = msgspec.to_builtins(event)
    obj["type"] = event.__struct_config__.tag
    obj["extra"] = extra
    return msgspec.json.encode(obj)


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
        token = batch.token()
        written: dict[str, int] = {}
        for table in _TABLES:
            raws = batch.raws[table]
            if not raws:
                continue
            table_token = f"{token}:{table}"
            try:
                self.warehouse.insert_json(f"{table}_in", b"\n".join(raws), dedup_token=table_token)
            except TerminalWarehouseError as e:
                # ClickHouse refused JSON that our decoder accepted: write the decoded events
                # as Arrow instead, so one odd event cannot stall its partition.
                log.warning("JSON insert into %s refused (%s); writing it as Arrow", table, e)
                columns = _BUILDERS[table](batch.rows[table], batch.extras[table])
                columns["ingest_batch"] = pa.array([table_token] * len(raws), _STR)
                self.warehouse.insert_arrow(
                    f"{table}_in", pa.table(columns), dedup_token=table_token
                )
            written[table] = len(raws)
        if batch.dead:
            self.warehouse.insert_arrow(
                "dead_letters",
                _dead_letters(batch.dead, dt.datetime.now(dt.UTC)),
                dedup_token=f"{token}:dead_letters",
            )
        self.decoder.refresh_clock()
        return FlushResult(written, len(batch.dead), batch.duplicates)
