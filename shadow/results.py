"""What shadow results share: estimates with bootstrap intervals, the resampling behind them, and
one way to print a table (the shadow package does not import ``analysis``)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np

__all__ = ["BOOTSTRAP_DRAWS", "Interval", "bootstrap_counts", "render_table"]

BOOTSTRAP_DRAWS = 2000
"""Default number of bootstrap resamples (percentile intervals are stable to ~0.5 pp by then)."""

_CHUNK_CELLS = 4_000_000  # resample rows per chunk x units: ~32 MB of int64 counts


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval (NaN where it could not be computed)."""

    value: float
    ci_low: float
    ci_high: float

    @classmethod
    def from_draws(cls, value: float, draws: np.ndarray, *, confidence: float) -> Self:
        """``value`` with the percentile interval of its bootstrap ``draws`` (NaNs ignored)."""
        finite = draws[np.isfinite(draws)]
        if finite.size == 0:
            return cls(float(value), math.nan, math.nan)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(finite, [tail, 100 - tail])
        return cls(float(value), float(low), float(high))

    @classmethod
    def missing(cls) -> Self:
        """No estimate (too little data)."""
        return cls(math.nan, math.nan, math.nan)

    @property
    def half_width(self) -> float:
        """Half the interval's width: the margin a difference must beat to be told from noise."""
        return (self.ci_high - self.ci_low) / 2

    def covers(self, x: float) -> bool:
        """Whether ``x`` lies inside the interval."""
        return self.ci_low <= x <= self.ci_high

    def format(self, spec: str = ".3g") -> str:
        """``value [low, high]``."""
        if math.isnan(self.value):
            return "-"
        return f"{self.value:{spec}} [{self.ci_low:{spec}}, {self.ci_high:{spec}}]"


def bootstrap_counts(
    n_units: int, draws: int, *, seed: int, chunk_cells: int = _CHUNK_CELLS
) -> Iterator[np.ndarray]:
    """How many times each of ``n_units`` is drawn in each of ``draws`` resamples with
    replacement, as ``(rows, n_units)`` integer matrices, a chunk at a time (the whole matrix
    can be large). Seeded: the same arguments give the same counts."""
    rng = np.random.default_rng(seed)
    rows = max(1, chunk_cells // max(n_units, 1))
    done = 0
    while done < draws:
        k = min(rows, draws - done)
        picks = rng.integers(0, n_units, size=(k, n_units))
        # one bincount over row-offset indices counts every row at once
        offsets = np.arange(k)[:, None] * n_units
        yield np.bincount((picks + offsets).ravel(), minlength=k * n_units).reshape(k, n_units)
        done += k


def render_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    notes: Sequence[str],
    fmt: str,
) -> str:
    """A titled table of already formatted cells, then notes, as ``text``, ``markdown`` or
    ``html``."""
    if fmt == "markdown":
        lines = [f"**{title}**", "", f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
        lines += [f"| {' | '.join(r)} |" for r in rows]
        return "\n".join([*lines, "", *(f"- {n}" for n in notes)]).rstrip()
    if fmt == "html":
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
        items = f"<ul>{''.join(f'<li>{esc(n)}</li>' for n in notes)}</ul>" if notes else ""
        return (
            f"<h3>{esc(title)}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{items}"
        )
    if fmt != "text":
        raise ValueError(f"fmt must be text, markdown or html, not {fmt!r}")
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, *notes])
