"""CLI commands of the evaluation area: eval, eval-merge, compare, publish (see cli/main.py)."""

from __future__ import annotations

from pathlib import Path

import typer
from dtwinseg.cli.options import format_option, progress_option, strict_option

CHECKPOINT_HELP = (
    "What to evaluate; repeat for several. Forms: a peft adapter folder (base model from its "
    "adapter_config.json), a local model folder, package:MODULE/sub/path, openai:MODEL (OpenAI-compatible "
    "API; base_url and key variable from the reasoning config), hf:ORG/NAME. Prefix NAME= to label it, "
    "e.g. sftdt=runs/sft/adapter."
)


def reasoning_base(reasoning_config: Path | None, format_from: str | None):  # noqa: ANN201 - a ReasoningConfig
    """The eval's ReasoningConfig: the YAML's (or the defaults), with ``format_from`` set from --format-from (a
    Hub id that is no local path: its format.json, downloaded or from the cache)."""
    from dtwinseg.base_models import is_hub_id
    from dtwinseg.config import load_config_yaml
    from dtwinseg.io import DataError
    from dtwinseg.reasoning import ReasoningConfig

    if format_from is None:
        return ReasoningConfig.from_yaml(reasoning_config) if reasoning_config else ReasoningConfig()
    if is_hub_id(format_from):
        from huggingface_hub import hf_hub_download

        try:
            format_from = hf_hub_download(format_from, "format.json")
        except Exception as e:  # noqa: BLE001 - offline and not cached, no such repository or file
            raise DataError(format_from, "--format-from", f"no format.json to read from the Hub "
                            f"({' '.join(str(e).split())[:200]})") from None
    data = load_config_yaml(reasoning_config) if reasoning_config else {}
    if isinstance(data.get("reasoning"), dict):
        data = data["reasoning"]
    return ReasoningConfig.from_dict({**data, "format_from": str(format_from)}, path=reasoning_config)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""

    @app.command("eval")
    def eval_cmd(
        dataset: str = typer.Argument(..., help="DATASET_SPEC NAME:ROOT:SPLIT, e.g. reasonseg:/data/ReasonSeg:test."),
        dt_cache: Path = typer.Option(..., "--dt-cache", help="DT cache built by `dtwinseg build-dt` (a cache "
                                      "root with one config folder, or the config folder itself)."),
        checkpoint: list[str] = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINT_HELP),
        out: Path = typer.Option(..., "--out", help="Run folder (runs/NAME); a rerun resumes it."),
        format_name: str | None = format_option(),
        reasoning_config: Path | None = typer.Option(None, "--reasoning-config", help="ReasoningConfig YAML "
                                                     "(generation settings, spatial config, API endpoint)."),
        format_from: str | None = typer.Option(None, "--format-from", help="Read the reasoning format from "
                                               "a format.json, a folder holding one (build-sft dataset, trained "
                                               "model or adapter) or a Hub repository ORG/NAME that holds one (a "
                                               "published model): the config's format_from."),
        shard: str | None = typer.Option(None, "--shard", help="I/N: evaluate every N-th sample starting at "
                                         "I. Default: RANK/WORLD_SIZE under torchrun / accelerate launch."),
        limit: int | None = typer.Option(None, "--limit", help="Only the first N samples of the dataset."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Samples per generation batch "
                                              "(default: the reasoning config's)."),
        worst: int = typer.Option(4, "--worst", help="Worst-case overlays per checkpoint in the report."),
        strict: bool = strict_option(True),
        wandb: bool = typer.Option(False, "--wandb", help="Log the table to wandb (WANDB_MODE=offline works "
                                   "without network)."),
        restart: bool = typer.Option(False, "--restart", help="Evaluate again from scratch the labels whose "
                                     "checkpoint (model, adapter, format, reasoning settings) changed since "
                                     "they were evaluated in this --out (default: refuse)."),
        retry_failed: bool = typer.Option(True, "--retry-failed/--no-retry-failed", help="On resume, re-run "
                                          "samples that failed with an error (API outage, missing or corrupt "
                                          "twin, unreadable input)."),
        progress: bool = progress_option("Show one progress bar per checkpoint (only local rank 0 draws under "
                                         "torchrun / accelerate)."),
    ) -> None:
        """Evaluate checkpoints on cached twins: predictions JSONL, metrics.json (gIoU/cIoU per split and
        dimension, oracle bound, parse failures), the same as a tidy metrics.csv, report.md with plots and
        the worst-case overlays (query, ids, IoU)."""
        from dtwinseg.runtime import quiet_third_party

        quiet_third_party()  # the same known third-party noise as train (loading adapters warns too)
        from dtwinseg.eval.checkpoints import parse_checkpoints
        from dtwinseg.eval.harness import EvalOptions, evaluate_shard, parse_shard

        from dtwinseg.io import DataError

        if wandb:
            import importlib.util

            if importlib.util.find_spec("wandb") is None:
                raise DataError(None, "--wandb", "wandb is not installed: pip install 'dtwinseg[wandb]'")
        base = reasoning_base(reasoning_config, format_from)
        if format_name:
            base = base.replace(format_name=format_name)
        cks = parse_checkpoints(list(checkpoint), base)
        opts = EvalOptions(limit=limit, shard=parse_shard(shard), batch_size=batch_size, worst_k=worst,
                           strict=strict, wandb=wandb, restart=restart, retry_failed=retry_failed,
                           progress=progress)
        result = evaluate_shard(dataset, dt_cache, cks, out, opts, log=typer.echo)
        if result.metrics is not None:
            from dtwinseg.eval.report import metrics_table

            typer.echo(metrics_table(result.metrics))
        if result.all_failed_labels:
            typer.echo(f"error: every sample failed for {', '.join(result.all_failed_labels)} (see the "
                       "summary above and the predictions' 'error' fields)", err=True)
            raise typer.Exit(1)

    @app.command("eval-merge")
    def eval_merge(
        run: Path = typer.Argument(..., help="Run folder whose shards finished (runs/NAME)."),
        partial: bool = typer.Option(False, "--partial", help="Merge the shards present even if some are "
                                     "missing."),
        worst: int = typer.Option(4, "--worst", help="Worst-case overlays per checkpoint."),
    ) -> None:
        """Merge the metric accumulators of a sharded run into metrics.json and write the report."""
        from dtwinseg.eval.harness import EvalOptions, merge_run
        from dtwinseg.eval.report import metrics_table

        metrics = merge_run(run, opts=EvalOptions(worst_k=worst), log=typer.echo, require_all=not partial)
        if metrics is None:
            raise typer.Exit(1)
        typer.echo(metrics_table(metrics))

    @app.command("compare")
    def compare_cmd(
        runs: list[Path] = typer.Argument(..., help="Run folders with a metrics.json."),
        out: Path | None = typer.Option(None, "--out", help="Where compare.md/.json/.png go (default: the "
                                        "parent of the first run)."),
    ) -> None:
        """One table (markdown + PNG) across runs, checkpoints and splits, with the paper's published
        numbers as reference rows where dataset and split match."""
        from dtwinseg.eval.compare import compare, markdown

        table = compare(runs, out or runs[0].parent)
        typer.echo(markdown(table))
        typer.echo(f"written: {(out or runs[0].parent) / 'compare.md'}")

    @app.command("publish")
    def publish_cmd(
        adapter_dir: Path = typer.Argument(..., metavar="MODEL_DIR", help="peft adapter folder "
                                           "(adapter_config.json + weights) or full model folder (config.json "
                                           "+ weights), e.g. the output_dir of `dtwinseg train`."),
        repo_id: str = typer.Option(..., "--repo-id", help="Hub repository ORG/NAME."),
        private: bool = typer.Option(False, "--private", help="Create the repository as private."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Only write the folder that would be uploaded."),
        metrics: Path | None = typer.Option(None, "--metrics", help="runs/X/metrics.json whose results go into "
                                            "the card's model-index."),
        checkpoint: str | None = typer.Option(None, "--checkpoint", help="Label of this adapter in the metrics "
                                              "file when it holds several."),
        base_model: str | None = typer.Option(None, "--base-model", help="Hub id of the base model when "
                                              "adapter_config.json records a local path."),
        data: str | None = typer.Option(None, "--data", help="Text for the card's Data section."),
        stage_dir: Path | None = typer.Option(None, "--stage-dir", help="Where to stage: DIR itself when it "
                                              "does not exist or is empty, else a new folder inside it (default: "
                                              "a new MODEL_DIR-publish-* folder next to the model). Nothing "
                                              "existing is ever deleted."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing repository revision."),
    ) -> None:
        """Publish an adapter or a full fine-tune with a model card (base model, recipe without secrets, data,
        eval results) to the Hub. The token is read from HF_TOKEN (or the huggingface-hub login) and never printed."""
        from dtwinseg.workflows.publish import PublishError, publish

        try:
            publish(adapter_dir, repo_id, private=private, dry_run=dry_run, metrics_path=metrics,
                    checkpoint=checkpoint, base_model=base_model, dataset_note=data, force=force,
                    stage_dir=stage_dir, log=typer.echo)
        except (PublishError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            typer.echo(f"error: {' '.join(str(e).split())}", err=True)
            raise typer.Exit(2) from None
