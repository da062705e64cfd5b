"""Warehouse exceptions. Every clickhouse-connect / chdb error is translated here, in one place.

::

    WarehouseError                     root: anything the warehouse layer raises
    ├── TransientWarehouseError        a retry can help: server down, timeout, too many parts
    │   └── WarehouseBusyError         the embedded chdb directory is held by another process
    └── TerminalWarehouseError         a retry cannot help: bad SQL, schema mismatch, bad URL
"""

from __future__ import annotations

import re

from clickhouse_connect.driver import exceptions as ch_exc

__all__ = [
    "TerminalWarehouseError",
    "TransientWarehouseError",
    "WarehouseBusyError",
    "WarehouseError",
    "translate_error",
]


class WarehouseError(Exception):
    """Root of every error the warehouse layer raises."""


class TransientWarehouseError(WarehouseError):
    """The operation may succeed if retried later (the server is down, overloaded, or busy)."""


class WarehouseBusyError(TransientWarehouseError):
    """Another process holds the embedded chdb directory."""


class TerminalWarehouseError(WarehouseError):
    """Retrying will not help: the query, the schema or the configuration is wrong."""


# ClickHouse error codes after which the same request can succeed later.
_TRANSIENT_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        164,  # READONLY
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        319,  # UNKNOWN_STATUS_OF_INSERT
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)
_CODE = re.compile(r"Code: (\d+)\.")


def translate_error(exc: Exception, *, what: str) -> WarehouseError:
    """Map a clickhouse-connect / chdb exception to a :class:`WarehouseError` subclass.

    ``what`` says what was being done ("insert into responses"), so the message can be acted on.
    """
    text = str(exc)
    if "Cannot lock file" in text or "Another server instance" in text:
        return WarehouseBusyError(
            f"{what}: the embedded warehouse directory is in use by another process. chdb holds "
            "its directory inside one process: stop the other process (an ingest consumer or a "
            "Streamlit app), or point both at a ClickHouse server (TELLTALE_WAREHOUSE_URL="
            "http://host:8123)."
        )
    if "EmbeddedServer already initialized with path" in text:
        return TerminalWarehouseError(
            f"{what}: this process already has another embedded warehouse open; close it first "
            f"(one process holds one chdb directory at a time): {text}"
        )
    if isinstance(exc, ch_exc.OperationalError | ConnectionError | TimeoutError | OSError):
        return TransientWarehouseError(f"{what}: the warehouse is unreachable: {text}")
    match = _CODE.search(text)
    if match and int(match.group(1)) in _TRANSIENT_CODES:
        return TransientWarehouseError(f"{what}: {text}")
    return TerminalWarehouseError(f"{what}: {text}")
