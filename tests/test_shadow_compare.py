"""The shadow comparison on constructed results with known answers: figures, the Diffy-style
noise floor, segments, expected answers, prices and the judge's win rates."""

from __future__ import annotations

import datetime as dt
import math
import re

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shadow import ShadowComparison, compare_shadow, expected_passes, load_prices
from shadow.errors import TerminalShadowError
from shadow.prices import ModelPrice, PriceTable
from warehouse import SHADOW_JUDGMENT_SCHEMA, SHADOW_RESULT_SCHEMA

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
PRICES = PriceTable({"cand": ModelPrice(1.0, 4.0), "prod": ModelPrice(2.0, 8.0)})
REFUSAL = "I can't help with that request."


def row(sample: str, arm: str, **over) -> dict:
    """One shadow_results row with plain defaults (an ok answer of 100 characters)."""
    base = {
        "run_id": "run", "sample_id": sample, "arm": arm,
        "model": "cand" if arm == "candidate" else "prod", "intent": "qa", "locale": "en-US",
        "platform": "web", "cohort": "new", "status": "ok", "error": None, "attempts": 1,
        "ttft_ms": 50.0, "tpot_ms": 10.0, "latency_ms": 500.0, "prompt_tokens": 100,
        "completion_tokens": 50, "finish_reason": "stop", "output": "x" * 100,
        "production_output": "y" * 100, "production_completion_tokens": 50,
        "production_latency_ms": 700.0, "expected": None, "started_at": T0,
    }  # fmt: skip
    return base | over


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SHADOW_RESULT_SCHEMA, orient="row")


def figure(result: ShadowComparison, name: str, segment: str = "all") -> dict:
    (r,) = result.figures.filter(pl.col("figure") == name, pl.col("segment") == segment).to_dicts()
    return r


def noisy(
    n: int,
    *,
    cand_ratio: float,
    replay_ratio: float | None,
    cand_refusal: float = 0.02,
    prod_refusal: float = 0.02,
    cand_latency: float = 500.0,
    seed: int = 0,
) -> pl.DataFrame:
    """``n`` samples: production answers of random length; each arm's answer is ``ratio`` times
    as long with 10 % spread; refusals at the given rates; lognormal latencies."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        prod_len = int(rng.integers(200, 2000))
        prod_refused = rng.random() < prod_refusal
        prod = REFUSAL if prod_refused else "p" * prod_len
        arms = [("candidate", cand_ratio, cand_refusal, cand_latency)]
        if replay_ratio is not None:
            arms.append(("baseline_replay", replay_ratio, prod_refusal, 500.0))
        for arm, ratio, refusal, latency in arms:
            length = max(1, int(prod_len * ratio * rng.normal(1, 0.1)))
            out = REFUSAL if rng.random() < refusal else "a" * length
            rows.append(row(f"s{i}", arm, output=out, production_output=prod,
                            latency_ms=latency * rng.lognormal(0, 0.3),
                            intent="coding" if i % 2 else "qa"))  # fmt: skip
    return frame(rows)


# --------------------------------------------------------------------------------------------
# Exact figures on a small frame
# --------------------------------------------------------------------------------------------


def test_figures_on_a_small_frame_are_exact():
    rows = [
        row("s1", "candidate", output="x" * 200, latency_ms=100.0, completion_tokens=80),
        row("s2", "candidate", output="x" * 50, latency_ms=300.0, completion_tokens=20),
        row("s3", "candidate", output=REFUSAL, latency_ms=200.0, completion_tokens=10),
        row("s4", "candidate", status="error", output="", latency_ms=None, completion_tokens=0),
        row("s1", "baseline_replay", latency_ms=150.0),
        row("s2", "baseline_replay", latency_ms=150.0),
        row("s3", "baseline_replay", latency_ms=150.0),
        row("s4", "baseline_replay", status="timeout", output="", latency_ms=None),
    ]
    result = compare_shadow(frame(rows), prices=PRICES, draws=200)
    ratio = {"s1": 2.0, "s2": 0.5, "s3": len(REFUSAL) / 100}
    assert figure(result, "length_ratio_mean")["candidate"] == pytest.approx(
        np.mean(list(ratio.values()))
    )
    assert figure(result, "length_ratio_median")["candidate"] == 0.5
    assert figure(result, "length_ratio_median")["production"] == 1.0
    assert figure(result, "refusal_rate")["candidate"] == pytest.approx(1 / 3)
    assert figure(result, "refusal_rate")["production"] == 0.0
    assert figure(result, "error_rate")["candidate"] == 0.25
    assert figure(result, "timeout_rate")["baseline_replay"] == 0.25
    assert figure(result, "latency_ms_p50")["candidate"] == 200.0
    assert figure(result, "latency_ms_p99")["candidate"] == 300.0
    assert figure(result, "latency_ms_p50")["production"] == 700.0
    assert figure(result, "completion_tokens_mean")["candidate"] == pytest.approx(110 / 3)
    # cost per 1k requests: (100 * 1 + tokens * 4) / 1e6 per request, x 1000
    expected_cost = np.mean([(100 + t * 4) / 1e6 for t in (80, 20, 10)]) * 1000
    assert figure(result, "cost_per_1k_usd")["candidate"] == pytest.approx(expected_cost)
    assert figure(result, "cost_per_1k_usd")["baseline_replay"] == pytest.approx((200 + 400) / 1e3)
    assert figure(result, "latency_ms_p50")["difference"] == pytest.approx(50.0)
    assert result.n_samples == 4 and result.baseline_model == "prod"


# --------------------------------------------------------------------------------------------
# The noise floor
# --------------------------------------------------------------------------------------------


def test_a_real_length_change_beats_the_noise_floor():
    result = compare_shadow(noisy(400, cand_ratio=1.5, replay_ratio=1.0), prices=PRICES)
    f = figure(result, "length_ratio_median")
    assert f["difference"] == pytest.approx(0.5, abs=0.05)
    assert abs(f["noise"]) < 0.05
    assert f["excess_ci_low"] > 0.4
    assert f["real"]


def test_a_change_the_replay_shows_too_is_noise():
    # every replay is 10 % longer than production (say a changed system prompt): so is the
    # candidate's, and that is not the candidate's doing
    result = compare_shadow(noisy(400, cand_ratio=1.1, replay_ratio=1.1, seed=1), prices=PRICES)
    f = figure(result, "length_ratio_median")
    assert f["difference_ci_low"] > 0  # different from production...
    assert f["noise"] == pytest.approx(0.1, abs=0.03)
    assert f["excess_ci_low"] < 0 < f["excess_ci_high"]
    assert not f["real"]  # ...but no more than production differs from itself


def test_moving_as_far_the_other_way_as_the_replay_is_noise_too():
    result = compare_shadow(noisy(400, cand_ratio=1.1, replay_ratio=0.9, seed=11), prices=PRICES)
    f = figure(result, "length_ratio_median")
    assert f["difference_ci_low"] > 0 and f["noise_ci_high"] < 0
    assert not f["real"]


def test_without_a_baseline_replay_differences_are_tested_against_zero_only():
    result = compare_shadow(noisy(400, cand_ratio=1.1, replay_ratio=None, seed=1), prices=PRICES)
    f = figure(result, "length_ratio_median")
    assert f["real"] and math.isnan(f["noise"]) and math.isnan(f["excess"])
    assert any("no noise floor" in w for w in result.warnings)
    assert math.isnan(figure(result, "latency_ms_p50")["difference"])
    assert not figure(result, "latency_ms_p50")["real"]


def test_refusal_rate_change_is_real_and_unchanged_rate_is_not():
    worse = compare_shadow(noisy(800, cand_ratio=1.0, replay_ratio=1.0, cand_refusal=0.15, seed=2),
                           prices=PRICES)  # fmt: skip
    f = figure(worse, "refusal_rate")
    assert f["difference"] == pytest.approx(0.13, abs=0.04) and f["real"]
    same = compare_shadow(noisy(800, cand_ratio=1.0, replay_ratio=1.0, seed=3), prices=PRICES)
    assert not figure(same, "refusal_rate")["real"]


def test_serving_figures_compare_with_the_replay():
    slow = compare_shadow(noisy(300, cand_ratio=1.0, replay_ratio=1.0, cand_latency=1000.0, seed=4),
                          prices=PRICES)  # fmt: skip
    f = figure(slow, "latency_ms_p50")
    assert f["versus"] == "baseline_replay"
    assert f["difference"] == pytest.approx(500.0, rel=0.15) and f["real"]
    same = compare_shadow(noisy(300, cand_ratio=1.0, replay_ratio=1.0, seed=5), prices=PRICES)
    g = figure(same, "latency_ms_p50")
    assert g["difference_ci_low"] < 0 < g["difference_ci_high"] and not g["real"]


def test_segments_locate_the_change():
    rows = []
    rng = np.random.default_rng(6)
    for i in range(400):
        intent = "coding" if i % 2 else "qa"
        ratio = 2.0 if intent == "coding" else 1.0
        prod_len = int(rng.integers(200, 2000))
        for arm, r in (("candidate", ratio), ("baseline_replay", 1.0)):
            rows.append(row(f"s{i}", arm, intent=intent, production_output="p" * prod_len,
                            output="a" * int(prod_len * r * rng.normal(1, 0.1))))  # fmt: skip
    result = compare_shadow(frame(rows), prices=PRICES, segment="intent", draws=1000)
    assert set(result.figures["segment"]) == {"all", "coding", "qa"}
    assert figure(result, "length_ratio_median", "coding")["real"]
    assert not figure(result, "length_ratio_median", "qa")["real"]
    assert figure(result, "length_ratio_mean", "coding")["candidate"] == pytest.approx(
        2.0, abs=0.05
    )
    assert figure(result, "length_ratio_mean", "all")["samples"] == 400
    assert figure(result, "length_ratio_mean", "qa")["samples"] == 200


# --------------------------------------------------------------------------------------------
# Expected answers
# --------------------------------------------------------------------------------------------


def test_expected_answers_exact_and_regex():
    assert expected_passes("  Paris\n", "paris")
    assert expected_passes("The answer is 42.", "re:\\b42\\b")
    assert not expected_passes("The answer is 421.", "re:\\b42\\b")
    assert not expected_passes("Paris, France", "paris")
    assert expected_passes("x", "re:(") is None
    assert expected_passes(None, "paris") is False


@given(st.text(max_size=60))
def test_an_answer_always_matches_itself(text):
    assert expected_passes(text, text)
    assert expected_passes(text, "re:" + re.escape(text))


def test_expected_pass_rate_against_production():
    rows = []
    for i in range(6):
        ok = i < 4  # candidate right on 4 of 6, production on 2 of 6
        answer = ("42" if i % 2 else "Paris") if ok else "no idea"
        production = ("41" if i % 2 else "paris") if i < 2 else "no"
        expected = "re:^4\\d$" if i % 2 else "paris"
        rows.append(row(f"s{i}", "candidate", expected=expected, output=answer,
                        production_output=production))  # fmt: skip
    rows.append(row("s9", "candidate", expected="re:(", output="x"))
    result = compare_shadow(frame(rows), prices=PRICES, draws=200)
    f = figure(result, "expected_pass_rate")
    assert f["candidate"] == pytest.approx(4 / 6) and f["production"] == pytest.approx(2 / 6)
    assert any("do not compile" in w for w in result.warnings)


# --------------------------------------------------------------------------------------------
# Judge win rates in the report
# --------------------------------------------------------------------------------------------


def _judgments(pairs: list[tuple[str, str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [("run", s, "judge", a, b, "ab", v, T0) for s, a, b, v in pairs],
        schema=SHADOW_JUDGMENT_SCHEMA,
        orient="row",
    )


def test_judge_win_rates_overall_and_by_segment():
    results = noisy(200, cand_ratio=1.0, replay_ratio=1.0, seed=7)
    pairs = []
    for i in range(200):
        # the candidate wins every coding sample in both orders; qa is a tie (position bias)
        win = i % 2 == 1
        pairs += [(f"s{i}", "cand", "prod", "A"), (f"s{i}", "prod", "cand", "B" if win else "A")]
    result = compare_shadow(results, _judgments(pairs), prices=PRICES, segment="intent", draws=500)
    assert result.judge is not None
    assert result.judge.win_rate.value == pytest.approx(0.75)
    assert result.judge.consistency_rate == pytest.approx(0.5)
    assert result.judge_by_segment["coding"].win_rate.value == 1.0
    assert result.judge_by_segment["qa"].win_rate.value == 0.5
    assert not math.isnan(result.judge.lc_win_rate.value)
    assert result.bradley_terry is None
    text = result.summary("markdown")
    assert "judge win rates by segment" in text and "length-controlled" in text


def test_three_models_get_bradley_terry():
    results = noisy(60, cand_ratio=1.0, replay_ratio=1.0, seed=8)
    pairs = []
    for i in range(60):
        for a, b in (("cand", "prod"), ("cand", "other"), ("prod", "other")):
            pairs += [(f"s{i}", a, b, "A"), (f"s{i}", b, a, "B")]  # a beats b in both orders
    result = compare_shadow(results, _judgments(pairs), prices=PRICES, draws=200)
    bt = result.bradley_terry
    assert bt is not None and bt.reference == "other"
    ranking = bt.to_frame()["model"].to_list()
    assert ranking == ["cand", "prod", "other"]
    assert any("several models" in w for w in result.warnings)


# --------------------------------------------------------------------------------------------
# Prices, errors, rendering
# --------------------------------------------------------------------------------------------


def test_prices_bundled_and_user_overrides(tmp_path):
    bundled = load_prices()
    assert bundled.get("gpt-4o") == ModelPrice(2.5, 10.0)
    user = tmp_path / "prices.toml"
    user.write_text('[models."gpt-4o"]\ninput = 1.0\noutput = 2.0\n[models."our-llama"]\n'
                    "input = 0.05\noutput = 0.1\n")  # fmt: skip
    merged = load_prices(user)
    assert merged.get("gpt-4o") == ModelPrice(1.0, 2.0)
    assert merged.cost("our-llama", 1_000_000, 2_000_000) == pytest.approx(0.25)
    assert merged.get("gpt-4o-mini") == bundled.get("gpt-4o-mini")
    assert load_prices(user, bundled=False).get("gpt-4o-mini") is None
    assert math.isnan(merged.cost("unknown", 1, 1))


@pytest.mark.parametrize(
    "text", ['[models."m"]\ninput = 1\n', '[models."m"]\ninput = "x"\noutput = 1\n',
             '[models."m"]\ninput = -1\noutput = 1\n', "models = 3\n", "not toml ["],
)  # fmt: skip
def test_bad_price_files_say_what_is_wrong(tmp_path, text):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(TerminalShadowError):
        load_prices(path)


def test_unpriced_models_have_no_cost_and_a_warning():
    results = frame([row("s1", "candidate"), row("s1", "baseline_replay")])
    result = compare_shadow(results, prices=PriceTable({}), draws=50)
    assert math.isnan(figure(result, "cost_per_1k_usd")["candidate"])
    assert any("no price" in w for w in result.warnings)


def test_bad_input_is_refused():
    results = frame([row("s1", "candidate"), row("s1", "baseline_replay")])
    with pytest.raises(TerminalShadowError, match="segment"):
        compare_shadow(results, prices=PRICES, segment="user_id")
    with pytest.raises(TerminalShadowError, match="columns"):
        compare_shadow(results.drop("output"), prices=PRICES)
    with pytest.raises(TerminalShadowError, match="candidate"):
        compare_shadow(results.filter(pl.col("arm") == "baseline_replay"), prices=PRICES)


def test_rendering_and_frame():
    result = compare_shadow(noisy(50, cand_ratio=1.3, replay_ratio=1.0, seed=9), prices=PRICES,
                            segment="intent", draws=200)  # fmt: skip
    for fmt in ("text", "markdown", "html"):
        out = result.summary(fmt)
        assert "length_ratio_median" in out and "excess over noise" in out
    assert result.summary("html").startswith("<h2>")
    table = result.to_frame()
    assert {
        "candidate",
        "baseline_replay",
        "production",
        "difference",
        "noise",
        "excess",
        "real",
    } <= set(table.columns)
    assert result.real_differences().height == int(table["real"].sum())


def test_same_seed_same_report():
    data = noisy(100, cand_ratio=1.2, replay_ratio=1.0, seed=10)
    a = compare_shadow(data, prices=PRICES, draws=300, seed=3)
    b = compare_shadow(data, prices=PRICES, draws=300, seed=3)
    assert a.figures.equals(b.figures, null_equal=True)
