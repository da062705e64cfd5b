"""The event contract: what the product backend sends, and how it is decoded and validated.

Every event is one JSON object with a ``type`` tag (``response``, ``feedback``, ``retry``,
``session_start``, ``session_end``) and a ``schema_version``. Decoding is msgspec (typed, in C);
what msgspec cannot express (time bounds, cross-field rules) is checked right after, so every
rejection names the field and the reason. Unknown extra fields are tolerated and kept, as a JSON
object in the event's ``extra`` column. ``docs/events.md`` is the human-readable contract.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import msgspec

__all__ = [
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "SCHEMA_VERSION",
    "DecodeFailure",
    "Event",
    "EventDecoder",
    "Feedback",
    "Response",
    "Retry",
    "SessionEnd",
    "SessionStart",
]

SCHEMA_VERSION = 1
"""The newest schema version understood here; older ones decode, newer ones are rejected."""

MAX_EVENT_BYTES = 256 * 1024
"""Larger events are rejected before decoding (upstream truncates long prompts and responses)."""

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Text = Annotated[str, msgspec.Meta(max_length=200_000)]
_Tokens = Annotated[int, msgspec.Meta(ge=0, le=2_000_000)]
_Millis = Annotated[float, msgspec.Meta(ge=0, le=3_600_000)]
_Ts = Annotated[dt.datetime, msgspec.Meta(tz=True)]
_Version = Annotated[int, msgspec.Meta(ge=1, le=SCHEMA_VERSION)]

FinishReason = Literal[
    "stop", "length", "content_filter", "refusal", "tool_calls", "error", "cancelled"
]
RetryKind = Literal["regenerate", "rephrase", "edit"]
Platform = Literal["web", "ios", "android", "desktop", "api", "other"]


class _Event(msgspec.Struct, kw_only=True, tag_field="type", forbid_unknown_fields=True):
    """Fields every event carries."""

    event_id: _Id
    ts: _Ts
    schema_version: _Version = SCHEMA_VERSION


class Response(_Event, tag="response", kw_only=True):
    """One model response shown to a user: the unit most metrics are computed on."""

    table: ClassVar[str] = "responses"

    request_id: _Id
    conversation_id: _Id
    session_id: _Id
    user_id: _Id
    model_version: _Label
    variant: _Label
    turn_index: Annotated[int, msgspec.Meta(ge=0, le=10_000)]
    prompt: _Text | None = None
    response: _Text | None = None
    prompt_tokens: _Tokens
    completion_tokens: _Tokens
    latency_ms: _Millis
    ttft_ms: _Millis | None = None
    finish_reason: FinishReason
    refused: bool = False
    locale: Annotated[str, msgspec.Meta(min_length=2, max_length=35)] = "und"
    platform: Platform = "other"
    app_version: Annotated[str, msgspec.Meta(max_length=32)] = ""
    user_tenure_days: Annotated[int, msgspec.Meta(ge=0, le=36_500)] | None = None
    cohort: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    intent: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=5)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=2_000_000)] | None = None
    opt_out: bool = False

    def _check(self) -> str | None:
        if self.ttft_ms is not None and self.ttft_ms > self.latency_ms:
            return f"ttft_ms: {self.ttft_ms} is greater than latency_ms {self.latency_ms}"
        return None


class Feedback(_Event, tag="feedback", kw_only=True):
    """A thumb up (+1) or down (-1) on one response."""

    table: ClassVar[str] = "feedback"

    request_id: _Id
    user_id: _Id
    rating: Literal[1, -1]
    reason_tags: list[Annotated[str, msgspec.Meta(max_length=64)]] = []
    comment: Annotated[str, msgspec.Meta(max_length=10_000)] | None = None


class Retry(_Event, tag="retry", kw_only=True):
    """The user asked again: regenerate, rephrase or edit of the response ``request_id``."""

    table: ClassVar[str] = "retries"

    request_id: _Id
    new_request_id: _Id
    kind: RetryKind
    # Not optional: retries are analysed per user, and the warehouse shards by user.
    user_id: _Id


class SessionStart(_Event, tag="session_start", kw_only=True):
    """A session opened."""

    table: ClassVar[str] = "sessions"

    session_id: _Id
    user_id: _Id
    platform: Platform = "other"
    locale: Annotated[str, msgspec.Meta(min_length=2, max_length=35)] = "und"


class SessionEnd(_Event, tag="session_end", kw_only=True):
    """A session closed, with what it amounted to."""

    table: ClassVar[str] = "sessions"

    session_id: _Id
    user_id: _Id
    turns: Annotated[int, msgspec.Meta(ge=0, le=100_000)]
    seconds: Annotated[float, msgspec.Meta(ge=0, le=7 * 86_400)]
    end_reason: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    task_completed: bool | None = None


Event = Response | Feedback | Retry | SessionStart | SessionEnd
EVENT_TYPES: dict[str, type[Event]] = {
    c.__struct_config__.tag: c  # type: ignore[misc]
    for c in (Response, Feedback, Retry, SessionStart, SessionEnd)
}


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """Why one raw message was rejected: ``kind`` is a short code, ``reason`` names the field."""

    kind: str
    reason: str
    event_id: str = ""


class EventDecoder:
    """Decode and validate raw JSON events.

    ``min_ts`` and ``max_future`` bound timestamps: an event older than ``min_ts`` or more than
    ``max_future`` ahead of the wall clock is rejected (a client clock set to 1970 or 2099 would
    otherwise land in a partition nobody reads).
    """

    _UNKNOWN_FIELD = "Object contains unknown field"

    def __init__(
        self,
        *,
        min_ts: dt.datetime = dt.datetime(2015, 1, 1, tzinfo=dt.UTC),
        max_future: dt.timedelta = dt.timedelta(days=1),
        max_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self._strict = msgspec.json.Decoder(Event)
        self._loose = msgspec.json.Decoder()
        self._min_ts = min_ts
        self._max_future = max_future
        self._max_bytes = max_bytes
        self._max_ts = self._now_bound()

    def __reduce__(self) -> tuple[Callable[[], EventDecoder], tuple[()]]:
        # msgspec decoders do not pickle; a decoder travels to a decoding process as its bounds.
        return (
            functools.partial(
                EventDecoder,
                min_ts=self._min_ts,
                max_future=self._max_future,
                max_bytes=self._max_bytes,
            ),
            (),
        )

    def _now_bound(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self._max_future

    def refresh_clock(self) -> None:
        """Move the future bound to now + ``max_future``; call once per batch, not per event."""
        self._max_ts = self._now_bound()

    def decode(self, raw: bytes | None) -> tuple[Event, str] | DecodeFailure:
        """Return ``(event, extra_json)`` or a :class:`DecodeFailure`; never raises on bad input.

        ``extra_json`` is ``""`` when the event had no unknown fields, else a JSON object of them.
        """
        if not raw:
            return DecodeFailure("empty", "message is empty")
        if len(raw) > self._max_bytes:
            return DecodeFailure(
                "too_large", f"message is {len(raw)} bytes; the limit is {self._max_bytes}"
            )
        extra = ""
        try:
            event = self._strict.decode(raw)
        except msgspec.ValidationError as e:
            if not str(e).startswith(self._UNKNOWN_FIELD):
                return DecodeFailure("invalid", str(e), _peek_event_id(self._loose, raw))
            decoded = self._with_extras(raw)
            if isinstance(decoded, DecodeFailure):
                return decoded
            event, extra = decoded
        except msgspec.DecodeError as e:
            return DecodeFailure(_decode_kind(raw), str(e))
        problem = self._check(event)
        if problem is not None:
            return DecodeFailure("invalid", problem, event.event_id)
        return event, extra

    def _with_extras(self, raw: bytes) -> tuple[Event, str] | DecodeFailure:
        """Slow path: split known from unknown fields, validate the known ones."""
        obj = self._loose.decode(raw)
        cls = EVENT_TYPES.get(obj.get("type")) if isinstance(obj, dict) else None
        if cls is None:  # pragma: no cover - the strict decoder rejects these first
            return DecodeFailure("invalid", "type: unknown event type")
        known = set(cls.__struct_fields__) | {"type"}
        extras = {k: v for k, v in obj.items() if k not in known}
        try:
            event = msgspec.convert({k: v for k, v in obj.items() if k in known}, Event)
        except msgspec.ValidationError as e:
            return DecodeFailure("invalid", str(e), _peek_event_id(self._loose, raw))
        return event, msgspec.json.encode(extras).decode()

    def _check(self, event: Event) -> str | None:
        """Rules msgspec cannot express; the message names the field."""
        if event.ts < self._min_ts:
            return f"ts: {event.ts.isoformat()} is before {self._min_ts.date().isoformat()}"
        if event.ts > self._max_ts:
            return f"ts: {event.ts.isoformat()} is more than {self._max_future} in the future"
        if isinstance(event, Response):
            return event._check()
        return None


def _decode_kind(raw: bytes) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    return "bad_json"


def _peek_event_id(loose: msgspec.json.Decoder, raw: bytes) -> str:
    """Best-effort event_id of a rejected event, so a dead letter can be traced to its source."""
    try:
        obj = loose.decode(raw)
    except msgspec.DecodeError:
        return ""
    value = obj.get("event_id") if isinstance(obj, dict) else None
    return value[:128] if isinstance(value, str) else ""
