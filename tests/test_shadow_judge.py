"""Pairwise judging: verdict parsing, the both-orders protocol, raw and length-controlled win
rates on constructed data with a known answer, Bradley-Terry, and the client on a real vLLM."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import Counter

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from hypothesis import given
from hypothesis import strategies as st

from shadow import (
    JudgeClient,
    PairToJudge,
    compare_pairwise,
    fit_bradley_terry,
    judgment_outcomes,
    parse_verdict,
)
from shadow.judge import _fit_logistic_batch
from warehouse import SHADOW_JUDGMENT_SCHEMA

from fault_proxy import FaultProxy

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def judgments(rows: list[tuple[str, str, str, str]], judge: str = "judge") -> pl.DataFrame:
    """(sample_id, model shown first, model shown second, verdict) as a judgments frame."""
    return pl.DataFrame(
        [
            ("run", s, judge, a, b, "ab" if a < b else "ba", v, T0 + dt.timedelta(seconds=k))
            for k, (s, a, b, v) in enumerate(rows)
        ],
        schema=SHADOW_JUDGMENT_SCHEMA,
        orient="row",
    )


def simulated(
    n: int, *, quality: float, length_effect: float, verbosity: float, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A judge whose per-order preference for the candidate is
    ``logistic(quality + length_effect * tanh(delta_len / sd))``, drawn independently in each
    order (so the expected outcome, ties counting half, is that probability). The candidate's
    answers are ``exp(verbosity)`` times as long as the baseline's, with spread."""
    rng = np.random.default_rng(seed)
    base_len = rng.lognormal(6.0, 0.6, n).round()
    cand_len = (base_len * np.exp(rng.normal(verbosity, 0.6, n))).round()
    delta = cand_len - base_len
    p = 1 / (1 + np.exp(-(quality + length_effect * np.tanh(delta / delta.std(ddof=1)))))
    rows = []
    for i in range(n):
        for first, second in (("cand", "base"), ("base", "cand")):
            cand_wins = rng.random() < p[i]
            rows.append((f"s{i}", first, second, "A" if cand_wins == (first == "cand") else "B"))
    lengths = pl.DataFrame(
        {"sample_id": [f"s{i}" for i in range(n)], "candidate_length": cand_len,
         "baseline_length": base_len}
    )  # fmt: skip
    return judgments(rows), lengths


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("A", "A"), ("b", "B"), (" tie ", "tie"), ("'A'", "A"), ("**B**", "B"), ("[[A]]", "A"),
        ("[[C]]", "tie"), ('{"verdict": "B"}', "B"), ('{"verdict": "tie"}', "tie"),
        ("Verdict: A", "A"), ("The better response is B.", "B"), ("Final answer: tie", "tie"),
        ("A. It is more accurate and shorter.", "A"), ("Response B", "B"), ("(A)", "A"),
        ("Tie - both are fine.", "tie"), ("Both are equally good.", "tie"),
        ("", "invalid"), ("I cannot decide.", "invalid"),
        ("A and B are both wrong, so [[A]] [[B]]", "invalid"),
        ("Answer: A ... actually the answer is B", "invalid"), ("Apples are nice", "invalid"),
        ('{"verdict": 3', "invalid"), ("As an AI I prefer neither", "invalid"),
    ],
)  # fmt: skip
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@given(st.text(max_size=200))
def test_parse_verdict_always_answers_one_of_four(text):
    assert parse_verdict(text) in ("A", "B", "tie", "invalid")


# --------------------------------------------------------------------------------------------
# The both-orders protocol
# --------------------------------------------------------------------------------------------


def test_outcome_needs_agreement_in_both_orders():
    frame = judgments(
        [
            ("agree", "cand", "base", "A"), ("agree", "base", "cand", "B"),  # cand both times
            ("flip", "cand", "base", "A"), ("flip", "base", "cand", "A"),  # position bias
            ("half", "cand", "base", "A"), ("half", "base", "cand", "tie"),  # win + tie
            ("both_tie", "cand", "base", "tie"), ("both_tie", "base", "cand", "tie"),
            ("lost", "cand", "base", "B"), ("lost", "base", "cand", "A"),
            ("broken", "cand", "base", "A"), ("broken", "base", "cand", "invalid"),
            ("one_order", "cand", "base", "A"),
        ]
    )  # fmt: skip
    out = {r["sample_id"]: r for r in judgment_outcomes(frame).iter_rows(named=True)}
    # model_1 is "base" (alphabetical): outcomes are base's scores
    assert out["agree"]["outcome"] == 0.0 and out["agree"]["consistent"]
    assert out["flip"]["outcome"] == 0.5 and not out["flip"]["consistent"]
    assert out["half"]["outcome"] == 0.5 and not out["half"]["consistent"]
    assert out["both_tie"]["outcome"] == 0.5 and out["both_tie"]["consistent"]
    assert out["lost"]["outcome"] == 1.0
    assert out["broken"]["outcome"] is None and not out["broken"]["complete"]
    assert out["one_order"]["outcome"] is None

    result = compare_pairwise(frame, candidate="cand", baseline="base", draws=200)
    assert (result.wins, result.losses, result.ties) == (1, 1, 3)
    assert (result.n_samples, result.incomplete, result.inconsistent) == (5, 2, 2)
    assert result.invalid_judgments == 1
    assert result.consistency_rate == pytest.approx(3 / 5)
    assert result.win_rate.value == pytest.approx((1 + 0 + 0.5 * 3) / 5)


def test_rejudging_keeps_the_latest_verdict():
    frame = judgments(
        [("s", "cand", "base", "B"), ("s", "base", "cand", "B"), ("s", "cand", "base", "A")]
    )
    (row,) = judgment_outcomes(frame).iter_rows(named=True)
    assert row["outcome"] == 0.0  # base's score: cand won both latest verdicts


def test_a_judge_that_always_says_a_yields_only_ties():
    rows = [
        (f"s{i}", *order, "A") for i in range(300) for order in (("cand", "base"), ("base", "cand"))
    ]
    result = compare_pairwise(judgments(rows), candidate="cand", baseline="base", draws=500)
    assert result.ties == result.n_samples == 300
    assert result.consistency_rate == 0.0
    assert result.win_rate.value == 0.5
    assert result.win_rate.ci_low == result.win_rate.ci_high == 0.5
    assert any("position" in w for w in result.warnings)


# --------------------------------------------------------------------------------------------
# Length control (known answers)
# --------------------------------------------------------------------------------------------


def test_a_model_that_wins_only_by_length_loses_its_edge_under_length_control():
    frame, lengths = simulated(2000, quality=0.0, length_effect=2.0, verbosity=0.7, seed=1)
    result = compare_pairwise(frame, candidate="cand", baseline="base", lengths=lengths)
    assert result.win_rate.ci_low > 0.6  # raw: clearly ahead
    assert result.lc_win_rate.covers(0.5)
    assert result.lc_win_rate.half_width < 0.06
    assert result.length_coef.covers(2.0) and result.length_coef.ci_low > 1.0
    assert any("length control moved" in w for w in result.warnings)


def test_a_genuinely_better_model_keeps_its_edge():
    frame, lengths = simulated(2000, quality=0.8, length_effect=0.0, verbosity=0.7, seed=2)
    result = compare_pairwise(frame, candidate="cand", baseline="base", lengths=lengths)
    truth = 1 / (1 + math.exp(-0.8))
    assert result.lc_win_rate.covers(truth) and result.lc_win_rate.ci_low > 0.6
    assert result.win_rate.covers(truth)
    assert result.length_coef.covers(0.0)


def test_better_and_verbose_keeps_only_the_quality_part():
    frame, lengths = simulated(3000, quality=0.5, length_effect=1.5, verbosity=0.5, seed=3)
    result = compare_pairwise(frame, candidate="cand", baseline="base", lengths=lengths)
    assert result.lc_win_rate.covers(1 / (1 + math.exp(-0.5)))
    assert result.win_rate.ci_low > result.lc_win_rate.ci_high


def test_the_baseline_view_is_the_mirror_image():
    frame, lengths = simulated(500, quality=0.6, length_effect=1.0, verbosity=0.5, seed=4)
    mirrored = lengths.rename(
        {"candidate_length": "baseline_length", "baseline_length": "candidate_length"}
    )
    ahead = compare_pairwise(frame, candidate="cand", baseline="base", lengths=lengths, draws=300)
    behind = compare_pairwise(frame, candidate="base", baseline="cand", lengths=mirrored, draws=300)
    assert ahead.win_rate.value == pytest.approx(1 - behind.win_rate.value)
    assert ahead.lc_win_rate.value == pytest.approx(1 - behind.lc_win_rate.value, abs=1e-6)
    assert (ahead.wins, ahead.losses) == (behind.losses, behind.wins)


def test_vectorised_fit_matches_statsmodels():
    rng = np.random.default_rng(7)
    x = np.tanh(rng.normal(size=400))
    y = rng.choice([0.0, 0.5, 1.0], size=400, p=[0.3, 0.2, 0.5])
    w = rng.integers(0, 3, size=(3, 400)).astype(float)
    batch = _fit_logistic_batch(np.broadcast_to(x, w.shape), y, w)
    for row, weights in zip(batch, w, strict=True):
        ref = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial(), freq_weights=weights)
        np.testing.assert_allclose(row, ref.fit().params, rtol=1e-7, atol=1e-9)


def test_bootstrap_is_seeded():
    frame, lengths = simulated(300, quality=0.3, length_effect=1.0, verbosity=0.4, seed=5)
    runs = [
        compare_pairwise(
            frame, candidate="cand", baseline="base", lengths=lengths, draws=400, seed=s
        )
        for s in (9, 9, 10)
    ]
    assert runs[0] == runs[1]
    assert runs[0].lc_win_rate != runs[2].lc_win_rate


def test_summary_and_frame():
    frame, lengths = simulated(200, quality=0.3, length_effect=1.0, verbosity=0.4, seed=6)
    result = compare_pairwise(frame, candidate="cand", baseline="base", lengths=lengths, draws=200)
    for fmt in ("text", "markdown", "html"):
        text = result.summary(fmt)
        assert "length-controlled win rate" in text and "cand vs base" in text
    table = result.to_frame()
    assert table.filter(pl.col("term") == "lc_win_rate")["value"][0] == result.lc_win_rate.value
    with pytest.raises(ValueError):
        result.summary("pdf")


def test_no_lengths_means_no_length_control():
    frame, _ = simulated(100, quality=0.3, length_effect=0.0, verbosity=0.0, seed=8)
    result = compare_pairwise(frame, candidate="cand", baseline="base", draws=100)
    assert math.isnan(result.lc_win_rate.value) and not math.isnan(result.win_rate.value)


# --------------------------------------------------------------------------------------------
# Bradley-Terry
# --------------------------------------------------------------------------------------------


def test_bradley_terry_recovers_planted_strengths():
    planted = {"alpha": 0.0, "beta": 0.6, "gamma": 1.2, "delta": -0.7}
    models = sorted(planted)
    rng = np.random.default_rng(11)
    rows = []
    for s in range(1500):
        a, b = rng.choice(models, size=2, replace=False)
        p = 1 / (1 + math.exp(-(planted[a] - planted[b])))
        for first, second in ((a, b), (b, a)):
            a_wins = rng.random() < p
            rows.append((f"s{s}", first, second, "A" if a_wins == (first == a) else "B"))
    bt = fit_bradley_terry(judgments(rows), reference="alpha", draws=1000)
    assert bt.strength("alpha").value == 0.0
    for m in models:
        assert bt.strength(m).covers(planted[m]), (m, bt.strength(m), planted[m])
        assert abs(bt.strength(m).value - planted[m]) < 0.2
    assert bt.to_frame()["model"].to_list() == ["gamma", "beta", "alpha", "delta"]
    assert "gamma" in bt.summary("markdown")


def test_bradley_terry_of_two_models_matches_their_win_rate():
    frame, _ = simulated(600, quality=0.7, length_effect=0.0, verbosity=0.0, seed=12)
    bt = fit_bradley_terry(frame, reference="base", draws=300)
    pairwise = compare_pairwise(frame, candidate="cand", baseline="base", draws=300)
    p = 1 / (1 + math.exp(-bt.strength("cand").value))
    assert p == pytest.approx(pairwise.win_rate.value, abs=0.01)


def test_bradley_terry_warns_when_models_are_not_all_connected():
    rows = [
        ("s1", "a", "b", "A"),
        ("s1", "b", "a", "B"),
        ("s2", "c", "d", "A"),
        ("s2", "d", "c", "B"),
    ]
    bt = fit_bradley_terry(judgments(rows), draws=50)
    assert any("not connected" in w for w in bt.warnings)
    assert all(math.isfinite(s.value) for s in bt.strengths)


# --------------------------------------------------------------------------------------------
# The client, against a real vLLM server (random weights: the machinery is tested, not words)
# --------------------------------------------------------------------------------------------


def _pairs(n: int) -> list[PairToJudge]:
    return [
        PairToJudge(
            sample_id=f"s{i}",
            prompt=f"How do I deduplicate a list in Python? ({i})",
            model_1="candidate",
            output_1="Use dict.fromkeys(items) to keep the order: list(dict.fromkeys(items)).",
            model_2="production",
            output_2="Convert it to a set: list(set(items)). The order is lost.",
        )
        for i in range(n)
    ]


def test_client_returns_valid_verdicts_in_both_orders(vllm_server):
    pairs = _pairs(12)

    async def go() -> tuple[pl.DataFrame, int, list, int]:
        with FaultProxy(vllm_server.base_url) as proxy:
            async with JudgeClient(
                [proxy.base_url], vllm_server.model, constraint="choice", concurrency=3
            ) as client:
                frame = await client.judge(pairs, run_id="run-1")
            return frame, client.failed_requests, proxy.seen, proxy.max_in_flight

    frame, failed, seen, max_in_flight = asyncio.run(go())
    assert failed == 0
    assert frame.schema == pl.Schema(SHADOW_JUDGMENT_SCHEMA)
    assert frame.height == 2 * len(pairs)
    assert set(frame["verdict"]) <= {"A", "B", "tie"}
    assert set(frame["run_id"]) == {"run-1"} and set(frame["judge_model"]) == {vllm_server.model}
    orders = Counter(zip(frame["model_a"], frame["order"], strict=True))
    assert orders == {("candidate", "ab"): 12, ("production", "ba"): 12}
    chats = [s for s in seen if s.path.endswith("/chat/completions")]
    assert all(s.body["structured_outputs"] == {"choice": ["A", "B", "tie"]} for s in chats)
    assert all(s.body["temperature"] == 0.0 and "tools" not in s.body for s in chats)
    assert 1 <= max_in_flight <= 3
    result = compare_pairwise(frame, candidate="candidate", baseline="production", draws=200)
    assert result.n_samples == len(pairs) and result.invalid_judgments == 0


def test_client_retries_429_and_5xx_and_reports_what_failed(vllm_server):
    pairs = _pairs(6)
    faults = {"s0": "429", "s1": "503", "s2": "drop", "s5": "400"}

    async def go() -> tuple[pl.DataFrame, int]:
        with FaultProxy(
            vllm_server.base_url,
            lambda sid, attempt: faults.get(sid) if attempt == 1 or sid == "s5" else None,
        ) as proxy:
            async with JudgeClient(
                [proxy.base_url], vllm_server.model, constraint="choice", concurrency=1
            ) as client:
                return await client.judge(pairs), client.failed_requests

    frame, failed = asyncio.run(go())
    verdicts = dict(
        zip(zip(frame["sample_id"], frame["order"], strict=True), frame["verdict"], strict=True)
    )
    assert failed == 2  # s5's two requests: 400 is terminal
    assert verdicts[("s5", "ab")] == verdicts[("s5", "ba")] == "invalid"
    assert all(v in ("A", "B", "tie") for (sid, _), v in verdicts.items() if sid != "s5")
