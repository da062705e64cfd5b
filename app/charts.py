"""The charts the app and the weekly report share (Vega-Lite through altair): a metric over time
with its expectation band and annotations, the waterfall, the segment heatmap, the gates and the
judge's win rates. The app draws them in the browser; the report embeds them as static SVG
(:func:`to_svg`), so a report opens without a network.
"""

from __future__ import annotations

import math

import altair as alt
import polars as pl

import analysis

__all__ = [
    "counterfactual_chart",
    "gates_chart",
    "segment_heatmap",
    "series_chart",
    "to_svg",
    "waterfall_chart",
    "win_rate_chart",
]

_WIDTH = 640
_WORSE, _BETTER = "#c0392b", "#2471a3"


def _naive(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """Datetimes as naive UTC: Vega-Lite would otherwise shift them to the viewer's zone."""
    return frame.with_columns(
        pl.col(c).dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        if isinstance(frame.schema[c], pl.Datetime) and frame.schema[c].time_zone  # type: ignore[union-attr]
        else pl.col(c)
        for c in columns
    )


def series_chart(
    observed: pl.DataFrame,
    *,
    title: str,
    band: pl.DataFrame | None = None,
    annotations: pl.DataFrame | None = None,
    y_title: str = "",
) -> alt.LayerChart:
    """A metric over time: one line per ``series`` (columns ``time``, ``series``, ``value``),
    the expectation ``band`` behind them (``time``, ``expected``, ``lower``, ``upper``) and one
    labelled rule per annotation (``title``, ``kind``, ``starts_at``)."""
    x = alt.X("time:T", title="time (UTC)")
    layers: list[alt.Chart] = []
    if band is not None and band.height:
        b = _naive(band, "time")
        layers.append(
            alt.Chart(b)
            .mark_area(opacity=0.25, color="#999999")
            .encode(
                x=x, y=alt.Y("lower:Q", title=y_title, scale=alt.Scale(zero=False)), y2="upper:Q"
            )
        )
        layers.append(
            alt.Chart(b)
            .mark_line(strokeDash=[4, 3], color="#555555")
            .encode(
                x=x, y="expected:Q", tooltip=["time:T", alt.Tooltip("expected:Q", format=".4g")]
            )
        )
    layers.append(
        alt.Chart(_naive(observed, "time"))
        .mark_line(point=observed.height < 400)
        .encode(
            x=x,
            y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
            tooltip=["time:T", "series:N", alt.Tooltip("value:Q", format=".4g")],
        )
    )
    if annotations is not None and annotations.height:
        first = observed["time"].min() if observed.height else None
        notes = _naive(annotations.select("title", "kind", "starts_at"), "starts_at")
        if first is not None:
            notes = notes.filter(pl.col("starts_at") >= _naive(observed, "time")["time"].min())
        base = alt.Chart(notes).encode(x="starts_at:T")
        layers.append(
            base.mark_rule(strokeDash=[2, 2], color="#8e44ad").encode(tooltip=["title", "kind"])
        )
        layers.append(
            base.mark_text(align="left", dx=3, dy=-4, angle=0, fontSize=10, color="#8e44ad").encode(
                y=alt.value(8), text="title:N"
            )
        )
    return alt.layer(*layers).properties(title=title, width=_WIDTH, height=260)


def counterfactual_chart(
    w: analysis.Waterfall, *, annotations: pl.DataFrame | None = None
) -> alt.LayerChart:
    """The waterfall's hours: the observed metric (all versions) against what was expected had
    the baseline kept serving, with its band."""
    observed = w.counterfactual.select(
        pl.col("hour").alias("time"), pl.lit("observed").alias("series"),
        pl.col("observed").alias("value"),
    )  # fmt: skip
    band = w.counterfactual.select(
        pl.col("hour").alias("time"), pl.col("expected_without_model").alias("expected"),
        "lower", "upper",
    )  # fmt: skip
    return series_chart(
        observed, band=band, annotations=annotations, y_title=w.metric,
        title=f"{w.metric} by hour; band: expected had {w.baseline} kept serving",
    )  # fmt: skip


def waterfall_chart(w: analysis.Waterfall) -> alt.LayerChart:
    """The observed change from the window before to the window after as a waterfall: each
    part's bar starts where the previous ended; the whiskers are the parts' intervals."""
    rows = [{"step": "before", "start": 0.0, "end": w.observed_before, "low": None, "high": None}]
    level = w.observed_before
    for e in w.parts:
        rows.append({"step": e.term, "start": level, "end": level + e.value,
                     "low": None if math.isnan(e.ci_low) else level + e.ci_low,
                     "high": None if math.isnan(e.ci_high) else level + e.ci_high})  # fmt: skip
        level += e.value
    rows.append({"step": "after", "start": 0.0, "end": w.observed_after, "low": None, "high": None})
    frame = pl.DataFrame(
        rows, schema_overrides={"low": pl.Float64, "high": pl.Float64}
    ).with_row_index("order")
    frame = frame.with_columns(
        kind=pl.when(pl.col("step").is_in(["before", "after"]))
        .then(pl.lit("observed"))
        .when(pl.col("end") > pl.col("start"))
        .then(pl.lit("up"))
        .otherwise(pl.lit("down"))
    )
    parts = frame.filter(pl.col("kind") != "observed")
    values = [
        *frame["end"],
        *parts["start"],
        *parts["low"].drop_nulls(),
        *parts["high"].drop_nulls(),
    ]
    low, high = min(values), max(values)
    pad = (high - low) * 0.15 or abs(high) * 0.1 or 1.0
    # the observed levels are drawn from the bottom of the zoomed axis, not from zero, which
    # would flatten the parts
    floor = max(0.0, low - pad) if low >= 0 else low - pad
    frame = frame.with_columns(
        start=pl.when(pl.col("kind") == "observed").then(floor).otherwise(pl.col("start"))
    )
    x = alt.X("step:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelAngle=-30))
    scale = alt.Scale(domain=[floor, high + pad], clamp=True)
    bars = (
        alt.Chart(frame)
        .mark_bar(size=28)
        .encode(
            x=x,
            y=alt.Y("start:Q", title=w.metric, scale=scale),
            y2="end:Q",
            color=alt.Color(
                "kind:N",
                scale=alt.Scale(
                    domain=["observed", "up", "down"], range=["#7f8c8d", "#e67e22", "#16a085"]
                ),
                legend=None,
            ),
            tooltip=[
                "step",
                alt.Tooltip("start:Q", format=".4g"),
                alt.Tooltip("end:Q", format=".4g"),
            ],
        )
    )
    whiskers = (
        alt.Chart(frame.filter(pl.col("low").is_not_null()))
        .mark_rule(strokeWidth=2)
        .encode(x=x, y=alt.Y("low:Q", scale=scale), y2="high:Q")
    )
    return alt.layer(bars, whiskers).properties(
        title=f"{w.metric}: what moved it (whiskers: {w.confidence:.0%} intervals)",
        width=_WIDTH,
        height=280,
    )


def segment_heatmap(effects: pl.DataFrame, *, alpha: float = 0.05) -> alt.LayerChart:
    """Relative effect of the candidate per metric (columns) and segment (rows), coloured by how
    much worse (red) or better (blue) it is; ``*`` marks a BH-adjusted q below ``alpha``.
    ``effects`` as :func:`app.review.segment_effects` returns it."""
    directions = {m.name: m.better for m in analysis.METRICS.values()}
    frame = effects.filter(pl.col("relative").is_finite()).with_columns(
        pl.format("{}={}", "segment", "value").alias("where"),
        (
            pl.col("relative")
            * pl.col("metric").replace_strict(
                {
                    k: 1.0 if v is analysis.Direction.LOWER_IS_BETTER else -1.0
                    for k, v in directions.items()
                },
                default=1.0,
            )
        ).alias("worsening"),
        pl.when(pl.col("q_value") < alpha).then(pl.lit("*")).otherwise(pl.lit("")).alias("mark"),
    )
    limit = (
        max(0.05, float(frame["worsening"].abs().quantile(0.95) or 0.05)) if frame.height else 0.05
    )
    base = alt.Chart(frame).encode(
        x=alt.X("metric:N", title=None, axis=alt.Axis(labelAngle=-30)),
        y=alt.Y("where:N", title=None, sort=None),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "worsening:Q",
            title="worse →",
            scale=alt.Scale(scheme="redblue", reverse=True, domain=[-limit, limit], clamp=True),
        ),
        tooltip=[
            "metric", "where",
            alt.Tooltip("relative:Q", format="+.1%", title="relative effect"),
            alt.Tooltip("relative_low:Q", format="+.1%", title="low"),
            alt.Tooltip("relative_high:Q", format="+.1%", title="high"),
            alt.Tooltip("q_value:Q", format=".3g", title="q (BH)"),
        ],
    )  # fmt: skip
    text = base.mark_text(fontSize=14, fontWeight="bold").encode(text="mark:N")
    return alt.layer(cells, text).properties(
        title=f"Candidate's effect by segment (* BH q < {alpha})",
        width=max(240, 70 * (frame["metric"].n_unique() if frame.height else 1)),
        height=alt.Step(18),
    )


def gates_chart(gates: pl.DataFrame) -> alt.LayerChart:
    """Each gate's relative worsening with its interval against its threshold (a forest plot);
    ``gates`` as :meth:`app.review.ReleaseReview.to_frame` returns it."""
    sign = pl.when(pl.col("better") == "lower").then(1.0).otherwise(-1.0)
    frame = gates.filter(pl.col("relative").is_finite()).with_columns(
        (sign * pl.col("relative")).alias("worsening"),
        pl.min_horizontal(sign * pl.col("relative_low"), sign * pl.col("relative_high")).alias(
            "low"
        ),
        pl.max_horizontal(sign * pl.col("relative_low"), sign * pl.col("relative_high")).alias(
            "high"
        ),
    )
    y = alt.Y("metric:N", title=None, sort=None)
    colour = alt.Color(
        "outcome:N",
        scale=alt.Scale(
            domain=["pass", "fail", "inconclusive"], range=["#27ae60", _WORSE, "#f39c12"]
        ),
    )
    whiskers = alt.Chart(frame).mark_rule(strokeWidth=2).encode(
        y=y, x=alt.X("low:Q", title="relative worsening (→ worse)", axis=alt.Axis(format="+%")),
        x2="high:Q", color=colour,
    )  # fmt: skip
    points = alt.Chart(frame).mark_point(filled=True, size=70).encode(
        y=y, x="worsening:Q", color=colour,
        tooltip=["metric", "outcome", alt.Tooltip("worsening:Q", format="+.1%"),
                 alt.Tooltip("threshold:Q", format=".0%")],
    )  # fmt: skip
    limits = (
        alt.Chart(frame).mark_tick(color="black", thickness=2, size=18).encode(y=y, x="threshold:Q")
    )
    zero = alt.Chart(pl.DataFrame({"x": [0.0]})).mark_rule(color="#999999").encode(x="x:Q")
    return alt.layer(zero, whiskers, points, limits).properties(
        title="Gates: worsening with its interval; black tick = threshold",
        width=_WIDTH,
        height=alt.Step(28),
    )


def win_rate_chart(rates: pl.DataFrame) -> alt.LayerChart:
    """Win rates with their intervals against 0.5 (a tie): ``rates`` has ``label``, ``value``,
    ``ci_low``, ``ci_high``."""
    y = alt.Y("label:N", title=None, sort=None)
    scale = alt.Scale(domain=[0, 1])
    whiskers = (
        alt.Chart(rates)
        .mark_rule(strokeWidth=2)
        .encode(y=y, x=alt.X("ci_low:Q", scale=scale, title="candidate's win rate"), x2="ci_high:Q")
    )
    points = alt.Chart(rates).mark_point(filled=True, size=70).encode(
        y=y, x=alt.X("value:Q", scale=scale),
        tooltip=["label", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")],
    )  # fmt: skip
    tie = alt.Chart(pl.DataFrame({"x": [0.5]})).mark_rule(strokeDash=[4, 3]).encode(x="x:Q")
    return alt.layer(tie, whiskers, points).properties(
        title="Judge: candidate vs production (0.5 = a tie)",
        width=_WIDTH,
        height=alt.Step(26),
    )


def to_svg(chart: alt.TopLevelMixin) -> str:
    """The chart as a standalone SVG document (rendered offline by vl-convert)."""
    import vl_convert  # imported here: it starts a JavaScript runtime, the app never needs it

    return vl_convert.vegalite_to_svg(chart.to_dict())
