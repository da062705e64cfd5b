"""Versioned, idempotent schema migrations, recorded in ``schema_migrations``.

Each migration is a list of statements that are safe to run twice (``IF NOT EXISTS``), so a
migration interrupted half-way is completed by running :func:`migrate` again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from warehouse.connection import Warehouse
from warehouse.schema import ALERT_TABLES, SHADOW_TABLES, render_ddl, render_tables

__all__ = ["MIGRATIONS", "Migration", "migrate"]


@dataclass(frozen=True)
class Migration:
    """One schema step: ``statements(cluster, database)`` renders its DDL."""

    version: int
    description: str
    statements: Callable[[str | None, str], list[str]]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "raw event tables, dedup filter, request/session lookups, hourly rollups, dead letters",
        lambda cluster, database: render_ddl(cluster=cluster, database=database),
    ),
    # Version 2 is reserved for the annotations table's change.
    Migration(
        3,
        "shadow replay: shadow_runs, shadow_results, shadow_judgments",
        lambda cluster, database: render_tables(SHADOW_TABLES, cluster=cluster, database=database),
    ),
    Migration(
        4,
        "regression alerts: alerts (one row per status change)",
        lambda cluster, database: render_tables(ALERT_TABLES, cluster=cluster, database=database),
    ),
)


def _ledger_ddl(cluster: str | None, database: str) -> str:
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    engine = (
        "ReplicatedMergeTree('/clickhouse/tables/{database}/schema_migrations', '{replica}')"
        if cluster
        else "MergeTree"
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations{on_cluster} (version UInt32,"
        " description String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
        f" ENGINE = {engine} ORDER BY version"
    )


def migrate(wh: Warehouse) -> list[int]:
    """Apply every migration not yet recorded; return the versions applied (empty if none)."""
    cluster, database = wh.settings.cluster, wh.database
    wh.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    wh.command(_ledger_ddl(cluster, database))
    done = set(
        wh.query_frame(f"SELECT version FROM {database}.schema_migrations")["version"].to_list()
    )
    applied = []
    for m in MIGRATIONS:
        if m.version in done:
            continue
        for statement in m.statements(cluster, database):
            wh.command(statement)
        wh.command(
            f"INSERT INTO {database}.schema_migrations (version, description)"
            " VALUES ({version:UInt32}, {description:String})",
            parameters={"version": m.version, "description": m.description},
        )
        applied.append(m.version)
    return applied
