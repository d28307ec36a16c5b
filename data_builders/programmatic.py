"""Programmatic reasoning paths: Seg-DT records from any dataset with ground-truth masks, no annotation.

For a twin, its query and its ground-truth mask (uint8: 0 background, 1 target, 255 ignore):

1. the answer is the subset of twin objects whose union best matches the ground truth
   (:func:`best_subset`, greedy on IoU, 255 pixels ignored); its IoU is recorded as ``match_iou``;
2. the path narrows the twin down to that answer in *hops* (:mod:`data_builders.evidence`), one step
   per hop that drops something. Every object of every step carries the visible fact that keeps or
   drops it: its semantic ("a star, not a cup"), its area ("area 2.1%, largest is 4 with area 9.3%"),
   its position ("centre x 40 vs 120 of 3: left of it"), its distance to an anchor, its count.
   Synthetic samples carry the query program (``program`` in the annotation), so a multi-hop query gets
   one step per hop ("the cup nearest to the largest star": cups and stars, the largest star, the cup
   nearest to it) and a simple one a single step. Other datasets get the generic hops: the objects whose
   semantics share a word with the query, then the answer against the other candidates.
   No step keeps or drops an object by its overlap with the ground truth, which the model never sees.
   When the program's facts disagree with the answer (perception named a target otherwise), the path
   falls back to the generic hops; ``path_kind`` in the record says which was used.

Records whose ``match_iou`` is below ``min_iou`` are left out (the twin cannot express the target).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dtwinseg.data_builders.evidence import Hop, ObjectFacts, generic_hops, object_facts, program_hops
from dtwinseg.data_builders.reader_utils import read_json_fallback
from dtwinseg.data_builders.segdt import SegDTRecord

from dtwinseg.config import StrictConfig
from dtwinseg.formats.score import overlap_scores
from dtwinseg.formats.sftdt import Decision, PathStep, ReasoningPath, check_path
from dtwinseg.io import DataError
from dtwinseg.metrics import best_subset  # noqa: F401 - re-exported: its home was here before
from dtwinseg.runtime import progress as show_progress
from dtwinseg.spatial import SpatialConfig, pairwise_relations
from dtwinseg.twin import DigitalTwin, decode_rle


@dataclass
class ProgrammaticConfig(StrictConfig):
    """Knobs of programmatic path synthesis.

    min_iou: records whose best union reaches a lower IoU with the ground truth are skipped (default 0.5,
        the usual "correct mask" bar).
    anchor_iou: a query program's reference instance (the anchor of "left of the blue square", the owner
        of a part) is the twin object whose mask matches it with at least this IoU; otherwise the
        program cannot be stated over this twin and the generic hops are used.
    use_program: use the sample's query program when it has one (synthetic data).
    """

    min_iou: float = 0.5
    anchor_iou: float = 0.5
    use_program: bool = True



def _semantic_update(f: ObjectFacts, keep: bool, reason: str) -> str:
    """S_i(j): the semantic rewritten with the step's finding (paper eq. 8, U)."""
    return f"{f.semantic} ({reason.split(':', 1)[0] if keep else 'not the target'})"


def path_from_hops(ids: Sequence[int], answer: Sequence[int], hops: Sequence[Hop],
                   facts: dict[int, ObjectFacts]) -> ReasoningPath | None:
    """Apply hops in order; a hop that drops nothing is no step (unless no hop drops anything).

    None when a hop would drop an answer object or the hops end on objects other than the answer.
    """
    answer_set = set(answer)
    kept = list(ids)
    steps: list[PathStep] = []
    last: dict | None = None
    for hop in hops:
        verdicts = hop(kept)
        if any(not verdicts[i][0] for i in kept if i in answer_set):
            return None
        last = verdicts
        new = [i for i in kept if verdicts[i][0]]
        if len(new) == len(kept):
            continue
        steps.append(PathStep({i: Decision("keep" if verdicts[i][0] else "drop",
                                           _semantic_update(facts[i], verdicts[i][0], verdicts[i][1]),
                                           verdicts[i][1]) for i in kept}))
        kept = new
    if not steps and last is not None:
        steps.append(PathStep({i: Decision("keep", _semantic_update(facts[i], True, last[i][1]), last[i][1])
                               for i in kept}))
    if not steps or sorted(kept) != sorted(answer_set):
        return None
    return ReasoningPath(steps, sorted(answer_set))


def instance_twin_ids(twin_masks: np.ndarray, ids: Sequence[int], instances: Sequence[dict] | None,
                      min_iou: float) -> dict[int, int]:
    """instance index -> twin id, for instances that a twin object matches with IoU >= ``min_iou``."""
    out: dict[int, int] = {}
    if not instances or len(twin_masks) == 0:
        return out
    flat = twin_masks.reshape(len(twin_masks), -1)
    areas = flat.sum(1)
    for k, inst in enumerate(instances):
        try:
            m = decode_rle(inst["rle"]).reshape(-1).astype(bool)
        except (KeyError, TypeError, ValueError):
            continue
        if m.shape[0] != flat.shape[1]:
            continue
        inter = (flat & m).sum(1)
        union = areas + m.sum() - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        j = int(np.argmax(iou))
        if iou[j] >= min_iou:
            out[k] = int(ids[j])
    return out


def programmatic_path(twin: DigitalTwin, gt_mask: np.ndarray, cfg: ProgrammaticConfig | None = None,
                      spatial_cfg: SpatialConfig | None = None, *, query: str | None = None,
                      program: dict | None = None, instances: Sequence[dict] | None = None,
                      ) -> tuple[ReasoningPath, float]:
    """A valid path over ``twin`` ending in :func:`best_subset`'s answer, and that answer's IoU.

    ``query`` defaults to the twin's; ``program`` / ``instances`` (synthetic samples) give the hops of the
    query program (see the module docstring). The kind of path is in :func:`path_with_kind`.
    """
    path, iou, _ = path_with_kind(twin, gt_mask, cfg, spatial_cfg, query=query, program=program,
                                  instances=instances)
    return path, iou


def path_with_kind(twin: DigitalTwin, gt_mask: np.ndarray, cfg: ProgrammaticConfig | None = None,
                   spatial_cfg: SpatialConfig | None = None, *, query: str | None = None,
                   program: dict | None = None, instances: Sequence[dict] | None = None,
                   ) -> tuple[ReasoningPath, float, str]:
    """(path, answer IoU, "program" | "generic")."""
    cfg = cfg or ProgrammaticConfig()
    masks = twin.masks()
    ids = twin.ids
    answer, iou = best_subset(masks, gt_mask, ids)
    facts = object_facts(twin)
    pos = {i: k for k, i in enumerate(ids)}
    rel = pairwise_relations(masks, spatial_cfg) if len(ids) > 1 else None
    path = None
    kind = "generic"
    if program and cfg.use_program:
        path = _program_path(twin, masks, answer, facts, rel, pos, program, instances, cfg)
        kind = "program" if path is not None else kind
    if path is None:
        path = path_from_hops(ids, answer, generic_hops(facts, query or twin.query, answer, rel, pos), facts)
    if path is None:  # cannot happen: the generic hops keep exactly the answer; kept as a guard
        raise ValueError("no valid path for this twin")
    check_path(path, ids)
    return path, iou, kind


def _program_path(twin: DigitalTwin, masks: np.ndarray, answer: list[int], facts: dict, rel, pos: dict,  # noqa: ANN001
                  program: dict, instances: Sequence[dict] | None, cfg: ProgrammaticConfig) -> ReasoningPath | None:
    mapping = instance_twin_ids(masks, twin.ids, instances, cfg.anchor_iou)
    anchors = {key: mapping.get(int(program[key])) for key in ("anchor", "owner", "object")
               if isinstance(program.get(key), int)}
    target = None
    if isinstance(program.get("object"), int) and instances and 0 <= program["object"] < len(instances):
        target = instances[program["object"]]
    hops = program_hops(program, facts, anchors, target, rel, pos)
    if hops is None:
        return None
    path = path_from_hops(twin.ids, answer, hops, facts)
    if path is None or len(path.steps[-1].kept) != len(answer):
        return None
    return path


def sample_program(sample: object) -> dict | None:
    """The query program of a synthetic sample (``program`` in its annotation JSON), else None.

    The annotation is decoded as the dataset reader decodes it (a UTF-8 byte-order mark, cp1252:
    :func:`data_builders.reader_utils.read_json_fallback`); one that cannot be read now is a DataError (the
    sample is counted as failed), never a silent fallback to generic steps."""
    extra = getattr(sample, "extra", None) or {}
    if isinstance(extra.get("program"), dict):
        return extra["program"]
    path = extra.get("annotation")
    if not path:
        return None
    data = read_json_fallback(path)
    program = data.get("program") if isinstance(data, dict) else None
    return program if isinstance(program, dict) else None


def programmatic_record(sample_id: str, image: str, query: str, twin: DigitalTwin, gt_mask: np.ndarray,
                        *, cfg: ProgrammaticConfig | None = None, twin_ref: dict | None = None,
                        dimension: str | None = None, granularity: int | None = None,
                        program: dict | None = None, instances: Sequence[dict] | None = None) -> SegDTRecord:
    """One Seg-DT record with a programmatic path (``source: "programmatic"``, ``path_kind``)."""
    path, iou, kind = path_with_kind(twin, gt_mask, cfg, query=query, program=program, instances=instances)
    return SegDTRecord(id=sample_id, image=image, query=query, twin=twin, path=path,
                       granularity=int(twin.granularity if granularity is None else granularity),
                       dimension=dimension, match_iou=iou, source="programmatic", twin_ref=twin_ref,
                       extra={"path_kind": kind, "object_scores": overlap_scores(twin, gt_mask)})


def build_segdt(dataset_spec: str, dt_cache: str | os.PathLike, out: str | os.PathLike,
                cfg: ProgrammaticConfig | None = None, *, strict: bool = False,
                progress: bool = True) -> dict:
    """Write Seg-DT records (JSONL, atomically) for every sample of a dataset that has a cached twin.

    Twins are referenced (``{"dt_cache": <path relative to out>, "id": ...}``), not copied. Per-sample
    failures are counted and listed, never fatal. Returns the counts: written, below_min_iou,
    missing_twin, failed (+ the failures' ids and errors, the mean match IoU of the written records, how
    many paths came from a query program or from the generic hops, and how many have 1, 2, ... steps).
    """
    from dtwinseg.data_builders.dt_cache import DTCache
    from dtwinseg.data_builders.registry import open_dataset

    from dtwinseg.io import remove_stale_temps, write_jsonl

    cfg = cfg or ProgrammaticConfig()
    cache = DTCache.open(dt_cache)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)  # a killed earlier run's temporary records file (only the tool's own)
    cache_ref = os.path.relpath(cache.folder.resolve(), out.parent.resolve())
    dataset = open_dataset(dataset_spec, strict=strict)
    counts = {"samples": 0, "written": 0, "below_min_iou": 0, "missing_twin": 0, "failed": 0}
    failures: list[dict] = []
    lines: list[dict] = []
    ious: list[float] = []
    path_kinds: dict[str, int] = {}
    steps: dict[str, int] = {}
    for sample in show_progress(dataset, "programmatic paths", progress, len(dataset)):
        counts["samples"] += 1
        try:
            twin = cache.get(sample.id)
        except DataError as e:  # a corrupt cached twin: counted, the run goes on (build-dt rebuilds it)
            counts["failed"] += 1
            failures.append({"id": sample.id, "error": str(e)})
            continue
        if twin is None:
            counts["missing_twin"] += 1
            continue
        try:
            if (twin.height, twin.width) != tuple(sample.gt_mask.shape):
                raise ValueError(f"twin is {twin.height}x{twin.width}, ground truth {sample.gt_mask.shape}")
            rec = programmatic_record(sample.id, sample.image_path, sample.query, twin, sample.gt_mask,
                                      cfg=cfg, twin_ref={"dt_cache": cache_ref, "id": sample.id},
                                      dimension=sample.dimension, program=sample_program(sample),
                                      instances=sample.instances)
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
        kind = str(rec.extra.get("path_kind"))
        path_kinds[kind] = path_kinds.get(kind, 0) + 1
        n_steps = str(len(rec.path.steps))
        steps[n_steps] = steps.get(n_steps, 0) + 1
    if lines:  # nothing usable: no (empty) records file replaces a previous one; the CLI exits 1
        write_jsonl(out, lines)
    counts["skipped_files"] = len(getattr(dataset, "skipped", []) or [])
    return {**counts, "mean_match_iou": float(np.mean(ious)) if ious else None, "path_kinds": path_kinds,
            "steps": dict(sorted(steps.items())), "failures": failures, "config": cfg.to_dict()}
