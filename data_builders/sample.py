"""The one sample type every dataset reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Sample:
    """One (image, query, ground truth) evaluation or training item.

    Attributes:
        id: unique within the dataset split (e.g. the ReasonSeg file stem, or "<ref_id>_<sent_id>").
        image_path: path of the image file.
        query: the text query as the dataset states it (ReasonSeg: text[0]).
        is_sentence: long (sentence) vs short (phrase) query; decides ReasonSeg test short/long.
        gt_mask: uint8 H x W with 0 background, 1 target, 255 ignore.
        split: the split name ("train", "val", "test", "testA", ...).
        dimension: optional reasoning-dimension tag (recognition, spatial, geometric, multi_step, ...).
        granularity: optional ground-truth granularity level (0 group, 1 object, 2 part).
        instances: optional ground-truth instance masks for the oracle perception source, each
            ``{"rle": COCO RLE, "semantic": str, "level": 1 object | 2 part, "parent": int | None}``.
        extra: reader-specific fields (e.g. all rephrasings of the query).
    """

    id: str
    image_path: str
    query: str
    is_sentence: bool
    gt_mask: np.ndarray
    split: str
    dimension: str | None = None
    granularity: int | None = None
    instances: list[dict] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.gt_mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.gt_mask.shape[1])
