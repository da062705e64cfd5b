"""Tests of the traffic simulator: contract, determinism, seasonality, rollout, planted truth."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.errors import TerminalIngestError
from ingest.events import (
    DecodeFailure,
    Event,
    EventDecoder,
    Feedback,
    Response,
    Retry,
    SessionEnd,
    SessionStart,
)
from ingest.simulate import (
    EVENT_KINDS,
    Scenario,
    ground_truth,
    produce_to_kafka,
    simulate,
    write_files,
)

START = dt.date(2026, 9, 1)  # a Tuesday
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def quiet(**changes) -> Scenario:
    """The default world without interventions, small and without text unless asked."""
    base = {
        "days": 3,
        "population": {"initial_users": 300, "new_users_per_day": 10},
        "responses": {"text_share": 0.0},
        "truth_samples": 5000,
        "rollout": None,
        "population_shift": None,
        "ui_release": None,
        "holidays": [],
    }
    return Scenario.default().evolve(**_merge(base, changes))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def decode_all(chunks: list[list[bytes]]) -> list[Event]:
    decoder = EventDecoder()
    events = []
    for chunk in chunks:
        for raw in chunk:
            result = decoder.decode(raw)
            assert not isinstance(result, DecodeFailure), (result, raw)
            event, extra = result
            assert extra == ""
            events.append(event)
    return events


def day(i: int) -> str:
    return (START + dt.timedelta(days=i)).isoformat()


# --- the contract ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy() -> tuple[Scenario, list[list[bytes]], list[Event]]:
    """Four days with every feature on: A/B, full switch, shift, UI release, holiday, text."""
    scenario = Scenario.default().evolve(
        days=4,
        population={"initial_users": 800, "new_users_per_day": 20},
        responses={"text_share": 0.6, "pii_share": 0.2},
        rollout={
            "stages": [{"date": day(1), "treatment_share": 0.3}],
            "full_switch": day(3),
        },
        population_shift={"date": day(1), "days": 1, "extra_users": 200},
        ui_release={"date": day(2)},
        holidays=[{"name": "test day", "date": day(2), "locales": ["de-DE"]}],
        truth_samples=5000,
    )
    chunks = list(simulate(scenario))
    return scenario, chunks, decode_all(chunks)


def test_every_event_decodes_and_every_kind_appears(busy):
    _, chunks, events = busy
    assert len(chunks) == 5  # four days and the tail past the last midnight
    kinds = Counter(type(e) for e in events)
    assert set(kinds) == {Response, Feedback, Retry, SessionStart, SessionEnd}
    assert kinds[SessionStart] == kinds[SessionEnd]
    assert 0.03 < kinds[Feedback] / kinds[Response] < 0.2
    texts = [e.prompt for e in events if isinstance(e, Response) and e.prompt]
    assert any("@" in t for t in texts)  # something for the PII redactor to find
    assert all(e.prompt is None for e in events if isinstance(e, Response) and e.opt_out)


def test_ids_unique_and_timestamps_rfc3339_millis(busy):
    _, chunks, events = busy
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids)
    requests = [e.request_id for e in events if isinstance(e, Response)]
    assert len(set(requests)) == len(requests)
    for chunk in chunks:
        for raw in chunk[:50]:
            assert TS.match(json.loads(raw)["ts"])


def test_chunks_are_utc_days_in_time_order(busy):
    _, chunks, _ = busy
    last = None
    for i, chunk in enumerate(chunks):
        stamps = [json.loads(raw)["ts"] for raw in chunk]
        assert stamps == sorted(stamps)
        assert {s[:10] for s in stamps} == {day(i)}
        if last is not None:
            assert last <= stamps[0]
        last = stamps[-1]


def test_events_refer_to_each_other(busy):
    _, _, events = busy
    responses = {e.request_id: e for e in events if isinstance(e, Response)}
    by_session: dict[str, list[Response]] = defaultdict(list)
    for r in responses.values():
        by_session[r.session_id].append(r)
    for f in (e for e in events if isinstance(e, Feedback)):
        assert f.ts > responses[f.request_id].ts
        assert f.user_id == responses[f.request_id].user_id
    for r in (e for e in events if isinstance(e, Retry)):
        old, new = responses[r.request_id], responses[r.new_request_id]
        assert old.ts < r.ts < new.ts
        assert new.conversation_id == old.conversation_id
        assert new.turn_index == old.turn_index + 1
    starts = {e.session_id: e for e in events if isinstance(e, SessionStart)}
    for end in (e for e in events if isinstance(e, SessionEnd)):
        turns = by_session.get(end.session_id, [])
        assert end.turns == len(turns)
        assert starts[end.session_id].ts < end.ts
        assert all(starts[end.session_id].ts < t.ts < end.ts for t in turns)
        assert len({(t.model_version, t.variant) for t in turns}) <= 1  # one arm per session


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.dates(min_value=dt.date(2016, 1, 1), max_value=dt.date(2026, 6, 1)),
    days=st.integers(1, 3),
    users=st.integers(0, 120),
    arrivals=st.floats(0, 30),
    text=st.floats(0, 1),
    share=st.floats(0.01, 0.99),
    empty=st.floats(0, 1),
    turns=st.floats(1, 8),
    seed=st.integers(0, 2**32),
)
def test_random_small_scenarios_always_decode(
    start, days, users, arrivals, text, share, empty, turns, seed
):
    scenario = quiet(
        start=start.isoformat(),
        days=days,
        population={"initial_users": users, "new_users_per_day": arrivals},
        responses={"text_share": text, "pii_share": 0.5},
        sessions={"empty_share": empty, "mean_turns": turns},
        rollout={
            "stages": [
                {"date": (start + dt.timedelta(days=1)).isoformat(), "treatment_share": share}
            ],
            "effects": [{"metric": "thumbs_down", "size": 0.3, "segment": {"intent": ["qa"]}}],
        },
    )
    chunks = list(simulate(scenario, seed=seed))
    assert len(chunks) in (days, days + 1)
    events = decode_all(chunks)
    ends = [e for e in events if isinstance(e, SessionEnd)]
    assert sum(e.turns for e in ends) == sum(isinstance(e, Response) for e in events)


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes():
    scenario = quiet(days=2)
    a = list(simulate(scenario, seed=7))
    b = list(simulate(scenario, seed=7))
    c = list(simulate(scenario, seed=8))
    assert a == b
    assert a != c
    assert list(simulate(scenario)) == list(simulate(scenario, seed=scenario.seed))
    assert json.dumps(ground_truth(scenario, seed=7)) == json.dumps(ground_truth(scenario, seed=7))


# --- seasonality -----------------------------------------------------------------------------


def test_volume_has_weekly_daily_and_holiday_seasonality():
    # One locale on UTC, so local time is UTC time.
    scenario = quiet(
        days=14,
        population={
            "initial_users": 2500,
            "new_users_per_day": 0,
            "locales": {"en-GB": {"weight": 1.0, "utc_offsets": [0]}},
        },
        holidays=[{"name": "midweek", "date": day(8), "volume_multiplier": 0.4}],
    )
    per_day: Counter[str] = Counter()
    per_hour: Counter[int] = Counter()
    for chunk in simulate(scenario):
        for raw in chunk:
            if raw.startswith(b'{"type":"session_start"'):
                ts = json.loads(raw)["ts"]
                per_day[ts[:10]] += 1
                per_hour[int(ts[11:13])] += 1
    weekday, weekend = [], []
    for d, n in per_day.items():
        if d == day(8) or d > day(13):
            continue
        (weekend if dt.date.fromisoformat(d).weekday() >= 5 else weekday).append(n)
    assert np.mean(weekend) < 0.8 * np.mean(weekday)
    assert per_day[day(8)] < 0.6 * np.mean(weekday)
    night = np.mean([per_hour[h] for h in range(1, 6)])
    daytime = np.mean([per_hour[h] for h in range(10, 17)])
    assert night < 0.3 * daytime


# --- rollout ---------------------------------------------------------------------------------


def test_rollout_shares_match_schedule_and_assignment_is_stable():
    stages = [(2, 0.1), (4, 0.3), (6, 0.5)]
    scenario = quiet(
        days=10,
        population={"initial_users": 3000, "new_users_per_day": 20},
        rollout={
            "stages": [{"date": day(d), "treatment_share": s} for d, s in stages],
            "full_switch": day(8),
        },
    )
    rollout = scenario.rollout
    events = decode_all(list(simulate(scenario)))
    # The arm is fixed per session, from the UTC date the session started.
    started = {e.session_id: e.ts.date() for e in events if isinstance(e, SessionStart)}
    arms: dict[dt.date, dict[str, set[tuple[str, str]]]] = defaultdict(lambda: defaultdict(set))
    for e in events:
        if isinstance(e, Response):
            arms[started[e.session_id]][e.user_id].add((e.model_version, e.variant))
    truth = ground_truth(scenario)
    assert truth["rollout"]["daily_treatment_share"][day(5)] == 0.3
    treated_before: set[str] = set()
    for d in range(10):
        users = arms[START + dt.timedelta(days=d)]
        assert all(len(seen) == 1 for seen in users.values())  # one arm per user and day
        if d < 2 or d >= 8:
            model = rollout.baseline if d < 2 else rollout.candidate
            assert all(seen == {(model, "default")} for seen in users.values())
            continue
        share = [s for sd, s in stages if sd <= d][-1]
        treated = set()
        for user, seen in users.items():
            ((model, variant),) = seen
            assert variant in ("control", "treatment")
            assert model == (rollout.candidate if variant == "treatment" else rollout.baseline)
            # The documented assignment reproduces the variant from the user id alone.
            digest = hashlib.blake2b(f"{rollout.salt}:{user}".encode(), digest_size=8)
            bucket = int.from_bytes(digest.digest(), "big") / 2**64
            assert (variant == "treatment") == (bucket < share)
            if variant == "treatment":
                treated.add(user)
        observed = len(treated) / len(users)
        assert abs(observed - share) < 4 * np.sqrt(share * (1 - share) / len(users))
        assert not treated_before & (set(users) - treated)  # once treated, always treated
        treated_before |= treated


# --- planted effects -------------------------------------------------------------------------


def test_planted_thumbs_down_effect_is_recovered_from_raw_events():
    scenario = quiet(
        days=21,
        population={"initial_users": 4000, "new_users_per_day": 40},
        ratings={"rating_rate": 0.3},
        rollout={
            "stages": [{"date": day(7), "treatment_share": 0.5}],
            "effects": [
                {"metric": "thumbs_down", "size": -0.5},
                {"metric": "refusal", "size": 0.7, "segment": {"intent": ["writing"]}},
            ],
        },
        truth_samples=50_000,
    )
    truth = ground_truth(scenario)
    expected = next(
        r
        for r in truth["expected_differences"]
        if r["metric"] == "thumbs_down_rate" and not r["segment"]
    )
    variant_of: dict[str, tuple[str, str]] = {}
    ratings: list[tuple[str, int]] = []
    for event in decode_all(list(simulate(scenario))):
        if isinstance(event, Response) and event.variant != "default":
            variant_of[event.request_id] = (event.variant, event.user_id)
        elif isinstance(event, Feedback):
            ratings.append((event.request_id, event.rating))
    # Per-user sums, for a ratio estimator with a user-clustered standard error.
    sums: dict[str, dict[str, list[int]]] = {"control": {}, "treatment": {}}
    for request_id, rating in ratings:
        if request_id in variant_of:
            variant, user = variant_of[request_id]
            d, n = sums[variant].setdefault(user, [0, 0])
            sums[variant][user] = [d + (rating < 0), n + 1]
    rates, variances = {}, {}
    for variant, per_user in sums.items():
        d, n = np.array(list(per_user.values()), dtype=float).T
        rates[variant] = d.sum() / n.sum()
        variances[variant] = ((d - rates[variant] * n) ** 2).sum() / n.sum() ** 2
    estimate = rates["treatment"] - rates["control"]
    se = np.sqrt(variances["treatment"] + variances["control"])
    assert estimate < -5 * se  # clearly visible
    assert abs(estimate - expected["difference"]) < 4 * se + 0.005
    assert abs(rates["control"] - expected["baseline"]) < 0.03
    planted = truth["effects"][0]
    assert planted["scale"] == "log_odds" and planted["size"] == -0.5
    assert planted["odds_ratio"] == pytest.approx(np.exp(-0.5))


def test_population_shift_raises_new_user_share_and_ui_release_raises_ratings():
    scenario = quiet(
        days=6,
        population={"initial_users": 2000, "new_users_per_day": 10},
        population_shift={"date": day(3), "days": 1, "extra_users": 1500},
        ui_release={"date": day(2), "adoption_days": {"ios": 2.0, "android": 2.0}},
    )
    new_share: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    rated: set[str] = set()
    responses: list[Response] = []
    for event in decode_all(list(simulate(scenario))):
        if isinstance(event, Response):
            responses.append(event)
            counts = new_share[event.ts.date().isoformat()]
            counts[0] += event.cohort == "new"
            counts[1] += 1
        elif isinstance(event, Feedback):
            rated.add(event.request_id)
    share = {d: n / total for d, (n, total) in new_share.items()}
    assert share[day(3)] > 2 * share[day(2)]
    assert share[day(3)] > 0.25
    new_versions = set(scenario.ui_release.app_versions.values())
    after = [r for r in responses if r.ts.date() >= dt.date.fromisoformat(day(2))]
    on_new = [r.request_id in rated for r in after if r.app_version in new_versions]
    on_old = [r.request_id in rated for r in after if r.app_version not in new_versions]
    assert on_new and on_old
    assert np.mean(on_new) > 1.4 * np.mean(on_old)
    truth = ground_truth(scenario)
    ui = truth["ui_release"]["expected"]
    assert ui["new_app"]["rating_rate"] > ui["old_app"]["rating_rate"]
    shift = truth["population_shift"]["expected"]
    assert shift["influx_users"]["thumbs_down_rate"] > shift["usual_new_users"]["thumbs_down_rate"]


# --- ground truth and scenario ---------------------------------------------------------------


def test_ground_truth_round_trips_json_and_records_everything():
    scenario = Scenario.default().evolve(truth_samples=5000)
    truth = ground_truth(scenario, seed=3)
    assert json.loads(json.dumps(truth)) == truth
    assert truth["seed"] == 3
    assert Scenario.model_validate(truth["scenario"]) == scenario
    assert truth["rollout"]["full_switch"] == "2026-10-06"
    assert [s["treatment_share"] for s in truth["rollout"]["stages"]] == [0.05, 0.25, 0.5]
    assert truth["population_shift"]["date"] == "2026-09-29"
    assert truth["ui_release"]["date"] == "2026-10-13"
    assert truth["holidays"][0]["date"] == "2026-09-07"
    assert len(truth["seasonality"]["daily"]) == scenario.days
    scales = {e["metric"]: e["scale"] for e in truth["effects"]}
    assert scales["thumbs_down"] == "log_odds" and scales["completion_tokens"] == "multiplier"
    for effect in truth["effects"]:
        if effect["observable"] != "task_completion_rate":
            assert effect["expected"]["segment"] == effect["segment"]
    coding = next(
        r
        for r in truth["expected_differences"]
        if r["metric"] == "thumbs_down_rate" and r["segment"] == {"intent": ["coding"]}
    )
    assert coding["difference"] > 0  # the default candidate is worse at coding


def test_default_scenario_is_the_code_defaults_plus_its_interventions():
    default = Scenario.default()
    assert default.start == START and default.days == 49
    assert default.end == dt.date(2026, 10, 19)
    plain = default.evolve(
        name="baseline",
        description="",
        rollout=None,
        population_shift=None,
        ui_release=None,
        holidays=[],
    )
    assert plain == Scenario()
    with pytest.raises(pydantic.ValidationError):
        default.days = 3  # frozen
    with pytest.raises(pydantic.ValidationError):
        default.evolve(rollout={"stages": [{"date": day(3), "treatment_share": 1.5}]})
    with pytest.raises(pydantic.ValidationError):
        default.evolve(population={"unknown_knob": 1})


# --- writers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl.gz", "jsonl", "parquet"])
def test_write_files(tmp_path: Path, fmt: str):
    scenario = quiet(days=2)
    out = write_files(scenario, tmp_path / "a", fmt=fmt)
    assert out.truth_path.exists() and json.loads(out.truth_path.read_text())["seed"] == 20260901
    assert [p.name for p in out.event_files] == [
        f"events-{day(i)}.{fmt}" for i in range(len(out.event_files))
    ]
    chunks = []
    for path in out.event_files:
        if fmt == "parquet":
            table = pq.read_table(path)
            assert table.column_names == ["type", "value"]
            values = table.column("value").to_pylist()
            assert table.column("type").to_pylist() == [json.loads(v)["type"] for v in values]
        else:
            raw = gzip.decompress(path.read_bytes()) if fmt == "jsonl.gz" else path.read_bytes()
            values = raw.splitlines()
        chunks.append(values)
    assert chunks == list(simulate(scenario))
    counts = Counter(type(e).__struct_config__.tag for e in decode_all(chunks))
    assert dict(out.counts) == {k: counts[k] for k in EVENT_KINDS}
    assert out.total == sum(counts.values())
    if fmt != "parquet":
        again = write_files(scenario, tmp_path / "b", fmt=fmt)
        assert [p.read_bytes() for p in again.event_files] == [
            p.read_bytes() for p in out.event_files
        ]


def test_produce_to_kafka_needs_a_topic_for_every_kind():
    # checked before any connection is made; routing itself is tested on a real broker below
    with pytest.raises(TerminalIngestError, match="retry"):
        produce_to_kafka(quiet(days=1), "127.0.0.1:9", {"response": "r"})


@pytest.mark.kafka
def test_produce_to_a_real_broker(kafka_broker, kafka_topics):
    from kafka import KafkaConsumer

    topics = {
        "response": kafka_topics["responses"],
        "feedback": kafka_topics["feedback"],
        "retry": kafka_topics["retries"],
        "session_start": kafka_topics["sessions"],
        "session_end": kafka_topics["sessions"],
    }
    scenario = quiet(days=1)
    counts = produce_to_kafka(scenario, kafka_broker.bootstrap, topics)
    consumer = KafkaConsumer(
        *set(topics.values()),
        bootstrap_servers=kafka_broker.bootstrap,
        auto_offset_reset="earliest",
    )
    got: Counter[str] = Counter()
    partitions: dict[tuple[str, str], set[int]] = defaultdict(set)
    values = []
    deadline = time.monotonic() + 30
    while len(values) < sum(counts.values()) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            for msg in records:
                event = json.loads(msg.value)
                got[event["type"]] += 1
                assert msg.topic == topics[event["type"]]
                assert msg.key == event["user_id"].encode()
                partitions[(msg.topic, event["user_id"])].add(msg.partition)
                values.append(msg.value)
    consumer.close()
    assert dict(got) == {k: n for k, n in counts.items() if n}
    assert all(len(p) == 1 for p in partitions.values())  # one user, one partition
    assert sorted(values) == sorted(v for chunk in simulate(scenario) for v in chunk)
