"""Ingest: the event contract, the Kafka consumer, file backfill, dead letters, the simulator."""

from ingest.backfill import backfill, iter_file
from ingest.consumer import IngestSettings, KafkaIngest
from ingest.errors import IngestError, TerminalIngestError, TransientIngestError
from ingest.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    DecodeFailure,
    Event,
    EventDecoder,
    Feedback,
    Response,
    Retry,
    SessionEnd,
    SessionStart,
)
from ingest.metrics import IngestMetrics
from ingest.simulate import (
    Scenario,
    ground_truth,
    produce_to_kafka,
    scenario_annotations,
    simulate,
    write_files,
)
from ingest.sink import Batch, EventSink, FlushResult, Position

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "Batch",
    "DecodeFailure",
    "Event",
    "EventDecoder",
    "EventSink",
    "Feedback",
    "FlushResult",
    "IngestError",
    "IngestMetrics",
    "IngestSettings",
    "KafkaIngest",
    "Position",
    "Response",
    "Retry",
    "Scenario",
    "SessionEnd",
    "SessionStart",
    "TerminalIngestError",
    "TransientIngestError",
    "backfill",
    "ground_truth",
    "iter_file",
    "produce_to_kafka",
    "scenario_annotations",
    "simulate",
    "write_files",
]
