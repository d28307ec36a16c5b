"""``dtwinseg publish``: an adapter folder + a model card with ``model-index`` eval results -> the Hub.

The folder that would be uploaded is always staged first (``--dry-run`` stops there), so what a user
inspects is exactly what is pushed. The token comes from ``HF_TOKEN`` (or the huggingface-hub login)
and is never printed or written.

Base model: the adapter's ``base_model_name_or_path``. A *local path* there fails the Hub's metadata
validation (``base_model`` must be a Hub id), so it is left out of the card metadata (and named in the
card text) unless ``--base-model ORG/NAME`` gives the Hub id it came from.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtwinseg.io import DataError, atomic_write_text, read_json

# Files of an adapter folder that belong on the Hub (weights, configs, tokenizer, recipe).
_KEEP = re.compile(r"^(adapter_config\.json|adapter_model\.(safetensors|bin)|.*tokenizer.*|special_tokens_map\.json|"
                   r"vocab\.(txt|json)|merges\.txt|chat_template\.(jinja|json)|added_tokens\.json|"
                   r"generation_config\.json|recipe\.ya?ml|training_config\.json|.*\.model)$")
_SECRET_LINE = re.compile(r"(?i)(token|api[_-]?key|secret|password)\s*[:=]")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PublishError(RuntimeError):
    """Publishing refused (existing revision without --force, missing files, ...)."""


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
    same = [k for k, c in cks.items() if c.get("adapter") and
            Path(c["adapter"]).resolve() == adapter_dir.resolve()]
    if len(same) == 1:
        return same[0], cks[same[0]]
    if len(cks) == 1:
        return next(iter(cks.items()))
    raise PublishError(f"the metrics file holds several checkpoints {sorted(cks)}: choose one with --checkpoint")


def eval_results(metrics: dict, ck: dict) -> list[Any]:
    """model-index entries: gIoU and cIoU (percent, 2 decimals) for every split group of the checkpoint."""
    from huggingface_hub import EvalResult

    from eval.compare import dataset_and_split

    ds, split = dataset_and_split(metrics["dataset"])
    out = []
    for group, e in ck["groups"].items():
        for key, name in (("giou", "gIoU"), ("ciou", "cIoU")):
            out.append(EvalResult(task_type="image-segmentation", task_name="Reasoning segmentation",
                                  dataset_type=ds, dataset_name=f"{ds} {split} ({group})", dataset_split=split,
                                  dataset_config=group, metric_type=key, metric_name=name,
                                  metric_value=round(100.0 * e[key], 2)))
    return out


def _recipe_text(adapter_dir: Path) -> str | None:
    for cand in (adapter_dir / "recipe.yaml", adapter_dir / "recipe.yml", adapter_dir.parent / "recipe.yaml"):
        if cand.is_file():
            lines = cand.read_text(encoding="utf-8").splitlines()
            return "\n".join("# (redacted)" if _SECRET_LINE.search(ln) else ln for ln in lines)
    return None


def build_card(adapter_dir: Path, repo_id: str, *, metrics: dict | None = None, checkpoint: str | None = None,
               base_model: str | None = None, dataset_note: str | None = None, license: str = "apache-2.0") -> Any:
    """The ModelCard (metadata + text) for an adapter folder."""
    from huggingface_hub import ModelCard, ModelCardData

    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.is_file():
        raise DataError(cfg_path, None, "missing: not a peft adapter folder")
    acfg = read_json(cfg_path)
    base, base_note = hub_base_model(acfg.get("base_model_name_or_path"), base_model)
    model_name = repo_id.split("/")[-1]
    results, ck_label, ck = None, None, None
    if metrics is not None:
        ck_label, ck = pick_checkpoint(metrics, adapter_dir, checkpoint)
        results = eval_results(metrics, ck)
    data = ModelCardData(base_model=base, library_name="peft", license=license, model_name=model_name,
                         eval_results=results, pipeline_tag="text-generation",
                         tags=["dtwinseg", "reasoning-segmentation", "digital-twin", "lora", "sftdt"])
    body = [f"# {model_name}", "",
            "A LoRA adapter fine-tuned with SFTDT (supervised fine-tuning on Digital Twin representations, "
            "DTwinSeger) for reasoning segmentation: given JSON(D) of an image's Digital Twin and a query, "
            "the model writes a reasoning path and the ids of the target objects; dtwinseg turns them into "
            "a mask.", "", "## Base model", "",
            f"`{acfg.get('base_model_name_or_path')}`" + (f" (Hub id: `{base}`)" if base else ""), ""]
    if base_note:
        body += [base_note, ""]
    body += ["## LoRA", "", f"rank {acfg.get('r')}, alpha {acfg.get('lora_alpha')}, dropout "
             f"{acfg.get('lora_dropout')}, target modules {acfg.get('target_modules')}", ""]
    recipe = _recipe_text(adapter_dir)
    body += ["## Training recipe", ""]
    body += (["```yaml", recipe, "```", ""] if recipe else ["Not recorded next to the adapter.", ""])
    body += ["## Data", "", dataset_note or (f"Evaluated on `{metrics['dataset']}`." if metrics else
                                             "Not recorded."), ""]
    if ck is not None:
        from eval.report import pct

        body += ["## Evaluation", "", f"Checkpoint `{ck_label}` ({ck.get('strategy')} strategy), reference "
                 "gIoU / cIoU in percent; oracle = best greedy union of the twin's objects.", "",
                 "| split | gIoU | cIoU | oracle gIoU | n |", "| --- | --- | --- | --- | --- |"]
        body += [f"| {g} | {pct(e['giou'])} | {pct(e['ciou'])} | {pct(e['oracle_giou'])} | {e['n']} |"
                 for g, e in ck["groups"].items()]
        body += ["", f"Parse outcomes: {ck.get('parse')}.", ""]
    body += ["## Use", "", "```bash", f"dtwinseg eval DATASET_SPEC --dt-cache CACHE --checkpoint {repo_id} "
             "--strategy sftdt --out runs/eval", "```", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    return ModelCard(content)


def stage(adapter_dir: Path, out: Path, card: Any) -> list[Path]:
    """Copy the adapter's publishable files to ``out`` and write README.md (the card); returns the files."""
    if out.resolve() == adapter_dir.resolve():
        raise PublishError("the staging folder must differ from the adapter folder")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = []
    for p in sorted(adapter_dir.iterdir()):
        if p.is_file() and _KEEP.match(p.name):
            shutil.copy2(p, out / p.name)
            files.append(out / p.name)
    if not any(f.name.startswith("adapter_model") for f in files):
        raise PublishError(f"{adapter_dir}: no adapter_model.safetensors / .bin to publish")
    files.append(atomic_write_text(out / "README.md", str(card)))
    return files


def publish(adapter_dir: str | os.PathLike, repo_id: str, *, private: bool = False, dry_run: bool = False,
            metrics_path: str | os.PathLike | None = None, checkpoint: str | None = None,
            base_model: str | None = None, dataset_note: str | None = None, force: bool = False,
            stage_dir: str | os.PathLike | None = None, revision: str = "main", api: Any = None,
            log: Callable[[str], None] = print) -> Path:
    """Stage the folder (always) and upload it unless ``dry_run``; returns the staged folder."""
    adapter = Path(adapter_dir)
    if not _HUB_ID.match(repo_id):
        raise PublishError(f"--repo-id {repo_id!r}: expected ORG/NAME")
    metrics = read_json(metrics_path) if metrics_path else None
    card = build_card(adapter, repo_id, metrics=metrics, checkpoint=checkpoint, base_model=base_model,
                      dataset_note=dataset_note)
    out = Path(stage_dir) if stage_dir else adapter.parent / f"{adapter.name}-publish"
    files = stage(adapter, out, card)
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
                      commit_message="dtwinseg publish: adapter + model card with eval results")
    log(f"uploaded to https://huggingface.co/{repo_id}")
    return out
