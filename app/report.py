"""The weekly release review as a document: per candidate model version, its gates, the
attribution of every metric's change, the segments that regressed, its shadow runs and example
answers, with the charts embedded as SVG (HTML and Markdown, readable offline)."""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import altair as alt
import polars as pl

import analysis
import warehouse
from app import charts
from app.review import Gate, ReleaseReview, review_release
from app.telemetry import daily_volume, metric_cells, metric_series, model_versions

__all__ = ["WeeklyReport", "parse_week", "weekly_report"]

_WEEK = re.compile(r"^(\d{4})-W(\d{1,2})$")
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } pre { white-space: pre-wrap; max-width: 480px; margin: 0; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.85em; }
"""


def parse_week(text: str) -> tuple[dt.datetime, dt.datetime]:
    """``2026-W41`` as its Monday 00:00 and the next Monday 00:00 (UTC, naive)."""
    match = _WEEK.match(text.strip())
    if not match:
        raise ValueError(f"a week looks like 2026-W41 (ISO year and week), not {text!r}")
    year, week = int(match.group(1)), int(match.group(2))
    try:
        monday = dt.date.fromisocalendar(year, week, 1)
    except ValueError:
        raise ValueError(f"{year} has no ISO week {week}") from None
    start = dt.datetime.combine(monday, dt.time())
    return start, start + dt.timedelta(days=7)


@dataclass(frozen=True)
class WeeklyReport:
    """One week's release review of every new model version, with the telemetry behind it."""

    week: str
    since: dt.datetime
    until: dt.datetime
    reviews: tuple[ReleaseReview, ...]
    telemetry: tuple[tuple[str, pl.DataFrame], ...]
    """(metric, daily series by model version over this week and the one before)."""
    annotations: pl.DataFrame
    note: str = ""

    def summary(self, fmt: str = "text") -> str:
        """The reviews' tables without charts, as ``text``, ``markdown`` or ``html``."""
        parts = [self._title(), *([self.note] if self.note else [])]
        parts += [r.summary(fmt) for r in self.reviews]
        return "\n\n".join(parts)

    def to_frame(self) -> pl.DataFrame:
        """Every review's gates, one row per candidate and gate."""
        frames = [r.to_frame().with_columns(candidate=pl.lit(r.candidate)) for r in self.reviews]
        return pl.concat(frames) if frames else pl.DataFrame()

    def html(self) -> str:
        """A standalone HTML page: the tables, then the charts as inline SVG."""
        body = [f"<h1>{html.escape(self._title())}</h1>"]
        if self.note:
            body.append(f"<p>{html.escape(self.note)}</p>")
        for review, figures in zip(self.reviews, self._review_svgs, strict=True):
            body.append(review.summary("html"))
            body += [_html_figure(title, svg) for title, svg in figures]
        body.append("<h2>Telemetry: this week and the one before, by model version</h2>")
        body += [_html_figure(title, svg) for title, svg in self._telemetry_svgs]
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self._title())}</title><style>{_STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>"
        )

    def markdown(self) -> str:
        """Markdown with the charts embedded as SVG data URIs."""
        parts = [f"# {self._title()}"]
        if self.note:
            parts.append(self.note)
        for review, figures in zip(self.reviews, self._review_svgs, strict=True):
            parts.append(review.summary("markdown"))
            parts += [_md_figure(title, svg) for title, svg in figures]
        parts.append("## Telemetry: this week and the one before, by model version")
        parts += [_md_figure(title, svg) for title, svg in self._telemetry_svgs]
        return "\n\n".join(parts) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``telltale-weekly-<week>.html`` and ``.md`` into ``out_dir``; their paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / f"telltale-weekly-{self.week}"
        html_path, md_path = stem.with_suffix(".html"), stem.with_suffix(".md")
        html_path.write_text(self.html())
        md_path.write_text(self.markdown())
        return html_path, md_path

    def review_charts(self, review: ReleaseReview) -> list[tuple[str, alt.TopLevelMixin]]:
        """The charts of one review: gates, each metric's waterfall and expectation, the
        segment heatmap, the judge's win rates per shadow run."""
        out: list[tuple[str, alt.TopLevelMixin]] = [
            ("gates", charts.gates_chart(review.to_frame()))
        ]
        for metric, w in review.waterfalls.items():
            out.append((f"{metric}: attribution", charts.waterfall_chart(w)))
            out.append((
                f"{metric}: observed vs expected without {review.candidate}",
                charts.counterfactual_chart(w, annotations=self.annotations),
            ))  # fmt: skip
        segments = review.effects.filter(pl.col("segment") != "all")
        if segments.filter(pl.col("relative").is_finite()).height:
            out.append(("segments", charts.segment_heatmap(segments, alpha=review.alpha)))
        for run in review.shadow_runs:
            if run.comparison is not None and run.comparison.judge is not None:
                j = run.comparison.judge
                rates = pl.DataFrame({
                    "label": ["win rate", "length-controlled win rate"],
                    "value": [j.win_rate.value, j.lc_win_rate.value],
                    "ci_low": [j.win_rate.ci_low, j.lc_win_rate.ci_low],
                    "ci_high": [j.win_rate.ci_high, j.lc_win_rate.ci_high],
                })  # fmt: skip
                out.append((f"shadow run {run.run_id}: judge", charts.win_rate_chart(rates)))
        return out

    def telemetry_charts(self) -> list[tuple[str, alt.TopLevelMixin]]:
        """One daily chart per metric, by model version, with the annotations."""
        return [
            (metric, charts.series_chart(series, annotations=self.annotations, y_title=metric,
                                         title=f"{metric} by day and model version"))
            for metric, series in self.telemetry
        ]  # fmt: skip

    @cached_property
    def _review_svgs(self) -> list[list[tuple[str, str]]]:
        return [[(t, charts.to_svg(c)) for t, c in self.review_charts(r)] for r in self.reviews]

    @cached_property
    def _telemetry_svgs(self) -> list[tuple[str, str]]:
        return [(t, charts.to_svg(c)) for t, c in self.telemetry_charts()]

    def _title(self) -> str:
        last = self.until - dt.timedelta(days=1)
        return f"Telltale weekly review {self.week} ({self.since:%Y-%m-%d}..{last:%Y-%m-%d})"


def _html_figure(title: str, svg: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(title)}</figcaption></figure>"


def _md_figure(title: str, svg: str) -> str:
    data = base64.b64encode(svg.encode()).decode()
    return f"![{title}](data:image/svg+xml;base64,{data})"


def weekly_report(
    wh: warehouse.Warehouse,
    week: str,
    *,
    gates: Sequence[Gate] | None = None,
    gates_source: str = "registry defaults",
    candidate: str | None = None,
    baseline: str | None = None,
    reviews: Sequence[ReleaseReview] | None = None,
    shadow_run_ids: Sequence[str] | None = None,
) -> WeeklyReport:
    """The review of ``week`` (``2026-W41``): every model version that served in it other than
    the baseline (``candidate`` alone if given) reviewed against the baseline (default: the
    oldest version that served this week or the week before). ``reviews`` already made for
    this week (the app's page has one) are used as they are. ``shadow_run_ids``: the shadow
    runs to show (default: each candidate's, see :func:`app.review.review_release`).
    """
    since, until = parse_week(week)
    before = since - dt.timedelta(days=7)
    daily = daily_volume(wh)
    around = model_versions(daily, since=before.date(), until=until.date())
    this_week = model_versions(daily, since=since.date(), until=until.date())
    baseline = baseline or (around[0] if around else None)
    candidates = [candidate] if candidate else [v for v in this_week if v != baseline]
    notes = warehouse.annotations(wh, since=before, until=until)
    note = ""
    if baseline is None:
        note = f"No model version served between {before:%Y-%m-%d} and {until:%Y-%m-%d}."
    elif not candidates:
        note = f"Only {baseline} served in {week}: no new model version to review."
    if reviews is None:
        reviews = [
            review_release(
                wh, candidate=c, baseline=baseline, since=since, until=until, gates=gates,
                gates_source=gates_source, shadow_run_ids=shadow_run_ids,
            )
            for c in candidates
            if baseline is not None
        ]  # fmt: skip
    telemetry = []
    for m in analysis.METRICS.values():
        if m.unit is analysis.Unit.USER:
            continue
        cells = metric_cells(wh, m.name, since=before, until=until)
        if cells.height:
            telemetry.append((m.name, metric_series(cells, m.name, granularity="day")))
    return WeeklyReport(week, since, until, tuple(reviews), tuple(telemetry), notes, note)
