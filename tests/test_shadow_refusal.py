"""Refusal detector: a labelled list kept as data (refusals, partial refusals, near-misses) and the
simulator's own refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow import is_refusal

from simulated_text import text_events

LABELLED = json.loads((Path(__file__).parent / "results" / "refusals_labelled.json").read_text())


@pytest.mark.parametrize(
    "item", LABELLED, ids=[f"{i}-{x['kind']}-{x['text'][:30]}" for i, x in enumerate(LABELLED)]
)
def test_labelled_response(item):
    assert is_refusal(item["text"]) is item["refusal"]


def test_labelled_list_has_each_kind():
    kinds = [x["kind"] for x in LABELLED]
    assert kinds.count("refusal") >= 30
    assert kinds.count("partial") >= 10
    assert kinds.count("near-miss") >= 30
    assert all(x["refusal"] == (x["kind"] != "near-miss") for x in LABELLED)


def test_simulator_refusals_are_detected_and_its_answers_are_not():
    refused = answered = 0
    for event in text_events({"refusal_rate": 0.2}, seed=5):
        if event["type"] != "response" or not event.get("response"):
            continue
        assert is_refusal(event["response"]) is event["refused"], event["response"]
        refused += event["refused"]
        answered += not event["refused"]
    assert refused >= 50 and answered >= 200


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_classified_without_error(text):
    assert isinstance(is_refusal(text), bool)


_NO_QUOTES = st.text(st.characters(exclude_characters='"`“”«»', exclude_categories=("Cs",)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([x["text"] for x in LABELLED if x["kind"] == "refusal"]), _NO_QUOTES)
def test_a_refusal_stays_a_refusal_whatever_follows(refusal, tail):
    assert is_refusal(refusal + " " + tail)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([x["text"] for x in LABELLED if x["kind"] == "refusal"]))
def test_a_quoted_refusal_is_not_one(refusal):
    quoted = refusal.replace('"', "'")
    assert not is_refusal(f'The bot answered "{quoted}" and the user retried with a new prompt.')
