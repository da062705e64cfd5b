"""Analysis: the metrics registry and, in progress, attribution of metric changes.

Storage-agnostic: functions take and return polars frames or numpy arrays.
"""

from analysis.errors import AnalysisError, InsufficientDataError, UnknownMetricError
from analysis.metrics import METRICS, Direction, Metric, Unit, get_metric

__all__ = [
    "METRICS",
    "AnalysisError",
    "Direction",
    "InsufficientDataError",
    "Metric",
    "Unit",
    "UnknownMetricError",
    "get_metric",
]
