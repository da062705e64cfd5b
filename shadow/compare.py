"""The shadow comparison: how the candidate's replayed answers differ from production's, and
which differences are real.

Two kinds of figures, compared against different references:

- **Answer figures**, computable on the recorded production response of the same sample: the
  response length ratio (characters of the replayed answer over the production answer's, median
  and mean), the refusal rate (:func:`shadow.is_refusal` on both), the pass rate against an
  expected answer where the sample has one. The candidate is compared with production.
- **Serving figures**, only measurable on replayed requests (production ran on other machines,
  under other load): error and timeout rates, TTFT / TPOT / end-to-end latency p50/p95/p99,
  tokens and cost per 1k requests. The candidate is compared with the ``baseline_replay`` arm,
  the production model replayed through the same path at the same time.

**Noise floor, as Diffy does it.** Replaying the production model does not reproduce
production exactly (sampling, other hardware, a changed system prompt), so an answer figure can
differ from production with *no* model change. With a ``baseline_replay`` arm, a candidate-vs-
production difference ``d_c`` is flagged real only when

    the interval of d_c excludes 0   and   the interval of |d_c| - |d_r| lies above 0

where ``d_r`` is the baseline replay's difference from production on the same figure (the
noise). Both are computed on the same resampled samples in every bootstrap draw, so the
``excess`` ``|d_c| - |d_r|`` has a paired interval: the candidate must move further from
production than the production model moves from itself, by more than resampling noise. (The
cruder rule ``|d_c| > |d_r| + half-width(d_r)`` ignores that pairing: when both arms truly move
by the same amount it flagged 6 runs in 100, the paired rule 2; docs/judging.md.)

A serving difference (candidate minus baseline replay, like for like) is real when its interval
excludes 0. Without a baseline arm, answer differences are only tested against 0 and the report
says there is no noise floor.

Every interval is a seeded percentile bootstrap over samples (both arms of a sample move
together, so differences are paired), vectorised over resamples.

Expected answers: ``re:<pattern>`` is a regular expression searched in the answer; anything
else must equal the answer after trimming, case folding and collapsing whitespace.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

from shadow.errors import TerminalShadowError
from shadow.judge import BradleyTerry, PairwiseComparison, compare_pairwise, fit_bradley_terry
from shadow.prices import PriceTable
from shadow.refusal import is_refusal
from shadow.results import BOOTSTRAP_DRAWS, Interval, bootstrap_counts, render_table

__all__ = ["SEGMENTS", "ShadowComparison", "compare_shadow", "expected_passes"]

SEGMENTS = ("intent", "locale", "platform", "cohort")
"""Columns a comparison can be broken down by."""

_REQUIRED = (
    "sample_id", "arm", "model", "status", "ttft_ms", "tpot_ms", "latency_ms", "prompt_tokens",
    "completion_tokens", "output", "production_output", "production_completion_tokens",
    "production_latency_ms", "expected",
)  # fmt: skip
_ALL = "all"


@lru_cache(maxsize=1024)
def _expected_pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


def expected_passes(output: str | None, expected: str) -> bool | None:
    """Whether ``output`` meets ``expected`` (``re:<pattern>`` searched, else an exact match after
    trimming, case folding and collapsing whitespace); None when the pattern does not compile."""
    if output is None:
        return False
    if expected.startswith("re:"):
        pattern = _expected_pattern(expected[3:])
        return None if pattern is None else pattern.search(output) is not None
    return _normalise(output) == _normalise(expected)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Figure:
    """One figure: a statistic of a per-row column over some rows, and what it is compared to."""

    name: str
    column: str
    stat: str  # "mean", "median", "p50", "p95", "p99"
    rows: str  # which rows count: "all", "ok", "ratio" (ok with a production length), "expected"
    versus: str  # "production" (answer figure) or "baseline_replay" (serving figure)
    production: str | None = None  # the column with production's value, when there is one
    scale: float = 1.0


_FIGURES = (
    _Figure("length_ratio_median", "length_ratio", "median", "ratio", "production", "one"),
    _Figure("length_ratio_mean", "length_ratio", "mean", "ratio", "production", "one"),
    _Figure("refusal_rate", "refused", "mean", "ok", "production", "production_refused"),
    _Figure("expected_pass_rate", "passed", "mean", "expected", "production", "production_passed"),
    _Figure("error_rate", "is_error", "mean", "all", "baseline_replay"),
    _Figure("timeout_rate", "is_timeout", "mean", "all", "baseline_replay"),
    *(
        _Figure(
            f"{c}_{p}",
            c,
            p,
            "ok",
            "baseline_replay",
            "production_latency_ms" if c == "latency_ms" else None,
        )
        for c in ("ttft_ms", "tpot_ms", "latency_ms")
        for p in ("p50", "p95", "p99")
    ),
    _Figure("prompt_tokens_mean", "prompt_tokens", "mean", "ok", "baseline_replay"),
    _Figure(
        "completion_tokens_mean",
        "completion_tokens",
        "mean",
        "ok",
        "baseline_replay",
        "production_completion_tokens",
    ),
    _Figure("cost_per_1k_usd", "cost", "mean", "ok", "baseline_replay", scale=1000.0),
)
_QUANTILE = {"median": 0.5, "p50": 0.5, "p95": 0.95, "p99": 0.99}


def _statistics(values: np.ndarray, weights: np.ndarray, stats: set[str]) -> dict[str, np.ndarray]:
    """The weighted ``stats`` of ``values`` (sorted ascending, finite) for each row of
    ``weights``; quantiles are the inverse of the weighted empirical CDF (for integer weights,
    the same as on the resample itself). One cumulative sum serves every quantile."""
    total = weights.sum(axis=1)
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        if "mean" in stats:
            out["mean"] = (weights * values).sum(axis=1) / total
        quantiles = stats - {"mean"}
        if quantiles:
            cum = np.cumsum(weights, axis=1)
            for q in quantiles:
                idx = (cum < _QUANTILE[q] * total[:, None]).sum(axis=1)
                out[q] = np.where(total > 0, values[np.minimum(idx, len(values) - 1)], np.nan)
    return out


@dataclass(frozen=True)
class _Rows:
    """One arm's rows in one segment, ready for the bootstrap."""

    frame: pl.DataFrame
    units: np.ndarray  # each row's sample, as an index into the segment's samples

    def values(self, column: str, rows: str) -> tuple[np.ndarray, np.ndarray]:
        """The finite values of ``column`` over ``rows``, ascending, and the units they belong
        to."""
        keep = {
            "all": pl.lit(True),
            "ok": pl.col("ok"),
            "ratio": pl.col("ok") & pl.col("length_ratio").is_finite(),
            "expected": pl.col("ok") & pl.col("passed").is_not_null(),
        }[rows]
        mask = self.frame.select(keep & pl.col(column).is_not_null()).to_series().to_numpy()
        v = self.frame[column].cast(pl.Float64).to_numpy()[mask]
        u = self.units[mask]
        finite = np.isfinite(v)
        order = np.argsort(v[finite], kind="stable")
        return v[finite][order], u[finite][order]


def _derive(results: pl.DataFrame, prices: PriceTable) -> pl.DataFrame:
    """Per-row columns the figures are computed from."""
    rows = results.to_dicts()
    costs, refused, prod_refused, passed, prod_passed = [], [], [], [], []
    for r in rows:
        costs.append(prices.cost(r["model"], r["prompt_tokens"] or 0, r["completion_tokens"] or 0))
        ok = r["status"] == "ok"
        refused.append(is_refusal(r["output"] or "") if ok else None)
        prod = r["production_output"]
        prod_refused.append(None if prod is None else is_refusal(prod))
        expected = r["expected"]
        passed.append(None if expected is None else expected_passes(r["output"], expected))
        prod_passed.append(
            None if expected is None or prod is None else expected_passes(prod, expected)
        )
    out_len = pl.col("output").fill_null("").str.len_chars().cast(pl.Float64)
    prod_len = pl.col("production_output").str.len_chars().cast(pl.Float64)
    return results.with_columns(
        ok=pl.col("status") == "ok",
        is_error=(pl.col("status") == "error").cast(pl.Float64),
        is_timeout=(pl.col("status") == "timeout").cast(pl.Float64),
        length_ratio=pl.when(prod_len > 0).then(out_len / prod_len),
        one=pl.lit(1.0),
        cost=pl.Series(costs, dtype=pl.Float64),
        refused=pl.Series(refused, dtype=pl.Boolean).cast(pl.Float64),
        production_refused=pl.Series(prod_refused, dtype=pl.Boolean).cast(pl.Float64),
        passed=pl.Series(passed, dtype=pl.Boolean).cast(pl.Float64),
        production_passed=pl.Series(prod_passed, dtype=pl.Boolean).cast(pl.Float64),
    )


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShadowComparison:
    """Candidate vs production (and vs the baseline replay), overall and per segment."""

    candidate_model: str
    baseline_model: str | None
    segment: str | None
    n_samples: int
    figures: pl.DataFrame
    """One row per segment value and figure: each arm's value and interval, production's, the
    difference with its interval, the ``noise`` (baseline replay minus production), the
    ``excess`` (``|difference| - |noise|``) and whether the difference is ``real``."""
    judge: PairwiseComparison | None
    judge_by_segment: dict[str, PairwiseComparison]
    bradley_terry: BradleyTerry | None
    confidence: float
    draws: int
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...]

    def to_frame(self) -> pl.DataFrame:
        """The figures table (see ``figures``)."""
        return self.figures

    def real_differences(self) -> pl.DataFrame:
        """The rows flagged real."""
        return self.figures.filter(pl.col("real"))

    def summary(self, fmt: str = "text") -> str:
        """Per segment: every figure for both arms and production, the difference, the noise
        floor and the verdict; then the judge's win rates, assumptions and warnings."""
        blocks = []
        for (seg,), part in self.figures.group_by(["segment"], maintain_order=True):
            rows = [_summary_row(r) for r in part.iter_rows(named=True)]
            columns = ["figure", "candidate", "baseline replay", "production", "difference",
                       "noise (replay - production)", "excess over noise", "real"]  # fmt: skip
            title = (
                f"{self.candidate_model}: {self.segment} = {seg}"
                if self.segment and seg != _ALL
                else f"{self.candidate_model}: all samples"
            )
            blocks.append(render_table(title, columns, rows, [], fmt))
        if self.judge is not None:
            blocks.append(self.judge.summary(fmt))
            if self.judge_by_segment:
                rows = [
                    [seg, str(j.n_samples), j.win_rate.format(".3f"), j.lc_win_rate.format(".3f")]
                    for seg, j in self.judge_by_segment.items()
                ]
                columns = [self.segment or "segment", "samples", "win rate", "LC win rate"]
                blocks.append(render_table("judge win rates by segment", columns, rows, [], fmt))
        if self.bradley_terry is not None:
            blocks.append(self.bradley_terry.summary(fmt))
        notes = [f"assumes: {a}" for a in self.assumptions]
        notes += [f"warning: {w}" for w in self.warnings]
        header = (
            f"shadow comparison: {self.candidate_model} vs production"
            f" ({self.baseline_model or 'no baseline replay'}), {self.n_samples} samples,"
            f" {self.confidence:.0%} bootstrap intervals ({self.draws} draws)"
        )
        sep = "\n\n" if fmt != "html" else ""
        if fmt == "markdown":
            header = f"## {header}"
            notes = [f"- {n}" for n in notes]
        elif fmt == "html":
            header = f"<h2>{header}</h2>"
            notes = [f"<p>{n}</p>" for n in notes]
        return sep.join([header, *blocks, "\n".join(notes)])


def _fmt(value: float, low: float, high: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return Interval(value, low, high).format(".4g")


def _summary_row(r: dict) -> list[str]:
    diff = _fmt(r["difference"], r["difference_ci_low"], r["difference_ci_high"])
    return [
        r["figure"],
        _fmt(r["candidate"], r["candidate_ci_low"], r["candidate_ci_high"]),
        _fmt(r["baseline_replay"], r["baseline_replay_ci_low"], r["baseline_replay_ci_high"]),
        _fmt(r["production"], r["production_ci_low"], r["production_ci_high"]),
        "-" if diff == "-" else f"{diff} vs {r['versus'].replace('_', ' ')}",
        _fmt(r["noise"], r["noise_ci_low"], r["noise_ci_high"]),
        _fmt(r["excess"], r["excess_ci_low"], r["excess_ci_high"]),
        "yes" if r["real"] else "no",
    ]


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


def _segment_figures(
    arms: dict[str, _Rows], n_units: int, *, draws: int, seed: int, confidence: float
) -> list[dict]:
    """Every figure of one segment: values, differences, noise floor, verdict."""
    has_replay = "baseline_replay" in arms
    # each (arm, figure, side) is a statistic of a series of values (side "arm" or
    # "production"); figures sharing a series (p50/p95/p99 of one column) share its work
    series: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
    needs: dict[tuple[str, str, str], list[tuple[tuple[str, str, str], str]]] = {}
    for arm, rows in arms.items():
        for f in _FIGURES:
            sides = [("arm", f.column)] + ([("production", f.production)] if f.production else [])
            for side, column in sides:
                key = (arm, column, f.rows)
                if key not in series:
                    series[key] = rows.values(column, f.rows)
                if len(series[key][0]):
                    needs.setdefault(key, []).append(((arm, f.name, side), f.stat))

    def evaluate(weights_of: Callable[[np.ndarray], np.ndarray]) -> dict:
        found = {}
        for key, wanted in needs.items():
            v, u = series[key]
            stats = _statistics(v, weights_of(u), {stat for _, stat in wanted})
            found |= {name: stats[stat] for name, stat in wanted}
        return found

    point = {k: v[0] for k, v in evaluate(lambda u: np.ones((1, len(u)))).items()}
    boot: dict[tuple[str, str, str], list[np.ndarray]] = {k: [] for k in point}
    for counts in bootstrap_counts(n_units, draws if n_units else 0, seed=seed):
        for k, d in evaluate(lambda u, c=counts: c[:, u]).items():
            boot[k].append(d)
    drawn = {k: np.concatenate(d) if d else np.array([]) for k, d in boot.items()}

    def interval(value: float, draws_: np.ndarray) -> Interval:
        return Interval.from_draws(value, draws_, confidence=confidence)

    out = []
    for f in _FIGURES:
        row: dict = {"figure": f.name, "versus": f.versus}
        for arm in ("candidate", "baseline_replay"):
            key = (arm, f.name, "arm")
            est = interval(point[key], drawn[key]) if key in point else Interval.missing()
            row |= _columns(arm, est, f.scale)
        prod_key = ("candidate", f.name, "production")
        prod = (
            interval(point[prod_key], drawn[prod_key]) if prod_key in point else Interval.missing()
        )
        row |= _columns("production", prod, f.scale)
        diff, noise, excess = Interval.missing(), Interval.missing(), Interval.missing()
        cand = ("candidate", f.name, "arm")
        if f.versus == "production" and f.production is not None:
            diff = _difference(point, drawn, cand, prod_key, interval)
            replay = ("baseline_replay", f.name, "arm")
            replay_prod = ("baseline_replay", f.name, "production")
            if has_replay and all(k in point for k in (cand, prod_key, replay, replay_prod)):
                noise = _difference(point, drawn, replay, replay_prod, interval)
                # how much further from production the candidate is than the replay, with both
                # arms resampled together (the same samples in every draw)
                moved = np.abs(drawn[cand] - drawn[prod_key]) - np.abs(
                    drawn[replay] - drawn[replay_prod]
                )
                excess = interval(abs(diff.value) - abs(noise.value), moved)
        elif has_replay:
            diff = _difference(point, drawn, cand, ("baseline_replay", f.name, "arm"), interval)
        row |= _columns("difference", diff, f.scale)
        row |= _columns("noise", noise, f.scale)
        row |= _columns("excess", excess, f.scale)
        significant = not math.isnan(diff.value) and not diff.covers(0.0)
        if f.versus == "production" and has_replay:
            # the noise floor: without the replay's figure there is nothing to tell noise from
            row["real"] = significant and not math.isnan(excess.ci_low) and excess.ci_low > 0
        else:
            row["real"] = significant
        out.append(row)
    return out


def _columns(prefix: str, est: Interval, scale: float) -> dict[str, float]:
    return {
        prefix: est.value * scale,
        f"{prefix}_ci_low": est.ci_low * scale,
        f"{prefix}_ci_high": est.ci_high * scale,
    }


def _difference(
    point: dict,
    drawn: dict,
    left: tuple[str, str, str],
    right: tuple[str, str, str],
    interval: Callable[[float, np.ndarray], Interval],
) -> Interval:
    """``left - right`` with the interval of the paired resampled differences."""
    if left not in point or right not in point:
        return Interval.missing()
    return interval(point[left] - point[right], drawn[left] - drawn[right])


def compare_shadow(
    results: pl.DataFrame,
    judgments: pl.DataFrame | None = None,
    *,
    prices: PriceTable,
    segment: str | None = None,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
    confidence: float = 0.95,
) -> ShadowComparison:
    """Compare a shadow run's arms with production (module doc), overall and by ``segment``.

    ``results`` has the ``shadow_results`` columns (one row per sample and arm); ``judgments``
    (optional) the ``shadow_judgments`` columns, judging the candidate's answers against the
    recorded production answers (``model_b``: the production model's name). ``prices`` gives
    the cost figures (:func:`shadow.load_prices`).
    """
    missing = [c for c in _REQUIRED if c not in results.columns]
    if missing:
        raise TerminalShadowError(f"results lack columns {missing}")
    if segment is not None and segment not in SEGMENTS:
        raise TerminalShadowError(f"cannot segment by {segment!r}: choose from {SEGMENTS}")
    arms_present = set(results["arm"].unique())
    if "candidate" not in arms_present:
        raise TerminalShadowError("results have no candidate arm")
    unknown = arms_present - {"candidate", "baseline_replay"}
    if unknown:
        raise TerminalShadowError(f"unknown arms {sorted(unknown)}")
    warn: list[str] = []
    derived = _derive(results, prices)
    candidate_model = _single(derived, "candidate")
    baseline_model = (
        _single(derived, "baseline_replay") if "baseline_replay" in arms_present else None
    )
    unpriced = sorted({m for m in derived["model"].unique() if prices.get(m) is None})
    if unpriced:
        warn.append(f"no price for {unpriced}: their cost figures are missing")
    if baseline_model is None:
        warn.append(
            "no baseline_replay arm: no noise floor, answer differences are tested against 0 "
            "only and serving figures have nothing to be compared with"
        )
    bad_patterns = derived.filter(pl.col("expected").is_not_null() & pl.col("passed").is_null())
    if bad_patterns.height:
        warn.append(f"{bad_patterns.height} expected regexes do not compile: left out")
    if derived.filter(pl.col("production_output").is_null()).height:
        warn.append(
            "some samples have no recorded production answer: they count for serving figures only"
        )

    # the segment a sample belongs to (from its candidate row; both arms share it)
    seg_col = segment or "arm"
    sample_segment = (
        derived.filter(pl.col("arm") == "candidate")
        .select(
            "sample_id",
            pl.lit(_ALL).alias("seg")
            if segment is None
            else pl.col(seg_col).fill_null("unknown").alias("seg"),
        )
        .unique("sample_id")
    )
    frame = derived.join(sample_segment, on="sample_id", how="inner")
    groups = [(_ALL, frame)]
    if segment is not None:
        groups += [(s, frame.filter(pl.col("seg") == s)) for s in sorted(frame["seg"].unique())]
    rows = []
    for k, (seg, part) in enumerate(groups):
        codes = part["sample_id"].cast(pl.Categorical).to_physical().to_numpy()
        _, units = np.unique(codes, return_inverse=True)
        arms = {
            arm: _Rows(part.filter(pl.col("arm") == arm), units[(part["arm"] == arm).to_numpy()])
            for arm in ("candidate", "baseline_replay")
            if arm in arms_present
        }
        n_units = int(units.max()) + 1 if len(units) else 0
        for r in _segment_figures(arms, n_units, draws=draws, seed=seed + k, confidence=confidence):
            rows.append({"segment": seg, "samples": n_units, **r})
    figures = pl.DataFrame(rows).with_columns(pl.col("real").cast(pl.Boolean))

    judge, by_segment, bt = None, {}, None
    if judgments is not None and judgments.height:
        judge, by_segment, bt = _judge(judgments, derived, sample_segment, candidate_model,
                                       segment, draws, seed, confidence, warn)  # fmt: skip
    return ShadowComparison(
        candidate_model=candidate_model,
        baseline_model=baseline_model,
        segment=segment,
        n_samples=sample_segment.height,
        figures=figures,
        judge=judge,
        judge_by_segment=by_segment,
        bradley_terry=bt,
        confidence=confidence,
        draws=draws,
        assumptions=(
            "answer figures compare with the recorded production answer of the same sample; "
            "serving figures with the baseline replay (same path, same time)",
            "noise floor: a candidate-vs-production difference is real when its interval "
            "excludes 0 and the paired interval of |d_candidate| - |d_replay| is above 0",
            "length ratio in characters (tokenizers differ between models)",
            "samples are independent; intervals resample samples, both arms together",
        ),
        warnings=tuple(warn),
    )


def _single(frame: pl.DataFrame, arm: str) -> str:
    models = frame.filter(pl.col("arm") == arm)["model"].unique().to_list()
    if len(models) != 1:
        raise TerminalShadowError(f"arm {arm} should have one model, has {sorted(models)}")
    return models[0]


def _judge(
    judgments: pl.DataFrame,
    derived: pl.DataFrame,
    sample_segment: pl.DataFrame,
    candidate: str,
    segment: str | None,
    draws: int,
    seed: int,
    confidence: float,
    warn: list[str],
) -> tuple[PairwiseComparison | None, dict[str, PairwiseComparison], BradleyTerry | None]:
    models = set(judgments["model_a"]) | set(judgments["model_b"])
    opponents = sorted(models - {candidate})
    if candidate not in models or not opponents:
        warn.append(f"the judgments do not compare {candidate} with another model")
        return None, {}, None
    bt = (
        fit_bradley_terry(judgments, reference=opponents[0], draws=draws, seed=seed)
        if len(models) > 2
        else None
    )
    baseline = opponents[0]
    if len(opponents) > 1:
        warn.append(f"judged against several models {opponents}: win rates are against {baseline}")
    lengths = derived.filter(
        pl.col("arm") == "candidate", pl.col("production_output").is_not_null()
    ).select(
        "sample_id",
        candidate_length=pl.col("output").fill_null("").str.len_chars(),
        baseline_length=pl.col("production_output").str.len_chars(),
    )
    overall = compare_pairwise(judgments, candidate=candidate, baseline=baseline, lengths=lengths,
                               draws=draws, seed=seed, confidence=confidence)  # fmt: skip
    by_segment = {}
    if segment is not None:
        tagged = judgments.join(sample_segment, on="sample_id", how="inner")
        for k, seg in enumerate(sorted(tagged["seg"].unique())):
            by_segment[seg] = compare_pairwise(
                tagged.filter(pl.col("seg") == seg).drop("seg"), candidate=candidate,
                baseline=baseline, lengths=lengths, draws=draws, seed=seed + 1 + k,
                confidence=confidence,
            )  # fmt: skip
    return overall, by_segment, bt
