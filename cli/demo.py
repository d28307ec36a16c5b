"""CLI commands of this area: ``dtwinseg synth`` (the synthetic benchmark) and ``dtwinseg demo``."""

from __future__ import annotations

from pathlib import Path

import typer
from dtwinseg.cli.options import progress_option


def synth(
    out: Path = typer.Option(..., "--out", help="Output folder; gets train/, val/, test/ in ReasonSeg format."),
    n_train: int = typer.Option(700, "--n-train", min=0, help="Samples in the train split (0: none)."),
    n_val: int = typer.Option(70, "--n-val", min=0, help="Samples in the val split (0: none)."),
    n_test: int = typer.Option(140, "--n-test", min=0, help="Samples in the test split (0: none); with the "
                               "realistic profile worded and phrased as in no other split."),
    n_test_seen: int = typer.Option(0, "--n-test-seen", min=0, help="Realistic profile: samples in the "
                                    "seen-phrasing test split test_seen (the test scenes and targets, worded "
                                    "and phrased as train; 0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes byte-identical folders."),
    config: Path | None = typer.Option(None, "--config", help="YAML with SynthConfig fields (image size, "
                                       "objects per scene, ...); defaults documented in data_builders/synthetic/config.py."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Worker processes (the files are byte-identical for any "
                             "number)."),
    profile: str | None = typer.Option(None, "--profile", help="basic (shapes and icons, 3-12 objects: quick "
                                       "tests) or realistic (rooms, kitchens, tabletops, streets: 15-60 masks, "
                                       "VLM-style wording, train / val / test worded and phrased apart); "
                                       "overrides the config's profile (default basic)."),
    progress: bool = progress_option(),
) -> None:
    """Generate synthetic reasoning-segmentation scenes: images, ReasonSeg JSON with dimension and
    granularity tags, and instance masks (with their VLM-style wording) for the oracle and simulated
    perception sources."""
    from dtwinseg.data_builders.synthetic import SynthConfig, write_dataset

    from dtwinseg.io import DataError

    cfg = SynthConfig.from_yaml(config) if config else SynthConfig()  # strict: file + field in one line
    if profile is not None:
        cfg = SynthConfig.from_dict({**cfg.to_dict(), "profile": profile}, path="--profile")
    if n_test_seen and cfg.profile != "realistic":
        raise DataError("--n-test-seen", None, "the seen-phrasing test split needs --profile realistic")
    sizes = {k: v for k, v in (("train", n_train), ("val", n_val), ("test", n_test), ("test_seen", n_test_seen))
             if v > 0}
    try:
        counts = write_dataset(out, sizes, seed=seed, cfg=cfg, progress=progress, jobs=jobs)
    except DataError as e:  # settings no scene can satisfy: name the file they came from
        raise e if e.path else DataError(config or "<synth defaults>", e.field, e.message) from None
    for split, c in counts.items():
        dims = ", ".join(f"{d} {n}" for d, n in sorted(c["dimensions"].items()))
        typer.echo(f"{split}: {c['n']} samples ({dims})")
    typer.echo(f"wrote {out}")


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder: data, twins, datasets, models, "
                             "eval reports, summary.json."),
    recipe: Path | None = typer.Option(None, "--recipe", help="Demo recipe (default recipes/demo.yaml)."),
    long: bool = typer.Option(False, "--long", help="The recipe's 'long' preset: more steps on 2x the data, "
                              "2 training seeds (make demo-long)."),
    quick: bool = typer.Option(False, "--quick", help="The recipe's 'quick' preset: a few training steps on "
                               "a handful of samples (what the test suite runs; numbers are meaningless)."),
    preset: str | None = typer.Option(None, "--preset", help="Another preset of the recipe (e.g. 'ablations': every "
                                      "row of the ablation table, with every baseline), or 'paper': the paper's "
                                      "method on SmolLM2-135M-Instruct (recipes/demo_paper.yaml; --quick for its "
                                      "few-step run; default --out runs/demo-paper)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Override the optimizer steps per run."),
    check_seed: list[int] = typer.Option([], "--check-seed", help="Also evaluate every row on a test split "
                                         "drawn with this seed (repeatable)."),
    progress: bool = progress_option("Show progress bars."),
) -> None:
    """The whole pipeline on synthetic scenes: oracle twins -> Seg-DT -> compact SFT datasets -> SFTDT
    training (path weighted, path unweighted, answer-only) -> evaluation with the untrained baselines on
    val and the held-out test split -> table, bootstrap intervals and summary.json."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if preset == "paper":  # the paper's method on a chat LLM: its own driver and recipe (workflows/paper.py)
        from dtwinseg.workflows.paper import paper_command

        return paper_command(out, recipe, quick=quick, long=long, max_steps=max_steps, check_seed=check_seed,
                             progress=progress, log=typer.echo)
    from dtwinseg.workflows.demo import DemoConfig, demo_markdown, run_demo

    if sum((long, quick, preset is not None)) > 1:
        raise typer.BadParameter("--long, --quick and --preset exclude each other")
    cfg = DemoConfig.load(recipe, "quick" if quick else "long" if long else preset)
    if max_steps is not None:
        cfg.max_steps = max_steps
    if check_seed:
        cfg.check_seeds = list(check_seed)
    summary = run_demo(out, cfg, progress=progress, log=typer.echo)
    typer.echo("")
    typer.echo(demo_markdown(summary, out))
    typer.echo(f"summary: {out / 'summary.json'}   report: {out / 'eval'}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command("synth")(synth)
    app.command("demo")(demo)
