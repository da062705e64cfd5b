"""A small HTTP proxy on 127.0.0.1 between the shadow runner and a real vLLM server, for tests.

It forwards every request upstream (streaming responses are relayed chunk by chunk), records
what it saw (the ``x-telltale-sample`` header, the JSON body, the outcome) and how many requests
were in flight at once, and injects faults on demand: ``faults(sample_id, attempt)`` returns
None to forward, or one of

- ``"400"`` / ``"429"`` / ``"503"``: answer that status (429 with ``Retry-After: 0``) without
  forwarding;
- ``"stall"``: wait 30 s before forwarding (longer than a test's read timeout);
- ``"drip"``: forward, relaying each chunk 0.2 s after the previous one (a slow stream);
- ``"drop"``: close the connection before any response;
- ``"drop_mid"``: forward, relay the response head and the first chunks, then cut the connection.

It runs its own event loop in a thread, so a runner in this process or in a subprocess can use
it: ``with FaultProxy(upstream) as proxy: ... proxy.base_url ...``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

FAULTS = ("400", "429", "503", "stall", "drip", "drop", "drop_mid")
STALL_SECONDS = 30.0


@dataclass
class Seen:
    """One request the proxy received."""

    sample_id: str
    attempt: int
    path: str
    body: dict[str, Any]
    fault: str | None
    status: int = 0
    completed: bool = False
    """The full answer went back to the client (for a stream: up to ``[DONE]``)."""


@dataclass
class _State:
    seen: list[Seen] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0


class FaultProxy:
    """Forward ``127.0.0.1:<port>/v1/...`` to ``upstream`` (a base URL ending in ``/v1``)."""

    def __init__(
        self, upstream: str, faults: Callable[[str, int], str | None] | None = None
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = faults or (lambda sample_id, attempt: None)
        self.state = _State()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=httpx.Limits())
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None and self._client is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._client.aclose()

    @property
    def base_url(self) -> str:
        """The proxy's OpenAI-compatible base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what was seen ---------------------------------------------------------------------

    @property
    def seen(self) -> list[Seen]:
        """Every request received so far (a copy)."""
        with self._lock:
            return list(self.state.seen)

    @property
    def max_in_flight(self) -> int:
        """The most chat requests being forwarded at once."""
        with self._lock:
            return self.state.max_in_flight

    def reset(self) -> None:
        """Forget what was seen (fault attempts count from 1 again)."""
        with self._lock:
            self.state = _State()

    # -- serving ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if not await self._handle(method, path, headers, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _handle(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; False when the connection must be closed."""
        sample_id = headers.get("x-telltale-sample", "")
        chat = path.endswith("/chat/completions")
        with self._lock:
            attempt = self.state.attempts[sample_id] = self.state.attempts[sample_id] + 1
            fault = self.faults(sample_id, attempt) if chat else None
            seen = Seen(sample_id, attempt, path, json.loads(body) if body else {}, fault)
            self.state.seen.append(seen)
        if fault == "stall":
            await asyncio.sleep(STALL_SECONDS)
        if fault in ("400", "429", "503"):
            seen.status = int(fault)
            extra = "Retry-After: 0\r\n" if fault == "429" else ""
            msg = b'{"error": "injected"}'
            writer.write(
                f"HTTP/1.1 {fault} Injected\r\n{extra}Content-Type: application/json\r\n"
                f"Content-Length: {len(msg)}\r\n\r\n".encode()
                + msg
            )
            await writer.drain()
            return True
        if fault == "drop":
            return False
        url = self.upstream + path.removeprefix("/v1")
        assert self._client is not None
        counted = chat
        if chat:
            with self._lock:
                self.state.in_flight += 1
                self.state.max_in_flight = max(self.state.max_in_flight, self.state.in_flight)

        def answered() -> None:
            # Out of flight before the answer's last bytes go out: a client that reuses its
            # slot the moment it has the answer must not be counted twice.
            nonlocal counted
            if counted:
                counted = False
                with self._lock:
                    self.state.in_flight -= 1

        try:
            return await self._relay(method, url, headers, body, writer, seen, answered)
        finally:
            answered()

    async def _relay(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
        seen: Seen,
        answered: Callable[[], None],
    ) -> bool:
        assert self._client is not None
        forward = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
        async with self._client.stream(method, url, content=body, headers=forward) as resp:
            seen.status = resp.status_code
            writer.write(
                f"HTTP/1.1 {resp.status_code} {resp.reason_phrase}\r\n"
                f"Content-Type: {resp.headers.get('content-type', 'text/plain')}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            stream = "text/event-stream" in resp.headers.get("content-type", "")
            relayed = 0
            tail = b""
            async for chunk in resp.aiter_raw():
                if seen.fault == "drop_mid" and relayed >= 2:
                    writer.transport.abort()  # no terminating chunk: the client sees a cut
                    return False
                if seen.fault == "drip":
                    await asyncio.sleep(0.2)
                tail = tail[-8:] + chunk
                done = stream and b"[DONE]" in tail
                if done:
                    answered()
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
                relayed += 1
                # The whole answer reached the client (it may hang up now, as the runner does).
                seen.completed = seen.completed or done
            answered()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            seen.completed = True
        return True
