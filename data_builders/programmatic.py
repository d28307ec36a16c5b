"""Programmatic reasoning paths: Seg-DT records from any dataset with ground-truth masks, no annotation.

For a twin and its ground-truth mask (uint8: 0 background, 1 target, 255 ignore):

1. the answer is the subset of twin objects whose union best matches the ground truth
   (:func:`best_subset`, greedy on IoU, 255 pixels ignored); its IoU is recorded as ``match_iou``;
2. step 1 keeps the objects that overlap the target (at least ``min_overlap`` of the object's own valid
   pixels lie on it) plus every answer object, and drops the others, each with a reason taken from its
   relation to the nearest kept object;
3. step 2 keeps exactly the answer and drops the remaining candidates (covers mostly background,
   redundant with a kept object); semantics are rewritten with the reasons.

Records whose ``match_iou`` is below ``min_iou`` are left out (the twin cannot express the target).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from data_builders.segdt import SegDTRecord
from dtwinseg.paths import Decision, PathStep, ReasoningPath, check_path
from dtwinseg.spatial import SpatialConfig, pairwise_relations, relation_phrase
from dtwinseg.twin import DigitalTwin


@dataclass
class ProgrammaticConfig:
    """Knobs of programmatic path synthesis.

    min_iou: records whose best union reaches a lower IoU with the ground truth are skipped (default 0.5,
        the usual "correct mask" bar).
    min_overlap: share of an object's valid pixels on the target at or above which step 1 keeps it as a
        candidate (default 0.05: any real overlap; boundary noise of a few pixels does not count).
    """

    min_iou: float = 0.5
    min_overlap: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)


def best_subset(twin_masks: np.ndarray, gt_mask: np.ndarray,
                ids: Sequence[int] | None = None) -> tuple[list[int], float]:
    """Greedy union that best matches the ground truth: the oracle bound of reasoning over a twin.

    Args:
        twin_masks: N x H x W bool masks.
        gt_mask: H x W uint8, 1 target, 0 background, 255 ignored (excluded from both union and IoU).
        ids: the ids of the N masks (default: their positions 0..N-1).

    Returns:
        (sorted ids of the chosen masks, IoU of their union with the target). Starting from the empty set,
        the mask that raises the IoU most is added until none raises it. An empty target gives ``([], 1.0)``
        (the empty prediction is exact).
    """
    masks = torch.as_tensor(np.asarray(twin_masks, dtype=bool))
    gt = torch.as_tensor(np.asarray(gt_mask))
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(gt.shape):
        raise ValueError(f"masks {tuple(masks.shape)} and ground truth {tuple(gt.shape)} do not match (N x H x W, H x W)")
    id_list = list(range(len(masks))) if ids is None else [int(i) for i in ids]
    valid = gt != 255
    target = (gt == 1) & valid
    n_target = int(target.sum())
    if n_target == 0:
        return [], 1.0
    m = masks[:, valid]  # N x P over valid pixels only
    t = target[valid]
    covered = torch.zeros_like(t)
    inter, union = 0, n_target
    chosen: list[int] = []
    best_iou = 0.0
    remaining = torch.ones(len(m), dtype=torch.bool)
    while bool(remaining.any()):
        new = m & ~covered  # pixels each mask would add
        add_inter = (new & t).sum(1)
        add_out = (new & ~t).sum(1)
        ious = (inter + add_inter).double() / (union + add_out).double()
        ious[~remaining] = -1.0
        k = int(torch.argmax(ious))
        if float(ious[k]) <= best_iou + 1e-12:
            break
        best_iou = float(ious[k])
        inter += int(add_inter[k])
        union += int(add_out[k])
        covered |= m[k]
        remaining[k] = False
        chosen.append(id_list[k])
    return sorted(chosen), best_iou


def _nearest(k: int, among: Sequence[int], distance: np.ndarray) -> int | None:
    if not among:
        return None
    return min(among, key=lambda j: distance[k, j])


def programmatic_path(twin: DigitalTwin, gt_mask: np.ndarray, cfg: ProgrammaticConfig | None = None,
                      spatial_cfg: SpatialConfig | None = None) -> tuple[ReasoningPath, float]:
    """A valid two-step path over ``twin`` ending in :func:`best_subset`'s answer, and that answer's IoU."""
    cfg = cfg or ProgrammaticConfig()
    masks = twin.masks()
    ids = twin.ids
    answer, iou = best_subset(masks, gt_mask, ids)
    gt = np.asarray(gt_mask)
    valid = gt != 255
    on_target = (masks & ((gt == 1) & valid)[None]).reshape(len(ids), -1).sum(1)
    own = np.maximum((masks & valid[None]).reshape(len(ids), -1).sum(1), 1)
    share = on_target / own
    pos = {i: k for k, i in enumerate(ids)}
    candidates = [i for k, i in enumerate(ids) if share[k] >= cfg.min_overlap or i in answer]
    rel = pairwise_relations(masks, spatial_cfg)
    sem = {o.id: o.semantic or f"object {o.id}" for o in twin.objects}

    def relation_to(i: int, among: Sequence[int]) -> str:
        others = [pos[j] for j in among if j != i]
        j = _nearest(pos[i], others, rel.distance) if len(ids) > 1 else None
        if j is None:
            return ""
        return f"; it is {relation_phrase(rel.codes[pos[i], j], rel.next_to[pos[i], j])} {ids[j]}"

    step1: dict[int, Decision] = {}
    for i in ids:
        if i in candidates:
            step1[i] = Decision("keep", f"{sem[i]} (candidate)",
                                f"{sem[i]} may match the query{relation_to(i, candidates)}")
        else:
            step1[i] = Decision("drop", f"{sem[i]} (not the target)",
                                f"{sem[i]} does not match the query{relation_to(i, candidates)}")
    step2: dict[int, Decision] = {}
    for i in candidates:
        if i in answer:
            step2[i] = Decision("keep", f"{sem[i]} (target)",
                                f"{sem[i]} is part of the answer{relation_to(i, answer)}")
        else:
            k = pos[i]
            why = "it mostly covers other things" if share[k] < 0.5 else "it repeats a region already chosen"
            step2[i] = Decision("drop", f"{sem[i]} (not the target)",
                                f"{sem[i]} overlaps the target but {why}{relation_to(i, answer)}")
    path = ReasoningPath([PathStep(step1), PathStep(step2)], answer)
    check_path(path, ids)
    return path, iou


def programmatic_record(sample_id: str, image: str, query: str, twin: DigitalTwin, gt_mask: np.ndarray,
                        *, cfg: ProgrammaticConfig | None = None, twin_ref: dict | None = None,
                        dimension: str | None = None, granularity: int | None = None) -> SegDTRecord:
    """One Seg-DT record with a programmatic path (``source: "programmatic"``)."""
    path, iou = programmatic_path(twin, gt_mask, cfg)
    return SegDTRecord(id=sample_id, image=image, query=query, twin=twin, path=path,
                       granularity=int(twin.granularity if granularity is None else granularity),
                       dimension=dimension, match_iou=iou, source="programmatic", twin_ref=twin_ref)


def build_segdt(dataset_spec: str, dt_cache: str | os.PathLike, out: str | os.PathLike,
                cfg: ProgrammaticConfig | None = None, *, strict: bool = False,
                progress: bool = True) -> dict:
    """Write Seg-DT records (JSONL, atomically) for every sample of a dataset that has a cached twin.

    Twins are referenced (``{"dt_cache": <path relative to out>, "id": ...}``), not copied. Per-sample
    failures are counted and listed, never fatal. Returns the counts: written, below_min_iou,
    missing_twin, failed (+ the failures' ids and errors, and the mean match IoU of the written records).
    """
    from rich.progress import Progress

    from data_builders.dt_cache import DTCache
    from data_builders.registry import open_dataset
    from dtwinseg.io import write_jsonl

    cfg = cfg or ProgrammaticConfig()
    cache = DTCache.open(dt_cache)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_ref = os.path.relpath(cache.folder.resolve(), out.parent.resolve())
    dataset = open_dataset(dataset_spec, strict=strict)
    counts = {"samples": 0, "written": 0, "below_min_iou": 0, "missing_twin": 0, "failed": 0}
    failures: list[dict] = []
    lines: list[dict] = []
    ious: list[float] = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task("programmatic paths", total=len(dataset))
        for sample in dataset:
            counts["samples"] += 1
            bar.advance(task)
            twin = cache.get(sample.id)
            if twin is None:
                counts["missing_twin"] += 1
                continue
            try:
                if (twin.height, twin.width) != tuple(sample.gt_mask.shape):
                    raise ValueError(f"twin is {twin.height}x{twin.width}, ground truth {sample.gt_mask.shape}")
                rec = programmatic_record(sample.id, sample.image_path, sample.query, twin, sample.gt_mask,
                                          cfg=cfg, twin_ref={"dt_cache": cache_ref, "id": sample.id},
                                          dimension=sample.dimension)
            except Exception as e:  # noqa: BLE001 - one bad sample must not stop the run
                counts["failed"] += 1
                failures.append({"id": sample.id, "error": f"{type(e).__name__}: {e}"})
                continue
            if rec.match_iou is not None and rec.match_iou < cfg.min_iou:
                counts["below_min_iou"] += 1
                continue
            lines.append(rec.to_dict())
            ious.append(float(rec.match_iou or 0.0))
            counts["written"] += 1
    write_jsonl(out, lines)
    counts["skipped_files"] = len(getattr(dataset, "skipped", []) or [])
    return {**counts, "mean_match_iou": float(np.mean(ious)) if ious else None, "failures": failures,
            "config": cfg.to_dict()}
