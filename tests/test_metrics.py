"""Ingest observability: the Prometheus endpoint serves what the consumer counted."""

from __future__ import annotations

import socket
import urllib.request

from ingest import FlushResult, IngestMetrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_endpoint_reports_flushes_and_lag():
    metrics = IngestMetrics(log_every=3600)
    port = _free_port()
    metrics.serve(port)
    metrics.record_flush(FlushResult({"responses": 120, "feedback": 7}, 3, 2), 0.25)
    metrics.record_lag({("t.responses", 0): 42})
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'telltale_ingest_events_total{table="responses"} 120.0' in body
    assert 'telltale_ingest_events_total{table="feedback"} 7.0' in body
    assert "telltale_ingest_dead_letters_total 3.0" in body
    assert "telltale_ingest_duplicates_total 2.0" in body
    assert "telltale_ingest_batch_seconds_count 1.0" in body
    assert 'telltale_ingest_consumer_lag{partition="0",topic="t.responses"} 42.0' in body
    assert (metrics.total_events, metrics.total_dead, metrics.total_duplicates) == (127, 3, 2)
