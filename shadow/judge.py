"""Pairwise judging: which of two answers to the same request is better, and how to aggregate it.

The protocol (MT-Bench's, Zheng et al. 2023): every pair is judged twice, once in each order.
A sample's outcome counts only when both verdicts agree; a verdict that flips with the order
(the judge preferred a *position*, not an answer) counts as a tie, and the share of samples
whose two verdicts agree is reported as the judge's consistency. A sample lacking a valid
verdict in either order is left out and counted.

Aggregates, each with a seeded percentile bootstrap over samples (vectorised):

- **raw win rate**: the candidate's mean outcome (win 1, tie 1/2, loss 0);
- **length-controlled (LC) win rate**, as AlpacaEval 2 (Dubois et al. 2024) computes it: a
  logistic GLM of the outcome on ``tanh(delta_len / sd(delta_len))`` (``delta_len`` the
  candidate's minus the baseline's output length in characters, scaled but not centred, so
  zero still means "same length"); the LC win rate is the predicted win probability with the
  length term at zero, averaged over samples (here the intercept's logistic, as there is no
  per-instruction term). It answers "what would the preference be if both answers had the same
  length?";
- **Bradley-Terry** strengths when more than two models were compared (ties as half a win).

:class:`JudgeClient` asks any OpenAI-compatible endpoint for the verdicts, optionally with the
answer constrained to ``A`` / ``B`` / ``tie`` (vLLM structured outputs, or an OpenAI JSON schema).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

from shadow.errors import TerminalShadowError
from shadow.results import BOOTSTRAP_DRAWS, Interval, bootstrap_counts, render_table
from shadow.sample import Sample
from shadow.targets import ChatRequest, HttpTarget
from warehouse import SHADOW_JUDGMENT_SCHEMA

__all__ = [
    "JUDGE_SYSTEM_PROMPT",
    "VERDICTS",
    "BradleyTerry",
    "JudgeClient",
    "PairToJudge",
    "PairwiseComparison",
    "compare_pairwise",
    "fit_bradley_terry",
    "judgment_outcomes",
    "parse_verdict",
]

VERDICTS = ("A", "B", "tie", "invalid")
"""What a judgment may say: the first shown answer, the second, a tie, or nothing usable."""

Constraint = Literal["none", "choice", "json_schema"]

# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------

_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_LABELLED = re.compile(
    r"\b(?:verdict|answer|winner|decision|choice|final|better(?: response| answer)? is)\b"
    r"\W{0,6}(?:is\W{1,3})?(?:response|answer|output|assistant)?\s*\(?\b(A|B|tie|draw)\b",
    re.IGNORECASE,
)
# "A." / "B)" / "Response A" opening the answer (but not "A and B are both...")
_LEADING = re.compile(
    r"^\W*(?i:response|answer|output|assistant)?\s*\(?(A|B)(?:\s*[.):,!\n-]|\s*$)"
)
_TIE_WORDS = re.compile(r"^\W*(?:tie|draw|equal|equally good|both|neither|same)\b", re.IGNORECASE)


def parse_verdict(text: str) -> str:
    """``A``, ``B``, ``tie`` or ``invalid`` from a judge's answer, however it was worded.

    Understood: a bare ``A`` / ``B`` / ``tie`` (any case, quotes, brackets, punctuation), a JSON
    object with a ``verdict`` field, MT-Bench's ``[[A]]`` / ``[[B]]`` / ``[[C]]`` (tie),
    ``Verdict: A``, ``The better response is B``, or an answer that starts with ``A`` / ``B``
    followed by an explanation. Anything else, and an answer naming both, is ``invalid``.
    """
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            stripped = str(json.loads(stripped).get("verdict", ""))
        except (ValueError, AttributeError):
            return "invalid"
    bare = stripped.strip(" \t\n\"'`*[]().:!").lower()
    if bare in ("a", "b"):
        return bare.upper()
    if bare in ("tie", "draw", "c", "equal"):
        return "tie"
    found = {m.group(1).upper() for m in _BRACKETED.finditer(stripped)}
    if len(found) == 1:
        (v,) = found
        return {"C": "tie", "TIE": "tie"}.get(v, v)
    labelled = {m.group(1).lower() for m in _LABELLED.finditer(stripped)}
    if len(labelled) == 1:
        (v,) = labelled
        return "tie" if v in ("tie", "draw") else v.upper()
    if _TIE_WORDS.match(stripped):
        return "tie"
    leading = _LEADING.match(stripped)
    return leading.group(1) if leading else "invalid"


# --------------------------------------------------------------------------------------------
# Outcomes per sample
# --------------------------------------------------------------------------------------------


def judgment_outcomes(judgments: pl.DataFrame) -> pl.DataFrame:
    """One row per sample, judge and unordered pair of models, from judgments in both orders.

    Columns: ``sample_id``, ``judge_model``, ``model_1`` < ``model_2`` (alphabetical),
    ``first`` and ``second``: ``model_1``'s score when it was shown first and when it was shown
    second (1 win, 0.5 tie, 0 loss, null when invalid or missing), ``complete`` (both valid),
    ``consistent`` (both valid and equal) and ``outcome``: ``model_1``'s score when consistent,
    0.5 when the verdicts disagree, null when incomplete. A pair judged more than once in the
    same order keeps its latest judgment.
    """
    missing = [c for c in SHADOW_JUDGMENT_SCHEMA if c not in judgments.columns]
    if missing:
        raise TerminalShadowError(f"judgments lack columns {missing}")
    shown_first = pl.col("model_a")
    winner = (
        pl.when(pl.col("verdict") == "A")
        .then(pl.col("model_a"))
        .when(pl.col("verdict") == "B")
        .then(pl.col("model_b"))
    )
    model_1 = pl.min_horizontal("model_a", "model_b")
    scored = (
        judgments.filter(pl.col("model_a") != pl.col("model_b"))
        .sort("judged_at")
        .with_columns(
            model_1=model_1,
            model_2=pl.max_horizontal("model_a", "model_b"),
            one_first=shown_first == model_1,
            score=pl.when(pl.col("verdict") == "tie")
            .then(0.5)
            .when(winner.is_not_null())
            .then((winner == model_1).cast(pl.Float64)),
        )
        .unique(["sample_id", "judge_model", "model_1", "model_2", "one_first"], keep="last")
    )
    keys = ["sample_id", "judge_model", "model_1", "model_2"]
    pairs = scored.group_by(keys).agg(
        first=pl.col("score").filter(pl.col("one_first")).first(),
        second=pl.col("score").filter(~pl.col("one_first")).first(),
    )
    complete = pl.col("first").is_not_null() & pl.col("second").is_not_null()
    return (
        pairs.with_columns(
            complete=complete, consistent=complete & (pl.col("first") == pl.col("second"))
        )
        .with_columns(
            outcome=pl.when(pl.col("consistent"))
            .then(pl.col("first"))
            .when(pl.col("complete"))
            .then(0.5)
        )
        .sort(keys)
    )


# --------------------------------------------------------------------------------------------
# Two models: raw and length-controlled win rates
# --------------------------------------------------------------------------------------------

_NEWTON_STEPS = 40
_MAX_COEF = 30.0  # |logit| beyond this is a certain outcome (separation): stop there


def _fit_logistic_batch(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Intercept and slope of ``logit P(y) = a + b x`` for each row of weights ``w`` (and of
    features ``x``, one row per fit), by Newton's method on the binomial log-likelihood with a
    fractional ``y`` in [0, 1]. Returns ``(rows, 2)``."""
    total = w.sum(axis=1)
    mean = np.clip((w * y).sum(axis=1) / total, 1e-6, 1 - 1e-6)
    a, b = np.log(mean / (1 - mean)), np.zeros_like(total)
    ridge = 1e-9 * total  # keeps the 2x2 Hessian invertible when a replicate has no spread
    for _ in range(_NEWTON_STEPS):
        p = 1 / (1 + np.exp(-(a[:, None] + b[:, None] * x)))
        r = w * (y - p)
        v = w * p * (1 - p)
        g0, g1 = r.sum(axis=1), (r * x).sum(axis=1)
        h00, h01, h11 = v.sum(axis=1) + ridge, (v * x).sum(axis=1), (v * x * x).sum(axis=1) + ridge
        det = h00 * h11 - h01 * h01
        step_a, step_b = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        a = np.clip(a + step_a, -_MAX_COEF, _MAX_COEF)
        b = np.clip(b + step_b, -_MAX_COEF, _MAX_COEF)
        if np.nanmax(np.abs(step_a) + np.abs(step_b)) < 1e-10:
            break
    return np.column_stack([a, b])


def _length_feature(delta: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``tanh(delta / sd)`` with the (weighted, per-row) standard deviation of ``delta``."""
    total = w.sum(axis=1, keepdims=True)
    mean = (w * delta).sum(axis=1, keepdims=True) / total
    var = (w * (delta - mean) ** 2).sum(axis=1, keepdims=True) / np.maximum(total - 1, 1)
    sd = np.sqrt(var)
    return np.tanh(np.divide(delta, sd, out=np.zeros_like(w, dtype=float), where=sd > 0))


@dataclass(frozen=True)
class PairwiseComparison:
    """The candidate against the baseline, as judged pairwise in both orders."""

    candidate: str
    baseline: str
    judge_models: tuple[str, ...]
    n_samples: int
    """Samples with a valid verdict in both orders (the units of every rate below)."""
    wins: int
    losses: int
    ties: int
    inconsistent: int
    """Samples whose verdict flipped with the order (counted in ``ties``)."""
    incomplete: int
    """Samples left out: a verdict missing or invalid in at least one order."""
    invalid_judgments: int
    consistency_rate: float
    win_rate: Interval
    """Mean outcome (win 1, tie 1/2, loss 0)."""
    lc_win_rate: Interval
    """Length-controlled win rate (AlpacaEval 2); NaN without lengths or too little data."""
    length_coef: Interval
    """The GLM's slope on the length term: how much the judge rewards a longer answer."""
    confidence: float
    draws: int
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...]

    def to_frame(self) -> pl.DataFrame:
        """One row per figure: ``term``, ``value``, ``ci_low``, ``ci_high``."""
        counts = {
            "samples": self.n_samples,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "inconsistent": self.inconsistent,
            "incomplete": self.incomplete,
            "invalid_judgments": self.invalid_judgments,
            "consistency_rate": self.consistency_rate,
        }
        rows = [(k, float(v), math.nan, math.nan) for k, v in counts.items()]
        for term, est in (
            ("win_rate", self.win_rate),
            ("lc_win_rate", self.lc_win_rate),
            ("length_coef", self.length_coef),
        ):
            rows.append((term, est.value, est.ci_low, est.ci_high))
        return pl.DataFrame(
            rows, schema=["term", "value", "ci_low", "ci_high"], orient="row"
        ).with_columns(candidate=pl.lit(self.candidate), baseline=pl.lit(self.baseline))

    def summary(self, fmt: str = "text") -> str:
        """Win rates with their intervals, counts, assumptions and warnings."""
        pct = f"{self.confidence:.0%}"
        rows = [
            ["win rate (ties 1/2)", self.win_rate.format(".3f")],
            ["length-controlled win rate", self.lc_win_rate.format(".3f")],
            ["length coefficient", self.length_coef.format(".3f")],
            ["wins / ties / losses", f"{self.wins} / {self.ties} / {self.losses}"],
            ["consistency (same verdict both orders)", f"{self.consistency_rate:.1%}"],
            ["samples (left out: incomplete)", f"{self.n_samples} ({self.incomplete})"],
            ["invalid judgments", str(self.invalid_judgments)],
        ]
        notes = [f"assumes: {a}" for a in self.assumptions]
        notes += [f"warning: {w}" for w in self.warnings]
        title = (
            f"{self.candidate} vs {self.baseline}, judged by {', '.join(self.judge_models)} "
            f"({pct} bootstrap intervals, {self.draws} draws)"
        )
        return render_table(title, ["figure", "value"], rows, notes, fmt)


def compare_pairwise(
    judgments: pl.DataFrame,
    *,
    candidate: str,
    baseline: str,
    lengths: pl.DataFrame | None = None,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairwiseComparison:
    """Raw and length-controlled win rates of ``candidate`` over ``baseline`` (module doc).

    ``judgments`` has the ``shadow_judgments`` columns; ``lengths`` (optional) has
    ``sample_id``, ``candidate_length`` and ``baseline_length`` (characters of the two judged
    answers) and enables the length control. Intervals resample samples (a sample judged by
    several judge models moves as one).
    """
    outcomes = judgment_outcomes(judgments).filter(
        pl.col("model_1") == min(candidate, baseline), pl.col("model_2") == max(candidate, baseline)
    )
    pair = judgments.filter(
        pl.col("model_a").is_in([candidate, baseline])
        & pl.col("model_b").is_in([candidate, baseline])
    )
    invalid = int((pair["verdict"] == "invalid").sum())
    flip = candidate != min(candidate, baseline)
    done = outcomes.filter("complete").with_columns(
        y=(1 - pl.col("outcome")) if flip else pl.col("outcome")
    )
    if lengths is not None:
        done = done.join(lengths.select("sample_id", "candidate_length", "baseline_length"),
                         on="sample_id", how="left")  # fmt: skip
    warn: list[str] = []
    y = done["y"].to_numpy().astype(float)
    n = len(y)
    wins, losses = int((y == 1).sum()), int((y == 0).sum())
    inconsistent = int((~done["consistent"]).sum())
    consistency = 1 - inconsistent / n if n else math.nan
    if n == 0:
        warn.append("no sample has a valid verdict in both orders")
    if invalid:
        warn.append(f"{invalid} judgments were invalid (unparseable or failed requests)")
    if n and consistency < 0.6:
        warn.append(
            f"the judge agreed with itself across orders on only {consistency:.0%} of samples: "
            "it is reacting to position, and the win rates say little"
        )
    # units of resampling: samples (each may carry several judges' outcomes)
    unit_codes = (
        done["sample_id"].cast(pl.Categorical).to_physical().to_numpy() if n else np.array([])
    )
    n_units = int(unit_codes.max()) + 1 if n else 0

    raw_draws, lc_draws, coef_draws = [], [], []
    delta = None
    if lengths is not None and n:
        d = done.select(pl.col("candidate_length") - pl.col("baseline_length")).to_series()
        if d.null_count():
            warn.append(f"{d.null_count()} judged samples have no lengths; LC uses the rest")
        delta = d.to_numpy().astype(float)
    ok_len = None if delta is None else np.isfinite(delta)
    lc_possible = ok_len is not None and ok_len.sum() >= 10 and np.nanstd(delta) > 0
    if lengths is not None and n and not lc_possible:
        warn.append("too few samples or no length variation: no length-controlled win rate")
    for counts in bootstrap_counts(n_units, draws if n else 0, seed=seed):
        w = counts[:, unit_codes].astype(float)
        raw_draws.append((w * y).sum(axis=1) / w.sum(axis=1))
        if lc_possible:
            wl = w[:, ok_len]
            x = _length_feature(delta[ok_len][None, :], wl)
            beta = _fit_logistic_batch(x, y[ok_len], wl)
            lc_draws.append(1 / (1 + np.exp(-beta[:, 0])))
            coef_draws.append(beta[:, 1])
    win_rate = (
        Interval.from_draws(float(y.mean()), np.concatenate(raw_draws), confidence=confidence)
        if n
        else Interval.missing()
    )
    lc, coef = Interval.missing(), Interval.missing()
    if lc_possible:
        a, b = _fit_length_glm(delta[ok_len], y[ok_len], warn)
        lc = Interval.from_draws(
            1 / (1 + math.exp(-a)), np.concatenate(lc_draws), confidence=confidence
        )
        coef = Interval.from_draws(b, np.concatenate(coef_draws), confidence=confidence)
        if abs(lc.value - win_rate.value) > 0.1:
            warn.append(
                f"length control moved the win rate by {lc.value - win_rate.value:+.2f}: the "
                "judge's preference depends strongly on length"
            )
    assumptions = (
        "outcome per sample = the verdict when both orders agree, a tie when they disagree",
        "length control: logit P(win) = a + b tanh(delta_len / sd); LC win rate = logistic(a)",
        "samples are independent draws from the traffic the candidate will serve",
    )
    return PairwiseComparison(
        candidate=candidate,
        baseline=baseline,
        judge_models=tuple(sorted(done["judge_model"].unique().to_list())) if n else (),
        n_samples=n,
        wins=wins,
        losses=losses,
        ties=n - wins - losses,
        inconsistent=inconsistent,
        incomplete=outcomes.height - n,
        invalid_judgments=invalid,
        consistency_rate=consistency,
        win_rate=win_rate,
        lc_win_rate=lc,
        length_coef=coef,
        confidence=confidence,
        draws=draws,
        assumptions=assumptions,
        warnings=tuple(warn),
    )


def _fit_length_glm(delta: np.ndarray, y: np.ndarray, warn: list[str]) -> tuple[float, float]:
    """The point estimate with statsmodels (a binomial GLM on a fractional outcome)."""
    x = np.tanh(delta / np.std(delta, ddof=1))
    if y.min() == y.max():
        warn.append("every sample has the same outcome: the LC fit is at its boundary")
        return (_MAX_COEF if y[0] > 0.5 else -_MAX_COEF if y[0] < 0.5 else 0.0), 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfectSeparationWarning)
        fit = sm.GLM(y, sm.add_constant(x, has_constant="add"), family=sm.families.Binomial()).fit()
    a, b = (float(v) for v in fit.params)
    return float(np.clip(a, -_MAX_COEF, _MAX_COEF)), float(np.clip(b, -_MAX_COEF, _MAX_COEF))


# --------------------------------------------------------------------------------------------
# More than two models: Bradley-Terry
# --------------------------------------------------------------------------------------------

_BT_STEPS = 500
_BT_PSEUDO_TIES = 0.1  # virtual tied comparisons per compared pair: keeps an unbeaten model finite


def _bradley_terry_mm(
    wins: np.ndarray, games: np.ndarray, i: np.ndarray, j: np.ndarray, k: int
) -> np.ndarray:
    """Log-strengths (mean zero) by Hunter's (2004) MM algorithm, one fit per row.

    ``wins[r, p]``: (weighted) wins of model ``i[p]`` over ``j[p]`` (ties as 1/2) in replicate
    ``r``; ``games[r, p]``: comparisons of that pair."""
    rows = wins.shape[0]
    into_i = np.zeros((len(i), k))
    into_i[np.arange(len(i)), i] = 1
    into_j = np.zeros((len(j), k))
    into_j[np.arange(len(j)), j] = 1
    won = wins @ into_i + (games - wins) @ into_j
    pi = np.ones((rows, k))
    for _ in range(_BT_STEPS):
        per_game = games / (pi[:, i] + pi[:, j])
        new = won / (per_game @ into_i + per_game @ into_j)
        new /= np.exp(np.log(new).mean(axis=1, keepdims=True))
        if np.max(np.abs(new - pi)) < 1e-10:
            pi = new
            break
        pi = new
    return np.log(pi)


@dataclass(frozen=True)
class BradleyTerry:
    """Bradley-Terry strengths of several models from pairwise outcomes.

    ``strengths`` are log-odds relative to ``reference`` (0 for it): model ``m`` beats the
    reference with probability ``logistic(strength[m])``."""

    models: tuple[str, ...]
    reference: str
    strengths: tuple[Interval, ...]
    n_samples: int
    n_comparisons: int
    confidence: float
    draws: int
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...]

    def strength(self, model: str) -> Interval:
        """The strength of ``model`` with its interval."""
        return self.strengths[self.models.index(model)]

    def to_frame(self) -> pl.DataFrame:
        """One row per model: strength and interval, and the implied win probability against the
        reference."""
        return pl.DataFrame(
            {
                "model": list(self.models),
                "strength": [s.value for s in self.strengths],
                "ci_low": [s.ci_low for s in self.strengths],
                "ci_high": [s.ci_high for s in self.strengths],
                "p_beats_reference": [1 / (1 + math.exp(-s.value)) for s in self.strengths],
            }
        ).sort("strength", descending=True)

    def summary(self, fmt: str = "text") -> str:
        """The ranking with intervals."""
        rows = [
            [r["model"], f"{r['strength']:+.3f}", f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
             f"{r['p_beats_reference']:.3f}"]
            for r in self.to_frame().iter_rows(named=True)
        ]  # fmt: skip
        notes = [f"assumes: {a}" for a in self.assumptions]
        notes += [f"warning: {w}" for w in self.warnings]
        title = (
            f"Bradley-Terry strengths vs {self.reference} ({self.n_comparisons} comparisons on "
            f"{self.n_samples} samples, {self.confidence:.0%} bootstrap intervals)"
        )
        columns = ["model", "strength (logit)", "interval", f"P(beats {self.reference})"]
        return render_table(title, columns, rows, notes, fmt)


def fit_bradley_terry(
    judgments: pl.DataFrame,
    *,
    reference: str | None = None,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
    confidence: float = 0.95,
) -> BradleyTerry:
    """Bradley-Terry strengths of every model in ``judgments`` (both-order protocol as in
    :func:`judgment_outcomes`; ties count half a win to each), with bootstrap intervals over
    samples. ``reference`` (default: the first model alphabetically) is pinned at 0."""
    outcomes = judgment_outcomes(judgments).filter("complete")
    models = tuple(sorted(set(outcomes["model_1"]) | set(outcomes["model_2"])))
    if len(models) < 2:
        raise TerminalShadowError("Bradley-Terry needs outcomes between at least two models")
    reference = reference or models[0]
    if reference not in models:
        raise TerminalShadowError(f"reference {reference!r} is not among {list(models)}")
    index = {m: n for n, m in enumerate(models)}
    pair_keys = outcomes.select("model_1", "model_2").unique().sort(["model_1", "model_2"])
    i = np.array([index[m] for m in pair_keys["model_1"]])
    j = np.array([index[m] for m in pair_keys["model_2"]])
    pair_of = {(a, b): n for n, (a, b) in enumerate(pair_keys.iter_rows())}
    p = np.array([pair_of[(a, b)] for a, b in outcomes.select("model_1", "model_2").iter_rows()])
    y = outcomes["outcome"].to_numpy().astype(float)
    codes = outcomes["sample_id"].cast(pl.Categorical).to_physical().to_numpy()
    n_units = int(codes.max()) + 1
    into_pair = np.zeros((len(y), len(i)))
    into_pair[np.arange(len(y)), p] = 1

    def strengths(w: np.ndarray) -> np.ndarray:
        wins = (w * y) @ into_pair + _BT_PSEUDO_TIES / 2
        games = w @ into_pair + _BT_PSEUDO_TIES
        theta = _bradley_terry_mm(wins, games, i, j, len(models))
        return theta - theta[:, [index[reference]]]

    point = strengths(np.ones((1, len(y))))[0]
    boot = np.concatenate(
        [strengths(c[:, codes].astype(float)) for c in bootstrap_counts(n_units, draws, seed=seed)]
    )
    warn = []
    graph = {m: {m} for m in models}
    for a, b in pair_keys.iter_rows():
        merged = graph[a] | graph[b]
        for m in merged:
            graph[m] = merged
    if len(graph[reference]) < len(models):
        warn.append("the comparison graph is not connected: strengths across parts are arbitrary")
    return BradleyTerry(
        models=models,
        reference=reference,
        strengths=tuple(
            Interval.from_draws(point[n], boot[:, n], confidence=confidence)
            for n in range(len(models))
        ),
        n_samples=n_units,
        n_comparisons=len(y),
        confidence=confidence,
        draws=draws,
        assumptions=(
            "P(m beats n) = logistic(strength_m - strength_n), the same on every sample",
            f"ties are half a win each; {_BT_PSEUDO_TIES} virtual tie per compared pair keeps "
            "an unbeaten model's strength finite",
        ),
        warnings=tuple(warn),
    )


# --------------------------------------------------------------------------------------------
# Asking a judge
# --------------------------------------------------------------------------------------------

JUDGE_SYSTEM_PROMPT = (
    "You are an impartial judge. You compare two responses to the same user request and decide "
    "which one serves the user better: correct, helpful, safe, and as long as it needs to be "
    "but no longer. The order in which the responses appear and their length must not "
    "influence you. Answer with exactly one of: A, B, tie."
)
_JUDGE_USER = (
    "[User request]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
    "Which response is better? Answer A, B, or tie."
)
_VERDICT_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"verdict": {"type": "string", "enum": ["A", "B", "tie"]}},
            "required": ["verdict"],
            "additionalProperties": False,
        },
    },
}


@dataclass(frozen=True)
class PairToJudge:
    """Two answers to one request: each is shown first once."""

    sample_id: str
    prompt: str
    model_1: str
    output_1: str
    model_2: str
    output_2: str


class _ConstrainedTarget(HttpTarget):
    """An :class:`HttpTarget` whose requests ask for a constrained verdict."""

    def __init__(self, *args: Any, constraint: Constraint, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._constraint = constraint

    def body(self, request: ChatRequest) -> bytes:
        """The target's body plus the constraint (vLLM structured outputs or a JSON schema)."""
        payload = json.loads(super().body(request))
        if self._constraint == "choice":
            payload["structured_outputs"] = {"choice": ["A", "B", "tie"]}
        elif self._constraint == "json_schema":
            payload["response_format"] = _VERDICT_SCHEMA
        return json.dumps(payload).encode()


class JudgeClient:
    """Asks a judge model behind an OpenAI-compatible endpoint to judge pairs in both orders.

    ``constraint``: ``"choice"`` constrains the answer to ``A`` / ``B`` / ``tie`` with vLLM's
    structured outputs (``{"structured_outputs": {"choice": [...]}}``, vLLM >= 0.12),
    ``"json_schema"`` asks for ``{"verdict": ...}`` through OpenAI's ``response_format``, and
    ``"none"`` parses free text (:func:`parse_verdict`). At most ``concurrency`` requests are in
    flight; 429, 5xx, timeouts and dropped connections are retried with backoff (the replay
    target's policy). A request that still fails gives an ``invalid`` verdict. Use as an async
    context manager.
    """

    def __init__(
        self,
        urls: Sequence[str],
        model: str,
        *,
        api_key: str = "",
        constraint: Constraint = "none",
        concurrency: int = 16,
        max_tokens: int = 16,
        max_answer_chars: int = 4000,
        max_retries: int = 4,
        request_timeout_s: float = 120.0,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.constraint = constraint
        self._max_tokens = max_tokens
        self._max_answer_chars = max_answer_chars
        self._limit = asyncio.Semaphore(concurrency)
        self._target = _ConstrainedTarget(
            urls,
            model,
            api_key=api_key,
            concurrency=concurrency,
            max_retries=max_retries,
            request_timeout_s=request_timeout_s,
            seed=seed,
            constraint=constraint,
        )
        self.failed_requests = 0
        """Requests that failed after every retry (their verdicts are ``invalid``)."""

    async def __aenter__(self) -> JudgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._target.aclose()

    def request(self, pair: PairToJudge, *, one_first: bool) -> ChatRequest:
        """The chat that asks for one order's verdict (answers cut to ``max_answer_chars``)."""
        first, second = (
            (pair.output_1, pair.output_2) if one_first else (pair.output_2, pair.output_1)
        )
        cut = self._max_answer_chars
        user = _JUDGE_USER.format(prompt=pair.prompt[:cut], a=first[:cut], b=second[:cut])
        return ChatRequest(
            sample_id=pair.sample_id,
            messages=(("system", JUDGE_SYSTEM_PROMPT), ("user", user)),
            temperature=0.0,
            max_tokens=self._max_tokens,
        )

    async def _verdict(self, pair: PairToJudge, *, one_first: bool) -> dict[str, Any]:
        async with self._limit:
            done = await self._target.complete(self.request(pair, one_first=one_first))
        if done.status != "ok":
            self.failed_requests += 1
        a, b = (pair.model_1, pair.model_2) if one_first else (pair.model_2, pair.model_1)
        return {
            "sample_id": pair.sample_id,
            "judge_model": self.model,
            "model_a": a,
            "model_b": b,
            "order": "ab" if one_first else "ba",
            "verdict": parse_verdict(done.output) if done.status == "ok" else "invalid",
            "judged_at": dt.datetime.now(dt.UTC),
        }

    async def judge(self, pairs: Sequence[PairToJudge], *, run_id: str = "") -> pl.DataFrame:
        """Both orders of every pair, as a ``shadow_judgments`` frame (two rows per pair; order
        ``ab`` shows ``model_1`` first)."""
        rows = await asyncio.gather(
            *(self._verdict(p, one_first=first) for p in pairs for first in (True, False))
        )
        return pl.DataFrame(
            [{"run_id": run_id, **r} for r in rows], schema=SHADOW_JUDGMENT_SCHEMA, orient="row"
        )

    async def judge_run(self, samples: Sequence[Sample], results: pl.DataFrame) -> pl.DataFrame:
        """Judge a stored run: each candidate answer against the production answer recorded
        for the same (redacted) request, in both orders. Samples without a production answer,
        or whose candidate request failed, are not judged. The production side is named by its
        model version, as :func:`shadow.compare_shadow` expects."""
        prompts = {s.sample_id: (s.messages[-1][1], s.model_version) for s in samples}
        answered = results.filter(
            (pl.col("arm") == "candidate")
            & (pl.col("status") == "ok")
            & pl.col("production_output").is_not_null()
        )
        pairs = [
            PairToJudge(
                sample_id=row["sample_id"],
                prompt=prompts[row["sample_id"]][0],
                model_1=row["model"],
                output_1=row["output"],
                model_2=prompts[row["sample_id"]][1],
                output_2=row["production_output"],
            )
            for row in answered.iter_rows(named=True)
            if row["sample_id"] in prompts
        ]
        run_ids = results["run_id"].unique().to_list()
        return await self.judge(pairs, run_id=run_ids[0] if run_ids else "")
