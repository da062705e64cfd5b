"""The ClickHouse warehouse: connection, schema migrations, and named queries (polars frames)."""

from warehouse.connection import DEFAULT_URL, Warehouse, WarehouseSettings, connect
from warehouse.errors import (
    TerminalWarehouseError,
    TransientWarehouseError,
    WarehouseBusyError,
    WarehouseError,
)
from warehouse.migrations import MIGRATIONS, migrate
from warehouse.queries import (
    EVENT_TABLES,
    ROLLUP_DIMENSIONS,
    daily_summary,
    dead_letter_counts,
    dead_letters,
    event_counts,
    hourly_rollup,
    pending_flight,
    rebuild_rollups,
    record_ingest_intents,
    response_outcomes,
    session_outcomes,
)
from warehouse.schema import render_ddl

__all__ = [
    "DEFAULT_URL",
    "EVENT_TABLES",
    "MIGRATIONS",
    "ROLLUP_DIMENSIONS",
    "TerminalWarehouseError",
    "TransientWarehouseError",
    "Warehouse",
    "WarehouseBusyError",
    "WarehouseError",
    "WarehouseSettings",
    "connect",
    "daily_summary",
    "dead_letter_counts",
    "dead_letters",
    "event_counts",
    "hourly_rollup",
    "migrate",
    "pending_flight",
    "rebuild_rollups",
    "record_ingest_intents",
    "render_ddl",
    "response_outcomes",
    "session_outcomes",
]
