"""ReasonSeg reader with the reference's exact quirks (LISA ``get_mask_from_json``).

On disk (``root`` is the folder holding the splits, or its parent with a ``ReasonSeg/`` folder)::

    <root>/<split>/<name>.jpg                 # only *.jpg are globbed, sorted by path
    <root>/<split>/<name>.json                # LabelMe-like annotation, same stem
    <root>/<split>/<name>.instances.json      # optional (synthetic data): instance masks

Annotation fields read: ``text`` (list of str, or a single str; the query is ``text[0]``),
``is_sentence`` (bool), ``shapes`` (``[{"label", "points"}]``; ``shape_type`` is ignored, as in the
reference), and the optional ``dimension`` (str) and ``granularity`` (0/1/2) tags our synthetic
generator adds. The file is decoded as UTF-8, then cp1252.

Ground truth, as the reference draws it: shapes labelled ``flag`` are skipped; every other polygon's
area is measured by drawing it (outline + fill, points cast to int32, i.e. truncated) on an empty
canvas; polygons are drawn largest first with 255 when the label contains ``ignore``, else 1, so a
smaller polygon overwrites a larger one. Parts outside the image are clipped by OpenCV. No polygons
means an all-zero mask.

The sidecar ``{"objects": [{"rle", "semantic", "level", "parent", ...}], "targets"?: [...]}`` becomes
``Sample.instances`` (the dicts as stored, extra keys kept) and ``extra["instance_targets"]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from dtwinseg.data_builders.reader_utils import (
    ListDataset,
    check_points,
    check_rle,
    get_field,
    image_size,
    read_json_fallback,
    require_dir,
)
from dtwinseg.data_builders.registry import register_reader
from dtwinseg.data_builders.sample import Sample

from dtwinseg.io import DataError

IGNORE_VALUE = 255
TARGET_VALUE = 1


@dataclass
class Polygon:
    """One shape to draw: int32 points (1 x K x 2, as the reference passes them to OpenCV)."""

    label: str
    points: np.ndarray

    @property
    def value(self) -> int:
        return IGNORE_VALUE if "ignore" in self.label.lower() else TARGET_VALUE


@dataclass
class ReasonSegRecord:
    """Everything read from one annotation, before the mask is drawn."""

    id: str
    image_path: Path
    json_path: Path
    height: int
    width: int
    texts: list[str]
    is_sentence: bool
    polygons: list[Polygon]
    dimension: str | None
    granularity: int | None
    instances: list[dict] | None
    instance_targets: list | None


def _draw(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    cv2.polylines(canvas, points, True, value, 1)
    cv2.fillPoly(canvas, points, value)


def polygon_area(points: np.ndarray, height: int, width: int) -> np.uint64:
    """Pixels the reference's outline + fill covers inside the image (its sort key)."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    _draw(canvas, points, 1)
    return canvas.sum()


def rasterise(polygons: list[Polygon], height: int, width: int) -> np.ndarray:
    """H x W uint8 ground truth (0 / 1 / 255): polygons drawn largest area first, as the reference."""
    areas = [polygon_area(p.points, height, width) for p in polygons]
    # Same call as the reference (np.argsort, reversed) so ties between equal areas resolve identically.
    order = list(np.argsort(areas)[::-1].astype(np.int32)) if polygons else []
    mask = np.zeros((height, width), dtype=np.uint8)
    for k in order:
        _draw(mask, polygons[k].points, polygons[k].value)
    return mask


def parse_polygons(shapes: Any, path: Path) -> list[Polygon]:
    """Shapes to polygons, ``flag`` shapes dropped, points truncated to int32 like the reference."""
    if not isinstance(shapes, list):
        raise DataError(path, "shapes", f"expected a list, got {type(shapes).__name__}")
    out = []
    for k, shape in enumerate(shapes):
        label = get_field(shape, "label", str, path, f"shapes[{k}].label")
        if label.lower() == "flag":
            continue
        pts = check_points(get_field(shape, "points", list, path, f"shapes[{k}].points"), path,
                           f"shapes[{k}].points")
        out.append(Polygon(label, pts.astype(np.int32)[None]))
    return out


def parse_texts(anno: dict, path: Path) -> list[str]:
    text = get_field(anno, "text", (list, str), path, "text")
    texts = [text] if isinstance(text, str) else text
    if not texts:
        raise DataError(path, "text", "empty list: no query")
    for k, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(path, f"text[{k}]", f"expected str, got {type(t).__name__}")
    return texts


def parse_is_sentence(anno: dict, path: Path) -> bool:
    v = get_field(anno, "is_sentence", (bool, int), path, "is_sentence")
    if v not in (0, 1):
        raise DataError(path, "is_sentence", f"expected true/false, got {v!r}")
    return bool(v)


def parse_tags(anno: dict, path: Path) -> tuple[str | None, int | None]:
    dimension = get_field(anno, "dimension", str, path, "dimension", default=None)
    granularity = get_field(anno, "granularity", int, path, "granularity", default=None)
    if granularity is not None and granularity not in (0, 1, 2):
        raise DataError(path, "granularity", f"expected 0, 1 or 2, got {granularity}")
    return dimension, granularity


def read_instances(path: Path, height: int, width: int) -> tuple[list[dict], list | None]:
    """The ``<stem>.instances.json`` sidecar, checked: objects (RLE of the image's size) and targets."""
    doc = read_json_fallback(path)
    objects = get_field(doc, "objects", list, path, "objects")
    for k, obj in enumerate(objects):
        where = f"objects[{k}]"
        check_rle(get_field(obj, "rle", dict, path, f"{where}.rle"), path, f"{where}.rle", (height, width))
        get_field(obj, "semantic", str, path, f"{where}.semantic")
        level = get_field(obj, "level", int, path, f"{where}.level")
        if level not in (1, 2):
            raise DataError(path, f"{where}.level", f"expected 1 (object) or 2 (part), got {level}")
        parent = get_field(obj, "parent", int, path, f"{where}.parent", default=None)
        if parent is not None and not 0 <= parent < len(objects):
            raise DataError(path, f"{where}.parent", f"index {parent} out of range (0..{len(objects) - 1})")
    targets = get_field(doc, "targets", list, path, "targets", default=None)
    return objects, targets


def read_record(image_path: Path) -> ReasonSegRecord:
    """Read and check one image's annotation (and sidecar); the mask is drawn later, in ``_load``."""
    json_path = image_path.with_suffix(".json")
    if not json_path.exists():
        raise DataError(json_path, None, f"annotation missing for image {image_path.name}")
    anno = read_json_fallback(json_path)
    if not isinstance(anno, dict):
        raise DataError(json_path, None, f"expected a JSON object, got {type(anno).__name__}")
    texts = parse_texts(anno, json_path)
    is_sentence = parse_is_sentence(anno, json_path)
    polygons = parse_polygons(get_field(anno, "shapes", list, json_path, "shapes"), json_path)
    dimension, granularity = parse_tags(anno, json_path)
    height, width = image_size(image_path)
    sidecar = image_path.with_name(image_path.stem + ".instances.json")
    instances, targets = read_instances(sidecar, height, width) if sidecar.exists() else (None, None)
    return ReasonSegRecord(image_path.stem, image_path, json_path, height, width, texts, is_sentence,
                           polygons, dimension, granularity, instances, targets)


def orphan_annotations(split_dir: Path, images: list[Path]) -> list[tuple[str, str]]:
    """``(file, reason)`` for every annotation whose ``<stem>.jpg`` is missing: a counted skip (always,
    strict or not), never a sample that silently disappears."""
    stems = {p.stem for p in images}
    return [(str(j), f"{j}: no image {j.stem}.jpg for this annotation (only *.jpg are read, as the reference)")
            for j in sorted(split_dir.glob("*.json")) if not j.name.endswith(".instances.json") and j.stem not in stems]


def resolve_split_dir(root: str | os.PathLike, split: str) -> Path:
    """``root/<split>``, else ``root/ReasonSeg/<split>``."""
    base = Path(root)
    for cand in (base / split, base / "ReasonSeg" / split):
        if cand.is_dir():
            return cand
    return require_dir(base / split, root, f"ReasonSeg split folder '{split}' (also looked in ReasonSeg/)")


def reasonseg_subset(sample: Sample) -> str:
    """ReasonSeg test subsets: ``"long"`` for sentence queries, ``"short"`` for phrases."""
    return "long" if sample.is_sentence else "short"


class ReasonSegDataset(ListDataset[ReasonSegRecord]):
    """ReasonSeg split (or any folder in its format): one Sample per ``*.jpg``, in sorted order.

    Annotations are read and checked when the dataset is opened (so ``len`` and ``skipped`` are known
    at once); masks are drawn when a sample is read.
    """

    name = "reasonseg"

    def __init__(self, root: str | os.PathLike, split: str, strict: bool = True) -> None:
        super().__init__(split, strict)
        self.root = Path(root)
        self.split_dir = resolve_split_dir(root, split)
        images = sorted(self.split_dir.glob("*.jpg"))
        for image_path in images:
            rec = self._try(lambda p=image_path: read_record(p), str(image_path))
            if rec is not None:
                self._records.append(rec)
        self.skipped += orphan_annotations(self.split_dir, images)

    def _record_file(self, record: ReasonSegRecord) -> str:
        return str(record.json_path)

    def _load(self, rec: ReasonSegRecord) -> Sample:
        extra: dict[str, Any] = {"texts": list(rec.texts), "annotation": str(rec.json_path)}
        if rec.instance_targets is not None:
            extra["instance_targets"] = rec.instance_targets
        return Sample(
            id=rec.id,
            image_path=str(rec.image_path),
            query=rec.texts[0],
            is_sentence=rec.is_sentence,
            gt_mask=rasterise(rec.polygons, rec.height, rec.width),
            split=self.split,
            dimension=rec.dimension,
            granularity=rec.granularity,
            instances=rec.instances,
            extra=extra,
        )


@register_reader("reasonseg")
def open_reasonseg(root: str, split: str, strict: bool = True) -> ReasonSegDataset:
    return ReasonSegDataset(root, split, strict=strict)
