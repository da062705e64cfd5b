"""Shadow sampling on a real warehouse filled by the simulator (plus hand-made conversations):
strata, dedup, opt-out, history, sampling parameters, redaction, reproducibility."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import warehouse
from shadow import TerminalShadowError
from shadow.sample import allocate_strata, sample_traffic

import shadow_traffic
from shadow_traffic import HANDMADE_INTENT, SINCE, UNTIL, VERSION

WINDOW = {"since": SINCE, "until": UNTIL, "model_versions": [VERSION]}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
PHONE = re.compile(r"\+?\(?\d{2,4}\)?[ -]\d{3,4}[ -]?\d{3,4}")


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Iterator[warehouse.Warehouse]:
    """One warehouse for the module: filling it takes seconds; every test only reads."""
    tmp = tmp_path_factory.mktemp("shadow-sample")
    with warehouse.connect(f"chdb://{tmp}/warehouse") as wh:
        warehouse.migrate(wh)
        shadow_traffic.fill(wh, tmp)
        yield wh


def _raw_prompts(wh: warehouse.Warehouse, ids: list[str]) -> list[str]:
    return wh.query_frame(
        "SELECT prompt FROM responses FINAL WHERE request_id IN {ids:Array(String)}",
        parameters={"ids": ids},
    )["prompt"].to_list()


def test_every_stratum_gets_its_target(filled):
    got = sample_traffic(filled, **WINDOW, per_stratum=25, seed=1)
    strata = got.strata.sort("stratum")
    assert strata.height >= 6  # the simulator's intents, plus the hand-made one
    for row in strata.iter_rows(named=True):
        assert row["target"] == min(25, row["candidates"])
        assert row["sampled"] == row["target"]
    assert len(got.samples) == strata["sampled"].sum()
    by_stratum = {s.stratum for s in got.samples}
    assert by_stratum == set(strata["stratum"])
    assert all(s.stratum == s.intent for s in got.samples)


def test_total_is_split_in_proportion_to_candidates(filled):
    got = sample_traffic(filled, **WINDOW, total=200, seed=1, stratify_by="locale")
    strata = got.strata
    assert strata["sampled"].sum() == 200 == len(got.samples)
    share = strata["candidates"] / strata["candidates"].sum() * 200
    assert ((strata["sampled"] - share).abs() < 1).all()


def test_same_seed_same_sample_other_seed_other_sample(filled):
    a = sample_traffic(filled, **WINDOW, per_stratum=10, seed=7)
    b = sample_traffic(filled, **WINDOW, per_stratum=10, seed=7)
    c = sample_traffic(filled, **WINDOW, per_stratum=10, seed=8)
    assert a.samples == b.samples
    assert [s.sample_id for s in a.samples] != [s.sample_id for s in c.samples]


def test_prompts_are_deduplicated(filled):
    got = sample_traffic(filled, **WINDOW, per_stratum=100_000, seed=1)
    ids = [s.sample_id for s in got.samples]
    prompts = _raw_prompts(filled, ids)
    assert len(prompts) == len(set(prompts)) == len(ids)
    # Simulated prompts repeat (templates): dedup must have had work to do.
    distinct = filled.query_frame(
        "SELECT count() AS n, uniqExact(prompt) AS u FROM responses FINAL"
        " WHERE prompt IS NOT NULL AND turn_index = 0"
    ).row(0, named=True)
    assert distinct["n"] > 2 * distinct["u"]
    assert sum(s.sample_id in ("d0", "d1") for s in got.samples) == 1


def test_users_who_opted_out_are_never_sampled(filled):
    got = sample_traffic(filled, **WINDOW, per_stratum=100_000, seed=1)
    ids = {s.sample_id for s in got.samples}
    assert not ids & {"o0", "o1"}
    opted = filled.query_frame(
        "SELECT DISTINCT request_id FROM responses FINAL WHERE user_id IN"
        " (SELECT user_id FROM responses WHERE opt_out)"
    )["request_id"].to_list()
    assert len(opted) > 100 and not ids & set(opted)
    assert all(_raw_prompts(filled, sorted(ids)))  # only responses that carry a prompt


def test_a_later_turn_replays_with_its_redacted_history(filled):
    got = sample_traffic(
        filled, **WINDOW, per_stratum=100, segment_filter={"intent": [HANDMADE_INTENT]}, seed=1
    )
    by_id = {s.sample_id: s for s in got.samples}
    assert set(by_id) == {"h0", "h1", "h2", "d0"} or set(by_id) == {"h0", "h1", "h2", "d1"}
    h2 = by_id["h2"]
    assert h2.messages == (
        ("user", "Mail me at [EMAIL] please"),
        ("assistant", "Sure, noted. Call [PHONE] if needed."),
        ("user", "Second question"),
        ("assistant", "Second answer"),
        ("user", "Third question"),
    )
    assert h2.turns == 3 and by_id["h0"].turns == 1
    # The earlier turn of conv-gap has no text: its later turn is not replayable.
    assert "g1" not in by_id
    assert got.redaction.total >= 2  # the email and the phone number, counted once each turn
    assert got.redaction.to_frame().filter(kind="email")["redactions"][0] >= 1


def test_production_sampling_parameters_travel_with_the_sample(filled):
    got = sample_traffic(
        filled, **WINDOW, per_stratum=100, segment_filter={"intent": [HANDMADE_INTENT]}, seed=1
    )
    by_id = {s.sample_id: s for s in got.samples}
    h2 = by_id["h2"]
    assert (h2.temperature, h2.max_tokens, h2.stop, h2.expected) == (
        0.5,
        77,
        ("\n\n", "END"),
        "^Third",
    )
    assert h2.production_output == "Third answer"
    dup = by_id.get("d0") or by_id["d1"]
    assert dup.stop == ("STOP",) and dup.expected is None and dup.max_tokens is None


def test_no_email_or_phone_number_survives_in_simulated_prompts(filled):
    raw = filled.query_frame(
        "SELECT count() AS n FROM responses FINAL WHERE match(prompt, '@example\\\\.')"
    )["n"][0]
    assert raw > 0  # the simulator planted some
    got = sample_traffic(filled, **WINDOW, per_stratum=100_000, seed=1)
    texts = [c for s in got.samples for _, c in s.messages]
    texts += [s.production_output for s in got.samples if s.production_output]
    assert not [t for t in texts if EMAIL.search(t) or PHONE.search(t)]
    assert got.redaction.to_frame().filter(kind="email")["redactions"][0] > 0
    assert got.redaction.texts == len(texts)


def test_bad_requests_fail_clearly(filled):
    with pytest.raises(TerminalShadowError, match="cannot sample by"):
        sample_traffic(filled, **WINDOW, per_stratum=1, stratify_by="user_id")
    with pytest.raises(TerminalShadowError, match="either per_stratum or total"):
        sample_traffic(filled, **WINDOW, seed=1)
    empty = sample_traffic(filled, **{**WINDOW, "model_versions": ["nope"]}, total=10)
    assert empty.samples == () and empty.strata.height == 0


@given(
    candidates=st.dictionaries(st.text(max_size=4), st.integers(0, 1000), max_size=8),
    total=st.integers(0, 5000),
)
def test_proportional_allocation_properties(candidates, total):
    got = allocate_strata(candidates, total=total)
    available = sum(candidates.values())
    assert set(got) == set(candidates)
    assert sum(got.values()) == min(total, available)
    for k, n in got.items():
        assert 0 <= n <= candidates[k]
        if total >= available:
            assert n == candidates[k]
        else:
            assert abs(n - total * candidates[k] / available) < 1


@given(
    candidates=st.dictionaries(st.text(max_size=4), st.integers(0, 100), max_size=8),
    per=st.integers(-3, 200),
)
def test_per_stratum_allocation_is_capped_by_what_a_stratum_has(candidates, per):
    got = allocate_strata(candidates, per_stratum=per)
    assert got == {k: min(max(per, 0), n) for k, n in candidates.items()}
    named = allocate_strata(candidates, per_stratum={k: per for k in list(candidates)[:1]})
    assert sum(named.values()) == sum(list(got.values())[:1])
