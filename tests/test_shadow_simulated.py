"""The demo's simulated candidate: a real OpenAI-compatible HTTP server on 127.0.0.1 that the
replay target and the judge client talk to as they would to vLLM; its answers are labelled,
reproducible, more verbose for the verbose model, and judged with a length bias that the
length-controlled win rate removes."""

from __future__ import annotations

import asyncio

import polars as pl

from shadow import (
    ChatRequest,
    HttpTarget,
    JudgeClient,
    PairToJudge,
    SimulatedEndpoint,
    SimulatedModel,
    compare_pairwise,
)

PROMPTS = [
    f"question {i}: how should I plan step {i} of my project" * (1 + i % 4) for i in range(120)
]


async def _replay(url: str, model: str) -> list:
    async with HttpTarget([url], model, concurrency=16) as target:
        await target.check()
        requests = [
            ChatRequest(f"s{i}", (("user", p),), max_tokens=400) for i, p in enumerate(PROMPTS)
        ]
        return await asyncio.gather(*(target.complete(r) for r in requests))


def test_streamed_answers_are_labelled_reproducible_and_longer_for_the_verbose_model():
    models = (
        SimulatedModel("simulated-candidate", verbosity=1.25, refusal_rate=0.05),
        SimulatedModel("simulated-baseline"),
    )
    with SimulatedEndpoint(*models) as ep:
        cand = asyncio.run(_replay(ep.base_url, "simulated-candidate"))
        again = asyncio.run(_replay(ep.base_url, "simulated-candidate"))
        base = asyncio.run(_replay(ep.base_url, "simulated-baseline"))
    assert all(c.status == "ok" and c.output.startswith("[simulated]") for c in cand)
    assert [c.output for c in cand] == [c.output for c in again]
    assert all(c.ttft_ms is not None and c.completion_tokens > 0 for c in cand)
    ratio = sum(c.completion_tokens for c in cand) / sum(b.completion_tokens for b in base)
    assert 1.1 < ratio < 1.4
    assert 0 < sum("can't help" in c.output for c in cand) < 20


def test_the_simulated_judge_prefers_length_and_length_control_undoes_it():
    judge = SimulatedModel("simulated-judge", judge_length_bias=0.7)
    # the verbose model is longer by a varying margin and otherwise no better
    lengths = [(30 + (i * 7) % 40, 30 + (i * 11) % 25) for i in range(len(PROMPTS))]
    pairs = [
        PairToJudge(f"s{i}", p, "verbose", "word " * a, "plain", "word " * b)
        for i, (p, (a, b)) in enumerate(zip(PROMPTS, lengths, strict=True))
    ]
    with SimulatedEndpoint(judge) as ep:
        client = JudgeClient([ep.base_url], "simulated-judge", constraint="choice")
        judgments = asyncio.run(client.judge(pairs, run_id="r"))
    assert set(judgments["verdict"]) <= {"A", "B", "tie"}
    frame = pl.DataFrame(
        {
            "sample_id": [p.sample_id for p in pairs],
            "candidate_length": [len(p.output_1) for p in pairs],
            "baseline_length": [len(p.output_2) for p in pairs],
        }
    )
    result = compare_pairwise(judgments, candidate="verbose", baseline="plain", lengths=frame)
    assert result.win_rate.value > 0.55
    assert result.lc_win_rate.ci_low < 0.5 < result.lc_win_rate.ci_high
    assert result.length_coef.value > 0
