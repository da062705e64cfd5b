"""Which production requests to replay: a seeded, stratified, deduplicated, redacted sample.

The warehouse picks the candidates (:func:`warehouse.shadow_candidates`: window, model version,
segment filter, opt-out exclusion, prompt-hash dedup, seeded draw order per stratum); this module
decides how many per stratum, rebuilds each multi-turn sample's conversation history, and redacts
every text (prompt, history, production response) before it goes anywhere else. The expected
answer (``expected`` in an event's extra fields, an exact answer or a regex) is kept as recorded:
it is never sent, only compared with.

Replay reuses the production request's sampling parameters (``temperature``, ``max_tokens``, and
``stop`` when the event carried it in its extra fields); tools and functions are never sent.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

import warehouse
from shadow.errors import TerminalShadowError
from shadow.redact import RedactionReport, redact_text

__all__ = ["Sample", "SampleSet", "allocate_strata", "sample_traffic"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One production request to replay, redacted.

    ``messages`` is the chat to send: the conversation's earlier turns (user, assistant pairs)
    then this turn's prompt, as ``(role, content)`` pairs.
    """

    sample_id: str
    model_version: str
    stratum: str
    intent: str
    locale: str
    platform: str
    cohort: str
    messages: tuple[tuple[str, str], ...]
    production_output: str | None
    production_completion_tokens: int
    production_latency_ms: float
    temperature: float | None
    max_tokens: int | None
    stop: tuple[str, ...]
    expected: str | None

    @property
    def turns(self) -> int:
        """Turns replayed, this one included."""
        return (len(self.messages) + 1) // 2


@dataclass(frozen=True)
class SampleSet:
    """A sample with how it was drawn: per-stratum availability and targets, and what redaction
    removed."""

    samples: tuple[Sample, ...]
    strata: pl.DataFrame
    """``stratum``, ``candidates`` (distinct eligible prompts), ``target``, ``sampled``."""
    redaction: RedactionReport
    seed: int
    stratify_by: str

    def to_frame(self) -> pl.DataFrame:
        """One row per sample (messages as the number of turns)."""
        return pl.DataFrame(
            [
                {
                    "sample_id": s.sample_id,
                    "model_version": s.model_version,
                    "stratum": s.stratum,
                    "intent": s.intent,
                    "locale": s.locale,
                    "platform": s.platform,
                    "cohort": s.cohort,
                    "turns": s.turns,
                    "temperature": s.temperature,
                    "max_tokens": s.max_tokens,
                    "has_expected": s.expected is not None,
                }
                for s in self.samples
            ]
        )


def allocate_strata(
    candidates: Mapping[str, int],
    *,
    per_stratum: int | Mapping[str, int] | None = None,
    total: int | None = None,
) -> dict[str, int]:
    """How many to draw per stratum, never more than it has.

    ``per_stratum`` gives one count for every stratum or a count per named stratum (others get
    none); ``total`` splits a total in proportion to each stratum's candidates (largest
    remainders, ties to the larger stratum, then by name).
    """
    if (per_stratum is None) == (total is None):
        raise TerminalShadowError("give either per_stratum or total")
    if per_stratum is not None:
        wanted = (
            dict.fromkeys(candidates, per_stratum)
            if isinstance(per_stratum, int)
            else {k: per_stratum.get(k, 0) for k in candidates}
        )
        return {k: min(max(n, 0), candidates[k]) for k, n in wanted.items()}
    assert total is not None
    available = sum(candidates.values())
    total = min(max(total, 0), available)
    if not total:
        return dict.fromkeys(candidates, 0)
    quotas = {k: total * n / available for k, n in candidates.items()}
    out = {k: math.floor(q) for k, q in quotas.items()}
    by_remainder = sorted(candidates, key=lambda k: (-(quotas[k] - out[k]), -candidates[k], k))
    for k in by_remainder[: total - sum(out.values())]:
        out[k] += 1
    return out


def sample_traffic(
    wh: warehouse.Warehouse,
    *,
    since: dt.datetime,
    until: dt.datetime,
    model_versions: Sequence[str],
    per_stratum: int | Mapping[str, int] | None = None,
    total: int | None = None,
    stratify_by: str = "intent",
    segment_filter: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
) -> SampleSet:
    """Draw a redacted sample of production requests (see the module doc).

    Give ``per_stratum`` (a count for every stratum, or per named stratum) or ``total``
    (proportional to each stratum's distinct prompts). The same warehouse and seed give the same
    sample.
    """
    window = {"since": since, "until": until, "model_versions": model_versions}
    shape = {"segment_filter": segment_filter, "stratify_by": stratify_by}
    try:
        counts = warehouse.shadow_stratum_counts(wh, **window, **shape)
        available = dict(zip(counts["stratum"], counts["candidates"], strict=True))
        targets = allocate_strata(available, per_stratum=per_stratum, total=total)
        frame = warehouse.shadow_candidates(
            wh, **window, **shape, seed=seed, limit_per_stratum=max(targets.values(), default=0)
        )
        frame = (
            frame.with_columns(pl.int_range(pl.len()).over("stratum").alias("rank"))
            .filter(pl.col("rank") < pl.col("stratum").replace_strict(targets, default=0))
            .drop("rank")
        )
        later = frame.filter(pl.col("turn_index") > 0)
        history = (
            warehouse.conversation_turns(
                wh, later["conversation_id"].unique().to_list(), since=since, until=until
            )
            if later.height
            else None
        )
    except warehouse.WarehouseError as e:
        raise TerminalShadowError(f"cannot sample from the warehouse: {e}") from e
    report = RedactionReport()
    samples = tuple(_samples(frame, history, report))
    sampled = frame.group_by("stratum").len("sampled")
    strata = (
        counts.with_columns(
            pl.col("stratum").replace_strict(targets, default=0).alias("target").cast(pl.Int64)
        )
        .join(sampled, on="stratum", how="left")
        .with_columns(pl.col("sampled").fill_null(0).cast(pl.Int64))
    )
    return SampleSet(samples, strata, report, seed, stratify_by)


def _redacted(text: str, report: RedactionReport) -> str:
    r = redact_text(text)
    report.add(r)
    return r.text


def _samples(
    frame: pl.DataFrame, history: pl.DataFrame | None, report: RedactionReport
) -> list[Sample]:
    earlier: dict[str, list[tuple[int, str, str]]] = {}
    if history is not None:
        for conv, turn, prompt, response in history.iter_rows():
            earlier.setdefault(conv, []).append((turn, prompt, response))
    out = []
    for row in frame.iter_rows(named=True):
        messages: list[tuple[str, str]] = []
        for turn, prompt, response in earlier.get(row["conversation_id"], ()):
            if turn < row["turn_index"]:
                messages += [("user", _redacted(prompt, report))]
                messages += [("assistant", _redacted(response, report))]
        messages.append(("user", _redacted(row["prompt"], report)))
        production = row["response"]
        out.append(
            Sample(
                sample_id=row["request_id"],
                model_version=row["model_version"],
                stratum=row["stratum"],
                intent=row["intent"] or "unknown",
                locale=row["locale"] or "unknown",
                platform=row["platform"] or "unknown",
                cohort=row["cohort"] or "unknown",
                messages=tuple(messages),
                production_output=None if production is None else _redacted(production, report),
                production_completion_tokens=row["completion_tokens"],
                production_latency_ms=row["latency_ms"],
                temperature=row["temperature"],
                max_tokens=row["max_tokens"],
                stop=tuple(row["stop"] or ()),
                expected=row["expected"],
            )
        )
    return out
