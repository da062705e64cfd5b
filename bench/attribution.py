"""Wall time of a full attribution from the warehouse: 8 metrics x 10 segments, 90 days hourly.

Builds (once, cached under ``.cache/bench/attribution-90d``) an embedded warehouse holding 90
simulated days of the default scenario around the candidate's full switch, ingested through the
backfill path with the scenario's annotations. Then, in one timed run, attributes every
registered metric in all traffic and in 10 segments (6 locales, 4 platforms) across the switch,
with 45-day windows on each side, so every waterfall fits 90 days of hourly cells. Prints the
wall time, its ratio to the 10 s target, and the share spent in ClickHouse vs Python.

    .venv/bin/python bench/attribution.py [--repeats 3] [--rebuild]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this directory comes first on sys.path and its ingest.py would shadow the
# ingest package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import warehouse  # noqa: E402
from analysis import METRICS  # noqa: E402
from app.attribution import attribute_segments  # noqa: E402
from ingest import EventSink, Scenario, backfill, scenario_annotations, write_files  # noqa: E402

TARGET_SECONDS = 10.0
SWITCH = dt.datetime(2026, 10, 6)
WINDOW_DAYS = 45
SEGMENTS = [
    *(("locale", v) for v in ("en-US", "en-GB", "de-DE", "fr-FR", "ja-JP", "pt-BR")),
    *(("platform", v) for v in ("web", "ios", "android", "desktop")),
]
CACHE = _HERE.parent / ".cache" / "bench" / "attribution-90d"


def build(path: Path) -> None:
    """Simulate 90 days around the switch and ingest them (minutes; done once)."""
    scenario = Scenario.default().evolve(
        start=(SWITCH - dt.timedelta(days=WINDOW_DAYS)).date(), days=2 * WINDOW_DAYS
    )
    shutil.rmtree(path, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="telltale-bench-") as tmp:
        print(f"simulating {scenario.days} days into {tmp}", flush=True)
        sim = write_files(scenario, Path(tmp), progress=True)
        print(sim, flush=True)
        with warehouse.connect(f"chdb://{path}") as wh:
            warehouse.migrate(wh)
            backfill(EventSink(wh), list(sim.event_files), progress=True)
            warehouse.record_annotations(wh, scenario_annotations(scenario))
    (path / "complete").touch()


def main() -> None:
    """Build the warehouse if needed, then time the full attribution ``--repeats`` times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    if args.rebuild or not (CACHE / "complete").exists():
        build(CACHE)
    rollout = Scenario.default().rollout
    assert rollout is not None
    walls, in_ch, in_py = [], [], []
    with warehouse.connect(f"chdb://{CACHE}") as wh:
        counts = dict(warehouse.event_counts(wh).iter_rows())
        print(f"warehouse: {sum(counts.values()):,} events {counts}")
        for i in range(args.repeats):
            started = time.perf_counter()
            found = attribute_segments(
                wh,
                metrics=list(METRICS),
                candidate=rollout.candidate,
                baseline=rollout.baseline,
                at=SWITCH,
                window_days=WINDOW_DAYS,
                segments=SEGMENTS,
            )
            walls.append(time.perf_counter() - started)
            in_ch.append(found.warehouse_seconds)
            in_py.append(found.analysis_seconds)
            print(f"run {i + 1}: {walls[-1]:.2f} s", flush=True)
    frame = found.to_frame()
    done = frame.filter(frame["effect"].is_not_null()).height
    wall = statistics.median(walls)
    ch, py = statistics.median(in_ch), statistics.median(in_py)
    print(
        f"{len(METRICS)} metrics x {len(SEGMENTS)} segments (+ all traffic): {done} of "
        f"{frame.height} attributed, 90 days of hourly cells each"
    )
    print(
        f"median wall {wall:.2f} s ({wall / TARGET_SECONDS:.2f} of the {TARGET_SECONDS:.0f} s "
        f"target); ClickHouse {ch:.2f} s ({ch / wall:.0%}), Python {py:.2f} s ({py / wall:.0%})"
    )


if __name__ == "__main__":
    main()
