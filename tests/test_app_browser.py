"""The app in a real browser: `streamlit run` on 127.0.0.1 (one server for the module) on a
warehouse filled by the simulator, driven by headless Chromium (Debian's package, installed by
`scripts/chromium install`) through Playwright. Each page loads with its data and without
exception text; a filter change updates the URL; a link reproduces a view. Screenshots go to
.cache/test-artifacts/. Under CI=true a missing Chromium or Playwright fails, never skips."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import analysis
from app.serve import streamlit_command
from app.ui import UNEXPECTED

import app_warehouse as aw

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / ".cache" / "test-artifacts"
LOAD_MS = 240_000  # a first visit fits waterfalls on two shared cores


def unavailable(reason: str) -> None:
    """Skip, or fail when CI=true so that CI never silently loses browser coverage."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (run scripts/chromium install)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """`streamlit run` on a filled warehouse (built and closed first: chdb holds a directory in
    one process); its base URL."""
    tmp = tmp_path_factory.mktemp("browser")
    url = aw.build(tmp / "wh", tmp)
    port = free_port()
    log = (tmp / "streamlit.log").open("w")
    proc = subprocess.Popen(
        # full error details: an uncaught exception must show on the page for the checks to see
        streamlit_command(port=port, error_details="full"),
        env={**os.environ, "TELLTALE_WAREHOUSE_URL": url, "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited: {(tmp / 'streamlit.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/_stcore/health", timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("streamlit did not answer its health check in 120 s")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def tab(browser) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        yield page
    finally:
        page.close()


def settle(page: Any) -> None:
    """Wait until the app's script run is over (Streamlit shows its status widget meanwhile)."""
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=LOAD_MS)


def load(page: Any, url: str, title: str, content: str) -> None:
    """Open ``url``, wait for the page ``title`` and its ``content`` selector, then for the run
    to finish; fail on exception text."""
    page.goto(url)
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=LOAD_MS)
    page.locator(content).first.wait_for(timeout=LOAD_MS)
    settle(page)
    assert_clean(page)


def assert_clean(page: Any) -> None:
    assert page.locator("[data-testid='stException']").count() == 0
    text = page.inner_text("body")
    for bad in ("Traceback", UNEXPECTED, "Page not found"):
        assert bad not in text, text[:2000]


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"app-{name}.png"), full_page=True)


PAGES = [
    ("", "Overview", "[data-testid='stMetric']"),  # the default page is the root
    ("attribution", "Attribution", "[data-testid='stDataFrame']"),
    ("segments", "Segments", "[data-testid='stDataFrame']"),
    ("shadow", "Shadow runs", "[data-testid='stMetric']"),
    ("alerts", "Alerts", "[data-testid='stMetric']"),
    ("release-review", "Release review", "[data-testid='stDataFrame']"),
]


@pytest.mark.parametrize(("path", "title", "content"), PAGES, ids=[p[1] for p in PAGES])
def test_each_page_loads_with_data_and_no_exception(server, tab, path, title, content):
    load(tab, f"{server}/{path}", title, content)
    tab.locator(".vega-embed").first.wait_for(timeout=LOAD_MS)  # charts draw after the run
    # every filter is written to the URL once the page has run
    assert "?" in tab.url
    shot(tab, path or "overview")


def choose(page: Any, label: str, option: str) -> None:
    """Pick ``option`` in the sidebar selectbox labelled ``label``."""
    box = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text=label)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_a_filter_change_updates_the_url_and_a_link_reproduces_the_view(server, tab):
    load(tab, server, "Overview", "[data-testid='stMetric']")
    choose(tab, "Metric", "retry_rate")
    tab.wait_for_url(re.compile(r"metric=retry_rate"), timeout=LOAD_MS)
    # the URL changes as the rerun passes the filter; the page below it follows
    described = f"retry_rate: {analysis.get_metric('retry_rate').description[:30]}"
    tab.get_by_test_id("stMain").get_by_text(described).wait_for(timeout=LOAD_MS)
    settle(tab)
    assert_clean(tab)
    shot(tab, "overview-retry-rate")
    link = tab.url
    other = tab.context.browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        load(other, link, "Overview", "[data-testid='stMetric']")
        assert described in other.inner_text("[data-testid='stMain']")
        assert other.url == link
    finally:
        other.close()


def test_shadow_side_by_side_follows_the_segment_filter(server, tab):
    load(tab, f"{server}/shadow?by=intent&value=writing", "Shadow runs", "[data-testid='stMetric']")
    assert "with intent = writing" in tab.inner_text("[data-testid='stMain']")
    assert tab.locator("[data-testid='stCode']").count() == 1  # the diff
    shot(tab, "shadow-writing")
