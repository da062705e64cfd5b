"""The ``telltale`` command line: simulate, ingest, inspect the warehouse, run the demo."""

from __future__ import annotations

import datetime as dt
import faulthandler
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

import analysis
import shadow
import warehouse
from app.alerts_cli import alerts_app
from app.attribution import DESIGNS
from app.attribution import attribute as run_attribution
from app.demo import DemoSettings, run_demo
from app.demo import headline as demo_headline
from app.options import WarehouseUrl
from app.report_cli import report_app
from app.serve import app_command, serve
from app.shadow_cli import shadow_app
from ingest import (
    EventSink,
    IngestError,
    IngestSettings,
    KafkaIngest,
    Scenario,
    backfill,
    produce_to_kafka,
    write_files,
)

__all__ = ["app", "main"]

console = Console(stderr=True)
# Summary tables are wide: do not squeeze them into 80 columns when output is piped.
out = Console(width=None if sys.stdout.isatty() else 160)

app = typer.Typer(
    help="Telltale: did the new model make things better or worse for real users, and why?",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
warehouse_app = typer.Typer(help="Create, inspect and describe the ClickHouse warehouse.")
app.add_typer(warehouse_app, name="warehouse")
app.add_typer(shadow_app, name="shadow")
app.add_typer(alerts_app, name="alerts")
app.add_typer(report_app, name="report")
app.command("app")(app_command)
annotate_app = typer.Typer(
    help="Record product changes (UI releases, holidays, incidents, rollouts): the waterfall "
    "separates them from the model's effect."
)
app.add_typer(annotate_app, name="annotate")


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


def _open(url: str | None) -> warehouse.Warehouse:
    try:
        wh = warehouse.connect(url)
        warehouse.migrate(wh)
    except warehouse.WarehouseError as e:
        raise _fail(str(e)) from None
    return wh


def _print_frame(frame: pl.DataFrame, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for name, dtype in frame.schema.items():
        table.add_column(name, justify="right" if dtype.is_numeric() else "left")
    for row in frame.iter_rows():
        table.add_row(*(_cell(v) for v in row))
    out.print(table)


def _daily_table(frame: pl.DataFrame) -> pl.DataFrame:
    """The daily summary with short headers and rates as percentages, to fit a terminal."""
    pct = ("rating_rate", "thumbs_down_rate", "retry_rate", "refusal_rate")
    return frame.with_columns((pl.col(c) * 100).round(2) for c in pct).rename(
        {
            "model_version": "model",
            "rating_rate": "rated %",
            "thumbs_down_rate": "down %",
            "retry_rate": "retry %",
            "refusal_rate": "refusal %",
            "mean_completion_tokens": "tokens",
            "latency_p50_ms": "p50 ms",
            "turns_per_session": "turns",
        }
    )


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.4g}"
    return str(value)


@app.callback()
def _configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def simulate(
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the events file and truth.json.")
    ] = Path(".telltale/simulated"),
    scenario: Annotated[
        Path | None,
        typer.Option("--scenario", "-s", help="Scenario TOML (default: the built-in scenario)."),
    ] = None,
    days: Annotated[int | None, typer.Option(help="Override the scenario's length.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the scenario's seed.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl.gz, jsonl or parquet.")] = "jsonl.gz",
    kafka: Annotated[
        str | None,
        typer.Option(
            "--kafka",
            help="Produce to this Kafka bootstrap server instead of writing files "
            "(topics from TELLTALE_INGEST_TOPICS).",
        ),
    ] = None,
) -> None:
    """Simulate product traffic with known, planted effects (rollout, population shift, UI change).

    Writes the events and a ground-truth manifest (truth.json) of every planted effect, or
    produces the events to Kafka. The same seed always gives the same events.

    [bold]Examples[/]

      telltale simulate --days 7 --out /tmp/week

      telltale simulate --scenario my.toml --kafka 127.0.0.1:9092
    """
    sc = Scenario.load(scenario) if scenario else Scenario.default()
    if days is not None:
        sc = sc.evolve(days=days)
    if kafka:
        topics = _topic_map(IngestSettings().topics)
        counts = produce_to_kafka(sc, kafka, topics, seed=seed, progress=True)
        console.print(f"produced {sum(counts.values()):,} events to {kafka}: {counts}")
        return
    if fmt not in ("jsonl.gz", "jsonl", "parquet"):
        raise _fail(f"--format must be jsonl.gz, jsonl or parquet, not {fmt!r}")
    result = write_files(sc, out_dir, seed=seed, fmt=fmt, progress=True)  # type: ignore[arg-type]
    console.print(str(result))


def _topic_map(topics: list[str]) -> dict[str, str]:
    """Event type -> topic, by the topic names' suffixes (responses, feedback, ...)."""
    by_suffix = {t.rsplit(".", 1)[-1]: t for t in topics}
    wanted = {
        "response": "responses",
        "feedback": "feedback",
        "retry": "retries",
        "session_start": "sessions",
        "session_end": "sessions",
    }
    missing = sorted({s for s in wanted.values() if s not in by_suffix})
    if missing:
        raise _fail(f"TELLTALE_INGEST_TOPICS has no topic ending in {missing}")
    return {kind: by_suffix[suffix] for kind, suffix in wanted.items()}


@app.command()
def ingest(
    from_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--from-file",
            "-f",
            help="Backfill from JSONL, JSONL.gz or Parquet files, or a directory of them, "
            "instead of Kafka (repeatable).",
        ),
    ] = None,
    url: WarehouseUrl = None,
    bootstrap: Annotated[
        str | None,
        typer.Option(
            "--bootstrap", help="Kafka bootstrap servers (TELLTALE_INGEST_BOOTSTRAP_SERVERS)."
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="Consumer group (TELLTALE_INGEST_GROUP_ID).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT.")
    ] = None,
) -> None:
    """Ingest events into the warehouse, each counted exactly once.

    Without --from-file: join the Kafka consumer group and run until SIGTERM/SIGINT (then flush,
    commit and exit 0). Invalid events go to the dead_letters table (and the dead-letter topic)
    with the reason. Re-running a backfill inserts nothing twice.

    [bold]Examples[/]

      telltale ingest --from-file .telltale/simulated

      telltale ingest --bootstrap kafka:9092 --group telltale-ingest
    """
    logging.getLogger("telltale").setLevel(logging.INFO)
    with _open(url) as wh:
        sink = EventSink(wh)
        try:
            if from_file:
                metrics = backfill(sink, _expand(from_file), progress=True)
            else:
                overrides = {
                    k: v
                    for k, v in {
                        "bootstrap_servers": bootstrap,
                        "group_id": group,
                        "metrics_port": metrics_port,
                    }.items()
                    if v is not None
                }
                runner = KafkaIngest(sink, IngestSettings(**overrides))
                runner.run()
                metrics = runner.metrics
        except (IngestError, warehouse.WarehouseError) as e:
            raise _fail(str(e)) from None
        console.print(
            f"ingested {metrics.total_events:,} events; {metrics.total_dead:,} dead letters; "
            f"{metrics.total_duplicates:,} duplicates dropped in-batch"
        )


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for its event files, in name (= time) order."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(
                sorted(f for f in p.iterdir() if f.name.endswith((".jsonl", ".gz", ".parquet")))
            )
        else:
            out.append(p)
    return out


@warehouse_app.command("migrate")
def warehouse_migrate(url: WarehouseUrl = None) -> None:
    """Create or upgrade the warehouse schema (idempotent)."""
    try:
        with warehouse.connect(url) as wh:
            applied = warehouse.migrate(wh)
    except warehouse.WarehouseError as e:
        raise _fail(str(e)) from None
    console.print(f"applied migrations {applied}" if applied else "schema is up to date")


@warehouse_app.command("ddl")
def warehouse_ddl(
    cluster: Annotated[
        str | None,
        typer.Option(help="Emit ReplicatedMergeTree + Distributed DDL for this cluster name."),
    ] = None,
    database: Annotated[str, typer.Option(help="Database name.")] = "default",
) -> None:
    """Print the schema's DDL, every migration in order, for review or to apply on a ClickHouse
    cluster by hand (``telltale`` applies it itself on first use: ``warehouse.migrate``)."""
    for m in warehouse.MIGRATIONS:
        out.print(f"-- migration {m.version}: {m.description}\n", highlight=False, soft_wrap=True)
        for statement in m.statements(cluster, database):
            out.print(statement + ";\n", highlight=False, soft_wrap=True)


@warehouse_app.command("rebuild-rollups")
def warehouse_rebuild_rollups(url: WarehouseUrl = None) -> None:
    """Recompute the hourly rollups from the raw tables.

    Feedback or a retry that arrived before its response is rolled up under an empty model
    version; a rebuild attributes it to the response's model version and segment. Stop ingest
    first (the rollups are emptied, then refilled).
    """
    with _open(url) as wh:
        try:
            warehouse.rebuild_rollups(wh)
        except warehouse.WarehouseError as e:
            raise _fail(str(e)) from None
    console.print("rollups rebuilt from the raw tables")


@warehouse_app.command("stats")
def warehouse_stats(url: WarehouseUrl = None) -> None:
    """Events per table, dead letters by kind, and the daily summary."""
    with _open(url) as wh:
        _print_frame(warehouse.event_counts(wh), "events")
        _print_frame(warehouse.dead_letter_counts(wh), "dead letters")
        _print_frame(
            _daily_table(warehouse.daily_summary(wh)), "daily summary (from the hourly rollup)"
        )


@annotate_app.command("add")
def annotate_add(
    kind: Annotated[str, typer.Option(help=f"One of: {', '.join(analysis.ANNOTATION_KINDS)}.")],
    title: Annotated[str, typer.Option(help="What changed, as people call it.")],
    starts: Annotated[
        dt.datetime,
        typer.Option(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"], help="When it started (UTC)."),
    ],
    ends: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M"],
            help="When it ended (UTC); leave out for a change that stays (a release).",
        ),
    ] = None,
    model_version: Annotated[str, typer.Option(help="For a model rollout: the version.")] = "",
    annotation_id: Annotated[
        str | None,
        typer.Option("--id", help="Stable id; recording the same id again replaces it."),
    ] = None,
    url: WarehouseUrl = None,
) -> None:
    """Record one product change.

    [bold]Examples[/]

      telltale annotate add --kind ui_release --title "rating UI v2" --starts 2026-10-13

      telltale annotate add --kind holiday --title "Labor Day" --starts 2026-09-07 \\
        --ends 2026-09-08
    """
    if kind not in analysis.ANNOTATION_KINDS:
        raise _fail(f"--kind must be one of {', '.join(analysis.ANNOTATION_KINDS)}, not {kind!r}")
    if ends is not None and ends <= starts:
        raise _fail("--ends must come after --starts")
    frame = pl.DataFrame(
        {
            "id": [annotation_id or f"{kind}:{starts:%Y-%m-%dT%H:%M}:{title}"],
            "kind": [kind],
            "title": [title],
            "starts_at": [starts.replace(tzinfo=dt.UTC)],
            "ends_at": [ends.replace(tzinfo=dt.UTC) if ends else None],
            "model_version": [model_version],
        },
        schema_overrides={"ends_at": pl.Datetime("us", "UTC")},
    )
    with _open(url) as wh:
        try:
            warehouse.record_annotations(wh, frame)
        except warehouse.WarehouseError as e:
            raise _fail(str(e)) from None
    console.print(f"recorded {kind} {title!r} from {starts:%Y-%m-%d %H:%M} UTC")


@annotate_app.command("list")
def annotate_list(
    since: Annotated[
        dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="From this day.")
    ] = dt.datetime(2000, 1, 1),
    until: Annotated[
        dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Until this day.")
    ] = dt.datetime(2100, 1, 1),
    url: WarehouseUrl = None,
) -> None:
    """The recorded product changes that overlap a period, oldest first."""
    with _open(url) as wh:
        _print_frame(warehouse.annotations(wh, since=since, until=until), "annotations")


@app.command()
def attribute(
    metric: Annotated[str, typer.Option(help="A registered metric, e.g. thumbs_down_rate.")],
    model_version: Annotated[str, typer.Option(help="The candidate model version.")],
    baseline: Annotated[str, typer.Option(help="The model version it is compared with.")],
    since: Annotated[dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="First day.")],
    until: Annotated[
        dt.datetime, typer.Option(formats=["%Y-%m-%d"], help="Day after the last one.")
    ],
    design: Annotated[
        str,
        typer.Option(
            help="concurrent (both versions serve at once), switchover (the waterfall across "
            "--at), population (mix vs rates across --at), retention (per user; the default "
            "for retention_d7)."
        ),
    ] = "concurrent",
    at: Annotated[
        dt.datetime | None,
        typer.Option(
            formats=["%Y-%m-%d"],
            help="Switchover/population: the boundary (the switch date); the windows are "
            "--window-days before and after it.",
        ),
    ] = None,
    window_days: Annotated[int, typer.Option(help="Days on each side of --at.")] = 7,
    segment: Annotated[
        list[str] | None,
        typer.Option(
            help="Segment column (repeatable): locale, platform, intent, cohort. Concurrent: "
            "per-segment effects; switchover/population: the mix (default: all four)."
        ),
    ] = None,
    expected_share: Annotated[
        float | None,
        typer.Option(help="Intended share of users on the candidate, for the sample-ratio check."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, markdown, html or json.")] = "text",
    url: WarehouseUrl = None,
) -> None:
    """How much of a metric's change is the model, and how much is something else.

    [bold]concurrent[/]: candidate vs baseline served at once (a staged rollout or an A/B),
    with fixed effects for the hour and each segment, standard errors clustered by user, a
    sample-ratio check, per-segment effects with Benjamini-Hochberg / Holm adjustment. For
    session length and turns, a verbosity check says how much of the effect is longer answers.

    [bold]switchover[/]: the waterfall of the change from the week before --at to the week
    after: seasonality + population shift + model + annotated changes (UI releases, holidays;
    see `telltale annotate`) + unexplained, fitted on the hourly rollup from --since to --until.

    [bold]population[/]: the same change split into segment mix and within-segment rates.

    [bold]Examples[/]

      telltale attribute --metric thumbs_down_rate \\
        --model-version assistant-2026-09 --baseline assistant-2026-08 \\
        --since 2026-09-08 --until 2026-09-15 --segment locale --expected-share 0.05

      telltale attribute --metric thumbs_down_rate --design switchover --at 2026-10-06 \\
        --model-version assistant-2026-09 --baseline assistant-2026-08 \\
        --since 2026-09-01 --until 2026-10-20
    """
    if fmt not in ("text", "markdown", "html", "json"):
        raise _fail(f"--format must be text, markdown, html or json, not {fmt!r}")
    if design not in DESIGNS:
        raise _fail(f"--design must be one of {', '.join(DESIGNS)}, not {design!r}")
    try:
        with _open(url) as wh:
            found = run_attribution(
                wh,
                metric=metric,
                candidate=model_version,
                baseline=baseline,
                since=since,
                until=until,
                design=design,  # type: ignore[arg-type]
                at=at,
                window_days=window_days,
                segments=list(segment or []),
                expected_share=expected_share,
            )
    except (analysis.AnalysisError, warehouse.WarehouseError) as e:
        raise _fail(str(e)) from None
    if fmt == "json":
        out.print_json(data=found.to_dict())
        return
    out.print(found.summary(fmt), markup=False, highlight=False, soft_wrap=True)
    by_segment = getattr(found.result, "by_segment", None)
    if (
        fmt == "text"
        and isinstance(found.result, analysis.ConcurrentComparison)
        and by_segment.height
    ):
        _print_frame(by_segment, "effects by segment (p adjusted: BH, Holm)")


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="Days of traffic to simulate.")] = 60,
    users: Annotated[int, typer.Option(help="Simulated users at the start.")] = 8000,
    seed: Annotated[int, typer.Option(help="Simulation seed.")] = 7,
    candidate_url: Annotated[
        str | None,
        typer.Option(
            help="Replay on this OpenAI-compatible endpoint (ending in /v1) instead of the "
            "simulated candidate."
        ),
    ] = None,
    candidate_model: Annotated[
        str | None, typer.Option(help="The model name the endpoint serves.")
    ] = None,
    open_app: Annotated[
        bool, typer.Option("--app/--no-app", help="Open the Streamlit app at the end.")
    ] = True,
    port: Annotated[int, typer.Option(help="The app's port on 127.0.0.1.")] = 8501,
    url: WarehouseUrl = None,
) -> None:
    """Two months of simulated product traffic through every part of Telltale, then the app.

    Simulates ~60 days (a staged A/B of a new model, its full switch, an influx of new users, a
    UI release, a holiday; every effect planted and written down), ingests them through the
    real ingest path into the embedded warehouse (./.telltale/, no server needed), replays a
    sample of production prompts on a simulated candidate over HTTP (or --candidate-url),
    attributes every metric across the switch, runs the regression alerts, writes the weekly
    release review to .telltale/reports/, and opens the app on 127.0.0.1. Running it again
    stores nothing twice.
    """
    if candidate_url and not candidate_model:
        raise _fail("--candidate-url needs --candidate-model (the name the endpoint serves)")
    settings = DemoSettings(
        days=days,
        users=users,
        seed=seed,
        candidate_url=candidate_url,
        candidate_model=candidate_model,
    )
    started = time.perf_counter()
    with _open(url) as wh:
        try:
            found = run_demo(wh, settings, console)
        except (IngestError, warehouse.WarehouseError, shadow.ShadowError) as e:
            raise _fail(str(e)) from None
    setup = time.perf_counter() - started
    _print_frame(demo_headline(found), "the candidate's effect at full exposure, across the switch")
    if "comparison" in found["shadow"]:
        out.print(
            found["shadow"]["comparison"].summary("text"),
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(found["alerts"], highlight=False)
    html, markdown = found["report"]
    console.print(f"weekly release review: {html} and {markdown}")
    console.print(f"[bold]set-up took {setup:.0f} s[/]")
    if open_app:
        console.print(f"opening the app on http://127.0.0.1:{port} (Ctrl-C to stop)")
        raise typer.Exit(serve(url, port=port))


def main() -> None:
    """Entry point of the ``telltale`` console script."""
    # `kill -USR1 PID` prints every thread's stack: how to see what a stuck consumer is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
