"""Shadow runner configuration (environment ``TELLTALE_SHADOW_*``, or a TOML file)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ShadowSettings"]


class ShadowSettings(BaseSettings):
    """Where to replay, how hard, and when to stop. API keys are secrets: never printed, never
    stored with the run (``settings_json`` leaves them out)."""

    model_config = SettingsConfigDict(env_prefix="TELLTALE_SHADOW_", frozen=True)

    candidate_urls: list[str] = Field(
        [],
        description="OpenAI-compatible base URLs of the candidate (ending in /v1); requests are "
        "spread over them. JSON list. TELLTALE_SHADOW_CANDIDATE_URLS.",
    )
    candidate_model: str = Field(
        "", description="Model name the candidate endpoint serves. TELLTALE_SHADOW_CANDIDATE_MODEL."
    )
    candidate_api_key: SecretStr = Field(
        SecretStr(""),
        description="Bearer token for the candidate endpoint. TELLTALE_SHADOW_CANDIDATE_API_KEY.",
    )
    baseline_urls: list[str] = Field(
        [],
        description="Base URLs serving the production model, replayed for the noise floor "
        "(arm baseline_replay); empty: no baseline arm. TELLTALE_SHADOW_BASELINE_URLS.",
    )
    baseline_model: str = Field(
        "", description="Model name of the baseline endpoint. TELLTALE_SHADOW_BASELINE_MODEL."
    )
    baseline_api_key: SecretStr = Field(
        SecretStr(""),
        description="Bearer token for the baseline endpoint. TELLTALE_SHADOW_BASELINE_API_KEY.",
    )
    concurrency: int = Field(
        32, ge=1, le=4096, description="Requests in flight at most. TELLTALE_SHADOW_CONCURRENCY."
    )
    rate: float | None = Field(
        None,
        gt=0,
        description="Requests started per second on average; unset: as fast as concurrency "
        "allows. TELLTALE_SHADOW_RATE.",
    )
    burstiness: float = Field(
        1.0,
        gt=0,
        description="Shape of the gamma inter-arrival times at `rate`: 1 is Poisson, below 1 "
        "bursty, above 1 more regular. TELLTALE_SHADOW_BURSTINESS.",
    )
    balance: Literal["least_in_flight", "round_robin"] = Field(
        "least_in_flight",
        description="How a request picks one of several URLs. TELLTALE_SHADOW_BALANCE.",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="TCP connect timeout. TELLTALE_SHADOW_CONNECT_TIMEOUT_S."
    )
    read_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest silence between two bytes of a response. "
        "TELLTALE_SHADOW_READ_TIMEOUT_S.",
    )
    request_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest one attempt may take, end to end (checked as the answer streams in; "
        "silence is read_timeout_s's to catch). TELLTALE_SHADOW_REQUEST_TIMEOUT_S.",
    )
    max_retries: int = Field(
        4,
        ge=0,
        le=20,
        description="Retries after a 429, a 5xx, a timeout or a dropped connection. "
        "TELLTALE_SHADOW_MAX_RETRIES.",
    )
    backoff_base_s: float = Field(
        0.5,
        gt=0,
        description="First retry waits up to this long (full jitter), doubling each retry. "
        "TELLTALE_SHADOW_BACKOFF_BASE_S.",
    )
    backoff_max_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait before a retry, Retry-After included. "
        "TELLTALE_SHADOW_BACKOFF_MAX_S.",
    )
    max_requests: int | None = Field(
        None,
        ge=1,
        description="Budget: requests started (a retry is not counted again) before the run "
        "stops cleanly. TELLTALE_SHADOW_MAX_REQUESTS.",
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Budget: prompt + completion tokens; no new request starts once spent "
        "(requests in flight finish, so it can be passed by at most `concurrency` requests). "
        "TELLTALE_SHADOW_MAX_TOKENS.",
    )
    max_output_tokens: int | None = Field(
        None,
        ge=1,
        description="Cap on each request's max_tokens (and the value sent when production "
        "recorded none); unset: production's value as recorded. "
        "TELLTALE_SHADOW_MAX_OUTPUT_TOKENS.",
    )
    temperature: float | None = Field(
        None,
        ge=0,
        description="Replace every request's temperature (0: greedy, to compare models without "
        "sampling noise); unset: production's value as recorded. TELLTALE_SHADOW_TEMPERATURE.",
    )
    write_batch_rows: int = Field(
        512,
        ge=1,
        description="Results written to the warehouse per insert at most (an insert costs about "
        "the same CPU for 30 rows as for 300). TELLTALE_SHADOW_WRITE_BATCH_ROWS.",
    )
    write_interval_s: float = Field(
        5.0,
        gt=0,
        description="Results are written at least this often: a killed run loses at most this "
        "long's results (sent again on resume). An insert costs 10-15 ms of CPU, which a client "
        "short of CPU takes from its requests. TELLTALE_SHADOW_WRITE_INTERVAL_S.",
    )
    drain_timeout_s: float = Field(
        10.0,
        ge=0,
        description="On SIGINT/SIGTERM, requests in flight get this long to finish before they "
        "are cancelled (a second signal cancels at once). TELLTALE_SHADOW_DRAIN_TIMEOUT_S.",
    )
    seed: int = Field(
        0, description="Seed of arrival times and retry jitter. TELLTALE_SHADOW_SEED."
    )

    @model_validator(mode="after")
    def _baseline_complete(self) -> Self:
        if bool(self.baseline_urls) != bool(self.baseline_model):
            raise ValueError("baseline_urls and baseline_model go together: give both or neither")
        return self

    @classmethod
    def from_toml(cls, path: Path, **overrides: object) -> Self:
        """Settings from a TOML file (top-level keys or a ``[shadow]`` table), then ``overrides``;
        the environment fills what neither sets."""
        data = tomllib.loads(path.read_text())
        data = data.get("shadow", data)
        return cls(**{**data, **overrides})

    def public_json(self) -> str:
        """The settings as JSON without the API keys: what is stored with a run."""
        return self.model_dump_json(exclude={"candidate_api_key", "baseline_api_key"})
