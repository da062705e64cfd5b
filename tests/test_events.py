"""The event contract: what is accepted, what is rejected, and that every rejection says why."""

from __future__ import annotations

import datetime as dt

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given

from ingest.events import MAX_EVENT_BYTES, DecodeFailure, EventDecoder, Feedback, Response

from events_factory import encode, feedback, iso, response, retry, session_end

DECODER = EventDecoder()


def _fails(raw: bytes) -> DecodeFailure:
    result = DECODER.decode(raw)
    assert isinstance(result, DecodeFailure), result
    return result


@pytest.mark.parametrize("make", [response, feedback, retry, session_end])
def test_valid_events_decode(make):
    event, extra = DECODER.decode(encode(make(1)))
    assert event.event_id == make(1)["event_id"]
    assert extra == ""


def test_unknown_fields_are_kept_as_extra():
    event, extra = DECODER.decode(encode(response(1, experiment="x7", nested={"a": [1, 2]})))
    assert isinstance(event, Response)
    assert msgspec.json.decode(extra) == {"experiment": "x7", "nested": {"a": [1, 2]}}


def test_unknown_fields_do_not_hide_errors_in_known_ones():
    failure = _fails(encode(response(1, experiment="x7", latency_ms=-5)))
    assert "latency_ms" in failure.reason


@pytest.mark.parametrize(
    ("raw", "kind", "needle"),
    [
        (b"", "empty", "empty"),
        (b"{not json", "bad_json", "malformed"),
        (b"\xff\xfe\x00garbage", "not_utf8", "malformed"),
        (encode(response(1, latency_ms="fast")), "invalid", "$.latency_ms"),
        (encode(response(1, prompt_tokens=-3)), "invalid", "$.prompt_tokens"),
        (encode(response(1, completion_tokens=10**12)), "invalid", "$.completion_tokens"),
        (encode(response(1, latency_ms=1e12)), "invalid", "$.latency_ms"),
        (encode(response(1, ttft_ms=5000.0, latency_ms=100.0)), "invalid", "ttft_ms"),
        (encode(response(1, finish_reason="exploded")), "invalid", "$.finish_reason"),
        (encode(feedback(1, rating=0)), "invalid", "$.rating"),
        (encode(retry(1, kind="undo")), "invalid", "$.kind"),
        (encode({**response(1), "type": "purchase"}), "invalid", "$.type"),
        (encode({k: v for k, v in response(1).items() if k != "type"}), "invalid", "type"),
        (encode({k: v for k, v in response(1).items() if k != "user_id"}), "invalid", "user_id"),
        (encode(response(1, ts="2026-11-20T10:00:00")), "invalid", "$.ts"),
        (encode(response(1, ts="yesterday")), "invalid", "$.ts"),
        (encode(response(1, ts="2099-01-01T00:00:00Z")), "invalid", "ts:"),
        (encode(response(1, ts="1970-01-01T00:00:00Z")), "invalid", "ts:"),
        (encode(response(1, schema_version=99)), "invalid", "$.schema_version"),
        (encode(response(1, event_id="")), "invalid", "$.event_id"),
        (b"[1, 2, 3]", "invalid", "Expected `object`"),
        (b"null", "invalid", "Expected `object`"),
    ],
)
def test_bad_input_is_rejected_with_the_field_and_reason(raw, kind, needle):
    failure = _fails(raw)
    assert failure.kind == kind
    assert needle in failure.reason


def test_rejections_keep_the_event_id_when_it_can_be_read():
    assert _fails(encode(response(1, latency_ms=-1))).event_id == "resp-1"


def test_oversized_payload_is_rejected_before_decoding():
    raw = encode(response(1, prompt="x" * MAX_EVENT_BYTES))
    failure = _fails(raw)
    assert failure.kind == "too_large"
    assert str(MAX_EVENT_BYTES) in failure.reason


def test_future_bound_follows_the_clock():
    decoder = EventDecoder(max_future=dt.timedelta(hours=1))
    soon = iso(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30))
    later = iso(dt.datetime.now(dt.UTC) + dt.timedelta(hours=3))
    assert isinstance(decoder.decode(encode(feedback(1, ts=soon)))[0], Feedback)
    assert isinstance(decoder.decode(encode(feedback(1, ts=later))), DecodeFailure)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(raw):
    result = DECODER.decode(raw)
    assert isinstance(result, DecodeFailure | tuple)


@given(
    prompt=st.text(max_size=200),
    latency=st.floats(allow_nan=True, allow_infinity=True),
    tokens=st.integers(min_value=-(2**40), max_value=2**40),
)
def test_arbitrary_field_values_decode_or_fail_cleanly(prompt, latency, tokens):
    raw = msgspec.json.encode(
        response(
            1,
            prompt=prompt,
            latency_ms=latency if latency == latency else None,
            completion_tokens=tokens,
            ttft_ms=None,
        )
    )
    result = DECODER.decode(raw)
    if isinstance(result, DecodeFailure):
        assert result.reason
    else:
        event, _ = result
        assert event.prompt == prompt
        assert 0 <= event.completion_tokens <= 2_000_000
        assert 0 <= event.latency_ms <= 3_600_000
