"""The shadow runner: replay a sample on the candidate (and optionally the production model),
storing each result in the warehouse as it arrives, under a run id.

- **Work**: one item per sample and arm (``candidate``; ``baseline_replay`` when a baseline
  endpoint is configured: the production model replayed, the noise floor of the comparison).
  Items already stored under the run id are skipped, so re-running a run (``resume``) sends only
  what is missing; a sample written twice counts once (``shadow_results`` replaces by key).
- **Control**: at most ``concurrency`` requests in flight (a fixed pool of workers, so no lock
  is taken per request); optional arrivals at ``rate`` per second with gamma inter-arrival times
  (``burstiness`` 1 = Poisson); a budget of requests and tokens after which no request starts.
- **Storage**: results go to ``shadow_results`` in small batches (``write_batch_rows`` or every
  ``write_interval_s``) from a writer task, off the event loop; a killed run loses at most the
  unwritten batch and the requests in flight, which a resume sends again.
- **Stopping**: on SIGINT/SIGTERM no request starts; those in flight get ``drain_timeout_s`` to
  finish, then are cancelled (a second signal cancels them at once). What finished is written
  and the run is marked ``cancelled``; resume it with the same run id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import polars as pl
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

import warehouse
from shadow.errors import ShadowError, TerminalShadowError
from shadow.sample import Sample
from shadow.settings import ShadowSettings
from shadow.targets import ChatRequest, Completion, HttpTarget, LLMTarget

__all__ = ["ARMS", "RunSummary", "ShadowRunner", "http_target"]

log = logging.getLogger("telltale.shadow")

ARMS = ("candidate", "baseline_replay")
"""Arms of a run: the candidate, and the production model replayed (optional)."""

_WRITE_RETRIES = 5


class Target(Protocol):
    """What the runner needs of an HTTP target (:class:`~shadow.targets.HttpTarget`)."""

    model: str

    async def complete(self, request: ChatRequest) -> Completion:
        """Send one request; the outcome, never an exception, for a failed request."""
        ...


def http_target(settings: ShadowSettings, arm: str) -> HttpTarget:
    """The HTTP target ``settings`` describe for ``arm`` (``candidate`` or ``baseline_replay``)."""
    who = "candidate" if arm == "candidate" else "baseline"
    urls, model = getattr(settings, f"{who}_urls"), getattr(settings, f"{who}_model")
    if not urls or not model:
        raise TerminalShadowError(f"give the {who}'s URL and model name")
    return HttpTarget(
        urls,
        model,
        api_key=getattr(settings, f"{who}_api_key").get_secret_value(),
        concurrency=settings.concurrency,
        balance=settings.balance,
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=settings.read_timeout_s,
        request_timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
        backoff_base_s=settings.backoff_base_s,
        backoff_max_s=settings.backoff_max_s,
        seed=settings.seed,
    )


@dataclass(frozen=True)
class RunSummary:
    """How a run went: what was planned, skipped (stored before a resume), sent and stored."""

    run_id: str
    status: str
    """``done``, ``cancelled`` (a signal or the budget; resumable) or ``failed``."""
    reason: str
    planned: int
    """Sample x arm items of the run."""
    skipped: int
    """Items already stored when this run started (a resume)."""
    sent: int
    ok: int
    errors: int
    timeouts: int
    written: int
    tokens: int
    elapsed_s: float

    @property
    def requests_per_s(self) -> float:
        """Requests completed per second of this run."""
        done = self.ok + self.errors + self.timeouts
        return done / self.elapsed_s if self.elapsed_s > 0 else float("nan")

    def to_frame(self) -> pl.DataFrame:
        """One row with every field and the request rate."""
        return pl.DataFrame([{**asdict(self), "requests_per_s": self.requests_per_s}])

    def summary(self, fmt: str = "text") -> str:
        """The run as ``text``, ``markdown`` or ``html``."""
        header = f"shadow run {self.run_id}: {self.status} ({self.reason})"
        rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v))
                for k, v in self.to_frame().row(0, named=True).items()
                if k not in ("run_id", "status", "reason")]  # fmt: skip
        if fmt == "markdown":
            body = "\n".join(f"| {k} | {v} |" for k, v in rows)
            return f"**{header}**\n\n| field | value |\n|---|---|\n{body}"
        if fmt == "html":
            body = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
            return f"<p><strong>{header}</strong></p><table><tbody>{body}</tbody></table>"
        if fmt != "text":
            raise ValueError(f"fmt must be text, markdown or html, not {fmt!r}")
        width = max(len(k) for k, _ in rows)
        return "\n".join([header, *(f"  {k.ljust(width)}  {v}" for k, v in rows)])


class _RateColumn(ProgressColumn):
    """Completed requests per second (rich's own speed column is for bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- req/s" if speed is None else f"{speed:.1f} req/s")


class _Arrivals:
    """Start times at ``rate`` per second with gamma(burstiness) gaps; a shared schedule, so the
    workers together follow one arrival process."""

    def __init__(self, rate: float, burstiness: float, seed: int) -> None:
        self._rng = random.Random(seed)
        self._shape = burstiness
        self._scale = 1.0 / (rate * burstiness)
        self._next: float | None = None

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        at = now if self._next is None else self._next
        self._next = at + self._rng.gammavariate(self._shape, self._scale)
        if at > now:
            await asyncio.sleep(at - now)


class ShadowRunner:
    """Replays samples on the configured targets and stores the results (see the module doc).

    ``targets`` maps an arm (:data:`ARMS`) to an :class:`~shadow.targets.HttpTarget` (or any
    object with ``model`` and ``async complete``) or an :class:`~shadow.targets.LLMTarget`.
    An arm not given gets the HTTP target of ``settings`` (the candidate always, the baseline
    when ``baseline_urls`` is set), closed after the run; targets passed in are not closed.
    """

    def __init__(
        self,
        wh: warehouse.Warehouse,
        settings: ShadowSettings,
        *,
        targets: Mapping[str, Target | LLMTarget] | None = None,
        progress: bool = True,
        console: Console | None = None,
    ) -> None:
        unknown = sorted(set(targets or {}) - set(ARMS))
        if unknown:
            raise TerminalShadowError(f"unknown arms {unknown}: use {', '.join(ARMS)}")
        self._wh = wh
        self._settings = settings
        self._targets = targets
        self._progress = progress
        self._console = console or Console(stderr=True)

    async def run(
        self,
        samples: Sequence[Sample],
        *,
        run_id: str,
        resume: bool = False,
        retry_failed: bool = False,
        sample_spec: Mapping[str, Any] | None = None,
    ) -> RunSummary:
        """Replay ``samples`` under ``run_id`` and return how it went.

        A run id that exists needs ``resume`` (then only what is not stored is sent; with
        ``retry_failed`` also what is stored as an error or timeout). ``sample_spec`` (how the
        sample was drawn) is stored with the run's settings so a resume can draw it again.
        """
        try:
            previous = warehouse.shadow_run(self._wh, run_id)
            if previous is not None and not resume:
                raise TerminalShadowError(
                    f"run {run_id!r} exists ({previous['status']}): resume it, or pick a new run id"
                )
            if previous is None and resume:
                raise TerminalShadowError(f"no run {run_id!r} to resume")
            stored = warehouse.shadow_completed(self._wh, run_id, only_ok=retry_failed)
        except warehouse.WarehouseError as e:
            raise TerminalShadowError(f"cannot read run {run_id!r}: {e}") from e
        targets: dict[str, Target | LLMTarget] = dict(self._targets or {})
        # Arms not given are built from the settings (and closed here): the candidate always,
        # the baseline when it is configured.
        owned = [arm for arm in ARMS if arm not in targets
                 and (arm == "candidate" or self._settings.baseline_urls)]  # fmt: skip
        try:
            for arm in owned:
                targets[arm] = http_target(self._settings, arm)
            return await self._run(samples, run_id, previous, stored, targets, sample_spec)
        finally:
            for arm in owned:
                target = targets.get(arm)
                if isinstance(target, HttpTarget):
                    await target.aclose()

    async def _run(
        self,
        samples: Sequence[Sample],
        run_id: str,
        previous: Mapping[str, Any] | None,
        stored: pl.DataFrame,
        targets: Mapping[str, Target | LLMTarget],
        sample_spec: Mapping[str, Any] | None,
    ) -> RunSummary:
        if "candidate" not in targets:
            raise TerminalShadowError("a run needs a candidate target")
        for target in targets.values():
            if isinstance(target, HttpTarget):
                await target.check()
        done = set(zip(stored["sample_id"], stored["arm"], strict=True))
        work = [(s, arm) for s in samples for arm in ARMS
                if arm in targets and (s.sample_id, arm) not in done]  # fmt: skip
        planned = len(samples) * len(targets)
        created = previous["created_at"] if previous else dt.datetime.now(dt.UTC)
        settings_json = json.dumps(
            {"runner": json.loads(self._settings.public_json()), "sample": sample_spec or {}},
            default=str,
        )
        run = _Run(self._wh, self._settings, run_id, targets, work)

        def record(status: str) -> None:
            warehouse.record_shadow_run(
                self._wh,
                run_id=run_id,
                created_at=created,
                candidate_model=targets["candidate"].model,
                baseline_model=targets["baseline_replay"].model
                if "baseline_replay" in targets
                else "",
                settings_json=settings_json,
                status=status,
                sample_size=len(samples),
            )

        record("running")
        started = time.perf_counter()
        try:
            await run.execute(self._console if self._progress else None)
        except BaseException:
            with contextlib.suppress(warehouse.WarehouseError):
                record("failed")
            raise
        status = "cancelled" if run.stop_reason else "done"
        record(status)
        return RunSummary(
            run_id=run_id,
            status=status,
            reason=run.stop_reason or "complete",
            planned=planned,
            skipped=planned - len(work),
            sent=run.sent,
            ok=run.counts["ok"],
            errors=run.counts["error"],
            timeouts=run.counts["timeout"],
            written=run.written,
            tokens=run.tokens,
            elapsed_s=time.perf_counter() - started,
        )


class _Run:
    """The state of one execution: the work iterator, counters, the write buffer."""

    def __init__(
        self,
        wh: warehouse.Warehouse,
        settings: ShadowSettings,
        run_id: str,
        targets: Mapping[str, Target | LLMTarget],
        work: list[tuple[Sample, str]],
    ) -> None:
        self.wh = wh
        self.settings = settings
        self.run_id = run_id
        self.targets = targets
        self.work = work
        self.stop_reason = ""
        self.sent = 0
        self.tokens = 0
        self.written = 0
        self.counts = {"ok": 0, "error": 0, "timeout": 0}
        self.buffer: list[tuple[Any, ...]] = []
        self.buffer_full = asyncio.Event()
        self.closing = False
        self.arrivals = (
            _Arrivals(settings.rate, settings.burstiness, settings.seed) if settings.rate else None
        )
        self.tasks: list[asyncio.Task[None]] = []
        self.progress: Progress | None = None
        self.task_id: Any = None

    # -- control ---------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Start no new request (idempotent: the first reason is kept)."""
        if not self.stop_reason:
            self.stop_reason = reason
            log.warning("shadow run %s stopping: %s", self.run_id, reason)

    def cancel_in_flight(self) -> None:
        """Cancel the workers (their requests in flight are dropped, to be resent on resume)."""
        for t in self.tasks:
            t.cancel()

    def _on_signal(self, signum: int) -> None:
        if self.stop_reason.startswith("signal"):
            self.cancel_in_flight()  # a second signal: do not wait
            return
        self.stop(f"signal {signal.Signals(signum).name}")
        asyncio.get_running_loop().call_later(self.settings.drain_timeout_s, self.cancel_in_flight)

    def _budget_left(self) -> bool:
        s = self.settings
        if s.max_requests is not None and self.sent >= s.max_requests:
            self.stop(f"budget: {s.max_requests} requests sent")
        elif s.max_tokens is not None and self.tokens >= s.max_tokens:
            self.stop(f"budget: {self.tokens} of {s.max_tokens} tokens used")
        return not self.stop_reason

    def request(self, sample: Sample) -> ChatRequest:
        """The request replaying ``sample``: max_tokens capped by ``max_output_tokens``,
        temperature replaced by ``temperature`` when set."""
        cap = self.settings.max_output_tokens
        max_tokens = sample.max_tokens
        if cap is not None:
            max_tokens = cap if max_tokens is None else min(max_tokens, cap)
        temperature = self.settings.temperature
        if temperature is None:
            temperature = sample.temperature
        return ChatRequest(sample.sample_id, sample.messages, temperature, max_tokens, sample.stop)

    # -- results ---------------------------------------------------------------------------

    def add(self, sample: Sample, arm: str, model: str, c: Completion) -> None:
        """Count one outcome and queue its row for the writer."""
        self.counts[c.status] += 1
        self.tokens += c.prompt_tokens + c.completion_tokens
        self.buffer.append(
            (self.run_id, sample.sample_id, arm, model, sample.intent, sample.locale,
             sample.platform, sample.cohort, c.status, c.error, min(c.attempts, 255), c.ttft_ms,
             c.tpot_ms, c.latency_ms, c.prompt_tokens, c.completion_tokens, c.finish_reason,
             c.output, sample.production_output, sample.production_completion_tokens,
             sample.production_latency_ms, sample.expected, c.started_at)
        )  # fmt: skip
        if len(self.buffer) >= self.settings.write_batch_rows:
            self.buffer_full.set()

    async def flush(self) -> None:
        """Write the buffered rows (retrying a warehouse that is briefly unavailable)."""
        rows, self.buffer = self.buffer, []
        self.buffer_full.clear()
        if not rows:
            return
        frame = pl.DataFrame(rows, schema=warehouse.SHADOW_RESULT_SCHEMA, orient="row")
        for attempt in range(1, _WRITE_RETRIES + 1):
            try:
                await asyncio.to_thread(warehouse.insert_shadow_results, self.wh, frame)
                break
            except warehouse.TransientWarehouseError as e:
                if attempt == _WRITE_RETRIES:
                    raise ShadowError(f"cannot write results: {e}") from e
                await asyncio.sleep(0.2 * 2**attempt)
            except warehouse.WarehouseError as e:
                raise ShadowError(f"cannot write results: {e}") from e
        self.written += len(rows)

    async def _writer(self) -> None:
        # Never cancelled mid-write (a cancelled insert may or may not land): it is asked to
        # stop, and finishes the write under way.
        while not self.closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.write_interval_s):
                    await self.buffer_full.wait()
            await self.flush()

    # -- workers ---------------------------------------------------------------------------

    async def _http_worker(self, items: Iterator[tuple[Sample, str]]) -> None:
        for sample, arm in items:
            if self.stop_reason or not self._budget_left():
                return
            if self.arrivals is not None:
                await self.arrivals.wait()
                if self.stop_reason:
                    return
            target = self.targets[arm]
            self.sent += 1
            completion = await target.complete(self.request(sample))  # type: ignore[union-attr]
            self.add(sample, arm, target.model, completion)

    async def _batch_worker(self, arm: str, items: list[Sample]) -> None:
        target = self.targets[arm]
        assert isinstance(target, LLMTarget)
        size = self.settings.concurrency
        for i in range(0, len(items), size):
            if self.stop_reason or not self._budget_left():
                return
            chunk = items[i : i + size]
            if self.settings.max_requests is not None:
                chunk = chunk[: self.settings.max_requests - self.sent]
            self.sent += len(chunk)
            completions = await asyncio.to_thread(
                target.complete_batch, [self.request(s) for s in chunk]
            )
            for sample, c in zip(chunk, completions, strict=True):
                self.add(sample, arm, target.model, c)

    async def execute(self, console: Console | None) -> None:
        """Run every worker and the writer; stop on a signal or the budget; write what finished.
        With a ``console``, show a progress bar on it."""
        http = iter([(s, a) for s, a in self.work if not isinstance(self.targets[a], LLMTarget)])
        batched = {a: [s for s, b in self.work if b == a]
                   for a, t in self.targets.items() if isinstance(t, LLMTarget)}  # fmt: skip
        loop = asyncio.get_running_loop()
        handle_signals = threading.current_thread() is threading.main_thread()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
        workers = min(self.settings.concurrency, len(self.work))
        self.tasks = [asyncio.create_task(self._http_worker(http)) for _ in range(workers)]
        self.tasks += [asyncio.create_task(self._batch_worker(a, s)) for a, s in batched.items()]
        writer = asyncio.create_task(self._writer())
        with self._progress_bar(console):
            ticker = asyncio.create_task(self._show_progress()) if self.progress else None
            try:
                await self._wait_workers(writer)
            finally:
                if ticker is not None:
                    ticker.cancel()
                    self._tick()
                self.closing = True
                self.buffer_full.set()
                with contextlib.suppress(ShadowError):  # raised already from _wait_workers
                    await writer
                if handle_signals:
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(sig)
                await self.flush()

    async def _show_progress(self) -> None:
        # Not once per request: an update per request made the event loop wait on every render
        # while finished streams went unread (at concurrency 128 the server then ran 0-74 of
        # the 128 requests in flight). Rendered here, on the loop, rather than by rich's refresh
        # thread: a second Python thread has to take the GIL from the loop, and on a machine
        # short of CPU the loop then waits for that thread to be scheduled again.
        while True:
            self._tick()
            await asyncio.sleep(0.5)

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task_id,
                completed=sum(self.counts.values()),
                errors=self.counts["error"] + self.counts["timeout"],
            )
            # Not a terminal (a log file, CI): the bar is printed once, when it stops.
            if self.progress.console.is_terminal:
                self.progress.refresh()

    async def _wait_workers(self, writer: asyncio.Task[None]) -> None:
        pending = set(self.tasks)
        while pending:
            # The writer never ends by itself: if it does, writing failed and the run stops.
            finished, pending = await asyncio.wait(
                pending | {writer}, return_when=asyncio.FIRST_COMPLETED
            )
            if writer in finished:
                self.cancel_in_flight()
                await asyncio.gather(*self.tasks, return_exceptions=True)
                writer.result()
            pending.discard(writer)
        for t in self.tasks:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    @contextlib.contextmanager
    def _progress_bar(self, console: Console | None) -> Iterator[None]:
        if console is None:
            yield
            return
        with Progress(
            TextColumn("[bold]shadow[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TextColumn("{task.fields[errors]} errors"),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,  # rendered by the ticker (_show_progress)
        ) as bar:
            self.progress = bar
            self.task_id = bar.add_task(self.run_id, total=len(self.work), errors=0)
            yield
