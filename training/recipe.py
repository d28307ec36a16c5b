"""Typed SFTDT recipes: a recipe YAML (+ ``a.b=c`` overrides) -> :class:`Recipe` -> SFTDTConfig / LoraConfig.

A recipe (see recipes/*.yaml) has these sections, each a dataclass below except ``training``:

- ``model`` (:class:`ModelSection`), ``data`` (:class:`DataSection`), ``lora`` (:class:`LoraSection`),
  ``merge`` (:class:`MergeSection`), ``wandb`` (:class:`WandbSection`), ``launch`` (:class:`LaunchSection`);
- ``training``: any field of ``training.trainer.SFTDTConfig`` (TRL's SFTConfig and transformers'
  TrainingArguments included; read from the dataclass, so new fields work at once), plus
  ``resume_from_checkpoint`` (a checkpoint folder, or ``true`` for the latest in output_dir).

Every value is converted by its field's type (dtwinseg.config): ``training.learning_rate=1e-4`` is a float,
``training.save_strategy=no`` the string "no"; unknown keys are errors with a "did you mean". Secret-named
fields (``hub_token``, ``api_key``, ...) cannot be set in a recipe or an override: the Hub token comes from
``HF_TOKEN`` or the huggingface-hub login, the wandb key from ``WANDB_API_KEY``.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dtwinseg.config import (
    ConfigError,
    convert,
    convert_fields,
    convert_text,
    field_types,
    is_secret_key,
    load_config_yaml,
    secret_paths,
    set_dotted,
    unknown_key_error,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
OVERRIDE = "override"  # the "file" named by errors in key=value overrides


@dataclass
class ModelSection:
    """name_or_path: Hub id, folder or ``package:<module>/<folder>``; or config: a model config dict (random
    init, vocab_size from the tokenizer; wins over name_or_path). tokenizer: default the model's. dtype of
    the weights. kwargs: extra from_pretrained / config arguments. freeze: parameter groups kept fixed
    (full fine-tuning only; see dtwinseg.training.run.freeze_parameters). init_seed: seed of a random init."""

    name_or_path: str | None = None
    config: dict | None = None
    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    kwargs: dict = field(default_factory=dict)
    freeze: list[str] = field(default_factory=list)
    init_seed: int = 0


@dataclass
class DataSection:
    """train (and optional eval): folders written by ``dtwinseg build-sft``."""

    train: str = ""
    eval: str | None = None


@dataclass
class LoraSection:
    """use_lora: false = full fine-tuning. r / alpha / dropout / target_modules as in peft.LoraConfig."""

    use_lora: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class MergeSection:
    """enabled: merge the LoRA adapter into its base after training (one process), into output_dir
    (default: training.output_dir/merged)."""

    enabled: bool = False
    output_dir: str | None = None


@dataclass
class WandbSection:
    """Used when training.report_to lists wandb. mode offline works with no network."""

    project: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None
    dir: str | None = None
    entity: str | None = None


@dataclass
class LaunchSection:
    """accelerate_config: accelerate config YAML (multi-process, DeepSpeed, ...). num_processes: processes in
    TOTAL over all machines, as accelerate counts them; used only when neither --num-processes nor the
    accelerate config sets it (see training.launch.plan_processes)."""

    accelerate_config: str | None = None
    num_processes: int | None = None


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "lora": LoraSection,
                             "merge": MergeSection, "wandb": WandbSection, "launch": LaunchSection}
ALL_SECTIONS = ("model", "data", "lora", "training", "merge", "wandb", "launch")


def training_field_types() -> dict[str, Any]:
    """{field: type} of SFTDTConfig, read from the dataclass, plus resume_from_checkpoint (bool or folder)."""
    from dtwinseg.training.trainer import SFTDTConfig

    types_ = field_types(SFTDTConfig)
    types_["resume_from_checkpoint"] = bool | str | None
    return types_


@dataclass
class Recipe:
    """A recipe with every section typed; ``path`` is the file it came from (for messages)."""

    model: ModelSection
    data: DataSection
    lora: LoraSection
    training: dict
    merge: MergeSection = field(default_factory=MergeSection)
    wandb: WandbSection = field(default_factory=WandbSection)
    launch: LaunchSection = field(default_factory=LaunchSection)
    path: str | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    def to_dict(self) -> dict:
        """The resolved recipe as plain YAML-able data; loading it again gives the same Recipe."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out["training"] = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in self.training.items()}
        return {name: out[name] for name in ALL_SECTIONS}


_SECRET_HELP = ("secrets cannot be set in a recipe or an override; the Hub token comes from HF_TOKEN or "
                "`hf auth login`, API keys from environment variables")


def _check_no_secrets(data: dict, where: str | None) -> None:
    for path in secret_paths(data):
        raise ConfigError(where, path, _SECRET_HELP)


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """``data`` (a recipe dict) with each ``section.field[.key]=value`` set, the value typed by its field."""
    import copy

    out = copy.deepcopy(data)
    train_types = None
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(OVERRIDE, item, "expected section.field=value, e.g. training.learning_rate=1e-4")
        parts = key.split(".")
        if any(is_secret_key(p) for p in parts):
            raise ConfigError(OVERRIDE, key, _SECRET_HELP)
        section = parts[0]
        if section not in ALL_SECTIONS:
            owner = section_of(section)
            if owner is not None:
                raise ConfigError(OVERRIDE, key, f"not a section; did you mean {owner}.{key}={raw}?")
            raise unknown_key_error(section, list(ALL_SECTIONS), OVERRIDE, "")
        if len(parts) == 1:
            raise ConfigError(OVERRIDE, key, f"name a field, e.g. {section}.<field>=value")
        if section == "training":
            train_types = train_types or training_field_types()
            types_ = train_types
        else:
            types_ = field_types(SECTIONS[section])
        if parts[1] not in types_:
            raise unknown_key_error(parts[1], sorted(types_), OVERRIDE, section)
        hint = types_[parts[1]] if len(parts) == 2 else Any
        value = convert_text(raw, hint, (OVERRIDE, key))
        if len(parts) > 2 and not isinstance((out.get(section) or {}).get(parts[1]) or {}, dict):
            raise ConfigError(OVERRIDE, ".".join(parts[:2]), "is not a mapping; set it as a whole")
        set_dotted(out, key, value)
    return out


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")
FLAGS = "command line"  # the "file" named by errors in --field flags


def flag_overrides(args: list[str]) -> list[str]:
    """The words after a recipe on the command line as ``section.field=value`` overrides, TRL-style flags
    included: ``--learning_rate 1e-4``, ``--learning_rate=1e-4`` and ``--learning-rate 1e-4`` set
    ``training.learning_rate`` (flags name fields of the training section, as TrlParser reads
    TrainingArguments); ``--lora.r 8`` sets another section's field; a bool flag alone (``--bf16``) means
    true. ``section.field=value`` words pass through unchanged, in order. Unknown flags are a ConfigError
    with the closest training fields."""
    out, i = [], 0
    train_types = None
    while i < len(args):
        word, i = args[i], i + 1
        if not word.startswith("--"):
            out.append(word)
            continue
        name, eq, value = word[2:].partition("=")
        name = name.replace("-", "_")
        section, dot, field_name = name.rpartition(".")
        if not dot:
            section, field_name = "training", name
        if section == "training":
            train_types = train_types or training_field_types()
            types_ = train_types
        elif section in SECTIONS:
            types_ = field_types(SECTIONS[section])
        else:
            raise unknown_key_error(section, list(ALL_SECTIONS), FLAGS, "")
        if field_name not in types_:
            close = difflib.get_close_matches(field_name, sorted(types_), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join('--' + c if section == 'training' else f'--{section}.{c}' for c in close)}?" \
                if close else ""
            raise ConfigError(FLAGS, word.partition("=")[0], f"no such option (flags set {section} fields){hint}"
                              f" (an `accelerate launch` flag goes through --accelerate-arg={word})")
        if not eq:
            is_bool = types_[field_name] in (bool, bool | None)
            if is_bool and (i >= len(args) or args[i].lower() not in _BOOL_WORDS):
                value = "true"
            elif i < len(args):
                value, i = args[i], i + 1
            else:
                raise ConfigError(FLAGS, word, "needs a value, e.g. --learning_rate 1e-4")
        out.append(f"{section}.{field_name}={value}")
    return out


def section_of(name: str) -> str | None:
    """The section that has a field ``name`` (training first, as TRL's flags), or None."""
    if name in training_field_types():
        return "training"
    return next((sec for sec, cls in SECTIONS.items() if name in field_types(cls)), None)


def recipe_from_dict(data: dict, path: str | os.PathLike | None = None) -> Recipe:
    """Type-check and convert a recipe dict (see the module docstring); ConfigError names file and field."""
    where = None if path is None else str(path)
    if not isinstance(data, dict):
        raise ConfigError(where, None, "expected a mapping of sections")
    if "training" not in data:
        raise ConfigError(where, "training", "missing section: not a training recipe (sections: "
                          f"{', '.join(ALL_SECTIONS)}; see recipes/tiny_cpu.yaml)")
    for name in data:
        if name not in ALL_SECTIONS:
            raise unknown_key_error(str(name), list(ALL_SECTIONS), where, "")
    _check_no_secrets(data, where)
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        values = convert_fields(cls, data.get(name) or {}, where, name)
        sections[name] = cls(**values)
    training = data.get("training")
    if not isinstance(training, dict):
        raise ConfigError(where, "training", "missing section (SFTDTConfig fields, output_dir required)")
    types_ = training_field_types()
    for key in training:
        if key not in types_:
            raise unknown_key_error(str(key), sorted(types_), where, "training")
    train = {k: convert(v, types_[k], (where, f"training.{k}")) for k, v in training.items()}
    recipe = Recipe(training=train, path=where, **sections)
    _check_required(recipe, where)
    return recipe


def _check_required(r: Recipe, where: str | None) -> None:
    if not r.training.get("output_dir"):
        raise ConfigError(where, "training.output_dir", "missing")
    if not r.data.train:
        raise ConfigError(where, "data.train", "missing (a folder written by dtwinseg build-sft)")
    if not (r.model.name_or_path or r.model.config):
        raise ConfigError(where, "model", "needs name_or_path or config")
    if r.model.freeze and r.lora.use_lora:
        raise ConfigError(where, "model.freeze", "only for full fine-tuning (lora.use_lora: false)")


def load_recipe(recipe: Recipe | dict | str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """The typed recipe from a file, a dict or a Recipe, with ``overrides`` applied."""
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        return recipe_from_dict(apply_overrides(recipe.to_dict(), overrides), recipe.path)
    if isinstance(recipe, dict):
        return recipe_from_dict(apply_overrides(recipe, overrides), None)
    return recipe_from_dict(apply_overrides(load_config_yaml(recipe), overrides), recipe)


def project_file(path: str | os.PathLike) -> Path:
    """``path`` as given when it exists, else relative to the project root (where recipes/ lives)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    q = PROJECT_ROOT / p
    return q if q.exists() else p


def training_kwargs(r: Recipe) -> tuple[dict, Any]:
    """(SFTDTConfig keyword arguments, resume_from_checkpoint) of a recipe."""
    kwargs = dict(r.training)
    resume = kwargs.pop("resume_from_checkpoint", None)
    if isinstance(kwargs.get("deepspeed"), str):
        ds = project_file(kwargs["deepspeed"])
        if not ds.is_file():
            raise ConfigError(r.path, "training.deepspeed", f"{kwargs['deepspeed']}: file not found")
        kwargs["deepspeed"] = str(ds)
    return kwargs, resume


def build_training_args(r: Recipe, *, assume_gpu: bool = False) -> Any:
    """SFTDTConfig of the recipe. ``assume_gpu`` builds it as a bf16-capable GPU machine would (dry runs
    of GPU recipes on a CPU machine); a rejected value is a ConfigError naming the training section."""
    from unittest import mock

    from dtwinseg.training.trainer import SFTDTConfig

    kwargs, _ = training_kwargs(r)
    patch = mock.patch("transformers.training_args.is_torch_bf16_gpu_available", return_value=True) \
        if assume_gpu else mock.patch.dict(os.environ, {})
    try:
        with patch:
            return SFTDTConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(r.path, "training", " ".join(str(e).split())) from None


def lora_config(r: Recipe) -> Any:
    """peft.LoraConfig of the recipe, or None for full fine-tuning."""
    if not r.lora.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=r.lora.r, lora_alpha=r.lora.alpha, lora_dropout=r.lora.dropout,
                      target_modules=r.lora.target_modules, task_type="CAUSAL_LM", bias="none")
