"""The Digital Twin: one structured representation of an image that every stage reads and writes.

A twin holds the image's objects (masks as COCO RLE, never dense arrays on disk), their boxes, areas,
SAM quality scores and semantic descriptions, plus the granularity level chosen for the query and the
provenance (which perception config built it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from dtwinseg.io import DataError, atomic_write_text

SCHEMA_VERSION = 1


class Granularity(IntEnum):
    """Segmentation level chosen by the VLM (paper sec. 3.1): 0 object group, 1 object, 2 object part."""

    GROUP = 0
    OBJECT = 1
    PART = 2


def encode_rle(mask: np.ndarray) -> dict:
    """Encode one H x W mask (bool / 0-1) as COCO RLE with ``counts`` as a str (JSON-safe)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def encode_rles(masks: np.ndarray) -> list[dict]:
    """Encode N x H x W masks in one pycocotools call (vectorised in C)."""
    masks = np.asarray(masks, dtype=np.uint8)
    if masks.ndim != 3:
        raise ValueError(f"expected N x H x W masks, got shape {masks.shape}")
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in rles]


def decode_rle(rle: dict) -> np.ndarray:
    """Decode COCO RLE (counts as str or bytes, compressed or a list of ints) to a bool H x W array."""
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(counts, str):
        rle = {"size": rle["size"], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box (x_min, y_min, x_max, y_max) in pixels, max inclusive; all zeros for an empty mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1]))


@dataclass
class TwinObject:
    """One object of the twin.

    Attributes:
        id: index of the object in the twin (the number the LLM answers with).
        rle: COCO RLE of the H x W mask, ``counts`` as str.
        bbox: (x_min, y_min, x_max, y_max) in pixels.
        area: mask area as a percentage of the image (0-100).
        predicted_iou: SAM's predicted IoU for the mask (1.0 for oracle masks).
        stability: SAM's stability score (1.0 for oracle masks).
        semantic: the VLM's description S_i ("" until assigned).
        level: granularity level the mask was refined for (see Granularity).
    """

    id: int
    rle: dict
    bbox: tuple[float, float, float, float]
    area: float
    predicted_iou: float = 1.0
    stability: float = 1.0
    semantic: str = ""
    level: int = int(Granularity.OBJECT)

    @classmethod
    def from_mask(cls, id: int, mask: np.ndarray, **kwargs: Any) -> TwinObject:
        mask = np.asarray(mask, dtype=bool)
        area = 100.0 * float(mask.sum()) / float(mask.size)
        return cls(id=id, rle=encode_rle(mask), bbox=mask_bbox(mask), area=area, **kwargs)

    def mask(self) -> np.ndarray:
        return decode_rle(self.rle)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "rle": self.rle,
            "bbox": [float(v) for v in self.bbox],
            "area": self.area,
            "predicted_iou": self.predicted_iou,
            "stability": self.stability,
            "semantic": self.semantic,
            "level": self.level,
        }

    @classmethod
    def from_dict(cls, d: Any, *, where: str = "object") -> TwinObject:
        if not isinstance(d, dict):
            raise DataError(None, where, f"expected an object, got {type(d).__name__}")
        for name in ("id", "rle", "bbox", "area", "predicted_iou", "stability", "semantic", "level"):
            if name not in d:
                raise DataError(None, f"{where}.{name}", "missing")
        rle = d["rle"]
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise DataError(None, f"{where}.rle", "expected {'size': [H, W], 'counts': ...}")
        bbox = d["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise DataError(None, f"{where}.bbox", "expected [x_min, y_min, x_max, y_max]")
        return cls(
            id=int(d["id"]),
            rle=rle,
            bbox=tuple(float(v) for v in bbox),  # type: ignore[arg-type]
            area=float(d["area"]),
            predicted_iou=float(d["predicted_iou"]),
            stability=float(d["stability"]),
            semantic=str(d["semantic"]),
            level=int(d["level"]),
        )


@dataclass
class DigitalTwin:
    """D = {(i, m_i, S_i)} for one image (and the query it was built for).

    Attributes:
        image_id: the sample / image identifier.
        height, width: image size in pixels; every mask has this size.
        granularity: level chosen for the query (Granularity).
        objects: the twin's objects; ``objects[k].id`` are unique.
        query: the query the twin was built for ("" when query-independent).
        provenance: how it was built (perception config, its hash, backends, timings).
    """

    image_id: str
    height: int
    width: int
    granularity: int = int(Granularity.OBJECT)
    objects: list[TwinObject] = field(default_factory=list)
    query: str = ""
    provenance: dict = field(default_factory=dict)

    @classmethod
    def from_masks(
        cls,
        image_id: str,
        masks: np.ndarray | Sequence[np.ndarray],
        *,
        semantics: Sequence[str] | None = None,
        predicted_ious: Sequence[float] | None = None,
        stabilities: Sequence[float] | None = None,
        granularity: int = int(Granularity.OBJECT),
        query: str = "",
        provenance: dict | None = None,
    ) -> DigitalTwin:
        """Build a twin from N x H x W masks; ids are 0..N-1 in the given order."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"expected N x H x W masks, got shape {masks.shape}")
        n, h, w = masks.shape
        rles = encode_rles(masks)
        areas = masks.reshape(n, -1).sum(1) * (100.0 / (h * w)) if n else []
        objects = []
        for i in range(n):
            objects.append(
                TwinObject(
                    id=i,
                    rle=rles[i],
                    bbox=mask_bbox(masks[i]),
                    area=float(areas[i]),
                    predicted_iou=float(predicted_ious[i]) if predicted_ious is not None else 1.0,
                    stability=float(stabilities[i]) if stabilities is not None else 1.0,
                    semantic=semantics[i] if semantics is not None else "",
                    level=int(granularity),
                )
            )
        return cls(image_id=image_id, height=h, width=w, granularity=int(granularity), objects=objects,
                   query=query, provenance=dict(provenance or {}))

    # --- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.objects)

    @property
    def ids(self) -> list[int]:
        return [o.id for o in self.objects]

    def get(self, obj_id: int) -> TwinObject:
        for o in self.objects:
            if o.id == obj_id:
                return o
        raise KeyError(f"twin {self.image_id!r} has no object {obj_id}")

    def content_digest(self) -> bytes:
        """A digest of what reasoning and scoring read: the image size and each object's id, semantics, box
        and mask (RLE). Equal for a twin reloaded from its file; used as the key of per-twin memos."""
        h = hashlib.blake2b(digest_size=20)
        h.update(f"{self.height}x{self.width}|{len(self.objects)}|".encode())
        for o in self.objects:
            counts = o.rle["counts"]
            raw = counts.encode("utf-8", "surrogatepass") if isinstance(counts, str) else bytes(counts)
            sem = o.semantic.encode("utf-8", "surrogatepass")
            h.update(f"{o.id}|{o.rle['size']}|{list(o.bbox)}|{len(raw)}|{len(sem)}|".encode())
            h.update(raw)
            h.update(sem)
        return h.digest()

    def masks(self) -> np.ndarray:
        """All masks as a bool N x H x W array (decoded in one pycocotools call)."""
        if not self.objects:
            return np.zeros((0, self.height, self.width), dtype=bool)
        rles = [{"size": o.rle["size"], "counts": o.rle["counts"].encode("ascii")
                 if isinstance(o.rle["counts"], str) else o.rle["counts"]} for o in self.objects]
        return mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)

    def union(self, ids: Sequence[int]) -> np.ndarray:
        """Union of the masks of ``ids`` (bool H x W); empty ids give an empty mask."""
        out = np.zeros((self.height, self.width), dtype=bool)
        for i in ids:
            out |= self.get(int(i)).mask()
        return out

    # --- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "image_id": self.image_id,
            "height": self.height,
            "width": self.width,
            "granularity": self.granularity,
            "query": self.query,
            "provenance": self.provenance,
            "objects": [o.to_dict() for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: Any, *, path: str | os.PathLike | None = None) -> DigitalTwin:
        """Validate and load; errors name the file (when given) and the field."""
        try:
            if not isinstance(d, dict):
                raise DataError(None, None, f"expected a JSON object, got {type(d).__name__}")
            if "schema_version" not in d:
                raise DataError(None, "schema_version", "missing")
            if d["schema_version"] != SCHEMA_VERSION:
                raise DataError(None, "schema_version",
                                f"is {d['schema_version']!r}, this dtwinseg reads version {SCHEMA_VERSION}")
            for name in ("image_id", "height", "width", "granularity", "objects"):
                if name not in d:
                    raise DataError(None, name, "missing")
            if not isinstance(d["objects"], list):
                raise DataError(None, "objects", "expected a list")
            objects = [TwinObject.from_dict(o, where=f"objects[{k}]") for k, o in enumerate(d["objects"])]
            ids = [o.id for o in objects]
            if len(set(ids)) != len(ids):
                raise DataError(None, "objects", f"duplicate object ids {sorted(ids)}")
            twin = cls(image_id=str(d["image_id"]), height=int(d["height"]), width=int(d["width"]),
                       granularity=int(d["granularity"]), objects=objects, query=str(d.get("query", "")),
                       provenance=dict(d.get("provenance") or {}))
            for k, o in enumerate(objects):
                if list(o.rle["size"]) != [twin.height, twin.width]:
                    raise DataError(None, f"objects[{k}].rle.size",
                                    f"{o.rle['size']} does not match the twin size {[twin.height, twin.width]}")
            return twin
        except DataError as e:
            if path is not None and e.path is None:
                raise DataError(path, e.field, e.message) from None
            raise

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, *, path: str | os.PathLike | None = None) -> DigitalTwin:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, None, f"invalid JSON ({e.msg} at line {e.lineno})") from e
        return cls.from_dict(d, path=path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file + rename)."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> DigitalTwin:
        return cls.from_json(Path(path).read_text(encoding="utf-8"), path=path)
