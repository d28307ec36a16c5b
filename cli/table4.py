"""``dtwinseg table4``: the paper's Table 4 ablations, each row a config (recipes/ablations/table4.yaml).

See workflows/table4.py. Heavy imports stay inside the command body so ``dtwinseg --help`` is instant.
"""

from __future__ import annotations

from pathlib import Path

import typer
from dtwinseg.cli.options import progress_option


def table4(
    dataset: str = typer.Argument(..., help="DATASET_SPEC NAME:ROOT:SPLIT, e.g. reasonseg:/data/ReasonSeg:val "
                                  "(the paper's) or synthetic:runs/demo/data:test."),
    out: Path = typer.Option(..., "--out", help="Folder: dt_cache/, rows/<id>/ eval runs, table4.md, "
                             "table4.json; a rerun resumes."),
    manifest: Path = typer.Option(None, "--manifest", help="Rows to run [default: recipes/ablations/table4.yaml]."),
    rows: str = typer.Option(None, "--rows", help="Comma-separated row ids (default: all)."),
    checkpoint: str = typer.Option(None, "--checkpoint", "-c", help="Reasoner of the perception rows instead "
                                   "of the manifest's (a model folder, package:..., openai:MODEL, hf:ORG/NAME)."),
    reasoning_config: Path = typer.Option(None, "--reasoning-config", help="ReasoningConfig YAML of the "
                                          "perception rows' reasoner (endpoint, generation, spatial text)."),
    oracle_masks: bool = typer.Option(False, "--oracle-masks", help="Ground-truth instances instead of SAM "
                                      "(no checkpoint needed; synthetic data ships them)."),
    no_vlm: bool = typer.Option(False, "--no-vlm", help="No VLM: granularity from the dataset's tag, semantics "
                                "from the instances (the VLM rows then differ only in name)."),
    oracle_only: bool = typer.Option(False, "--oracle-only", help="No reasoner: report only each perception "
                                     "row's oracle bound (best union of its twins' objects)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N samples."),
    progress: bool = progress_option("Show progress bars."),
) -> None:
    """Build and evaluate Table 4's rows and print the table (gIoU, cIoU, oracle bound, paper numbers)."""
    from dtwinseg.workflows.table4 import DEFAULT_MANIFEST, run_table4

    result = run_table4(dataset, out, manifest or DEFAULT_MANIFEST,
                        rows=[r.strip() for r in rows.split(",") if r.strip()] if rows else None,
                        checkpoint=checkpoint, reasoning_config=str(reasoning_config) if reasoning_config else None,
                        oracle_masks=oracle_masks, no_vlm=no_vlm, oracle_only=oracle_only, limit=limit,
                        progress=progress,
                        log=lambda s: typer.echo(s, err=True))
    typer.echo(result["markdown"])


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command("table4")(table4)
