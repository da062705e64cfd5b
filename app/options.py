"""Command-line options the ``telltale`` commands share."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["WarehouseUrl"]

WarehouseUrl = Annotated[
    str | None,
    typer.Option(
        "--warehouse",
        "-w",
        envvar="TELLTALE_WAREHOUSE_URL",
        help="chdb://PATH (embedded, default ./.telltale/warehouse) or http(s)://host:port.",
        show_default=False,
    ),
]
"""``--warehouse/-w``: where the warehouse is (``TELLTALE_WAREHOUSE_URL``)."""
