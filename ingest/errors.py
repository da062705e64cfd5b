"""Ingest exceptions.

::

    IngestError                  root: anything ingest raises
    ├── TransientIngestError     Kafka unreachable, a dead-letter send timed out: retry later
    └── TerminalIngestError      bad configuration or input file: fix it, then run again
"""

from __future__ import annotations

__all__ = ["IngestError", "TerminalIngestError", "TransientIngestError"]


class IngestError(Exception):
    """Root of every error ingest raises."""


class TransientIngestError(IngestError):
    """A retry may succeed (Kafka or the dead-letter topic is unreachable)."""


class TerminalIngestError(IngestError):
    """A retry cannot succeed until something is fixed (configuration, an unreadable file)."""
