"""``dtwinseg publish``: a peft adapter or a full fine-tune + a model card with ``model-index`` eval results
-> the Hub.

The folder that would be uploaded is always staged first (``--dry-run`` stops there), so what a user
inspects is exactly what is pushed. What the folder holds and the card's sections are shared with
``training.push_to_hub`` (dtwinseg.training.hub: weights, tokenizer, format.json, recipe without secrets,
card); this module adds the evaluation results of a ``metrics.json`` (the card's ``model-index`` and an
Evaluation table). It is a workflow (it joins the training layer's published folder and the evaluation's
metrics), so eval/ imports nothing from training/. Staging never deletes anything: it writes into a folder it creates itself
(``--stage-dir DIR`` when DIR does not exist or is empty, else a fresh folder inside DIR; by default a fresh
``NAME-publish-*`` folder next to the model). The token comes from ``HF_TOKEN`` (or the huggingface-hub
login) and is never printed or written. Staging refuses outright when any file it would stage (or the recipe
or card it writes) holds the value of a live secret of the environment, in any form
(dtwinseg.training.hub.refuse_live_secrets).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtwinseg.eval.checkpoints import recorded_format
from dtwinseg.training.hub import (  # noqa: F401 - re-exported: the publish API of earlier versions
    HUB_ID,
    KEEP,
    PublishError,
    clean_recipe_text,
    hub_base_model,
    model_kind,
    refuse_live_secrets,
    stage,
    staging_folder,
    upload,
    use_command,
)
from dtwinseg.training.hub import build_card as build_model_card

from dtwinseg.io import read_json


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


def build_card(model_dir: Path, repo_id: str, *, metrics: dict | None = None, checkpoint: str | None = None,
               base_model: str | None = None, dataset_note: str | None = None, license: str = "apache-2.0") -> Any:
    """The ModelCard of dtwinseg.training.hub.build_card plus, with ``metrics``, the checkpoint's results
    (model-index and an Evaluation table)."""
    results, evaluation, format_name = None, None, None
    if metrics is not None:
        from dtwinseg.eval.report import pct

        model_kind(model_dir)  # a folder that is no model fails before the metrics are read
        ck_label, ck = pick_checkpoint(metrics, model_dir, checkpoint)
        results = eval_results(metrics, ck)
        format_name = recorded_format(ck)
        evaluation = ["## Evaluation", "", f"Checkpoint `{ck_label}` ({format_name} format), reference "
                      "gIoU / cIoU in percent; oracle = best greedy union of the twin's objects.", "",
                      "| split | gIoU | cIoU | oracle gIoU | n |", "| --- | --- | --- | --- | --- |"]
        evaluation += [f"| {g} | {pct(e['giou'])} | {pct(e['ciou'])} | {pct(e['oracle_giou'])} | {e['n']} |"
                       for g, e in ck["groups"].items()]
        evaluation += ["", f"Parse outcomes: {ck.get('parse')}.", ""]
        dataset_note = dataset_note or f"Evaluated on `{metrics['dataset']}`."
    return build_model_card(model_dir, repo_id, eval_results=results, evaluation=evaluation, format_name=format_name,
                            base_model=base_model, dataset_note=dataset_note, license=license)


def publish(adapter_dir: str | os.PathLike, repo_id: str, *, private: bool = False, dry_run: bool = False,
            metrics_path: str | os.PathLike | None = None, checkpoint: str | None = None,
            base_model: str | None = None, dataset_note: str | None = None, force: bool = False,
            stage_dir: str | os.PathLike | None = None, revision: str = "main", api: Any = None,
            log: Callable[[str], None] = print) -> Path:
    """Stage the folder (always) and upload it unless ``dry_run``; returns the staged folder.
    ``adapter_dir``: a peft adapter or a full model folder."""
    model_dir = Path(adapter_dir)
    if not HUB_ID.match(repo_id):
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
    upload(out, repo_id, private=private, revision=revision, force=force, api=api,
           commit_message="dtwinseg publish: model + model card with eval results", log=log)
    return out
