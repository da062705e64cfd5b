"""The ClickHouse warehouse: connection, schema migrations, and named queries (polars frames)."""

from warehouse.connection import DEFAULT_URL, Warehouse, WarehouseSettings, connect
from warehouse.errors import (
    TerminalWarehouseError,
    TransientWarehouseError,
    WarehouseBusyError,
    WarehouseError,
)
from warehouse.migrations import MIGRATIONS, migrate
from warehouse.schema import render_ddl

__all__ = [
    "DEFAULT_URL",
    "MIGRATIONS",
    "TerminalWarehouseError",
    "TransientWarehouseError",
    "Warehouse",
    "WarehouseBusyError",
    "WarehouseError",
    "WarehouseSettings",
    "connect",
    "migrate",
    "render_ddl",
]
