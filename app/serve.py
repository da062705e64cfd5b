"""Launch the Streamlit app: the command line that serves it, and a blocking ``serve``.

The app reads the warehouse named by ``TELLTALE_WAREHOUSE_URL``. An embedded (chdb) warehouse is
held by one process at a time: close it everywhere else (the demo, an ingest) before serving it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import webbrowser
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
    error_details: str = "type",
) -> list[str]:
    """``python -m streamlit run`` on the app: on ``host:port``, headless (not headless,
    Streamlit's first run on a machine stops to ask for an e-mail address on stdin; :func:`serve`
    opens the browser itself), no usage statistics sent, no file watcher (it polls the tree: CPU
    the analyses need), and uncaught errors shown as their type only (``error_details``: full,
    stacktrace, type or none; the pages catch the errors they expect and say what to do)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(ENTRY),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", error_details,
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip


def serve(
    url: str | None = None,
    *,
    port: int = 8501,
    host: str = "127.0.0.1",
) -> int:
    """Serve the app on ``url``'s warehouse (default: ``TELLTALE_WAREHOUSE_URL`` or the embedded
    one) until interrupted, opening it in the browser once it listens (where there is one); the
    server's exit status."""
    env = dict(os.environ)
    if url is not None:
        env["TELLTALE_WAREHOUSE_URL"] = url
    with subprocess.Popen(streamlit_command(port=port, host=host), env=env) as proc:
        # As Streamlit does: on Linux without a display, webbrowser would pick a text browser.
        no_display = sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        )
        if not no_display:
            threading.Thread(target=_open_when_up, args=(proc, host, port), daemon=True).start()
        # A SIGTERM to us (a service manager, `timeout`) must not leave the app holding its port.
        previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)


def _open_when_up(proc: subprocess.Popen[bytes], host: str, port: int) -> None:
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                webbrowser.open(f"http://{host}:{port}")  # False, and nothing else, without one
                return
        except OSError:
            time.sleep(0.3)


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
