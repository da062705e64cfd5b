"""Attribution: how much of a metric's change across a boundary is the model, and how much is
seasonality, a shift in who the users are, annotated product changes, or unexplained."""

import datetime as dt

import polars as pl
import streamlit as st

import analysis
from app import charts, ui

st.title("Attribution")

with ui.page_guard():
    url, first, last = ui.require_data()
    metric = ui.url_select("Metric", list(analysis.METRICS), key="metric",
                           default="thumbs_down_rate")  # fmt: skip
    served = ui.versions(url, first, last + dt.timedelta(days=1))
    if len(served) < 2:
        st.info(
            f"Only {', '.join(served) or 'no version'} served: attribution compares a candidate "
            "model version with a baseline, so it needs two."
        )
        st.stop()
    candidate = ui.url_select("Candidate", served[::-1], key="candidate")
    baseline = ui.url_select("Baseline", [v for v in served if v != candidate], key="baseline")
    at = ui.url_date(
        "Boundary", key="at", default=ui.default_boundary(url, first, last, candidate),
        low=first + dt.timedelta(days=1), high=last,
        help="The change is measured from the window before this day to the window after it.",
    )  # fmt: skip
    window = ui.url_select("Days on each side", [7, 14, 21, 28], key="window", default=7)
    m = analysis.get_metric(metric)
    designs = ["retention"] if m.unit is analysis.Unit.USER else ["switchover", "population"]
    design = ui.url_select(
        "Design", designs, key="design",
        help="switchover: the waterfall (seasonality, population shift, model, annotated "
        "changes, unexplained). population: the change split into segment mix and "
        "within-segment rates.",
    )  # fmt: skip
    span = dt.timedelta(days=window)
    if at - span < first or at + span > last + dt.timedelta(days=1):
        st.warning(
            f"The windows {at - span:%Y-%m-%d}..{at + span - dt.timedelta(days=1):%Y-%m-%d} run "
            f"past the data ({first:%Y-%m-%d}..{last:%Y-%m-%d}): move the boundary or use fewer "
            "days on each side."
        )
        st.stop()

    found = ui.attribution(url, metric, candidate, baseline, at, window, design)
    result = found.result
    st.caption(f"**{metric}**: {m.description}")
    if isinstance(result, analysis.Waterfall):
        w = result
        cols = st.columns(4)
        cols[0].metric("Before", f"{w.observed_before:.4g}", help=f"{at - span}..{at}")
        cols[1].metric(
            "After", f"{w.observed_after:.4g}", f"{w.observed_change:+.4g}",
            delta_color="inverse" if m.better.value == "lower" else "normal",
        )  # fmt: skip
        e = w.model_effect
        cols[2].metric(
            "Model effect at full exposure", f"{e.value:+.4g}",
            help=f"{w.confidence:.0%} interval {e.ci_low:+.4g} to {e.ci_high:+.4g}",
        )  # fmt: skip
        cols[3].metric(
            "Candidate's share", f"{w.candidate_share[0]:.0%} → {w.candidate_share[1]:.0%}"
        )
        parts = {p.term: p for p in w.parts}
        words = ", ".join(
            f"{name} {p.value:+.3g}"
            + ("" if p.ci_low != p.ci_low else f" ({p.ci_low:+.3g} to {p.ci_high:+.3g})")
            for name, p in parts.items()
        )
        st.markdown(
            f"From {w.observed_before:.4g} to {w.observed_after:.4g} (a change of "
            f"{w.observed_change:+.4g}): {words}. Intervals are {w.confidence:.0%}; "
            "unexplained is what the fit does not account for."
        )
        st.altair_chart(charts.waterfall_chart(w), width="stretch")
        st.altair_chart(
            charts.counterfactual_chart(w, annotations=ui.notes(url, at - span, at + span)),
            width="stretch",
        )
        st.caption(
            f"Fitted on {w.n_cells:,} hourly cells over {w.n_days} days (hour x model version x "
            "segment)."
        )
    st.subheader("Decomposition")
    ui.table(result.to_frame())
    by_segment = getattr(result, "by_segment", None)
    if isinstance(by_segment, pl.DataFrame) and by_segment.height:
        ui.table(by_segment)
    st.subheader("Diagnostics")
    for warning in result.warnings:
        st.warning(warning)
    if found.verbosity is not None:
        st.markdown(found.verbosity.summary("markdown"))
    if not result.warnings:
        st.success("The method raised no warning on this data.")
    with st.expander("What the method assumes"):
        st.markdown("\n".join(f"- {a}" for a in result.assumptions))
