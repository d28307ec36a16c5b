"""``dtwinseg build-dt``: Digital Twins for a whole dataset, cached. See cli/main.py.

Heavy imports (torch, segment-anything, transformers) happen inside the command body so ``--help`` is
instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from dtwinseg.cli.options import progress_option, strict_option


def build_dt_command(
    dataset_spec: str = typer.Argument(..., metavar="DATASET_SPEC",
                                       help="NAME:ROOT:SPLIT, e.g. reasonseg:/data/ReasonSeg:val or "
                                            "synthetic:runs/demo/data:test."),
    config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False,
                                help="Perception YAML (recipes/perception/*.yaml): source sam|oracle, SAM "
                                     "checkpoint, proposal thresholds, VLM backend (key by env var name only)."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Cache root; twins go to OUT/<config hash>/twins/<sample id>.json."),
    shard: str = typer.Option("0/1", "--shard",
                              help="i/n: build only samples whose index is i modulo n (run n processes, "
                                   "e.g. one per GPU, with i = 0..n-1)."),
    vlm: str = typer.Option(None, "--vlm",
                            help="Override the config's VLM backend: none (proposals only, semantics filled "
                                 "later with --fill-semantics), openai, transformers."),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N samples of the split."),
    strict: bool = strict_option(True, skipped="malformed annotation files"),
    fill_semantics: bool = typer.Option(False, "--fill-semantics",
                                        help="Second pass: read the twins a --vlm none run cached and write "
                                             "twins with VLM semantics (needs a VLM backend)."),
    progress: bool = progress_option("Show the progress bar with ETA."),
    refill_fallbacks: bool = typer.Option(True, "--refill-fallbacks/--keep-fallbacks",
                                          help="Build again the cached twins whose VLM answers fell back "
                                               "(null content) so the VLM is asked again."),
) -> None:
    """Build one Digital Twin per sample (SAM or oracle masks, VLM granularity and semantics) into a cache.

    Resumable (finished samples are skipped), shardable (--shard i/n), and a failing sample is recorded
    in OUT/<hash>/failures.jsonl while the run goes on. Counts go to stdout and the manifest.
    """
    from dtwinseg.data_builders.build_dt import build_dt, parse_shard
    from rich.console import Console
    from rich.markup import escape

    from dtwinseg.io import DataError
    from dtwinseg.perception.builder import PerceptionConfig
    from dtwinseg.runtime import LockError

    err = Console(stderr=True)
    try:
        cfg = PerceptionConfig.from_yaml(config)
        if vlm is not None:
            if vlm not in ("none", "openai", "transformers"):
                raise ValueError(f"--vlm must be none, openai or transformers, got {vlm!r}")
            cfg.vlm.backend = vlm
        if fill_semantics and cfg.vlm.backend == "none":
            raise ValueError("--fill-semantics needs a VLM: set vlm.backend in the config or pass --vlm")
        cache, counts = build_dt(dataset_spec, cfg, out, shard=parse_shard(shard), limit=limit, strict=strict,
                                 fill_semantics=fill_semantics, progress=progress,
                                 refill_fallbacks=refill_fallbacks)
    except (DataError, ValueError, FileNotFoundError) as e:
        malformed_file = (isinstance(e, DataError) and not isinstance(e, LockError) and e.path
                          and e.path != str(config) and Path(e.path).is_file() and not _under(e.path, out))
        hint = " (use --lenient to skip malformed annotation files and count them)" if strict and malformed_file else ""
        err.print(f"[red]error:[/red] {escape(str(e))}{hint}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None  # bad input or config: the same exit code as every command
    typer.echo(json.dumps({"cache": str(cache.folder), **counts.to_dict()}, indent=2))
    if counts.failed:
        err.print(f"[yellow]{counts.failed} of {counts.samples} sample(s) failed: their ids and errors are listed in "
                  f"{escape(str(cache.failures_path))} (one JSON line each); a rerun retries them[/yellow]",
                  highlight=False, soft_wrap=True)
    err.print(escape(counts.summary()), highlight=False, soft_wrap=True)
    if counts.all_failed:
        raise typer.Exit(1)


def _under(path: str, folder: Path) -> bool:
    """True when ``path`` lies inside ``folder`` (an output file, not an input annotation)."""
    try:
        Path(path).resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command("build-dt")(build_dt_command)
