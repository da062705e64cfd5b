"""Analysis: the metrics registry and, in progress, attribution of metric changes.

Storage-agnostic: functions take and return polars frames or numpy arrays.
"""

from analysis.concurrent import ConcurrentComparison, SampleRatioCheck, compare_concurrent
from analysis.errors import AnalysisError, InsufficientDataError, UnknownMetricError
from analysis.metrics import METRICS, Direction, Metric, Unit, get_metric, metric_outcome
from analysis.oaxaca import CovariateShift, decompose_covariate_shift
from analysis.population import PopulationShift, decompose_population_shift
from analysis.regression import RegressionResult, fit_clustered_ols
from analysis.results import Estimate
from analysis.retention import RetentionComparison, compare_retention, survivorship_warning
from analysis.switchover import SwitchoverEffect, estimate_switchover
from analysis.verbosity import VerbosityCheck, check_verbosity
from analysis.waterfall import ANNOTATION_KINDS, Waterfall, decompose_change

__all__ = [
    "ANNOTATION_KINDS",
    "METRICS",
    "AnalysisError",
    "ConcurrentComparison",
    "CovariateShift",
    "Direction",
    "Estimate",
    "InsufficientDataError",
    "Metric",
    "PopulationShift",
    "RegressionResult",
    "RetentionComparison",
    "SampleRatioCheck",
    "SwitchoverEffect",
    "Unit",
    "UnknownMetricError",
    "VerbosityCheck",
    "Waterfall",
    "check_verbosity",
    "compare_concurrent",
    "compare_retention",
    "decompose_change",
    "decompose_covariate_shift",
    "decompose_population_shift",
    "estimate_switchover",
    "fit_clustered_ols",
    "get_metric",
    "metric_outcome",
    "survivorship_warning",
]
