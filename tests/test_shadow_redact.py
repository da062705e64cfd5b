"""PII redaction: a labelled list kept as data (near-misses included), simulator PII, properties."""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from shadow import REDACTION_KINDS, RedactionReport, redact_text

from simulated_text import text_events

LABELLED = json.loads((Path(__file__).parent / "results" / "pii_labelled.json").read_text())


def score(items: list[dict]) -> dict[str, tuple[int, int, int]]:
    """(true positives, false positives, false negatives) per kind: a replacement counts as a
    true positive when a labelled item of that kind was expected in that text."""
    out: dict[str, Counter[str]] = {k: Counter() for k in REDACTION_KINDS}
    for item in items:
        expected = Counter(kind for kind, _ in item["pii"])
        got = Counter(redact_text(item["text"]).counts)
        for kind in REDACTION_KINDS:
            tp = min(expected[kind], got[kind])
            out[kind].update(tp=tp, fp=got[kind] - tp, fn=expected[kind] - tp)
    return {k: (c["tp"], c["fp"], c["fn"]) for k, c in out.items()}


@pytest.mark.parametrize("item", LABELLED, ids=[f"{i}-{x['note']}" for i, x in enumerate(LABELLED)])
def test_labelled_text_is_redacted_exactly(item):
    result = redact_text(item["text"])
    assert result.counts == dict(Counter(kind for kind, _ in item["pii"]))
    for kind, value in item["pii"]:
        assert value not in result.text
        assert f"[{kind.upper()}]" in result.text
    if not item["pii"]:
        assert result.text == item["text"]


def test_labelled_list_covers_every_kind_and_has_near_misses():
    positives = Counter(kind for item in LABELLED for kind, _ in item["pii"])
    assert all(positives[k] >= 8 for k in REDACTION_KINDS), positives
    assert sum(1 for item in LABELLED if not item["pii"]) >= 40
    tp, fp, fn = (sum(v[i] for v in score(LABELLED).values()) for i in range(3))
    assert tp == sum(positives.values())
    assert (fp, fn) == (0, 0)


# --------------------------------------------------------------------------------------------
# The simulator puts emails and phone numbers into some prompts and feedback comments
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated_texts() -> list[str]:
    return [
        event[field]
        for event in text_events({"pii_share": 0.4}, seed=11)
        for field in ("prompt", "response", "comment")
        if event.get(field)
    ]


def test_simulated_pii_is_all_removed_and_nothing_else_touched(simulated_texts):
    report = RedactionReport()
    with_pii = 0
    for text in simulated_texts:
        result = redact_text(text)
        report.add(result)
        # the simulator's templates carry no digits or "@" except in the PII it appends
        has_pii = "@" in text or any(c.isdigit() for c in text)
        with_pii += has_pii
        if has_pii:
            assert "@" not in result.text and not any(c.isdigit() for c in result.text), text
            assert result.total == 1, (text, result)
        else:
            assert result.text == text
    assert with_pii >= 50
    frame = report.to_frame()
    assert report.total == report.texts_redacted == with_pii
    assert set(frame.filter(pl.col("redactions") > 0)["kind"]) == {"email", "phone"}
    assert report.texts == len(simulated_texts)


def test_report_counts_redactions_and_texts_per_kind():
    report = RedactionReport()
    report.add(redact_text("a@example.com, b@example.com and 10.0.0.1"))
    report.add(redact_text("nothing here"))
    report.add(redact_text("mail c@example.org"))
    expected = pl.DataFrame(
        {
            "kind": list(REDACTION_KINDS),
            "redactions": [0, 3, 0, 0, 1, 0],
            "texts": [0, 2, 0, 0, 1, 0],
        }
    )
    assert_frame_equal(report.to_frame(), expected)
    assert (report.total, report.texts, report.texts_redacted) == (4, 3, 2)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
emails = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._+-]{0,20}[A-Za-z0-9])?", fullmatch=True),
    st.lists(_LABEL, min_size=1, max_size=3),
    st.sampled_from(["com", "org", "net", "de", "io", "co", "example", "museum"]),
)

_BRANDS = [("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("34", 15),
           ("37", 15), ("6011", 16), ("65", 16), ("3530", 16), ("36", 14), ("62", 17)]  # fmt: skip


def _with_luhn_digit(body: str) -> str:
    for check in string.digits:
        digits = body + check
        total = sum(
            (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 else d
            for i, d in enumerate(int(c) for c in reversed(digits))
        )
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable: one check digit always fits")


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix, length = draw(st.sampled_from(_BRANDS))
    middle = draw(st.text(string.digits, min_size=length - len(prefix) - 1,
                          max_size=length - len(prefix) - 1))  # fmt: skip
    digits = _with_luhn_digit(prefix + middle)
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


prose = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_any_text_redacts_without_error_and_idempotently(text):
    once = redact_text(text)
    twice = redact_text(once.text)
    assert twice.text == once.text
    assert twice.counts == {}


@settings(max_examples=300, deadline=None)
@given(prose, emails, prose)
def test_an_embedded_email_is_always_removed(before, email, after):
    result = redact_text(f"{before} {email} {after}")
    assert email not in result.text
    assert redact_text(result.text).text == result.text


@settings(max_examples=300, deadline=None)
@given(prose, cards(), prose)
def test_an_embedded_card_is_always_removed(before, card, after):
    result = redact_text(f"{before} {card} {after}")
    assert card not in result.text
    assert card.replace(" ", "").replace("-", "") not in result.text
    assert redact_text(result.text).text == result.text


@settings(max_examples=200, deadline=None)
@given(st.text(string.digits + " -./", min_size=1, max_size=40))
def test_digit_soup_is_idempotent(text):
    once = redact_text(text)
    assert redact_text(once.text).text == once.text
