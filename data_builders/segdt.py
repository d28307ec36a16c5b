"""Seg-DT records: one JSONL line per training example of SFTDT (paper sec. 3.3-3.4).

Schema (one JSON object per line)::

    {
      "id": "sample-0001",                  # sample id (unique in the file)
      "image": "images/0001.jpg",           # image path (informational; training reads only the twin)
      "query": "what holds the coffee?",
      "twin": {...DigitalTwin.to_dict()...}  # inline D(0), or a reference into a DT cache:
           | {"dt_cache": "cache/ab12cd34ef56", "id": "sample-0001"},   # relative to the records file
      "path": [                             # D(1..K), K >= 1
        {"kept": [0, 2],                     # ids kept at this step (must agree with the verdicts)
         "objects": {                        # one entry per object of the previous step (D(0) for step 1)
           "0": {"semantic": "a red mug", "reasoning": "it holds coffee", "verdict": "keep"},
           "1": {"semantic": "a table", "reasoning": "not a container", "verdict": "drop"},
           "2": {"semantic": "a cup", "reasoning": "may hold coffee", "verdict": "keep"}}},
        {"kept": [0], "objects": {"0": {...,"verdict": "keep"}, "2": {..., "verdict": "drop"}}}
      ],
      "answer": [0],                        # final indices I = the last step's kept ids ([] allowed)
      "granularity": 1,                     # 0 object group, 1 object, 2 object part
      "dimension": "spatial",               # optional reasoning-dimension tag (or null)
      "match_iou": 0.93,                    # optional: IoU of the answer's union vs the ground truth
      "source": "programmatic",             # optional: who wrote the path (programmatic, human, teacher)
      "object_scores": {"0": 10, "1": 0}    # optional: per-object target scores 0-10 from ground-truth
                                            # overlap (dtwinseg.formats.score.overlap_scores), for the
                                            # trainable Rea2Seg scorer (build-sft --format score)
    }

Validation (:func:`load_records`) raises DataError naming the file, the line and the field for: a missing
field, ids not in the twin, a step that re-adds a dropped object, an answer different from the last
step's kept ids, an empty path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtwinseg.data_builders.dt_cache import DTCache

from dtwinseg.formats.sftdt import ReasoningPath, check_path
from dtwinseg.io import DataError, write_jsonl
from dtwinseg.twin import DigitalTwin

REQUIRED_FIELDS = ("id", "image", "query", "twin", "path", "answer", "granularity")


@dataclass
class SegDTRecord:
    """One Seg-DT example. ``twin`` is the loaded D(0); ``twin_ref`` the DT-cache reference it came from."""

    id: str
    image: str
    query: str
    twin: DigitalTwin
    path: ReasoningPath
    granularity: int
    dimension: str | None = None
    match_iou: float | None = None
    source: str | None = None
    twin_ref: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self, *, inline_twin: bool = False) -> dict:
        """The JSONL object; the twin is written as its cache reference when it has one (unless inline)."""
        twin = self.twin_ref if (self.twin_ref is not None and not inline_twin) else self.twin.to_dict()
        d: dict[str, Any] = {"id": self.id, "image": self.image, "query": self.query, "twin": twin,
                             **self.path.to_dict(), "granularity": self.granularity,
                             "dimension": self.dimension}
        if self.match_iou is not None:
            d["match_iou"] = round(float(self.match_iou), 6)
        if self.source is not None:
            d["source"] = self.source
        d.update(self.extra)
        return d


def inside_answer(rec: SegDTRecord, slack: float = 0.05) -> list[int]:
    """The objects a per-object label calls "yes": the record's ``inside`` objects (``extra["inside"]``, the
    objects lying inside the ground truth, and ``extra["inside_iou"]``, their union's IoU; the demo's
    builder writes them) where that union matches the ground truth within ``slack`` IoU of the best subset,
    else the record's answer."""
    inside = rec.extra.get("inside")
    if inside and float(rec.extra.get("inside_iou", 0.0)) >= (rec.match_iou or 0.0) - slack:
        return sorted(int(i) for i in inside)
    return sorted(rec.path.answer)


def _resolve_twin(value: Any, base_dir: Path, cache_memo: dict[str, DTCache]) -> tuple[DigitalTwin, dict | None]:
    if isinstance(value, dict) and "dt_cache" in value:
        if "id" not in value:
            raise DataError(None, "twin.id", "a DT cache reference needs the sample id")
        root = Path(str(value["dt_cache"]))
        root = root if root.is_absolute() else base_dir / root
        key = str(root)
        if key not in cache_memo:
            try:
                cache_memo[key] = DTCache.open(root)
            except (FileNotFoundError, ValueError) as e:
                raise DataError(None, "twin.dt_cache", str(e)) from None
        twin = cache_memo[key].get(str(value["id"]))
        if twin is None:
            raise DataError(None, "twin.id", f"no twin for {value['id']!r} in {root}")
        return twin, dict(value)
    try:
        return DigitalTwin.from_dict(value), None
    except DataError as e:
        raise DataError(None, f"twin.{e.field}" if e.field else "twin", e.message) from None


def record_from_dict(d: Any, *, base_dir: str | os.PathLike = ".",
                     cache_memo: dict[str, DTCache] | None = None) -> SegDTRecord:
    """Validate one record (see the module docstring); DataError fields are relative to the record."""
    if not isinstance(d, dict):
        raise DataError(None, None, f"expected a JSON object, got {type(d).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in d:
            raise DataError(None, name, "missing")
    if not isinstance(d["query"], str):
        raise DataError(None, "query", "expected a string")
    if not isinstance(d["granularity"], int) or d["granularity"] not in (0, 1, 2):
        raise DataError(None, "granularity", f"expected 0, 1 or 2, got {d['granularity']!r}")
    twin, ref = _resolve_twin(d["twin"], Path(base_dir), {} if cache_memo is None else cache_memo)
    path = ReasoningPath.from_dict({"path": d["path"], "answer": d["answer"]})
    check_path(path, twin.ids)
    known = set(REQUIRED_FIELDS) | {"dimension", "match_iou", "source"}
    match_iou = d.get("match_iou")
    if match_iou is not None and not isinstance(match_iou, (int, float)):
        raise DataError(None, "match_iou", f"expected a number, got {match_iou!r}")
    return SegDTRecord(
        id=str(d["id"]), image=str(d["image"]), query=d["query"], twin=twin, path=path,
        granularity=int(d["granularity"]), dimension=d.get("dimension"),
        match_iou=None if match_iou is None else float(match_iou), source=d.get("source"), twin_ref=ref,
        extra={k: v for k, v in d.items() if k not in known},
    )


def iter_records(path: str | os.PathLike, errors: list[dict] | None = None) -> Iterator[SegDTRecord]:
    """Yield validated records of a Seg-DT JSONL file; errors name the file, the line and the field.

    ``errors=None``: the first bad line raises. With a list, each bad line (not UTF-8, invalid JSON, an
    invalid record, a repeated id) is appended as ``{"line": N, "field": "line N: <field>", "error": <message>}``
    and skipped, so one bad sample does not stop a long build.
    """
    path = Path(path)
    memo: dict[str, DTCache] = {}
    seen: set[str] = set()
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                rec = _record_line(path, n, raw, memo, seen)
            except DataError as e:
                if errors is None:
                    raise
                errors.append({"line": n, "field": e.field, "error": e.message})
                continue
            if rec is not None:
                yield rec


def _record_line(path: Path, n: int, raw: bytes, memo: dict[str, DTCache], seen: set[str]) -> SegDTRecord | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, f"line {n}", f"not UTF-8 text (byte {e.start})") from None
    if not line.strip():
        return None
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {n}", f"invalid JSON ({e.msg})") from None
    try:
        rec = record_from_dict(d, base_dir=path.parent, cache_memo=memo)
    except DataError as e:
        raise DataError(path, f"line {n}: {e.field}" if e.field else f"line {n}", e.message) from None
    if rec.id in seen:
        raise DataError(path, f"line {n}: id", f"duplicate sample id {rec.id!r}")
    seen.add(rec.id)
    return rec


def load_records(path: str | os.PathLike, errors: list[dict] | None = None) -> list[SegDTRecord]:
    """All validated records of a Seg-DT JSONL file (bad lines raise, or are collected in ``errors``)."""
    return list(iter_records(path, errors))


def write_records(path: str | os.PathLike, records: list[SegDTRecord], *, inline_twin: bool = False) -> Path:
    """Write records atomically as JSONL."""
    return write_jsonl(path, [r.to_dict(inline_twin=inline_twin) for r in records])
