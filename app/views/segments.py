"""Segments: the candidate's effect on each metric in each segment, as a heatmap with
Benjamini-Hochberg-adjusted significance, and a drill-down into one segment's waterfall."""

import datetime as dt

import polars as pl
import streamlit as st

import analysis
from app import charts, ui
from app.attribution import SEGMENTS

st.title("Segments")

with ui.page_guard():
    url, first, last = ui.require_data()
    served = ui.versions(url, first, last + dt.timedelta(days=1))
    if len(served) < 2:
        st.info("Segment effects compare a candidate with a baseline: only one version served.")
        st.stop()
    candidate = ui.url_select("Candidate", served[::-1], key="candidate")
    baseline = ui.url_select("Baseline", [v for v in served if v != candidate], key="baseline")
    at = ui.url_date("Boundary", key="at", default=ui.default_boundary(url, first, last, candidate),
                     low=first + dt.timedelta(days=1), high=last)  # fmt: skip
    window = ui.url_select("Days on each side", [7, 14, 21, 28], key="window", default=7)
    metrics = ui.url_multiselect(
        "Metrics", list(analysis.METRICS), key="metrics",
        default=["thumbs_down_rate", "retry_rate", "refusal_rate", "session_turns"],
    )  # fmt: skip
    columns = ui.url_multiselect("Segment columns", list(SEGMENTS), key="columns",
                                 default=list(SEGMENTS))  # fmt: skip
    if not metrics or not columns:
        st.info("Pick at least one metric and one segment column in the sidebar.")
        st.stop()
    span = dt.timedelta(days=window)
    if at - span < first or at + span > last + dt.timedelta(days=1):
        st.warning("The windows run past the data: move the boundary or use fewer days.")
        st.stop()

    found, effects = ui.segment_attribution(
        url, tuple(metrics), candidate, baseline, at, window, tuple(columns)
    )
    by_segment = effects.filter(pl.col("segment") != "all")
    st.markdown(
        f"**{candidate}** against **{baseline}**, the {window} days before {at:%Y-%m-%d} vs "
        f"the {window} days from it. Each cell is the model's effect at full exposure in that "
        "segment, relative to the segment's level without the candidate; red is worse, blue "
        "better, `*` marks a Benjamini-Hochberg-adjusted q below 0.05 across all the cells."
    )
    if by_segment.filter(pl.col("relative").is_finite()).height:
        st.altair_chart(charts.segment_heatmap(by_segment), width="stretch")
    regressed = by_segment.filter(pl.col("regressed")).sort("q_value")
    if regressed.height:
        st.error(f"{regressed.height} segment(s) regressed significantly (BH q < 0.05).")
    else:
        st.success("No segment regressed significantly (BH q < 0.05).")
    shown = ["metric", "segment", "value", "relative", "relative_low", "relative_high",
             "p_value", "q_value", "regressed", "note"]  # fmt: skip
    ui.table(
        by_segment.sort("q_value", nulls_last=True).select(shown),
        percent=("relative", "relative_low", "relative_high"),
    )

    st.subheader("Drill down")
    pairs = sorted({f"{r['segment']}={r['value']}" for r in by_segment.iter_rows(named=True)})
    metric = ui.url_select("Drill-down metric", metrics, key="metric")
    where = ui.url_select("Drill-down segment", pairs, key="where")
    column, value = where.split("=", 1)
    (result,) = [r for m, c, v, r in found.results if (m, c, v) == (metric, column, value)]
    if isinstance(result, analysis.Waterfall):
        st.altair_chart(charts.waterfall_chart(result), width="stretch")
        st.markdown(result.summary("markdown"))
    elif isinstance(result, analysis.RetentionComparison):
        st.markdown(result.summary("markdown"))
    else:
        st.info(f"No estimate for {metric} in {where}: {result}.")
