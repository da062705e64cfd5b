"""Shadow replay: storage, the HTTP and in-process targets, the runner and its CLI, against real
chdb and a real vLLM server (with a fault-injecting proxy between them where faults are needed)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest
from rich.console import Console

import shadow
import warehouse
from warehouse import schema

import shadow_traffic
from fault_proxy import FaultProxy
from shadow_traffic import HANDMADE_INTENT, SINCE, UNTIL, VERSION
from vllm_server import VLLM_TEST_ENV, running_requests

UTC = dt.UTC
REPO = Path(__file__).resolve().parent.parent
WINDOW = {"since": SINCE, "until": UNTIL, "model_versions": [VERSION]}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
PHONE = re.compile(r"\+?\(?\d{2,4}\)?[ -]\d{3,4}[ -]?\d{3,4}")


def _result(sample_id: str, arm: str, *, status: str = "ok", at: int = 0, **over) -> dict:
    row = {
        "run_id": "run-1",
        "sample_id": sample_id,
        "arm": arm,
        "model": "tiny",
        "intent": "coding",
        "locale": "en-US",
        "platform": "web",
        "cohort": "new",
        "status": status,
        "error": None if status == "ok" else "HTTP 503",
        "attempts": 1,
        "ttft_ms": 12.5,
        "tpot_ms": 3.0,
        "latency_ms": 80.0,
        "prompt_tokens": 20,
        "completion_tokens": 16,
        "finish_reason": "length",
        "output": "some words",
        "production_output": "prod words",
        "production_completion_tokens": 40,
        "production_latency_ms": 900.0,
        "expected": None,
        "started_at": dt.datetime(2026, 9, 1, 12, 0, at, tzinfo=UTC),
    }
    row.update(over)
    return row


# =============================================================================
# Storage (migration 3)
# =============================================================================


def test_results_round_trip_and_newest_row_wins(wh):
    rows = [_result("s1", "candidate"), _result("s2", "candidate", status="error")]
    warehouse.insert_shadow_results(wh, pl.DataFrame(rows))
    # A resumed run retries the failure: the newer row replaces the old one.
    warehouse.insert_shadow_results(wh, pl.DataFrame([_result("s2", "candidate", at=5)]))
    got = warehouse.shadow_results(wh, "run-1")
    assert got.columns == list(warehouse.SHADOW_RESULT_SCHEMA)
    assert got.select("sample_id", "status").rows() == [("s1", "ok"), ("s2", "ok")]
    assert got["production_output"].to_list() == ["prod words", "prod words"]
    assert got["error"].to_list() == [None, None]
    done = warehouse.shadow_completed(wh, "run-1")
    assert sorted(done["sample_id"].to_list()) == ["s1", "s2"]
    assert warehouse.shadow_results(wh, "another-run").height == 0


def test_run_state_is_the_newest_row(wh):
    created = dt.datetime(2026, 9, 1, tzinfo=UTC)
    for status in ("running", "cancelled", "running", "done"):
        warehouse.record_shadow_run(
            wh,
            run_id="r",
            created_at=created,
            candidate_model="tiny",
            baseline_model="",
            settings_json="{}",
            status=status,
            sample_size=3,
        )
    run = warehouse.shadow_run(wh, "r")
    assert run is not None and run["status"] == "done" and run["sample_size"] == 3
    assert warehouse.shadow_run(wh, "missing") is None
    listed = warehouse.shadow_runs(wh)
    assert listed.select("run_id", "status", "results").rows() == [("r", "done", 0)]


def test_judgments_round_trip(wh):
    at = dt.datetime(2026, 9, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "run_id": ["r", "r"],
            "sample_id": ["s1", "s1"],
            "judge_model": ["judge", "judge"],
            "model_a": ["cand", "prod"],
            "model_b": ["prod", "cand"],
            "order": ["ab", "ba"],
            "verdict": ["A", "tie"],
            "judged_at": [at, at],
        }
    )
    warehouse.insert_shadow_judgments(wh, frame)
    warehouse.insert_shadow_judgments(wh, frame)  # written twice, counted once
    got = warehouse.shadow_judgments(wh, "r")
    assert got.select("order", "verdict").rows() == [("ab", "A"), ("ba", "tie")]


def test_shadow_tables_replicate_on_a_cluster():
    ddl = schema.render_tables(schema.SHADOW_TABLES, cluster="c1", database="prod")
    for t in schema.SHADOW_TABLES:
        local = next(
            s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS prod.{t.name}_local")
        )
        assert (
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{{database}}/"
            f"{t.name}_local', '{{replica}}', {t.engine_args})" in local
        )
        dist = next(s for s in ddl if s.startswith(f"CREATE TABLE IF NOT EXISTS prod.{t.name} ON"))
        assert f"Distributed(c1, prod, {t.name}_local, {t.shard_key})" in dist
        # Rows of one key must land on one shard for FINAL to replace them.
        key = t.order_by.strip("()").split(", ")
        assert all(
            c in key for c in t.shard_key.removeprefix("cityHash64(").rstrip(")").split(", ")
        )
    single = schema.render_tables(schema.SHADOW_TABLES)
    assert all("ReplacingMergeTree(" in s and "Replicated" not in s for s in single)


# =============================================================================
# Fixtures: a warehouse of simulated traffic (built once, copied per test), runner settings
# =============================================================================


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> Path:
    """A closed embedded warehouse holding one simulated day plus the hand-made conversations."""
    tmp = tmp_path_factory.mktemp("shadow-traffic")
    with warehouse.connect(f"chdb://{tmp}/warehouse") as wh:
        warehouse.migrate(wh)
        shadow_traffic.fill(wh, tmp)
    return tmp / "warehouse"


@pytest.fixture
def traffic_copy(traffic, tmp_path) -> Path:
    """This test's own copy of the traffic warehouse (closed: a subprocess may open it)."""
    dst = tmp_path / "warehouse"
    shutil.copytree(traffic, dst, symlinks=True)  # the Atomic database is a relative symlink
    return dst


@pytest.fixture
def filled(traffic_copy) -> Iterator[warehouse.Warehouse]:
    """This test's copy of the traffic warehouse, open."""
    with warehouse.connect(f"chdb://{traffic_copy}") as wh:
        yield wh


def _settings(url: str, model: str, **over) -> shadow.ShadowSettings:
    base = {
        "candidate_urls": [url],
        "candidate_model": model,
        "concurrency": 8,
        "max_output_tokens": 8,
        "temperature": 0.0,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "write_batch_rows": 4,
        "write_interval_s": 0.1,
    }
    return shadow.ShadowSettings(**{**base, **over})


def _run(wh, settings, samples, run_id="run", *, console=None, **kw) -> shadow.RunSummary:
    """One run; with a ``console``, its progress bar is drawn there."""
    runner = shadow.ShadowRunner(wh, settings, progress=console is not None, console=console)
    return asyncio.run(runner.run(samples, run_id=run_id, **kw))


def _chat(proxy: FaultProxy) -> list:
    return [s for s in proxy.seen if s.path.endswith("/chat/completions")]


def _cli(*args: str, cwd: Path, wait: bool = True, **env: str):
    """Run ``telltale`` as a user does, in its own process group (vLLM's engine processes are
    killed with it if the test gives up)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200",
             **VLLM_TEST_ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    if not wait:
        return process
    try:
        stdout, stderr = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _sample_args(per_stratum: int) -> list[str]:
    return [
        "--since", SINCE.strftime("%Y-%m-%d"), "--until", UNTIL.strftime("%Y-%m-%d"),
        "--model-version", VERSION, "--per-stratum", str(per_stratum), "--seed", "1",
    ]  # fmt: skip


# =============================================================================
# The HTTP target against the real server
# =============================================================================


def test_streaming_captures_ttft_tpot_and_the_servers_usage(vllm_server):
    request = shadow.ChatRequest("s1", (("user", "How do I sort a list?"),), 0.0, 12)

    async def go() -> shadow.Completion:
        async with shadow.HttpTarget([vllm_server.base_url], vllm_server.model) as target:
            await target.check()
            return await target.complete(request)

    got = asyncio.run(go())
    plain = httpx.post(
        f"{vllm_server.base_url}/chat/completions",
        json={"model": vllm_server.model, "messages": [{"role": "user",
              "content": "How do I sort a list?"}], "temperature": 0.0, "max_tokens": 12},
        timeout=120,
    ).json()  # fmt: skip
    assert got.status == "ok" and got.attempts == 1 and got.error is None
    assert got.prompt_tokens == plain["usage"]["prompt_tokens"] > 0
    assert got.completion_tokens == plain["usage"]["completion_tokens"] == 12
    assert got.output == plain["choices"][0]["message"]["content"]
    assert got.finish_reason == "length"
    assert 0 < got.ttft_ms < got.latency_ms
    assert got.tpot_ms is not None and got.tpot_ms > 0


def test_unreachable_or_wrong_endpoint_is_named(vllm_server):
    async def check(url: str, model: str) -> None:
        async with shadow.HttpTarget([url], model) as target:
            await target.check()

    with pytest.raises(shadow.TerminalShadowError, match=r"cannot reach http://127.0.0.1:9/v1"):
        asyncio.run(check("http://127.0.0.1:9/v1", "x"))
    with pytest.raises(shadow.TerminalShadowError, match="not 'other-model'"):
        asyncio.run(check(vllm_server.base_url, "other-model"))


# =============================================================================
# The runner
# =============================================================================


@pytest.mark.parametrize(("concurrency", "per_stratum"), [(4, 6), (40, 16)])
def test_concurrency_cap_holds_at_the_proxy_and_on_the_server(
    vllm_server, filled, concurrency, per_stratum
):
    """The cap holds with one connection pool (4) and across several (40: pools of 16)."""
    samples = shadow.sample_traffic(filled, **WINDOW, per_stratum=per_stratum, seed=1).samples
    running: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            running.append(running_requests(httpx.get(vllm_server.metrics_url).text))

    async def replay(url: str) -> shadow.RunSummary:
        # 256 tokens each, ignore_eos: the engine holds every request long enough for a poll to
        # find it running (with 24 tokens, on a loaded machine, no poll of a whole run did).
        settings = _settings(url, vllm_server.model, concurrency=concurrency, max_output_tokens=256)
        async with shadow.HttpTarget(
            [url], vllm_server.model, concurrency=concurrency, extra_body={"ignore_eos": True}
        ) as target:
            runner = shadow.ShadowRunner(
                filled, settings, targets={"candidate": target}, progress=False
            )
            return await runner.run(samples, run_id="run")

    poller = threading.Thread(target=poll)
    with FaultProxy(vllm_server.base_url) as proxy:
        poller.start()
        try:
            summary = asyncio.run(replay(proxy.base_url))
        finally:
            done.set()
            poller.join()
    assert summary.status == "done" and summary.ok == len(samples) >= 30
    assert len(samples) > concurrency
    # With 40, more than one pool's 16 connections at once: several pools served together.
    floor = 16 if concurrency > 16 else 1
    assert floor < proxy.max_in_flight <= concurrency
    assert max(running) <= concurrency
    if concurrency > 16:
        # With 4 in flight a poll may still miss them; with 40 it finds the engine busy, which
        # shows the gauge is read.
        assert max(running) > 0


def test_429_5xx_and_dropped_connections_are_retried(vllm_server, filled):
    samples = shadow.sample_traffic(filled, **WINDOW, per_stratum=3, seed=2).samples
    kinds = ("429", "503", "drop", "drop_mid", None)
    planned = {s.sample_id: kinds[i % len(kinds)] for i, s in enumerate(samples)}
    with FaultProxy(
        vllm_server.base_url, lambda sid, attempt: planned.get(sid) if attempt == 1 else None
    ) as proxy:
        summary = _run(filled, _settings(proxy.base_url, vllm_server.model), samples)
    assert summary.ok == len(samples) and summary.errors == summary.timeouts == 0
    stored = warehouse.shadow_results(filled, "run")
    attempts = dict(zip(stored["sample_id"], stored["attempts"], strict=True))
    for sid, fault in planned.items():
        assert attempts[sid] == (1 if fault is None else 2), (sid, fault)
    sent = Counter(s.sample_id for s in _chat(proxy))
    assert sent == {sid: 1 if fault is None else 2 for sid, fault in planned.items()}
    assert {s.fault for s in _chat(proxy)} == set(kinds)


def test_terminal_errors_are_not_retried_and_timeouts_are_recorded(vllm_server, filled):
    samples = shadow.sample_traffic(filled, **WINDOW, per_stratum=1, seed=3).samples[:4]
    bad, silent, slow = (s.sample_id for s in samples[:3])
    faults = {bad: "400", silent: "stall", slow: "drip"}
    with FaultProxy(vllm_server.base_url, lambda sid, attempt: faults.get(sid)) as proxy:
        settings = _settings(
            proxy.base_url,
            vllm_server.model,
            read_timeout_s=1.0,
            request_timeout_s=1.5,
            max_retries=1,
            max_output_tokens=16,
        )
        summary = _run(filled, settings, samples)
    assert (summary.ok, summary.errors, summary.timeouts) == (1, 1, 2)
    rows = {r["sample_id"]: r for r in warehouse.shadow_results(filled, "run").to_dicts()}
    assert rows[bad]["status"] == "error" and rows[bad]["attempts"] == 1
    assert "HTTP 400" in rows[bad]["error"]
    assert rows[silent]["status"] == "timeout" and rows[silent]["attempts"] == 2
    # Tokens kept coming, each within the read timeout, but the whole answer took too long.
    assert rows[slow]["status"] == "timeout" and "no complete answer" in rows[slow]["error"]
    assert Counter(s.sample_id for s in _chat(proxy))[bad] == 1


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log"])
def test_progress_bar_counts_answers_and_errors(vllm_server, filled, terminal):
    samples = shadow.sample_traffic(filled, **WINDOW, per_stratum=1, seed=4).samples[:6]
    faults = {samples[0].sample_id: "400"}
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=120)
    with FaultProxy(vllm_server.base_url, lambda sid, attempt: faults.get(sid)) as proxy:
        summary = _run(
            filled, _settings(proxy.base_url, vllm_server.model), samples, "bar", console=console
        )
    assert (summary.ok, summary.errors) == (5, 1)
    text = out.getvalue()
    assert "6/6" in text and "1 errors" in text
    if not terminal:
        # A log gets the finished bar once, not a line per refresh.
        assert text.count("shadow bar") == 1 and "\x1b" not in text


def test_tools_can_never_be_sent():
    with pytest.raises(shadow.TerminalShadowError, match="tools"):
        shadow.HttpTarget(["http://127.0.0.1:9/v1"], "m", extra_body={"tools": []})


def test_redaction_happens_before_requests_leave_and_no_tools_are_sent(vllm_server, filled):
    drawn = shadow.sample_traffic(filled, **WINDOW, per_stratum=100_000, seed=1)
    raw = filled.query_frame(
        "SELECT request_id FROM responses FINAL WHERE request_id IN {ids:Array(String)}"
        " AND (match(prompt, '@example') OR position(prompt, 'Call me on') > 0)",
        parameters={"ids": [s.sample_id for s in drawn.samples]},
    )["request_id"].to_list()
    with_pii = set(raw) | {"h2"}  # h2's history holds an email and a phone number
    samples = [s for s in drawn.samples if s.sample_id in with_pii]
    assert len(samples) >= 5  # the simulator's prompts with PII were sampled
    with FaultProxy(vllm_server.base_url) as proxy:
        _run(filled, _settings(proxy.base_url, vllm_server.model, max_output_tokens=2), samples)
    bodies = [s.body for s in _chat(proxy)]
    assert len(bodies) == len(samples)
    texts = [m["content"] for b in bodies for m in b["messages"]]
    assert not [t for t in texts if EMAIL.search(t) or PHONE.search(t)]
    assert sum("[EMAIL]" in t or "[PHONE]" in t for t in texts) >= len(samples)
    assert not [b for b in bodies if {"tools", "functions", "tool_choice"} & set(b)]


def test_budget_stops_cleanly_and_resume_sends_only_the_rest(vllm_server, filled):
    samples = shadow.sample_traffic(filled, **WINDOW, per_stratum=2, seed=4).samples
    with FaultProxy(vllm_server.base_url) as proxy:
        settings = _settings(proxy.base_url, vllm_server.model)
        first = _run(filled, settings.model_copy(update={"max_requests": 5}), samples)
        assert (first.status, first.sent, first.written) == ("cancelled", 5, 5)
        assert first.reason.startswith("budget")
        assert warehouse.shadow_run(filled, "run")["status"] == "cancelled"
        with pytest.raises(shadow.TerminalShadowError, match="resume it"):
            _run(filled, settings, samples)
        second = _run(filled, settings, samples, resume=True)
    assert (second.status, second.skipped, second.sent) == ("done", 5, len(samples) - 5)
    assert Counter(s.sample_id for s in _chat(proxy)) == {s.sample_id: 1 for s in samples}
    assert warehouse.shadow_results(filled, "run").height == len(samples)
    assert warehouse.shadow_run(filled, "run")["status"] == "done"


def test_baseline_arm_replays_production_on_its_own_endpoint(vllm_server, filled):
    samples = shadow.sample_traffic(filled, **WINDOW, per_stratum=2, seed=5).samples
    with FaultProxy(vllm_server.base_url) as cand, FaultProxy(vllm_server.base_url) as base:
        settings = _settings(
            cand.base_url,
            vllm_server.model,
            baseline_urls=[base.base_url],
            baseline_model=vllm_server.model,
        )
        summary = _run(filled, settings, samples)
    assert summary.planned == summary.ok == 2 * len(samples)
    assert len(_chat(cand)) == len(_chat(base)) == len(samples)
    stored = warehouse.shadow_results(filled, "run")
    assert stored.group_by("arm").len().sort("arm").rows() == [
        ("baseline_replay", len(samples)),
        ("candidate", len(samples)),
    ]
    # Greedy decoding of the same model: the noise floor of identical models is zero.
    pairs = stored.pivot(on="arm", index="sample_id", values="output")
    assert (pairs["candidate"] == pairs["baseline_replay"]).all()


def test_requests_spread_over_several_urls(vllm_server, filled):
    samples = shadow.sample_traffic(filled, **WINDOW, per_stratum=4, seed=6).samples
    with FaultProxy(vllm_server.base_url) as a, FaultProxy(vllm_server.base_url) as b:
        settings = _settings(a.base_url, vllm_server.model, concurrency=4)
        settings = settings.model_copy(update={"candidate_urls": [a.base_url, b.base_url]})
        summary = _run(filled, settings, samples)
    assert summary.ok == len(samples)
    assert len(_chat(a)) + len(_chat(b)) == len(samples)
    assert min(len(_chat(a)), len(_chat(b))) >= len(samples) // 4


# =============================================================================
# The CLI: kill, signal, resume, in-process, errors
# =============================================================================


def _wait_for(predicate, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_killed_run_resumes_without_resending_completed_requests(
    vllm_server, traffic_copy, tmp_path
):
    url = f"chdb://{traffic_copy}"
    with FaultProxy(vllm_server.base_url) as proxy:
        args = ["shadow", "run", "--candidate-url", proxy.base_url, "--candidate-model",
                vllm_server.model, *_sample_args(8), "--concurrency", "2", "--temperature", "0",
                "--max-output-tokens", "16", "--run-id", "killed", "--no-progress",
                "--warehouse", url]  # fmt: skip
        env = {"TELLTALE_SHADOW_WRITE_BATCH_ROWS": "2", "TELLTALE_SHADOW_WRITE_INTERVAL_S": "0.05"}
        first = _cli(*args, cwd=tmp_path, wait=False, **env)
        try:
            _wait_for(lambda: sum(s.completed for s in _chat(proxy)) >= 20)
            time.sleep(0.5)  # let the writer store what completed
        finally:
            first.kill()  # SIGKILL: no handler runs, nothing is flushed
            first.wait()
        before = {s.sample_id for s in _chat(proxy)}
        with warehouse.connect(url) as wh:
            stored_first = set(warehouse.shadow_completed(wh, "killed")["sample_id"])
            planned = warehouse.shadow_run(wh, "killed")["sample_size"]
        assert 0 < len(stored_first) < planned
        assert stored_first <= before
        proxy.reset()
        # Everything else (sample, endpoint, settings) comes from the stored run.
        second = _cli("shadow", "run", "--run-id", "killed", "--resume", "--no-progress",
                      "--warehouse", url, cwd=tmp_path, **env)  # fmt: skip
        assert second.returncode == 0, second.stderr[-3000:]
        resent = [s.sample_id for s in _chat(proxy)]
    assert not set(resent) & stored_first  # nothing stored was sent again
    assert len(resent) == len(set(resent)) == planned - len(stored_first)
    with warehouse.connect(url) as wh:
        results = warehouse.shadow_results(wh, "killed")
        assert results.height == results["sample_id"].n_unique() == planned
        assert (results["status"] == "ok").all()
        assert warehouse.shadow_run(wh, "killed")["status"] == "done"


def test_sigterm_stops_cleanly_keeping_every_finished_result(vllm_server, traffic_copy, tmp_path):
    url = f"chdb://{traffic_copy}"
    with FaultProxy(vllm_server.base_url) as proxy:
        args = ["shadow", "run", "--candidate-url", proxy.base_url, "--candidate-model",
                vllm_server.model, *_sample_args(8), "--concurrency", "3", "--temperature", "0",
                "--max-output-tokens", "16", "--run-id", "term", "--no-progress",
                "--warehouse", url]  # fmt: skip
        first = _cli(*args, cwd=tmp_path, wait=False)
        _wait_for(lambda: sum(s.completed for s in _chat(proxy)) >= 10)
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
        assert first.returncode == 3, stderr[-3000:]
        assert "--resume" in stderr
        completed = {s.sample_id for s in _chat(proxy) if s.completed}
        with warehouse.connect(url) as wh:
            stored = set(warehouse.shadow_completed(wh, "term")["sample_id"])
            assert warehouse.shadow_run(wh, "term")["status"] == "cancelled"
        # Requests in flight were allowed to finish, and everything that finished was stored.
        assert stored == completed
        resumed = _cli(*args, "--resume", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = _cli("shadow", "report", "term", "--format", "json", "--warehouse", url, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    data = json.loads(report.stdout)
    assert data["run"]["status"] == "done"
    assert data["samples_compared"] == data["run"]["sample_size"]
    assert data["figures"] and {"figure", "candidate", "production"} <= set(data["figures"][0])


def test_in_process_llm_gives_the_same_rows_as_the_server(vllm_server, traffic_copy, tmp_path):
    url = f"chdb://{traffic_copy}"
    common = [*_sample_args(2), "--segment", f"intent={HANDMADE_INTENT},coding",
              "--temperature", "0", "--max-output-tokens", "12", "--no-progress",
              "--warehouse", url]  # fmt: skip
    served = _cli("shadow", "run", "--candidate-url", vllm_server.base_url, "--candidate-model",
                  vllm_server.model, "--run-id", "served", *common, cwd=tmp_path)  # fmt: skip
    assert served.returncode == 0, served.stderr[-3000:]
    local = _cli("shadow", "run", "--in-process", str(vllm_server.model_dir),
                 "--candidate-model", vllm_server.model, "--engine-arg", "dtype=float32",
                 "--engine-arg", f"max_model_len={vllm_server.max_model_len}",
                 "--engine-arg", "enforce_eager=true", "--run-id", "local", *common,
                 cwd=tmp_path)  # fmt: skip
    assert local.returncode == 0, local.stderr[-3000:]
    with warehouse.connect(url) as wh:
        a = warehouse.shadow_results(wh, "served")
        b = warehouse.shadow_results(wh, "local")
    same = ["sample_id", "arm", "model", "status", "prompt_tokens", "completion_tokens",
            "finish_reason", "output", "production_output", "intent"]  # fmt: skip
    assert a.height == b.height >= 4
    assert a.select(same).equals(b.select(same))
    assert b["ttft_ms"].is_null().all() and b["latency_ms"].is_not_null().all()
    assert a["ttft_ms"].is_not_null().all()


def test_cli_errors_say_what_to_check(traffic_copy, tmp_path):
    url = f"chdb://{traffic_copy}"
    down = _cli("shadow", "run", "--candidate-url", "http://127.0.0.1:9/v1",
                "--candidate-model", "m", *_sample_args(1), "--no-progress", "--warehouse", url,
                cwd=tmp_path)  # fmt: skip
    assert down.returncode == 1
    assert "cannot reach http://127.0.0.1:9/v1" in down.stderr
    assert "Traceback" not in down.stderr
    missing = _cli("shadow", "run", "--run-id", "nope", "--resume", "--warehouse", url,
                   cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr
    nothing = _cli("shadow", "run", "--candidate-url", "http://127.0.0.1:9/v1",
                   "--candidate-model", "m", "--since", "2020-01-01", "--until", "2020-01-02",
                   "--model-version", VERSION, "--warehouse", url, cwd=tmp_path)  # fmt: skip
    assert nothing.returncode == 1 and "nothing to replay" in nothing.stderr
    helped = _cli("shadow", "run", "--help", cwd=tmp_path)
    assert "--resume" in helped.stdout and "telltale shadow run" in helped.stdout
