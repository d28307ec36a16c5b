"""RefCOCO / RefCOCO+ / RefCOCOg reader ("refer" format, as LISA's refer-seg validation reads it).

On disk (``root`` = the folder holding the datasets, e.g. LISA's ``refer_seg/``)::

    <root>/<dataset>/refs(<splitBy>).p       # pickled list of refs; splitBy umd for refcocog
                                              #   (google as fallback), unc for refcoco / refcoco+
    <root>/<dataset>/instances.json          # COCO images / annotations / categories
    <root>/images/<file_name>                # COCO train2014 images, COCO_train2014_%012d.jpg
        (also accepted: <root>/images/train2014/, <root>/images/mscoco/images/train2014/)

Names: ``refcoco``, ``refcoco+``, ``refcocog``; splits ``val``, ``testA``, ``testB`` (refcoco,
refcoco+), ``val``, ``test`` (refcocog umd), and ``train``. One Sample per (ref, sentence) with id
``"<ref_id>_<sent_id>"``; the query is the sentence stripped and lower-cased (``is_sentence`` False:
referring expressions are phrases).

Ground truth as the reference builds it: polygons via ``frPyObjects`` + ``decode`` (or RLE), then the
per-polygon maps are *summed*; pixels covered by two polygons of one annotation get 2, which the
reference metric counts as background, so they are 0 here. An empty segmentation is all zeros.
``Sample.instances`` holds every annotation of the image (union RLE, category name as ``semantic``,
level 1): the oracle perception source for RefCOCO.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dtwinseg.data_builders.reader_utils import ListDataset, get_field, read_json_fallback, require_dir
from dtwinseg.data_builders.registry import register_reader
from dtwinseg.data_builders.sample import Sample
from pycocotools import mask as mask_utils

from dtwinseg.io import DataError

SPLIT_BY = {"refcoco": ("unc",), "refcoco+": ("unc",), "refcocog": ("umd", "google")}
IMAGE_DIRS = ("images", "images/train2014", "images/mscoco/images/train2014")


@dataclass
class RefRecord:
    id: str
    ref_id: int
    ann_id: int
    image_id: int
    query: str
    raw_sentence: str


def load_refs(path: Path) -> list:
    """The pickled refs list (Python 2 pickles decoded as latin-1 if needed)."""
    try:
        with open(path, "rb") as f:
            try:
                refs = pickle.load(f)
            except UnicodeDecodeError:
                f.seek(0)
                refs = pickle.load(f, encoding="latin1")
    except FileNotFoundError as e:
        raise DataError(path, None, "refs file not found") from e
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as e:
        raise DataError(path, None, f"unreadable pickle: {e}") from e
    if not isinstance(refs, list):
        raise DataError(path, None, f"expected a list of refs, got {type(refs).__name__}")
    return refs


def check_segmentation(seg: Any, path: Path, where: str) -> Any:
    """A COCO segmentation: list of polygons (flat [x, y, ...], even length >= 4), an RLE or list of RLEs."""
    if isinstance(seg, dict):
        seg = [seg]
    if not isinstance(seg, list):
        raise DataError(path, where, f"expected polygons or RLE, got {type(seg).__name__}")
    for k, part in enumerate(seg):
        if isinstance(part, dict):
            hw = get_field(part, "size", list, path, f"{where}[{k}].size")
            get_field(part, "counts", (str, bytes, list), path, f"{where}[{k}].counts")
            if len(hw) != 2:
                raise DataError(path, f"{where}[{k}].size", f"expected [height, width], got {hw!r}")
        elif isinstance(part, list):
            ok = len(part) >= 4 and len(part) % 2 == 0 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in part)
            if not ok:
                raise DataError(path, f"{where}[{k}]", "bad polygon: need an even number (>= 4) of finite coordinates")
        else:
            raise DataError(path, f"{where}[{k}]", f"expected a polygon or RLE, got {type(part).__name__}")
        if type(part) is not type(seg[0]):
            raise DataError(path, f"{where}[{k}]", "polygons and RLEs mixed in one segmentation")
    return seg


def segmentation_rles(seg: list, height: int, width: int) -> list[dict]:
    """pycocotools RLEs (bytes counts) of a checked segmentation, one per polygon / RLE part."""
    if not seg:
        return []
    if isinstance(seg[0], list):
        return mask_utils.frPyObjects(seg, height, width)
    out = []
    for part in seg:
        if isinstance(part["counts"], list):
            out.append(mask_utils.frPyObjects(part, *part["size"]))
        else:
            counts = part["counts"]
            out.append({"size": part["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
    return out


def reference_mask(seg: list, height: int, width: int) -> np.ndarray:
    """uint8 0/1 ground truth: per-part maps summed as the reference does; only count == 1 is target."""
    rles = segmentation_rles(seg, height, width)
    if not rles:
        return np.zeros((height, width), dtype=np.uint8)
    summed = mask_utils.decode(rles).sum(axis=2)
    return (summed == 1).astype(np.uint8)


def union_rle(seg: list, height: int, width: int) -> dict:
    """JSON-safe union RLE of one annotation (for Sample.instances)."""
    rles = segmentation_rles(seg, height, width)
    merged = mask_utils.merge(rles) if rles else mask_utils.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]
    return {"size": [int(merged["size"][0]), int(merged["size"][1])], "counts": merged["counts"].decode("ascii")}


class RefCOCODataset(ListDataset[RefRecord]):
    """One referring-expression dataset split; masks decoded when a sample is read."""

    def __init__(self, root: str | os.PathLike, split: str, strict: bool = True, dataset: str = "refcoco") -> None:
        super().__init__(split, strict)
        if dataset not in SPLIT_BY:
            raise ValueError(f"unknown dataset {dataset!r}; use one of {sorted(SPLIT_BY)}")
        self.name = dataset
        self.root = Path(root)
        folder = require_dir(self.root / dataset, root, f"{dataset} folder")
        self.refs_path = self._refs_file(folder)
        self.instances_path = folder / "instances.json"
        self._images: dict[int, dict] = {}
        self._anns: dict[int, dict] = {}
        self._anns_by_image: dict[int, list[int]] = {}
        self._categories: dict[int, str] = {}
        self._read_instances()
        refs = load_refs(self.refs_path)
        available = sorted({r.get("split") for r in refs if isinstance(r, dict) and isinstance(r.get("split"), str)})
        if split not in available:
            raise DataError(self.refs_path, "split", f"no refs in split {split!r}; available: {available}")
        for k, ref in enumerate(refs):
            if isinstance(ref, dict) and ref.get("split") == split:
                got = self._try(lambda ref=ref, k=k: self._ref_records(ref, k), str(self.refs_path))
                self._records.extend(got or [])

    @staticmethod
    def _refs_file(folder: Path) -> Path:
        names = [folder / f"refs({by}).p" for by in SPLIT_BY[folder.name]]
        return next((p for p in names if p.is_file()), names[0])

    def _read_instances(self) -> None:
        path = self.instances_path
        if not path.is_file():
            raise DataError(path, None, "instances.json not found")
        doc = read_json_fallback(path)
        for k, img in enumerate(get_field(doc, "images", list, path, "images")):
            iid = get_field(img, "id", int, path, f"images[{k}].id")
            get_field(img, "height", int, path, f"images[{k}].height")
            get_field(img, "width", int, path, f"images[{k}].width")
            self._images[iid] = img
        for k, cat in enumerate(get_field(doc, "categories", list, path, "categories")):
            self._categories[get_field(cat, "id", int, path, f"categories[{k}].id")] = get_field(
                cat, "name", str, path, f"categories[{k}].name")
        for k, ann in enumerate(get_field(doc, "annotations", list, path, "annotations")):
            aid = get_field(ann, "id", int, path, f"annotations[{k}].id")
            self._anns[aid] = ann
            self._anns_by_image.setdefault(get_field(ann, "image_id", int, path, f"annotations[{k}].image_id"),
                                           []).append(aid)

    def _ref_records(self, ref: dict, k: int) -> list[RefRecord]:
        src, where = self.refs_path, f"refs[{k}]"
        ref_id = get_field(ref, "ref_id", int, src, f"{where}.ref_id")
        ann_id = get_field(ref, "ann_id", int, src, f"{where}.ann_id")
        image_id = get_field(ref, "image_id", int, src, f"{where}.image_id")
        sentences = get_field(ref, "sentences", list, src, f"{where}.sentences")
        if ann_id not in self._anns:
            raise DataError(self.instances_path, "annotations", f"no annotation with id {ann_id} (ref {ref_id})")
        if image_id not in self._images:
            raise DataError(self.instances_path, "images", f"no image with id {image_id} (ref {ref_id})")
        self._check_annotation(ann_id)
        out = []
        for j, sent in enumerate(sentences):
            sent_id = get_field(sent, "sent_id", int, src, f"{where}.sentences[{j}].sent_id")
            text = get_field(sent, "sent", str, src, f"{where}.sentences[{j}].sent")
            out.append(RefRecord(f"{ref_id}_{sent_id}", ref_id, ann_id, image_id, text.strip().lower(), text))
        return out

    def _check_annotation(self, ann_id: int) -> None:
        ann = self._anns[ann_id]
        check_segmentation(get_field(ann, "segmentation", (list, dict), self.instances_path,
                                     f"annotations[id={ann_id}].segmentation"),
                           self.instances_path, f"annotations[id={ann_id}].segmentation")

    def image_path(self, image_id: int) -> Path:
        """Path of an image: its ``file_name`` (or COCO_train2014_%012d.jpg) in the first image folder that has it."""
        name = self._images[image_id].get("file_name") or f"COCO_train2014_{image_id:012d}.jpg"
        cands = [self.root / d / name for d in IMAGE_DIRS]
        return next((c for c in cands if c.is_file()), cands[0])

    def _instances(self, image_id: int, height: int, width: int) -> list[dict]:
        out = []
        for aid in self._anns_by_image.get(image_id, []):
            self._check_annotation(aid)
            ann = self._anns[aid]
            seg = ann["segmentation"] if isinstance(ann["segmentation"], list) else [ann["segmentation"]]
            out.append({"rle": union_rle(seg, height, width),
                        "semantic": self._categories.get(ann.get("category_id"), "object"),
                        "level": 1, "parent": None, "ann_id": aid})
        return out

    def _record_file(self, record: RefRecord) -> str:
        return str(self.instances_path)

    def _load(self, rec: RefRecord) -> Sample:
        img = self._images[rec.image_id]
        h, w = img["height"], img["width"]
        seg = self._anns[rec.ann_id]["segmentation"]
        seg = seg if isinstance(seg, list) else [seg]
        image_path = self.image_path(rec.image_id)
        if not image_path.is_file():
            raise DataError(image_path, None, f"image file not found (also looked in {', '.join(IMAGE_DIRS)})")
        return Sample(
            id=rec.id,
            image_path=str(image_path),
            query=rec.query,
            is_sentence=False,
            gt_mask=reference_mask(seg, h, w),
            split=self.split,
            instances=self._instances(rec.image_id, h, w),
            extra={"ref_id": rec.ref_id, "ann_id": rec.ann_id, "image_id": rec.image_id,
                   "sentence": rec.raw_sentence, "dataset": self.name},
        )


@register_reader("refcoco")
def open_refcoco(root: str, split: str, strict: bool = True) -> RefCOCODataset:
    return RefCOCODataset(root, split, strict=strict, dataset="refcoco")


@register_reader("refcoco+")
def open_refcoco_plus(root: str, split: str, strict: bool = True) -> RefCOCODataset:
    return RefCOCODataset(root, split, strict=strict, dataset="refcoco+")


@register_reader("refcocog")
def open_refcocog(root: str, split: str, strict: bool = True) -> RefCOCODataset:
    return RefCOCODataset(root, split, strict=strict, dataset="refcocog")
