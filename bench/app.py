"""How long each page of the app takes to open on a warehouse of 50M events, against the 2 s
target.

Builds (once, cached under ``.cache/bench/app-50m``) an embedded warehouse of about 50M events
over 9 weeks (61% responses, 29% session starts and ends, 5% feedback, 5% retries, as the
simulator's mix): simulating and ingesting that many through Python would take hours here, so
the events are generated inside ClickHouse (``INSERT INTO <db>.<kind>_in SELECT ... FROM
numbers(...)``) and pass through the real write path: the dedup views, the key-value lookups and
the materialized views that fill the hourly rollups the app reads. A candidate version serves
half the users from 2026-09-28 and everyone from 2026-10-05, with a slightly lower thumbs-down
rate and more retries; the switch is annotated. A shadow run of 1,000 samples with simulated
answers and 20 hand-made alerts give the Shadow and Alerts pages something to draw.

Then, per page, two measures:

- **AppTest**: ``streamlit.testing.v1.AppTest`` runs the page script in this process, the app's
  modules imported and the warehouse connection open (as on a running server), with the query
  cache cleared before each run ("first open") and not cleared ("cached");
- **browser**: ``streamlit run`` on the warehouse and headless Chromium, from navigation to the
  page's data and charts on screen: the first visit after the server starts, then a repeat.

    .venv/bin/python bench/app.py [--repeats 3] [--rebuild] [--no-browser]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, this directory comes first on sys.path and its ingest.py would shadow the
# ingest package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

import warehouse  # noqa: E402

REPO = _HERE.parent
CACHE = REPO / ".cache" / "bench" / "app-50m"
GENERATOR = "2"  # bump when the generated data changes: the cached warehouse is rebuilt
TARGET_SECONDS = 2.0
START = dt.datetime(2026, 8, 10)  # a Monday
DAYS = 63
AB_START = dt.datetime(2026, 9, 28)
SWITCH = dt.datetime(2026, 10, 5)
BASELINE, CANDIDATE = "assistant-2026-08", "assistant-2026-09"
RESPONSES = 30_500_000
FEEDBACK = RETRIES = 2_500_000
USERS = 250_000
CHUNK = 2_500_000


# One response per number n: its time, session (4 turns), user and segments, all derived from n
# by hashing, so feedback, retries and sessions can refer to a response by its number alone.
def _ts(n: str) -> str:
    return (
        f"({{start:DateTime64(3)}} + toIntervalMillisecond(intDiv(({n}) * {{span_ms:UInt64}},"
        " {responses:UInt64})))"
    )


def _user(n: str) -> str:
    return f"(cityHash64(intDiv({n}, 4)) % {{users:UInt64}})"


def _version(n: str) -> str:
    return (
        f"if({_ts(n)} >= {{switch:DateTime64(3)}} OR ({_ts(n)} >= {{ab:DateTime64(3)}}"
        f" AND {_user(n)} % 2 = 0), {{candidate:String}}, {{baseline:String}})"
    )


_TS, _USER, _VERSION = _ts("n"), _user("n"), _version("n")
_RESPONSES = f"""
INSERT INTO {{db}}.responses_in (event_id, ts, request_id, conversation_id, session_id, user_id,
    model_version, variant, turn_index, prompt_tokens, completion_tokens, latency_ms, ttft_ms,
    finish_reason, refused, locale, platform, app_version, user_tenure_days, cohort, intent)
SELECT concat('r', toString(n)), {_TS}, concat('q', toString(n)),
    concat('s', toString(intDiv(n, 4))), concat('s', toString(intDiv(n, 4))),
    concat('u', toString({_USER})), {_VERSION} AS version,
    if(version = {{candidate:String}} AND ({_TS}) < {{switch:DateTime64(3)}}, 'treatment',
        'default'),
    toUInt16(n % 4), toUInt32(50 + cityHash64(n, 1) % 600),
    toUInt32(if(version = {{candidate:String}}, 120, 100) + cityHash64(n, 2) % 700),
    toFloat32(300 + cityHash64(n, 3) % 6000), toFloat32(200 + cityHash64(n, 4) % 600), 'stop',
    cityHash64(n, 5) % 1000 < 15,
    ['en-US', 'en-US', 'en-GB', 'de-DE', 'fr-FR', 'ja-JP', 'pt-BR'][1 + cityHash64({_USER}, 6) % 7],
    ['web', 'web', 'ios', 'android', 'desktop'][1 + cityHash64({_USER}, 7) % 5], '1.0',
    toUInt16(cityHash64({_USER}, 8) % 400), '',
    ['coding', 'writing', 'qa', 'analysis', 'chat', 'translation'][1 + cityHash64(n, 9) % 6]
FROM (SELECT number AS n FROM numbers({{lo:UInt64}}, {{count:UInt64}}))
SETTINGS insert_deduplication_token = {{token:String}}
"""
# feedback and retries refer to response k, some seconds after it
_K = "cityHash64(m, {salt:UInt64}) % {responses:UInt64}"
_FEEDBACK = f"""
INSERT INTO {{db}}.feedback_in (event_id, ts, request_id, user_id, rating)
SELECT concat('f', toString(m)), {_ts("k")} + toIntervalSecond(20),
    concat('q', toString(k)), concat('u', toString({_user("k")})),
    toInt8(if(cityHash64(m, 12) % 1000 < if({_version("k")} = {{candidate:String}}, 230, 260),
        -1, 1))
FROM (SELECT number AS m, {_K} AS k FROM numbers({{lo:UInt64}}, {{count:UInt64}}))
SETTINGS insert_deduplication_token = {{token:String}}
"""
_RETRIES = f"""
INSERT INTO {{db}}.retries_in (event_id, ts, request_id, new_request_id, kind, user_id)
SELECT concat('t', toString(m)), {_ts("k")} + toIntervalSecond(8),
    concat('q', toString(k)), concat('q', toString(k), '-retry'),
    ['regenerate', 'rephrase', 'edit'][1 + cityHash64(m, 13) % 3],
    concat('u', toString({_user("k")}))
FROM (SELECT number AS m, {_K} AS k FROM numbers({{lo:UInt64}}, {{count:UInt64}}))
WHERE cityHash64(m, 14) % 100 < if({_version("k")} = {{candidate:String}}, 100, 90)
SETTINGS insert_deduplication_token = {{token:String}}
"""
# session s holds responses 4s..4s+3: one start and one end event
_SESSIONS = f"""
INSERT INTO {{db}}.sessions_in (event_id, ts, type, session_id, user_id, turns, seconds,
    end_reason, task_completed)
SELECT concat(kind, toString(s)),
    if(kind = 'ss', {_ts("4 * s")} - toIntervalSecond(5),
        {_ts("4 * s + 3")} + toIntervalSecond(30)),
    if(kind = 'ss', 'session_start', 'session_end'), concat('s', toString(s)),
    concat('u', toString({_user("4 * s")})),
    if(kind = 'se', toNullable(toUInt32(4)), NULL),
    if(kind = 'se', toNullable(toFloat64(60 + cityHash64(s, 15) % 900)), NULL),
    if(kind = 'se', 'closed', ''),
    if(kind = 'se' AND cityHash64(s, 16) % 10 < 3, toNullable(cityHash64(s, 17) % 10 < 7), NULL)
FROM (SELECT number AS s FROM numbers({{lo:UInt64}}, {{count:UInt64}}))
ARRAY JOIN ['ss', 'se'] AS kind
SETTINGS insert_deduplication_token = {{token:String}}
"""


def _params(lo: int, count: int, token: str, salt: int = 0) -> dict[str, object]:
    return {
        "start": START, "span_ms": DAYS * 86_400_000, "responses": RESPONSES, "users": USERS,
        "switch": SWITCH, "ab": AB_START, "candidate": CANDIDATE, "baseline": BASELINE,
        "lo": lo, "count": count, "token": token, "salt": salt,
    }  # fmt: skip


def build(path: Path) -> None:
    """Generate the events inside ClickHouse through the real write path (once; minutes)."""
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    with warehouse.connect(f"chdb://{path}") as wh:
        warehouse.migrate(wh)
        plan = [
            ("responses", _RESPONSES, RESPONSES, 0),
            ("feedback", _FEEDBACK, FEEDBACK, 11),
            ("retries", _RETRIES, RETRIES, 21),
            ("sessions", _SESSIONS, RESPONSES // 4, 0),
        ]
        for kind, sql, total, salt in plan:
            for lo in range(0, total, CHUNK):
                count = min(CHUNK, total - lo)
                wh.command(
                    sql.replace("{db}", wh.database),
                    parameters=_params(lo, count, f"bench-{kind}-{lo}", salt),
                )
                print(f"{kind}: {lo + count:,} / {total:,} ({time.perf_counter() - started:.0f} s)",
                      flush=True)  # fmt: skip
        warehouse.record_annotations(
            wh,
            pl.DataFrame(
                {"id": ["bench:ab", "bench:switch"], "kind": ["model_rollout"] * 2,
                 "title": [f"{CANDIDATE} A/B at 50%", f"{CANDIDATE} for everyone"],
                 "starts_at": [AB_START, SWITCH], "model_version": [CANDIDATE] * 2},
            ),
        )  # fmt: skip
        counts = dict(warehouse.event_counts(wh).iter_rows())
    print(
        f"built {sum(counts.values()):,} events {counts} in {time.perf_counter() - started:.0f} s"
    )
    (path / "complete").write_text(GENERATOR)


RUN_ID = "bench-simulated-run"


def add_shadow_run_and_alerts(wh: warehouse.Warehouse) -> None:
    """A shadow run of 1,000 samples with made-up (simulated) answers and judgments, and 20
    hand-made alerts, so the Shadow and Alerts pages have something to draw (their tables do
    not grow with the events)."""
    if warehouse.shadow_run(wh, RUN_ID) is not None:
        return
    rng = np.random.default_rng(0)
    created = SWITCH - dt.timedelta(days=3)
    n = 1000
    intents = ["coding", "writing", "qa", "analysis", "chat", "translation"]
    rows, verdicts = [], []
    for i in range(n):
        production = "word " * int(rng.integers(20, 200))
        for arm, model, scale in (("candidate", f"simulated-{CANDIDATE}", 1.25),
                                  ("baseline_replay", f"simulated-{BASELINE}", 1.0)):  # fmt: skip
            output = "[simulated] " + "word " * int(len(production) / 5 * scale)
            ttft = float(rng.lognormal(np.log(400 * scale), 0.3))
            rows.append({
                "run_id": RUN_ID, "sample_id": f"s{i}", "arm": arm, "model": model,
                "intent": intents[i % 6], "locale": "en-US", "platform": "web",
                "cohort": "established", "status": "ok", "error": None, "attempts": 1,
                "ttft_ms": ttft, "tpot_ms": 12.0, "latency_ms": ttft + 12.0 * len(output) / 5,
                "prompt_tokens": 60, "completion_tokens": len(output) // 5,
                "finish_reason": "stop", "output": output, "production_output": production,
                "production_completion_tokens": len(production) // 5,
                "production_latency_ms": 2000.0, "expected": None, "started_at": created,
            })  # fmt: skip
        winner = "A" if rng.random() < 0.6 else "B"
        for order, a, b in (("ab", f"simulated-{CANDIDATE}", BASELINE),
                            ("ba", BASELINE, f"simulated-{CANDIDATE}")):  # fmt: skip
            verdict = winner if order == "ab" else {"A": "B", "B": "A"}[winner]
            verdicts.append({"run_id": RUN_ID, "sample_id": f"s{i}", "model_a": a, "model_b": b,
                             "judge_model": "simulated-judge", "order": order,
                             "verdict": verdict, "judged_at": created})  # fmt: skip
    warehouse.record_shadow_run(
        wh, run_id=RUN_ID, created_at=created, candidate_model=f"simulated-{CANDIDATE}",
        baseline_model=f"simulated-{BASELINE}", settings_json='{"simulated": true}',
        status="done", sample_size=n,
    )  # fmt: skip
    warehouse.insert_shadow_results(
        wh, pl.DataFrame(rows, schema=warehouse.SHADOW_RESULT_SCHEMA, orient="row")
    )
    warehouse.insert_shadow_judgments(
        wh, pl.DataFrame(verdicts, schema=warehouse.SHADOW_JUDGMENT_SCHEMA, orient="row")
    )
    alerts = [
        {"alert_id": f"bench-{i}", "metric": ["retry_rate", "thumbs_down_rate"][i % 2],
         "model_version": CANDIDATE, "segment": "intent", "segment_value": intents[i % 6],
         "opened_at": SWITCH + dt.timedelta(hours=6 * i),
         "detected_at": SWITCH + dt.timedelta(hours=6 * i + 4), "severity": "minor",
         "expected": 0.1, "observed": 0.11, "shift": 0.01, "shift_se": 0.003,
         "relative_shift": 0.1, "statistic": 6.0, "threshold": 5.0, "basis": "incumbent level",
         "baseline_version": BASELINE, "segments_firing": 1}
        for i in range(20)
    ]  # fmt: skip
    warehouse.record_alerts(wh, pl.DataFrame(alerts), by="bench")


PAGES = {  # AppTest script, browser path, page title, what shows once its data is in
    "Overview": ("overview.py", "", "[data-testid='stMetric']"),
    "Attribution": ("attribution.py", "attribution", "[data-testid='stDataFrame']"),
    "Segments": ("segments.py", "segments", "[data-testid='stDataFrame']"),
    "Shadow": ("shadow_runs.py", "shadow", "[data-testid='stMetric']"),
    "Alerts": ("alerts.py", "alerts", "[data-testid='stMetric']"),
    "Release review": ("release_review.py", "release-review", "[data-testid='stDataFrame']"),
}


def _cpu() -> float:
    """CPU seconds this process has used, every thread (the embedded ClickHouse's too)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_apptest(url: str, repeats: int) -> dict[str, tuple[list[float], ...]]:
    """Per page: run times with the query cache cleared first, and cached; and the CPU seconds
    of the first (on a shared machine wall time depends on the others' load, CPU time less)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["TELLTALE_WAREHOUSE_URL"] = url
    views = REPO / "app" / "views"
    warm = AppTest.from_file(str(views / "overview.py"), default_timeout=900)
    warm.run()  # imports and the connection: paid once by a server, not per page
    out = {}
    for title, (script, _, _) in PAGES.items():
        cold, cached, cpu = [], [], []
        for _ in range(repeats):
            st.cache_data.clear()
            at = AppTest.from_file(str(views / script), default_timeout=900)
            started, cpu_started = time.perf_counter(), _cpu()
            at.run()
            cold.append(time.perf_counter() - started)
            cpu.append(_cpu() - cpu_started)
            started = time.perf_counter()
            at.run()
            cached.append(time.perf_counter() - started)
            problems = [e.value for e in at.error] + [e.message for e in at.exception]
            if problems:
                print(f"  {title}: {problems}", flush=True)
        out[title] = (cold, cached, cpu)
        print(
            f"AppTest {title}: first open {_fmt(cold)}, CPU {_fmt(cpu)}; cached {_fmt(cached)}; "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    st.cache_data.clear()
    st.cache_resource.clear()  # closes the warehouse: the browser's server opens it next
    return out


def time_browser(url: str, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per page: time to content in Chromium, first visit after a server start and repeats."""
    from playwright.sync_api import sync_playwright

    from app.serve import streamlit_command

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out: dict[str, tuple[list[float], list[float]]] = {t: ([], []) for t in PAGES}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu"],
        )
        for r in range(repeats):
            proc = subprocess.Popen(
                streamlit_command(port=port),
                env={**os.environ, "TELLTALE_WAREHOUSE_URL": url},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            base = f"http://127.0.0.1:{port}"
            try:
                _wait_healthy(base)
                for visit in range(2):
                    for title, (_, path, content) in PAGES.items():
                        page = browser.new_page(viewport={"width": 1400, "height": 1000})
                        started = time.perf_counter()
                        page.goto(f"{base}/{path}")
                        page.get_by_role("heading", name=_heading(title), exact=True).wait_for(
                            timeout=900_000
                        )
                        page.locator(content).first.wait_for(timeout=900_000)
                        page.wait_for_selector(
                            "[data-testid='stStatusWidget']", state="detached", timeout=900_000
                        )
                        out[title][visit].append(time.perf_counter() - started)
                        page.close()
                print(f"browser round {r + 1} done", flush=True)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
        browser.close()
    for title, (first, again) in out.items():
        print(f"browser {title}: first visit {_fmt(first)}, repeat {_fmt(again)}", flush=True)
    return out


def _heading(title: str) -> str:
    return "Shadow runs" if title == "Shadow" else title


def _wait_healthy(base: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/_stcore/health", timeout=2).text == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("streamlit did not start")


def _fmt(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.2f} s (of {len(values)}: "
        + ", ".join(f"{v:.2f}" for v in values)
        + ")"
    )


def main() -> None:
    """Build the warehouse if needed, then time every page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    marker = CACHE / "complete"
    if args.rebuild or not marker.exists() or marker.read_text() != GENERATOR:
        build(CACHE)
    url = f"chdb://{CACHE}"
    with warehouse.connect(url) as wh:
        warehouse.migrate(wh)
        add_shadow_run_and_alerts(wh)
        counts = dict(warehouse.event_counts(wh).iter_rows())
        rollup = wh.query_frame(f"SELECT count() AS n FROM {wh.database}.rollup_hourly")["n"][0]
    print(f"warehouse: {sum(counts.values()):,} events {counts}; {rollup:,} hourly rollup rows")
    apptest = time_apptest(url, args.repeats)
    browser = {} if args.no_browser else time_browser(url, args.repeats)
    print("\n| page | AppTest first open | its CPU | AppTest cached | browser first visit | "
          "browser repeat |\n|---|---:|---:|---:|---:|---:|")  # fmt: skip
    for title in PAGES:
        first, cached, cpu = apptest[title]
        cells = [statistics.median(v) for v in (first, cpu, cached)]
        cells += [statistics.median(v) for v in browser.get(title, ())]
        print(f"| {title} | " + " | ".join(f"{c:.2f} s" for c in cells) + " |")
    print(f"target: {TARGET_SECONDS:.0f} s")


if __name__ == "__main__":
    main()
