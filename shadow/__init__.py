"""Shadow replay: sample production traffic, redact it, replay it on a candidate model, compare."""

from shadow.errors import (
    BudgetExhaustedError,
    ShadowError,
    TerminalShadowError,
    TransientShadowError,
)
from shadow.sample import Sample, SampleSet, allocate_strata, sample_traffic

__all__ = [
    "BudgetExhaustedError",
    "Sample",
    "SampleSet",
    "ShadowError",
    "TerminalShadowError",
    "TransientShadowError",
    "allocate_strata",
    "sample_traffic",
]
