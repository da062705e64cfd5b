"""The sink against the real engine: exactly-once effect, dead letters, rollups, backfill."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import warehouse
from ingest import Batch, EventDecoder, EventSink, backfill
from ingest.sink import DecodeProcess, Prepared, RawBatch

from events_factory import encode, feedback, response, retry, session_end

REPO = Path(__file__).resolve().parent.parent
SQLISH = "Robert'); DROP TABLE responses;-- {x:String} \\' \" `"
EMOJI_RTL = "שלום עולם 👋🏽 مرحبا ‮reversed‬ 家族👨‍👩‍👧"


def _counts(wh) -> dict[str, int]:
    return dict(warehouse.event_counts(wh).iter_rows())


def _flush(sink, records, source="t"):
    batch = Batch()
    batch.extend(source, 0, records, sink.decoder)
    return sink.flush(batch)


BAD = {
    "bad_json": b'{"type": "response", ',
    "not_utf8": b"\xff\xfe\xfa",
    "empty": b"",
    "wrong_type": encode(response(900, latency_ms="slow")),
    "missing_field": encode({k: v for k, v in response(901).items() if k != "model_version"}),
    "unknown_type": encode({**response(902), "type": "purchase"}),
    "negative": encode(response(903, prompt_tokens=-1)),
    "absurd": encode(response(904, latency_ms=9e15)),
    "future": encode(response(905, ts="2199-01-01T00:00:00Z")),
    "past": encode(response(906, ts="1999-01-01T00:00:00Z")),
    "oversized": encode(response(907, response="y" * 300_000)),
}


def test_every_kind_of_bad_input_is_accounted_for(wh):
    sink = EventSink(wh)
    good = [encode(response(i)) for i in range(20)]
    good.append(encode(response(20, prompt=SQLISH, response=EMOJI_RTL)))
    good.append(encode(response(3)))  # a producer duplicate of event resp-3
    records = list(enumerate([*good, *BAD.values()]))
    result = _flush(sink, records)
    assert result.events == {"responses": 21}
    assert result.duplicates == 1
    assert result.dead_letters == len(BAD)

    assert _counts(wh)["responses"] == 21
    stored = wh.query_frame(
        "SELECT prompt, response FROM responses WHERE event_id = {id:String}",
        parameters={"id": "resp-20"},
    )
    assert stored.row(0) == (SQLISH, EMOJI_RTL)

    dead = warehouse.dead_letters(wh).sort("offset")
    assert dead.height == len(BAD)
    first_bad = len(good)
    assert dead["offset"].to_list() == list(range(first_bad, first_bad + len(BAD)))
    # raw bytes kept exactly, so the message can be fixed and replayed
    assert dead["raw"].to_list() == list(BAD.values())
    assert dict(zip(BAD, dead["kind"], strict=True)) == {
        "bad_json": "bad_json",
        "not_utf8": "not_utf8",
        "empty": "empty",
        "wrong_type": "invalid",
        "missing_field": "invalid",
        "unknown_type": "invalid",
        "negative": "invalid",
        "absurd": "invalid",
        "future": "invalid",
        "past": "invalid",
        "oversized": "too_large",
    }
    assert all(dead["reason"].str.len_chars() > 0)


def test_replayed_batch_and_producer_duplicates_count_once(wh):
    sink = EventSink(wh)
    records = [(i, encode(response(i))) for i in range(100)]
    records += [(100 + i, encode(feedback(i))) for i in range(30)]
    records += [(130, b"junk")]
    _flush(sink, records)
    _flush(sink, records)  # the consumer died before committing: same offsets again
    # the producer sent some events again: new offsets, new batch, same event_ids
    _flush(sink, [(500 + i, encode(response(i))) for i in range(0, 100, 7)])
    assert _counts(wh) == {"feedback": 30, "responses": 100, "retries": 0, "sessions": 0}
    assert wh.query_frame("SELECT count() AS n FROM dead_letters FINAL")["n"][0] == 1
    rollup = wh.query_frame("SELECT sum(responses) AS r, sum(ratings) AS f FROM rollup_hourly")
    assert rollup.row(0) == (100, 30)


def test_rollup_attributes_feedback_to_the_response_model_version(wh):
    sink = EventSink(wh)
    _flush(
        sink,
        [(i, encode(response(i, model_version="m-new" if i % 2 else "m-old"))) for i in range(40)],
    )
    _flush(sink, [(100 + i, encode(feedback(i, rating=-1))) for i in range(0, 40, 4)])
    _flush(sink, [(200 + i, encode(retry(i))) for i in range(1, 40, 4)])
    _flush(sink, [(300, encode(feedback(999)))])  # its response never arrived
    rows = wh.query_frame(
        "SELECT model_version, sum(responses) AS r, sum(thumbs_down) AS d, sum(retries) AS t"
        " FROM rollup_hourly GROUP BY model_version ORDER BY model_version"
    )
    assert rows.rows() == [("", 0, 1, 0), ("m-new", 20, 0, 10), ("m-old", 20, 10, 0)]
    orphan = wh.query_frame("SELECT sum(ratings) AS n FROM rollup_hourly WHERE model_version = ''")
    assert orphan["n"][0] == 1


def test_sessions_rollup_takes_the_version_and_segment_of_the_session(wh):
    """A session_end carries no locale or platform: the rollup takes them, with the model
    version, from the session's responses."""
    sink = EventSink(wh)
    first = response(0, session_id="sess-1", model_version="m-x", locale="ja-JP", platform="ios")
    _flush(sink, [(0, encode(first))])
    _flush(sink, [(1, encode(session_end(1, turns=6, seconds=120.0)))])
    rows = wh.query_frame(
        "SELECT model_version, locale, platform, sum(sessions) AS s, sum(turns) AS t,"
        " sum(completed) AS c FROM sessions_hourly GROUP BY model_version, locale, platform"
    )
    assert rows.rows() == [("m-x", "ja-JP", "ios", 1, 6, 1)]


def _write_inputs(tmp_path: Path) -> list[Path]:
    lines = [encode(response(i)) for i in range(300)] + [encode(feedback(i)) for i in range(50)]
    lines += [b"not json", encode(response(5))]
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b"\n".join(lines[:200]) + b"\n")
    gz = tmp_path / "b.jsonl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(b"\n".join(lines[200:320]) + b"\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"value": pa.array(lines[320:], pa.binary())}), parquet)
    return [plain, gz, parquet]


def test_backfill_reads_every_format_and_is_idempotent(wh, tmp_path):
    paths = _write_inputs(tmp_path)
    sink = EventSink(wh)
    first = backfill(sink, paths, progress=False)
    assert first.total_events == 351  # resp-5 again, in another file: dropped by the warehouse
    assert first.total_dead == 1
    backfill(sink, paths, progress=False)
    assert _counts(wh) == {"feedback": 50, "responses": 300, "retries": 0, "sessions": 0}
    assert wh.query_frame("SELECT count() AS n FROM dead_letters FINAL")["n"][0] == 1
    assert wh.query_frame("SELECT sum(responses) AS n FROM rollup_hourly")["n"][0] == 300


def test_an_insert_interrupted_half_way_completes_on_replay(wh):
    """The raw rows land, then the chain of views fails; replaying the same batch finishes it."""
    sink = EventSink(wh)
    records = [(i, encode(response(i))) for i in range(50)]
    wh.command("CREATE TABLE failure_sink (x UInt8) ENGINE = Null")
    wh.command(
        "CREATE MATERIALIZED VIEW failing_mv TO failure_sink"
        " AS SELECT throwIf(1, 'injected failure') AS x FROM responses"
    )
    with pytest.raises(warehouse.WarehouseError, match="injected failure"):
        _flush(sink, records)
    landed = wh.query_frame(
        "SELECT (SELECT count() FROM responses) AS raw, (SELECT count() FROM event_ids) AS ids,"
        " (SELECT sum(responses) FROM rollup_hourly) AS rolled"
    )
    raw, ids, _ = landed.row(0)
    assert (raw, ids) == (50, 0)  # half-way: raw rows in, the chain of views not finished
    wh.command("DROP VIEW failing_mv")
    for _ in range(2):  # the replay completes the chain; a further replay changes nothing
        _flush(sink, records)
        done = wh.query_frame(
            "SELECT (SELECT count() FROM responses) AS raw, (SELECT count() FROM event_ids) AS ids,"
            " (SELECT sum(responses) FROM rollup_hourly) AS rolled,"
            " (SELECT count() FROM request_attrs) AS attrs"
        )
        assert done.row(0) == (50, 50, 50, 50)


def test_omitted_fields_take_their_defaults_and_any_offset_is_read(wh):
    sink = EventSink(wh)
    bare = {k: v for k, v in response(1).items() if k not in ("locale", "platform", "intent")}
    del bare["schema_version"]
    nanos = response(2, ts="2026-11-20T10:00:00.123456789+02:00")
    _flush(sink, [(0, encode(bare))])
    _flush(sink, [(1, encode(nanos))])
    rows = wh.query_frame(
        "SELECT event_id, schema_version, locale, platform, intent, cohort, ts FROM responses"
        " ORDER BY event_id"
    )
    assert rows.rows()[0][:6] == ("resp-1", 1, "und", "other", "", "established")
    assert rows["ts"][1].isoformat() == "2026-11-20T08:00:00.123000+00:00"


def test_rebuilding_rollups_attributes_feedback_that_came_before_its_response(wh):
    sink = EventSink(wh)
    _flush(sink, [(0, encode(feedback(3, rating=-1)))])  # its response is not in yet
    _flush(sink, [(1 + i, encode(response(i, model_version="m-new"))) for i in range(10)])
    before = wh.query_frame(
        "SELECT model_version, sum(ratings) AS n FROM rollup_hourly WHERE ratings > 0"
        " GROUP BY model_version"
    )
    assert before.rows() == [("", 1)]
    warehouse.rebuild_rollups(wh)
    after = wh.query_frame(
        "SELECT model_version, sum(responses) AS r, sum(ratings) AS n, sum(thumbs_down) AS d"
        " FROM rollup_hourly GROUP BY model_version"
    )
    assert after.rows() == [("m-new", 10, 1, 1)]


def test_rebuild_reproduces_the_streaming_rollups(wh):
    sink = EventSink(wh)
    _flush(sink, [(i, encode(response(i, session_id=f"sess-{i % 5}"))) for i in range(60)])
    _flush(sink, [(100 + i, encode(feedback(i))) for i in range(0, 60, 3)])
    _flush(sink, [(200 + i, encode(retry(i))) for i in range(0, 60, 7)])
    _flush(sink, [(300 + i, encode(session_end(i))) for i in range(5)])
    query = "SELECT * EXCEPT (latency_ms_q, ttft_ms_q) FROM rollup_hourly FINAL ORDER BY ALL"
    sessions = "SELECT * FROM sessions_hourly FINAL ORDER BY ALL"
    streamed, streamed_sessions = wh.query_frame(query), wh.query_frame(sessions)
    warehouse.rebuild_rollups(wh)
    assert wh.query_frame(query).equals(streamed)
    assert wh.query_frame(sessions).equals(streamed_sessions)


def _raw_batch() -> RawBatch:
    good = [encode(response(i)) for i in range(50)] + [encode(feedback(i)) for i in range(10)]
    values: list[bytes | None] = [*good, encode(response(3)), *BAD.values(), None]
    raw = RawBatch()
    raw.add("topic-a", 0, list(range(len(values))), values)
    raw.add("topic-b", 2, [40, 41], [encode(retry(1)), encode(response(999, extra_field=1))])
    return raw


def test_the_decoding_process_prepares_what_decoding_here_prepares():
    raw = _raw_batch()
    here = Prepared.of(raw.decode(EventDecoder()))
    decoding = DecodeProcess(EventDecoder())
    try:
        there = decoding.prepare(raw)
    finally:
        decoding.close()
    assert there == here
    assert here.counts == {"responses": 51, "feedback": 10, "retries": 1}
    assert here.duplicates == 1 and len(here.dead) == len(BAD) + 1
    assert raw.token() == raw.decode(EventDecoder()).token()


def test_a_decoder_keeps_its_bounds_across_processes():
    strict = EventDecoder(max_bytes=100)
    raw = RawBatch()
    raw.add("t", 0, [0], [encode(response(0))])
    decoding = DecodeProcess(strict)
    try:
        prepared = decoding.prepare(raw)
    finally:
        decoding.close()
    assert [d.failure.kind for d in prepared.dead] == ["too_large"]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_the_decoding_process_ends_with_a_consumer_killed_by_sigkill():
    script = (
        "import sys, time\n"
        "from ingest import EventDecoder\n"
        "from ingest.sink import DecodeProcess, RawBatch\n"
        "raw = RawBatch()\n"
        "raw.add('t', 0, [0], [b'{}'])\n"
        "DecodeProcess(EventDecoder()).prepare(raw)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        workers = [
            pid
            for pid in _children(proc.pid)
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert workers, "no decoding process found"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the decoding process outlived its consumer"


def test_a_killed_decoding_process_loses_no_batch():
    raw = _raw_batch()
    here = Prepared.of(raw.decode(EventDecoder()))
    decoding = DecodeProcess(EventDecoder())
    try:
        assert decoding.prepare(raw) == here
        workers = [
            pid
            for pid in _children(os.getpid())
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert workers
        pending = decoding.submit(raw)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert decoding.prepare(raw, pending) == here  # its result, or decoded here instead
        assert decoding.prepare(raw) == here  # and a new worker for the next batch
    finally:
        decoding.close()


def test_a_batch_fed_while_it_fills_gives_the_same_payloads():
    whole = _raw_batch()
    here = Prepared.of(whole.decode(EventDecoder()))
    decoding = DecodeProcess(EventDecoder())
    try:
        fed = RawBatch()
        for source, partition, offsets, values in whole.parts:
            half = len(offsets) // 2
            fed.add(source, partition, offsets[:half], values[:half])
            decoding.feed(fed)
            fed.add(source, partition, offsets[half:], values[half:])
        assert decoding.prepare(fed, decoding.submit(fed)) == here  # the tail is fed by submit
        # the next batch starts afresh; one whose feeding the worker missed is decoded whole
        again = RawBatch()
        again.add(*whole.parts[0])
        again.fed_parts, again.fed_items = 1, again.size  # as if fed to a worker since lost
        assert decoding.prepare(again).counts == {"responses": 50, "feedback": 10}
    finally:
        decoding.close()
