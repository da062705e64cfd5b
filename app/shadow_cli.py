"""``telltale shadow``: replay sampled production traffic on a candidate model, and report."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import shadow
import warehouse

__all__ = ["shadow_app"]

console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 160)

shadow_app = typer.Typer(
    help="Replay sampled production traffic on a candidate model before it ships, and compare.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

EXIT_STOPPED = 3
"""Exit status of a run stopped early (a signal or the budget): resume it with --resume."""

_DATES = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]

Warehouse = Annotated[
    str | None,
    typer.Option(
        "--warehouse",
        "-w",
        envvar="TELLTALE_WAREHOUSE_URL",
        help="chdb://PATH (embedded, default ./.telltale/warehouse) or http(s)://host:port.",
        show_default=False,
    ),
]


def _error(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


def _warehouse(url: str | None) -> warehouse.Warehouse:
    try:
        wh = warehouse.connect(url)
        warehouse.migrate(wh)
    except warehouse.WarehouseError as e:
        raise _error(str(e)) from None
    return wh


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)


def _segments(values: list[str]) -> dict[str, list[str]]:
    """``intent=coding,qa`` options as ``{"intent": ["coding", "qa"]}``."""
    out_: dict[str, list[str]] = {}
    for v in values:
        column, sep, allowed = v.partition("=")
        if not sep or not allowed:
            raise _error(f"--segment takes COLUMN=VALUE[,VALUE...], not {v!r}")
        out_.setdefault(column.strip(), []).extend(a.strip() for a in allowed.split(","))
    return out_


def _engine_args(values: list[str]) -> dict[str, Any]:
    """``key=value`` options for vllm.LLM; values are read as JSON when they parse."""
    args: dict[str, Any] = {}
    for v in values:
        key, sep, raw = v.partition("=")
        if not sep:
            raise _error(f"--engine-arg takes KEY=VALUE, not {v!r}")
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError:
            args[key] = raw
    return args


@shadow_app.command("run")
def run(
    candidate_url: Annotated[
        list[str] | None,
        typer.Option(help="Candidate's OpenAI-compatible base URL, ending in /v1 (repeatable)."),
    ] = None,
    candidate_model: Annotated[
        str | None, typer.Option(help="Model name the candidate endpoint serves.")
    ] = None,
    baseline_url: Annotated[
        list[str] | None,
        typer.Option(
            help="Endpoint serving the production model, replayed as the noise floor "
            "(arm baseline_replay; repeatable)."
        ),
    ] = None,
    baseline_model: Annotated[
        str | None, typer.Option(help="Model name of the baseline endpoint.")
    ] = None,
    in_process: Annotated[
        str | None,
        typer.Option(
            help="Run the candidate in this process with vllm.LLM from this model path "
            "instead of over HTTP (pip install 'telltale\\[vllm]')."
        ),
    ] = None,
    engine_arg: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE for vllm.LLM with --in-process, e.g. dtype=float32."),
    ] = None,
    since: Annotated[
        dt.datetime | None,
        typer.Option(formats=_DATES, metavar="DATE", help="Sample from this time on (UTC)."),
    ] = None,
    until: Annotated[
        dt.datetime | None,
        typer.Option(formats=_DATES, metavar="DATE", help="... up to this time (UTC)."),
    ] = None,
    model_version: Annotated[
        list[str] | None, typer.Option(help="Production model version(s) to sample.")
    ] = None,
    per_stratum: Annotated[
        int | None, typer.Option(help="Samples per stratum (default 50 unless --total).")
    ] = None,
    total: Annotated[
        int | None, typer.Option(help="Total samples, split in proportion to the strata.")
    ] = None,
    stratify_by: Annotated[
        str, typer.Option(help="Stratum column: intent, locale, platform, cohort, variant.")
    ] = "intent",
    segment: Annotated[
        list[str] | None,
        typer.Option(help="Only these segment values, e.g. locale=en-US,de-DE (repeatable)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at most.")] = None,
    rate: Annotated[
        float | None, typer.Option(help="Requests per second (default: unlimited).")
    ] = None,
    burstiness: Annotated[
        float | None, typer.Option(help="Arrival shape at --rate: 1 Poisson, < 1 bursty.")
    ] = None,
    max_requests: Annotated[
        int | None, typer.Option(help="Budget: stop cleanly after this many requests.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Budget: stop cleanly after this many tokens.")
    ] = None,
    max_output_tokens: Annotated[
        int | None, typer.Option(help="Cap each request's max_tokens (production's value).")
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="Replace every request's temperature (0: greedy; default: production's)."
        ),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="Run id (default: a new one, printed at the start).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue run --run-id: same sample, only what is not stored yet is sent."
        ),
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option(help="With --resume, also resend samples stored as error/timeout.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    url: Warehouse = None,
) -> None:
    """Replay sampled production requests on a candidate model and store every result.

    Samples responses of --model-version between --since and --until (stratified, deduplicated by
    prompt, opted-out users excluded, PII redacted before anything is sent), replays each on the
    candidate (and on --baseline-url for the noise floor), and writes results to the warehouse
    under a run id as they arrive. Ctrl-C (or SIGTERM) stops cleanly: requests in flight finish,
    the run is marked cancelled and exits with status 3; the same command with --resume sends only
    what is missing. Settings can also come from TELLTALE_SHADOW_* variables (API keys:
    TELLTALE_SHADOW_CANDIDATE_API_KEY, TELLTALE_SHADOW_BASELINE_API_KEY).

    [bold]Examples[/]

      telltale shadow run --candidate-url http://gpu1:8000/v1 --candidate-url http://gpu2:8000/v1 \\
        --candidate-model assistant-2026-10 --since 2026-09-08 --until 2026-09-15 \\
        --model-version assistant-2026-08 --per-stratum 200 --concurrency 64 --run-id oct-rc1

      telltale shadow run --run-id oct-rc1 --resume

      telltale shadow report oct-rc1 --format markdown
    """
    flags = {
        "candidate_urls": candidate_url or None,
        "candidate_model": candidate_model,
        "baseline_urls": baseline_url or None,
        "baseline_model": baseline_model,
        "concurrency": concurrency,
        "rate": rate,
        "burstiness": burstiness,
        "max_requests": max_requests,
        "max_tokens": max_tokens,
        "max_output_tokens": max_output_tokens,
        "temperature": temperature,
    }
    flags = {k: v for k, v in flags.items() if v is not None}
    with _warehouse(url) as wh:
        if resume:
            if not run_id:
                raise _error("--resume needs the --run-id of the run to continue")
            stored = warehouse.shadow_run(wh, run_id)
            if stored is None:
                raise _error(f"no run {run_id!r} in {wh.settings.url}: check --run-id")
            saved = json.loads(stored["settings_json"])
            spec = saved["sample"]
            fields = shadow.ShadowSettings.model_fields
            settings_args = {k: v for k, v in saved["runner"].items() if k in fields} | flags
        else:
            if since is None or until is None or not model_version:
                raise _error("say what to sample: --since, --until and --model-version")
            spec = {
                "since": _utc(since).isoformat(),  # type: ignore[union-attr]
                "until": _utc(until).isoformat(),  # type: ignore[union-attr]
                "model_versions": model_version,
                "per_stratum": per_stratum if per_stratum is not None or total else 50,
                "total": total,
                "stratify_by": stratify_by,
                "segment_filter": _segments(segment or []),
                "seed": seed,
            }
            settings_args = flags
        if in_process:
            settings_args.pop("candidate_urls", None)
            settings_args.setdefault("candidate_model", in_process)
        try:
            settings = shadow.ShadowSettings(**settings_args)
        except ValueError as e:
            raise _error(f"invalid settings: {e}") from None
        run_id = run_id or f"shadow-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        try:
            sample = shadow.sample_traffic(
                wh,
                since=dt.datetime.fromisoformat(spec["since"]),
                until=dt.datetime.fromisoformat(spec["until"]),
                model_versions=spec["model_versions"],
                per_stratum=spec["per_stratum"],
                total=spec["total"],
                stratify_by=spec["stratify_by"],
                segment_filter=spec["segment_filter"],
                seed=spec["seed"],
            )
            if not sample.samples:
                raise _error(
                    f"nothing to replay: no response of {spec['model_versions']} between "
                    f"{spec['since']} and {spec['until']} carries prompt text (or all were from "
                    "users who opted out)"
                )
            console.print(
                f"run [bold]{run_id}[/]: {len(sample.samples):,} samples in "
                f"{sample.strata.height} strata; {sample.redaction.total:,} PII items redacted",
                highlight=False,
            )
            local = (
                shadow.LLMTarget(
                    in_process, model=settings.candidate_model, **_engine_args(engine_arg or [])
                )
                if in_process
                else None
            )
            runner = shadow.ShadowRunner(
                wh, settings, targets=local and {"candidate": local}, progress=progress
            )
            try:
                summary = asyncio.run(
                    runner.run(
                        sample.samples,
                        run_id=run_id,
                        resume=resume,
                        retry_failed=retry_failed,
                        sample_spec=spec,
                    )
                )
            finally:
                if local is not None:
                    local.close()
        except shadow.ShadowError as e:
            raise _error(str(e)) from None
    out.print(summary.summary("text"), markup=False, highlight=False)
    if summary.status != "done":
        console.print(
            f"stopped early; continue with: telltale shadow run --run-id {run_id} --resume",
            highlight=False,
        )
        raise typer.Exit(EXIT_STOPPED)


@shadow_app.command("report")
def report(
    run_id: Annotated[str, typer.Argument(help="The run to report on.")],
    fmt: Annotated[str, typer.Option("--format", help="text, markdown, html or json.")] = "text",
    segment: Annotated[
        str | None,
        typer.Option(help="Also break the figures down by intent, locale, platform or cohort."),
    ] = None,
    prices: Annotated[
        Path | None,
        typer.Option(help="TOML price table adding to / replacing the bundled one (USD / 1M)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    url: Warehouse = None,
) -> None:
    """How the candidate compares with production on a run's samples.

    Per arm (and per --segment): output length vs production, refusals, errors and timeouts,
    TTFT / TPOT / latency percentiles, tokens and cost, expected-answer checks, judge win rates;
    with a baseline_replay arm, a difference counts as real only above the replay's own noise.

    [bold]Example[/]

      telltale shadow report oct-rc1 --format markdown --segment intent > review.md
    """
    if fmt not in ("text", "markdown", "html", "json"):
        raise _error(f"--format must be text, markdown, html or json, not {fmt!r}")
    with _warehouse(url) as wh:
        stored = warehouse.shadow_run(wh, run_id)
        if stored is None:
            raise _error(f"no run {run_id!r}: `telltale shadow runs` lists them")
        results = warehouse.shadow_results(wh, run_id)
        judgments = warehouse.shadow_judgments(wh, run_id)
    if not results.height:
        raise _error(f"run {run_id!r} has no stored results yet")
    try:
        comparison = shadow.compare_shadow(
            results,
            judgments if judgments.height else None,
            prices=shadow.load_prices(prices),
            segment=segment,
            seed=seed,
        )
    except shadow.ShadowError as e:
        raise _error(str(e)) from None
    if fmt == "json":
        out.print_json(
            data={
                "run": stored,
                "samples_compared": comparison.n_samples,
                "figures": comparison.to_frame().to_dicts(),
                "real_differences": comparison.real_differences().to_dicts(),
                "assumptions": list(comparison.assumptions),
                "warnings": list(comparison.warnings),
            },
            default=str,
        )
        return
    out.print(
        f"shadow run {run_id} ({stored['status']}, {stored['sample_size']:,} samples)",
        markup=False,
        highlight=False,
    )
    out.print(comparison.summary(fmt), markup=False, highlight=False, soft_wrap=True)


@shadow_app.command("runs")
def runs(url: Warehouse = None) -> None:
    """List shadow runs, newest first, with their status and stored results."""
    with _warehouse(url) as wh:
        frame = warehouse.shadow_runs(wh)
    table = Table(title="shadow runs", title_justify="left")
    for name in frame.columns:
        table.add_column(name)
    for row in frame.iter_rows():
        table.add_row(*(str(v) for v in row))
    out.print(table)
