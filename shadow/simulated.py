"""A simulated candidate model behind a real OpenAI-compatible HTTP endpoint, for the demo.

The demo must run on a laptop with no model and no GPU, yet show the whole shadow path: sampling,
redaction, streaming replay over HTTP, storage, comparison, judging. :class:`SimulatedEndpoint`
serves ``/v1/models`` and ``/v1/chat/completions`` (streamed with usage, or not) on 127.0.0.1,
and answers as the traffic simulator's candidate behaves: longer answers (``verbosity``), a
refusal rate, a time to first token and a time per token. Asked by the pairwise judge (its
system prompt is :data:`shadow.JUDGE_SYSTEM_PROMPT`), it prefers the longer answer more often
than not, as LLM judges do, so the demo's length-controlled win rate has something to correct.

Everything it says is labelled: every model it serves is named ``simulated-...``, and every
answer starts with ``[simulated]``. Answers depend only on the request (a hash), so a replay of
the same request gets the same answer.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from shadow.judge import JUDGE_SYSTEM_PROMPT

__all__ = ["SimulatedEndpoint", "SimulatedModel"]

_TEXT = (
    "the answer depends on what you need here is a short plan first check the inputs then "
    "compare the options and pick the simplest one that works in practice this usually means "
    "testing a small case before the full run and writing down what changed"
)
_WORDS = _TEXT.split(" ")
_REFUSAL = "[simulated] I'm sorry, but I can't help with that request."
_RESPONSES = re.compile(r"\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\n\nWhich", re.S)


@dataclass(frozen=True)
class SimulatedModel:
    """How one simulated model answers."""

    name: str
    verbosity: float = 1.0
    """Multiplier on the answer length a baseline model would give."""
    refusal_rate: float = 0.015
    ttft_ms: float = 40.0
    ms_per_token: float = 1.0
    judge_length_bias: float = 0.7
    """As a judge: probability of preferring the longer answer when the two differ in length."""


def _draw(*parts: str) -> float:
    """A uniform number in [0, 1) fixed by the request's content."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest) / 2**64


def _answer(model: SimulatedModel, prompt: str, max_tokens: int | None) -> tuple[list[str], str]:
    """The answer's tokens (words) and finish reason."""
    if _draw(model.name, "refuse", prompt) < model.refusal_rate:
        return _REFUSAL.split(" "), "stop"
    # About as long as the simulator's recorded answers (6-18 words), fixed by the prompt so
    # that two models answering the same prompt differ by their verbosity alone.
    n = max(3, round((6 + 12 * _draw("len", prompt)) * model.verbosity))
    start = int(_draw("start", prompt) * len(_WORDS))
    tokens = ["[simulated]"] + [_WORDS[(start + i) % len(_WORDS)] for i in range(n)]
    if max_tokens is not None and len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


def _verdict(model: SimulatedModel, user: str) -> str:
    """A length-biased judge: the longer answer wins with ``judge_length_bias``, else a coin."""
    found = _RESPONSES.search(user)
    if found is None:
        return "tie"
    a, b = (len(x.split()) for x in found.groups())
    u = _draw(model.name, "judge", user)
    if a != b and u < model.judge_length_bias:
        return "A" if a > b else "B"
    return ("A", "B", "tie")[int(_draw("coin", user) * 3)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        """Send each streamed chunk at once: without TCP_NODELAY small writes wait for the
        client's delayed ACK and the time to first token is lost."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo has its own progress display."""

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        """``/v1/models`` and ``/health``."""
        if self.path.rstrip("/").endswith("/models"):
            models = [
                {"id": m, "object": "model", "owned_by": "simulated"} for m in self.server.models
            ]
            self._json(200, {"object": "list", "data": models})
        elif self.path == "/health":
            self._json(200, {"status": "ok"})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        """``/v1/chat/completions``, streamed (with usage when asked) or not."""
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        model = self.server.models.get(request.get("model", ""))
        if model is None:
            self._json(404, {"error": {"message": f"unknown model {request.get('model')!r}"}})
            return
        messages = request.get("messages", [])
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        if system == JUDGE_SYSTEM_PROMPT:
            tokens, finish = [_verdict(model, user)], "stop"
        else:
            tokens, finish = _answer(model, user, request.get("max_tokens"))
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        time.sleep(model.ttft_ms / 1000)
        if not request.get("stream"):
            text = " ".join(tokens)
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "finish_reason": finish}  # fmt: skip
            self._json(200, {"id": "sim", "object": "chat.completion", "model": model.name,
                             "choices": [choice], "usage": usage})  # fmt: skip
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        for chunk in _chunks(model, tokens, finish, usage if include_usage else None):
            data = f"data: {chunk}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


def _chunks(
    model: SimulatedModel, tokens: list[str], finish: str, usage: dict[str, int] | None
) -> Iterator[str]:
    """Server-sent events as vLLM sends them: content deltas, the finish, usage, [DONE]."""
    head = {"id": "sim", "object": "chat.completion.chunk", "model": model.name}
    for i, token in enumerate(tokens):
        if i:
            time.sleep(model.ms_per_token / 1000)
        delta = {"content": token if i == 0 else " " + token}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        yield json.dumps(head | {"choices": [choice]})
    yield json.dumps(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage is not None:
        yield json.dumps(head | {"choices": [], "usage": usage})
    yield "[DONE]"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    models: dict[str, SimulatedModel]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client closing its keep-alive connection is how HTTP clients end; not an error."""


class SimulatedEndpoint:
    """An OpenAI-compatible server on 127.0.0.1 answering as the given simulated models.

    Use as a context manager; ``base_url`` ends in ``/v1``.
    """

    def __init__(self, *models: SimulatedModel) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.models = {m.name: m for m in models}
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="simulated-endpoint", daemon=True
        )

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
