"""Throughput of the traffic simulator: events generated and serialised to JSON bytes per minute.

Runs the default scenario cut to 7 days (``--days``) and prints events/minute and the ratio to
the 1,000,000 events/minute target. ``--write jsonl.gz`` (or jsonl, parquet) also times
:func:`ingest.simulate.write_files` end to end (including the ground truth) into a temp dir.

    .venv/bin/python bench/simulate.py [--days 7] [--seed N] [--write jsonl.gz]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# Run as `python bench/simulate.py`, this directory comes first on sys.path, and its ingest.py
# (the ingest benchmark) would shadow the ingest package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ingest.simulate import EVENT_KINDS, Scenario, simulate, write_files  # noqa: E402

TARGET_PER_MINUTE = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--write", choices=["jsonl.gz", "jsonl", "parquet"], default=None)
    args = parser.parse_args()
    scenario = Scenario.default().evolve(days=args.days)

    kinds: Counter[bytes] = Counter()
    size = 0
    started = time.perf_counter()
    for chunk in simulate(scenario, seed=args.seed):
        size += sum(map(len, chunk))
        # The type tag is the first key of every event: a cheap way to count by kind.
        kinds.update(raw[9:22].split(b'"', 1)[0] for raw in chunk)
    elapsed = time.perf_counter() - started
    total = sum(kinds.values())
    per_minute = total / elapsed * 60
    print(f"scenario: default, {scenario.days} days from {scenario.start}")
    print(f"events: {total:,} ({size / total:.0f} bytes each on average)")
    print("  " + ", ".join(f"{k.decode()}={n:,}" for k, n in sorted(kinds.items())))
    print(f"simulate + serialise: {elapsed:.2f} s -> {per_minute:,.0f} events/minute")
    print(
        f"ratio to the {TARGET_PER_MINUTE:,}/minute target: {per_minute / TARGET_PER_MINUTE:.1f}x"
    )

    if args.write:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            out = write_files(scenario, Path(tmp), seed=args.seed, fmt=args.write)
            elapsed = time.perf_counter() - started
            on_disk = sum(p.stat().st_size for p in out.event_files)
        assert list(out.counts) == list(EVENT_KINDS)
        per_minute = out.total / elapsed * 60
        print(
            f"write_files({args.write}): {elapsed:.2f} s -> {per_minute:,.0f} events/minute,"
            f" {on_disk / 1e6:.0f} MB, ratio {per_minute / TARGET_PER_MINUTE:.1f}x"
        )


if __name__ == "__main__":
    main()
