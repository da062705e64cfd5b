"""Shadow: replays of sampled production traffic on a candidate model before it ships: win
rates (raw and length-controlled), refusal and latency differences, and the answers side by
side with a diff, by segment."""

import difflib
import re

import polars as pl
import streamlit as st

import shadow
from app import charts, ui
from app.review import shadow_headline, simulated_run

st.title("Shadow runs")


def _sentences(text: str) -> list[str]:
    """One line per sentence, so the diff shows which sentences changed."""
    return [s for s in re.split(r"(?<=[.!?])\s+|\n", text) if s]


with ui.page_guard():
    url = ui.warehouse_url()
    ui.connection()
    runs = ui.shadow_runs(url)
    if not runs.height:
        st.info(
            "No shadow run is stored. `telltale shadow run --candidate-url URL --since DAY "
            "--until DAY --model-version VERSION` replays sampled production traffic on a "
            "candidate model; its results appear here."
        )
        st.stop()
    ui.table(runs)
    run_id = ui.url_select("Run", runs["run_id"].to_list(), key="run")
    run = runs.filter(pl.col("run_id") == run_id).row(0, named=True)
    if simulated_run(ui.shadow_settings(url, run_id), run["candidate_model"]):
        st.info(
            f"Run {run_id} is **simulated**: its answers were made up from production's to "
            "exercise the pipeline, not produced by a model."
        )
    results = ui.shadow_results(url, run_id)
    if not results.height:
        st.info(f"Run {run_id} ({run['status']}) has no results stored yet.")
        st.stop()
    by = ui.url_select("Break down by", ["none", *shadow.SEGMENTS], key="by")
    value = "all"
    if by != "none":
        values = sorted(v for v in results[by].unique().to_list() if v is not None)
        value = ui.url_select(f"Only this {by}", ["all", *values], key="value")
    comparison = ui.shadow_comparison(
        url, run_id, None if by == "none" else by, None if value == "all" else value
    )
    st.markdown(
        f"**{comparison.candidate_model}** vs production "
        f"({comparison.baseline_model or 'no baseline replay'}): {comparison.n_samples} samples"
        + ("" if value == "all" else f" with {by} = {value}")
        + f", {comparison.confidence:.0%} bootstrap intervals."
    )
    headline = shadow_headline(comparison)
    cards = headline.filter(
        pl.col("figure").is_in(["judge win rate", "judge win rate, length-controlled",
                                "refusal rate", "latency ms p50", "latency ms p95"])
    )  # fmt: skip
    for col, r in zip(st.columns(max(1, cards.height)), cards.iter_rows(named=True), strict=False):
        low, high = r["ci_low"], r["ci_high"]
        col.metric(
            r["figure"],
            "-" if r["value"] is None or r["value"] != r["value"] else f"{r['value']:.3g}",
            help=f"interval {low:.3g} to {high:.3g}, versus {r['versus']}; "
            f"{'told from noise' if r['real'] else 'not told from noise'}",
        )
    ui.table(headline)
    if comparison.judge is not None:
        rows = [("all samples", comparison.judge)] + [
            (f"{by}={seg}", j) for seg, j in comparison.judge_by_segment.items()
        ]
        rates = pl.DataFrame(
            [
                {"label": f"{label}: {kind}", "value": est.value, "ci_low": est.ci_low,
                 "ci_high": est.ci_high}
                for label, j in rows
                for kind, est in (("raw", j.win_rate), ("length-controlled", j.lc_win_rate))
            ]
        )  # fmt: skip
        st.altair_chart(charts.win_rate_chart(rates), width="stretch")
    for warning in comparison.warnings:
        st.warning(warning)
    with st.expander("Every figure, with the noise floor"):
        ui.table(comparison.figures)

    st.subheader("Side by side")
    candidates = results.filter(pl.col("arm") == "candidate")
    if value != "all":
        candidates = candidates.filter(pl.col(by) == value)
    labels = {
        r["sample_id"]: f"{r['sample_id'][:13]} ({r['intent']}, {r['locale']}, {r['status']})"
        for r in candidates.iter_rows(named=True)
    }
    if not labels:
        st.info("No candidate answer in this selection.")
        st.stop()
    sample = ui.url_select("Sample", list(labels), key="sample", format_func=labels.get)
    arms = {
        r["arm"]: r for r in results.filter(pl.col("sample_id") == sample).iter_rows(named=True)
    }
    production = arms["candidate"]["production_output"]
    shown = [("candidate", arms["candidate"]["output"]), ("production (recorded)", production)]
    if "baseline_replay" in arms:
        shown.append(("baseline replay", arms["baseline_replay"]["output"]))
    for col, (label, text) in zip(st.columns(len(shown)), shown, strict=True):
        col.markdown(f"**{label}**")
        col.text(text if text is not None else "(none)")
    diff = difflib.unified_diff(
        _sentences(production or ""), _sentences(arms["candidate"]["output"] or ""),
        "production", "candidate", lineterm="",
    )  # fmt: skip
    st.code("\n".join(diff) or "(identical)", language="diff")
