"""Replay targets: where a replayed request goes, and what comes back.

- :class:`HttpTarget`: an OpenAI-compatible chat completions endpoint (what ``vllm serve``
  exposes), over one or more base URLs, through small ``httpx.AsyncClient`` pools (one per 16
  requests in flight). Every request streams (``stream_options.include_usage``), so one pass
  measures time to first token (TTFT), time per output token after the first (TPOT, as vLLM's
  benchmarks define it: ``(last token - first token) / (completion tokens - 1)``) and
  end-to-end latency, with token usage from the server.
  429, 5xx, timeouts and dropped connections are retried with exponential backoff and full
  jitter (``Retry-After`` honoured); other 4xx are terminal.
- :class:`LLMTarget`: ``vllm.LLM`` in-process (a GPU machine, or vLLM's CPU build), a batch at a
  time through ``LLM.chat``. Rows have the same shape; ``latency_ms`` is the whole batch's wall
  time, and TTFT / TPOT are null (a batch has no per-request clock).

A request never carries tools or functions: replay must have no side effects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import itertools
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import msgspec

from shadow.errors import TerminalShadowError, TransientShadowError

__all__ = ["ChatRequest", "Completion", "HttpTarget", "LLMTarget"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat to replay: ``messages`` as ``(role, content)`` pairs; None leaves a sampling
    parameter to the server's default."""

    sample_id: str
    messages: tuple[tuple[str, str], ...]
    temperature: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Completion:
    """What one replayed request gave: ``status`` is ``ok``, ``error`` or ``timeout`` (the last
    attempt's outcome), ``attempts`` counts the first try and every retry."""

    status: str
    error: str | None
    attempts: int
    ttft_ms: float | None
    tpot_ms: float | None
    latency_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    output: str
    started_at: dt.datetime


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: Any = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_encode = msgspec.json.Encoder().encode

_POOL_SIZE = 16
"""Connections per httpx pool; a target opens ``ceil(concurrency / 16)`` pools."""

# Status codes after which the same request can succeed later.
_RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class _Failed(Exception):
    """One attempt failed: ``kind`` is ``timeout``, ``transient`` or ``terminal``."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


class HttpTarget:
    """An OpenAI-compatible endpoint at one or more base URLs (``http://host:8000/v1``).

    ``extra_body`` adds server-specific fields to every request (vLLM's ``top_k``,
    ``ignore_eos``, ...); tools and functions are refused. Use as an async context manager (it
    owns a connection pool). :meth:`check` fails with a message naming the URL when an endpoint
    is unreachable or does not serve ``model``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        model: str,
        *,
        api_key: str = "",
        concurrency: int = 32,
        balance: Literal["least_in_flight", "round_robin"] = "least_in_flight",
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        request_timeout_s: float = 600.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        seed: int = 0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not urls:
            raise TerminalShadowError(f"no URL given for model {model!r}")
        side_effects = sorted(set(extra_body or {}) & {"tools", "functions", "tool_choice"})
        if side_effects:
            raise TerminalShadowError(f"a replay must not send {side_effects}")
        self._extra_body = dict(extra_body or {})
        self.urls = [u.rstrip("/") for u in urls]
        self.model = model
        self._endpoints = [f"{u}/chat/completions" for u in self.urls]
        self._in_flight = [0] * len(self.urls)
        self._turn = itertools.cycle(range(len(self.urls)))
        self._least = balance == "least_in_flight"
        self._request_timeout = request_timeout_s
        self._max_retries = max_retries
        self._backoff_base = backoff_base_s
        self._backoff_max = backoff_max_s
        self._rng = random.Random(seed)
        # Uncompressed streams are read as they come (no decoder layer per chunk).
        base_headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if api_key:
            base_headers["authorization"] = f"Bearer {api_key}"
        # Several small pools, not one: httpcore scans every connection of a pool each time a
        # request starts or ends, so one pool of 128 connections spent a fifth of the client's
        # CPU in that scan. A request takes the pool with the fewest in flight, so no pool
        # holds more than its share while the runner keeps ``concurrency`` requests in flight.
        shards = max(1, math.ceil(concurrency / _POOL_SIZE))
        per_pool = math.ceil(concurrency / shards) + len(self.urls)
        timeout = httpx.Timeout(
            connect=connect_timeout_s, read=read_timeout_s, write=read_timeout_s, pool=None
        )
        tls = httpx.create_ssl_context()  # one for all pools: each costs ~20 ms to load
        self._clients = [
            httpx.AsyncClient(
                headers=base_headers,
                timeout=timeout,
                verify=tls,
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
            )
            for _ in range(shards)
        ]
        self._pool_in_flight = [0] * shards

    async def __aenter__(self) -> HttpTarget:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        for client in self._clients:
            await client.aclose()

    async def check(self) -> None:
        """Ask every URL for its models; fail naming the URL and what to check."""
        for url in self.urls:
            try:
                resp = await self._clients[0].get(f"{url}/models", timeout=10.0)
            except httpx.TransportError as e:
                raise TerminalShadowError(
                    f"cannot reach {url} ({type(e).__name__}: {e or 'no detail'}): is the server "
                    "running and listening there, and does the URL end in /v1 "
                    "(e.g. http://127.0.0.1:8000/v1)?"
                ) from None
            if resp.status_code in (401, 403):
                raise TerminalShadowError(
                    f"{url} refused the API key (HTTP {resp.status_code}): check "
                    "TELLTALE_SHADOW_CANDIDATE_API_KEY / TELLTALE_SHADOW_BASELINE_API_KEY"
                )
            if resp.status_code != 200:
                raise TerminalShadowError(
                    f"{url}/models answered HTTP {resp.status_code}: is this an OpenAI-compatible "
                    "API, and does the URL end in /v1?"
                )
            served = [m.get("id") for m in resp.json().get("data", [])]
            if self.model not in served:
                raise TerminalShadowError(
                    f"{url} serves {served}, not {self.model!r}: check the model name "
                    "(vllm serve --served-model-name)"
                )

    def body(self, request: ChatRequest) -> bytes:
        """The JSON request body: streaming with usage, sampling parameters, ``extra_body``,
        no tools."""
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": r, "content": c} for r, c in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if request.stop:
            payload["stop"] = list(request.stop)
        payload.update(self._extra_body)
        return _encode(payload)

    def _pick(self) -> int:
        if not self._least:
            return next(self._turn)
        # Ties go round the URLs so that an idle start does not pile onto the first one.
        start = next(self._turn)
        n = len(self._in_flight)
        return min(range(start, start + n), key=lambda i: self._in_flight[i % n]) % n

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        wait = self._rng.uniform(0, min(self._backoff_max, self._backoff_base * 2 ** (retry - 1)))
        if retry_after is not None:
            wait = max(wait, min(retry_after, self._backoff_max))
        return wait

    async def complete(self, request: ChatRequest) -> Completion:
        """Send one chat, retrying what a retry can fix; never raises for a failed request (the
        outcome is in the returned :class:`Completion`)."""
        started_at = dt.datetime.now(dt.UTC)
        body = self.body(request)
        headers = {"x-telltale-sample": request.sample_id}
        attempt = 0
        while True:
            attempt += 1
            i = self._pick()
            pool = min(range(len(self._clients)), key=self._pool_in_flight.__getitem__)
            self._in_flight[i] += 1
            self._pool_in_flight[pool] += 1
            try:
                return await self._attempt(
                    i, self._clients[pool], body, headers, attempt, started_at
                )
            except _Failed as e:
                failure = e
            finally:
                self._in_flight[i] -= 1
                self._pool_in_flight[pool] -= 1
            if failure.kind == "terminal" or attempt > self._max_retries:
                return Completion(
                    status="timeout" if failure.kind == "timeout" else "error",
                    error=str(failure),
                    attempts=attempt,
                    ttft_ms=None,
                    tpot_ms=None,
                    latency_ms=None,
                    prompt_tokens=0,
                    completion_tokens=0,
                    finish_reason="error",
                    output="",
                    started_at=started_at,
                )
            await asyncio.sleep(self._backoff(attempt, failure.retry_after))

    async def _attempt(
        self,
        i: int,
        client: httpx.AsyncClient,
        body: bytes,
        headers: dict[str, str],
        attempt: int,
        started_at: dt.datetime,
    ) -> Completion:
        clock = time.perf_counter
        t0 = clock()
        first = last = 0.0
        parts: list[str] = []
        finish = ""
        usage: _Usage | None = None
        try:
            async with client.stream(
                "POST", self._endpoints[i], content=body, headers=headers
            ) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread())[:300].decode(errors="replace")
                    code = resp.status_code
                    raise _Failed(
                        "transient" if code in _RETRYABLE or code >= 500 else "terminal",
                        f"HTTP {code} from {self.urls[i]}: {detail}",
                        _retry_after(resp.headers.get("retry-after")),
                    )
                done = False
                pending = b""
                # The hot loop, inlined: lines split by hand from the raw bytes (no text
                # decoding, no generator per line), msgspec reading each event's bytes.
                chunks = (
                    resp.aiter_bytes() if "content-encoding" in resp.headers else resp.aiter_raw()
                )
                async for raw in chunks:
                    lines = (pending + raw).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue  # blank separators and SSE comments
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            break
                        chunk = _decode_chunk(data)
                        if chunk.error is not None:
                            raise _Failed("transient", f"error in the stream: {chunk.error}")
                        if chunk.usage is not None:
                            usage = chunk.usage
                        for choice in chunk.choices:
                            delta = choice.delta
                            if delta is not None and delta.content:
                                last = clock()
                                if not parts:
                                    first = last
                                parts.append(delta.content)
                            if choice.finish_reason:
                                finish = choice.finish_reason
                    if done:
                        break
                    if clock() - t0 > self._request_timeout:
                        raise _Failed(
                            "timeout", f"no complete answer in {self._request_timeout:g} s"
                        )
                done = done or pending.strip() in (b"data: [DONE]", b"data:[DONE]")
                if not done:
                    raise _Failed("transient", f"{self.urls[i]} closed the stream before [DONE]")
        except httpx.TimeoutException as e:
            raise _Failed("timeout", f"{type(e).__name__} from {self.urls[i]}") from None
        except httpx.TransportError as e:
            raise _Failed(
                "transient", f"{type(e).__name__} from {self.urls[i]}: {e or 'no detail'}"
            ) from None
        except msgspec.DecodeError as e:
            raise _Failed("terminal", f"malformed stream from {self.urls[i]}: {e}") from None
        end = clock()
        completion_tokens = usage.completion_tokens if usage else len(parts)
        return Completion(
            status="ok",
            error=None,
            attempts=attempt,
            ttft_ms=(first - t0) * 1e3 if parts else None,
            tpot_ms=(last - first) * 1e3 / (completion_tokens - 1)
            if completion_tokens > 1 and parts
            else None,
            latency_ms=(end - t0) * 1e3,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=completion_tokens,
            finish_reason=finish,
            output="".join(parts),
            started_at=started_at,
        )


class LLMTarget:
    """``vllm.LLM`` in this process (``pip install telltale[vllm]``), batch by batch.

    ``engine_args`` go to ``vllm.LLM`` (``dtype``, ``max_model_len``, ``tensor_parallel_size``,
    ...). ``model`` is the name stored with the results (default: the model path). Close it (or
    use it as a context manager) to stop the engine's processes.
    """

    def __init__(self, model_path: str, *, model: str | None = None, **engine_args: Any) -> None:
        try:
            import vllm
        except ImportError as e:
            raise TerminalShadowError(
                f"the in-process target needs vLLM ({e}): pip install 'telltale[vllm]'"
            ) from None
        self._vllm = vllm
        self._llm = vllm.LLM(model=model_path, **engine_args)
        self._defaults = self._llm.get_default_sampling_params()
        self.model = model or model_path

    def close(self) -> None:
        """Stop the engine's processes (they would otherwise keep this process from exiting)."""
        self._llm.llm_engine.engine_core.shutdown()

    def __enter__(self) -> LLMTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _params(self, request: ChatRequest) -> Any:
        params = self._defaults.clone()
        if request.temperature is not None:
            params.temperature = request.temperature
        if request.max_tokens is not None:
            params.max_tokens = request.max_tokens
        if request.stop:
            params.stop = list(request.stop)
        return params

    def complete_batch(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Run a batch; every row's ``latency_ms`` is the batch's wall time. Blocking: run it in
        a thread from async code."""
        started_at = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        try:
            outputs = self._llm.chat(
                [[{"role": r, "content": c} for r, c in q.messages] for q in requests],
                sampling_params=[self._params(q) for q in requests],
                use_tqdm=False,
            )
        except (ValueError, RuntimeError) as e:
            raise TransientShadowError(f"vllm.LLM batch failed: {e}") from e
        wall_ms = (time.perf_counter() - t0) * 1e3
        out = []
        for o in outputs:
            gen = o.outputs[0]
            out.append(
                Completion(
                    status="ok",
                    error=None,
                    attempts=1,
                    ttft_ms=None,
                    tpot_ms=None,
                    latency_ms=wall_ms,
                    prompt_tokens=len(o.prompt_token_ids or ()),
                    completion_tokens=len(gen.token_ids),
                    finish_reason=gen.finish_reason or "",
                    output=gen.text,
                    started_at=started_at,
                )
            )
        return out
