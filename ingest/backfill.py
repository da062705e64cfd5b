"""Backfill from files (JSONL, JSONL.gz, Parquet) through the same decoder and sink as Kafka.

Each file is read in fixed-size chunks of lines; a chunk's dedup token comes from the file name,
its size and the line range, so re-running a backfill inserts nothing twice.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from ingest.errors import TerminalIngestError
from ingest.metrics import IngestMetrics
from ingest.sink import Batch, EventSink

__all__ = ["backfill", "iter_file"]

CHUNK_LINES = 50_000


def _source(path: Path) -> str:
    return f"file:{path.name}:{path.stat().st_size}"


def iter_file(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_event)`` from a .jsonl, .jsonl.gz / .gz or .parquet file.

    A Parquet file has one event per row in a binary or string column ``value`` (the raw JSON).
    """
    name = path.name.lower()
    if name.endswith(".parquet"):
        pf = pq.ParquetFile(path)
        if "value" not in pf.schema_arrow.names:
            raise TerminalIngestError(
                f"{path}: a Parquet backfill needs a column 'value' holding each event's JSON"
            )
        n = 0
        for rb in pf.iter_batches(columns=["value"], batch_size=CHUNK_LINES):
            for v in rb.column(0).to_pylist():
                n += 1
                yield n, v.encode() if isinstance(v, str) else v
        return
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            yield n, line.rstrip(b"\r\n")


def backfill(
    sink: EventSink,
    paths: list[Path],
    *,
    metrics: IngestMetrics | None = None,
    progress: bool = True,
) -> IngestMetrics:
    """Ingest every file in ``paths``; idempotent on re-run. Returns the metrics it kept."""
    metrics = metrics or IngestMetrics()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TerminalIngestError(f"no such file: {', '.join(missing)}")
    total = sum(p.stat().st_size for p in paths)
    with Progress(
        TextColumn("[bold]ingest[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[events]:,} events, {task.fields[dead]:,} dead letters"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("", total=total, events=0, dead=0)
        for path in paths:
            bar.update(task, description=path.name)
            source = _source(path)
            size = path.stat().st_size
            items: list[tuple[int, bytes | None]] = []
            for n, raw in iter_file(path):
                items.append((n, raw))
                if len(items) >= CHUNK_LINES:
                    _flush(sink, source, items, metrics)
                    bar.update(task, events=metrics.total_events, dead=metrics.total_dead)
                    items = []
            _flush(sink, source, items, metrics)
            bar.update(task, advance=size, events=metrics.total_events, dead=metrics.total_dead)
    return metrics


def _flush(
    sink: EventSink, source: str, items: list[tuple[int, bytes | None]], metrics: IngestMetrics
) -> None:
    if not items:
        return
    batch = Batch()
    batch.extend(source, 0, items, sink.decoder)
    started = time.monotonic()
    metrics.record_flush(sink.flush(batch), time.monotonic() - started)
