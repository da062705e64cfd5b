"""Every page of the Streamlit app, run by ``streamlit.testing.v1.AppTest`` in this process on a
warehouse filled by the simulator (two weeks around the full switch, its annotations and a
simulated shadow run: tests/app_warehouse.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

import warehouse
from app import ui
from app.ui import UNEXPECTED

import app_warehouse as aw

REPO = Path(__file__).resolve().parent.parent
VIEWS = REPO / "app" / "views"
TIMEOUT = 300  # first runs fit waterfalls on two cores shared with other work


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    """The filled warehouse, named in TELLTALE_WAREHOUSE_URL for the app; the app's cached
    connection is closed afterwards (one process holds one embedded warehouse)."""
    tmp = tmp_path_factory.mktemp("app")
    url = aw.build(tmp / "wh", tmp)
    before = os.environ.get("TELLTALE_WAREHOUSE_URL")
    os.environ["TELLTALE_WAREHOUSE_URL"] = url
    try:
        yield url
    finally:
        st.cache_data.clear()
        st.cache_resource.clear()  # closes the warehouse (on_release)
        if before is None:
            del os.environ["TELLTALE_WAREHOUSE_URL"]
        else:
            os.environ["TELLTALE_WAREHOUSE_URL"] = before


def page(name: str, **params: str) -> AppTest:
    """Run one page with ``params`` in its URL; fail on any exception or unexpected error."""
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    check(at)
    return at


def check(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]
    shown = [e.value for e in (*at.error, *at.warning, *at.info)]
    assert not [s for s in shown if UNEXPECTED in s or "Traceback" in s], shown


def texts(at: AppTest) -> str:
    return "\n".join(
        str(e.value) for kind in ("markdown", "caption", "info", "warning", "error", "success",
                                  "text") for e in getattr(at, kind)
    )  # fmt: skip


def test_overview_shows_each_version_and_mirrors_its_filters_in_the_url(url):
    at = page("overview")
    assert [m.label for m in at.metric] == [aw.BASELINE, aw.CANDIDATE]
    assert {"metric", "from", "to", "segment", "grain", "at"} <= set(at.query_params)
    assert at.query_params["at"] == "2026-10-06"  # the full switch, from the annotations
    at.selectbox(key="metric").select("retry_rate").run()
    check(at)
    assert at.query_params["metric"] == "retry_rate"
    assert "retry_rate" in texts(at)
    # retention is per user: not an hourly series
    assert "retention_d7" not in at.selectbox(key="metric").options


def test_a_link_reproduces_an_overview(url):
    params = {"metric": "refusal_rate", "from": "2026-09-30", "to": "2026-10-09",
              "segment": "intent=writing", "grain": "day", "at": "2026-10-06"}  # fmt: skip
    at = page("overview", **params)
    assert {k: at.query_params[k] for k in params} == params
    assert at.selectbox(key="segment").value == "intent=writing"
    assert at.date_input(key="from").value.isoformat() == "2026-09-30"
    # a value the data does not have falls back to the default, and the URL says so
    at = page("overview", metric="no_such_metric")
    assert at.query_params["metric"] == "thumbs_down_rate"


def test_attribution_shows_the_waterfall_its_table_and_diagnostics(url):
    at = page("attribution")
    assert [m.label for m in at.metric][:3] == ["Before", "After", "Model effect at full exposure"]
    (table,) = at.dataframe
    terms = table.value["term"].to_list()
    for part in ("seasonality", "population shift", "model", "unexplained", "observed change"):
        assert part in terms
    assert [s.value for s in at.subheader] == ["Decomposition", "Diagnostics"]
    assert any("assumes" in e.label or "assume" in e.label for e in at.expander)


@pytest.mark.parametrize(
    ("params", "design"),
    [({"metric": "retry_rate", "design": "population"}, "population"),
     ({"metric": "retention_d7"}, "retention")],
)  # fmt: skip
def test_attribution_other_designs(url, params, design):
    at = page("attribution", **params)
    assert at.query_params["design"] == design
    assert at.dataframe, "a decomposition table"


def test_attribution_windows_past_the_data_say_what_to_do(url):
    at = page("attribution", window="28")
    assert any("run past the data" in w.value for w in at.warning)


def test_segments_heatmap_table_and_drill_down(url):
    at = page("segments", metrics="thumbs_down_rate,retry_rate", columns="locale,intent")
    (table,) = at.dataframe
    frame = table.value
    assert set(frame["metric"]) == {"thumbs_down_rate", "retry_rate"}
    assert set(frame["segment"]) == {"locale", "intent"}
    assert len(frame) == 2 * (6 + 6)  # two metrics x (6 locales + 6 intents)
    tested = frame.dropna(subset=["q_value"])
    assert (tested["q_value"] >= tested["p_value"] - 1e-12).all()
    at.selectbox(key="where").select("intent=coding").run()
    check(at)
    assert at.query_params["where"] == "intent=coding"
    assert "model effect at full exposure" in texts(at)


def test_shadow_page_shows_the_simulated_run_win_rates_and_answers_side_by_side(url):
    at = page("shadow_runs")
    assert any("simulated" in i.value for i in at.info)
    labels = [m.label for m in at.metric]
    assert "judge win rate" in labels and "refusal rate" in labels
    sample = at.query_params["sample"]
    assert at.selectbox(key="sample").value.startswith(sample[:13])
    # the app holds the warehouse: read the stored answers through its connection
    stored = warehouse.shadow_results(ui.connection(), aw.RUN_ID).filter(
        pl.col("sample_id") == sample
    )
    arms = {r["arm"]: r for r in stored.iter_rows(named=True)}
    shown = [t.value for t in at.text]
    assert shown == [
        arms["candidate"]["output"],
        arms["candidate"]["production_output"],
        arms["baseline_replay"]["output"],
    ]
    assert at.code[0].language == "diff"


def test_shadow_page_filters_by_segment(url):
    at = page("shadow_runs", by="intent", value="writing")
    assert "with intent = writing" in texts(at)
    refusal = next(m for m in at.metric if m.label == "refusal rate")
    assert float(refusal.value) > 0  # the simulated candidate refuses some writing requests
    at.selectbox(key="value").select("all").run()
    check(at)
    assert at.query_params["value"] == "all"


def test_release_review_page_shows_the_verdict_gates_and_export(url):
    at = page("release_review")
    assert at.query_params["week"] == aw.WEEK
    banner = [e.value for e in (*at.error, *at.success, *at.warning) if "gates pass" in e.value]
    assert len(banner) == 1
    gates = at.dataframe[0].value
    assert len(gates) == 8 and set(gates["outcome"]) <= {"pass", "fail", "inconclusive"}
    verdict = "FAIL" if "fail" in set(gates["outcome"]) else None
    if verdict:
        assert banner[0].startswith("**FAIL**")
    assert [b.label for b in at.get("download_button")] == ["Export HTML", "Export Markdown"]
    assert any(aw.RUN_ID in m.value and "simulated" in m.value for m in at.markdown)


def test_the_export_is_the_pages_review_with_charts_and_telemetry(url):
    review = ui.release_review(url, aw.WEEK, aw.CANDIDATE, aw.BASELINE, None)
    report = ui.weekly(url, aw.WEEK, aw.CANDIDATE, aw.BASELINE, None)
    assert [r.to_frame().to_dicts() for r in report.reviews] == [review.to_frame().to_dicts()]
    assert {m for m, _ in report.telemetry} >= {"thumbs_down_rate", "session_turns"}
    html = report.html()
    assert html.count("<svg") >= 10 and review.summary("html") in html


def test_release_review_reads_the_gates_file_named_in_the_environment(url, tmp_path):
    gates = tmp_path / "gates.toml"
    gates.write_text(
        '[gates.thumbs_down_rate]\nowner = "team-x"\n[gates.retention_d7]\nskip = true\n'
    )
    os.environ["TELLTALE_GATES"] = str(gates)
    try:
        at = page("release_review")
    finally:
        del os.environ["TELLTALE_GATES"]
    frame = at.dataframe[0].value
    assert len(frame) == 7 and "retention_d7" not in set(frame["metric"])
    assert frame.set_index("metric").loc["thumbs_down_rate", "owner"] == "team-x"


def test_alerts_list_chart_and_acknowledge_then_resolve(url):
    at = page("alerts", status="all")
    table = at.dataframe[0].value
    assert set(table["alert_id"]) == set(aw.ALERT_IDS)
    at = page("alerts", status="open", alert=aw.ALERT_IDS[0])
    assert "retry_rate on assistant-2026-09, intent=coding" in at.subheader[0].value
    assert [m.label for m in at.metric] == ["Expected", "Observed", "Status", "Segments firing"]
    assert all(b.disabled for b in at.button)  # nobody named: nothing to record
    at.text_input(key="by").input("alice")
    at.text_input(key="note").input("coding retries: known, fix in review")
    at.run()
    at.button(key="set-acknowledged").click().run()
    check(at)
    # acknowledged alerts leave the open list; the page moves on to the other one
    assert aw.ALERT_IDS[0] not in set(at.dataframe[0].value["alert_id"])
    at = page("alerts", status="acknowledged", alert=aw.ALERT_IDS[0])
    history = at.dataframe[-1].value
    assert history["status"].tolist() == ["open", "acknowledged"]
    assert history["updated_by"].tolist()[-1] == "alice"
    at.text_input(key="by").input("bob").run()
    at.button(key="set-resolved").click().run()
    check(at)
    at = page("alerts", status="resolved")
    assert aw.ALERT_IDS[0] in set(at.dataframe[0].value["alert_id"])


def test_alerts_none_in_range_say_what_to_do(url):
    at = page("alerts", status="all", to="2026-09-30")
    assert any("telltale alerts run" in i.value for i in at.info)


def test_a_gates_file_that_cannot_be_read_says_so(url, tmp_path):
    os.environ["TELLTALE_GATES"] = str(tmp_path / "missing.toml")
    try:
        at = page("release_review")
    finally:
        del os.environ["TELLTALE_GATES"]
    assert any("TELLTALE_GATES names" in w.value for w in at.warning)


def test_the_entry_point_navigates_between_pages(url):
    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=TIMEOUT)
    at.run()
    check(at)
    assert at.title[0].value == "Overview"
    at.switch_page("views/attribution.py").run()
    check(at)
    assert at.title[0].value == "Attribution"


def test_a_busy_warehouse_is_a_message_not_a_stack_trace(url, tmp_path):
    """Another process holds a copy of the warehouse: the page says which process to stop."""
    copy = tmp_path / "busy"
    shutil.copytree(url.removeprefix("chdb://"), copy)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, warehouse; wh = warehouse.connect(sys.argv[1]); print('ready', flush=True);"
         " sys.stdin.read()", f"chdb://{copy}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        os.environ["TELLTALE_WAREHOUSE_URL"] = f"chdb://{copy}"
        at = AppTest.from_file(str(VIEWS / "overview.py"), default_timeout=TIMEOUT).run()
    finally:
        os.environ["TELLTALE_WAREHOUSE_URL"] = url
        holder.communicate("", timeout=60)
    assert not at.exception
    (error,) = at.error
    assert "in use by another process" in error.value and "TELLTALE_WAREHOUSE_URL" in error.value
