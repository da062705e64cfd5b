"""``telltale report``: the weekly release review as HTML and Markdown files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import analysis
import shadow
import warehouse
from app.options import WarehouseUrl
from app.review import GateError, load_gates

__all__ = ["EXIT_GATE_FAILED", "report_app"]

console = Console(stderr=True)

EXIT_GATE_FAILED = 2
"""Exit status of ``report weekly --fail-on-gate`` when a gate failed."""

report_app = typer.Typer(
    help="Write the weekly release review (HTML and Markdown, charts embedded).",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _error(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


@report_app.command("weekly")
def weekly(
    week: Annotated[str, typer.Option(help="ISO week to review, e.g. 2026-W41.")],
    gates: Annotated[
        Path | None,
        typer.Option(
            help="Gates TOML ([gates.METRIC] owner, threshold, skip); default: the "
            "metrics registry's owners and thresholds."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for the report files.")] = Path(
        ".telltale/reports"
    ),
    candidate: Annotated[
        str | None,
        typer.Option(
            help="Review only this model version (default: every version that served "
            "this week, other than the baseline)."
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Compare with this version (default: the oldest that served this "
            "week or the week before)."
        ),
    ] = None,
    shadow_run: Annotated[
        list[str] | None,
        typer.Option(
            help="Shadow run to show (repeatable; default: the runs whose candidate model's name "
            "contains the candidate version)."
        ),
    ] = None,
    fail_on_gate: Annotated[
        bool, typer.Option(help=f"Exit with status {EXIT_GATE_FAILED} if any gate fails.")
    ] = False,
    url: WarehouseUrl = None,
) -> None:
    """Review every new model version of a week: gates, attribution, regressed segments,
    shadow runs and example answers, with the charts embedded (readable offline).

    The week under review is compared with the week before it. Writes
    OUT/telltale-weekly-WEEK.html and .md and prints each candidate's verdict.

    [bold]Examples[/]

      telltale report weekly --week 2026-W41

      telltale report weekly --week 2026-W41 --gates gates.toml --out /tmp/review --fail-on-gate
    """
    # imported here: charting costs half a second that every other command would pay
    from app.report import parse_week, weekly_report

    try:
        parse_week(week)
        gate_list = load_gates(gates)
    except (ValueError, GateError) as e:
        raise _error(str(e)) from None
    source = str(gates) if gates else "registry defaults"
    try:
        with warehouse.connect(url) as wh:
            warehouse.migrate(wh)
            report = weekly_report(wh, week, gates=gate_list, gates_source=source,
                                   candidate=candidate, baseline=baseline,
                                   shadow_run_ids=shadow_run or None)  # fmt: skip
    except (warehouse.WarehouseError, analysis.AnalysisError, shadow.ShadowError) as e:
        raise _error(str(e)) from None
    html_path, md_path = report.write(out)
    if report.note:
        console.print(report.note, highlight=False)
    for r in report.reviews:
        failed = [g.gate.metric for g in r.gates if g.outcome == "fail"]
        detail = f": failed {', '.join(failed)}" if failed else ""
        console.print(
            f"{r.candidate} vs {r.baseline}: {r.verdict.upper()}{detail}", highlight=False
        )
    console.print(f"wrote {html_path} and {md_path}", highlight=False, soft_wrap=True)
    if fail_on_gate and any(r.verdict == "fail" for r in report.reviews):
        raise typer.Exit(EXIT_GATE_FAILED)
