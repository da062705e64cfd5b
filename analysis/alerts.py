"""Regression alerts: is a metric of a model version, in a key segment, worse than it should be,
and has it been for long enough to page someone?

Three steps, per metric, on hourly cells (hour x model version x segment values, the shape of
the warehouse's hourly rollups):

1. **Expected value.** For each series (metric x model version x key segment: all traffic, or
   one value of one segment column) one weighted least-squares fit on the trailing baseline
   window (``baseline_days`` before the evaluated hours) explains each cell's rate by

       rate = level[version] + main effects of the other segment columns
              + daily and weekly Fourier terms (UTC),

   weighted by the cell's denominator. An hour's expectation is the fit's prediction for the
   cells that hour actually holds, averaged with the hour's own denominators: it follows the
   current hour's mix, so a shift in who the users are (more new users, more Android) moves
   the expectation with it and does not page. The level depends on the version:

   - the **incumbent** (most traffic in the baseline window) is expected at its own level;
   - another version while the incumbent serves in the same hour (a staged rollout, an A/B)
     is expected at its own level (the incumbent's if it has under ``min_history_days`` days of
     history: a fresh candidate is compared with what it may replace) **plus the incumbent's
     departure from its own expectation that hour**: whatever hits both versions alike (a
     holiday, a UI release, an influx of users) cancels, and a candidate that was already
     serving is judged on a change in its gap to the incumbent, not on which users it drew;
   - another version serving alone (after a full switch) is expected at its own level, or the
     incumbent's if it has too little history.

2. **Standardised residuals.** An hour's rate varies by ``(1 + kappa) phi v(E) / n + s_t``:
   ``v(p) = p(1-p)`` for shares (thumbs down per rating), ``v(p) = p`` for counts per unit
   (retries per response), ``v = 1`` for means (turns per session; ``phi`` is then the
   per-unit variance), ``n`` the hour's denominator; ``phi`` the series' overdispersion (the
   Pearson statistic of its hourly residuals in the baseline window: users rate several
   responses); ``kappa`` how much more a whole day's mean departs than its hours say (heavy
   users make a segment's day; pooled per version over its series); ``s_t`` the part of the
   fit's own error that changes from hour to hour (the weekly shape is known from only a few
   weeks). A concurrent expectation adds the incumbent's variance that hour.

3. **Sequential detector.** A one-sided CUSUM of log-likelihood ratios (Page 1954) in the bad
   direction: each hour adds ``(D/V) (O - E) - D^2 / (2V)``, ``D`` the design shift
   (``shift_multiple`` x the metric's release threshold, relative to the expectation, towards
   worse). The statistic is the largest sum over a run-up of at most ``memory_hours`` hours,
   floored at 0; an alarm is raised when it reaches ``h``, after which the series stays quiet
   for ``cooldown_hours`` and starts afresh. ``h`` is calibrated per series for an in-control
   average run length of ``false_alarm_days`` days (:func:`cusum_threshold`: Siegmund's
   approximation, averaged over the fit's persistent error, which a level estimated from two
   weeks always has). ``docs/alerts.md`` has the false-alarm rate and detection delay measured
   on the simulator.

An alarm says when the shift began (``opened_at``: the first hour of its run-up), when it was
detected, and the shift over the run-up. Severity grows with the shift relative to the
metric's release threshold and with the segments firing together (:func:`severity_of`).
:func:`select_new_alerts` drops alarms already alerted: the same shift found again, a series
with an open or acknowledged alert, or one that alerted less than ``cooldown_hours`` before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from scipy import optimize

from analysis.errors import InsufficientDataError
from analysis.metrics import METRICS, Direction, Metric, Unit, get_metric
from analysis.results import Estimate, render_summary, require_columns
from analysis.waterfall import _fourier, _naive_utc

__all__ = [
    "ALARM_SCHEMA",
    "HOURLY_METRICS",
    "SEVERITIES",
    "AlertPolicy",
    "RegressionScan",
    "alert_id_of",
    "cusum_delay_hours",
    "cusum_threshold",
    "detect_regressions",
    "select_new_alerts",
    "severity_of",
]

SEVERITIES = ("minor", "major", "critical")
"""Alert severities, mildest first."""

HOURLY_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.unit is not Unit.USER)
"""Metrics the detector can scan: rates with an hourly numerator and denominator."""

ALL = "all"
"""The segment name (and value) of the series over all traffic."""

ALARM_SCHEMA: dict[str, pl.DataType] = {
    "alert_id": pl.String(),
    "metric": pl.String(),
    "model_version": pl.String(),
    "segment": pl.String(),
    "segment_value": pl.String(),
    "opened_at": pl.Datetime("us"),
    "detected_at": pl.Datetime("us"),
    "severity": pl.String(),
    "expected": pl.Float64(),
    "observed": pl.Float64(),
    "shift": pl.Float64(),
    "shift_se": pl.Float64(),
    "relative_shift": pl.Float64(),
    "statistic": pl.Float64(),
    "threshold": pl.Float64(),
    "basis": pl.String(),
    "baseline_version": pl.String(),
    "segments_firing": pl.Int64(),
    "note": pl.String(),
}
"""Columns of :attr:`RegressionScan.alarms` (hours are naive UTC)."""

Variance = Literal["binomial", "poisson", "constant"]

# How an hour's rate varies with its denominator: shares are binomial, retries per response
# can exceed one (Poisson-like), per-session means have a variance of their own.
_VARIANCE: dict[str, Variance] = {
    "retry_rate": "poisson",
    "session_turns": "constant",
    "session_seconds": "constant",
}
_SIEGMUND = 1.166  # Siegmund's overshoot correction for a Gaussian CUSUM, in units of c
_EPOCH = dt.datetime(2001, 1, 1)  # a Monday 00:00 UTC, as the waterfall counts hours
_HOUR = dt.timedelta(hours=1)
_MIN_BASELINE_DAYS = 7  # weekly seasonality needs a week
_N_SEASONAL = _fourier(np.zeros(1)).shape[1]
_WEEKLY_TERMS = _N_SEASONAL // 2  # the weekly half of the Fourier columns varies day to day


@dataclass(frozen=True)
class AlertPolicy:
    """How expectations are learnt, how sure the detector must be, and how often it may repeat.

    The defaults are the ones measured in ``docs/alerts.md``.
    """

    baseline_days: int = 14
    """Days before the evaluated hours that the expectation is learnt from."""
    shift_multiple: float = 2.0
    """The detector is tuned to a shift of this many times the metric's release threshold
    (relative, in the bad direction): 2 x 5% = 10% for the thumbs-down rate."""
    false_alarm_days: float = 90.0
    """In-control average run length of each series' CUSUM, in days: with no change, each
    series raises a false alarm once in this many days on average."""
    cooldown_hours: int = 24
    """After an alarm, the series stays quiet this long; a later alarm is a new alert."""
    memory_hours: int = 72
    """The CUSUM forgets evidence older than this: a run-up spans at most this many hours.
    The hourly cron, scanning the last ``memory_hours`` afresh each time, sees exactly this."""
    min_history_days: int = 3
    """Days of traffic a version needs in the baseline window to be expected at its own level
    when it serves alone (else it is expected at the incumbent's level)."""
    min_segment_share: float = 0.02
    """A segment value is a key segment when it holds at least this share of the baseline
    window's denominator."""

    def __post_init__(self) -> None:
        if self.baseline_days < _MIN_BASELINE_DAYS:
            raise ValueError(
                f"baseline_days must be at least {_MIN_BASELINE_DAYS} (weekly seasonality)"
            )
        if self.shift_multiple <= 0 or self.false_alarm_days <= 0 or self.cooldown_hours < 0:
            raise ValueError("shift_multiple and false_alarm_days must be > 0, cooldown >= 0")

    @property
    def arl0_hours(self) -> float:
        """The in-control average run length the thresholds are calibrated to, in hours."""
        return self.false_alarm_days * 24.0


@dataclass(frozen=True)
class RegressionScan:
    """What the detector found for one metric over ``[since, until)``.

    ``series`` has one row per series and hour (observed, expected, the band of +-2 standard
    deviations around the expectation, and the CUSUM statistic): the chart behind an alert.
    ``diagnostics`` has one row per series: its overdispersion, signal-to-noise at the design
    shift, threshold, the expected hours to detect the design shift (``delay_hours``), and how
    the expectation was formed.
    """

    metric: str
    since: dt.datetime
    until: dt.datetime
    policy: AlertPolicy
    design_shift: float
    """Relative shift the CUSUM is tuned to, signed towards worse."""
    alarms: pl.DataFrame
    series: pl.DataFrame
    diagnostics: pl.DataFrame
    assumptions: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())

    def to_frame(self) -> pl.DataFrame:
        """The alarms, one row each (columns: :data:`ALARM_SCHEMA`)."""
        return self.alarms

    def summary(self, fmt: str = "text") -> str:
        """The alarms as ``text``, ``markdown`` or ``html``: the shift over each alarm's run-up
        with a naive 95% interval."""
        estimates = [
            Estimate(
                f"{r['model_version']} {r['segment']}={r['segment_value']} from "
                f"{r['opened_at']:%Y-%m-%d %H:%M} ({r['severity']})",
                r["shift"],
                r["shift_se"],
                r["shift"] - 1.96 * r["shift_se"],
                r["shift"] + 1.96 * r["shift_se"],
                float("nan"),
            )
            for r in self.alarms.iter_rows(named=True)
        ]
        header = (
            f"{self.metric}: {self.alarms.height} alarm(s) in "
            f"{self.diagnostics.height} series from {self.since:%Y-%m-%d %H:%M} to "
            f"{self.until:%Y-%m-%d %H:%M}; CUSUM tuned to a {self.design_shift:+.1%} shift, "
            f"{self.policy.false_alarm_days:g} days between false alarms per series"
        )
        return render_summary(header, estimates, self.assumptions, self.warnings, fmt)


def cusum_threshold(c2: float, arl0_hours: float, *, bias_sd: float = 0.0) -> float:
    """The CUSUM threshold ``h`` whose in-control average run length is ``arl0_hours``, for
    log-likelihood-ratio increments with per-hour signal-to-noise ``c = sqrt(c2)``.

    In control an increment is ``c z - c^2/2`` with ``z ~ N(b, 1)``, where ``b`` is the
    expectation's own error in standard deviations of an hour (the level is estimated, so it
    is off by a fixed amount the whole time): ``b ~ N(0, bias_sd^2)``. The run length for a
    given ``b`` is Siegmund's approximation for a Gaussian random walk with drift
    ``mu = c b - c^2/2`` and variance ``c^2`` against a barrier ``h + 1.166 c``; the false-alarm
    rate ``1 / ARL`` is averaged over ``b`` (Gauss-Hermite) and ``h`` solved for
    ``1 / arl0_hours``. With ``bias_sd = 0`` this is the textbook calibration; a poorly known
    level raises ``h``, as it must (a level off by ``+b`` alone would otherwise page early).
    """
    if c2 <= 0:
        return math.inf
    c = math.sqrt(c2)
    nodes, weights = np.polynomial.hermite_e.hermegauss(31 if bias_sd > 0 else 1)
    weights = weights / weights.sum()
    theta = 2 * (bias_sd * nodes) / c - 1  # 2 mu / sigma^2 for each node's bias

    def excess_rate(h: float) -> float:
        barrier = h + _SIEGMUND * c
        x = np.clip(-theta * barrier, None, 700.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            arl = np.where(
                np.abs(theta) > 1e-9,
                (np.exp(x) - x - 1) / (theta**2 * c2 / 2),
                barrier**2 / c2,
            )
        return float(weights @ (1 / arl)) - 1 / arl0_hours

    if excess_rate(0.0) <= 0:
        return 0.0
    upper = math.log(arl0_hours * c2 + 1) + 10.0
    while excess_rate(upper) > 0:
        upper *= 2
    return float(optimize.brentq(excess_rate, 0.0, upper))


def cusum_delay_hours(c2: float, h: float) -> float:
    """Expected hours for a CUSUM with threshold ``h`` to alarm once the shift it is tuned to
    has begun (from a statistic at 0), for per-hour signal-to-noise ``c = sqrt(c2)``.

    Siegmund's approximation again, now for the drift ``+c^2/2``. With the threshold of
    :func:`cusum_threshold` at ``bias_sd = 0``, this is the least worst-case delay *any*
    detector can have at that false-alarm rate: the CUSUM is optimal in Lorden's sense
    (Moustakides 1986), so a target below it cannot be met by a better detector, only by more
    signal per hour (more traffic, a larger shift) or more false alarms.
    """
    if c2 <= 0:
        return math.inf
    barrier = h + _SIEGMUND * math.sqrt(c2)
    return (math.exp(-barrier) + barrier - 1) / (c2 / 2)


def alert_id_of(
    metric: str, model_version: str, segment: str, value: str, opened_at: dt.datetime
) -> str:
    """A stable id for the alarm on this series that began at ``opened_at``: the same shift
    found again by a later run gets the same id (and the same PagerDuty dedup key)."""
    key = f"{metric}|{model_version}|{segment}|{value}|{opened_at:%Y-%m-%dT%H}"
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def severity_of(relative_shift: float, threshold: float, *, overall: bool, firing: int) -> str:
    """``critical``, ``major`` or ``minor``, from the shift in the bad direction relative to the
    metric's release ``threshold`` (``ratio``) and the segments of the metric and version that
    fire together (``firing``):

    - critical: ratio >= 4, or all traffic with ratio >= 2, or 4+ segments firing;
    - major: ratio >= 2, or 2+ segments firing;
    - minor: anything else the detector caught (a smaller shift, sustained).
    """
    ratio = abs(relative_shift) / threshold
    if ratio >= 4 or (overall and ratio >= 2) or firing >= 4:
        return "critical"
    if ratio >= 2 or firing >= 2:
        return "major"
    return "minor"


def detect_regressions(
    cells: pl.DataFrame,
    *,
    metric: str | Metric,
    since: dt.datetime,
    until: dt.datetime,
    segments: Sequence[str] = ("locale", "platform", "intent", "cohort"),
    policy: AlertPolicy | None = None,
    annotations: pl.DataFrame | None = None,
    refit_hours: int | None = None,
) -> RegressionScan:
    """Scan every series of ``metric`` over ``[since, until)`` for regressions.

    ``cells`` holds hourly counts: ``hour`` (UTC), ``model_version``, the ``segments`` columns
    and the metric's numerator and denominator columns, from ``since - baseline_days`` on. The
    CUSUM starts at 0 at ``since``. ``refit_hours`` re-learns the expectation every so many
    hours (each block from the ``baseline_days`` before it) while the CUSUM runs on, as a
    detector running for weeks would; by default one fit serves the whole window, which is
    right for the hourly cron's few days. ``annotations`` (``title``, ``kind``, ``starts_at``,
    ``ends_at``) that overlap an alarm's run-up are named in its note.
    """
    m = get_metric(metric) if isinstance(metric, str) else metric
    if m.unit is Unit.USER:
        raise InsufficientDataError(f"{m.name} is per user: hourly alerts cover rates per hour")
    policy = policy or AlertPolicy()
    require_columns(cells, ["hour", "model_version", *segments, m.numerator, m.denominator])
    since, until = (
        _naive_utc(t).replace(minute=0, second=0, microsecond=0) for t in (since, until)
    )
    if until <= since:
        raise InsufficientDataError(f"empty window {since} .. {until}")
    baseline = dt.timedelta(days=policy.baseline_days)
    data = _prepare(cells, m, segments, since - baseline, until)
    block = dt.timedelta(hours=refit_hours) if refit_hours else until - since
    sign = 1.0 if m.better is Direction.LOWER_IS_BETTER else -1.0
    design = sign * policy.shift_multiple * m.threshold
    variance = _VARIANCE.get(m.name, "binomial")
    hourly: list[pl.DataFrame] = []
    start = since
    while start < until:
        end = min(start + block, until)
        hourly.append(
            _expect(data, start - baseline, start, end, segments, policy, variance, m.name)
        )
        start = end
    hourly = [h for h in hourly if h.height]
    expected = (
        pl.concat(hourly).sort("model_version", "segment", "segment_value", "hour")
        if hourly
        else pl.DataFrame()
    )
    series, diagnostics, raw = _run_cusum(expected, design, policy)
    alarms = _alarms(raw, m, policy, annotations)
    warnings = []
    if not series.height:
        warnings.append(f"no {m.denominator} between {since} and {until}: nothing to scan")
    inherited = diagnostics.filter(pl.col("basis").str.contains("inherited"))
    if inherited.height:
        versions = ", ".join(sorted(set(inherited["model_version"].to_list())))
        warnings.append(
            f"{versions} had under {policy.min_history_days} days of history and served "
            "without the incumbent: expected at the incumbent's level"
        )
    return RegressionScan(
        metric=m.name,
        since=since,
        until=until,
        policy=policy,
        design_shift=design,
        alarms=alarms,
        series=series,
        diagnostics=diagnostics,
        assumptions=(
            "within a series, segment effects are additive and stable over the baseline window; "
            "the expectation follows the current hour's mix of the other segment columns",
            "seasonality is daily plus weekly (3 harmonics each, UTC) and stable",
            f"hours are independent given the expectation; variance {variance}, overdispersion "
            "from the baseline window",
            "the shift is estimated over the run-up that raised the alarm: it is conditional on "
            "the alarm and so biased away from 0; the interval is naive",
        ),
        warnings=tuple(warnings),
    )


def select_new_alerts(
    alarms: pl.DataFrame, recorded: pl.DataFrame, *, cooldown_hours: int
) -> pl.DataFrame:
    """The ``alarms`` that are new alerts, given the alerts ``recorded`` before (with at least
    ``alert_id``, ``metric``, ``model_version``, ``segment``, ``segment_value``,
    ``detected_at`` and ``status``).

    An alarm is not new when its id was recorded already (the same shift found again), when its
    series has an open or acknowledged alert, or when its series alerted less than
    ``cooldown_hours`` before it. Alarms are taken in time order, so of two alarms of one series
    in one scan the second is judged against the first.
    """
    if not alarms.height:
        return alarms
    key_cols = ("metric", "model_version", "segment", "segment_value")
    seen_ids = set(recorded["alert_id"].to_list()) if recorded.height else set()
    latest: dict[tuple[str, ...], tuple[dt.datetime, str]] = {}
    for r in recorded.sort("detected_at").iter_rows(named=True):
        latest[tuple(r[c] for c in key_cols)] = (_naive_utc(r["detected_at"]), r["status"])
    cooldown = dt.timedelta(hours=cooldown_hours)
    keep = []
    for i, r in enumerate(alarms.sort("detected_at").iter_rows(named=True)):
        key = tuple(r[c] for c in key_cols)
        when = _naive_utc(r["detected_at"])
        prev = latest.get(key)
        duplicate = r["alert_id"] in seen_ids or (
            prev is not None and (prev[1] != "resolved" or when < prev[0] + cooldown)
        )
        if not duplicate:
            keep.append(i)
            latest[key] = (when, "open")
            seen_ids.add(r["alert_id"])
    return alarms.sort("detected_at")[keep]


# --------------------------------------------------------------------------------------------
# Expectations
# --------------------------------------------------------------------------------------------


def _prepare(
    cells: pl.DataFrame, m: Metric, segments: Sequence[str], lo: dt.datetime, hi: dt.datetime
) -> pl.DataFrame:
    """The cells in ``[lo, hi)`` with a denominator, as ``hour``, ``t`` (hours since the
    epoch), ``model_version``, the segments (strings), ``num`` and ``den``."""
    return (
        cells.lazy()
        .select(
            pl.col("hour").dt.replace_time_zone(None).dt.cast_time_unit("us"),
            pl.col("model_version").cast(pl.String),
            *(pl.col(s).cast(pl.String).fill_null("unknown") for s in segments),
            pl.col(m.numerator).cast(pl.Float64).alias("num"),
            pl.col(m.denominator).cast(pl.Float64).alias("den"),
        )
        .filter(
            (pl.col("den") > 0)
            & (pl.col("model_version") != "")
            & (pl.col("hour") >= lo)
            & (pl.col("hour") < hi)
        )
        .with_columns(((pl.col("hour") - _EPOCH).dt.total_hours()).alias("t"))
        .collect()
    )


def _expect(
    data: pl.DataFrame,
    fit_lo: dt.datetime,
    lo: dt.datetime,
    hi: dt.datetime,
    segments: Sequence[str],
    policy: AlertPolicy,
    variance: Variance,
    metric: str,
) -> pl.DataFrame:
    """Per series, version and hour of ``[lo, hi)``: observed, expected, variance and the
    expectation's basis, from fits on ``[fit_lo, lo)`` (module doc, steps 1-2).

    The design (version, segment and seasonal columns) is built once for the block; each
    series' fit takes its rows, and counts are summed per version and hour with ``bincount``
    into dense (version x hour) arrays, so the concurrent incumbent is the same hour's column.
    """
    block = data.filter((pl.col("hour") >= fit_lo) & (pl.col("hour") < hi))
    fit_hours = int((lo - fit_lo) / _HOUR)
    n_hours = int((hi - fit_lo) / _HOUR)
    hour = (block["t"].to_numpy() - (fit_lo - _EPOCH) / _HOUR).astype(np.int64)
    in_fit = hour < fit_hours
    days = len(np.unique(hour[in_fit] // 24))
    if days < _MIN_BASELINE_DAYS:
        raise InsufficientDataError(
            f"{metric}: {days} days of data before {lo:%Y-%m-%d %H:%M} (at least "
            f"{_MIN_BASELINE_DAYS} are needed to learn weekly seasonality; "
            f"{policy.baseline_days} are used when there)"
        )
    if in_fit.all():
        return pl.DataFrame()
    names, version = _codes(block["model_version"])
    codes = {s: _codes(block[s]) for s in segments}
    first = (fit_lo - _EPOCH) / _HOUR
    seasonal = _fourier(first + np.arange(n_hours))[hour]
    dummies = {s: np.eye(len(levels))[code] for s, (levels, code) in codes.items()}
    num, den = block["num"].to_numpy(), block["den"].to_numpy()
    total = den[in_fit].sum()
    keys: list[tuple[str, str, np.ndarray]] = [(ALL, ALL, np.ones(len(den), dtype=bool))]
    for s, (levels, code) in codes.items():
        share = np.bincount(code[in_fit], weights=den[in_fit], minlength=len(levels)) / total
        keys += [
            (s, levels[i], code == i) for i in np.flatnonzero(share >= policy.min_segment_share)
        ]
    out: list[pl.DataFrame] = []
    day_excess: dict[str, list[np.ndarray]] = {}
    for column, value, rows in keys:
        x = np.column_stack(
            [np.eye(len(names))[version[rows]], seasonal[rows]]
            + [dummies[s][rows] for s in segments if s != column]
        )
        frame, excess = _series_expectation(
            x, version[rows], hour[rows], num[rows], den[rows], names, fit_hours, n_hours,
            policy, variance,
        )  # fmt: skip
        for v, sums in excess.items():
            day_excess.setdefault(names[v], []).append(sums)
        if frame.height:
            start = fit_lo + fit_hours * _HOUR
            out.append(
                frame.with_columns(
                    (pl.lit(start) + pl.duration(hours=pl.col("hour") - fit_hours)).alias("hour"),
                    segment=pl.lit(column),
                    segment_value=pl.lit(value),
                )
            )
    if not out:
        return pl.DataFrame()
    # Days share what hourly noise does not show: a few heavy users make a segment's day, the
    # news moves everyone's. Per version, over all its series (one series has too few days to
    # say), a day's mean residual varies (1 + kappa) times as much as sampling explains; every
    # hour's variance, and the level's error, grow by as much (a day of hours then varies as
    # the baseline days did). A version without baseline days takes the incumbent's kappa.
    kappas = pl.DataFrame(
        {
            "version": list(day_excess),
            "kappa": [_day_dispersion(np.array(rows)) for rows in day_excess.values()],
        },
        schema={"version": pl.String, "kappa": pl.Float64},
    )
    own = kappas.rename({"version": "model_version"})
    inherited = kappas.rename({"version": "baseline_version", "kappa": "ref_kappa"})
    return (
        pl.concat(out)
        .join(own, on="model_version", how="left")
        .join(inherited, on="baseline_version", how="left")
        .with_columns(pl.coalesce("kappa", "ref_kappa", pl.lit(0.0)).alias("kappa"))
        .drop("ref_kappa")
        .with_columns(pl.col("variance", "bias_var") * (1 + pl.col("kappa")))
    )


def _day_dispersion(rows: np.ndarray) -> float:
    """``kappa`` from one row per series: the sums over baseline days of ``N_d m_d^2``
    (corrected for the freedom the fit took), ``N_d s_d`` and ``N_d``, with ``m_d`` a day's
    mean residual and ``s_d`` its sampling variance: the series' mean squared daily residuals
    over their mean sampling variances, summed across series, minus one (at least 0)."""
    ok = (rows[:, 2] > 0) & (rows[:, 1] > 0)
    if not ok.any():
        return 0.0
    m2, s2 = rows[ok, 0] / rows[ok, 2], rows[ok, 1] / rows[ok, 2]
    return max(0.0, float(np.sum(m2) / np.sum(s2)) - 1)


def _quadratic(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``r' M r`` for each row ``r`` (NaN rows give NaN)."""
    return np.einsum("tp,pq,tq->t", rows, matrix, rows)


def _codes(values: pl.Series) -> tuple[list[str], np.ndarray]:
    """The distinct values (sorted) and each row's index into them."""
    levels = sorted(set(values.to_list()))
    return levels, values.replace_strict(levels, list(range(len(levels)))).to_numpy()


def _var(p: np.ndarray, variance: Variance, floor: float) -> np.ndarray:
    """Variance of one unit at rate ``p``; ``p`` held at least ``floor`` from the edges, so an
    hour whose cells predict almost nothing cannot claim almost no noise."""
    if variance == "binomial":
        q = np.clip(p, floor, 1 - floor)
        return q * (1 - q)
    if variance == "poisson":
        return np.clip(p, floor, None)
    return np.ones_like(p)


def _series_expectation(
    x: np.ndarray,
    version: np.ndarray,
    hour: np.ndarray,
    num: np.ndarray,
    den: np.ndarray,
    names: list[str],
    fit_hours: int,
    n_hours: int,
    policy: AlertPolicy,
    variance: Variance,
) -> tuple[pl.DataFrame, dict[int, np.ndarray]]:
    """One series: fit on its rows before ``fit_hours``, then observed and expected per
    version and later hour (``x`` holds one column per version, then the rest of the design);
    and per version the day-level excess of its baseline residuals (see :func:`_expect`)."""
    k = len(names)
    fit = hour < fit_hours
    xf = x[fit]
    gram = (xf * den[fit, None]).T @ xf
    # Each segment's dummies sum to the versions' columns: the split between levels and
    # effects is arbitrary, the predictions (all that is used) are not; pinv picks one split.
    inverse = np.linalg.pinv(gram, rcond=1e-10, hermitian=True)
    beta = inverse @ (xf.T @ num[fit])
    level, g = beta[:k], x[:, k:] @ beta[k:]
    key = version * n_hours + hour

    def dense(weights: np.ndarray) -> np.ndarray:
        return np.bincount(key, weights=weights, minlength=k * n_hours).reshape(k, n_hours)

    n, numer = dense(den), dense(num)
    ref = int(np.argmax(n[:, :fit_hours].sum(axis=1)))
    # A linear fit can predict a rate below 0 (or a share above 1) for a rare cell: held to
    # what a rate can be before the hour's cells are averaged.
    low, high = 0.0, (1.0 if variance == "binomial" else None)
    rate = float(num[fit].sum() / den[fit].sum())
    floor = 0.25 * min(rate, 1 - rate) if variance == "binomial" else 0.25 * rate
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = numer / n
        # Each version's hours at its own level, and at the incumbent's.
        own_level = dense(den * np.clip(level[version] + g, low, high)) / n
        ref_level = dense(den * np.clip(level[ref] + g, low, high)) / n
    # Each version-hour's mean design row (its mix and season): what its expectation's
    # estimation error depends on.
    rows = np.stack([dense(den * x[:, j]) for j in range(k, x.shape[1])], axis=-1)
    history = (n[:, :fit_hours] > 0).reshape(k, -1, 24).any(axis=2).sum(axis=1)
    phi = np.full(k, np.nan)
    dof = _N_SEASONAL + 1
    # Per version, over the baseline days: sums of N_d m_d^2, N_d s_d and N_d, with m_d the
    # day's mean residual, s_d its sampling variance and N_d its denominator.
    excess: dict[int, np.ndarray] = {}
    for v in range(k):
        seen = n[v, :fit_hours] > 0
        if seen.sum() <= 2 * dof:
            continue
        # Hours the version did not serve weigh nothing (their rates are NaN).
        e = np.where(seen, own_level[v, :fit_hours], rate)
        r = np.where(seen, observed[v, :fit_hours] - e, 0.0)
        unit_var = _var(e, variance, floor)
        pearson = float(np.sum(n[v, :fit_hours] * r**2 / unit_var)) / (seen.sum() - dof)
        phi[v] = pearson if variance == "constant" else max(pearson, 1.0)
        day_n = n[v, :fit_hours].reshape(-1, 24).sum(axis=1)
        day_r = (n[v, :fit_hours] * r).reshape(-1, 24).sum(axis=1)
        day_w = (phi[v] * n[v, :fit_hours] * unit_var).reshape(-1, 24).sum(axis=1)
        on = day_n > 0
        if on.sum() > _WEEKLY_TERMS + 1:
            m, s2, nd = day_r[on] / day_n[on], day_w[on] / day_n[on] ** 2, day_n[on]
            # The fit's level and weekly terms absorbed that many days' worth of freedom.
            m2 = np.sum(nd * m**2) * on.sum() / (on.sum() - _WEEKLY_TERMS - 1)
            excess[v] = np.array([m2, np.sum(nd * s2), np.sum(nd)])
    phi_ref = phi[ref] if not np.isnan(phi[ref]) else 1.0
    later = slice(fit_hours, n_hours)
    ref_n, ref_o, ref_e = n[ref, later], observed[ref, later], own_level[ref, later]
    # Hours a version did not serve divide by NaN, not 0: they are dropped below.
    served_n = np.where(n > 0, n, np.nan)
    ref_var = phi_ref * _var(ref_e, variance, floor) / served_n[ref, later]
    frames = []
    for v in range(k):
        served = n[v, later] > 0
        if not served.any():
            continue
        own = v == ref or history[v] >= policy.min_history_days
        ph = phi[v] if own and not np.isnan(phi[v]) else phi_ref
        seasonal = (own_level if own else ref_level)[v, later]
        expected = seasonal.copy()
        var = ph * _var(seasonal, variance, floor) / served_n[v, later]
        basis = np.full(n_hours - fit_hours, "seasonal" if own else "inherited", dtype=object)
        design_row = rows[v, later] / served_n[v, later, None]
        chosen = np.zeros((len(seasonal), k))
        chosen[:, v if own else ref] = 1.0
        # What the expectation's estimation error depends on, hour by hour: the coefficients
        # times this row.
        err = np.column_stack([chosen, design_row])
        if v != ref:
            # The incumbent's departure from its own expectation this hour is a shock both
            # versions share: what remains is a change in the gap between the versions.
            conc = ref_n > 0
            expected[conc] = (seasonal + ref_o - ref_e)[conc]
            var[conc] += ref_var[conc]
            chosen[:, ref] -= 1.0
            with np.errstate(invalid="ignore", divide="ignore"):
                gap = np.column_stack([chosen, design_row - rows[ref, later] / ref_n[:, None]])
            err[conc] = gap[conc]
            basis[conc] = "concurrent"
        # The error averaged over the evaluated hours stays put (a level that is off stays
        # off): it goes to the threshold's calibration; the rest varies from hour to hour
        # (the weekly shape is off at some hours, not others) and adds to each hour's variance.
        unit = ph * _var(seasonal, variance, floor)
        mean_err = np.average(err[served], axis=0, weights=n[v, later][served])
        bias_var = float(_quadratic(mean_err[None, :], inverse)[0]) * unit
        var += np.nan_to_num(_quadratic(err - mean_err, inverse)) * unit
        frames.append(
            pl.DataFrame(
                {
                    "model_version": names[v],
                    "hour": np.flatnonzero(served) + fit_hours,
                    "n": n[v, later][served],
                    "observed": observed[v, later][served],
                    "expected": expected[served],
                    "seasonal": seasonal[served],
                    "variance": var[served],
                    "bias_var": bias_var[served],
                    "basis": pl.Series(basis[served], dtype=pl.String),
                    "baseline_version": names[ref],
                    "phi": ph,
                }
            )
        )
    return (pl.concat(frames) if frames else pl.DataFrame()), excess


# --------------------------------------------------------------------------------------------
# CUSUM and alarms
# --------------------------------------------------------------------------------------------


def _run_cusum(
    expected: pl.DataFrame, design: float, policy: AlertPolicy
) -> tuple[pl.DataFrame, pl.DataFrame, list[dict[str, object]]]:
    """The CUSUM of every series (module doc, step 3): the per-hour frame with the statistic,
    one diagnostics row per series, and the raw alarms."""
    if not expected.height:
        empty = pl.DataFrame()
        return empty, empty, []
    series, diagnostics, alarms = [], [], []
    keys = ("model_version", "segment", "segment_value")
    for key, group in expected.group_by(keys, maintain_order=True):
        o, e, var, n, seasonal = (
            group[c].to_numpy() for c in ("observed", "expected", "variance", "n", "seasonal")
        )
        hours = group["hour"].to_list()
        clock = ((group["hour"] - _EPOCH).dt.total_hours()).to_numpy()
        d = design * seasonal
        c2 = d**2 / var
        bias_sd = float(np.sqrt(np.mean(group["bias_var"].to_numpy() / var)))
        mean_c2 = float(np.mean(c2))
        h = cusum_threshold(mean_c2, policy.arl0_hours, bias_sd=bias_sd)
        steps = d * (o - e) / var - c2 / 2
        # prefix[j] is the sum of the steps before hour j: a run-up j..i sums to
        # prefix[i + 1] - prefix[j]; the statistic is the largest run-up within the memory.
        prefix = np.concatenate([[0.0], np.cumsum(steps)])
        stat = np.zeros(len(o))
        floor = 0  # no run-up starts before the last alarm's cool-down ended
        for i in range(len(steps)):
            if i < floor:
                continue
            lo = max(floor, int(np.searchsorted(clock, clock[i] - policy.memory_hours, "right")))
            window = prefix[lo : i + 1]
            start = lo + len(window) - 1 - int(np.argmin(window[::-1]))
            stat[i] = max(0.0, prefix[i + 1] - prefix[start])
            if stat[i] >= h:
                run = slice(start, i + 1)
                weight = n[run] / n[run].sum()
                alarms.append(
                    {
                        **dict(zip(keys, key, strict=True)),
                        "opened_at": hours[start],
                        "detected_at": hours[i],
                        "observed": float(weight @ o[run]),
                        "expected": float(weight @ e[run]),
                        "shift_se": float(np.sqrt(weight**2 @ var[run])),
                        "statistic": float(stat[i]),
                        "threshold": h,
                        "basis": _basis(group["basis"][run]),
                        "baseline_version": group["baseline_version"][0],
                    }
                )
                floor = int(np.searchsorted(clock, clock[i] + policy.cooldown_hours, "left"))
                floor = max(floor, i + 1)
        band = 2 * np.sqrt(var)
        series.append(
            group.select(*keys, "hour", "n", "observed", "expected", "basis").with_columns(
                pl.Series("lower", e - band),
                pl.Series("upper", e + band),
                pl.Series("statistic", stat),
                pl.lit(h).alias("threshold"),
            )
        )
        diagnostics.append(
            {
                **dict(zip(keys, key, strict=True)),
                "hours": len(o),
                "phi": float(group["phi"][0]),
                "day_kappa": float(group["kappa"][0]),
                "snr": math.sqrt(mean_c2),
                "bias_sd": bias_sd,
                "threshold": h,
                "delay_hours": cusum_delay_hours(mean_c2, h),
                "basis": _basis(group["basis"]),
                "alarms": sum(1 for a in alarms if tuple(a[k] for k in keys) == key),
            }
        )
    return pl.concat(series), pl.DataFrame(diagnostics), alarms


def _basis(values: pl.Series) -> str:
    """How the expectation was formed over some hours: one basis, or several joined by '+'."""
    return "+".join(sorted(set(values.to_list())))


def _alarms(
    raw: list[dict[str, object]],
    m: Metric,
    policy: AlertPolicy,
    annotations: pl.DataFrame | None,
) -> pl.DataFrame:
    """The raw alarms with ids, shifts, the segments firing alongside, severity and a note."""
    if not raw:
        return pl.DataFrame(schema=ALARM_SCHEMA)
    frame = pl.DataFrame(raw).with_columns(
        (pl.col("observed") - pl.col("expected")).alias("shift"),
        ((pl.col("observed") - pl.col("expected")) / pl.col("expected")).alias("relative_shift"),
    )
    runs = frame.filter(pl.col("segment") != ALL).to_dicts()
    rows = []
    for r in frame.iter_rows(named=True):
        # Segments of the same version whose run-ups overlap this one: one shift seen in
        # several places at once, not alarms weeks apart.
        r["segments_firing"] = len(
            {
                (o["segment"], o["segment_value"])
                for o in runs
                if o["model_version"] == r["model_version"]
                and o["opened_at"] <= r["detected_at"]
                and r["opened_at"] <= o["detected_at"]
            }
        )
        r["alert_id"] = alert_id_of(
            m.name, r["model_version"], r["segment"], r["segment_value"], r["opened_at"]
        )
        r["metric"] = m.name
        r["severity"] = severity_of(
            r["relative_shift"],
            m.threshold,
            overall=r["segment"] == ALL,
            firing=r["segments_firing"],
        )
        r["note"] = _during(annotations, r["opened_at"], r["detected_at"] + _HOUR)
        rows.append(r)
    return pl.DataFrame(rows, schema_overrides=ALARM_SCHEMA).select(list(ALARM_SCHEMA))


def _during(annotations: pl.DataFrame | None, lo: dt.datetime, hi: dt.datetime) -> str:
    """The annotated changes that overlap ``[lo, hi)``, as a note for the on-call engineer."""
    if annotations is None or not annotations.height:
        return ""
    found = [
        f"{a['title']} ({a['kind']})"
        for a in annotations.iter_rows(named=True)
        if _naive_utc(a["starts_at"]) < hi
        and (a["ends_at"] is None or _naive_utc(a["ends_at"]) > lo)
    ]
    return f"during: {'; '.join(found)}" if found else ""
