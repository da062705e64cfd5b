"""Valid event payloads for tests, as dicts, so each test can break exactly one thing."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

TS = "2026-11-20T10:00:00.000Z"


def response(i: int = 0, **over: Any) -> dict[str, Any]:
    """A valid response event."""
    event = {
        "type": "response",
        "schema_version": 1,
        "event_id": f"resp-{i}",
        "ts": TS,
        "request_id": f"req-{i}",
        "conversation_id": f"conv-{i // 4}",
        "session_id": f"sess-{i // 8}",
        "user_id": f"user-{i % 50}",
        "model_version": "m-2026-10",
        "variant": "control",
        "turn_index": i % 4,
        "prompt": "How do I sort a list in Python?",
        "response": "Use sorted(xs) or xs.sort().",
        "prompt_tokens": 12,
        "completion_tokens": 40,
        "latency_ms": 850.0,
        "ttft_ms": 120.0,
        "finish_reason": "stop",
        "locale": "en-US",
        "platform": "web",
        "app_version": "5.2.0",
        "user_tenure_days": 40,
        "intent": "coding",
    }
    event.update(over)
    return event


def feedback(i: int = 0, **over: Any) -> dict[str, Any]:
    """A valid thumbs event on response ``i``."""
    event = {
        "type": "feedback",
        "event_id": f"fb-{i}",
        "ts": TS,
        "request_id": f"req-{i}",
        "user_id": f"user-{i % 50}",
        "rating": -1 if i % 3 == 0 else 1,
        "reason_tags": ["wrong"] if i % 3 == 0 else [],
    }
    event.update(over)
    return event


def retry(i: int = 0, **over: Any) -> dict[str, Any]:
    """A valid retry event of response ``i``."""
    event = {
        "type": "retry",
        "event_id": f"rt-{i}",
        "ts": TS,
        "request_id": f"req-{i}",
        "new_request_id": f"req-{i}-b",
        "kind": "regenerate",
        "user_id": f"user-{i % 50}",
    }
    event.update(over)
    return event


def session_end(i: int = 0, **over: Any) -> dict[str, Any]:
    """A valid session_end event."""
    event = {
        "type": "session_end",
        "event_id": f"se-{i}",
        "ts": TS,
        "session_id": f"sess-{i}",
        "user_id": f"user-{i % 50}",
        "turns": 4,
        "seconds": 95.5,
        "end_reason": "closed",
        "task_completed": True,
    }
    event.update(over)
    return event


def encode(event: dict[str, Any]) -> bytes:
    """JSON bytes of an event dict."""
    return msgspec.json.encode(event)


def iso(ts: dt.datetime) -> str:
    """RFC 3339 with milliseconds and Z."""
    return ts.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
