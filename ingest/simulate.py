"""Synthetic product traffic with a known ground truth: the test bed for attribution and alerting.

A :class:`Scenario` (a frozen pydantic model, usually read from TOML with :meth:`Scenario.load`)
describes a user population and its behaviour, seasonality, and what happens to it: a staged A/B
rollout of a candidate model with planted per-segment effects, a population shift, a UI release
and holidays. :func:`simulate` turns it into JSON events that decode with
:class:`ingest.events.EventDecoder`; :func:`ground_truth` says what was planted, on the scale it
was planted and as expected metric differences. Same scenario + same seed -> byte-identical events.

How one UTC day is generated (vectorised with numpy; one ``Generator`` per day):

1. arrivals: new users join (Poisson, day-of-week profile), plus a population shift's influx;
2. sessions: Poisson per live user with mean ``sessions_per_day`` x user activity (gamma) x cohort
   x hour-of-day x day-of-week (both in the user's local time, from the locale's UTC offsets) x
   holiday x daily noise; a user who signed up today gets one extra (onboarding) session;
3. each session's model and ``variant`` from the rollout phase of its UTC start date and the
   user's hash bucket (so assignment is stable per user and nested across stages);
4. base turns per session (1 + negative binomial; a share of sessions is empty), conversations
   within sessions, an intent per conversation (mostly the user's preferred intent); each
   response may be retried (regenerate / rephrase / edit), the retry naming the next response's
   ``request_id`` (chains of up to :data:`MAX_RETRY_CHAIN` retries);
5. per response: refusal, tokens, finish reason, latency, whether it is rated and whether the
   rating is a thumbs-down, from logistic models with per-user random effects (so outcomes are
   clustered by user); feedback arrives seconds to minutes after the response;
6. timestamps: cumulative think time + latency within each session, then the session's end;
7. churn: each live user leaves for good with a daily probability by cohort, raised by that
   day's bad experiences (thumbs-down given, refusals seen).

Events that fall after the end of their UTC day are held back and emitted with the next chunk,
so every chunk is one UTC day, chunks are in global time order, and a final chunk (the day after
the last simulated day) holds the tails of sessions that ran past midnight.

Scales. Effects on probabilities (refusal, rating, thumbs-down among rated, retry, task
completion) are additive on the log-odds scale; effects on sizes (completion tokens, time to
first token, decode time per token, base turns per session) are multipliers. Candidate effects
apply to every response served by the candidate model, on top of the baseline model, and sum
when several segments match.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import math
import operator
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

import msgspec
import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ingest.errors import TerminalIngestError, TransientIngestError
from ingest.events import SCHEMA_VERSION

__all__ = [
    "COHORTS",
    "EVENT_KINDS",
    "INTENTS",
    "MAX_RETRY_CHAIN",
    "TRUTH_VERSION",
    "Churn",
    "CohortSpec",
    "Effect",
    "Holiday",
    "IntentSpec",
    "LocaleSpec",
    "PlatformSpec",
    "Population",
    "PopulationShift",
    "Ratings",
    "Responses",
    "Retries",
    "Rollout",
    "Scenario",
    "Seasonality",
    "Segment",
    "Sessions",
    "SimulationOutput",
    "Stage",
    "UIRelease",
    "cohort_of",
    "ground_truth",
    "produce_to_kafka",
    "scenario_annotations",
    "simulate",
    "write_files",
]

TRUTH_VERSION = 1
"""Version of the ground-truth manifest layout; bumped when a key changes meaning."""

MAX_RETRY_CHAIN = 4
"""At most this many retries in a row on one turn: the fifth answer is always accepted."""

EVENT_KINDS: tuple[str, ...] = ("session_start", "response", "retry", "feedback", "session_end")
"""Event types the simulator emits (the ``type`` tag), also the keys of count mappings."""

COHORTS: tuple[str, ...] = ("new", "early", "established", "veteran")
"""Tenure cohorts: new < 7 days, early 7-29, established 30-179, veteran 180+."""

_COHORT_EDGES = np.array([7, 30, 180])
_COHORT_TENURE: dict[str, tuple[int, int]] = {
    "new": (0, 7),
    "early": (7, 30),
    "established": (30, 180),
    "veteran": (180, 1200),
}

INTENTS: tuple[str, ...] = ("coding", "writing", "qa", "analysis", "chat", "translation")
"""The intents of the default scenario (a scenario may name others)."""

_VARIANTS = ("default", "control", "treatment")
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_MAX_LATENCY_MS = 3_500_000.0  # the contract caps latency_ms at one hour
_FINISH = ("stop", "length", "refusal", "content_filter", "error", "cancelled", "tool_calls")
_STOP, _LENGTH, _REFUSAL, _FILTER, _ERROR, _CANCELLED, _TOOLS = range(len(_FINISH))
_KIND_CODE = {kind: i for i, kind in enumerate(EVENT_KINDS)}
_FIELDS: dict[str, tuple[str, ...]] = {
    "session_start": ("session_id", "user_id", "platform", "locale"),
    "response": (
        "request_id", "conversation_id", "session_id", "user_id", "model_version", "variant",
        "turn_index", "prompt", "response", "prompt_tokens", "completion_tokens", "latency_ms",
        "ttft_ms", "finish_reason", "refused", "locale", "platform", "app_version",
        "user_tenure_days", "cohort", "intent", "temperature", "max_tokens", "opt_out",
    ),
    "retry": ("request_id", "new_request_id", "kind", "user_id"),
    "feedback": ("request_id", "user_id", "rating", "reason_tags", "comment"),
    "session_end": ("session_id", "user_id", "turns", "seconds", "end_reason", "task_completed"),
}  # fmt: skip
"""Field order of each emitted event after ``type``, ``event_id``, ``ts``, ``schema_version``."""
# Output-only structs, filled positionally: about twice as fast to build and encode as dicts,
# with the same bytes. The contract's own structs take datetimes, which encode with
# microseconds, and the contract asks for milliseconds.
_STRUCTS: dict[str, type[msgspec.Struct]] = {
    kind: msgspec.defstruct(
        f"_{kind.title().replace('_', '')}Out",
        [("event_id", str), ("ts", str), ("schema_version", int)]
        + [(name, Any) for name in fields],
        tag_field="type",
        tag=kind,
    )
    for kind, fields in _FIELDS.items()
}

CohortName = Literal["new", "early", "established", "veteran"]
PlatformName = Literal["web", "ios", "android", "desktop", "api", "other"]
LogOddsMetric = Literal["thumbs_down", "rating", "refusal", "retry", "task_completed"]
RatioMetric = Literal["completion_tokens", "ttft_ms", "ms_per_token", "session_turns"]
_LOG_ODDS_METRICS = ("thumbs_down", "rating", "refusal", "retry", "task_completed")
_SESSION_METRICS = ("session_turns", "task_completed")
_OBSERVABLE = {
    "thumbs_down": "thumbs_down_rate",
    "rating": "rating_rate",
    "refusal": "refusal_rate",
    "retry": "retry_rate",
    "task_completed": "task_completion_rate",
    "completion_tokens": "completion_tokens",
    "ttft_ms": "ttft_ms",
    "ms_per_token": "latency_ms",
    "session_turns": "session_turns",
}
_Prob = Annotated[float, Field(ge=0.0, le=1.0)]
_OpenProb = Annotated[float, Field(gt=0.0, lt=1.0)]
_Positive = Annotated[float, Field(gt=0.0)]


def cohort_of(tenure_days: np.ndarray) -> np.ndarray:
    """Cohort index (into :data:`COHORTS`) of each tenure in days."""
    return np.searchsorted(_COHORT_EDGES, tenure_days, side="right")


# --------------------------------------------------------------------------------------------
# Scenario
# --------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class LocaleSpec(_Model):
    """One locale: its share of users, their UTC offsets and its baseline quirks."""

    weight: _Positive
    """Relative share of users with this locale."""
    utc_offsets: tuple[int, ...] = (0,)
    """Hours east of UTC; each user gets one of them at random (DST changes are ignored)."""
    thumbs_down_log_odds: float = 0.0
    """Baseline thumbs-down log-odds adjustment for this locale."""
    rating_log_odds: float = 0.0
    """Baseline rating log-odds adjustment for this locale."""


class PlatformSpec(_Model):
    """One client platform."""

    weight: _Positive
    """Relative share of users on this platform."""
    app_version: str = "1.0.0"
    """App version before any UI release."""
    rating_log_odds: float = 0.0
    """Baseline rating log-odds adjustment (rating buttons are easier to reach on some clients)."""


class CohortSpec(_Model):
    """Behaviour by tenure cohort."""

    initial_share: _Prob
    """Share of the initial population in this cohort (tenure uniform within the cohort)."""
    activity: _Positive = 1.0
    """Multiplier on sessions per day."""
    rating_log_odds: float = 0.0
    """Rating log-odds adjustment."""
    thumbs_down_log_odds: float = 0.0
    """Thumbs-down log-odds adjustment."""
    churn_daily: _Prob = 0.01
    """Daily probability of leaving for good (before bad-experience adjustments)."""


class IntentSpec(_Model):
    """What one intent's conversations look like."""

    prompt_tokens_median: _Positive = 120.0
    """Median prompt tokens of the first turn (later turns add conversation context)."""
    completion_tokens_median: _Positive = 250.0
    """Median completion tokens of a normal (not refused) response."""
    refusal_log_odds: float = 0.0
    """Refusal log-odds adjustment."""
    thumbs_down_log_odds: float = 0.0
    """Thumbs-down log-odds adjustment."""
    retry_log_odds: float = 0.0
    """Retry log-odds adjustment."""
    think_seconds_median: _Positive = 40.0
    """Median seconds between a response and the user's next prompt."""
    tool_calls_share: _Prob = 0.0
    """Share of normal responses that end in tool calls."""


def _default_locales() -> dict[str, LocaleSpec]:
    return {
        "en-US": LocaleSpec(weight=0.42, utc_offsets=(-4, -5, -6, -7)),
        "en-GB": LocaleSpec(weight=0.10, utc_offsets=(1,)),
        "de-DE": LocaleSpec(weight=0.12, utc_offsets=(2,), thumbs_down_log_odds=0.10),
        "fr-FR": LocaleSpec(weight=0.08, utc_offsets=(2,), thumbs_down_log_odds=0.08),
        "ja-JP": LocaleSpec(weight=0.12, utc_offsets=(9,), thumbs_down_log_odds=0.15),
        "pt-BR": LocaleSpec(weight=0.16, utc_offsets=(-3,), thumbs_down_log_odds=0.12),
    }


def _default_platforms() -> dict[str, PlatformSpec]:
    return {
        "web": PlatformSpec(weight=0.45, app_version="2026.08.3"),
        "ios": PlatformSpec(weight=0.22, app_version="5.12.0", rating_log_odds=-0.15),
        "android": PlatformSpec(weight=0.20, app_version="5.12.1", rating_log_odds=-0.30),
        "desktop": PlatformSpec(weight=0.13, app_version="1.9.0", rating_log_odds=0.10),
    }


def _default_cohorts() -> dict[str, CohortSpec]:
    return {
        "new": CohortSpec(
            initial_share=0.06,
            activity=1.4,
            rating_log_odds=0.25,
            thumbs_down_log_odds=0.25,
            churn_daily=0.06,
        ),
        "early": CohortSpec(
            initial_share=0.14,
            activity=1.15,
            rating_log_odds=0.10,
            thumbs_down_log_odds=0.10,
            churn_daily=0.025,
        ),
        "established": CohortSpec(initial_share=0.35, churn_daily=0.008),
        "veteran": CohortSpec(
            initial_share=0.45,
            activity=0.9,
            rating_log_odds=-0.10,
            thumbs_down_log_odds=-0.10,
            churn_daily=0.004,
        ),
    }


def _default_intents() -> dict[str, IntentSpec]:
    return {
        "coding": IntentSpec(
            prompt_tokens_median=350,
            completion_tokens_median=420,
            refusal_log_odds=-0.8,
            thumbs_down_log_odds=0.15,
            retry_log_odds=0.30,
            think_seconds_median=75,
            tool_calls_share=0.04,
        ),
        "writing": IntentSpec(
            prompt_tokens_median=180,
            completion_tokens_median=380,
            refusal_log_odds=0.3,
            thumbs_down_log_odds=0.05,
            retry_log_odds=0.20,
            think_seconds_median=55,
        ),
        "qa": IntentSpec(
            prompt_tokens_median=60,
            completion_tokens_median=160,
            thumbs_down_log_odds=-0.10,
            retry_log_odds=-0.10,
            think_seconds_median=30,
            tool_calls_share=0.01,
        ),
        "analysis": IntentSpec(
            prompt_tokens_median=600,
            completion_tokens_median=450,
            refusal_log_odds=-0.3,
            thumbs_down_log_odds=0.10,
            retry_log_odds=0.10,
            think_seconds_median=90,
            tool_calls_share=0.06,
        ),
        "chat": IntentSpec(
            prompt_tokens_median=40,
            completion_tokens_median=90,
            refusal_log_odds=0.5,
            thumbs_down_log_odds=-0.20,
            retry_log_odds=-0.20,
            think_seconds_median=20,
        ),
        "translation": IntentSpec(
            prompt_tokens_median=220,
            completion_tokens_median=240,
            refusal_log_odds=-1.0,
            thumbs_down_log_odds=-0.05,
            think_seconds_median=40,
        ),
    }


class Population(_Model):
    """Who the users are and how often they come."""

    initial_users: int = Field(default=20_000, ge=0)
    """Users alive on the first day, with tenures drawn from the cohorts' ``initial_share``."""
    new_users_per_day: float = Field(default=250.0, ge=0.0)
    """Mean sign-ups per day (Poisson), scaled by the day-of-week volume profile."""
    sessions_per_day: _Positive = 0.55
    """Mean sessions per live user per day at average activity, cohort and seasonality."""
    activity_shape: _Positive = 1.2
    """Gamma shape of per-user activity (mean 1): smaller means heavier heavy users."""
    rating_sd: float = Field(default=1.0, ge=0.0)
    """SD of the per-user random effect on rating log-odds."""
    thumbs_down_sd: float = Field(default=0.7, ge=0.0)
    """SD of the per-user random effect on thumbs-down log-odds (also drives retries)."""
    opt_out_share: _Prob = 0.02
    """Share of users who opted out of text logging: their events never carry text."""
    intent_stickiness: _Prob = 0.6
    """Probability that a conversation has the user's preferred intent (else the global mix)."""
    locales: dict[str, LocaleSpec] = Field(default_factory=_default_locales)
    """Locales (BCP 47 tags) and their specs."""
    platforms: dict[PlatformName, PlatformSpec] = Field(default_factory=_default_platforms)
    """Client platforms (names from the event contract) and their specs."""
    cohorts: dict[CohortName, CohortSpec] = Field(default_factory=_default_cohorts)
    """All four tenure cohorts and their behaviour."""
    intents: dict[str, float] = Field(
        default_factory=lambda: {
            "coding": 0.28,
            "writing": 0.18,
            "qa": 0.20,
            "analysis": 0.12,
            "chat": 0.14,
            "translation": 0.08,
        }
    )
    """Global intent mix (relative weights); users' preferred intents are drawn from it."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if set(self.cohorts) != set(COHORTS):
            raise ValueError(f"population.cohorts must define exactly {COHORTS}")
        if not self.locales or not self.platforms or not self.intents:
            raise ValueError("population needs at least one locale, platform and intent")
        if any(w <= 0 for w in self.intents.values()):
            raise ValueError("population.intents weights must be positive")
        if abs(sum(c.initial_share for c in self.cohorts.values()) - 1.0) > 1e-6:
            raise ValueError("population.cohorts initial_share must sum to 1")
        return self


class Sessions(_Model):
    """Shape of a session."""

    empty_share: _Prob = 0.04
    """Share of sessions opened and closed without a prompt (``turns`` = 0)."""
    mean_turns: float = Field(default=4.0, ge=1.0)
    """Mean base turns (prompts, before retries) of a non-empty session."""
    turns_dispersion: _Positive = 1.5
    """Negative-binomial shape of extra turns: smaller means more very long sessions."""
    max_turns: int = Field(default=200, ge=1)
    """Cap on base turns per session."""
    new_conversation_prob: _Prob = 0.25
    """Probability that a prompt after the first starts a new conversation."""
    think_sigma: _Positive = 0.9
    """Log-normal sigma of think time (medians per intent)."""
    first_prompt_seconds_median: _Positive = 8.0
    """Median seconds from session start to the first prompt."""
    end_reasons: dict[str, float] = Field(
        default_factory=lambda: {
            "idle_timeout": 0.45,
            "closed": 0.35,
            "navigated_away": 0.15,
            "logout": 0.05,
        }
    )
    """Session end reasons and weights."""
    idle_timeout_seconds: _Positive = 600.0
    """A session ending on ``idle_timeout`` ends this long after its last activity."""
    end_seconds_median: _Positive = 15.0
    """Median seconds from last activity to any other kind of session end."""
    task_completed_known_share: _Prob = 0.3
    """Share of non-empty sessions whose ``task_completed`` is known (else null)."""
    task_completed_rate: _OpenProb = 0.7
    """Baseline probability a task is completed, for a typical user without refusals."""
    task_refusal_log_odds: float = -1.0
    """Task completion log-odds when the session saw a refusal."""
    task_thumbs_down_coupling: float = -0.5
    """Task completion log-odds per unit of the user's thumbs-down random effect."""


class Responses(_Model):
    """Responses: tokens, latency, finish reasons, refusals, text."""

    intents: dict[str, IntentSpec] = Field(default_factory=_default_intents)
    """Per-intent profiles; every intent in the population mix needs one."""
    tokens_sigma: _Positive = 0.8
    """Log-normal sigma of completion tokens."""
    prompt_tokens_sigma: _Positive = 0.7
    """Log-normal sigma of prompt tokens."""
    context_tokens_per_turn: float = Field(default=150.0, ge=0.0)
    """Prompt tokens added per earlier turn of the conversation (context)."""
    refusal_tokens_median: _Positive = 40.0
    """Median completion tokens of a refusal."""
    refusal_rate: _OpenProb = 0.015
    """Baseline refusal probability."""
    content_filter_share: _Prob = 0.2
    """Share of refusals reported as ``content_filter`` rather than ``refusal``."""
    error_share: _Prob = 0.003
    """Share of normal responses that fail mid-way (``finish_reason`` = error)."""
    cancelled_share: _Prob = 0.005
    """Share of normal responses the user stopped (``cancelled``)."""
    max_tokens: tuple[int, ...] = (1024, 2048, 4096)
    """``max_tokens`` values clients send (uniform); hitting one ends in ``length``."""
    max_tokens_missing_share: _Prob = 0.3
    """Share of requests without ``max_tokens`` (never truncated)."""
    temperatures: tuple[float, ...] = (0.0, 0.3, 0.7, 1.0)
    """Temperatures clients send (uniform)."""
    temperature_missing_share: _Prob = 0.2
    """Share of requests without ``temperature``."""
    ttft_ms_median: _Positive = 420.0
    """Median time to first token, in milliseconds."""
    ttft_sigma: _Positive = 0.45
    """Log-normal sigma of time to first token."""
    ms_per_token_median: _Positive = 14.0
    """Median decode milliseconds per completion token."""
    ms_per_token_sigma: _Positive = 0.2
    """Log-normal sigma of decode time per token."""
    peak_load_log: float = Field(default=0.15, ge=0.0)
    """Log slow-down of ttft and decode at the busiest UTC hour (scaled by expected load)."""
    ttft_missing_share: _Prob = 0.03
    """Share of responses without ``ttft_ms`` (non-streaming clients)."""
    text_share: _Prob = 0.25
    """Share of responses (of users who did not opt out) carrying prompt and response text."""
    pii_share: _Prob = 0.03
    """Share of texts (prompts and comments) that contain an email address or phone number."""


class Ratings(_Model):
    """Thumbs up/down."""

    rating_rate: _OpenProb = 0.065
    """Baseline probability a response is rated, for a typical user."""
    thumbs_down_share: _OpenProb = 0.25
    """Baseline probability a rating is a thumbs-down, for a typical user."""
    refused_rating_log_odds: float = 0.6
    """Rating log-odds when the response was a refusal (annoyed users rate more)."""
    refused_thumbs_down_log_odds: float = 1.6
    """Thumbs-down log-odds when the response was a refusal."""
    truncated_thumbs_down_log_odds: float = 0.7
    """Thumbs-down log-odds when the response hit ``max_tokens``."""
    error_thumbs_down_log_odds: float = 2.0
    """Thumbs-down log-odds when the response failed."""
    delay_seconds_median: _Positive = 12.0
    """Median seconds from response to feedback."""
    delay_sigma: _Positive = 1.3
    """Log-normal sigma of the feedback delay (a tail of minutes)."""
    comment_share: _Prob = 0.06
    """Share of feedback with a free-text comment."""


class Retries(_Model):
    """Regenerate / rephrase / edit."""

    retry_rate: _OpenProb = 0.07
    """Baseline probability a response is retried, for a typical user."""
    refused_log_odds: float = 1.4
    """Retry log-odds when the response was a refusal."""
    thumbs_down_coupling: float = 0.5
    """Retry log-odds per unit of the user's thumbs-down random effect."""
    kinds: dict[Literal["regenerate", "rephrase", "edit"], float] = Field(
        default_factory=lambda: {"regenerate": 0.5, "rephrase": 0.3, "edit": 0.2}
    )
    """Retry kinds and weights."""
    delay_seconds_median: _Positive = 6.0
    """Median seconds from a response to the retry."""


class Seasonality(_Model):
    """Daily and weekly cycles, in the user's local time, and day-level noise."""

    hourly_volume: tuple[float, ...] = (
        0.35, 0.22, 0.15, 0.12, 0.12, 0.18, 0.35, 0.60, 0.90, 1.15, 1.30, 1.35,
        1.30, 1.30, 1.35, 1.30, 1.20, 1.10, 1.05, 1.10, 1.20, 1.15, 0.90, 0.60,
    )  # fmt: skip
    """Relative session volume by local hour 0-23 (normalised to mean 1)."""
    weekly_volume: tuple[float, ...] = (1.0, 1.04, 1.05, 1.02, 0.95, 0.68, 0.66)
    """Relative volume Monday..Sunday (normalised to mean 1); also scales sign-ups (UTC)."""
    night_hours: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    """Local hours counted as night."""
    night_thumbs_down_log_odds: float = 0.15
    """Thumbs-down log-odds at night (tired users, harder questions)."""
    weekend_thumbs_down_log_odds: float = 0.08
    """Thumbs-down log-odds at weekends."""
    weekend_rating_log_odds: float = -0.05
    """Rating log-odds at weekends."""
    daily_volume_noise_sd: float = Field(default=0.05, ge=0.0)
    """SD of a per-day log-normal volume multiplier (mean 1)."""
    daily_thumbs_down_noise_sd: float = Field(default=0.03, ge=0.0)
    """SD of a per-day thumbs-down log-odds shock."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if len(self.hourly_volume) != 24 or len(self.weekly_volume) != 7:
            raise ValueError("seasonality needs 24 hourly and 7 weekly volumes")
        if min(self.hourly_volume) <= 0 or min(self.weekly_volume) <= 0:
            raise ValueError("seasonality volumes must be positive")
        if any(not 0 <= h < 24 for h in self.night_hours):
            raise ValueError("seasonality.night_hours must be hours 0-23")
        return self


class Churn(_Model):
    """Users leaving for good."""

    bad_experience_log_odds: float = 0.25
    """Churn log-odds per bad experience that day (thumbs-down given or refusal seen)."""
    bad_experience_cap: int = Field(default=4, ge=0)
    """Bad experiences beyond this many in a day add nothing."""


class Holiday(_Model):
    """A public holiday: lower volume and shifted rates in the listed locales."""

    name: str
    """Name, for the ground truth and dashboards."""
    date: dt.date
    """Local date of the holiday."""
    locales: tuple[str, ...] = ()
    """Locales that observe it; empty means all."""
    volume_multiplier: _Positive = 0.6
    """Multiplier on session volume."""
    thumbs_down_log_odds: float = 0.1
    """Thumbs-down log-odds shift."""
    rating_log_odds: float = -0.1
    """Rating log-odds shift."""


class Segment(_Model):
    """Where an effect applies: every non-empty dimension must match (empty = everyone)."""

    locale: tuple[str, ...] = ()
    """Locales (any of them)."""
    intent: tuple[str, ...] = ()
    """Conversation intents (any of them); not allowed for session-level metrics."""
    cohort: tuple[CohortName, ...] = ()
    """Tenure cohorts (any of them)."""
    platform: tuple[PlatformName, ...] = ()
    """Client platforms (any of them)."""

    def as_dict(self) -> dict[str, list[str]]:
        """The non-empty dimensions, as plain lists."""
        return {k: list(v) for k, v in self.model_dump().items() if v}


class Effect(_Model):
    """One planted effect of the candidate model relative to the baseline.

    ``size`` is on the metric's planting scale: additive log-odds for ``thumbs_down``,
    ``rating``, ``refusal``, ``retry`` and ``task_completed``; a multiplier (1.25 = +25 %) for
    ``completion_tokens``, ``ttft_ms``, ``ms_per_token`` and ``session_turns`` (on base turns
    minus one, i.e. on the follow-up prompts). Session-level metrics cannot be segmented by
    intent.
    """

    metric: LogOddsMetric | RatioMetric
    """What the effect acts on."""
    size: float
    """Log-odds added, or the multiplier, as planted."""
    segment: Segment = Segment()
    """Where it applies (default: every response of the candidate)."""
    note: str = ""
    """Why it is there, for people reading the ground truth."""

    @property
    def scale(self) -> Literal["log_odds", "multiplier"]:
        """``log_odds`` or ``multiplier``."""
        return "log_odds" if self.metric in _LOG_ODDS_METRICS else "multiplier"

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.scale == "multiplier" and self.size <= 0:
            raise ValueError(f"effect on {self.metric} is a multiplier and must be positive")
        if self.metric in _SESSION_METRICS and self.segment.intent:
            raise ValueError(f"{self.metric} is per session and cannot be segmented by intent")
        return self


class Stage(_Model):
    """From ``date`` (00:00 UTC), users with hash bucket below ``treatment_share`` get the
    candidate (``variant`` = treatment), everyone else the baseline (control)."""

    date: dt.date
    """First day of the stage."""
    treatment_share: _OpenProb
    """Share of users (by hash bucket) on the candidate."""


class Rollout(_Model):
    """A candidate model's staged A/B by user hash, then a full switch."""

    baseline: str = "assistant-2026-08"
    """Model version serving everyone before the A/B (and control during it)."""
    candidate: str = "assistant-2026-09"
    """Model version under test."""
    salt: str = "rollout-assistant-2026-09"
    """Hash salt: bucket = blake2b(f"{salt}:{user_id}", 8 bytes) / 2**64."""
    stages: tuple[Stage, ...] = ()
    """A/B stages in date order, with non-decreasing shares (so assignment is nested)."""
    full_switch: dt.date | None = None
    """From this date (00:00 UTC) everyone gets the candidate with ``variant`` = default."""
    effects: tuple[Effect, ...] = ()
    """Planted effects of the candidate."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        dates = [s.date for s in self.stages]
        shares = [s.treatment_share for s in self.stages]
        if dates != sorted(set(dates)):
            raise ValueError("rollout.stages must have strictly increasing dates")
        if shares != sorted(shares):
            raise ValueError("rollout.stages shares must not decrease (assignment is nested)")
        if self.full_switch is not None and dates and self.full_switch <= dates[-1]:
            raise ValueError("rollout.full_switch must come after the last stage")
        if self.baseline == self.candidate:
            raise ValueError("rollout.baseline and rollout.candidate must differ")
        return self

    @property
    def first_exposure(self) -> dt.date | None:
        """The first date anyone gets the candidate."""
        if self.stages:
            return self.stages[0].date
        return self.full_switch


class PopulationShift(_Model):
    """An influx of new users (a campaign, a new market) with a worse baseline."""

    date: dt.date
    """First day of the influx."""
    days: int = Field(default=3, ge=1)
    """The influx is spread evenly over this many days."""
    extra_users: int = Field(default=4000, ge=0)
    """New users on top of the usual sign-ups, in total."""
    thumbs_down_log_odds: float = 0.5
    """Added to these users' thumbs-down random effect (worse experience for them)."""
    rating_log_odds: float = 0.0
    """Added to these users' rating random effect."""
    activity_multiplier: _Positive = 1.0
    """Multiplier on these users' activity."""
    locales: dict[str, float] | None = None
    """Locale mix of the influx (weights); None means the population's."""
    platforms: dict[PlatformName, float] | None = None
    """Platform mix of the influx (weights); None means the population's."""


class UIRelease(_Model):
    """A client release that changes the rating UI (and so rating propensity)."""

    date: dt.date
    """Release date (00:00 UTC)."""
    app_versions: dict[PlatformName, str] = Field(default_factory=dict)
    """New app version per platform; platforms not listed get ``<old>+ui``."""
    adoption_days: dict[PlatformName, float] = Field(
        default_factory=lambda: {"web": 0.0, "desktop": 1.0, "ios": 3.0, "android": 4.0}
    )
    """Mean days until a user has the new version (exponential); web and missing = 0."""
    rating_log_odds: float = 0.7
    """Rating log-odds on the new version (a more visible rating control)."""
    thumbs_down_log_odds: float = -0.2
    """Thumbs-down log-odds among ratings on the new version (casual raters are kinder)."""


class Scenario(_Model):
    """Everything the simulator needs; see the module docstring for the model."""

    name: str = "baseline"
    """Name, for the ground truth."""
    description: str = ""
    """Free text."""
    seed: int = Field(default=20260901, ge=0)
    """Seed used when :func:`simulate` is given none."""
    start: dt.date = dt.date(2026, 9, 1)
    """First simulated UTC day."""
    days: int = Field(default=49, ge=1, le=3660)
    """Number of simulated days."""
    population: Population = Population()
    sessions: Sessions = Sessions()
    responses: Responses = Responses()
    ratings: Ratings = Ratings()
    retries: Retries = Retries()
    seasonality: Seasonality = Seasonality()
    churn: Churn = Churn()
    rollout: Rollout | None = None
    """The candidate's rollout; None means the baseline serves everyone throughout."""
    population_shift: PopulationShift | None = None
    ui_release: UIRelease | None = None
    holidays: tuple[Holiday, ...] = ()
    truth_samples: int = Field(default=200_000, ge=1000)
    """Reference draws behind the ground truth's expected differences."""

    _DEFAULT_PATH: ClassVar[Path] = Path(__file__).parent / "scenarios" / "default.toml"

    @classmethod
    def load(cls, path: Path | str) -> Scenario:
        """Read a scenario from a TOML file (unknown keys are rejected)."""
        with Path(path).open("rb") as f:
            return cls.model_validate(tomllib.load(f))

    @classmethod
    def default(cls) -> Scenario:
        """The shipped default scenario (``ingest/scenarios/default.toml``)."""
        return cls.load(cls._DEFAULT_PATH)

    def evolve(self, **changes: Any) -> Scenario:
        """A validated copy with ``changes`` applied.

        A mapping given for a nested model updates that model's fields (recursively); any other
        value, including a mapping for a dict field such as ``population.locales``, replaces
        the field. ``Scenario.default().evolve(days=7, population={"initial_users": 2000})``
        """
        return type(self).model_validate(_updated(self, changes))

    @property
    def end(self) -> dt.date:
        """The last simulated day."""
        return self.start + dt.timedelta(days=self.days - 1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        intents = set(self.responses.intents)
        if missing := set(self.population.intents) - intents:
            raise ValueError(f"responses.intents lacks a profile for {sorted(missing)}")
        locales = set(self.population.locales)
        platforms = set(self.population.platforms)
        for h in self.holidays:
            if unknown := set(h.locales) - locales:
                raise ValueError(f"holiday {h.name!r} names unknown locales {sorted(unknown)}")
        shift = self.population_shift
        if shift is not None:
            if unknown := set(shift.locales or {}) - locales:
                raise ValueError(f"population_shift names unknown locales {sorted(unknown)}")
            if unknown := set(shift.platforms or {}) - platforms:
                raise ValueError(f"population_shift names unknown platforms {sorted(unknown)}")
        for e in self.rollout.effects if self.rollout else ():
            for dim, known in (("locale", locales), ("intent", intents), ("platform", platforms)):
                if unknown := set(getattr(e.segment, dim)) - known:
                    raise ValueError(f"effect on {e.metric} names unknown {dim} {sorted(unknown)}")
        return self


def _updated(model: BaseModel, changes: Mapping[str, Any]) -> dict[str, Any]:
    out = model.model_dump()
    for key, value in changes.items():
        current = getattr(model, key, None)
        if isinstance(current, BaseModel) and isinstance(value, Mapping):
            out[key] = _updated(current, value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# The compiled model: lookup tables and the outcome equations, shared by the simulator and the
# ground truth so that the truth describes exactly what is generated.
# --------------------------------------------------------------------------------------------


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _weights(values: Mapping[str, float], keys: tuple[str, ...]) -> np.ndarray:
    """Weights of ``keys`` (0 where missing), normalised to sum to 1."""
    w = np.array([values.get(k, 0.0) for k in keys], dtype=float)
    return w / w.sum()


def _treatment_share(rollout: Rollout | None, day: dt.date) -> float:
    """Share of users on the candidate on ``day``: 0 before the A/B, the stage's share during
    it, 1 from the full switch."""
    if rollout is None:
        return 0.0
    if rollout.full_switch is not None and day >= rollout.full_switch:
        return 1.0
    share = 0.0
    for st in rollout.stages:
        if day >= st.date:
            share = st.treatment_share
    return share


@dataclass
class _Context:
    """Covariates of a batch of turns (simulated, or reference draws for the ground truth)."""

    locale: np.ndarray
    intent: np.ndarray
    cohort: np.ndarray
    platform: np.ndarray
    u_rate: np.ndarray
    u_down: np.ndarray
    night: np.ndarray
    weekend: np.ndarray
    utc_hour: np.ndarray
    extra_rating: np.ndarray  # holiday + UI release, log-odds
    extra_down: np.ndarray  # holiday + UI release + daily noise, log-odds
    candidate: np.ndarray  # 1.0 where the candidate model serves, else 0.0


@dataclass(frozen=True)
class _EffectTable:
    size: float  # log-odds, or log of the multiplier
    locale: np.ndarray
    intent: np.ndarray
    cohort: np.ndarray
    platform: np.ndarray


class _Compiled:
    """A scenario turned into arrays, plus the outcome equations."""

    def __init__(self, s: Scenario) -> None:
        p = s.population
        self.s = s
        self.locales = tuple(p.locales)
        self.platforms = tuple(p.platforms)
        self.intents = tuple(s.responses.intents)
        self.locale_w = _weights({k: v.weight for k, v in p.locales.items()}, self.locales)
        self.platform_w = _weights({k: v.weight for k, v in p.platforms.items()}, self.platforms)
        self.intent_w = _weights(p.intents, self.intents)
        self.cohort_share = np.array([p.cohorts[c].initial_share for c in COHORTS])
        self.cohort_activity = np.array([p.cohorts[c].activity for c in COHORTS])
        self.cohort_rating = np.array([p.cohorts[c].rating_log_odds for c in COHORTS])
        self.cohort_down = np.array([p.cohorts[c].thumbs_down_log_odds for c in COHORTS])
        self.cohort_churn = np.array(
            [_logit(min(max(p.cohorts[c].churn_daily, 1e-9), 1 - 1e-9)) for c in COHORTS]
        )
        self.locale_down = np.array([p.locales[k].thumbs_down_log_odds for k in self.locales])
        self.locale_rating = np.array([p.locales[k].rating_log_odds for k in self.locales])
        self.platform_rating = np.array([p.platforms[k].rating_log_odds for k in self.platforms])
        ints = s.responses.intents
        self.intent_prompt = np.log([ints[k].prompt_tokens_median for k in self.intents])
        self.intent_completion = np.log([ints[k].completion_tokens_median for k in self.intents])
        self.intent_refusal = np.array([ints[k].refusal_log_odds for k in self.intents])
        self.intent_down = np.array([ints[k].thumbs_down_log_odds for k in self.intents])
        self.intent_retry = np.array([ints[k].retry_log_odds for k in self.intents])
        self.intent_think = np.log([ints[k].think_seconds_median * 1000 for k in self.intents])
        self.intent_tools = np.array([ints[k].tool_calls_share for k in self.intents])
        # (locale, offset) groups: users in one group share a local clock.
        groups = [(i, off) for i, k in enumerate(self.locales) for off in p.locales[k].utc_offsets]
        self.group_locale = np.array([g[0] for g in groups])
        self.group_offset_ms = np.array([g[1] * _HOUR_MS for g in groups], dtype=np.int64)
        self.locale_groups = [
            np.flatnonzero(self.group_locale == i) for i in range(len(self.locales))
        ]
        season = s.seasonality
        self.hourly = np.array(season.hourly_volume) / np.mean(season.hourly_volume)
        self.weekly = np.array(season.weekly_volume) / np.mean(season.weekly_volume)
        self.night = np.zeros(24, dtype=bool)
        self.night[list(season.night_hours)] = True
        self.load = self._expected_load()
        self.effects = self._effect_tables()
        self.retry_kinds = tuple(s.retries.kinds)
        self.retry_kind_w = _weights(s.retries.kinds, self.retry_kinds)
        self.end_reasons = tuple(s.sessions.end_reasons)
        self.end_reason_w = _weights(s.sessions.end_reasons, self.end_reasons)
        self.idle_reason = (
            self.end_reasons.index("idle_timeout") if "idle_timeout" in self.end_reasons else -1
        )

    def _expected_load(self) -> np.ndarray:
        """Log slow-down per UTC hour, from the expected share of traffic in that hour."""
        volume = np.zeros(24)
        for g, off in enumerate(self.group_offset_ms // _HOUR_MS):
            share = self.locale_w[self.group_locale[g]] / len(
                self.locale_groups[self.group_locale[g]]
            )
            volume += share * np.roll(self.hourly, -int(off))  # UTC hour h is local h + off
        return self.s.responses.peak_load_log * volume / volume.max()

    def _effect_tables(self) -> dict[str, list[_EffectTable]]:
        out: dict[str, list[_EffectTable]] = {}
        rollout = self.s.rollout
        for e in rollout.effects if rollout else ():
            seg = e.segment

            def mask(values: tuple[str, ...], names: tuple[str, ...]) -> np.ndarray:
                return np.array([not values or n in values for n in names])

            size = e.size if e.scale == "log_odds" else math.log(e.size)
            out.setdefault(e.metric, []).append(
                _EffectTable(
                    size,
                    mask(seg.locale, self.locales),
                    mask(seg.intent, self.intents),
                    mask(seg.cohort, COHORTS),
                    mask(seg.platform, self.platforms),
                )
            )
        return out

    def effect(self, metric: str, c: _Context) -> np.ndarray:
        """The candidate's effect on ``metric`` for each row (0 where the baseline serves)."""
        total = np.zeros(len(c.candidate))
        for t in self.effects.get(metric, ()):
            hit = t.locale[c.locale] & t.cohort[c.cohort] & t.platform[c.platform]
            if metric not in _SESSION_METRICS:
                hit &= t.intent[c.intent]
            total += t.size * hit
        return total * c.candidate

    # The outcome equations. Each returns a linear predictor (log-odds or log scale).

    def refusal_logit(self, c: _Context) -> np.ndarray:
        """Log-odds that a response is a refusal."""
        r = self.s.responses
        return _logit(r.refusal_rate) + self.intent_refusal[c.intent] + self.effect("refusal", c)

    def retry_logit(self, c: _Context, refused: np.ndarray) -> np.ndarray:
        """Log-odds that a response is retried."""
        r = self.s.retries
        return (
            _logit(r.retry_rate)
            + self.intent_retry[c.intent]
            + r.thumbs_down_coupling * c.u_down
            + r.refused_log_odds * refused
            + self.effect("retry", c)
        )

    def rating_logit(self, c: _Context, refused: np.ndarray) -> np.ndarray:
        """Log-odds that a response is rated at all."""
        r, season = self.s.ratings, self.s.seasonality
        return (
            _logit(r.rating_rate)
            + c.u_rate
            + self.cohort_rating[c.cohort]
            + self.platform_rating[c.platform]
            + self.locale_rating[c.locale]
            + r.refused_rating_log_odds * refused
            + season.weekend_rating_log_odds * c.weekend
            + c.extra_rating
            + self.effect("rating", c)
        )

    def down_logit(
        self, c: _Context, refused: np.ndarray, truncated: np.ndarray, failed: np.ndarray
    ) -> np.ndarray:
        """Log-odds that a rating is a thumbs-down."""
        r, season = self.s.ratings, self.s.seasonality
        return (
            _logit(r.thumbs_down_share)
            + c.u_down
            + self.locale_down[c.locale]
            + self.intent_down[c.intent]
            + self.cohort_down[c.cohort]
            + r.refused_thumbs_down_log_odds * refused
            + r.truncated_thumbs_down_log_odds * truncated
            + r.error_thumbs_down_log_odds * failed
            + season.night_thumbs_down_log_odds * c.night
            + season.weekend_thumbs_down_log_odds * c.weekend
            + c.extra_down
            + self.effect("thumbs_down", c)
        )

    def shape(
        self,
        c: _Context,
        refused: np.ndarray,
        z_tokens: np.ndarray,
        u_finish: np.ndarray,
        max_tokens: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Completion tokens and finish-reason code of each response.

        ``z_tokens`` is standard normal, ``u_finish`` uniform, ``max_tokens`` 0 when absent:
        passing the same draws for both arms gives common random numbers to the ground truth.
        """
        r = self.s.responses
        normal = np.exp(
            self.intent_completion[c.intent]
            + self.effect("completion_tokens", c)
            + r.tokens_sigma * z_tokens
        )
        refusal = np.exp(math.log(r.refusal_tokens_median) + 0.4 * z_tokens)
        tokens = np.where(refused, refusal, normal)
        finish = np.full(len(tokens), _STOP, dtype=np.int8)
        capped = (max_tokens > 0) & (tokens > max_tokens)
        tokens = np.where(capped, max_tokens, tokens)
        finish[capped] = _LENGTH
        error = u_finish < r.error_share
        cancelled = ~error & (u_finish < r.error_share + r.cancelled_share)
        # u_finish is reused, rescaled, to pick the partial length: no extra draw per arm.
        partial = np.clip(u_finish / max(r.error_share + r.cancelled_share, 1e-12), 0.05, 1.0)
        tokens = np.where(error | cancelled, tokens * partial, tokens)
        finish[error] = _ERROR
        finish[cancelled] = _CANCELLED
        tools = ~(error | cancelled | capped) & (1.0 - u_finish < self.intent_tools[c.intent])
        finish[tools] = _TOOLS
        finish[refused] = np.where(
            u_finish[refused] < r.content_filter_share, _FILTER, _REFUSAL
        ).astype(np.int8)
        return np.maximum(np.floor(tokens), 1.0), finish

    def ttft_log(self, c: _Context) -> np.ndarray:
        """Log of the median time to first token, in ms."""
        return (
            math.log(self.s.responses.ttft_ms_median)
            + self.load[c.utc_hour]
            + self.effect("ttft_ms", c)
        )

    def mpt_log(self, c: _Context) -> np.ndarray:
        """Log of the median decode time per token, in ms."""
        r = self.s.responses
        return (
            math.log(r.ms_per_token_median) + self.load[c.utc_hour] + self.effect("ms_per_token", c)
        )

    def turns_multiplier(self, c: _Context) -> np.ndarray:
        """Multiplier on a session's follow-up prompts."""
        return np.exp(self.effect("session_turns", c))

    def task_logit(self, c: _Context, any_refused: np.ndarray) -> np.ndarray:
        """Log-odds that a session's task is completed."""
        se = self.s.sessions
        return (
            _logit(se.task_completed_rate)
            + se.task_refusal_log_odds * any_refused
            + se.task_thumbs_down_coupling * c.u_down
            + self.effect("task_completed", c)
        )


# --------------------------------------------------------------------------------------------
# Ids, hashing, noise
# --------------------------------------------------------------------------------------------

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_U64 = np.uint64


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64, so distinct counters give distinct ids."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _key(seed: int, label: str) -> tuple[int, int]:
    digest = hashlib.blake2b(f"{seed}:{label}".encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


def _uuid_like(keys: tuple[int, int], start: int, n: int) -> list[str]:
    """``n`` UUID-shaped ids (version nibble 8, RFC 9562's custom layout) for counters
    ``start..start+n``; the low 64 bits are a bijection of the counter, so they never repeat."""
    counters = np.arange(start, start + n, dtype=np.uint64)
    lo = _mix64(counters + _U64(keys[0]))
    hi = _mix64(lo ^ _U64(keys[1]))
    hi = (hi & ~_U64(0xF000)) | _U64(0x8000)
    raw = np.empty((n, 16), dtype=np.uint8)
    raw[:, :8] = hi.astype(">u8").view(np.uint8).reshape(n, 8)
    raw[:, 8:] = lo.astype(">u8").view(np.uint8).reshape(n, 8)
    nibbles = np.empty((n, 32), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 15
    chars = _HEX[nibbles]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for dst, src in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):
        width = 12 if dst == 24 else (8 if dst == 0 else 4)
        out[:, dst : dst + width] = chars[:, src : src + width]
    return out.view("S36").ravel().astype("U36").tolist()


def _bucket(salt: str, user_id: str) -> float:
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _daily_noise(s: Scenario, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-day volume multipliers (mean 1) and thumbs-down log-odds shocks, from their own
    stream so that :func:`ground_truth` can report them without simulating."""
    rng = np.random.default_rng([seed, 0xD1])
    sd_v, sd_d = s.seasonality.daily_volume_noise_sd, s.seasonality.daily_thumbs_down_noise_sd
    volume = np.exp(sd_v * rng.standard_normal(s.days) - sd_v**2 / 2)
    down = sd_d * rng.standard_normal(s.days)
    return volume, down


def _resolve_seed(s: Scenario, seed: int | None) -> int:
    return s.seed if seed is None else int(seed)


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


@dataclass
class _Users:
    """Column arrays of every user ever created (index = internal user number)."""

    signup_day: np.ndarray
    group: np.ndarray
    locale: np.ndarray
    offset_ms: np.ndarray
    platform: np.ndarray
    primary_intent: np.ndarray
    activity: np.ndarray
    u_rate: np.ndarray
    u_down: np.ndarray
    opt_out: np.ndarray
    adopt_ms: np.ndarray
    alive: np.ndarray
    influx: np.ndarray
    bucket: np.ndarray
    ids: list[str]

    _ARRAYS: ClassVar[tuple[str, ...]] = (
        "signup_day", "group", "locale", "offset_ms", "platform", "primary_intent", "activity",
        "u_rate", "u_down", "opt_out", "adopt_ms", "alive", "influx", "bucket",
    )  # fmt: skip

    def extend(self, other: _Users) -> None:
        """Append ``other``'s users."""
        for name in self._ARRAYS:
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))
        self.ids.extend(other.ids)


def _draw_users(
    m: _Compiled,
    rng: np.random.Generator,
    signup_day: np.ndarray,
    ids: list[str],
    *,
    shift: PopulationShift | None = None,
) -> _Users:
    """Draw users' attributes; ``shift`` marks an influx (its mix and its worse baseline)."""
    s, n = m.s, len(signup_day)
    p = s.population
    locale_w = (
        m.locale_w if shift is None or not shift.locales else _weights(shift.locales, m.locales)
    )
    platform_w = (
        m.platform_w
        if shift is None or not shift.platforms
        else _weights(shift.platforms, m.platforms)
    )
    locale = rng.choice(len(m.locales), size=n, p=locale_w)
    # Each locale's users spread evenly over that locale's UTC offsets.
    pick = rng.random(n)
    group = np.empty(n, dtype=np.int64)
    for i, members in enumerate(m.locale_groups):
        sel = locale == i
        group[sel] = members[np.minimum((pick[sel] * len(members)).astype(int), len(members) - 1)]
    platform = rng.choice(len(m.platforms), size=n, p=platform_w)
    primary = rng.choice(len(m.intents), size=n, p=m.intent_w)
    activity = rng.gamma(p.activity_shape, 1.0 / p.activity_shape, size=n)
    u_rate = p.rating_sd * rng.standard_normal(n)
    u_down = p.thumbs_down_sd * rng.standard_normal(n)
    opt_out = rng.random(n) < p.opt_out_share
    adopt_delay = rng.standard_exponential(n)
    influx = np.zeros(n, dtype=bool)
    if shift is not None:
        activity *= shift.activity_multiplier
        u_rate += shift.rating_log_odds
        u_down += shift.thumbs_down_log_odds
        influx[:] = True
    ui = s.ui_release
    if ui is None:
        adopt_ms = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    else:
        release_ms = _day_ms(ui.date)
        mean_days = np.array([ui.adoption_days.get(k, 0.0) for k in m.platforms])[platform]
        adopt_ms = release_ms + (adopt_delay * mean_days * _DAY_MS).astype(np.int64)
    salt = s.rollout.salt if s.rollout else ""
    return _Users(
        signup_day=signup_day.astype(np.int64),
        group=group,
        locale=locale,
        offset_ms=m.group_offset_ms[group],
        platform=platform,
        primary_intent=primary,
        activity=activity,
        u_rate=u_rate,
        u_down=u_down,
        opt_out=opt_out,
        adopt_ms=adopt_ms,
        alive=np.ones(n, dtype=bool),
        influx=influx,
        bucket=np.array([_bucket(salt, u) for u in ids]),
        ids=ids,
    )


def _initial_tenure(m: _Compiled, rng: np.random.Generator, n: int) -> np.ndarray:
    cohort = rng.choice(len(COHORTS), size=n, p=m.cohort_share / m.cohort_share.sum())
    lo = np.array([_COHORT_TENURE[c][0] for c in COHORTS])[cohort]
    hi = np.array([_COHORT_TENURE[c][1] for c in COHORTS])[cohort]
    return lo + (rng.random(n) * (hi - lo)).astype(np.int64)


def _epoch_day(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days


def _day_ms(day: dt.date) -> int:
    return _epoch_day(day) * _DAY_MS


def _weekday(epoch_day: np.ndarray) -> np.ndarray:
    """Monday = 0, like ``date.weekday()``; 1970-01-01 was a Thursday."""
    return (epoch_day + 3) % 7


# --------------------------------------------------------------------------------------------
# Synthetic text
# --------------------------------------------------------------------------------------------

_TOPICS = (
    "climate policy", "the French revolution", "vector databases", "sourdough baking",
    "quarterly revenue", "marathon training", "tax deductions", "photosynthesis",
    "remote onboarding", "solar panels", "interest rates", "the Meiji era",
)  # fmt: skip
_LANGS = ("Python", "TypeScript", "Rust", "Go", "SQL", "Java")
_TASKS = (
    "parse a CSV file", "retry a failed HTTP request", "deduplicate a list",
    "read environment variables", "paginate an API", "format a date", "stream a large file",
)  # fmt: skip
_PEOPLE = ("my landlord", "the hiring manager", "a client", "my team", "the school")
_PHRASES = (
    "where is the train station", "thank you for your help", "the meeting moved to Friday",
    "I would like a refund", "see you next week",
)  # fmt: skip
_TARGETS = ("German", "French", "Japanese", "Portuguese", "Spanish")
_PROMPTS: dict[str, tuple[str, ...]] = {
    "coding": (
        "How do I {task} in {lang}?",
        "Why does my {lang} code raise an error when I {task}?",
        "Write a {lang} function to {task}.",
        "Refactor this {lang} snippet so it can {task} faster.",
    ),
    "writing": (
        "Draft an email to {who} about {topic}.",
        "Make this paragraph about {topic} more concise.",
        "Write a short blog intro on {topic}.",
    ),
    "qa": (
        "What is {topic}?",
        "Explain {topic} in one paragraph.",
        "Is it true that {topic} matters?",
    ),
    "analysis": (
        "Summarise the trends in this table on {topic}.",
        "Compare {topic} with last year for our team.",
        "What drives the numbers in our {topic} report?",
    ),
    "chat": ("hi, how are you?", "tell me something fun about {topic}", "I'm bored, any ideas?"),
    "translation": (
        "Translate '{phrase}' into {target}.",
        "How do you say '{phrase}' in {target}?",
    ),
}
_GENERIC_PROMPTS = ("Help me with {topic}.", "Tell me about {topic}.")
_ANSWERS = (
    "Sure. Here is a short overview of {topic}, with the main points first.",
    "Here is one way to do it, step by step.",
    "Good question. In short: it depends on the context, but usually yes.",
    "Here is a draft you can adapt.",
    "The key idea is simple; the details follow below.",
)
_REFUSALS = ("I can't help with that request.", "Sorry, I can't assist with that.")
_GREETINGS = {"de-DE": "Hallo! ", "fr-FR": "Bonjour ! ", "ja-JP": "こんにちは。", "pt-BR": "Olá! "}
_FIRST = ("anna", "ben", "chloe", "diego", "emma", "farid", "hana", "ivan", "julia", "kenji")
_LAST = ("smith", "mueller", "dubois", "tanaka", "silva", "jones", "rossi", "kim")
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example")
_PHONES = ("+1 415-555-01{:02d}", "+44 20 7946 0{:03d}", "(212) 555-01{:02d}", "+49 30 5550{:03d}")
_DOWN_TAGS = ("inaccurate", "unhelpful", "too_long", "formatting", "other")
_UP_TAGS = ("helpful", "accurate", "well_written")
_COMMENTS_DOWN = (
    "Wrong answer.", "Too long, didn't read.", "It ignored my instructions.",
    "Refused a harmless request.", "Made up a function that doesn't exist.",
)  # fmt: skip
_COMMENTS_UP = ("Perfect, thanks!", "Very helpful.", "Exactly what I needed.")


def _pii(k: int) -> str:
    if k % 2:
        first, last = _FIRST[(k >> 1) % len(_FIRST)], _LAST[(k >> 5) % len(_LAST)]
        return f" You can reach me at {first}.{last}{k % 97}@{_DOMAINS[(k >> 9) % 4]}."
    return " Call me on " + _PHONES[(k >> 1) % 4].format(k % 100) + "."


def _slots(k: int) -> dict[str, str]:
    return {
        "topic": _TOPICS[k % len(_TOPICS)],
        "lang": _LANGS[(k >> 4) % len(_LANGS)],
        "task": _TASKS[(k >> 7) % len(_TASKS)],
        "who": _PEOPLE[(k >> 10) % len(_PEOPLE)],
        "phrase": _PHRASES[(k >> 13) % len(_PHRASES)],
        "target": _TARGETS[(k >> 16) % len(_TARGETS)],
    }


def _prompt_text(intent: str, locale: str, k: int, pii: bool) -> str:
    templates = _PROMPTS.get(intent, _GENERIC_PROMPTS)
    text = _GREETINGS.get(locale, "") + templates[(k >> 19) % len(templates)].format(**_slots(k))
    return text + _pii(k >> 3) if pii else text


def _answer_text(refused: bool, k: int) -> str:
    if refused:
        return _REFUSALS[k % len(_REFUSALS)]
    return _ANSWERS[(k >> 2) % len(_ANSWERS)].format(**_slots(k))


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """One UTC day of encoded events in time order."""

    day: dt.date
    values: list[bytes]
    kinds: np.ndarray  # index into EVENT_KINDS
    users: np.ndarray  # internal user numbers (for Kafka keys)
    ts_ms: np.ndarray


class _Simulator:
    """Stateful day-by-day generator; :func:`simulate` and the writers drive it."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.s = scenario
        self.seed = seed
        self.m = _Compiled(scenario)
        self.vol_noise, self.down_noise = _daily_noise(scenario, seed)
        self._keys = {
            k: _key(seed, k) for k in ("user", "session", "conversation", "request", "event")
        }
        self._next = dict.fromkeys(self._keys, 0)
        self.enc = msgspec.json.Encoder()
        m = self.m
        self.locale_names = np.array(m.locales, dtype=object)
        self.platform_names = np.array(m.platforms, dtype=object)
        self.intent_names = np.array(m.intents, dtype=object)
        self.cohort_names = np.array(COHORTS, dtype=object)
        self.variant_names = np.array(_VARIANTS, dtype=object)
        self.finish_names = np.array(_FINISH, dtype=object)
        self.kind_names = np.array(m.retry_kinds, dtype=object)
        self.reason_names = np.array(m.end_reasons, dtype=object)
        rollout = scenario.rollout
        self.model_names = np.array(
            [rollout.baseline, rollout.candidate] if rollout else ["assistant-baseline"] * 2,
            dtype=object,
        )
        plat = scenario.population.platforms
        ui = scenario.ui_release
        apps: list[str] = []
        for k in m.platforms:
            old = plat[k].app_version
            new = ui.app_versions.get(k, f"{old}+ui") if ui else old
            apps += [old, new]
        self.app_names = np.array(apps, dtype=object)
        rng = np.random.default_rng([seed, 0x05E7])
        n0 = scenario.population.initial_users
        self.users = _draw_users(m, rng, -_initial_tenure(m, rng, n0), self._ids("user", n0))
        self.user_keys: list[bytes] = [u.encode() for u in self.users.ids]
        self.carry: _Chunk | None = None

    def _ids(self, kind: str, n: int) -> list[str]:
        start = self._next[kind]
        self._next[kind] = start + n
        return _uuid_like(self._keys[kind], start, n) if n else []

    def chunks(self) -> Iterator[_Chunk]:
        """One chunk per UTC day, then one with the events that ran past the last midnight."""
        for d in range(self.s.days):
            yield self._day(d)
        if self.carry is not None and len(self.carry.values):
            yield self.carry

    # -- one day -----------------------------------------------------------------------------

    def _arrivals(self, d: int, day: dt.date, rng: np.random.Generator) -> None:
        m, s = self.m, self.s
        n_new = int(rng.poisson(s.population.new_users_per_day * m.weekly[day.weekday()]))
        batches: list[tuple[int, PopulationShift | None]] = [(n_new, None)]
        shift = s.population_shift
        if shift is not None and 0 <= (day - shift.date).days < shift.days:
            i = (day - shift.date).days
            per_day = shift.extra_users // shift.days + (i < shift.extra_users % shift.days)
            batches.append((per_day, shift))
        for n, sh in batches:
            if n:
                new = _draw_users(m, rng, np.full(n, d), self._ids("user", n), shift=sh)
                self.users.extend(new)
                self.user_keys.extend(u.encode() for u in new.ids)

    def _hour_weights(self, day: dt.date, day_ms: int) -> np.ndarray:
        """Expected sessions per user per UTC hour, by (locale, offset) group (mean day = 1)."""
        m = self.m
        utc_ms = day_ms + np.arange(24, dtype=np.int64) * _HOUR_MS
        local = utc_ms[None, :] + m.group_offset_ms[:, None]
        local_day = local // _DAY_MS
        w = m.hourly[(local // _HOUR_MS) % 24] * m.weekly[_weekday(local_day)] / 24.0
        for h in self.s.holidays:
            hit = local_day == _epoch_day(h.date)
            if h.locales:
                hit &= np.isin(m.group_locale, [m.locales.index(x) for x in h.locales])[:, None]
            w = np.where(hit, w * h.volume_multiplier, w)
        return w

    def _day(self, d: int) -> _Chunk:
        s, m = self.s, self.m
        day = s.start + dt.timedelta(days=d)
        day_ms = _day_ms(day)
        rng = np.random.default_rng([self.seed, d, 0xDA7])
        self._arrivals(d, day, rng)
        u = self.users
        live = np.flatnonzero(u.alive)
        tenure = d - u.signup_day[live]
        # Sessions per user, then each session's UTC hour from its group's local clock.
        weights = self._hour_weights(day, day_ms)
        mass = weights.sum(axis=1)
        lam = (
            s.population.sessions_per_day
            * u.activity[live]
            * m.cohort_activity[cohort_of(tenure)]
            * mass[u.group[live]]
            * self.vol_noise[d]
        )
        n_sess = rng.poisson(lam) + (tenure == 0)
        su = np.repeat(live, n_sess)  # session -> user
        n_s = len(su)
        cum = np.cumsum(weights, axis=1) / mass[:, None]
        hour = np.minimum((cum[u.group[su]] < rng.random(n_s)[:, None]).sum(axis=1), 23)
        start_ms = day_ms + hour * _HOUR_MS + (rng.random(n_s) * _HOUR_MS).astype(np.int64)
        order = np.argsort(start_ms, kind="stable")
        su, hour, start_ms = su[order], hour[order], start_ms[order]
        return self._sessions(d, day, day_ms, rng, su, hour, start_ms)

    def _session_context(
        self, d: int, day: dt.date, su: np.ndarray, hour: np.ndarray, start_ms: np.ndarray
    ) -> tuple[_Context, np.ndarray, np.ndarray, np.ndarray]:
        """Session-level covariates, plus tenure, variant and the new-app flag."""
        s, m, u = self.s, self.m, self.users
        n = len(su)
        tenure = d - u.signup_day[su]
        local = start_ms + u.offset_ms[su]
        local_day = local // _DAY_MS
        extra_rating = np.zeros(n)
        extra_down = np.full(n, self.down_noise[d])
        for h in s.holidays:
            hit = local_day == _epoch_day(h.date)
            if h.locales:
                hit &= np.isin(u.locale[su], [m.locales.index(x) for x in h.locales])
            extra_rating += h.rating_log_odds * hit
            extra_down += h.thumbs_down_log_odds * hit
        new_app = start_ms >= u.adopt_ms[su]
        if s.ui_release is not None:
            extra_rating += s.ui_release.rating_log_odds * new_app
            extra_down += s.ui_release.thumbs_down_log_odds * new_app
        share = _treatment_share(s.rollout, day)
        if share >= 1.0:
            cand, variant = np.ones(n), np.zeros(n, dtype=np.int64)
        elif share > 0.0:
            treated = u.bucket[su] < share
            cand, variant = treated.astype(float), np.where(treated, 2, 1)
        else:
            cand, variant = np.zeros(n), np.zeros(n, dtype=np.int64)
        ctx = _Context(
            locale=u.locale[su],
            intent=np.zeros(n, dtype=np.int64),  # per conversation, filled in per turn
            cohort=cohort_of(tenure),
            platform=u.platform[su],
            u_rate=u.u_rate[su],
            u_down=u.u_down[su],
            night=m.night[(local // _HOUR_MS) % 24],
            weekend=_weekday(local_day) >= 5,
            utc_hour=hour,
            extra_rating=extra_rating,
            extra_down=extra_down,
            candidate=cand,
        )
        return ctx, tenure, variant, new_app

    def _sessions(
        self,
        d: int,
        day: dt.date,
        day_ms: int,
        rng: np.random.Generator,
        su: np.ndarray,
        hour: np.ndarray,
        start_ms: np.ndarray,
    ) -> _Chunk:
        s, m, u = self.s, self.m, self.users
        se = s.sessions
        n_s = len(su)
        sctx, tenure, variant, new_app = self._session_context(d, day, su, hour, start_ms)

        # Base turns: 1 + gamma-Poisson (negative binomial) follow-ups; some sessions empty.
        extra_mean = (se.mean_turns - 1.0) * m.turns_multiplier(sctx)
        lam = rng.gamma(se.turns_dispersion, extra_mean / se.turns_dispersion)
        base_turns = np.minimum(1 + rng.poisson(lam), se.max_turns)
        base_turns[rng.random(n_s) < se.empty_share] = 0
        b_sess = np.repeat(np.arange(n_s), base_turns)
        n_b = len(b_sess)
        first_in_session = np.ones(n_b, dtype=bool)
        first_in_session[1:] = b_sess[1:] != b_sess[:-1]
        new_conv = first_in_session | (rng.random(n_b) < se.new_conversation_prob)
        b_conv = np.cumsum(new_conv) - 1
        n_c = int(new_conv.sum())
        conv_user = su[b_sess[new_conv]]
        sticky = rng.random(n_c) < s.population.intent_stickiness
        conv_intent = np.where(
            sticky, u.primary_intent[conv_user], rng.choice(len(m.intents), size=n_c, p=m.intent_w)
        )
        bctx = _take(sctx, b_sess)
        bctx.intent = conv_intent[b_conv]

        # Responses: each base turn answered, possibly retried (each retry -> one more answer).
        q = _sigmoid(m.refusal_logit(bctx))
        rr = (
            _sigmoid(m.retry_logit(bctx, np.zeros(n_b))),
            _sigmoid(m.retry_logit(bctx, np.ones(n_b))),
        )
        parts: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []
        active = np.arange(n_b)
        for rnd in range(MAX_RETRY_CHAIN + 1):
            refused = rng.random(len(active)) < q[active]
            p_retry = np.where(refused, rr[1][active], rr[0][active])
            retried = (rng.random(len(active)) < p_retry) & (rnd < MAX_RETRY_CHAIN)
            parts.append((active, rnd, refused, retried))
            active = active[retried]
            if not len(active):
                break
        r_base = np.concatenate([p[0] for p in parts])
        r_round = np.concatenate([np.full(len(p[0]), p[1]) for p in parts])
        order = np.lexsort((r_round, r_base))
        r_base = r_base[order]
        refused = np.concatenate([p[2] for p in parts])[order]
        retried = np.concatenate([p[3] for p in parts])[order]
        n_r = len(r_base)
        r_sess = b_sess[r_base]
        r_conv = b_conv[r_base]
        rctx = _take(bctx, r_base)

        # Shape, latency, ratings.
        rs = s.responses
        max_tok = np.where(
            rng.random(n_r) < rs.max_tokens_missing_share,
            0,
            np.array(rs.max_tokens)[rng.integers(0, len(rs.max_tokens), n_r)],
        )
        tokens, finish = m.shape(rctx, refused, rng.standard_normal(n_r), rng.random(n_r), max_tok)
        ttft = np.exp(m.ttft_log(rctx) + rs.ttft_sigma * rng.standard_normal(n_r))
        mpt = np.exp(m.mpt_log(rctx) + rs.ms_per_token_sigma * rng.standard_normal(n_r))
        latency = np.minimum(ttft + tokens * mpt, _MAX_LATENCY_MS)
        ttft = np.round(np.minimum(ttft, latency), 1)
        latency = np.round(latency, 1)
        truncated = finish == _LENGTH
        failed = finish == _ERROR
        rated = rng.random(n_r) < _sigmoid(m.rating_logit(rctx, refused))
        down = rng.random(n_r) < _sigmoid(m.down_logit(rctx, refused, truncated, failed))

        # Turn index within the conversation (responses are in session order).
        conv_start = np.ones(n_r, dtype=bool)
        conv_start[1:] = r_conv[1:] != r_conv[:-1]
        starts = np.flatnonzero(conv_start)
        turn_index = np.arange(n_r) - np.repeat(starts, np.diff(np.append(starts, n_r)))

        # Timing: gap before each request, then latency; cumulative within each session.
        first = np.ones(n_r, dtype=bool)
        first[1:] = r_sess[1:] != r_sess[:-1]
        after_retry = np.zeros(n_r, dtype=bool)
        after_retry[1:] = retried[:-1]
        after_retry &= ~first
        retry_delay = (
            np.exp(
                math.log(s.retries.delay_seconds_median * 1000) + 0.7 * rng.standard_normal(n_r)
            ).astype(np.int64)
            + 1000
        )
        think = np.exp(m.intent_think[rctx.intent] + se.think_sigma * rng.standard_normal(n_r))
        opening = np.exp(
            math.log(se.first_prompt_seconds_median * 1000) + 0.8 * rng.standard_normal(n_r)
        )
        gap = np.where(first, opening, think).astype(np.int64) + 500
        gap[after_retry] = np.roll(retry_delay, 1)[after_retry] + 300
        step = gap + np.ceil(latency).astype(np.int64)
        cs = np.cumsum(step)
        first_idx = np.flatnonzero(first)
        before = np.repeat(cs[first_idx] - step[first_idx], np.diff(np.append(first_idx, n_r)))
        resp_ms = start_ms[r_sess] + cs - before

        # Session end.
        turns = np.bincount(r_sess, minlength=n_s)
        last_ms = start_ms.copy()
        has = turns > 0
        last_idx = np.cumsum(turns)[has] - 1
        last_ms[has] = resp_ms[last_idx]
        reason = rng.choice(len(m.end_reasons), size=n_s, p=m.end_reason_w)
        tail = np.exp(math.log(se.end_seconds_median * 1000) + rng.standard_normal(n_s)).astype(
            np.int64
        )
        tail = np.where(reason == m.idle_reason, int(se.idle_timeout_seconds * 1000), tail + 200)
        end_ms = np.where(has, last_ms + tail, start_ms + 1000 + tail // 4)
        any_refused = np.bincount(r_sess, weights=refused, minlength=n_s) > 0
        task = rng.random(n_s) < _sigmoid(m.task_logit(sctx, any_refused))
        task_known = has & (rng.random(n_s) < se.task_completed_known_share)

        # Feedback and retries.
        fb = np.flatnonzero(rated)
        fb_ms = (
            resp_ms[fb]
            + 1000
            + np.exp(
                math.log(s.ratings.delay_seconds_median * 1000)
                + s.ratings.delay_sigma * rng.standard_normal(len(fb))
            ).astype(np.int64)
        )
        rt = np.flatnonzero(retried)
        rt_ms = resp_ms[rt] + retry_delay[rt]
        rt_kind = rng.choice(len(m.retry_kinds), size=len(rt), p=m.retry_kind_w)

        # Churn: bad experiences today raise the chance a user leaves for good.
        bad = np.bincount(su[r_sess], weights=(rated & down) | refused, minlength=len(u.alive))
        live = np.flatnonzero(u.alive)
        hazard = _sigmoid(
            m.cohort_churn[cohort_of(d - u.signup_day[live])]
            + s.churn.bad_experience_log_odds * np.minimum(bad[live], s.churn.bad_experience_cap)
        )
        u.alive[live[rng.random(len(live)) < hazard]] = False

        # Ids, then events.
        session_ids = np.array(self._ids("session", n_s), dtype=object)
        conv_ids = np.array(self._ids("conversation", n_c), dtype=object)
        request_ids = np.array(self._ids("request", n_r), dtype=object)
        r_user = su[r_sess]
        user_ids = np.array(self.users.ids, dtype=object)
        text_draw = rng.integers(0, 1 << 40, size=n_r)
        with_text = (rng.random(n_r) < rs.text_share) & ~u.opt_out[r_user]
        pii = rng.random(n_r) < rs.pii_share
        fb_draw = rng.integers(0, 1 << 40, size=len(fb))
        fb_comment = rng.random(len(fb)) < s.ratings.comment_share
        fb_pii = rng.random(len(fb)) < rs.pii_share
        temp = np.where(
            rng.random(n_r) < rs.temperature_missing_share,
            np.nan,
            np.array(rs.temperatures)[rng.integers(0, len(rs.temperatures), n_r)],
        )
        no_ttft = rng.random(n_r) < rs.ttft_missing_share
        prompt_tokens = (
            np.exp(m.intent_prompt[rctx.intent] + rs.prompt_tokens_sigma * rng.standard_normal(n_r))
            + turn_index * rs.context_tokens_per_turn
        ).astype(np.int64) + 1

        enc = self._encode
        sess_cols = (session_ids.tolist(), user_ids[su].tolist())
        parts = [
            (
                "session_start",
                start_ms,
                su,
                enc(
                    "session_start",
                    start_ms,
                    (
                        *sess_cols,
                        self.platform_names[sctx.platform].tolist(),
                        self.locale_names[sctx.locale].tolist(),
                    ),
                ),
            ),
            (
                "response",
                resp_ms,
                r_user,
                self._responses(
                    resp_ms,
                    r_user,
                    r_sess,
                    r_conv,
                    session_ids,
                    conv_ids,
                    request_ids,
                    user_ids,
                    rctx,
                    variant,
                    tenure,
                    new_app,
                    turn_index,
                    prompt_tokens,
                    tokens,
                    latency,
                    ttft,
                    no_ttft,
                    finish,
                    refused,
                    temp,
                    max_tok,
                    with_text,
                    pii,
                    text_draw,
                ),
            ),
            (
                "retry",
                rt_ms,
                r_user[rt],
                enc(
                    "retry",
                    rt_ms,
                    (
                        request_ids[rt].tolist(),
                        request_ids[rt + 1].tolist(),  # the retry's answer is the next response
                        self.kind_names[rt_kind].tolist(),
                        user_ids[r_user[rt]].tolist(),
                    ),
                ),
            ),
            (
                "feedback",
                fb_ms,
                r_user[fb],
                self._feedback(
                    fb,
                    fb_ms,
                    request_ids,
                    user_ids[r_user[fb]],
                    down,
                    refused,
                    finish,
                    fb_draw,
                    fb_comment,
                    fb_pii,
                ),
            ),
            (
                "session_end",
                end_ms,
                su,
                enc(
                    "session_end",
                    end_ms,
                    (
                        *sess_cols,
                        turns.tolist(),
                        np.round((end_ms - start_ms) / 1000.0, 3).tolist(),
                        self.reason_names[reason].tolist(),
                        [bool(t) if k else None for t, k in zip(task, task_known, strict=True)],
                    ),
                ),
            ),
        ]
        return self._emit(day, day_ms + _DAY_MS, parts)

    def _encode(self, kind: str, ts_ms: np.ndarray, columns: tuple[list[Any], ...]) -> list[bytes]:
        """Encode events of one kind from column lists, in :data:`_FIELDS` order."""
        struct = _STRUCTS[kind]
        ids = self._ids("event", len(ts_ms))
        encode = self.enc.encode
        rows = zip(ids, _ts(ts_ms), [SCHEMA_VERSION] * len(ids), *columns, strict=True)
        return [encode(struct(*row)) for row in rows]

    def _responses(
        self,
        resp_ms: np.ndarray,
        r_user: np.ndarray,
        r_sess: np.ndarray,
        r_conv: np.ndarray,
        session_ids: np.ndarray,
        conv_ids: np.ndarray,
        request_ids: np.ndarray,
        user_ids: np.ndarray,
        c: _Context,
        variant: np.ndarray,
        tenure: np.ndarray,
        new_app: np.ndarray,
        turn_index: np.ndarray,
        prompt_tokens: np.ndarray,
        tokens: np.ndarray,
        latency: np.ndarray,
        ttft: np.ndarray,
        no_ttft: np.ndarray,
        finish: np.ndarray,
        refused: np.ndarray,
        temp: np.ndarray,
        max_tok: np.ndarray,
        with_text: np.ndarray,
        pii: np.ndarray,
        text_draw: np.ndarray,
    ) -> list[bytes]:
        n = len(resp_ms)
        locales = self.locale_names[c.locale].tolist()
        intents = self.intent_names[c.intent].tolist()
        prompts: list[str | None] = [None] * n
        answers: list[str | None] = [None] * n
        for i in np.flatnonzero(with_text).tolist():
            k = int(text_draw[i])
            prompts[i] = _prompt_text(intents[i], locales[i], k, bool(pii[i]))
            answers[i] = _answer_text(bool(refused[i]), k)
        return self._encode(
            "response",
            resp_ms,
            (
                request_ids.tolist(),
                conv_ids[r_conv].tolist(),
                session_ids[r_sess].tolist(),
                user_ids[r_user].tolist(),
                self.model_names[c.candidate.astype(np.int64)].tolist(),
                self.variant_names[variant[r_sess]].tolist(),
                turn_index.tolist(),
                prompts,
                answers,
                prompt_tokens.tolist(),
                tokens.astype(np.int64).tolist(),
                latency.tolist(),
                _nullable(ttft, no_ttft),
                self.finish_names[finish].tolist(),
                refused.tolist(),
                locales,
                self.platform_names[c.platform].tolist(),
                self.app_names[c.platform * 2 + new_app[r_sess]].tolist(),
                tenure[r_sess].tolist(),
                self.cohort_names[c.cohort].tolist(),
                intents,
                _nullable(temp, np.isnan(temp)),
                _nullable(max_tok, max_tok == 0),
                self.users.opt_out[r_user].tolist(),
            ),
        )

    def _feedback(
        self,
        fb: np.ndarray,
        fb_ms: np.ndarray,
        request_ids: np.ndarray,
        users: np.ndarray,
        down: np.ndarray,
        refused: np.ndarray,
        finish: np.ndarray,
        draw: np.ndarray,
        comment: np.ndarray,
        pii: np.ndarray,
    ) -> list[bytes]:
        tags: list[list[str]] = []
        notes: list[str | None] = []
        for is_down, ref, fin, k, has_comment, has_pii in zip(
            down[fb].tolist(),
            refused[fb].tolist(),
            finish[fb].tolist(),
            draw.tolist(),
            comment.tolist(),
            pii.tolist(),
            strict=True,
        ):
            if is_down:
                if ref:
                    tags.append(["refused"])
                elif fin == _LENGTH:
                    tags.append(["incomplete"])
                elif fin == _ERROR:
                    tags.append(["error"])
                else:
                    tags.append([] if k % 5 < 2 else [_DOWN_TAGS[k % len(_DOWN_TAGS)]])
                text = _COMMENTS_DOWN[k % len(_COMMENTS_DOWN)]
            else:
                tags.append([] if k % 3 else [_UP_TAGS[k % len(_UP_TAGS)]])
                text = _COMMENTS_UP[k % len(_COMMENTS_UP)]
            notes.append((text + _pii(k >> 4) if has_pii else text) if has_comment else None)
        return self._encode(
            "feedback",
            fb_ms,
            (
                request_ids[fb].tolist(),
                users.tolist(),
                np.where(down[fb], -1, 1).tolist(),
                tags,
                notes,
            ),
        )

    def _emit(
        self,
        day: dt.date,
        next_day_ms: int,
        parts: list[tuple[str, np.ndarray, np.ndarray, list[bytes]]],
    ) -> _Chunk:
        """Merge today's events with yesterday's carry, sort by time, hold back tomorrow's."""
        values: list[bytes] = []
        kinds, users, ts = [], [], []
        if self.carry is not None:
            values.extend(self.carry.values)
            kinds.append(self.carry.kinds)
            users.append(self.carry.users)
            ts.append(self.carry.ts_ms)
        for kind, t, who, vals in parts:
            values.extend(vals)
            kinds.append(np.full(len(vals), _KIND_CODE[kind], dtype=np.int8))
            users.append(np.asarray(who, dtype=np.int64))
            ts.append(np.asarray(t, dtype=np.int64))
        all_ts = np.concatenate(ts)
        order = np.argsort(all_ts, kind="stable")
        all_ts, all_kinds, all_users = (
            all_ts[order],
            np.concatenate(kinds)[order],
            np.concatenate(users)[order],
        )
        ordered = _gather(values, order)
        cut = int(np.searchsorted(all_ts, next_day_ms, side="left"))
        next_day = day + dt.timedelta(days=1)
        self.carry = _Chunk(next_day, ordered[cut:], all_kinds[cut:], all_users[cut:], all_ts[cut:])
        return _Chunk(day, ordered[:cut], all_kinds[:cut], all_users[:cut], all_ts[:cut])


def _nullable(values: np.ndarray, missing: np.ndarray) -> list[Any]:
    """``values`` as a list with None where ``missing``."""
    out = values.tolist()
    for i in np.flatnonzero(missing).tolist():
        out[i] = None
    return out


def _take(c: _Context, idx: np.ndarray) -> _Context:
    return _Context(**{k: v[idx] for k, v in vars(c).items()})


def _gather(values: list[bytes], order: np.ndarray) -> list[bytes]:
    if len(order) == 0:
        return []
    if len(order) == 1:
        return [values[int(order[0])]]
    return list(operator.itemgetter(*order.tolist())(values))


def _ts(ms: np.ndarray) -> list[str]:
    """RFC 3339 UTC timestamps with milliseconds and ``Z``."""
    return np.datetime_as_string(
        np.asarray(ms, dtype="datetime64[ms]"), unit="ms", timezone="UTC"
    ).tolist()


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


def _reference(m: _Compiled, seed: int, n: int) -> _Context:
    """Response-weighted reference draws from the initial population, at average seasonality,
    with no holiday, UI release, influx or daily noise: the population the expected differences
    are computed on."""
    rng = np.random.default_rng([seed, 0x7E5])
    n_users = max(n // 4, 100)
    tenure = _initial_tenure(m, rng, n_users)
    users = _draw_users(m, rng, -tenure, [""] * n_users)
    weight = users.activity * m.cohort_activity[cohort_of(tenure)]
    pick = rng.choice(n_users, size=n, p=weight / weight.sum())
    sticky = rng.random(n) < m.s.population.intent_stickiness
    intent = np.where(
        sticky, users.primary_intent[pick], rng.choice(len(m.intents), size=n, p=m.intent_w)
    )
    local_hour = rng.choice(24, size=n, p=m.hourly / m.hourly.sum())
    weekday = rng.choice(7, size=n, p=m.weekly / m.weekly.sum())
    utc_hour = (local_hour - users.offset_ms[pick] // _HOUR_MS) % 24
    return _Context(
        locale=users.locale[pick],
        intent=intent,
        cohort=cohort_of(tenure[pick]),
        platform=users.platform[pick],
        u_rate=users.u_rate[pick],
        u_down=users.u_down[pick],
        night=m.night[local_hour],
        weekend=weekday >= 5,
        utc_hour=utc_hour,
        extra_rating=np.zeros(n),
        extra_down=np.zeros(n),
        candidate=np.zeros(n),
    )


def _expectations(m: _Compiled, c: _Context, seed: int) -> dict[str, np.ndarray]:
    """Per-draw expected outcomes (refusal integrated out; tokens by common random numbers)."""
    n = len(c.locale)
    rs = m.s.responses
    rng = np.random.default_rng([seed, 0x7E6])
    z, uf = rng.standard_normal(n), rng.random(n)
    max_tok = np.where(
        rng.random(n) < rs.max_tokens_missing_share,
        0,
        np.array(rs.max_tokens)[rng.integers(0, len(rs.max_tokens), n)],
    )
    q = _sigmoid(m.refusal_logit(c))
    ttft = np.exp(m.ttft_log(c) + rs.ttft_sigma**2 / 2)
    mpt = np.exp(m.mpt_log(c) + rs.ms_per_token_sigma**2 / 2)
    out: dict[str, np.ndarray] = {"refused": q, "ttft_ms": ttft}
    rated = np.zeros(n)
    down = np.zeros(n)
    retry = np.zeros(n)
    tokens = np.zeros(n)
    for flag, weight in ((True, q), (False, 1.0 - q)):
        refused = np.full(n, flag)
        tok, finish = m.shape(c, refused, z, uf, max_tok)
        pr = _sigmoid(m.rating_logit(c, refused))
        pd = _sigmoid(m.down_logit(c, refused, finish == _LENGTH, finish == _ERROR))
        rated += weight * pr
        down += weight * pr * pd
        retry += weight * _sigmoid(m.retry_logit(c, refused))
        tokens += weight * tok
    out |= {"rated": rated, "down": down, "retry": retry, "completion_tokens": tokens}
    out["latency_ms"] = ttft + tokens * mpt
    se = m.s.sessions
    chain = sum(retry**k for k in range(MAX_RETRY_CHAIN + 1))
    out["session_turns"] = (
        (1 - se.empty_share) * (1 + (se.mean_turns - 1) * m.turns_multiplier(c)) * chain
    )
    return out


def _metrics(e: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, float]:
    def mean(x: np.ndarray) -> float:
        return float(x[mask].mean())

    return {
        "refusal_rate": mean(e["refused"]),
        "rating_rate": mean(e["rated"]),
        "thumbs_down_rate": float(e["down"][mask].sum() / e["rated"][mask].sum()),
        "retry_rate": mean(e["retry"]),
        "completion_tokens": mean(e["completion_tokens"]),
        "ttft_ms": mean(e["ttft_ms"]),
        "latency_ms": mean(e["latency_ms"]),
        "session_turns": mean(e["session_turns"]),
    }


def _segment_mask(
    m: _Compiled, c: _Context, seg: Mapping[str, list[str] | tuple[str, ...]]
) -> np.ndarray:
    mask = np.ones(len(c.locale), dtype=bool)
    names = {"locale": m.locales, "intent": m.intents, "cohort": COHORTS, "platform": m.platforms}
    for dim, values in seg.items():
        codes = [names[dim].index(v) for v in values]
        mask &= np.isin(getattr(c, dim), codes)
    return mask


def _compare(
    m: _Compiled,
    base: dict[str, np.ndarray],
    cand: dict[str, np.ndarray],
    c: _Context,
    seg: Mapping[str, Any],
) -> list[dict[str, Any]]:
    mask = _segment_mask(m, c, seg)
    if not mask.any():
        return []
    a, b = _metrics(base, mask), _metrics(cand, mask)
    rows = []
    for metric in a:
        if metric == "session_turns" and "intent" in seg:
            continue  # a session has no single intent
        rows.append(
            {
                "metric": metric,
                "segment": dict(seg),
                "baseline": a[metric],
                "candidate": b[metric],
                "difference": b[metric] - a[metric],
                "relative": b[metric] / a[metric] - 1 if a[metric] else None,
            }
        )
    return rows


def _rates(
    m: _Compiled, c: _Context, seed: int, share: float, mask: np.ndarray | None = None
) -> dict[str, float]:
    """Rating and thumbs-down rates when a ``share`` of responses is served by the candidate."""
    parts = []
    for arm, w in ((0.0, 1.0 - share), (1.0, share)):
        if w > 0:
            parts.append(
                (w, _expectations(m, replace(c, candidate=np.full(len(c.locale), arm)), seed))
            )
    sel = np.ones(len(c.locale), dtype=bool) if mask is None else mask
    rated = sum(w * e["rated"][sel].mean() for w, e in parts)
    down = sum(w * e["down"][sel].mean() for w, e in parts)
    return {"rating_rate": float(rated), "thumbs_down_rate": float(down / rated)}


def ground_truth(scenario: Scenario, *, seed: int | None = None) -> dict[str, Any]:
    """The manifest of everything planted in ``scenario`` (JSON-ready, deterministic).

    Keys:

    - ``seed``, ``scenario`` (the full scenario as JSON), ``calendar``;
    - ``rollout``: versions, stages (date, treatment share), full switch, and how assignment is
      computed (``treatment`` iff ``bucket < share`` with ``bucket = blake2b(salt:user_id)/2**64``,
      at 00:00 UTC of each date, by session start);
    - ``effects``: each planted effect with ``scale`` (``log_odds``: additive on the log-odds of
      the metric's probability; ``multiplier``: on the size), ``size`` as planted, ``odds_ratio``
      or ``multiplier``, the segment, the dates, and ``expected``: the expected value of the
      observable metric (``observable``) under baseline and candidate in that segment;
    - ``expected_differences``: candidate minus baseline for ``refusal_rate``, ``rating_rate``,
      ``thumbs_down_rate`` (thumbs-down / rated), ``retry_rate`` (retries / responses),
      ``completion_tokens``, ``ttft_ms``, ``latency_ms`` (means per response) and
      ``session_turns`` (responses per session), overall and per single segment value.

    The expected values are the model's expectations (outcome noise integrated out) over
    ``truth_samples`` response-weighted reference draws from the initial population at average
    seasonality, without holiday, UI release, influx or daily noise. They are *total* effects:
    e.g. a refusal effect also moves the thumbs-down rate, and an effect on one segment is added
    to the overall one. An A/B estimate on simulated data targets them up to population drift
    (churn, new users, the influx). ``session_turns`` treats retries as a geometric chain at the
    average retry probability, an approximation. ``task_completion_rate`` and retention have no
    expected value here (they depend on whole sessions and on churn): their planted sizes stand.

    ``population_shift``, ``ui_release``, ``holidays`` and ``seasonality`` give those parts'
    settings and, where cheap, their expected rates; ``seasonality.daily`` has the realised
    per-day volume multipliers and thumbs-down shocks for this seed.
    """
    seed = _resolve_seed(scenario, seed)
    s, m = scenario, _Compiled(scenario)
    ref = _reference(m, seed, s.truth_samples)
    base = _expectations(m, ref, seed)
    cand = _expectations(m, replace(ref, candidate=np.ones(len(ref.locale))), seed)
    rollout = s.rollout
    vol, down_noise = _daily_noise(s, seed)
    truth: dict[str, Any] = {
        "truth_version": TRUTH_VERSION,
        "generator": "ingest.simulate",
        "seed": seed,
        "scenario_name": s.name,
        "calendar": {"start": s.start.isoformat(), "end": s.end.isoformat(), "days": s.days},
        "scales": {
            "log_odds": "added to the log-odds of the metric's probability; odds_ratio = exp(size)",
            "multiplier": "multiplicative on the quantity; 1.25 = +25 %",
        },
    }
    if rollout is None:
        truth["rollout"] = None
        truth["effects"] = []
        truth["expected_differences"] = []
    else:
        first = rollout.first_exposure
        truth["rollout"] = {
            "baseline": rollout.baseline,
            "candidate": rollout.candidate,
            "salt": rollout.salt,
            "stages": [
                {"date": st.date.isoformat(), "treatment_share": st.treatment_share}
                for st in rollout.stages
            ],
            "full_switch": rollout.full_switch.isoformat() if rollout.full_switch else None,
            "assignment": (
                "per session, from the session's UTC start date: before the first stage everyone "
                "gets the baseline (variant 'default'); during a stage users with "
                "bucket < treatment_share get the candidate ('treatment'), others the baseline "
                "('control'); from full_switch everyone gets the candidate ('default'). "
                "bucket = int.from_bytes(blake2b(f'{salt}:{user_id}', digest_size=8)) / 2**64."
            ),
            "daily_treatment_share": {
                (s.start + dt.timedelta(days=d)).isoformat(): _treatment_share(
                    rollout, s.start + dt.timedelta(days=d)
                )
                for d in range(s.days)
            },
        }
        effects = []
        for e in rollout.effects:
            seg = e.segment.as_dict()
            observable = _OBSERVABLE[e.metric]
            expected = next(
                (r for r in _compare(m, base, cand, ref, seg) if r["metric"] == observable), None
            )
            entry: dict[str, Any] = {
                "metric": e.metric,
                "observable": observable,
                "scale": e.scale,
                "size": e.size,
                "segment": seg,
                "model_version": rollout.candidate,
                "versus": rollout.baseline,
                "first_exposure": first.isoformat() if first else None,
                "full_switch": rollout.full_switch.isoformat() if rollout.full_switch else None,
                "note": e.note,
                "expected": expected,
            }
            if e.scale == "log_odds":
                entry["odds_ratio"] = math.exp(e.size)
            else:
                entry["multiplier"] = e.size
            effects.append(entry)
        truth["effects"] = effects
        rows = _compare(m, base, cand, ref, {})
        for dim, values in (
            ("locale", m.locales),
            ("intent", m.intents),
            ("cohort", COHORTS),
            ("platform", m.platforms),
        ):
            for v in values:
                rows += _compare(m, base, cand, ref, {dim: [v]})
        truth["expected_differences"] = rows
    shift = s.population_shift
    if shift is None:
        truth["population_shift"] = None
    else:
        new = ref.cohort == 0
        share = _treatment_share(rollout, shift.date)
        shifted = replace(
            ref,
            u_down=ref.u_down + shift.thumbs_down_log_odds,
            u_rate=ref.u_rate + shift.rating_log_odds,
        )
        truth["population_shift"] = shift.model_dump(mode="json") | {
            "expected": {
                "note": (
                    "new users of the reference population, usual vs influx, at the treatment"
                    " share of the shift date"
                ),
                "treatment_share": share,
                "usual_new_users": _rates(m, ref, seed, share, new),
                "influx_users": _rates(m, shifted, seed, share, new),
            }
        }
    ui = s.ui_release
    if ui is None:
        truth["ui_release"] = None
    else:
        share = _treatment_share(rollout, ui.date)
        after = replace(
            ref,
            extra_rating=ref.extra_rating + ui.rating_log_odds,
            extra_down=ref.extra_down + ui.thumbs_down_log_odds,
        )
        truth["ui_release"] = ui.model_dump(mode="json") | {
            "expected": {
                "note": (
                    "reference population on the old vs the new app, at the treatment share of"
                    " the release date"
                ),
                "treatment_share": share,
                "old_app": _rates(m, ref, seed, share),
                "new_app": _rates(m, after, seed, share),
            }
        }
    truth["holidays"] = [h.model_dump(mode="json") for h in s.holidays]
    truth["seasonality"] = {
        "hourly_volume_local": m.hourly.round(6).tolist(),
        "weekly_volume_local_mon_first": m.weekly.round(6).tolist(),
        "night_hours": list(s.seasonality.night_hours),
        "night_thumbs_down_log_odds": s.seasonality.night_thumbs_down_log_odds,
        "weekend_thumbs_down_log_odds": s.seasonality.weekend_thumbs_down_log_odds,
        "weekend_rating_log_odds": s.seasonality.weekend_rating_log_odds,
        "daily": [
            {
                "date": (s.start + dt.timedelta(days=d)).isoformat(),
                "volume_multiplier": float(vol[d]),
                "thumbs_down_log_odds": float(down_noise[d]),
            }
            for d in range(s.days)
        ],
    }
    truth["emergent"] = [
        "retention: churn rises with bad experiences, so the candidate's effects move retention "
        "and, through who stays, later population mix; no planted size",
        "latency_ms follows completion_tokens: a verbosity effect slows responses",
    ]
    truth["scenario"] = s.model_dump(mode="json")
    return truth


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def scenario_annotations(scenario: Scenario) -> pl.DataFrame:
    """The product changes a team would have written down for ``scenario``: each rollout stage
    and the full switch (``model_rollout``), the UI release and the holidays (a holiday spans its
    UTC day). Columns as the warehouse's ``annotations`` table takes them; the influx of users is
    not among them, as nobody announces who signs up."""
    rows: list[tuple[str, str, str, dt.datetime, dt.datetime | None, str]] = []

    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)

    rollout = scenario.rollout
    if rollout is not None:
        for st in rollout.stages:
            title = f"{rollout.candidate} A/B at {st.treatment_share:.0%}"
            rows.append((f"{scenario.name}:stage:{st.date}", "model_rollout", title,
                         midnight(st.date), None, rollout.candidate))  # fmt: skip
        if rollout.full_switch is not None:
            rows.append((f"{scenario.name}:switch:{rollout.full_switch}", "model_rollout",
                         f"{rollout.candidate} for everyone", midnight(rollout.full_switch),
                         None, rollout.candidate))  # fmt: skip
    if scenario.ui_release is not None:
        day = scenario.ui_release.date
        rows.append((f"{scenario.name}:ui:{day}", "ui_release", "rating UI release",
                     midnight(day), None, ""))  # fmt: skip
    for h in scenario.holidays:
        rows.append((f"{scenario.name}:holiday:{h.date}", "holiday", h.name, midnight(h.date),
                     midnight(h.date + dt.timedelta(days=1)), ""))  # fmt: skip
    return pl.DataFrame(
        rows,
        schema={
            "id": pl.String,
            "kind": pl.String,
            "title": pl.String,
            "starts_at": pl.Datetime("ms", "UTC"),
            "ends_at": pl.Datetime("ms", "UTC"),
            "model_version": pl.String,
        },
        orient="row",
    )


def simulate(scenario: Scenario, *, seed: int | None = None) -> Iterator[list[bytes]]:
    """Yield the events of ``scenario`` as JSON bytes, one chunk per UTC day in time order.

    Every item is one complete event object (no trailing newline) that decodes with
    :class:`ingest.events.EventDecoder`. There are ``scenario.days`` chunks, then (almost
    always) one more for the events (session tails, late feedback) after the last midnight. ``seed``
    defaults to ``scenario.seed``; the same scenario and seed give byte-identical output.
    """
    for chunk in _Simulator(scenario, _resolve_seed(scenario, seed)).chunks():
        yield chunk.values


@dataclass(frozen=True)
class SimulationOutput:
    """What :func:`write_files` wrote."""

    out_dir: Path
    event_files: tuple[Path, ...]
    """One file per UTC day, in time order."""
    truth_path: Path
    counts: Mapping[str, int]
    """Events written per type (keys: :data:`EVENT_KINDS`)."""
    fmt: str

    @property
    def total(self) -> int:
        """Events written in all."""
        return sum(self.counts.values())

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} {n:,}" for k, n in self.counts.items())
        return (
            f"{self.total:,} events ({kinds}) in {len(self.event_files)} {self.fmt} files"
            f" under {self.out_dir}; ground truth in {self.truth_path}"
        )


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    # Imported here: rich is only needed when someone watches.
    from rich.progress import Progress

    progress = Progress()
    progress.start()
    progress.add_task("simulating days", total=total)
    return progress


def write_files(
    scenario: Scenario,
    out_dir: Path,
    *,
    seed: int | None = None,
    fmt: Literal["jsonl.gz", "jsonl", "parquet"] = "jsonl.gz",
    progress: bool = False,
) -> SimulationOutput:
    """Write ``events-YYYY-MM-DD.<fmt>`` per UTC day plus ``truth.json`` into ``out_dir``.

    ``jsonl``/``jsonl.gz``: one event per line (gzip with a zero mtime, so files are
    byte-identical across runs). ``parquet``: one row per event, columns ``type`` (string) and
    ``value`` (binary, the same JSON bytes), so a backfill feeds the same decoder.
    """
    if fmt not in ("jsonl.gz", "jsonl", "parquet"):
        raise TerminalIngestError(f"fmt must be jsonl.gz, jsonl or parquet, not {fmt!r}")
    seed = _resolve_seed(scenario, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(EVENT_KINDS, 0)
    files: list[Path] = []
    bar = _progress(progress, scenario.days + 1)
    try:
        for chunk in _Simulator(scenario, seed).chunks():
            if bar is not None:
                bar.advance(bar.task_ids[0])
            if not chunk.values:
                continue
            path = out_dir / f"events-{chunk.day.isoformat()}.{fmt}"
            _write_chunk(path, chunk, fmt)
            files.append(path)
            for kind, n in zip(
                EVENT_KINDS, np.bincount(chunk.kinds, minlength=len(EVENT_KINDS)), strict=True
            ):
                counts[kind] += int(n)
    finally:
        if bar is not None:
            bar.stop()
    truth_path = out_dir / "truth.json"
    truth_path.write_text(
        json.dumps(ground_truth(scenario, seed=seed), indent=2, allow_nan=False) + "\n"
    )
    return SimulationOutput(out_dir, tuple(files), truth_path, counts, fmt)


def _write_chunk(path: Path, chunk: _Chunk, fmt: str) -> None:
    if fmt == "parquet":
        # Imported here: pyarrow is heavy and only this format needs it.
        import pyarrow as pa
        import pyarrow.parquet as pq

        kinds = np.array(EVENT_KINDS, dtype=object)[chunk.kinds].tolist()
        table = pa.table(
            {"type": pa.array(kinds, pa.string()), "value": pa.array(chunk.values, pa.binary())}
        )
        pq.write_table(table, path, compression="zstd")
        return
    body = b"\n".join(chunk.values) + b"\n"
    if fmt == "jsonl":
        path.write_bytes(body)
        return
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=3) as f,
    ):
        f.write(body)


def produce_to_kafka(
    scenario: Scenario,
    bootstrap: str,
    topics: Mapping[str, str],
    *,
    seed: int | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Send every event to Kafka, the topic chosen by event type, keyed by ``user_id``.

    ``topics`` maps each of :data:`EVENT_KINDS` to a topic name (several may share one). The
    key keeps one user's events on one partition, so per-user order holds. Returns the number
    of events sent per type. Raises :class:`~ingest.errors.TerminalIngestError` when a kind has
    no topic, :class:`~ingest.errors.TransientIngestError` when Kafka is unreachable or any
    send failed after the producer's retries.
    """
    if missing := [k for k in EVENT_KINDS if k not in topics]:
        raise TerminalIngestError(f"topics has no topic for {missing}")
    # Imported here: kafka-python is only needed by this entry point.
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        import lz4  # noqa: F401

        # lz4 was ~20 % faster end to end than no compression against a local broker.
        compression: str | None = "lz4"
    except ImportError:  # pragma: no cover - lz4 ships with the project's environment
        compression = None
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=20,
            batch_size=512 * 1024,
            max_request_size=4 * 1024 * 1024,
            compression_type=compression,
        )
    except KafkaError as e:
        raise TransientIngestError(f"cannot reach Kafka at {bootstrap}: {e}") from e
    seed = _resolve_seed(scenario, seed)
    sim = _Simulator(scenario, seed)
    counts = dict.fromkeys(EVENT_KINDS, 0)
    failures: list[BaseException] = []
    names = [topics[k] for k in EVENT_KINDS]
    bar = _progress(progress, scenario.days + 1)
    try:
        for chunk in sim.chunks():
            keys = sim.user_keys
            for value, kind, user in zip(
                chunk.values, chunk.kinds.tolist(), chunk.users.tolist(), strict=True
            ):
                producer.send(names[kind], value=value, key=keys[user]).add_errback(failures.append)
            for kind, n in zip(
                EVENT_KINDS, np.bincount(chunk.kinds, minlength=len(EVENT_KINDS)), strict=True
            ):
                counts[kind] += int(n)
            if bar is not None:
                bar.advance(bar.task_ids[0])
        producer.flush()
    finally:
        producer.close()
        if bar is not None:
            bar.stop()
    if failures:
        raise RuntimeError(
            f"{len(failures)} events were not delivered; first error: {failures[0]!r}"
        )
    return counts
