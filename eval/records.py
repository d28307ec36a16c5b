"""Prediction records of an eval run folder (``<out>/<label>/predictions*.jsonl``) and the metric state
they add up to: one record per sample (scored, failed, or skipped for bad input), read back safely after a
kill, and the mergeable accumulators of a shard. Shared by the harness (resume, merge) and the report.

Record kinds (``kind``):

- ``scored``: a reasoner answer was scored (``status`` ok / repaired / failed is how its text parsed;
  ``error`` set when generation itself failed, e.g. an API outage after retries).
- ``missing_twin`` / ``bad_twin``: no usable twin (absent; corrupt file, or a size other than the
  image's): scored as the empty prediction, so the metric still covers every sample, and counted.
- ``input_error``: the sample itself could not be read (bad annotation, unreadable image): not scored
  (there is no ground truth), counted.

Every kind except a clean ``scored`` record carries ``error``; ``--retry-failed`` re-runs those.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from dtwinseg.data_builders.sample import Sample

from dtwinseg.io import DataError, atomic_write_text, clip_middle
from dtwinseg.metrics import GroupedIoU, best_subset, per_mask_iou
from dtwinseg.reasoning import ReasoningOutput
from dtwinseg.runtime import LRUMemo
from dtwinseg.twin import DigitalTwin

STATUSES = ("ok", "repaired", "failed")
MAX_STORED_TEXT = 100_000  # characters of an answer kept in a record (head and tail)
COUNTS = ("errors", "missing_twins", "bad_twins", "input_errors", "truncated", "objects_dropped")
FAILURE_COUNTS = COUNTS[:4]  # truncated answers were scored (finish_reason length), not failures, and so were
# answers whose prompt left objects out to fit the model's context ("objects_dropped": how many objects)


# --- reading back ------------------------------------------------------------------------------
def load_records(path: Path) -> list[dict]:
    """Records of a predictions file; a torn last line (killed writer) is dropped from the file too,
    so appending after it cannot glue two records together."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # damaged on disk (our writer only writes UTF-8): one line, no traceback
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(path, f"line {line}", "not UTF-8 text: a damaged predictions file (remove that line, or "
                        "rerun with --restart)") from None
    lines = text.splitlines()
    records, good = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
            good.append(line)
        except json.JSONDecodeError as e:
            if n != len(lines):
                raise DataError(path, f"line {n}", f"invalid JSON ({e.msg})") from e
    if len(good) != len([ln for ln in lines if ln.strip()]) or (text and not text.endswith("\n")):
        atomic_write_text(path, "".join(ln + "\n" for ln in good))
    return records


def rewrite_records(path: Path, records: Sequence[dict]) -> None:
    """Replace a predictions file with ``records`` (atomically)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def iter_run_records(out: Path, label: str) -> Iterator[dict]:
    """All prediction records of one checkpoint of a run, over its shards."""
    for p in sorted((out / label).glob("predictions*.jsonl")):
        yield from load_records(p)


def is_failure(record: dict) -> bool:
    """A record whose sample failed for a reason other than the model's answer (retried on resume)."""
    return bool(record.get("error"))


def is_scored(record: dict) -> bool:
    return record.get("kind") != "input_error"


# --- building ----------------------------------------------------------------------------------
def groups_of(record: dict) -> list[str]:
    """Metric groups a record counts in: overall, short/long, and ``dim:<tag>``."""
    names = ["overall", "long" if record.get("is_sentence") else "short"]
    if record.get("dimension"):
        names.append(f"dim:{record['dimension']}")
    return names


_ORACLE_MEMO = LRUMemo(4096, copy=lambda stats: {**stats, "oracle_ids": list(stats["oracle_ids"])})


def _oracle_key(twin: DigitalTwin, gt: np.ndarray) -> bytes:
    """A digest of what the oracle reads: the shown objects (ids, masks) and the ground truth."""
    h = hashlib.blake2b(twin.content_digest(), digest_size=20)
    h.update(f"|{gt.shape}|{gt.dtype}|".encode())
    h.update(np.ascontiguousarray(gt).tobytes())
    return h.digest()


def oracle_stats(twin: DigitalTwin | None, gt: np.ndarray) -> dict:
    """Best greedy union of the twin's objects and its reference-metric (I, U, IoU).

    The result depends only on the shown objects and the ground truth, so it is remembered (by a digest of
    both) for the other checkpoints of the same run: every row of an evaluation shares one oracle per sample.
    """
    if twin is None or len(twin) == 0:
        return _oracle_stats(twin, gt)
    return _ORACLE_MEMO.get_or_compute(_oracle_key(twin, gt), lambda: _oracle_stats(twin, gt))


def _oracle_stats(twin: DigitalTwin | None, gt: np.ndarray) -> dict:
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


def twin_problem(sample: Sample, twin: DigitalTwin) -> str | None:
    """Why a cached twin cannot be scored against this sample (a size other than the ground truth's:
    the image was resized after caching), else None."""
    if (twin.height, twin.width) != tuple(sample.gt_mask.shape):
        return f"twin size {twin.height}x{twin.width} != image size {sample.height}x{sample.width}"
    return None


def sample_record(sample: Sample, twin: DigitalTwin | None, out: ReasoningOutput | None,
                  twin_error: str | None = None) -> dict:
    """One JSONL record: the answer, its parse, its (I, U, IoU) and the oracle's. ``out`` None means no
    reasoning happened: the twin is missing (``twin`` None, no ``twin_error``) or unusable (``twin_error``).
    When the prompt left objects out (``out.dropped``: past the model's context), the record counts them
    (``objects_dropped``) and the oracle is the best union of the objects the model was shown."""
    gt = sample.gt_mask
    usable = twin if twin_error is None else None
    ids = [] if out is None else [int(i) for i in out.ids]
    pred = usable.union(ids) if usable is not None else np.zeros(gt.shape, dtype=bool)
    inter, uni, iou = per_mask_iou(pred, gt)
    rec: dict[str, Any] = {
        "id": sample.id, "split": sample.split, "is_sentence": bool(sample.is_sentence),
        "dimension": sample.dimension, "query": sample.query, "image_path": sample.image_path,
        "n_objects": 0 if usable is None else len(usable), "missing_twin": twin is None and twin_error is None,
        "ids": ids, "intersection": inter, "union": uni, "iou": iou,
    }
    if twin_error is not None:
        rec.update(kind="bad_twin", status="failed", notes=[twin_error], text="", error=f"bad twin: {twin_error}")
    elif out is None:
        rec.update(kind="missing_twin", status="failed", notes=["no twin in the DT cache"], text="",
                   error="missing twin")
    else:
        text, cut = clip_middle(out.text, MAX_STORED_TEXT)
        notes = list(out.parse.notes) + ([f"answer of {len(out.text)} characters stored as its head and tail"]
                                         if cut else [])
        rec.update(kind="scored", status=out.parse.status, notes=notes, text=text, error=out.error,
                   finish_reason=getattr(out, "finish_reason", "stop"))
        if out.scores is not None:
            rec["scores"] = {str(k): v for k, v in out.scores.items()}
        if getattr(out, "similarity", None) is not None:
            rec["similarity"] = {str(k): v for k, v in out.similarity.items()}
    dropped = set(getattr(out, "dropped", None) or [])
    if dropped and usable is not None:
        rec["objects_dropped"] = len(dropped)
        usable = DigitalTwin(usable.image_id, usable.height, usable.width, usable.granularity,
                             [o for o in usable.objects if o.id not in dropped], usable.query, usable.provenance)
    rec.update(oracle_stats(usable, gt))
    return rec


def input_error_record(index: int, error: BaseException) -> dict:
    """The record of a sample the reader could not load: counted, never scored."""
    return {"index": index, "id": f"#{index}", "kind": "input_error", "status": "failed", "ids": [],
            "error": f"bad input: {error}"}


# --- accumulating ------------------------------------------------------------------------------
def state_from_records(records: Sequence[dict]) -> dict:
    """Accumulator state of a shard: model and oracle GroupedIoU states, parse and failure counts."""
    pred, oracle = GroupedIoU(), GroupedIoU()
    parse: Counter = Counter({s: 0 for s in STATUSES})
    counts: Counter = Counter({c: 0 for c in COUNTS})
    for r in records:
        kind = r.get("kind") or ("missing_twin" if r.get("missing_twin") else "scored")
        if kind == "input_error":
            counts["input_errors"] += 1
            continue
        names = groups_of(r)
        pred.add_stats(r["intersection"], r["union"], *names)
        oracle.add_stats(r["oracle_intersection"], r["oracle_union"], *names)
        parse[r["status"]] += 1
        counts[{"missing_twin": "missing_twins", "bad_twin": "bad_twins"}.get(kind, "errors")] += bool(r.get("error"))
        counts["truncated"] += r.get("finish_reason") == "length"
        counts["objects_dropped"] += int(r.get("objects_dropped", 0))
    n = sum(1 for r in records if is_scored(r))
    return {"pred": pred.state_dict(), "oracle": oracle.state_dict(), "parse": dict(parse), **counts, "n": n}


def merge_states(states: Sequence[dict]) -> dict:
    """Combine shard states (exact: integer I/U per mask)."""
    pred, oracle = GroupedIoU(), GroupedIoU()
    parse: Counter = Counter({s: 0 for s in STATUSES})
    counts: Counter = Counter({c: 0 for c in COUNTS})
    n = 0
    for s in states:
        pred.merge(GroupedIoU.from_state_dict(s["pred"]))
        oracle.merge(GroupedIoU.from_state_dict(s["oracle"]))
        parse.update(s["parse"])
        counts.update({c: int(s.get(c, 0)) for c in COUNTS})
        n += s["n"]
    return {"pred": pred.state_dict(), "oracle": oracle.state_dict(), "parse": dict(parse), **counts, "n": n}


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
            **{c: int(state.get(c, 0)) for c in COUNTS}, "n": state["n"]}


def failed_count(state: dict) -> int:
    """Samples of a state that failed for a reason other than the answer (errors, twins, inputs)."""
    return sum(int(state.get(c, 0)) for c in FAILURE_COUNTS)


def summary_line(label: str, state: dict) -> str:
    """One line: what happened to a checkpoint's samples in this shard."""
    total = state["n"] + int(state.get("input_errors", 0))
    scored = state["n"] - sum(int(state.get(c, 0)) for c in ("errors", "missing_twins", "bad_twins"))
    return (f"[{label}] {total} samples: {scored} answered, {state.get('errors', 0)} errors, "
            f"{state.get('missing_twins', 0)} missing twins, {state.get('bad_twins', 0)} bad twins, "
            f"{state.get('input_errors', 0)} bad inputs; parse {state['parse'].get('ok', 0)} ok / "
            f"{state['parse'].get('repaired', 0)} repaired / {state['parse'].get('failed', 0)} failed; "
            f"{state.get('truncated', 0)} truncated at max_new_tokens"
            + (f"; {state['objects_dropped']} objects left out of prompts to fit the context"
               if state.get("objects_dropped") else ""))
