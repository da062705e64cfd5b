"""The release review and `telltale report weekly`, on two simulated weeks around the candidate's
full switch with a simulated shadow run (tests/app_warehouse.py)."""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path

import polars as pl
import polars.selectors as cs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from test_cli import telltale

import analysis
import warehouse
from app.report import parse_week, weekly_report
from app.review import (
    GateError,
    default_gates,
    judge_gate,
    parse_gates,
    review_release,
    simulated_run,
)

import app_warehouse as aw

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("review")
    return aw.build(tmp / "wh", tmp)


@pytest.fixture(scope="module")
def review(url):
    since, until = parse_week(aw.WEEK)
    with warehouse.connect(url) as wh:
        return review_release(
            wh, candidate=aw.CANDIDATE, baseline=aw.BASELINE, since=since, until=until
        )


# --------------------------------------------------------------------------------------------
# Gates
# --------------------------------------------------------------------------------------------

finite = st.floats(-2, 2, allow_nan=False)


@given(finite, finite, finite, st.floats(0, 1))
def test_a_gate_passes_only_when_the_worst_plausible_change_is_within_the_threshold(
    a, b, c, threshold
):
    low, worsening, high = sorted((a, b, c))
    outcome = judge_gate(worsening, low, high, threshold)
    assert (outcome == "pass") == (high < threshold)
    assert (outcome == "fail") == (high >= threshold and low > 0 and worsening > threshold)
    # moving the whole interval the bad way never turns a failure into a pass
    if outcome == "fail":
        assert judge_gate(worsening + 0.1, low + 0.1, high + 0.1, threshold) == "fail"


def test_a_gate_without_an_estimate_is_inconclusive():
    assert judge_gate(math.nan, math.nan, math.nan, 0.05) == "inconclusive"


def test_gates_default_to_the_registry_and_a_file_overrides_or_skips():
    defaults = {g.metric: g for g in default_gates()}
    assert set(defaults) == set(analysis.METRICS)
    assert defaults["thumbs_down_rate"].threshold == analysis.METRICS["thumbs_down_rate"].threshold
    gates = parse_gates(
        '[gates.thumbs_down_rate]\nowner = "quality"\nthreshold = 0.02\n'
        "[gates.retention_d7]\nskip = true\n"
    )
    by_metric = {g.metric: g for g in gates}
    assert "retention_d7" not in by_metric
    assert by_metric["thumbs_down_rate"].owner == "quality"
    assert by_metric["thumbs_down_rate"].threshold == 0.02
    assert by_metric["retry_rate"] == defaults["retry_rate"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[gates.thumbs_down]\nthreshold = 0.1\n", "unknown metrics ['thumbs_down']"),
        ("[gates.retry_rate]\nthreshold = -0.1\n", "relative change"),
        ("[gates.retry_rate]\nlimit = 0.1\n", "unknown keys ['limit']"),
        ("threshold = 0.1\n", "[gates.NAME]"),
        ("[gates.retry_rate\n", "not valid TOML"),
    ],
)
def test_a_bad_gates_file_says_what_to_fix(text, says):
    with pytest.raises(GateError) as e:
        parse_gates(text)
    assert says in str(e.value)


# --------------------------------------------------------------------------------------------
# The review
# --------------------------------------------------------------------------------------------


def test_every_gate_has_an_effect_with_an_interval_and_a_consistent_outcome(review):
    assert [g.gate.metric for g in review.gates] == list(analysis.METRICS)
    for g in review.gates:
        assert g.ci_low <= g.effect <= g.ci_high, g.gate.metric
        assert g.relative == pytest.approx(g.effect / g.level)
        sign = 1 if g.better == "lower" else -1
        bounds = sorted((sign * g.relative_low, sign * g.relative_high))
        assert g.outcome == judge_gate(sign * g.relative, *bounds, g.gate.threshold)
    frame = review.to_frame()
    assert frame.height == len(analysis.METRICS)
    assert set(frame["outcome"]) <= {"pass", "fail", "inconclusive"}
    expected = (
        "fail"
        if "fail" in set(frame["outcome"])
        else "pass"
        if set(frame["outcome"]) == {"pass"}
        else "inconclusive"
    )
    assert review.verdict == expected


def test_the_attribution_parts_add_up_to_the_observed_change(review):
    frame = review.attribution_frame()
    assert set(frame["metric"]) == {
        m.name for m in analysis.METRICS.values() if m.unit is not analysis.Unit.USER
    }
    parts = ["seasonality", "population shift", "model", "annotated changes", "unexplained"]
    total = frame.select(pl.sum_horizontal(parts)).to_series()
    assert total.to_list() == pytest.approx(frame["observed change"].to_list(), abs=1e-9)


def test_segments_are_adjusted_across_all_pairs_and_regressions_go_the_bad_way(review):
    segments = review.effects.filter(pl.col("segment") != "all")
    tested = segments.filter(pl.col("q_value").is_not_null())
    assert tested.height > 20
    assert (tested["q_value"] >= tested["p_value"] - 1e-12).all()
    assert tested["q_value"].max() <= 1.0
    assert review.regressed.filter(~pl.col("worse") | (pl.col("q_value") >= 0.05)).is_empty()
    # sessions carry no intent: said, not estimated
    no_intent = segments.filter(
        (pl.col("segment") == "intent") & (pl.col("metric") == "session_turns")
    )
    assert no_intent["note"].str.contains("intent").all()


def test_the_shadow_run_and_its_examples_are_in_the_review(review):
    (run,) = review.shadow_runs
    assert run.run_id == aw.RUN_ID and run.simulated and run.comparison is not None
    assert run.comparison.judge is not None
    whys = set(review.examples["why"])
    # the simulated candidate refuses some writing requests production answered
    assert "the candidate refused, production did not" in whys
    refused = review.examples.filter(pl.col("why").str.starts_with("the candidate refused"))
    assert (refused["candidate_output"] == aw.REFUSAL).all()
    assert (refused["intent"] == "writing").all()
    assert review.examples["sample_id"].n_unique() == review.examples.height


def test_a_run_is_simulated_by_its_settings_or_its_name():
    assert simulated_run({"simulated": True}, aw.CANDIDATE)
    assert simulated_run({}, f"simulated-{aw.CANDIDATE}")
    assert not simulated_run({"runner": {}}, aw.CANDIDATE)


@pytest.mark.parametrize("fmt", ["text", "markdown", "html"])
def test_the_summary_names_every_gate_and_the_verdict(review, fmt):
    text = review.summary(fmt)
    assert review.verdict.upper() in text
    for g in review.gates:
        assert g.gate.metric in text and g.gate.owner in text
    assert aw.RUN_ID in text and "simulated" in text


def test_a_week_without_a_new_version_says_so(url):
    with warehouse.connect(url) as wh:
        report = weekly_report(wh, "2026-W45")
    assert report.reviews == () and "No model version served" in report.note


@pytest.mark.parametrize("bad", ["2026-41", "2026-W54", "W41"])
def test_weeks_are_iso_weeks(bad):
    assert parse_week("2026-W41") == (dt.datetime(2026, 10, 5), dt.datetime(2026, 10, 12))
    with pytest.raises(ValueError, match=r"W41|ISO week"):
        parse_week(bad)


# --------------------------------------------------------------------------------------------
# telltale report weekly
# --------------------------------------------------------------------------------------------


def test_report_weekly_writes_html_and_markdown_with_charts_that_need_no_network(url, tmp_path):
    out = tmp_path / "out"
    res = telltale("report", "weekly", "--week", aw.WEEK, "-w", url, "--out", str(out),
                   cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    html = (out / f"telltale-weekly-{aw.WEEK}.html").read_text()
    markdown = (out / f"telltale-weekly-{aw.WEEK}.md").read_text()
    assert f"{aw.CANDIDATE} vs {aw.BASELINE}" in res.stderr
    for text in (html, markdown):
        assert "Gates" in text and "Segments that regressed" in text and aw.RUN_ID in text
    assert html.count("<svg") >= 10  # gates, 7 waterfalls and bands, heatmap, judge, telemetry
    assert markdown.count("data:image/svg+xml;base64,") >= 10
    # nothing to fetch when the report is opened
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]https?://", html)


def test_report_weekly_gates_file_and_fail_on_gate(url, tmp_path):
    lenient = tmp_path / "lenient.toml"
    lenient.write_text(
        "".join(f"[gates.{m}]\nthreshold = 9.0\n" for m in analysis.METRICS if m != "retention_d7")
        + "[gates.retention_d7]\nskip = true\n"
    )
    res = telltale("report", "weekly", "--week", aw.WEEK, "-w", url, "--out", str(tmp_path),
                   "--gates", str(lenient), "--fail-on-gate", "--shadow-run", "no-such-run",
                   cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "FAIL" not in res.stderr
    markdown = (tmp_path / f"telltale-weekly-{aw.WEEK}.md").read_text()
    assert "| retention_d7 |" not in markdown and str(lenient) in markdown
    assert aw.RUN_ID not in markdown and "No shadow run" in markdown
    strict = tmp_path / "strict.toml"
    strict.write_text("".join(f"[gates.{m}]\nthreshold = 0.0\n" for m in analysis.METRICS))
    res = telltale("report", "weekly", "--week", aw.WEEK, "-w", url, "--out", str(tmp_path),
                   "--gates", str(strict), "--fail-on-gate", cwd=tmp_path)  # fmt: skip
    # at a zero threshold any significant worsening fails; the simulated candidate has some
    assert res.returncode == 2, res.stderr[-3000:]
    assert "FAIL: failed" in res.stderr


def test_report_weekly_errors_say_what_to_do(url, tmp_path):
    bad_week = telltale("report", "weekly", "--week", "41", "-w", url, cwd=tmp_path)
    assert bad_week.returncode == 1 and "2026-W41" in bad_week.stderr
    missing = telltale("report", "weekly", "--week", aw.WEEK, "-w", url,
                       "--gates", str(tmp_path / "none.toml"), cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 1 and "cannot read the gates file" in missing.stderr
    for res in (bad_week, missing):
        assert "Traceback" not in res.stderr


def test_hourly_counts_without_latency_are_the_same_counts(url):
    since, until = parse_week(aw.WEEK)
    with warehouse.connect(url) as wh:
        full = warehouse.hourly_rollup(wh, since=since, until=until, group_by=["locale"])
        lean = warehouse.hourly_rollup(
            wh, since=since, until=until, group_by=["locale"], latency=False
        )
    assert_frame_equal(lean, full.drop(cs.starts_with("latency_ms_")))
