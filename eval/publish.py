"""``dtwinseg publish``: a peft adapter or a full fine-tune + a model card with ``model-index`` eval results
-> the Hub.

The folder that would be uploaded is always staged first (``--dry-run`` stops there), so what a user
inspects is exactly what is pushed. Staging never deletes anything: it writes into a folder it creates
itself (``--stage-dir DIR`` when DIR does not exist or is empty, else a fresh folder inside DIR; by default
a fresh ``NAME-publish-*`` folder next to the model). The staged ``recipe.yaml`` (and the card) hold no
secret-named key. The token comes from ``HF_TOKEN`` (or the huggingface-hub login) and is never printed
or written. Staging refuses outright when any file it would stage (or the recipe or card it writes) holds
the value of a live secret of the environment, in any form (:func:`refuse_live_secrets`): a key pasted
into a recipe note never reaches the Hub.

Base model: the adapter's ``base_model_name_or_path``. A *local path* there fails the Hub's metadata
validation (``base_model`` must be a Hub id), so it is left out of the card metadata (and named in the
card text) unless ``--base-model ORG/NAME`` gives the Hub id it came from.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtwinseg.config import is_secret_key, strip_secrets
from dtwinseg.io import (
    MAX_CONFIG_BYTES,
    DataError,
    YAMLBudgetError,
    atomic_write_text,
    dump_yaml,
    parse_yaml,
    read_json,
)
from dtwinseg.redaction import find_live_secret

# Files of a model folder that belong on the Hub (weights, configs, tokenizer); recipe.yaml is staged cleaned.
_KEEP = re.compile(r"^(adapter_config\.json|adapter_model\.(safetensors|bin)|config\.json|"
                   r"model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|"
                   r"pytorch_model(-\d{5}-of-\d{5})?\.bin|pytorch_model\.bin\.index\.json|"
                   r"tokenizer(_config)?\.json|special_tokens_map\.json|vocab\.(txt|json)|merges\.txt|"
                   r"chat_template\.(jinja|json)|added_tokens\.json|generation_config\.json|"
                   r"training_config\.json|tokenizer\.model|spiece\.model|sentencepiece\.bpe\.model)$")
_RECIPE_NAMES = ("recipe.yaml", "recipe.yml")
_KEY_LINE = re.compile(r"^\s*-?\s*[\"']?([A-Za-z0-9_.-]{1,100})[\"']?\s*[:=]")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PublishError(RuntimeError):
    """Publishing refused (existing revision without --force, missing files, ...)."""


def model_kind(folder: Path) -> str:
    """"adapter" (peft: adapter_config.json) or "model" (a full model: config.json); DataError otherwise."""
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file():
        return "model"
    if not folder.is_dir():
        raise DataError(folder, None, "not found")
    raise DataError(folder, None, "neither a peft adapter (adapter_config.json) nor a model folder (config.json)")


def hub_base_model(base: str | None, override: str | None) -> tuple[str | None, str | None]:
    """(metadata base_model, note for the card text). Local paths are not valid Hub ids."""
    if override:
        return override, None
    if not base:
        return None, "The base model is not recorded in adapter_config.json."
    if os.path.exists(base) or not _HUB_ID.match(base):
        return None, (f"Base model: a local checkpoint (`{base}`), not a Hub id; load it from where you "
                      "keep it and apply this adapter with peft.")
    return base, None


def pick_checkpoint(metrics: dict, adapter_dir: Path, label: str | None) -> tuple[str, dict]:
    """The checkpoint of a metrics file that this adapter is: by label, by adapter path, or the only one."""
    cks = metrics.get("checkpoints", {})
    if label:
        if label not in cks:
            raise PublishError(f"checkpoint {label!r} not in the metrics file (has {sorted(cks)})")
        return label, cks[label]
    same = [k for k, c in cks.items() if any(c.get(f) and Path(c[f]).resolve() == adapter_dir.resolve()
                                             for f in ("adapter", "model"))]
    if len(same) == 1:
        return same[0], cks[same[0]]
    if len(cks) == 1:
        return next(iter(cks.items()))
    raise PublishError(f"the metrics file holds several checkpoints {sorted(cks)}: choose one with --checkpoint")


def eval_results(metrics: dict, ck: dict) -> list[Any]:
    """model-index entries: gIoU and cIoU (percent, 2 decimals) for every split group of the checkpoint."""
    from dtwinseg.eval.compare import dataset_and_split
    from huggingface_hub import EvalResult

    ds, split = dataset_and_split(metrics["dataset"])
    out = []
    for group, e in ck["groups"].items():
        for key, name in (("giou", "gIoU"), ("ciou", "cIoU")):
            out.append(EvalResult(task_type="image-segmentation", task_name="Reasoning segmentation",
                                  dataset_type=ds, dataset_name=f"{ds} {split} ({group})", dataset_split=split,
                                  dataset_config=group, metric_type=key, metric_name=name,
                                  metric_value=round(100.0 * e[key], 2)))
    return out


def _recipe_file(folder: Path) -> Path | None:
    for cand in [folder / n for n in _RECIPE_NAMES] + [folder.parent / "recipe.yaml"]:
        if cand.is_file():
            return cand
    return None


def _parse_recipe(text: str) -> Any:
    """A recipe's YAML through the one budgeted parser (an alias bomb is refused, never expanded); None
    when it is not YAML."""
    import yaml

    try:
        return parse_yaml(text)
    except YAMLBudgetError as e:
        raise PublishError(f"recipe.yaml refused: the YAML {e}") from None
    except yaml.YAMLError:
        return None


def clean_recipe_text(text: str) -> str:
    """A recipe's YAML without any secret-named key (parsed and re-dumped; line-filtered if unparsable)."""
    data = _parse_recipe(text)
    if isinstance(data, dict):
        return dump_yaml(strip_secrets(data))
    kept = [ln for ln in text.splitlines() if not ((m := _KEY_LINE.match(ln)) and is_secret_key(m.group(1)))]
    return "\n".join(kept) + "\n"


def _read_recipe(path: Path) -> str:
    """A recipe file's text (any bytes decode; over the config size cap is refused, never parsed)."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise PublishError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes, not a recipe; nothing was staged")
    return path.read_bytes().decode("utf-8", "replace")


def _recipe_text(folder: Path) -> str | None:
    path = _recipe_file(folder)
    return clean_recipe_text(_read_recipe(path)) if path else None


def _recipe_base(folder: Path) -> str | None:
    """The base model a full fine-tune started from (its recipe's model.name_or_path), if recorded."""
    path = _recipe_file(folder)
    data = _parse_recipe(_read_recipe(path)) if path else None
    model = data.get("model") if isinstance(data, dict) else None
    return model.get("name_or_path") if isinstance(model, dict) else None


def build_card(model_dir: Path, repo_id: str, *, metrics: dict | None = None, checkpoint: str | None = None,
               base_model: str | None = None, dataset_note: str | None = None, license: str = "apache-2.0") -> Any:
    """The ModelCard (metadata + text) for a peft adapter or a full model folder."""
    from huggingface_hub import ModelCard, ModelCardData

    kind = model_kind(model_dir)
    acfg = read_json(model_dir / "adapter_config.json") if kind == "adapter" else {}
    if not isinstance(acfg, dict):
        raise DataError(model_dir / "adapter_config.json", None, "expected a JSON object (a peft adapter config)")
    recorded = acfg.get("base_model_name_or_path") if kind == "adapter" else _recipe_base(model_dir)
    if recorded is not None and not isinstance(recorded, str):
        raise DataError(model_dir / ("adapter_config.json" if kind == "adapter" else "recipe.yaml"),
                        "base_model_name_or_path" if kind == "adapter" else "model.name_or_path",
                        f"expected a model path or Hub id, got {recorded!r}")
    base, base_note = hub_base_model(recorded, base_model)
    model_name = repo_id.split("/")[-1]
    results, ck_label, ck = None, None, None
    if metrics is not None:
        ck_label, ck = pick_checkpoint(metrics, model_dir, checkpoint)
        results = eval_results(metrics, ck)
    tags = ["dtwinseg", "reasoning-segmentation", "digital-twin", "sftdt"] + (["lora"] if kind == "adapter" else [])
    data = ModelCardData(base_model=base, library_name="peft" if kind == "adapter" else "transformers",
                         license=license, model_name=model_name, eval_results=results,
                         pipeline_tag="text-generation", tags=tags)
    what = "A LoRA adapter" if kind == "adapter" else "A causal language model (full fine-tune)"
    body = [f"# {model_name}", "",
            f"{what} trained with SFTDT (supervised fine-tuning on Digital Twin representations, DTwinSeger) "
            "for reasoning segmentation: given the Digital Twin of an image and a query, the model writes a "
            "reasoning path and the ids of the target objects; dtwinseg turns them into a mask.", "",
            "## Base model", "", (f"`{recorded}`" if recorded else "Not recorded.") +
            (f" (Hub id: `{base}`)" if base else ""), ""]
    if base_note:
        body += [base_note, ""]
    if kind == "adapter":
        body += ["## LoRA", "", f"rank {acfg.get('r')}, alpha {acfg.get('lora_alpha')}, dropout "
                 f"{acfg.get('lora_dropout')}, target modules {acfg.get('target_modules')}", ""]
    recipe = _recipe_text(model_dir)
    body += ["## Training recipe", ""]
    body += (["```yaml", recipe.rstrip(), "```", ""] if recipe else ["Not recorded next to the model.", ""])
    body += ["## Data", "", dataset_note or (f"Evaluated on `{metrics['dataset']}`." if metrics else
                                             "Not recorded."), ""]
    if ck is not None:
        from dtwinseg.eval.report import pct

        body += ["## Evaluation", "", f"Checkpoint `{ck_label}` ({ck.get('strategy')} strategy), reference "
                 "gIoU / cIoU in percent; oracle = best greedy union of the twin's objects.", "",
                 "| split | gIoU | cIoU | oracle gIoU | n |", "| --- | --- | --- | --- | --- |"]
        body += [f"| {g} | {pct(e['giou'])} | {pct(e['ciou'])} | {pct(e['oracle_giou'])} | {e['n']} |"
                 for g, e in ck["groups"].items()]
        body += ["", f"Parse outcomes: {ck.get('parse')}.", ""]
    strategy = (ck or {}).get("strategy") or "sftdt"
    body += ["## Use", "", "With dtwinseg installed, on twins cached by `dtwinseg build-dt` (DATASET_SPEC such as "
             "`reasonseg:/data/ReasonSeg:test`, CACHE the cache folder):",
             "", "```bash", use_command(repo_id, strategy), "```", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    return ModelCard(content)


def use_command(repo_id: str, strategy: str = "sftdt") -> str:
    """The card's "Use" command: evaluate this model (a Hub id, or a local folder in its place)."""
    return (f"dtwinseg eval DATASET_SPEC --dt-cache CACHE --checkpoint {repo_id} --strategy {strategy} "
            "--out runs/eval")


def staging_folder(model_dir: Path, stage_dir: Path | None) -> Path:
    """A folder this run creates and owns: ``stage_dir`` when it does not exist or is empty, else a fresh
    folder inside it; by default a fresh ``NAME-publish-*`` folder next to the model. Never one to empty."""
    if stage_dir is not None:
        stage_dir = Path(stage_dir)
        if stage_dir.resolve() == model_dir.resolve():
            raise PublishError("the staging folder must differ from the model folder")
        if not stage_dir.exists():
            stage_dir.mkdir(parents=True)
            return stage_dir
        if stage_dir.is_dir() and not any(stage_dir.iterdir()):
            return stage_dir
        if not stage_dir.is_dir():
            raise PublishError(f"--stage-dir {stage_dir} is a file")
        return Path(tempfile.mkdtemp(prefix=f"{model_dir.name}-publish-", dir=stage_dir))
    return Path(tempfile.mkdtemp(prefix=f"{model_dir.name}-publish-", dir=model_dir.parent))


MAX_SCANNED_BYTES = 256 << 20  # a file is scanned up to this size; of a .safetensors file, its JSON header


def _scanned_bytes(path: Path) -> bytes:
    """What of a file to look for secrets in: a safetensors file's header (its text; the rest is tensor
    data), else the file (up to MAX_SCANNED_BYTES)."""
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            head = f.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            return f.read(min(size, MAX_SCANNED_BYTES))
        return f.read(MAX_SCANNED_BYTES)


def refuse_live_secrets(files: list[Path], texts: dict[str, str]) -> None:
    """PublishError when a file about to be staged (or a text about to be written there: recipe, card)
    holds the value of a live secret of the environment (HF_TOKEN, an API key variable, ...) in any form
    (raw, escaped, URL-encoded, quoted: :func:`dtwinseg.redaction.find_live_secret`). Names the file and the
    variable, never the value."""
    for name, text in texts.items():
        if (var := find_live_secret(text)) is not None:
            raise PublishError(f"{name} would hold the value of ${var} (a live secret of this environment); "
                               "remove it from the recipe / card text, nothing was staged")
    for path in files:
        if (var := find_live_secret(_scanned_bytes(path))) is not None:
            raise PublishError(f"{path} holds the value of ${var} (a live secret of this environment); remove "
                               "it from the file, nothing was staged")


def stage(model_dir: Path, out: Path, card: Any) -> list[Path]:
    """Copy the publishable files of ``model_dir`` into ``out`` (a folder this run created), the recipe without
    secrets, and README.md (the card); returns the files. Nothing is ever deleted. Refused before anything is
    copied when a file or text holds a live secret (:func:`refuse_live_secrets`)."""
    kind = model_kind(model_dir)
    refuse_live_secrets([p for p in sorted(model_dir.iterdir()) if p.is_file() and _KEEP.match(p.name)],
                        {"recipe.yaml": _recipe_text(model_dir) or "", "README.md (the card)": str(card)})
    files = []
    for p in sorted(model_dir.iterdir()):
        if p.is_file() and _KEEP.match(p.name) and not (out / p.name).exists():
            shutil.copy2(p, out / p.name)
            files.append(out / p.name)
    weights = ("adapter_model",) if kind == "adapter" else ("model", "pytorch_model")
    if not any(f.name.startswith(weights) and f.suffix in (".safetensors", ".bin") for f in files):
        raise PublishError(f"{model_dir}: no {'adapter_model' if kind == 'adapter' else 'model'} weights "
                           "(.safetensors / .bin) to publish")
    recipe = _recipe_text(model_dir)
    if recipe is not None:
        files.append(atomic_write_text(out / "recipe.yaml", recipe))
    files.append(atomic_write_text(out / "README.md", str(card)))
    return files


def publish(adapter_dir: str | os.PathLike, repo_id: str, *, private: bool = False, dry_run: bool = False,
            metrics_path: str | os.PathLike | None = None, checkpoint: str | None = None,
            base_model: str | None = None, dataset_note: str | None = None, force: bool = False,
            stage_dir: str | os.PathLike | None = None, revision: str = "main", api: Any = None,
            log: Callable[[str], None] = print) -> Path:
    """Stage the folder (always) and upload it unless ``dry_run``; returns the staged folder.
    ``adapter_dir``: a peft adapter or a full model folder."""
    model_dir = Path(adapter_dir)
    if not _HUB_ID.match(repo_id):
        raise PublishError(f"--repo-id {repo_id!r}: expected ORG/NAME")
    metrics = read_json(metrics_path) if metrics_path else None
    card = build_card(model_dir, repo_id, metrics=metrics, checkpoint=checkpoint, base_model=base_model,
                      dataset_note=dataset_note)
    out = staging_folder(model_dir, Path(stage_dir) if stage_dir else None)
    files = stage(model_dir, out, card)
    log(f"staged {len(files)} files in {out}")
    if dry_run:
        log("dry run: nothing uploaded")
        return out
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=os.environ.get("HF_TOKEN") or None)
    if api.repo_exists(repo_id, repo_type="model"):
        existing = [f for f in api.list_repo_files(repo_id, repo_type="model", revision=revision)
                    if f != ".gitattributes"]
        if existing and not force:
            raise PublishError(f"{repo_id}@{revision} already has {len(existing)} files; pass --force to "
                               "overwrite that revision")
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="model", revision=revision,
                      commit_message="dtwinseg publish: model + model card with eval results")
    log(f"uploaded to https://huggingface.co/{repo_id}")
    return out
