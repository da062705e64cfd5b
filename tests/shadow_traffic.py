"""A warehouse filled with simulated traffic plus a few hand-made conversations whose answer is
known: what the shadow sampling and runner tests sample from."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import msgspec

import warehouse
from ingest import EventSink, Scenario, backfill, write_files

from events_factory import iso, response

DAY = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
SINCE, UNTIL = DAY, DAY + dt.timedelta(days=1)
VERSION = "assistant-2026-08"
"""The model version of the simulated day (and of the hand-made events)."""

HANDMADE_INTENT = "handmade"
"""The intent of every hand-made event, so a segment filter isolates them."""


def _event(request_id: str, minute: int, **over: object) -> dict[str, object]:
    return response(
        0,
        event_id=f"ev-{request_id}",
        request_id=request_id,
        ts=iso(DAY + dt.timedelta(hours=12, minutes=minute)),
        model_version=VERSION,
        intent=HANDMADE_INTENT,
        **over,
    )


def handmade_events() -> list[dict[str, object]]:
    """Conversations that test history, opt-out, extra fields and prompt dedup."""
    conv = {"conversation_id": "conv-history", "user_id": "user-history"}
    return [
        # A three-turn conversation with PII in its history.
        _event("h0", 0, turn_index=0, prompt="Mail me at ann.lee@example.com please", **conv,
               response="Sure, noted. Call +1 415-555-0123 if needed."),
        _event("h1", 1, turn_index=1, prompt="Second question", response="Second answer", **conv),
        _event("h2", 2, turn_index=2, prompt="Third question", response="Third answer",
               temperature=0.5, max_tokens=77, stop=["\n\n", "END"], expected="^Third", **conv),
        # A later turn whose earlier turn carries no text: not replayable with its history.
        _event("g0", 3, turn_index=0, prompt=None, response=None,
               conversation_id="conv-gap", user_id="user-gap"),
        _event("g1", 4, turn_index=1, prompt="After a gap", response="answer",
               conversation_id="conv-gap", user_id="user-gap"),
        # A user who opted out on one response: none of their responses may be sampled.
        _event("o0", 5, turn_index=0, prompt="opted-out user's earlier prompt", response="a",
               conversation_id="conv-opt", user_id="user-opted-out"),
        _event("o1", 6, turn_index=0, prompt="opted-out user's later prompt", response="b",
               conversation_id="conv-opt2", user_id="user-opted-out", opt_out=True),
        # The same prompt twice: sampled once.
        _event("d0", 7, turn_index=0, prompt="Duplicate prompt", response="x",
               conversation_id="conv-d0", user_id="user-d0", stop="STOP"),
        _event("d1", 8, turn_index=0, prompt="Duplicate prompt", response="y",
               conversation_id="conv-d1", user_id="user-d1", stop="STOP"),
    ]  # fmt: skip


def fill(wh: warehouse.Warehouse, tmp: Path) -> None:
    """Simulate one day (seed 3), add :func:`handmade_events`, ingest both by backfill."""
    sim = write_files(
        Scenario.default().evolve(start=DAY.date(), days=1),
        tmp / "sim",
        seed=3,
        fmt="jsonl.gz",
        progress=False,
    )
    extra = tmp / "handmade.jsonl.gz"
    with gzip.open(extra, "wb") as f:
        f.write(b"\n".join(msgspec.json.encode(e) for e in handmade_events()))
    backfill(EventSink(wh), [*sim.event_files, extra], progress=False)
