"""The real vLLM server (CPU build) and tiny model the shadow tests run against.

These check what the shadow runner and judges rely on: token usage in plain and streamed
replies, the running-requests gauge on ``/metrics``, the in-process ``vllm.LLM`` path giving the
server's greedy text, and structured output limited to a choice list (a valid verdict even from
random weights).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiny_model import build_tiny_model
from vllm_server import VLLM_TEST_ENV, VllmServer, request_latency_totals, running_requests

PROMPTS: list[str] = [
    "How do I sort a list in Python?",
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Summarise: the meeting moved to Tuesday at 10am.",
]
VERDICTS = ["A", "B", "tie"]

pytestmark = pytest.mark.vllm


def _messages(prompt: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": prompt},
    ]


@pytest.fixture(scope="module")
def client(vllm_server: VllmServer) -> Iterator[Any]:
    """An OpenAI client pointed at the test server (openai comes with vLLM)."""
    import openai

    with openai.OpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def _greedy(client: Any, model: str, prompt: str, **extra: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=_messages(prompt), max_tokens=16, temperature=0, **extra
    )


def _metrics(server: VllmServer) -> str:
    import httpx

    return httpx.get(server.metrics_url, timeout=10).text


def test_chat_completion_reports_usage(vllm_server, client):
    from transformers import AutoTokenizer

    reply = _greedy(client, vllm_server.model, PROMPTS[0], extra_body={"ignore_eos": True})

    tokenizer = AutoTokenizer.from_pretrained(vllm_server.model_dir)
    prompt_ids = tokenizer.apply_chat_template(
        _messages(PROMPTS[0]), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert reply.model == vllm_server.model
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == 16
    assert reply.usage.total_tokens == len(prompt_ids) + 16
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content


def test_streaming_gives_content_chunks_then_a_usage_chunk(vllm_server, client):
    stream = client.chat.completions.create(
        model=vllm_server.model,
        messages=_messages(PROMPTS[1]),
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)

    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta]
    first_text = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    assert first_text < len(chunks) - 1
    final = chunks[-1]
    assert final.choices == []
    assert final.usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])
    # The streamed text is the same greedy text a plain request gets.
    plain = _greedy(client, vllm_server.model, PROMPTS[1], extra_body={"ignore_eos": True})
    assert "".join(filter(None, content)) == plain.choices[0].message.content


def test_running_requests_gauge_follows_requests_in_flight(vllm_server, client):
    assert running_requests(_metrics(vllm_server)) == 0
    in_flight = 4
    stop = threading.Event()

    # The module's client does not retry, for the tests about single requests. Here a pooled
    # connection the server closes as idle just as a request takes it ("Server disconnected
    # without sending a response", seen once in CI) is sent again, as clients do by default.
    busy_client = client.with_options(max_retries=2)

    def keep_busy() -> int:
        # Back-to-back requests keep the batch full between scrapes: a scrape the server answers
        # late (its event loop is streaming tokens) still lands while requests run.
        sent = 0
        while not stop.is_set():
            reply = busy_client.chat.completions.create(
                model=vllm_server.model,
                messages=_messages(PROMPTS[2]),
                max_tokens=256,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            assert reply.usage.completion_tokens == 256
            sent += 1
        return sent

    seen: list[float] = []
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        workers = [pool.submit(keep_busy) for _ in range(in_flight)]
        try:
            while len(seen) < 10 and time.monotonic() < deadline:
                seen.append(running_requests(_metrics(vllm_server)))
        finally:
            stop.set()
        sent = [w.result() for w in workers]
    assert len(seen) >= 10, f"the gauge was scraped only {len(seen)} times in 120 s"
    assert min(sent) >= 1
    assert max(seen) >= 1
    assert max(seen) <= in_flight
    assert running_requests(_metrics(vllm_server)) == 0


def test_latency_histogram_counts_each_finished_request(vllm_server, client):
    """The benchmark reads the server's mean latency from two scrapes: each request adds one
    to the count and its time on the server, which is within what the client waited."""
    seconds_before, count_before = request_latency_totals(_metrics(vllm_server))
    started = time.perf_counter()
    for prompt in PROMPTS[:3]:
        _greedy(client, vllm_server.model, prompt, extra_body={"ignore_eos": True})
    waited = time.perf_counter() - started
    seconds_after, count_after = request_latency_totals(_metrics(vllm_server))
    assert count_after - count_before == 3
    assert 0 < seconds_after - seconds_before <= waited


@given(
    values=st.lists(st.integers(min_value=0, max_value=512), min_size=1, max_size=4),
    other=st.integers(min_value=0, max_value=99),
)
def test_running_requests_sums_engines_and_ignores_other_metrics(values, other):
    lines = [
        "# HELP vllm:num_requests_waiting Number of requests waiting.",
        "# TYPE vllm:num_requests_waiting gauge",
        f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {other}.0',
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
    ]
    lines += [
        f'vllm:num_requests_running{{engine="{i}",model_name="m"}} {v}.0'
        for i, v in enumerate(values)
    ]
    assert running_requests("\n".join(lines) + "\n") == sum(values)


def test_running_requests_rejects_a_page_without_the_gauge():
    with pytest.raises(ValueError, match="vllm:num_requests_running"):
        running_requests("# TYPE up gauge\nup 1.0\n")


def test_in_process_llm_gives_the_servers_greedy_text(vllm_server, client, monkeypatch):
    for name, value in VLLM_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    import vllm

    served = [_greedy(client, vllm_server.model, p).choices[0] for p in PROMPTS]

    llm = vllm.LLM(
        model=str(vllm_server.model_dir),
        dtype="float32",
        max_model_len=vllm_server.max_model_len,
        enforce_eager=True,
        seed=0,
    )
    try:
        outputs = llm.chat(
            [_messages(p) for p in PROMPTS],
            vllm.SamplingParams(temperature=0, max_tokens=16),
            use_tqdm=False,
        )
    finally:
        llm.llm_engine.engine_core.shutdown()

    in_process = [o.outputs[0] for o in outputs]
    assert all(c.message.content for c in served)  # the comparison below is not of empty texts
    assert [o.text for o in in_process] == [c.message.content for c in served]
    assert [o.finish_reason for o in in_process] == [c.finish_reason for c in served]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_structured_output_choice_yields_a_valid_verdict(vllm_server, client, prompt):
    reply = _greedy(
        client, vllm_server.model, prompt, extra_body={"structured_outputs": {"choice": VERDICTS}}
    )
    assert reply.choices[0].message.content in VERDICTS


def test_unconstrained_reply_is_not_a_verdict(vllm_server, client):
    # Guards the test above: with random weights, the choice constraint is what makes a verdict.
    replies = [_greedy(client, vllm_server.model, p).choices[0].message.content for p in PROMPTS]
    assert not set(replies) & set(VERDICTS)


def test_tiny_model_build_is_reproducible(tiny_model_dir, tmp_path):
    rebuilt = build_tiny_model(tmp_path / "tiny-llama")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (rebuilt / name).read_bytes() == (Path(tiny_model_dir) / name).read_bytes(), name
