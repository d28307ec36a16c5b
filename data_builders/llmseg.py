"""LLM-Seg40K reader (wangjunchi/LLMSeg format).

On disk (``root`` = the dataset folder)::

    <root>/train.json | validation.json | test.json      # split names: train, val (or validation), test
    <root>/images/<from_dataset>/<image>                  # e.g. images/coco/000000123456.jpg,
                                                          #      images/ego_objects/<uuid>.jpg
        (also accepted: <root>/images/<image>, <root>/<from_dataset>/<image>, or an absolute key)

Each split file is a dict keyed by image file name::

    {"<image>": {"from_dataset": "coco" | "ego_objects",
                 "qa_pairs": [{"question", "answer", "rle_seg": {"size": [H, W], "counts"},
                               "segmentation_path": "<png>"}]}}

The mask is ``rle_seg`` decoded with pycocotools (> 0) when present, else the PNG at
``segmentation_path`` (> 0) - an absolute path as given, else relative to ``root``, else
``<root>/masks/<file name>``. Every question is a sentence query. One Sample per question, id
``"<image>#<k>"`` (k = index in ``qa_pairs``); ``extra`` keeps ``answer`` and ``from_dataset``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dtwinseg.data_builders.reader_utils import (
    ListDataset,
    check_rle,
    decode_rle_mask,
    get_field,
    image_size,
    read_json_fallback,
    read_png_mask,
)
from dtwinseg.data_builders.registry import register_reader
from dtwinseg.data_builders.sample import Sample

from dtwinseg.io import DataError

SPLIT_FILES = {"train": "train.json", "val": "validation.json", "validation": "validation.json", "test": "test.json"}


@dataclass
class LLMSegRecord:
    id: str
    image_path: Path
    question: str
    answer: str | None
    from_dataset: str
    rle: dict | None
    png_path: Path | None
    source: Path  # the split file, for error messages


def find_image(root: Path, image: str, from_dataset: str) -> Path | None:
    """First existing candidate among the documented image locations, else None."""
    candidates = [root / "images" / from_dataset / image, root / "images" / image, root / from_dataset / image]
    if os.path.isabs(image):
        candidates.insert(0, Path(image))
    return next((c for c in candidates if c.is_file()), None)


def find_mask_png(root: Path, seg_path: str) -> Path:
    """The PNG a ``segmentation_path`` names (see module docstring); the first candidate if none exists."""
    given = Path(seg_path)
    candidates = [given] if given.is_absolute() else [root / given]
    candidates.append(root / "masks" / given.name)
    return next((c for c in candidates if c.is_file()), candidates[0])


def parse_qa(qa: object, root: Path, source: Path, where: str) -> tuple[str, str | None, dict | None, Path | None]:
    """(question, answer, rle or None, png path or None) of one checked qa pair."""
    question = get_field(qa, "question", str, source, f"{where}.question")
    answer = get_field(qa, "answer", str, source, f"{where}.answer", default=None)
    rle = get_field(qa, "rle_seg", dict, source, f"{where}.rle_seg", default=None)
    if rle is not None:
        return question, answer, check_rle(rle, source, f"{where}.rle_seg"), None
    seg = get_field(qa, "segmentation_path", str, source, f"{where}.segmentation_path", default=None)
    if seg is None:
        raise DataError(source, f"{where}", "needs 'rle_seg' or 'segmentation_path'")
    return question, answer, None, find_mask_png(root, seg)


class LLMSegDataset(ListDataset[LLMSegRecord]):
    """LLM-Seg40K split: one Sample per (image, question); masks decoded when a sample is read."""

    name = "llmseg40k"

    def __init__(self, root: str | os.PathLike, split: str, strict: bool = True) -> None:
        super().__init__(split, strict)
        self.root = Path(root)
        if split not in SPLIT_FILES:
            raise DataError(root, "split", f"unknown LLM-Seg40K split {split!r}; use one of {sorted(SPLIT_FILES)}")
        self.source = self.root / SPLIT_FILES[split]
        data = self._try(lambda: self._read_split_file(), str(self.source))
        for image, entry in (data or {}).items():
            self._add_entry(image, entry)

    def _read_split_file(self) -> dict:
        if not self.source.is_file():
            raise DataError(self.source, None, "split file not found")
        data = read_json_fallback(self.source)
        if not isinstance(data, dict):
            raise DataError(self.source, None, f"expected an object keyed by image name, got {type(data).__name__}")
        return data

    def _add_entry(self, image: str, entry: object) -> None:
        src = self.source

        def parse() -> tuple[str, list]:
            from_dataset = get_field(entry, "from_dataset", str, src, f"{image}.from_dataset")
            return from_dataset, get_field(entry, "qa_pairs", list, src, f"{image}.qa_pairs")

        parsed = self._try(parse, str(src))
        if parsed is None:
            return
        from_dataset, qas = parsed
        image_path = find_image(self.root, image, from_dataset)
        if image_path is None:
            self._try(lambda: _raise(DataError(src, image, f"image not found under {self.root}/images/"
                                                            f"{from_dataset}/ or {self.root}/images/")), str(src))
            return
        for k, qa in enumerate(qas):
            got = self._try(lambda qa=qa, k=k: parse_qa(qa, self.root, src, f"{image}.qa_pairs[{k}]"), str(src))
            if got is not None:
                question, answer, rle, png = got
                self._records.append(LLMSegRecord(f"{image}#{k}", image_path, question, answer, from_dataset,
                                                  rle, png, src))

    def _record_file(self, record: LLMSegRecord) -> str:
        return str(record.png_path or record.source)

    def _load(self, rec: LLMSegRecord) -> Sample:
        if rec.rle is not None:
            mask = decode_rle_mask(rec.rle, rec.source, f"{rec.id}.rle_seg")
        else:
            mask = read_png_mask(rec.png_path)
        height, width = image_size(rec.image_path)
        if mask.shape != (height, width):
            where = rec.png_path or rec.source
            raise DataError(where, None if rec.png_path else f"{rec.id}.rle_seg",
                            f"mask size {list(mask.shape)} does not match image size {[height, width]}")
        return Sample(
            id=rec.id,
            image_path=str(rec.image_path),
            query=rec.question,
            is_sentence=True,
            gt_mask=np.ascontiguousarray(mask, dtype=np.uint8),
            split=self.split,
            extra={"answer": rec.answer, "from_dataset": rec.from_dataset},
        )


def _raise(err: Exception) -> None:
    raise err


@register_reader("llmseg40k", "llmseg", "llm-seg40k")
def open_llmseg(root: str, split: str, strict: bool = True) -> LLMSegDataset:
    return LLMSegDataset(root, split, strict=strict)
