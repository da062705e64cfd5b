"""Release review: per candidate model version, its gates (owner, threshold, observed effect with
its interval, pass / fail / inconclusive), the regressed segments, its shadow runs and example
answers; exported as the same HTML or Markdown report `telltale report weekly` writes."""

import datetime as dt
import os
from pathlib import Path

import polars as pl
import streamlit as st

from app import charts, ui
from app.review import GateError, shadow_headline

st.title("Release review")


def _week(day: dt.date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


with ui.page_guard():
    url, first, last = ui.require_data()
    weeks = sorted({_week(first + dt.timedelta(days=i)) for i in range((last - first).days + 1)})
    rollout = ui.default_boundary(url, first, last + dt.timedelta(days=1), None)
    week = ui.url_select("Week", weeks[::-1], key="week", default=_week(rollout))
    monday = dt.date.fromisocalendar(int(week[:4]), int(week[6:]), 1)
    this_week = ui.versions(url, monday, monday + dt.timedelta(days=7))
    around = ui.versions(url, monday - dt.timedelta(days=7), monday + dt.timedelta(days=7))
    if len(around) < 2 or not this_week:
        st.info(
            f"Only {', '.join(around) or 'no version'} served in {week} and the week before: "
            "a review compares a candidate with a baseline. Pick another week in the sidebar."
        )
        st.stop()
    baseline = ui.url_select("Baseline", around, key="baseline", default=around[0])
    choices = [v for v in this_week[::-1] if v != baseline]
    if not choices:
        st.info(f"Only {baseline} served in {week}: no candidate to review. Pick another week.")
        st.stop()
    candidate = ui.url_select("Candidate", choices, key="candidate")

    gates_path = os.environ.get("TELLTALE_GATES")
    uploaded = st.sidebar.file_uploader(
        "Gates file (TOML)", type=["toml"],
        help="[gates.METRIC] owner, threshold, skip. Default: TELLTALE_GATES, else the metrics "
        "registry's owners and thresholds.",
    )  # fmt: skip
    gates_text = None
    if uploaded is not None:
        gates_text = uploaded.getvalue().decode()
    elif gates_path:
        try:
            gates_text = Path(gates_path).read_text()
        except OSError as e:
            raise GateError(
                f"TELLTALE_GATES names {gates_path}, which cannot be read ({e.strerror}): fix "
                "the path or upload a gates file"
            ) from None

    review = ui.release_review(url, week, candidate, baseline, gates_text)
    verdict = {
        "pass": st.success,
        "fail": st.error,
        "inconclusive": st.warning,
    }[review.verdict]
    counts = {
        o: sum(g.outcome == o for g in review.gates) for o in ("pass", "fail", "inconclusive")
    }
    verdict(
        f"**{review.verdict.upper()}**: {counts['pass']} gates pass, {counts['fail']} fail, "
        f"{counts['inconclusive']} inconclusive. {candidate} vs {baseline}, {week} against the "
        f"week before. Gates: {review.gates_source}."
    )
    left, right = st.columns(2)
    # the report (charts rendered to SVG, the week's telemetry) is built when a button is used
    left.download_button(
        "Export HTML", lambda: ui.weekly(url, week, candidate, baseline, gates_text).html(),
        file_name=f"telltale-review-{week}.html", mime="text/html", on_click="ignore",
    )  # fmt: skip
    right.download_button(
        "Export Markdown",
        lambda: ui.weekly(url, week, candidate, baseline, gates_text).markdown(),
        file_name=f"telltale-review-{week}.md", mime="text/markdown", on_click="ignore",
    )  # fmt: skip

    st.subheader("Gates")
    gates = review.to_frame()
    ui.table(
        gates.select("metric", "owner", "threshold", "relative", "relative_low", "relative_high",
                     "effect", "outcome", "reason"),
        percent=("threshold", "relative", "relative_low", "relative_high"),
    )  # fmt: skip
    st.altair_chart(charts.gates_chart(gates), width="stretch")

    st.subheader("Attribution of the change (all traffic)")
    ui.table(review.attribution_frame())

    st.subheader("Segments that regressed")
    regressed = review.regressed
    if regressed.height:
        st.error(f"{regressed.height} segment(s) regressed (BH q < {review.alpha}).")
        ui.table(
            regressed.select("metric", "segment", "value", "relative", "relative_low",
                             "relative_high", "q_value"),
            percent=("relative", "relative_low", "relative_high"),
        )  # fmt: skip
    else:
        st.success(f"No segment regressed significantly (BH q < {review.alpha}).")
    segments = review.effects.filter(pl.col("segment") != "all")
    if segments.filter(pl.col("relative").is_finite()).height:
        st.altair_chart(charts.segment_heatmap(segments, alpha=review.alpha), width="stretch")

    st.subheader("Shadow runs")
    if not review.shadow_runs:
        st.info(f"No shadow run of {candidate} is stored (`telltale shadow run`).")
    for run in review.shadow_runs:
        label = " (simulated answers)" if run.simulated else ""
        st.markdown(f"**{run.run_id}**{label}: {run.status}. {run.note}")
        if run.comparison is not None:
            ui.table(shadow_headline(run.comparison))
    if review.examples.height:
        st.subheader("Example answers (redacted)")
        for r in review.examples.iter_rows(named=True):
            with st.expander(f"{r['sample_id'][:13]} ({r['intent']}, {r['locale']}): {r['why']}"):
                a, b = st.columns(2)
                a.markdown("**candidate**")
                a.text(r["candidate_output"] or "")
                b.markdown("**production**")
                b.text(r["production_output"] or "(not recorded)")
    for warning in review.warnings:
        st.warning(warning)
