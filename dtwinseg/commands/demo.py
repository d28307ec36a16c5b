"""CLI commands of this area: ``dtwinseg synth`` (the synthetic benchmark) and ``dtwinseg demo``."""

from __future__ import annotations

from pathlib import Path

import typer


def synth(
    out: Path = typer.Option(..., "--out", help="Output folder; gets train/, val/, test/ in ReasonSeg format."),
    n_train: int = typer.Option(700, "--n-train", help="Samples in the train split."),
    n_val: int = typer.Option(70, "--n-val", help="Samples in the val split."),
    n_test: int = typer.Option(140, "--n-test", help="Samples in the test split."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes byte-identical folders."),
    config: Path | None = typer.Option(None, "--config", help="YAML with SynthConfig fields (image size, "
                                       "objects per scene, ...); defaults documented in data_builders/synthetic.py."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Generate synthetic reasoning-segmentation scenes: images, ReasonSeg JSON with dimension and
    granularity tags, and instance masks for the oracle perception source."""
    from data_builders.synthetic import SynthConfig, write_dataset
    from dtwinseg.io import load_yaml

    cfg = SynthConfig(**load_yaml(config)) if config else SynthConfig()
    sizes = {k: v for k, v in (("train", n_train), ("val", n_val), ("test", n_test)) if v > 0}
    counts = write_dataset(out, sizes, seed=seed, cfg=cfg, progress=progress)
    for split, c in counts.items():
        dims = ", ".join(f"{d} {n}" for d, n in sorted(c["dimensions"].items()))
        typer.echo(f"{split}: {c['n']} samples ({dims})")
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command("synth")(synth)
