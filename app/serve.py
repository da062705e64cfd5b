"""Launch the Streamlit app: the command line that serves it, and a blocking ``serve``.

The app reads the warehouse named by ``TELLTALE_WAREHOUSE_URL``. An embedded (chdb) warehouse is
held by one process at a time: close it everywhere else (the demo, an ingest) before serving it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.options import WarehouseUrl

__all__ = ["ENTRY", "app_command", "serve", "streamlit_command"]

ENTRY = Path(__file__).resolve().with_name("streamlit_app.py")
"""The app's entry script (``streamlit run`` it)."""


def streamlit_command(
    *,
    port: int = 8501,
    host: str = "127.0.0.1",
    headless: bool = True,
    error_details: str = "type",
) -> list[str]:
    """``python -m streamlit run`` on the app: on ``host:port``, no usage statistics sent, no
    file watcher (it polls the tree: CPU the analyses need), and uncaught errors shown as their
    type only (``error_details``: full, stacktrace, type or none; the pages catch the errors
    they expect and say what to do)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(ENTRY),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true" if headless else "false",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", error_details,
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip


def serve(
    url: str | None = None, *, port: int = 8501, host: str = "127.0.0.1", headless: bool = False
) -> int:
    """Serve the app on ``url``'s warehouse (default: ``TELLTALE_WAREHOUSE_URL`` or the embedded
    one) until interrupted; the server's exit status."""
    env = dict(os.environ)
    if url is not None:
        env["TELLTALE_WAREHOUSE_URL"] = url
    try:
        return subprocess.call(streamlit_command(port=port, host=host, headless=headless), env=env)
    except KeyboardInterrupt:
        return 130


def app_command(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (or --host).")] = 8501,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    url: WarehouseUrl = None,
) -> None:
    """Open the Telltale app (Streamlit): overview, attribution, segments, shadow runs, alerts
    and the release review, on the warehouse.

    An embedded warehouse is held by one process: stop ingest and the demo first (or use a
    ClickHouse server). Every page's filters live in its URL: share the link to share the view.
    """
    raise typer.Exit(serve(url, port=port, host=host))
