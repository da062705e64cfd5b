"""Shadow replay: sample production traffic, redact it, replay it on a candidate model, compare."""

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
from shadow.redact import REDACTION_KINDS, RedactedText, RedactionReport, redact_text
from shadow.refusal import is_refusal
from shadow.results import Interval
from shadow.runner import ARMS, RunSummary, ShadowRunner, http_target
from shadow.sample import Sample, SampleSet, allocate_strata, sample_traffic
from shadow.settings import ShadowSettings
from shadow.targets import ChatRequest, Completion, HttpTarget, LLMTarget

__all__ = [
    "ARMS",
    "REDACTION_KINDS",
    "BradleyTerry",
    "BudgetExhaustedError",
    "ChatRequest",
    "Completion",
    "HttpTarget",
    "Interval",
    "JudgeClient",
    "LLMTarget",
    "PairToJudge",
    "PairwiseComparison",
    "RedactedText",
    "RedactionReport",
    "RunSummary",
    "Sample",
    "SampleSet",
    "ShadowError",
    "ShadowRunner",
    "ShadowSettings",
    "TerminalShadowError",
    "TransientShadowError",
    "allocate_strata",
    "compare_pairwise",
    "fit_bradley_terry",
    "http_target",
    "is_refusal",
    "judgment_outcomes",
    "parse_verdict",
    "redact_text",
    "sample_traffic",
]
