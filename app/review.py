"""The release review: does a candidate model version pass its gates, where did it regress, and
what did its shadow runs show? One frozen object for the app's release-review page and the
weekly report.

A **gate** is one metric's release rule: its owner, and the relative change in the bad direction
(``threshold``) that fails the release. Gates come from a TOML file, defaulting to the metrics
registry's owner and threshold::

    # gates.toml: metrics left out keep the registry's owner and threshold
    [gates.thumbs_down_rate]
    owner = "quality-team"
    threshold = 0.03          # a 3% relative worsening fails
    [gates.retention_d7]
    skip = true               # not gated this release

The observed effect is the candidate's effect at full exposure from the waterfall across the
boundary between the window before and the window under review (seasonality, population shift
and annotated changes taken out; see ``analysis.decompose_change``), relative to the metric's
level without the candidate. For ``retention_d7`` it is the relative difference in 7-day
retention by first-exposed version. A gate:

- **passes** when the upper end of the interval of the worsening is below the threshold (the
  worst plausible change is within the rule);
- **fails** when the worsening is significant (its interval lies above zero) and its estimate
  exceeds the threshold;
- is **inconclusive** otherwise: the data cannot tell yet (or there is no estimate).

Segments that regressed: every metric in every segment value, the model effect's p-values
adjusted by Benjamini-Hochberg across all of them, flagged when the adjusted value is below
``alpha`` and the effect goes the bad way.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl
from scipy import stats
from statsmodels.stats.multitest import multipletests

import analysis
import shadow
import warehouse
from app.attribution import SEGMENTS, SegmentAttributions, attribute_segments

__all__ = [
    "Gate",
    "GateError",
    "GateOutcome",
    "ReleaseReview",
    "ShadowRunReview",
    "default_gates",
    "judge_gate",
    "load_gates",
    "parse_gates",
    "review_release",
    "segment_effects",
    "segment_values",
    "shadow_headline",
    "simulated_run",
]

Outcome = Literal["pass", "fail", "inconclusive"]

_Z95 = float(stats.norm.ppf(0.975))


class GateError(ValueError):
    """A gates file that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Gate:
    """One metric's release rule: who answers for it, and the relative worsening that fails."""

    metric: str
    owner: str
    threshold: float


def default_gates() -> tuple[Gate, ...]:
    """One gate per registered metric, with the registry's owner and threshold."""
    return tuple(Gate(m.name, m.owner, m.threshold) for m in analysis.METRICS.values())


def load_gates(path: Path | str | None) -> tuple[Gate, ...]:
    """The gates of a TOML file (None: :func:`default_gates`); see :func:`parse_gates`."""
    if path is None:
        return default_gates()
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise GateError(f"cannot read the gates file {path}: {e.strerror}") from None
    return parse_gates(text)


def parse_gates(text: str) -> tuple[Gate, ...]:
    """The gates a TOML text sets (module doc): metrics it leaves out keep the registry's owner
    and threshold; a metric with ``skip = true`` is not gated."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise GateError(f"the gates file is not valid TOML: {e}") from None
    extra = set(data) - {"gates"}
    if extra:
        raise GateError(
            f"unknown top-level keys {sorted(extra)}: put each metric under [gates.NAME]"
        )
    table = data.get("gates", {})
    unknown = sorted(set(table) - set(analysis.METRICS))
    if unknown:
        raise GateError(
            f"unknown metrics {unknown} in the gates file: choose from "
            f"{', '.join(sorted(analysis.METRICS))}"
        )
    gates = []
    for default in default_gates():
        spec = table.get(default.metric, {})
        bad = set(spec) - {"owner", "threshold", "skip"}
        if bad:
            raise GateError(f"[gates.{default.metric}]: unknown keys {sorted(bad)}")
        if spec.get("skip", False):
            continue
        threshold = spec.get("threshold", default.threshold)
        if not isinstance(threshold, int | float) or not 0 <= threshold < 10:
            raise GateError(
                f"[gates.{default.metric}] threshold must be a relative change such as 0.05 "
                f"(5%), not {threshold!r}"
            )
        gates.append(Gate(default.metric, str(spec.get("owner", default.owner)), float(threshold)))
    return tuple(gates)


def judge_gate(worsening: float, low: float, high: float, threshold: float) -> Outcome:
    """The gate's outcome from the relative worsening (positive: the bad way) and its interval
    (module doc)."""
    if any(math.isnan(v) for v in (worsening, low, high)):
        return "inconclusive"
    if high < threshold:
        return "pass"
    if low > 0 and worsening > threshold:
        return "fail"
    return "inconclusive"


@dataclass(frozen=True)
class GateOutcome:
    """A gate applied to the candidate: the observed effect and the outcome."""

    gate: Gate
    better: str
    """``lower`` or ``higher``: which way the metric improves."""
    level: float
    """The metric without the candidate (the base of the relative effect)."""
    effect: float
    """Absolute effect at full exposure (rate units), with its interval."""
    ci_low: float
    ci_high: float
    relative: float
    """``effect / level``, with its interval."""
    relative_low: float
    relative_high: float
    p_value: float
    outcome: Outcome
    reason: str


@dataclass(frozen=True)
class ShadowRunReview:
    """One shadow run of the candidate, compared with production (None when it could not be)."""

    run_id: str
    status: str
    created_at: dt.datetime
    simulated: bool
    """The run's settings say its answers were simulated, not produced by a model."""
    comparison: shadow.ShadowComparison | None
    note: str = ""


@dataclass(frozen=True)
class ReleaseReview:
    """Everything the release review looks at, for one candidate against its baseline."""

    candidate: str
    baseline: str
    before: tuple[dt.datetime, dt.datetime]
    after: tuple[dt.datetime, dt.datetime]
    """The window under review; ``before`` is the same length just ahead of it."""
    gates_source: str
    gates: tuple[GateOutcome, ...]
    effects: pl.DataFrame
    """Every metric in all traffic and each segment value: ``metric``, ``segment``, ``value``,
    ``level``, ``effect``/``ci_low``/``ci_high``, ``relative``/``relative_low``/
    ``relative_high``, ``p_value``, ``worse``, ``q_value`` (BH over the segment rows),
    ``regressed``, ``note`` (why a pair has no estimate)."""
    waterfalls: Mapping[str, analysis.Waterfall]
    """All-traffic waterfall per metric that has one (the attribution of the change)."""
    shadow_runs: tuple[ShadowRunReview, ...]
    examples: pl.DataFrame
    """Redacted answers from the shadow runs worth reading, with why each was picked."""
    alpha: float
    warnings: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> Outcome:
        """``fail`` if any gate fails, ``pass`` if every gate passes, else ``inconclusive``."""
        outcomes = {g.outcome for g in self.gates}
        if "fail" in outcomes:
            return "fail"
        return "pass" if outcomes == {"pass"} else "inconclusive"

    @property
    def regressed(self) -> pl.DataFrame:
        """The segment rows flagged as regressed, worst first."""
        return self.effects.filter(pl.col("regressed")).sort("q_value", nulls_last=True)

    def to_frame(self) -> pl.DataFrame:
        """One row per gate: owner, threshold, the observed effect with its interval, outcome."""
        return pl.DataFrame(
            [
                {
                    "metric": g.gate.metric,
                    "owner": g.gate.owner,
                    "threshold": g.gate.threshold,
                    "better": g.better,
                    "level": g.level,
                    "effect": g.effect,
                    "ci_low": g.ci_low,
                    "ci_high": g.ci_high,
                    "relative": g.relative,
                    "relative_low": g.relative_low,
                    "relative_high": g.relative_high,
                    "p_value": g.p_value,
                    "outcome": g.outcome,
                    "reason": g.reason,
                }
                for g in self.gates
            ],
            schema_overrides={"p_value": pl.Float64, "level": pl.Float64},
        )

    def attribution_frame(self) -> pl.DataFrame:
        """Per metric, the observed change (all traffic) split into the waterfall's parts."""
        rows = []
        for metric, w in self.waterfalls.items():
            row: dict[str, Any] = {"metric": metric, "observed change": w.observed_change}
            notes = 0.0
            for part in w.parts:
                if part.term.startswith("annotation:"):
                    notes += part.value
                else:
                    row[part.term] = part.value
            row["annotated changes"] = notes
            rows.append(row)
        return pl.DataFrame(rows)

    def summary(self, fmt: str = "text") -> str:
        """The review as ``text``, ``markdown`` or ``html`` (tables only; the weekly report adds
        the charts)."""
        counts = {
            o: sum(g.outcome == o for g in self.gates) for o in ("pass", "fail", "inconclusive")
        }
        title = f"Release review: {self.candidate} vs {self.baseline}"
        lead = (
            f"{_window(self.after)} against {_window(self.before)}. Verdict: "
            f"{self.verdict.upper()} ({counts['pass']} pass, {counts['fail']} fail, "
            f"{counts['inconclusive']} inconclusive). Gates: {self.gates_source}."
        )
        blocks = [_heading(title, 2, fmt), _paragraph(lead, fmt)]
        blocks.append(_heading("Gates", 3, fmt))
        blocks.append(_table(_gate_rows(self.gates), fmt))
        attribution = self.attribution_frame()
        if attribution.height:
            blocks.append(_heading("Attribution of the change (all traffic)", 3, fmt))
            blocks.append(_table(_formatted(attribution), fmt))
        blocks.append(_heading(f"Segments that regressed (BH-adjusted, q < {self.alpha})", 3, fmt))
        regressed = self.regressed
        if regressed.height:
            blocks.append(_table(_regressed_rows(regressed), fmt))
        else:
            blocks.append(_paragraph("None: no segment's effect is significantly worse.", fmt))
        blocks.append(_heading("Shadow runs", 3, fmt))
        if not self.shadow_runs:
            blocks.append(_paragraph(f"No shadow run of {self.candidate} is stored.", fmt))
        for run in self.shadow_runs:
            label = " (simulated answers)" if run.simulated else ""
            blocks.append(
                _paragraph(f"Run {run.run_id}{label}, {run.status}. {run.note}".strip(), fmt)
            )
            if run.comparison is not None:
                blocks.append(_table(_formatted(shadow_headline(run.comparison)), fmt))
        if self.examples.height:
            blocks.append(_heading("Example answers (redacted)", 3, fmt))
            blocks.append(_examples(self.examples, fmt))
        if self.warnings:
            blocks.append(_heading("Warnings", 3, fmt))
            blocks.append(_bullets(self.warnings, fmt))
        return ("" if fmt == "html" else "\n\n").join(blocks)


def segment_effects(found: SegmentAttributions, *, alpha: float = 0.05) -> pl.DataFrame:
    """The candidate's effect on every metric in every segment of ``found``, relative to the
    metric's level without it, with BH-adjusted p-values across the segment rows and the
    ``regressed`` flag (see :attr:`ReleaseReview.effects`)."""
    rows = [_effect_row(metric, column, value, r) for metric, column, value, r in found.results]
    frame = pl.DataFrame(rows, schema=_EFFECT_SCHEMA, orient="row")
    testable = (pl.col("segment") != "all") & pl.col("p_value").is_finite()
    p = frame.filter(testable)["p_value"].to_numpy()
    q = multipletests(p, method="fdr_bh")[1] if len(p) else p
    return (
        frame.with_row_index("_row")
        .join(
            frame.with_row_index("_row")
            .filter(testable)
            .select("_row", pl.Series("q_value", q, dtype=pl.Float64)),
            on="_row",
            how="left",
        )
        .drop("_row")
        .with_columns(
            regressed=(pl.col("q_value") < alpha).fill_null(False)
            & pl.col("worse").fill_null(False)
        )
    )


_EFFECT_SCHEMA = {
    "metric": pl.String,
    "segment": pl.String,
    "value": pl.String,
    "level": pl.Float64,
    "effect": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "relative": pl.Float64,
    "relative_low": pl.Float64,
    "relative_high": pl.Float64,
    "p_value": pl.Float64,
    "worse": pl.Boolean,
    "note": pl.String,
}


def _effect_row(metric: str, column: str, value: str, r: Any) -> tuple:
    """One row of :data:`_EFFECT_SCHEMA` from an attribution result (or the reason there is
    none)."""
    nan = math.nan
    m = analysis.get_metric(metric)
    if isinstance(r, analysis.Waterfall):
        e = r.model_effect
        # the after window's rate with the candidate's share of it taken out
        level = r.observed_after - r.candidate_share[1] * e.value
        est, low, high, p = e.value, e.ci_low, e.ci_high, e.p_value
    elif isinstance(r, analysis.RetentionComparison):
        control, treated = r.survival["control"], r.survival["treated"]
        level = control.value
        est = treated.value - control.value
        se = math.hypot(treated.se, control.se)
        low, high = est - _Z95 * se, est + _Z95 * se
        p = float(2 * stats.norm.sf(abs(est / se))) if se > 0 else nan
    else:
        return (metric, column, value, nan, nan, nan, nan, nan, nan, nan, nan, None, str(r))
    if level > 0:
        rel, rel_low, rel_high = est / level, low / level, high / level
    else:
        rel = rel_low = rel_high = nan
    worse = None if math.isnan(rel) else m.is_worse(rel)
    return (metric, column, value, level, est, low, high, rel, rel_low, rel_high, p, worse, None)


def _gate_outcome(gate: Gate, effects: pl.DataFrame) -> GateOutcome:
    m = analysis.get_metric(gate.metric)
    found = effects.filter((pl.col("metric") == gate.metric) & (pl.col("segment") == "all"))
    nan = math.nan
    if not found.height or found["relative"][0] is None or math.isnan(found["relative"][0]):
        note = found["note"][0] if found.height and found["note"][0] else "no estimate"
        return GateOutcome(gate, m.better.value, nan, nan, nan, nan, nan, nan, nan, nan,
                           "inconclusive", note)  # fmt: skip
    r = found.row(0, named=True)
    sign = 1.0 if m.better is analysis.Direction.LOWER_IS_BETTER else -1.0
    worsening = sign * r["relative"]
    bounds = sorted((sign * r["relative_low"], sign * r["relative_high"]))
    outcome = judge_gate(worsening, bounds[0], bounds[1], gate.threshold)
    span = f"{worsening:+.1%} [{bounds[0]:+.1%}, {bounds[1]:+.1%}]"
    reason = {
        "pass": f"worsening {span} stays below the {gate.threshold:.0%} threshold",
        "fail": f"significantly worse: {span}, beyond the {gate.threshold:.0%} threshold",
        "inconclusive": f"worsening {span}: the interval reaches the {gate.threshold:.0%} "
        "threshold without showing a significant worsening beyond it; more data will tell",
    }[outcome]
    return GateOutcome(
        gate, m.better.value, r["level"], r["effect"], r["ci_low"], r["ci_high"], r["relative"],
        r["relative_low"], r["relative_high"], r["p_value"], outcome, reason,
    )  # fmt: skip


def segment_values(
    wh: warehouse.Warehouse,
    *,
    since: dt.datetime,
    until: dt.datetime,
    columns: Sequence[str] = SEGMENTS,
) -> list[tuple[str, str]]:
    """Every ``(column, value)`` of the segment ``columns`` seen in the response rollup in
    ``[since, until)``."""
    out = []
    for column in columns:
        frame = warehouse.hourly_rollup(
            wh, since=since, until=until, group_by=[column], latency=False
        )
        out += [(column, v) for v in sorted(frame[column].unique().to_list()) if v]
    return out


def shadow_headline(comparison: shadow.ShadowComparison) -> pl.DataFrame:
    """The figures a release review reads first, all samples: judge win rates (raw and
    length-controlled), then the refusal, length, error, latency and cost differences, each with
    its interval and whether it is told from noise."""
    rows: list[dict[str, Any]] = []
    if comparison.judge is not None:
        for name, est in (
            ("judge win rate", comparison.judge.win_rate),
            ("judge win rate, length-controlled", comparison.judge.lc_win_rate),
        ):
            real = not math.isnan(est.ci_low) and not est.covers(0.5)
            rows.append(
                {"figure": name, "value": est.value, "ci_low": est.ci_low,
                 "ci_high": est.ci_high, "versus": "0.5 (a tie)", "real": real}
            )  # fmt: skip
    wanted = ("refusal_rate", "length_ratio_median", "error_rate", "latency_ms_p50",
              "latency_ms_p95", "ttft_ms_p50", "cost_per_1k_usd")  # fmt: skip
    figures = comparison.figures.filter(
        (pl.col("segment") == "all") & pl.col("figure").is_in(wanted)
    )
    for r in figures.iter_rows(named=True):
        if r["figure"] == "length_ratio_median":
            value, low, high = r["candidate"], r["candidate_ci_low"], r["candidate_ci_high"]
            versus = "1 (same length)"
        else:
            value, low, high = r["difference"], r["difference_ci_low"], r["difference_ci_high"]
            versus = r["versus"].replace("_", " ")
        rows.append({"figure": r["figure"].replace("_", " "), "value": value, "ci_low": low,
                     "ci_high": high, "versus": versus, "real": bool(r["real"])})  # fmt: skip
    return pl.DataFrame(
        rows,
        schema={"figure": pl.String, "value": pl.Float64, "ci_low": pl.Float64,
                "ci_high": pl.Float64, "versus": pl.String, "real": pl.Boolean},
    )  # fmt: skip


def review_release(
    wh: warehouse.Warehouse,
    *,
    candidate: str,
    baseline: str,
    since: dt.datetime,
    until: dt.datetime,
    gates: Sequence[Gate] | None = None,
    gates_source: str = "registry defaults",
    segments: Sequence[tuple[str, str]] | None = None,
    shadow_run_ids: Sequence[str] | None = None,
    prices: shadow.PriceTable | None = None,
    alpha: float = 0.05,
    max_examples: int = 6,
) -> ReleaseReview:
    """Review ``candidate`` against ``baseline`` over the window ``[since, until)`` (whole days)
    compared with the same length just before it.

    ``segments``: the ``(column, value)`` pairs to check for regressions (default: every value
    seen). ``shadow_run_ids``: the shadow runs to include (default: every run whose candidate
    model is ``candidate``).
    """
    span = until - since
    if span < dt.timedelta(days=1) or span % dt.timedelta(days=1):
        raise analysis.AnalysisError(f"review whole days, not {span}")
    before = (since - span, since)
    gates = tuple(gates if gates is not None else default_gates())
    if segments is None:
        segments = segment_values(wh, since=before[0], until=until)
    warn: list[str] = []
    found = attribute_segments(
        wh,
        metrics=[g.metric for g in gates],
        candidate=candidate,
        baseline=baseline,
        at=since,
        window_days=span.days,
        segments=segments,
    )
    effects = segment_effects(found, alpha=alpha)
    waterfalls = {
        metric: r
        for metric, column, _, r in found.results
        if column == "all" and isinstance(r, analysis.Waterfall)
    }
    for w in waterfalls.values():
        warn += [f"{w.metric}: {text}" for text in w.warnings]
    runs = _shadow_reviews(wh, candidate, shadow_run_ids, prices or shadow.load_prices())
    examples = _examples_of(wh, runs, effects.filter(pl.col("regressed")), max_examples)
    return ReleaseReview(
        candidate=candidate,
        baseline=baseline,
        before=before,
        after=(since, until),
        gates_source=gates_source,
        gates=tuple(_gate_outcome(g, effects) for g in gates),
        effects=effects,
        waterfalls=waterfalls,
        shadow_runs=runs,
        examples=examples,
        alpha=alpha,
        warnings=tuple(dict.fromkeys(warn)),
    )


def _shadow_reviews(
    wh: warehouse.Warehouse,
    candidate: str,
    run_ids: Sequence[str] | None,
    prices: shadow.PriceTable,
) -> tuple[ShadowRunReview, ...]:
    runs = warehouse.shadow_runs(wh)
    if run_ids is None:
        # a simulated stand-in is named after the version it plays (simulated-<version>)
        runs = runs.filter(pl.col("candidate_model").str.contains(candidate, literal=True))
    else:
        runs = runs.filter(pl.col("run_id").is_in(list(run_ids)))
    out = []
    for run in runs.iter_rows(named=True):
        stored = warehouse.shadow_run(wh, run["run_id"]) or {}
        simulated = simulated_run(_settings(stored.get("settings_json")), run["candidate_model"])
        results = warehouse.shadow_results(wh, run["run_id"])
        comparison, note = None, ""
        if not results.height:
            note = "no results stored yet"
        else:
            try:
                comparison = shadow.compare_shadow(
                    results, warehouse.shadow_judgments(wh, run["run_id"]), prices=prices
                )
            except shadow.ShadowError as e:
                note = f"cannot be compared: {e}"
        out.append(ShadowRunReview(run["run_id"], run["status"], run["created_at"], simulated,
                                   comparison, note))  # fmt: skip
    return tuple(out)


def simulated_run(settings: Mapping[str, Any], candidate_model: str) -> bool:
    """Whether a shadow run's answers were made up rather than produced by a model: its
    settings say ``"simulated": true``, or its candidate is named ``simulated-...``."""
    return bool(settings.get("simulated", False)) or candidate_model.startswith("simulated-")


def _settings(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


_EXAMPLE_SCHEMA = {
    "run_id": pl.String,
    "sample_id": pl.String,
    "why": pl.String,
    "intent": pl.String,
    "locale": pl.String,
    "platform": pl.String,
    "cohort": pl.String,
    "candidate_output": pl.String,
    "production_output": pl.String,
}


def _examples_of(
    wh: warehouse.Warehouse,
    runs: Sequence[ShadowRunReview],
    regressed: pl.DataFrame,
    limit: int,
) -> pl.DataFrame:
    """Answers worth reading, per run in turn: the candidate refusing where production did not,
    answers the judge preferred production's over in both orders, answers from a regressed
    segment, and the largest changes in length."""
    picked: list[dict[str, Any]] = []
    for run in runs:
        if run.comparison is None:
            continue
        results = warehouse.shadow_results(wh, run.run_id).filter(
            (pl.col("arm") == "candidate") & (pl.col("status") == "ok")
        )
        losses = _judged_losses(wh, run.run_id, run.comparison.candidate_model)
        reasons: list[tuple[str, pl.Expr]] = [
            ("the candidate refused, production did not",
             pl.col("output").map_elements(shadow.is_refusal, return_dtype=pl.Boolean)
             & ~pl.col("production_output").fill_null("").map_elements(
                 shadow.is_refusal, return_dtype=pl.Boolean)),
            ("the judge preferred production's answer in both orders",
             pl.col("sample_id").is_in(losses)),
        ]  # fmt: skip
        for r in regressed.iter_rows(named=True):
            if r["segment"] in shadow.SEGMENTS:
                reasons.append(
                    (f"{r['metric']} regressed in {r['segment']}={r['value']}",
                     pl.col(r["segment"]) == r["value"])
                )  # fmt: skip
        length_change = (
            (
                pl.col("output").str.len_chars().cast(pl.Float64)
                / pl.col("production_output").str.len_chars().cast(pl.Float64)
            )
            .log()
            .abs()
        )
        seen = {p["sample_id"] for p in picked}
        for why, condition in reasons:
            rows = results.filter(condition & ~pl.col("sample_id").is_in(list(seen))).head(2)
            for row in rows.iter_rows(named=True):
                seen.add(row["sample_id"])
                picked.append(_example(run.run_id, why, row))
        rest = results.filter(
            ~pl.col("sample_id").is_in(list(seen)) & pl.col("production_output").is_not_null()
        )
        for row in (
            rest.sort(length_change, descending=True, nulls_last=True).head(2).iter_rows(named=True)
        ):
            picked.append(_example(run.run_id, "one of the largest changes in length", row))
    return pl.DataFrame(picked[:limit], schema=_EXAMPLE_SCHEMA)


def _example(run_id: str, why: str, row: Mapping[str, Any]) -> dict[str, Any]:
    return {"run_id": run_id, "why": why, "candidate_output": row["output"]} | {
        k: row[k]
        for k in ("sample_id", "intent", "locale", "platform", "cohort", "production_output")
    }


def _judged_losses(wh: warehouse.Warehouse, run_id: str, candidate: str) -> list[str]:
    judgments = warehouse.shadow_judgments(wh, run_id)
    if not judgments.height:
        return []
    outcomes = shadow.judgment_outcomes(judgments)
    # the outcome is model_1's score: the candidate lost where its own score is 0
    lost = (
        pl.when(pl.col("model_1") == candidate)
        .then(pl.col("outcome") == 0.0)
        .otherwise(pl.col("outcome") == 1.0)
    )
    return (
        outcomes.filter(
            pl.col("consistent")
            & ((pl.col("model_1") == candidate) | (pl.col("model_2") == candidate))
        )
        .filter(lost)["sample_id"]
        .unique()
        .to_list()
    )


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _window(w: tuple[dt.datetime, dt.datetime]) -> str:
    last = w[1] - dt.timedelta(days=1)
    return f"{w[0]:%Y-%m-%d}..{last:%Y-%m-%d}"


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.1%}"


def _gate_rows(gates: Sequence[GateOutcome]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "metric": [g.gate.metric for g in gates],
            "owner": [g.gate.owner for g in gates],
            "threshold": [f"{g.gate.threshold:.0%} ({g.better} is better)" for g in gates],
            "effect (relative)": [
                f"{_pct(g.relative)} [{_pct(g.relative_low)}, {_pct(g.relative_high)}]"
                for g in gates
            ],
            "effect (absolute)": [_number(g.effect) for g in gates],
            "outcome": [g.outcome.upper() for g in gates],
            "why": [g.reason for g in gates],
        }
    )


def _regressed_rows(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        "metric",
        pl.format("{}={}", "segment", "value").alias("segment"),
        pl.struct("relative", "relative_low", "relative_high")
        .map_elements(
            lambda r: (
                f"{_pct(r['relative'])} [{_pct(r['relative_low'])}, {_pct(r['relative_high'])}]"
            ),
            return_dtype=pl.String,
        )
        .alias("effect (relative)"),
        pl.col("q_value").map_elements(lambda q: f"{q:.3g}", return_dtype=pl.String),
    )


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _formatted(frame: pl.DataFrame) -> pl.DataFrame:
    """Every cell as display text (4 significant digits, booleans as yes/no)."""
    return pl.DataFrame(
        {c: [_number(v) for v in frame[c].to_list()] for c in frame.columns}, schema=frame.columns
    )


def _heading(text: str, level: int, fmt: str) -> str:
    if fmt == "markdown":
        return f"{'#' * level} {text}"
    if fmt == "html":
        return f"<h{level}>{html.escape(text)}</h{level}>"
    return text if level > 2 else f"{text}\n{'=' * len(text)}"


def _paragraph(text: str, fmt: str) -> str:
    return f"<p>{html.escape(text)}</p>" if fmt == "html" else text


def _bullets(items: Sequence[str], fmt: str) -> str:
    if fmt == "html":
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"
    return "\n".join(f"- {i}" for i in items)


def _table(frame: pl.DataFrame, fmt: str) -> str:
    """A frame of display text as a ``text``, ``markdown`` or ``html`` table."""
    columns, rows = frame.columns, [[str(v) for v in r] for r in frame.rows()]
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if fmt == "markdown":
        cells = [[v.replace("|", "\\|") for v in r] for r in [columns, *rows]]
        lines = [f"| {' | '.join(r)} |" for r in cells]
        return "\n".join([lines[0], "|" + "---|" * len(columns), *lines[1:]])
    if fmt != "text":
        raise ValueError(f"fmt must be text, markdown or html, not {fmt!r}")
    widths = [max(len(x) for x in [c, *(r[i] for r in rows)]) for i, c in enumerate(columns)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                     for r in [columns, *rows])  # fmt: skip


def _examples(frame: pl.DataFrame, fmt: str) -> str:
    parts = []
    for r in frame.iter_rows(named=True):
        where = f"{r['intent']}, {r['locale']}, {r['platform']}, {r['cohort']}"
        head = f"{r['run_id']} / {r['sample_id']} ({where}): {r['why']}"
        cand, prod = r["candidate_output"] or "", r["production_output"] or "(not recorded)"
        if fmt == "html":
            parts.append(
                f"<details><summary>{html.escape(head)}</summary><table><tr><th>candidate</th>"
                f"<th>production</th></tr><tr><td><pre>{html.escape(cand)}</pre></td><td><pre>"
                f"{html.escape(prod)}</pre></td></tr></table></details>"
            )
        elif fmt == "markdown":
            quote = "\n".join(f"> {line}" for line in cand.splitlines() or [""])
            pquote = "\n".join(f"> {line}" for line in prod.splitlines() or [""])
            parts.append(f"**{head}**\n\nCandidate:\n\n{quote}\n\nProduction:\n\n{pquote}")
        else:
            parts.append(f"{head}\n  candidate:  {cand}\n  production: {prod}")
    return ("" if fmt == "html" else "\n\n").join(parts)
