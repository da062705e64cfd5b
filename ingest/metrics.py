"""Ingest observability: counters for logs and an optional Prometheus endpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ingest.sink import FlushResult

__all__ = ["IngestMetrics"]

log = logging.getLogger("telltale.ingest")


class IngestMetrics:
    """Events/s, batch latency, dead letters and consumer lag, logged every ``log_every`` seconds.

    Each instance has its own Prometheus registry, so several consumers in one process (tests)
    do not collide; :meth:`serve` exposes it on ``127.0.0.1:port`` (or another ``addr``).
    """

    def __init__(self, *, log_every: float = 10.0) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "telltale_ingest_events", "Events written, by table", ["table"], registry=self.registry
        )
        self.dead_letters = Counter(
            "telltale_ingest_dead_letters",
            "Messages rejected to dead letters",
            registry=self.registry,
        )
        self.duplicates = Counter(
            "telltale_ingest_duplicates",
            "Events dropped as a duplicate event_id within a batch",
            registry=self.registry,
        )
        self.flush_failures = Counter(
            "telltale_ingest_flush_failures",
            "Flushes that failed and were retried",
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "telltale_ingest_batch_seconds",
            "Time to write one batch",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.lag = Gauge(
            "telltale_ingest_consumer_lag",
            "Messages behind the partition's high watermark",
            ["topic", "partition"],
            registry=self.registry,
        )
        self._log_every = log_every
        self._window_start = time.monotonic()
        self._window_events = 0
        self._window_dead = 0
        self._window_batch_s: list[float] = []
        self.total_events = 0
        self.total_dead = 0
        self.total_duplicates = 0

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose the metrics for Prometheus scraping on ``addr:port``."""
        start_http_server(port, addr=addr, registry=self.registry)

    def record_flush(self, result: FlushResult, seconds: float) -> None:
        """Account for one successful flush."""
        for table, n in result.events.items():
            self.events.labels(table).inc(n)
        n = sum(result.events.values())
        self.dead_letters.inc(result.dead_letters)
        self.duplicates.inc(result.duplicates)
        self.batch_seconds.observe(seconds)
        self.total_events += n
        self.total_dead += result.dead_letters
        self.total_duplicates += result.duplicates
        self._window_events += n
        self._window_dead += result.dead_letters
        self._window_batch_s.append(seconds)

    def record_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        """Set the lag gauge per (topic, partition)."""
        for (topic, partition), value in lag.items():
            self.lag.labels(topic, str(partition)).set(value)

    def log_due(self) -> bool:
        """Whether ``log_every`` seconds passed since the last status line."""
        return time.monotonic() - self._window_start >= self._log_every

    def log_status(self, *, lag: Mapping[tuple[str, int], int] | None = None) -> None:
        """Log the one-line status of the window since the last one, and start a new window.

        Callers check :meth:`log_due` first: the lag they pass costs a little to compute.
        """
        now = time.monotonic()
        elapsed = now - self._window_start
        batches = sorted(self._window_batch_s)
        p50 = batches[len(batches) // 2] * 1000 if batches else 0.0
        total_lag = sum(lag.values()) if lag else 0
        log.info(
            "ingest: %.0f events/s, %d batches (p50 %.0f ms), %d dead letters, lag %d",
            self._window_events / elapsed,
            len(batches),
            p50,
            self._window_dead,
            total_lag,
        )
        self._window_start = now
        self._window_events = 0
        self._window_dead = 0
        self._window_batch_s = []
