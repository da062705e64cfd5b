"""Overview: each metric by model version over time, with the band it was expected to stay in
without the newest version, and the annotated product changes on the chart."""

import datetime as dt

import polars as pl
import streamlit as st

import analysis
from app import charts, ui

st.title("Overview")

with ui.page_guard():
    url, first, last = ui.require_data()
    hourly = [m.name for m in analysis.METRICS.values() if m.unit is not analysis.Unit.USER]
    metric = ui.url_select("Metric", hourly, key="metric", default="thumbs_down_rate")
    start = ui.url_date("From", key="from", default=max(first, last - dt.timedelta(days=27)),
                        low=first, high=last)  # fmt: skip
    end = ui.url_date("To (inclusive)", key="to", default=last, low=start, high=last)
    until = end + dt.timedelta(days=1)
    pairs = ui.segments(url, start, until)
    segment = ui.url_select(
        "Segment", ["all", *(f"{c}={v}" for c, v in pairs)], key="segment", default="all"
    )
    seg = None if segment == "all" else tuple(segment.split("=", 1))
    grain = ui.url_select("Granularity", ["hour", "day"], key="grain",
                          default="hour" if (until - start).days <= 21 else "day")  # fmt: skip
    served = ui.versions(url, start, until)
    if not served:
        st.info("No model version served in this range: widen it in the sidebar.")
        st.stop()
    baseline, candidate = served[0], served[-1]
    at = ui.url_date(
        "Band boundary", key="at", default=ui.default_boundary(url, start, until, candidate),
        low=start, high=end,
        help="The band is fitted on the whole range; this date splits it into before and after "
        "for the fit's parts (the Attribution page shows them).",
    )  # fmt: skip

    m = analysis.get_metric(metric)
    st.caption(f"**{metric}**: {m.description} Owner: {m.owner}; {m.better.value} is better.")
    data = ui.series(url, metric, start, until, seg, grain)
    if not data.height:
        st.info(f"No {m.denominator} in this range and segment: widen the range or pick another.")
        st.stop()
    band = None
    try:
        band, _ = ui.band(url, metric, start, until, seg, grain, candidate, baseline, at)
    except analysis.InsufficientDataError as e:
        st.info(f"No expectation band: {e}.")
    title = f"{metric} by {grain}, {segment}"
    if band is not None:
        title += f"; band: expected had {baseline} kept serving (seasonality and annotations)"
    st.altair_chart(
        charts.series_chart(
            data.filter(data["value"].is_not_null()), band=band, y_title=metric, title=title,
            annotations=ui.notes(url, start, until),
        ),
        width="stretch",
    )  # fmt: skip
    totals = data.group_by("series").agg(
        (pl.col("value").fill_null(0) * pl.col("denominator")).sum().alias("num"),
        pl.col("denominator").sum(),
    )
    cols = st.columns(max(1, totals.height))
    for col, row in zip(cols, totals.sort("series").iter_rows(named=True), strict=False):
        value = row["num"] / row["denominator"] if row["denominator"] else float("nan")
        col.metric(row["series"], f"{value:.4g}", help=f"{row['denominator']:,} {m.denominator}")

    st.subheader("Every metric by day")
    others = [name for name in hourly if name != metric]
    grid = st.columns(2)
    for i, name in enumerate(others):
        scoped = seg
        if seg and seg[0] == "intent" and analysis.get_metric(name).unit is analysis.Unit.SESSION:
            scoped = None  # sessions carry no intent: their charts show all traffic
        daily = ui.series(url, name, start, until, scoped, "day")
        grid[i % 2].altair_chart(
            charts.series_chart(daily.filter(daily["value"].is_not_null()), y_title=name,
                                title=name).properties(width=300, height=180),
            width="stretch",
        )  # fmt: skip
