"""The evaluation harness: reasoning over cached twins for several checkpoints, resumable and sharded.

Layout of ``runs/NAME`` (``SFX`` is empty for one process, ``.shard-I-of-N`` under sharding)::

    run.json                         dataset spec, DT cache, checkpoints, reasoning configs (no secrets)
    <label>/predictions{SFX}.jsonl   one record per sample (appended and flushed: a rerun resumes)
    <label>/state{SFX}.json          merged-able metric accumulators + parse counts of that shard
    metrics.json                     all shards merged (written when every shard's state is present)
    report.md, plots/*.png, worst/<label>/*.png

Perception is never recomputed: twins come from the DT cache (``DTCache.open(path).get(sample_id)``);
a sample without a twin is scored as the empty prediction and counted under ``missing_twins``.

Metric groups: ``overall``, ``short`` / ``long`` (``is_sentence``; ReasonSeg test's subsets) and one per
dimension tag (``dimensions``). Every group carries the **oracle bound**: gIoU / cIoU of the greedy
best union of the twin's own objects (:func:`data_builders.programmatic.best_subset`), so perception
error (oracle < 1) and reasoning error (model < oracle) are reported apart.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.dt_cache import DTCache
from data_builders.programmatic import best_subset
from data_builders.registry import open_dataset
from data_builders.sample import Sample
from dtwinseg.io import DataError, append_jsonl, atomic_write_json, read_json
from dtwinseg.metrics import GroupedIoU, per_mask_iou
from dtwinseg.reasoning import ReasoningOutput, build_reasoner
from dtwinseg.twin import DigitalTwin
from eval.checkpoints import Checkpoint
from eval.records import iter_run_records, load_records  # noqa: F401  (re-exported)
from eval.report import write_report

STATUSES = ("ok", "repaired", "failed")


# --- sharding ----------------------------------------------------------------------------------
def parse_shard(text: str | None = None, env: dict | None = None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n); without text, RANK / WORLD_SIZE (torchrun, accelerate launch); else (0, 1)."""
    env = os.environ if env is None else env
    if text:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise ValueError(f"bad --shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4")
        return int(m.group(1)), int(m.group(2))
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        return int(env.get("RANK", env.get("LOCAL_RANK", "0")) or 0), world
    return 0, 1


def shard_suffix(shard: tuple[int, int]) -> str:
    i, n = shard
    return "" if n == 1 else f".shard-{i}-of-{n}"


# --- records -----------------------------------------------------------------------------------
def groups_of(record: dict) -> list[str]:
    """Metric groups a record counts in: overall, short/long, and ``dim:<tag>``."""
    names = ["overall", "long" if record.get("is_sentence") else "short"]
    if record.get("dimension"):
        names.append(f"dim:{record['dimension']}")
    return names


def oracle_stats(twin: DigitalTwin | None, gt: np.ndarray) -> dict:
    """Best greedy union of the twin's objects and its reference-metric (I, U, IoU)."""
    if twin is None or len(twin) == 0:
        ids: list[int] = []
        union = np.zeros(gt.shape, dtype=bool)
    else:
        masks = twin.masks()
        ids, _ = best_subset(masks, gt, twin.ids)
        pos = {i: k for k, i in enumerate(twin.ids)}
        union = masks[[pos[i] for i in ids]].any(0) if ids else np.zeros(gt.shape, dtype=bool)
    inter, uni, iou = per_mask_iou(union, gt)
    return {"oracle_ids": ids, "oracle_intersection": inter, "oracle_union": uni, "oracle_iou": iou}


def sample_record(sample: Sample, twin: DigitalTwin | None, out: ReasoningOutput | None) -> dict:
    """One JSONL record: the answer, its parse, its (I, U, IoU) and the oracle's."""
    gt = sample.gt_mask
    ids = [] if out is None else [int(i) for i in out.ids]
    if twin is not None and (twin.height, twin.width) != gt.shape:
        raise DataError(None, f"twin {sample.id}", f"size {(twin.height, twin.width)} != ground truth {gt.shape}")
    pred = twin.union(ids) if twin is not None else np.zeros(gt.shape, dtype=bool)
    inter, uni, iou = per_mask_iou(pred, gt)
    rec: dict[str, Any] = {
        "id": sample.id, "split": sample.split, "is_sentence": bool(sample.is_sentence),
        "dimension": sample.dimension, "query": sample.query, "image_path": sample.image_path,
        "n_objects": 0 if twin is None else len(twin), "missing_twin": twin is None,
        "ids": ids, "intersection": inter, "union": uni, "iou": iou,
    }
    if out is None:
        rec.update(status="failed", notes=["no twin in the DT cache"], text="", error="missing twin")
    else:
        rec.update(status=out.parse.status, notes=list(out.parse.notes), text=out.text, error=out.error)
        if out.scores is not None:
            rec["scores"] = {str(k): v for k, v in out.scores.items()}
    rec.update(oracle_stats(twin, gt))
    return rec


def state_from_records(records: Sequence[dict]) -> dict:
    """Accumulator state of a shard: model and oracle GroupedIoU states, parse and error counts."""
    pred, oracle = GroupedIoU(), GroupedIoU()
    parse: Counter = Counter({s: 0 for s in STATUSES})
    for r in records:
        names = groups_of(r)
        pred.add_stats(r["intersection"], r["union"], *names)
        oracle.add_stats(r["oracle_intersection"], r["oracle_union"], *names)
        parse[r["status"]] += 1
    return {"pred": pred.state_dict(), "oracle": oracle.state_dict(), "parse": dict(parse),
            "errors": sum(1 for r in records if r.get("error") and not r.get("missing_twin")),
            "missing_twins": sum(1 for r in records if r.get("missing_twin")), "n": len(records)}


def merge_states(states: Sequence[dict]) -> dict:
    """Combine shard states (exact: integer I/U per mask)."""
    pred, oracle = GroupedIoU(), GroupedIoU()
    parse: Counter = Counter({s: 0 for s in STATUSES})
    errors = missing = n = 0
    for s in states:
        pred.merge(GroupedIoU.from_state_dict(s["pred"]))
        oracle.merge(GroupedIoU.from_state_dict(s["oracle"]))
        parse.update(s["parse"])
        errors += s["errors"]
        missing += s["missing_twins"]
        n += s["n"]
    return {"pred": pred.state_dict(), "oracle": oracle.state_dict(), "parse": dict(parse), "errors": errors,
            "missing_twins": missing, "n": n}


def metrics_from_state(state: dict) -> dict:
    """gIoU / cIoU (fractions) per group with the oracle bound, per dimension, and the counts."""
    pred = GroupedIoU.from_state_dict(state["pred"]).results()
    oracle = GroupedIoU.from_state_dict(state["oracle"]).results()
    groups, dims = {}, {}
    for name, r in pred.items():
        entry = {"giou": r["giou"], "ciou": r["ciou"], "n": r["n"],
                 "oracle_giou": oracle[name]["giou"], "oracle_ciou": oracle[name]["ciou"]}
        if name.startswith("dim:"):
            dims[name[4:]] = entry
        else:
            groups[name] = entry
    order = {"overall": 0, "short": 1, "long": 2}
    groups = dict(sorted(groups.items(), key=lambda kv: order.get(kv[0], 9)))
    return {"groups": groups, "dimensions": dict(sorted(dims.items())), "parse": state["parse"],
            "errors": state["errors"], "missing_twins": state["missing_twins"], "n": state["n"]}


# --- running -----------------------------------------------------------------------------------
@dataclass
class EvalOptions:
    """limit: first N samples of the dataset (before sharding). shard: (i, n). batch_size: items per
    reason() call (default: the reasoning config's). worst_k: worst-case overlays per checkpoint.
    strict: malformed dataset files abort (True) or are skipped and counted (False)."""

    limit: int | None = None
    shard: tuple[int, int] = (0, 1)
    batch_size: int | None = None
    worst_k: int = 4
    strict: bool = True
    progress: bool = True
    wandb: bool = False


def shard_indices(n_samples: int, opts: EvalOptions) -> list[int]:
    """Dataset positions this shard evaluates: round-robin over the first ``limit`` samples."""
    total = n_samples if opts.limit is None else min(n_samples, opts.limit)
    i, n = opts.shard
    return [k for k in range(total) if k % n == i]


def _iter_samples(dataset: Any, indices: list[int]) -> Iterator[tuple[int, Sample]]:
    """(dataset position, sample) for the given positions; indexes when the dataset allows it."""
    if hasattr(dataset, "__getitem__"):
        for k in indices:
            yield k, dataset[k]
        return
    wanted = set(indices)
    for k, s in enumerate(dataset):
        if k in wanted:
            yield k, s


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled)


def run_checkpoint(ck: Checkpoint, dataset: Any, cache: DTCache, out: Path, opts: EvalOptions,
                   log: Callable[[str], None] = print) -> dict:
    """Evaluate one checkpoint on this shard (resuming), write its state file; return the state."""
    ck_dir = out / ck.label
    ck_dir.mkdir(parents=True, exist_ok=True)
    sfx = shard_suffix(opts.shard)
    pred_path = ck_dir / f"predictions{sfx}.jsonl"
    records = load_records(pred_path)
    done = {r["id"] for r in records}
    indices = shard_indices(len(dataset), opts)
    todo_n = sum(1 for _ in indices) - len(done)
    if done:
        log(f"[{ck.label}] resuming: {len(done)} samples already done")
    reasoner = None
    batch: list[tuple[int, Sample, DigitalTwin | None]] = []
    bs = opts.batch_size or ck.cfg.batch_size

    def flush() -> None:
        nonlocal reasoner
        with_twin = [(s, t) for _, s, t in batch if t is not None]
        outs: list[ReasoningOutput] = []
        if with_twin:
            if reasoner is None:
                reasoner = ck.reasoner if ck.reasoner is not None else build_reasoner(ck.cfg)
            outs = reasoner.reason([(t, s.query) for s, t in with_twin])
        it = iter(outs)
        for k, s, t in batch:
            rec = {"index": k, **sample_record(s, t, next(it) if t is not None else None)}
            append_jsonl(pred_path, rec)
            records.append(rec)
        batch.clear()

    with _progress(opts.progress) as bar:
        task = bar.add_task(f"eval {ck.label}", total=max(todo_n, 0))
        for k, sample in _iter_samples(dataset, indices):
            if sample.id in done:
                continue
            batch.append((k, sample, cache.get(sample.id)))
            if len(batch) >= bs:
                n = len(batch)
                flush()
                bar.advance(task, n)
        if batch:
            n = len(batch)
            flush()
            bar.advance(task, n)
    state = state_from_records(records)
    atomic_write_json(ck_dir / f"state{sfx}.json", {"shard": list(opts.shard), **state}, indent=None)
    return state


def evaluate(dataset_spec: str, dt_cache: str | os.PathLike, checkpoints: Sequence[Checkpoint],
             out: str | os.PathLike, opts: EvalOptions | None = None,
             log: Callable[[str], None] = print) -> dict | None:
    """Run every checkpoint on this shard; merge and report when all shards are done.

    Returns the merged metrics dict, or None while other shards are still missing.
    """
    opts = opts or EvalOptions()
    out = Path(out)
    dataset = open_dataset(dataset_spec, strict=opts.strict)
    cache = DTCache.open(dt_cache)
    write_run_info(out, dataset_spec, dt_cache, checkpoints, opts, dataset)
    t0 = time.time()
    for ck in checkpoints:
        run_checkpoint(ck, dataset, cache, out, opts, log)
    log(f"shard {opts.shard[0]}/{opts.shard[1]} done in {time.time() - t0:.1f} s")
    return merge_run(out, opts=opts, log=log)


def write_run_info(out: Path, dataset_spec: str, dt_cache: str | os.PathLike, checkpoints: Sequence[Checkpoint],
                   opts: EvalOptions, dataset: Any) -> None:
    """run.json: what this run evaluates. A rerun must name the same dataset (resume safety)."""
    info_path = out / "run.json"
    info = {"dataset": str(dataset_spec), "split": getattr(dataset, "split", None), "dt_cache": str(dt_cache),
            "limit": opts.limit, "shards": opts.shard[1], "n_samples": len(shard_indices(len(dataset),
                                                                                       EvalOptions(limit=opts.limit))),
            "skipped_files": [list(x) for x in getattr(dataset, "skipped", [])],
            "checkpoints": {ck.label: {**ck.describe(), "reasoning": ck.cfg.to_dict()} for ck in checkpoints}}
    if info_path.exists():
        old = read_json(info_path)
        if old.get("dataset") != info["dataset"] or old.get("limit") != info["limit"]:
            raise DataError(info_path, "dataset", f"this run evaluated {old.get('dataset')} (limit "
                                                  f"{old.get('limit')}); use another --out for {dataset_spec}")
        if old.get("shards") != info["shards"]:
            raise DataError(info_path, "shards", f"this run was sharded {old.get('shards')} ways, not "
                                                 f"{info['shards']}")
        old_cks = old.get("checkpoints", {})
        old_cks.update(info["checkpoints"])
        info["checkpoints"] = old_cks
    atomic_write_json(out / "run.json", info)


def merge_run(out: str | os.PathLike, opts: EvalOptions | None = None, log: Callable[[str], None] = print,
              require_all: bool = True) -> dict | None:
    """Merge the shard states of every checkpoint of a run into metrics.json and write the report.

    Returns None (and writes nothing) while some shard state is missing and ``require_all``.
    """
    out = Path(out)
    opts = opts or EvalOptions()
    info = read_json(out / "run.json")
    n = int(info.get("shards", 1))
    per_ck: dict[str, dict] = {}
    for label, desc in info["checkpoints"].items():
        paths = [out / label / f"state{shard_suffix((i, n))}.json" for i in range(n)]
        missing = [p for p in paths if not p.exists()]
        if missing:
            if require_all:
                log(f"waiting for {len(missing)} shard(s) of {label}; run `dtwinseg eval-merge {out}` later")
                return None
            paths = [p for p in paths if p.exists()]
        state = merge_states([read_json(p) for p in paths])
        per_ck[label] = {**{k: v for k, v in desc.items() if k != "reasoning"}, **metrics_from_state(state)}
    metrics = {"dataset": info["dataset"], "split": info.get("split"), "dt_cache": info.get("dt_cache"),
               "n_samples": info.get("n_samples"), "checkpoints": per_ck, "time": time.time()}
    atomic_write_json(out / "metrics.json", metrics)
    write_report(out, metrics, worst_k=opts.worst_k, wandb_log=opts.wandb, log=log)
    return metrics
