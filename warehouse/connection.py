"""Connecting to the warehouse: embedded chdb by default, a ClickHouse server when configured."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import clickhouse_connect
import polars as pl
import pyarrow as pa
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from warehouse.errors import TerminalWarehouseError, WarehouseError, translate_error

__all__ = ["DEFAULT_URL", "Warehouse", "WarehouseSettings", "connect"]

DEFAULT_URL = "chdb://./.telltale/warehouse"

_INSERT_SETTINGS = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    # Batches hold no duplicate keys (the sink drops them), so the per-block replacing merge
    # on insert is wasted work: about a quarter of the raw insert's cost.
    "optimize_on_insert": 0,
}


class WarehouseSettings(BaseSettings):
    """Where the warehouse is and how to reach it (environment: ``TELLTALE_WAREHOUSE_*``)."""

    model_config = SettingsConfigDict(env_prefix="TELLTALE_WAREHOUSE_", frozen=True)

    url: str = Field(
        DEFAULT_URL,
        description="chdb://PATH (embedded, default ./.telltale/warehouse) or http(s)://host:port "
        "(a ClickHouse server). TELLTALE_WAREHOUSE_URL.",
    )
    username: str = Field("default", description="Server user. TELLTALE_WAREHOUSE_USERNAME.")
    password: SecretStr = Field(
        SecretStr(""), description="Server password. TELLTALE_WAREHOUSE_PASSWORD."
    )
    database: str = Field("default", description="Database. TELLTALE_WAREHOUSE_DATABASE.")
    cluster: str | None = Field(
        None,
        description="ClickHouse cluster name: DDL becomes ReplicatedMergeTree + Distributed. "
        "TELLTALE_WAREHOUSE_CLUSTER.",
    )


class Warehouse:
    """A connection to the warehouse. Every call translates driver errors to WarehouseError.

    Use as a context manager, or call :meth:`close`: an embedded warehouse holds its directory
    until closed, and one process can hold only one embedded directory at a time.
    """

    def __init__(self, client: Any, settings: WarehouseSettings) -> None:
        self._client = client
        self.settings = settings
        # clickhouse-connect clients are not safe for concurrent queries from several threads.
        self._lock = threading.Lock()

    @property
    def database(self) -> str:
        """The database every table lives in."""
        return self.settings.database

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Run a statement that returns no rows (DDL, INSERT ... SELECT)."""
        with self._lock:
            try:
                return self._client.command(sql, parameters=parameters)
            except Exception as e:
                raise translate_error(e, what=_first_words(sql)) from e

    def query_frame(
        self,
        sql: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        binary_strings: bool = False,
    ) -> pl.DataFrame:
        """Run a query and return its rows as a polars frame (through Arrow).

        ``binary_strings`` returns String columns as bytes: for columns that may hold bytes that
        are not UTF-8 (the raw payload of a dead letter).
        """
        with self._lock:
            try:
                table = self._client.query_arrow(
                    sql,
                    parameters=parameters,
                    settings={"output_format_arrow_string_as_string": int(not binary_strings)},
                )
            except Exception as e:
                raise translate_error(e, what=_first_words(sql)) from e
        return pl.from_arrow(table)  # type: ignore[return-value]

    def insert_arrow(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> None:
        """Insert an Arrow table; with ``dedup_token`` a replay of the same block is dropped."""
        settings = {
            "insert_deduplicate": 1,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
        }
        if dedup_token is not None:
            settings["insert_deduplication_token"] = dedup_token
        with self._lock:
            try:
                self._client.insert_arrow(f"{self.database}.{table}", data, settings=settings)
            except Exception as e:
                raise translate_error(e, what=f"insert into {table}") from e

    def insert_json(self, table: str, rows: bytes, *, dedup_token: str) -> None:
        """Insert newline-delimited JSON objects, parsed by ClickHouse itself (JSONEachRow).

        Unknown fields are skipped, omitted ones take the column default, timestamps may carry
        any RFC 3339 offset. Far cheaper than building Arrow columns in Python.
        """
        settings = {
            **_INSERT_SETTINGS,
            "insert_deduplication_token": dedup_token,
            "input_format_skip_unknown_fields": 1,
            "date_time_input_format": "best_effort",
        }
        with self._lock:
            try:
                self._client.raw_insert(
                    f"{self.database}.{table}",
                    insert_block=rows,
                    fmt="JSONEachRow",
                    settings=settings,
                )
            except Exception as e:
                raise translate_error(e, what=f"insert into {table}") from e

    def close(self) -> None:
        """Release the connection (and the embedded directory)."""
        with self._lock:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str | None = None, *, settings: WarehouseSettings | None = None) -> Warehouse:
    """Open the warehouse at ``url`` (``chdb://PATH`` or ``http(s)://host:port``).

    Raises :class:`~warehouse.WarehouseBusyError` when another process holds an embedded directory.
    """
    settings = settings or WarehouseSettings()
    if url is not None:
        settings = settings.model_copy(update={"url": url})
    parts = urlsplit(settings.url)
    try:
        if parts.scheme == "chdb":
            path = Path(parts.netloc + parts.path).expanduser().resolve()
            path.mkdir(parents=True, exist_ok=True)
            _check_not_busy(path)
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
            return Warehouse(client, settings)
        if parts.scheme in ("http", "https"):
            client = clickhouse_connect.get_client(
                host=parts.hostname,
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                secure=parts.scheme == "https",
                username=parts.username or settings.username,
                password=parts.password or settings.password.get_secret_value(),
                database=settings.database,
            )
            return Warehouse(client, settings)
    except WarehouseError:
        raise
    except Exception as e:
        raise translate_error(e, what=f"connect to {_redact(settings.url)}") from e
    raise TerminalWarehouseError(
        f"unsupported warehouse URL {_redact(settings.url)!r}: use chdb://PATH for the embedded "
        "warehouse or http(s)://host:port for a ClickHouse server"
    )


def _check_not_busy(path: Path) -> None:
    """Fail clearly if another process holds the chdb directory (the engine's message is vague).

    ClickHouse holds an exclusive ``flock`` on ``<dir>/status`` while it runs.
    """
    status = path / "status"
    if not status.exists():
        return
    with status.open("rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise translate_error(
                RuntimeError("Cannot lock file status"), what=f"open {path}"
            ) from None
        fcntl.flock(f, fcntl.LOCK_UN)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


def _first_words(sql: str, n: int = 6) -> str:
    return " ".join(sql.split()[:n])
