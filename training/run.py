"""Run an SFTDT recipe in this process: ``train_from_recipe(recipe, overrides) -> output_dir``.

The recipe's sections and their types are in training/recipe.py (typed, strict: unknown keys and badly
typed values are one-line errors before any weight is loaded). Overrides are ``section.field=value``
strings typed by the field they set (``training.learning_rate=1e-4``, ``lora.r=8``,
``training.save_strategy=no``, ``lora.target_modules=[q_proj,v_proj]``, ``model.config={...}``).
Run as a module (what ``accelerate launch`` starts): ``python -m dtwinseg.training.run RECIPE.yaml [key=value ...]``.

Resuming (:func:`resume_point`): a run into an output_dir that holds checkpoints (``checkpoint-N`` with its
``trainer_state.json``) resumes from the latest by default and says so; ``training.resume_from_checkpoint``
``true`` insists on one, a folder names it, and ``false`` (``dtwinseg train --restart``) starts over, moving
the old checkpoints aside first (``OUTPUT_DIR/previous-<time>/``: nothing is deleted). SIGTERM / SIGINT
save a checkpoint at the next step boundary and stop (:class:`dtwinseg.training.trainer.GracefulStop`);
this module then exits 128 + the signal number with one line saying how to resume.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from dtwinseg.training.recipe import (
    ModelSection,
    Recipe,
    build_training_args,
    load_recipe,
    lora_config,
    training_kwargs,
)

from dtwinseg.config import ConfigError, strip_secrets
from dtwinseg.io import DataError, atomic_write_text, dump_yaml

__all__ = ["build_model", "build_tokenizer", "freeze_parameters", "latest_checkpoint", "load_recipe", "lora_config",
           "merge_adapter", "resume_point", "save_recipe", "shutdown_distributed", "train_from_recipe"]


def _dtype(name: str | None) -> Any:
    import torch

    return {None: None, "auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def build_tokenizer(model: ModelSection) -> Any:
    """The recipe's tokenizer (default: the model's), with a pad token."""
    from dtwinseg.data_builders.sft_dataset import load_tokenizer

    source = model.tokenizer or model.name_or_path
    if not source:
        raise ConfigError(None, "model.tokenizer", "needed when the model is built from model.config")
    tok = _from_hub_or_disk(source, "model.tokenizer", load_tokenizer)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.sep_token
    return tok


def build_model(model: ModelSection, tokenizer: Any) -> Any:
    """A causal LM from ``config`` (random init, vocab sized to the tokenizer) or ``name_or_path``
    (pretrained: folder, package:..., or Hub id)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from dtwinseg.base_models import resolve_model_path

    kwargs = dict(model.kwargs)
    dtype = _dtype(model.dtype)
    if model.config:
        cfg = dict(model.config)
        cfg.setdefault("vocab_size", len(tokenizer))
        cfg.setdefault("pad_token_id", tokenizer.pad_token_id)
        try:
            config = AutoConfig.for_model(**cfg, **kwargs)
        except (ValueError, KeyError) as e:
            raise ConfigError(None, "model.config", " ".join(str(e).split())) from None
        import torch

        torch.manual_seed(model.init_seed)
        lm = AutoModelForCausalLM.from_config(config)
        return lm.to(dtype) if dtype not in (None, "auto") else lm
    if dtype is not None:
        kwargs["dtype"] = dtype
    name = resolve_model_path(str(model.name_or_path))
    return _from_hub_or_disk(name, "model.name_or_path", lambda n: AutoModelForCausalLM.from_pretrained(n, **kwargs))


def _from_hub_or_disk(name: str, field: str, load: Any) -> Any:
    """``load(name)``; a Hub id that cannot be fetched (offline and not cached, no such repository, gated)
    becomes one line naming the id and the recipe field."""
    from dtwinseg.base_models import is_hub_id

    try:
        return load(name)
    except OSError as e:
        if not is_hub_id(name):
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        why = ("not in the local Hugging Face cache and HF_HUB_OFFLINE is set" if offline else
               f"cannot be loaded from the Hub ({' '.join(str(e).split())[:200]})")
        raise DataError(name, field, f"Hub id {why}") from None


def _expand_freeze_entry(entry: str) -> list[str]:
    """``"encoder.layer.0-2"`` -> ``["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]``."""
    parts = str(entry).strip().split(".")
    for k, part in enumerate(parts):
        lo, sep, hi = part.partition("-")
        if sep and lo.isdigit() and hi.isdigit():
            head, tail = ".".join(parts[:k]), ".".join(parts[k + 1:])
            return [".".join(x for x in (head, str(i), tail) if x) for i in range(int(lo), int(hi) + 1)]
    return [".".join(parts)]


def freeze_parameters(model: Any, entries: list[str] | None) -> dict:
    """Set ``requires_grad = False`` on every parameter whose dotted name contains one of ``entries`` as
    whole name parts (``"embeddings"`` matches ``bert.embeddings.word_embeddings.weight``, not
    ``embeddings_x``); ``a-b`` in an entry is a range of integers. Returns counts
    ``{"frozen": n_params, "trainable": n_params}`` (elements). An entry that matches nothing is an error.
    """
    names = [n for e in (entries or []) for n in _expand_freeze_entry(e)]
    used = set()
    for name, p in model.named_parameters():
        for n in names:
            if f".{n}." in f".{name}.":
                p.requires_grad_(False)
                used.add(n)
    missing = [n for n in names if n not in used]
    if missing:
        raise DataError(None, "model.freeze", f"no parameter matches {missing}")
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"frozen": frozen, "trainable": sum(p.numel() for p in model.parameters()) - frozen}


def _configure_wandb(r: Recipe) -> None:
    report = r.training.get("report_to") or []
    report = [report] if isinstance(report, str) else report
    if "wandb" not in report:
        return
    for value, env in ((r.wandb.project, "WANDB_PROJECT"), (r.wandb.mode, "WANDB_MODE"),
                       (r.wandb.dir, "WANDB_DIR"), (r.wandb.entity, "WANDB_ENTITY")):
        if value:
            os.environ.setdefault(env, str(value))
    if r.wandb.dir:
        Path(r.wandb.dir).mkdir(parents=True, exist_ok=True)


def save_random_base(model: Any, tokenizer: Any, folder: Path) -> Path:
    """Save a randomly initialised base (``model.config`` recipes) before LoRA wraps it, and make the adapter
    record that folder as its base: without it the adapter could never be loaded again."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
    model.name_or_path = model.config._name_or_path = str(folder.resolve())
    return folder


def save_recipe(r: Recipe, folder: str | os.PathLike) -> Path:
    """Write the resolved recipe (no secret-named key, no resume_from_checkpoint: how one run started is not
    part of the configuration) as ``folder/recipe.yaml``; it reruns as is."""
    data = strip_secrets(r.to_dict())
    if isinstance(data.get("training"), dict):
        data["training"].pop("resume_from_checkpoint", None)
    return atomic_write_text(Path(folder) / "recipe.yaml", dump_yaml(data))


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The highest ``checkpoint-N`` folder of ``output_dir`` that was saved completely (its
    ``trainer_state.json``, written last, is there); None when there is none."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in folder.iterdir()
            if (m := _CHECKPOINT.match(p.name)) and (p / "trainer_state.json").is_file()]
    return max(done)[1] if done else None


def _move_checkpoints_aside(output_dir: Path) -> Path | None:
    """``--restart``: move every ``checkpoint-N`` folder into a new ``previous-<UTC time>`` folder, so a later
    resume never picks a checkpoint of the run that was abandoned; returns that folder (None: nothing)."""
    olds = [p for p in output_dir.iterdir() if _CHECKPOINT.match(p.name) and p.is_dir()] if output_dir.is_dir() else []
    if not olds:
        return None
    aside = output_dir / time.strftime("previous-%Y%m%d-%H%M%S", time.gmtime())
    aside.mkdir(exist_ok=True)
    for p in olds:
        try:
            p.rename(aside / p.name)
        except FileNotFoundError:  # another machine's rank 0 moved it first (shared output_dir)
            pass
    return aside


def resume_point(args: Any, resume: bool | str | None) -> str | None:
    """The checkpoint this run resumes from (None: step 1), by the rule of the module docstring; says so on
    the main process. A missing checkpoint that the recipe insists on is a DataError naming the field."""
    out = Path(args.output_dir)
    field = "training.resume_from_checkpoint"
    main = args.process_index == 0
    if resume is False:
        with args.main_process_first(local=True, desc="moving old checkpoints aside"):
            aside = _move_checkpoints_aside(out) if args.local_process_index == 0 else None
        if aside is not None and main:
            print(f"restart: the checkpoints of the earlier run in {out} were moved to {aside} (delete it when "
                  "you no longer need them); training starts at step 1", file=sys.stderr, flush=True)
        return None
    if isinstance(resume, str):
        if not (Path(resume) / "trainer_state.json").is_file():
            raise DataError(resume, field, "not a complete checkpoint folder (no trainer_state.json)")
        return resume
    last = latest_checkpoint(out)
    if last is None:
        if resume is True:
            raise DataError(out, field, "true, but there is no complete checkpoint-N folder to resume from")
        return None
    if main:
        print(f"resuming from {last} (this output_dir holds checkpoints; `dtwinseg train --restart` or "
              f"{field}=false starts over)", file=sys.stderr, flush=True)
    return str(last)


def copy_format(r: Recipe, folder: str | os.PathLike) -> Path | None:
    """Copy the training data's reasoning format (``format.json`` written by build-sft) next to the model,
    so inference with another format is refused (dtwinseg.reasoning.check_trained_format)."""
    from dtwinseg.data_builders.sft_dataset import dataset_folder

    from dtwinseg.formats import FORMAT_FILE, load_format, save_format

    src = dataset_folder(r.data.train) / FORMAT_FILE
    if not src.is_file():
        return None
    return save_format(folder, *load_format(src))


def _load_dataset(folder: str | os.PathLike, field: str) -> Any:
    """The build-sft dataset in ``folder`` (or pushed to the Hub dataset id ``folder``: build-sft
    --push-to-hub); anything else is a DataError naming the recipe field."""
    from dtwinseg.data_builders.sft_dataset import dataset_folder, load_sft_dataset

    folder = dataset_folder(folder, field)
    if not folder.is_dir():
        raise DataError(folder, field, "not found: a folder written by dtwinseg build-sft")
    try:
        ds = load_sft_dataset(folder)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(folder, field, f"not a dataset written by dtwinseg build-sft ({' '.join(str(e).split())})"
                        ) from None
    missing = {"input_ids", "labels"} - set(getattr(ds, "column_names", None) or [])
    if missing:
        raise DataError(folder, field, f"not a dataset written by dtwinseg build-sft (no {sorted(missing)} columns)")
    return ds


def train_from_recipe(recipe: Recipe | dict | str | os.PathLike, overrides: list[str] | None = None,
                      *, merge: bool = True) -> Path:
    """Train (LoRA or full) with the weighted SFTDT loss; save the adapter/model + tokenizer; return output_dir.

    The resolved recipe is saved as ``output_dir/recipe.yaml``. With ``merge`` and ``merge.enabled`` in the
    recipe, the adapter is merged afterwards (main process only).
    """
    from dtwinseg.training.trainer import SFTDTTrainer

    r = load_recipe(recipe, overrides)
    # the data first: a folder (or Hub dataset id) that is not a build-sft dataset is one line before any
    # weight loads
    train_ds = _load_dataset(r.data.train, "data.train")
    eval_ds = _load_dataset(r.data.eval, "data.eval") if r.data.eval else None
    _configure_wandb(r)
    args = build_training_args(r)
    _, resume = training_kwargs(r)
    resume = resume_point(args, resume)
    tokenizer = build_tokenizer(r.model)
    model = build_model(r.model, tokenizer)
    if r.model.freeze:
        freeze_parameters(model, list(r.model.freeze))
    if r.model.config and r.lora.use_lora:
        save_random_base(model, tokenizer, Path(args.output_dir) / "base")
    push, args.push_to_hub = args.push_to_hub, False  # pushed once, complete, after saving (push_to_hub below)
    trainer = SFTDTTrainer(model, args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                           peft_config=lora_config(r))
    trainer.train(resume_from_checkpoint=resume)
    out = Path(args.output_dir)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        save_recipe(r, out)
        copy_format(r, out)
        if push:
            push_to_hub(out, args)
    trainer.accelerator.wait_for_everyone()
    if merge and trainer.is_world_process_zero() and r.merge.enabled:
        del trainer, model
        merge_adapter(r)
    return out


def push_to_hub(out: Path, args: Any, api: Any = None) -> str:
    """``training.push_to_hub``: upload the finished folder (weights, tokenizer, recipe, format.json, our
    card) once, as ``dtwinseg publish`` stages it (dtwinseg.training.hub), to ``training.hub_model_id``
    (default: the output folder's name under the token's user), private when ``hub_private_repo``."""
    from dtwinseg.training.hub import push_trained

    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
    return push_trained(out, repo_id, private=bool(args.hub_private_repo), revision=args.hub_revision, api=api)


def merge_adapter(recipe: Recipe | dict | str | os.PathLike, overrides: list[str] | None = None) -> Path | None:
    """Merge the trained LoRA adapter into its base model in this (single) process; returns the merged folder."""
    r = load_recipe(recipe, overrides)
    if not r.merge.enabled or not r.lora.use_lora:
        return None
    from peft import PeftModel

    out = Path(r.merge.output_dir or r.output_dir / "merged")
    tokenizer = build_tokenizer(r.model)
    base = build_model(r.model, tokenizer)
    merged = PeftModel.from_pretrained(base, str(r.output_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    save_recipe(r, out)
    copy_format(r, out)
    return out


def shutdown_distributed() -> None:
    """Destroy the default process group once this rank's work is done (torch's documented shutdown).

    Without it, gloo's worker threads can still be alive while the interpreter tears down and abort the
    process ("terminate called without an active exception", exit 134) after a run that finished and saved
    everything. Call it only after a successful run: destroying a group while other ranks still wait in a
    collective can hang them. No-op outside a distributed run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """``python -m dtwinseg.training.run RECIPE.yaml [key=value ...] [--no-merge]`` (what accelerate launches)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit("usage: python -m dtwinseg.training.run RECIPE.yaml [key=value ...] [--no-merge]")
    merge = "--no-merge" not in argv
    argv = [a for a in argv if a != "--no-merge"]
    from dtwinseg.training.trainer import TrainingStopped

    try:
        train_from_recipe(argv[0], argv[1:], merge=merge)
    except DataError as e:  # one line, as the CLI prints it
        raise SystemExit(f"error: {e}") from None
    except TrainingStopped as e:  # every rank stopped at the same step and saved: a clean shutdown is safe
        import torch.distributed as dist

        if int(os.environ.get("RANK", "0") or 0) == 0:
            print(f"stopped: {e}", file=sys.stderr, flush=True)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank's part of the checkpoint is written before any rank exits
        shutdown_distributed()
        raise SystemExit(e.exit_code) from None
    shutdown_distributed()


if __name__ == "__main__":
    main()
