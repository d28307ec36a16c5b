"""Run an SFTDT recipe in this process: ``train_from_recipe(recipe, overrides) -> output_dir``.

A recipe (see recipes/*.yaml) has these sections:

- ``model``: ``name_or_path`` (Hub id / folder / ``package:<module>/<folder>``) or ``config`` (a model
  config dict, random init: tests, benchmarks), ``tokenizer`` (default: the model's), ``dtype``
  (float32 | bfloat16 | float16), ``kwargs`` (extra from_pretrained / config arguments, e.g.
  ``is_decoder: true`` to load a BERT as a causal LM), ``freeze`` (full fine-tuning only: parameter
  groups kept fixed, as dotted name parts with optional ``a-b`` ranges, e.g. ``[embeddings,
  "encoder.layer.0-2"]``; a tied LM head freezes with the embeddings; see :func:`freeze_parameters`).
- ``data``: ``train`` (and optional ``eval``): folders written by ``dtwinseg build-sft``.
- ``lora``: ``use_lora`` (false = full fine-tuning), ``r``, ``alpha``, ``dropout``, ``target_modules``.
- ``training``: any SFTDTConfig / SFTConfig / TrainingArguments field (``output_dir`` required);
  ``resume_from_checkpoint``: a checkpoint folder or ``true`` (the latest in output_dir).
- ``merge``: ``enabled``, ``output_dir``: merge the LoRA adapter into the base afterwards, in one process.
- ``wandb``: ``project``, ``mode`` (offline works with no network), ``dir``; logging is on when
  ``training.report_to`` lists wandb.
- ``launch``: ``accelerate_config``, ``num_processes`` (used by ``dtwinseg train``, see training/launch.py).

Overrides are ``dotted.key=value`` strings; values are parsed as YAML (``lora.r=8``, ``training.bf16=true``).
Run as a module (what ``accelerate launch`` starts): ``python -m training.run RECIPE.yaml [key=value ...]``.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from dtwinseg.io import DataError, atomic_write_text, load_yaml

_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey")


def apply_overrides(recipe: dict, overrides: list[str] | None) -> dict:
    """A copy of ``recipe`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    out = copy.deepcopy(recipe)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_recipe(recipe: dict | str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """The recipe dict (from YAML when a path), with overrides applied and required sections checked."""
    where = None if isinstance(recipe, dict) else str(recipe)
    data = recipe if isinstance(recipe, dict) else load_yaml(recipe)
    data = apply_overrides(data, overrides)
    for section in ("model", "data", "training"):
        if not isinstance(data.get(section), dict):
            raise DataError(where, section, "missing section")
    if not data["training"].get("output_dir"):
        raise DataError(where, "training.output_dir", "missing")
    if not data["data"].get("train"):
        raise DataError(where, "data.train", "missing (a folder written by dtwinseg build-sft)")
    if not (data["model"].get("name_or_path") or data["model"].get("config")):
        raise DataError(where, "model", "needs name_or_path or config")
    return data


def scrub_secrets(obj: Any) -> Any:
    """Copy of a recipe with values of secret-looking keys replaced (never written to disk or logs)."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if any(w in str(k).lower() for w in _SECRET_WORDS) else scrub_secrets(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


def _dtype(name: str | None) -> Any:
    import torch

    return {None: None, "auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[name]


def build_tokenizer(model_section: dict) -> Any:
    from data_builders.sft_dataset import load_tokenizer

    tok = load_tokenizer(model_section.get("tokenizer") or model_section["name_or_path"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.sep_token
    return tok


def build_model(model_section: dict, tokenizer: Any) -> Any:
    """A causal LM from ``name_or_path`` (pretrained) or ``config`` (random init, vocab sized to the tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from dtwinseg.base_models import resolve_model_path

    kwargs = dict(model_section.get("kwargs") or {})
    dtype = _dtype(model_section.get("dtype"))
    if model_section.get("config"):
        cfg = dict(model_section["config"])
        cfg.setdefault("vocab_size", len(tokenizer))
        cfg.setdefault("pad_token_id", tokenizer.pad_token_id)
        config = AutoConfig.for_model(**cfg, **kwargs)
        import torch

        torch.manual_seed(int(model_section.get("init_seed", 0)))
        model = AutoModelForCausalLM.from_config(config)
        return model.to(dtype) if dtype not in (None, "auto") else model
    if dtype is not None:
        kwargs["dtype"] = dtype
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(model_section["name_or_path"]), **kwargs)


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


def lora_config(section: dict | None) -> Any:
    """peft.LoraConfig from the recipe's lora section, or None for full fine-tuning."""
    section = section or {}
    if not section.get("use_lora", True):
        return None
    from peft import LoraConfig

    return LoraConfig(r=int(section.get("r", 16)), lora_alpha=int(section.get("alpha", 32)),
                      lora_dropout=float(section.get("dropout", 0.05)),
                      target_modules=section.get("target_modules", "all-linear"),
                      task_type="CAUSAL_LM", bias="none")


def _configure_wandb(recipe: dict) -> None:
    report = recipe["training"].get("report_to") or []
    report = [report] if isinstance(report, str) else report
    if "wandb" not in report:
        return
    w = recipe.get("wandb") or {}
    for key, env in (("project", "WANDB_PROJECT"), ("mode", "WANDB_MODE"), ("dir", "WANDB_DIR")):
        if w.get(key):
            os.environ.setdefault(env, str(w[key]))
            if key == "dir":
                Path(w[key]).mkdir(parents=True, exist_ok=True)


def train_from_recipe(recipe: dict | str | os.PathLike, overrides: list[str] | None = None,
                      *, merge: bool = True) -> Path:
    """Train (LoRA or full) with the weighted SFTDT loss; save the adapter/model + tokenizer; return output_dir.

    The resolved recipe (secrets scrubbed) is saved as ``output_dir/recipe.yaml``. With ``merge`` and
    ``merge.enabled`` in the recipe, the adapter is merged afterwards (main process only).
    """
    from datasets import load_from_disk

    from training.trainer import SFTDTConfig, SFTDTTrainer

    r = load_recipe(recipe, overrides)
    _configure_wandb(r)
    train_cfg = dict(r["training"])
    resume = train_cfg.pop("resume_from_checkpoint", None)
    args = SFTDTConfig(**train_cfg)
    tokenizer = build_tokenizer(r["model"])
    model = build_model(r["model"], tokenizer)
    if r["model"].get("freeze"):
        if (r.get("lora") or {}).get("use_lora", True):
            raise DataError(None, "model.freeze", "only for full fine-tuning (lora.use_lora: false)")
        freeze_parameters(model, list(r["model"]["freeze"]))
    train_ds = load_from_disk(str(r["data"]["train"]))
    eval_ds = load_from_disk(str(r["data"]["eval"])) if r["data"].get("eval") else None
    trainer = SFTDTTrainer(model, args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                           peft_config=lora_config(r.get("lora")))
    trainer.train(resume_from_checkpoint=resume)
    out = Path(args.output_dir)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        atomic_write_text(out / "recipe.yaml", yaml.safe_dump(scrub_secrets(r), sort_keys=False))
    trainer.accelerator.wait_for_everyone()
    if merge and trainer.is_world_process_zero() and (r.get("merge") or {}).get("enabled"):
        del trainer, model
        merge_adapter(r)
    return out


def merge_adapter(recipe: dict | str | os.PathLike, overrides: list[str] | None = None) -> Path | None:
    """Merge the trained LoRA adapter into its base model in this (single) process; returns the merged folder."""
    r = load_recipe(recipe, overrides)
    m = r.get("merge") or {}
    if not m.get("enabled") or not (r.get("lora") or {}).get("use_lora", True):
        return None
    from peft import PeftModel

    out = Path(m.get("output_dir") or Path(r["training"]["output_dir"]) / "merged")
    tokenizer = build_tokenizer(r["model"])
    base = build_model(r["model"], tokenizer)
    merged = PeftModel.from_pretrained(base, r["training"]["output_dir"]).merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m training.run RECIPE.yaml [key=value ...] [--no-merge]`` (what accelerate launches)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit("usage: python -m training.run RECIPE.yaml [key=value ...] [--no-merge]")
    merge = "--no-merge" not in argv
    argv = [a for a in argv if a != "--no-merge"]
    train_from_recipe(argv[0], argv[1:], merge=merge)


if __name__ == "__main__":
    main()
