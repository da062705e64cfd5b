"""Warehouse: migrations, the busy-directory error, bound parameters, cluster DDL."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

import warehouse
from warehouse import schema

SNAPSHOT = Path(__file__).parent / "snapshots" / "cluster_ddl.sql"


def test_migrations_are_idempotent(wh):
    tables = wh.query_frame("SHOW TABLES")["name"].to_list()
    assert warehouse.migrate(wh) == []
    assert warehouse.migrate(wh) == []
    assert wh.query_frame("SHOW TABLES")["name"].to_list() == tables
    ledger = wh.query_frame("SELECT version FROM schema_migrations ORDER BY version")
    assert ledger["version"].to_list() == [m.version for m in warehouse.MIGRATIONS]
    for t in (*warehouse.EVENT_TABLES, "dead_letters", "rollup_hourly", "sessions_hourly"):
        assert t in tables


def test_interrupted_migration_completes_on_rerun(tmp_path):
    with warehouse.connect(f"chdb://{tmp_path}/wh") as wh:
        statements = warehouse.render_ddl()
        for s in statements[: len(statements) // 2]:  # as if the process died half-way
            wh.command(s)
        assert warehouse.migrate(wh) == [m.version for m in warehouse.MIGRATIONS]
        assert "rollup_hourly" in wh.query_frame("SHOW TABLES")["name"].to_list()


def test_busy_embedded_directory_gives_a_clear_error(tmp_path):
    path = tmp_path / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, warehouse; w = warehouse.connect(sys.argv[1]); "
            "print('ready', flush=True); sys.stdin.read()",
            f"chdb://{path}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(warehouse.WarehouseBusyError, match="in use by another process"):
            warehouse.connect(f"chdb://{path}")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_unsupported_url_says_what_to_use():
    with pytest.raises(warehouse.TerminalWarehouseError, match="chdb://PATH"):
        warehouse.connect("postgres://db/telltale")


def test_query_values_are_bound_not_formatted(wh):
    hostile = "x') OR 1=1; DROP TABLE responses; --"
    frame = warehouse.hourly_rollup(
        wh,
        since=dt.datetime(2026, 1, 1),
        until=dt.datetime(2027, 1, 1),
        model_versions=[hostile],
    )
    assert frame.height == 0
    assert "responses" in wh.query_frame("SHOW TABLES")["name"].to_list()


def test_grouping_identifiers_come_from_an_allow_list(wh):
    with pytest.raises(warehouse.TerminalWarehouseError, match="cannot group by"):
        warehouse.hourly_rollup(
            wh,
            since=dt.datetime(2026, 1, 1),
            until=dt.datetime(2027, 1, 1),
            group_by=["model_version", "1; DROP TABLE responses"],
        )


def test_cluster_ddl_matches_snapshot():
    ddl = ";\n\n".join(warehouse.render_ddl(cluster="telltale", database="prod")) + ";\n"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":  # after a reviewed schema change
        SNAPSHOT.write_text(ddl)
    assert ddl == SNAPSHOT.read_text(), "cluster DDL changed: review, then UPDATE_SNAPSHOTS=1"


def test_cluster_ddl_replicates_and_distributes_every_table():
    ddl = warehouse.render_ddl(cluster="c1", database="prod")
    for t in schema.TABLES:
        local = next(
            s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS prod.{t.name}_local ")
        )
        assert "ON CLUSTER c1" in local
        if t.merge_tree:
            assert f"ENGINE = Replicated{t.engine}('/clickhouse/tables/{{shard}}" in local
            assert "replicated_deduplication_window" in local or not t.dedup
        dist = next(s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS prod.{t.name} ON"))
        assert f"Distributed(c1, prod, {t.name}_local, {t.shard_key})" in dist
    views = [s for s in ddl if "MATERIALIZED VIEW" in s]
    assert len(views) == len(schema.VIEWS)
    for v in views:  # views read and write shard-local tables, never the Distributed ones
        assert " TO prod." in v and "_local" in v.split(" TO ", 1)[1].split()[0]
