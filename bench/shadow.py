"""Shadow runner benchmark: the runner's request throughput vs a minimal asyncio + httpx loop.

Starts the tiny vLLM server of the tests (tests/vllm_server.py, CPU build), then, in one run and
against that server, sends the same N streamed chat requests (same prompts, temperature 0, same
max_tokens, ``ignore_eos`` so every request decodes exactly max_tokens) at concurrency 32 and 128:

  (a) loop: one ``httpx.AsyncClient``, ``concurrency`` worker tasks pulling from one iterator,
      each stream read as raw bytes up to ``[DONE]``; nothing else (the cheapest client we
      could write; like the runner it does not wait for the end of the chunked body after
      ``[DONE]``: on this server that wait cost 2.5x throughput at concurrency 128);
  (b) runner: ``ShadowRunner`` as ``telltale shadow run`` uses it, parsing every chunk (TTFT,
      TPOT, usage), retry bookkeeping, and writing every result to an embedded warehouse.

Each repeat runs both, in alternating order, so drift on a shared machine hits both alike. Rate =
requests / wall time from making the client to the last answer (the runner's also includes its
bookkeeping: reading and recording the run, checking the endpoint, the final write). The
median of the paired ratios (runner / loop of the same repeat) is the steadier figure when
other work on the machine comes and goes. Each measurement follows an unmeasured warm-up at
its concurrency. Also the benchmark process's CPU time per request: the client shares the
machine with the server, so client CPU is server time lost. Also each client's rate over its
request phase alone (the first request sent to the last answer): it leaves out making the client
and, for the runner, reading and recording the run and the last write, so it shows how much of
a gap is per request and how much a fixed cost that longer runs amortise. Prints the medians
and the ratio (target >= 0.95); asserts nothing.

Many short pairs (the default: 20 repeats of 256 requests, about 20 minutes) rather than a few
long ones: the two runs of a pair are then seconds apart and meet the same weather, and the
median of 20 paired ratios comes with a bootstrap interval (printed in brackets) that says
whether the run can tell it from the target at all.

Also the server's own mean end-to-end latency over each measurement (from its ``/metrics``
histogram): the server shares the machine's cores with the client and with other tenants, and
its pace moves between measurements (356-544 ms at concurrency 32 in one run), for both clients
alike (at concurrency 32 each measurement's rate followed it).

``--contend N`` measures the client short of CPU, reproducibly: after the server has started
(it keeps every core), the benchmark process is pinned to one core and N busy loops are started
on that core, so the client gets about 1/(N+1) of it, as on a machine whose cores other work has
taken. The rates then follow each client's CPU per request, and the ratio shows what the
runner's own work (parsing every event, the writes, the bar) costs where CPU is short. Without
it, other tenants of a shared machine decide how short the client is, and they come and go.

``--isolate`` starts the server on every core but the last and runs the clients on the last, as
in production (the runner does not share the GPU server's CPUs): the client's CPU then no
longer competes with the server's, and the ratio shows whether the runner keeps the server as
busy as the bare loop does. Sharing the cores (the default), the scheduler's split of 2 cores
between the client and the server's three busy processes moves single pairs by 2x.

    .venv/bin/python bench/shadow.py [--requests 256] [--repeats 20] [--max-tokens 32]
        [--contend 3 | --isolate]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from scipy.stats import bootstrap

REPO = Path(__file__).resolve().parent.parent
# Run as `python bench/shadow.py`, this directory comes first on sys.path and this very file
# would shadow the shadow package; the tests directory has the vLLM server and tiny model.
sys.path[:] = [str(REPO / "tests")] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]

import shadow  # noqa: E402
import warehouse  # noqa: E402

from tiny_model import build_tiny_model  # noqa: E402
from vllm_server import VllmServer, request_latency_totals  # noqa: E402

IGNORE_EOS = {"ignore_eos": True}
"""vLLM decodes max_tokens whatever the model says: every request costs the same."""
TOPICS = ("sorting a list", "the sea at night", "a polite refund request", "Paris", "tax forms")


def _samples(n: int) -> list[shadow.Sample]:
    return [
        shadow.Sample(
            sample_id=f"s{i:06d}",
            model_version="prod",
            stratum="bench",
            intent="bench",
            locale="en-US",
            platform="web",
            cohort="bench",
            messages=(("user", f"Request {i}: tell me about {TOPICS[i % len(TOPICS)]}."),),
            production_output="recorded answer",
            production_completion_tokens=32,
            production_latency_ms=500.0,
            temperature=0.0,
            max_tokens=None,
            stop=(),
            expected=None,
        )
        for i in range(n)
    ]


class _Span:
    """The first request's start and the last answer's end: the request phase of a run."""

    def __init__(self) -> None:
        self.first = float("inf")
        self.last = float("-inf")

    def start(self) -> None:
        """Note a request starting."""
        self.first = min(self.first, time.perf_counter())

    def end(self) -> None:
        """Note an answer complete."""
        self.last = max(self.last, time.perf_counter())

    def rate(self, n: int) -> float:
        """Requests per second of the request phase."""
        return n / (self.last - self.first)


class _TimedTarget(shadow.HttpTarget):
    """The runner's HTTP target, noting its request phase (two clock reads per request)."""

    def __init__(self, *args: Any, span: _Span, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._span = span

    async def complete(self, request: shadow.ChatRequest) -> shadow.Completion:
        """As the runner's, timed."""
        self._span.start()
        completion = await super().complete(request)
        self._span.end()
        return completion


async def _loop(url: str, model: str, bodies: list[bytes], concurrency: int) -> tuple[float, float]:
    """The client-side limit: requests/s of the cheapest streaming loop (a fixed pool of
    ``concurrency`` workers, each stream drained as raw bytes), over the whole run and over
    its request phase."""
    span = _Span()
    t0 = time.perf_counter()  # like the runner's, the timing includes making the client
    # The client configured as the runner's (shadow.HttpTarget): only what is done differs.
    limits = httpx.Limits(
        max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1
    )
    timeout = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=None)
    headers = {"content-type": "application/json", "accept-encoding": "identity"}
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        todo = iter(bodies)

        async def worker() -> None:
            for body in todo:
                # A pooled connection the server closed as idle fails at once: send again.
                span.start()
                for attempt in range(3):
                    try:
                        async with client.stream(
                            "POST", f"{url}/chat/completions", content=body
                        ) as resp:
                            tail = b""
                            async for chunk in resp.aiter_raw():
                                tail = tail[-8:] + chunk
                                if b"[DONE]" in tail:
                                    break  # the answer is complete, as the runner sees it
                        break
                    except httpx.TransportError:
                        if attempt == 2:
                            raise
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}")
                span.end()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(bodies) / (time.perf_counter() - t0), span.rate(len(bodies))


def _runner(
    wh: warehouse.Warehouse,
    url: str,
    model: str,
    samples: list[shadow.Sample],
    concurrency: int,
    max_tokens: int,
    run_id: str,
    progress: bool,
) -> tuple[float, float]:
    settings = shadow.ShadowSettings(
        candidate_urls=[url],
        candidate_model=model,
        concurrency=concurrency,
        max_output_tokens=max_tokens,
    )

    span = _Span()

    async def go() -> shadow.RunSummary:
        async with _TimedTarget(
            [url], model, concurrency=concurrency, extra_body=IGNORE_EOS, span=span
        ) as target:
            runner = shadow.ShadowRunner(
                wh, settings, targets={"candidate": target}, progress=progress
            )
            return await runner.run(samples, run_id=run_id)

    t0 = time.perf_counter()
    summary = asyncio.run(go())
    elapsed = time.perf_counter() - t0
    if summary.ok != len(samples):
        raise RuntimeError(f"runner: {summary.summary()}")
    return len(samples) / elapsed, span.rate(len(samples))


def _pin(cores: set[int]) -> None:
    """Pin every thread this process has to ``cores``; threads and processes it starts later
    inherit them."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cores)


@contextlib.contextmanager
def _short_of_cpu(loops: int) -> Iterator[int]:
    """Pin this process to its last allowed core, with ``loops`` busy loops on that core; yields
    the core. Processes started before (the server) keep their cores."""
    core = max(os.sched_getaffinity(0))
    _pin({core})
    # Started after the pinning, the loops inherit the core.
    busy = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(loops)]
    try:
        yield core
    finally:
        for p in busy:
            p.kill()
            p.wait()


def _server_totals(server: VllmServer) -> tuple[float, float]:
    """The server's finished requests so far: seconds of end-to-end latency, and count."""
    return request_latency_totals(httpx.get(server.metrics_url, timeout=10.0).text)


def _paired(runner: list[float], loop: list[float]) -> str:
    """The runner / loop ratios of the same repeats: median [95% percentile bootstrap interval
    of the median] (min-max). On a machine whose noise moves single pairs by 2x, the interval
    says whether the repeats can tell the median from the target at all."""
    ratios = np.array([r / b for r, b in zip(runner, loop, strict=True)])
    text = f"{np.median(ratios):.3f}"
    if len(ratios) >= 3:
        ci = bootstrap(
            (ratios,), np.median, method="percentile", n_resamples=5000, random_state=0
        ).confidence_interval
        text += f" [{ci.low:.3f}-{ci.high:.3f}]"
    return f"{text} ({ratios.min():.3f}-{ratios.max():.3f})"


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256, help="Requests per measurement.")
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="Alternating repeats: many short pairs, since the paired ratios carry the noise.",
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="Tokens decoded per request.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    parser.add_argument(
        "--no-progress", action="store_true", help="The runner without its progress bar."
    )
    parser.add_argument(
        "--contend",
        type=int,
        default=0,
        metavar="N",
        help="Pin the benchmark's clients to one core with N busy loops on it (the server keeps "
        "every core): the clients short of CPU, reproducibly. 0 (default): no pinning.",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="Start the server on every core but the last and run the clients on the last, as in "
        "production, where the runner does not share the GPU server's CPUs. Default: the server "
        "and the clients share every core.",
    )
    args = parser.parse_args()

    samples = _samples(args.requests)
    server = VllmServer(build_tiny_model())
    cores = os.sched_getaffinity(0)
    client_core = max(cores)
    server_cores = cores - {client_core}
    if args.isolate:
        if not server_cores:
            parser.error("--isolate needs at least 2 cores")
        _pin(server_cores)  # the server's processes inherit these
    server.start()
    if args.isolate:
        _pin({client_core})
    with (
        contextlib.closing(server),
        _short_of_cpu(args.contend) if args.contend else contextlib.nullcontext() as core,
        tempfile.TemporaryDirectory(prefix="shadow-bench-") as tmp,
        warehouse.connect(f"chdb://{tmp}/warehouse") as wh,
    ):
        print(f"vLLM {server.base_url} ready in {server.last_start_seconds:.0f} s", flush=True)
        if core is not None:
            print(f"clients pinned to core {core} beside {args.contend} busy loops", flush=True)
        elif args.isolate:
            print(f"server on cores {sorted(server_cores)}, clients on {client_core}", flush=True)
        warehouse.migrate(wh)
        probe = shadow.HttpTarget([server.base_url], server.model, extra_body=IGNORE_EOS)
        bodies = [
            probe.body(shadow.ChatRequest(s.sample_id, s.messages, 0.0, args.max_tokens))
            for s in samples
        ]
        # Warm-up: compile paths and fill the prefix cache for both clients alike.
        asyncio.run(_loop(server.base_url, server.model, bodies, max(args.concurrency)))
        rates: dict[tuple[int, str], list[float]] = {}
        phase: dict[tuple[int, str], list[float]] = {}
        cpu: dict[tuple[int, str], list[float]] = {}
        server_ms: dict[tuple[int, str], list[float]] = {}
        for rep in range(args.repeats):
            for c in args.concurrency:
                order = ("loop", "runner") if rep % 2 == 0 else ("runner", "loop")
                for who in order:
                    # Unmeasured, at the same concurrency: whichever client ran first after a
                    # change of concurrency ran up to 2x slower (the server settling), which
                    # alternation alone did not cancel.
                    asyncio.run(_loop(server.base_url, server.model, bodies[: 2 * c], c))
                    seconds_before, count_before = _server_totals(server)
                    started = time.process_time()
                    if who == "loop":
                        rate, in_phase = asyncio.run(
                            _loop(server.base_url, server.model, bodies, c)
                        )
                    else:
                        rate, in_phase = _runner(
                            wh,
                            server.base_url,
                            server.model,
                            samples,
                            c,
                            args.max_tokens,
                            f"bench-{c}-{rep}",
                            not args.no_progress,
                        )
                    ms = (time.process_time() - started) / len(samples) * 1e3
                    seconds_after, count_after = _server_totals(server)
                    latency = (seconds_after - seconds_before) / (count_after - count_before)
                    rates.setdefault((c, who), []).append(rate)
                    phase.setdefault((c, who), []).append(in_phase)
                    cpu.setdefault((c, who), []).append(ms)
                    server_ms.setdefault((c, who), []).append(latency * 1e3)
                    print(
                        f"repeat {rep + 1} concurrency {c:>3} {who:<6} {rate:7.1f} req/s"
                        f" ({in_phase:7.1f} in the request phase) {ms:5.2f} client CPU"
                        f" ms/request, server latency {latency * 1e3:4.0f} ms",
                        flush=True,
                    )
    print()
    contended = f", clients on one core with {args.contend} busy loops" if args.contend else ""
    contended += ", server and clients on separate cores" if args.isolate else ""
    print(
        f"{args.requests} requests x {args.max_tokens} tokens, {args.repeats} repeats"
        f"{contended} (medians)"
    )
    print(
        "| concurrency | minimal loop req/s | runner req/s | ratio | paired ratios: median "
        "[95% CI] (min-max) | request phase only: paired ratios, median [95% CI] (min-max) | "
        "client CPU ms/request: loop | runner | server latency ms: loop | runner |"
    )
    print("|---:|---:|---:|---:|---|---|---:|---:|---:|---:|")
    for c in args.concurrency:
        loop, run = rates[(c, "loop")], rates[(c, "runner")]
        print(
            f"| {c} | {statistics.median(loop):.1f} | {statistics.median(run):.1f} | "
            f"{statistics.median(run) / statistics.median(loop):.3f} | "
            f"{_paired(run, loop)} | {_paired(phase[(c, 'runner')], phase[(c, 'loop')])} | "
            f"{statistics.median(cpu[(c, 'loop')]):.2f} | "
            f"{statistics.median(cpu[(c, 'runner')]):.2f} | "
            f"{statistics.median(server_ms[(c, 'loop')]):.0f} | "
            f"{statistics.median(server_ms[(c, 'runner')]):.0f} |"
        )


if __name__ == "__main__":
    main()
