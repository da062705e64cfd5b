"""Analysis: the metrics registry and, in progress, attribution of metric changes.

Storage-agnostic: functions take and return polars frames or numpy arrays.
"""

from analysis.alerts import (
    ALARM_SCHEMA,
    HOURLY_METRICS,
    SEVERITIES,
    AlertPolicy,
    RegressionScan,
    alert_id_of,
    cusum_delay_hours,
    cusum_threshold,
    detect_regressions,
    select_new_alerts,
    severity_of,
)
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
    "ALARM_SCHEMA",
    "ANNOTATION_KINDS",
    "HOURLY_METRICS",
    "METRICS",
    "SEVERITIES",
    "AlertPolicy",
    "AnalysisError",
    "ConcurrentComparison",
    "CovariateShift",
    "Direction",
    "Estimate",
    "InsufficientDataError",
    "Metric",
    "PopulationShift",
    "RegressionResult",
    "RegressionScan",
    "RetentionComparison",
    "SampleRatioCheck",
    "SwitchoverEffect",
    "Unit",
    "UnknownMetricError",
    "VerbosityCheck",
    "Waterfall",
    "alert_id_of",
    "check_verbosity",
    "compare_concurrent",
    "compare_retention",
    "cusum_delay_hours",
    "cusum_threshold",
    "decompose_change",
    "decompose_covariate_shift",
    "decompose_population_shift",
    "detect_regressions",
    "estimate_switchover",
    "fit_clustered_ols",
    "get_metric",
    "metric_outcome",
    "select_new_alerts",
    "severity_of",
    "survivorship_warning",
]
