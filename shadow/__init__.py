"""Shadow replay: sample production traffic, redact it, replay it on a candidate model, compare."""

from shadow.compare import SEGMENTS, ShadowComparison, compare_shadow, expected_passes
from shadow.errors import (
    BudgetExhaustedError,
    ShadowError,
    TerminalShadowError,
    TransientShadowError,
)
from shadow.judge import (
    BradleyTerry,
    JudgeClient,
    PairToJudge,
    PairwiseComparison,
    compare_pairwise,
    fit_bradley_terry,
    judgment_outcomes,
    parse_verdict,
)
from shadow.prices import ModelPrice, PriceTable, load_prices
from shadow.redact import REDACTION_KINDS, RedactedText, RedactionReport, redact_text
from shadow.refusal import is_refusal
from shadow.results import Interval
from shadow.runner import ARMS, RunSummary, ShadowRunner, http_target
from shadow.sample import Sample, SampleSet, allocate_strata, sample_traffic
from shadow.settings import ShadowSettings
from shadow.simulated import SimulatedEndpoint, SimulatedModel
from shadow.targets import ChatRequest, Completion, HttpTarget, LLMTarget

__all__ = [
    "ARMS",
    "REDACTION_KINDS",
    "SEGMENTS",
    "BradleyTerry",
    "BudgetExhaustedError",
    "ChatRequest",
    "Completion",
    "HttpTarget",
    "Interval",
    "JudgeClient",
    "LLMTarget",
    "ModelPrice",
    "PairToJudge",
    "PairwiseComparison",
    "PriceTable",
    "RedactedText",
    "RedactionReport",
    "RunSummary",
    "Sample",
    "SampleSet",
    "ShadowComparison",
    "ShadowError",
    "ShadowRunner",
    "ShadowSettings",
    "SimulatedEndpoint",
    "SimulatedModel",
    "TerminalShadowError",
    "TransientShadowError",
    "allocate_strata",
    "compare_pairwise",
    "compare_shadow",
    "expected_passes",
    "fit_bradley_terry",
    "http_target",
    "is_refusal",
    "judgment_outcomes",
    "load_prices",
    "parse_verdict",
    "redact_text",
    "sample_traffic",
]
