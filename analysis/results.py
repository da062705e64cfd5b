"""What every analysis method shares: its input check, estimates with intervals, and one way to
print them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import polars as pl
from scipy import stats

from analysis.errors import InsufficientDataError

__all__ = ["Estimate", "complete_rows", "find_estimate", "render_summary", "require_columns"]


def require_columns(frame: pl.DataFrame, columns: Sequence[str]) -> None:
    """Fail with the missing names if ``frame`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InsufficientDataError(f"columns not in the frame: {missing}")


def complete_rows(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """The given columns of ``frame``, without rows missing any of them."""
    wanted = list(dict.fromkeys(columns))
    require_columns(frame, wanted)
    return frame.select(wanted).drop_nulls()


@dataclass(frozen=True)
class Estimate:
    """One estimated quantity with its uncertainty (``p_value`` is NaN where none is defined)."""

    term: str
    value: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float

    @classmethod
    def from_se(
        cls, term: str, value: float, se: float, *, confidence: float, df: float | None = None
    ) -> Self:
        """A symmetric interval and two-sided p-value: Student's t on ``df`` degrees of freedom,
        or the normal when ``df`` is None. The p-value is NaN when ``se`` is not positive."""
        # Not frozen distributions: freezing one formats its docstring, a cost per estimate.
        shape = () if df is None else (df,)
        dist = stats.norm if df is None else stats.t
        crit = float(dist.ppf(0.5 + confidence / 2, *shape))
        p = float(2 * dist.sf(abs(value / se), *shape)) if se > 0 else float("nan")
        return cls(term, float(value), float(se), value - crit * se, value + crit * se, p)


def find_estimate(estimates: Sequence[Estimate], term: str) -> Estimate:
    """The estimate of ``term``; the error lists the terms there are."""
    for e in estimates:
        if e.term == term:
            return e
    raise KeyError(f"no term {term!r}; terms: {[e.term for e in estimates]}")


def render_summary(
    header: str,
    estimates: Sequence[Estimate],
    assumptions: Sequence[str],
    warnings: Sequence[str],
    fmt: str,
) -> str:
    """A result as ``text``, ``markdown`` or ``html``: a header line, a table of estimates with
    their intervals, then what the method assumes and what to doubt."""
    rows = [
        (e.term, f"{e.value:.6g}", f"{e.se:.4g}", f"[{e.ci_low:.6g}, {e.ci_high:.6g}]",
         "-" if e.p_value != e.p_value else f"{e.p_value:.3g}")
        for e in estimates
    ]  # fmt: skip
    cols = ("term", "estimate", "std. error", "interval", "p")
    notes = [f"assumes: {a}" for a in assumptions] + [f"warning: {w}" for w in warnings]
    if fmt == "markdown":
        table = [f"| {' | '.join(cols)} |", f"|{'---|' * len(cols)}"]
        table += [f"| {' | '.join(r)} |" for r in rows]
        return "\n".join([f"**{header}**", "", *table, "", *(f"- {n}" for n in notes)])
    if fmt == "html":
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in r) + "</tr>" for r in rows)
        items = "".join(f"<li>{n}</li>" for n in notes)
        return (
            f"<p><strong>{header}</strong></p><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table><ul>{items}</ul>"
        )
    if fmt != "text":
        raise ValueError(f"fmt must be text, markdown or html, not {fmt!r}")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = [header, "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, *notes])
