"""Analysis exceptions.

::

    AnalysisError                root: anything the analysis library raises
    ├── UnknownMetricError       the metric is not in the registry (terminal)
    └── InsufficientDataError    too little data for the method to say anything (terminal)

Nothing here is transient: the analysis library does no I/O, so a retry never helps.
"""

from __future__ import annotations

__all__ = ["AnalysisError", "InsufficientDataError", "UnknownMetricError"]


class AnalysisError(Exception):
    """Root of every error the analysis library raises."""


class UnknownMetricError(AnalysisError):
    """The metric name is not registered."""


class InsufficientDataError(AnalysisError):
    """The data cannot support the requested estimate (too few units, no variation, ...)."""
