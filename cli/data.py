"""``dtwinseg data ...``: look at datasets before using them. See cli/main.py.

Heavy imports (readers, numpy, OpenCV) happen inside the command bodies so ``--help`` is instant.
"""

from __future__ import annotations

import json

import typer
from dtwinseg.cli.options import progress_option, strict_option

data_app = typer.Typer(
    name="data",
    help="Inspect datasets named by a DATASET_SPEC (NAME:ROOT:SPLIT), e.g. reasonseg:/data/ReasonSeg:val.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@data_app.command("stats")
def stats(
    dataset_spec: str = typer.Argument(..., metavar="DATASET_SPEC",
                                       help="NAME:ROOT:SPLIT with NAME one of reasonseg, synthetic, llmseg40k, "
                                            "refcoco, refcoco+, refcocog; e.g. reasonseg:/data/ReasonSeg:test."),
    strict: bool = strict_option(True),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
    progress: bool = progress_option("Show a progress bar (on stderr)."),
) -> None:
    """Count samples, short/long queries, empty ground truths, tags and skipped files of one split.

    Reads every sample and draws / decodes every mask once, so a malformed file is found here.
    """
    from dtwinseg.data_builders.registry import open_dataset
    from dtwinseg.data_builders.stats import summarise
    from rich.console import Console
    from rich.markup import escape

    from dtwinseg.io import DataError

    err = Console(stderr=True)
    try:
        ds = open_dataset(dataset_spec, strict=strict)
        summary = summarise(_with_progress(ds, progress and not as_json, err), ds)
    except (DataError, ValueError) as e:
        hint = " (use --lenient to skip malformed files and count them)" if strict and isinstance(e, DataError) \
            else ""
        err.print(f"[red]error:[/red] {escape(' '.join(str(e).split()))}{hint}", markup=True, highlight=False,
                  soft_wrap=True)
        raise typer.Exit(2) from None
    summary = {"spec": dataset_spec, **summary}
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_tables(summary, Console())


def _with_progress(ds, enabled: bool, console):  # noqa: ANN001, ANN202 - any registry Dataset
    from dtwinseg.runtime import progress

    yield from progress(ds, f"reading {ds.name}:{ds.split}", enabled, len(ds), console=console, transient=True)


def _print_tables(summary: dict, console) -> None:  # noqa: ANN001
    from rich.table import Table

    counts = Table(title=f"{summary['spec']}", show_header=True)
    counts.add_column("what")
    counts.add_column("count", justify="right")
    for key in ("samples", "short", "long", "empty_ground_truth", "with_ignore_region", "with_instances", "skipped"):
        counts.add_row(key.replace("_", " "), str(summary[key]))
    counts.add_row("mean target area", f"{summary['mean_target_area_pct']:.2f}%")
    console.print(counts)
    for key, title in (("dimensions", "dimension tags"), ("granularity", "granularity tags")):
        table = Table(title=title)
        table.add_column("tag")
        table.add_column("samples", justify="right")
        for tag, n in summary[key].items():
            table.add_row(tag, str(n))
        console.print(table)
    if summary["skipped_files"]:
        table = Table(title="skipped files")
        table.add_column("file", overflow="fold")
        table.add_column("reason", overflow="fold")
        for row in summary["skipped_files"]:
            table.add_row(row["file"], row["reason"])
        console.print(table)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.add_typer(data_app, name="data")
