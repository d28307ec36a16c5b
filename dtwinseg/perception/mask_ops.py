"""Mask data and mask operations of the proposal stage: the ``Proposals`` container, the RLE-level
filters of the paper's refinement (pairwise IoU, containment, greedy de-duplication) and the batched
dense-mask operations (boxes, centroids) that run on the model's device.

The SAM driver (``proposals.py``) composes these; every function here is pure and tested on constructed
masks (tests/test_refinement.py). Same split as segment-anything's ``automatic_mask_generator.py`` /
``utils/amg.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from pycocotools import mask as mask_utils

CONTAINMENT_MODES = ("largest", "all-larger")


@dataclass
class Proposals:
    """N mask proposals for one H x W image (all arrays on the CPU).

    Attributes:
        rles: N COCO RLEs (``counts`` as str).
        boxes: N x 4 float, (x_min, y_min, x_max, y_max) in pixels, max inclusive (as SAM's AMG).
        predicted_iou: N SAM predicted IoUs.
        stability: N stability scores (full-size logits, as SamAutomaticMaskGenerator measures them;
            low-res logits with ``exact_filters: false``).
        points: N x 2 prompt points (x, y) in pixels that produced each mask.
        centroids: N x 2 mask centroids (mean x, mean y of the pixels; paper eq. 2), computed on the
            device from the full-size masks before RLE encoding; (0, 0) for an empty mask.
        height, width: image size in pixels.
        timings: seconds per stage (and counts).
    """

    rles: list[dict]
    boxes: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray
    points: np.ndarray
    height: int
    width: int
    centroids: np.ndarray | None = None
    timings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.centroids is None:
            self.centroids = centroids_of_rles(self.rles) if self.rles else np.zeros((0, 2), np.float32)

    def __len__(self) -> int:
        return len(self.rles)

    def areas(self) -> np.ndarray:
        """Mask areas in pixels (N,)."""
        return rle_areas(self.rles)

    def masks(self) -> np.ndarray:
        """Decode to a bool N x H x W array."""
        if not self.rles:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return mask_utils.decode(coco_rles(self.rles)).transpose(2, 0, 1).astype(bool)

    def select(self, keep: np.ndarray | list[int]) -> Proposals:
        """The proposals at indices ``keep`` (in that order)."""
        keep = np.asarray(keep, dtype=np.int64)
        assert self.centroids is not None
        return Proposals(
            rles=[self.rles[i] for i in keep],
            boxes=self.boxes[keep],
            predicted_iou=self.predicted_iou[keep],
            stability=self.stability[keep],
            points=self.points[keep],
            height=self.height,
            width=self.width,
            centroids=self.centroids[keep],
            timings=dict(self.timings),
        )

    @classmethod
    def empty(cls, height: int, width: int) -> Proposals:
        return cls([], np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                   np.zeros((0, 2), np.float32), height, width, centroids=np.zeros((0, 2), np.float32))


def coco_rles(rles: list[dict]) -> list[dict]:
    """RLEs with ``counts`` as bytes, as pycocotools' C functions want them."""
    return [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)
             else r["counts"]} for r in rles]


def rle_areas(rles: list[dict]) -> np.ndarray:
    """Areas in pixels of RLE masks (N,), int64."""
    return mask_utils.area(coco_rles(rles)).astype(np.int64) if rles else np.zeros(0, np.int64)


# --- RLE-level filters (pycocotools, vectorised in C) ---------------------------------------------

def pairwise_iou(rles: list[dict]) -> np.ndarray:
    """N x N mask IoU matrix, IoU(m_i, m_j) = |m_i ∩ m_j| / |m_i ∪ m_j|."""
    if not rles:
        return np.zeros((0, 0))
    c = coco_rles(rles)
    return np.asarray(mask_utils.iou(c, c, [0] * len(c)), dtype=np.float64).reshape(len(c), len(c))


def containment_matrix(rles: list[dict], targets: list[dict] | None = None) -> np.ndarray:
    """C[j, k] = |m_j ∩ t_k| / |m_j| (N x K; 0 for empty m_j). ``targets`` defaults to ``rles``."""
    targets = rles if targets is None else targets
    if not rles or not targets:
        return np.zeros((len(rles), len(targets)))
    c, t = coco_rles(rles), coco_rles(targets)
    # pycocotools' crowd IoU is |dt ∩ gt| / |dt|: exactly containment of dt in gt.
    m = np.asarray(mask_utils.iou(c, t, [1] * len(t)), dtype=np.float64).reshape(len(c), len(t))
    return np.nan_to_num(m, nan=0.0)


def dedup_by_iou(rles: list[dict], scores: np.ndarray, tau: float) -> np.ndarray:
    """Greedy de-duplication: visit masks by decreasing score, drop one whose IoU with a kept mask > tau
    (of every pair with IoU > tau the higher-scoring mask stays). Returns kept indices, ascending."""
    n = len(rles)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    iou = pairwise_iou(rles)
    kept: list[int] = []
    for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        if not kept or iou[i, kept].max() <= tau:
            kept.append(int(i))
    return np.sort(np.asarray(kept, dtype=np.int64))


def containment_filter(rles: list[dict], areas: np.ndarray, tau: float, mode: str = "largest",
                       max_area: float = 1.0, image_area: int | None = None) -> np.ndarray:
    """Drop masks lying inside a larger mask (paper eq. 3); returns the kept indices in ascending order.

    ``largest`` (the paper): m* = argmax area; drop m_j (j != *) when R(m_j) = |m_j ∩ m*| / |m_j| > tau.
    ``all-larger``: visit masks from the largest down; drop m_j when it is contained (> tau) in any
    larger kept mask.

    Never empties the twin: m* is always kept, and masks covering more than ``max_area`` of the image
    (``image_area`` pixels) are never used as m* / containers — they are kept, and m* is the largest mask
    at or below that fraction (no such mask: nothing is dropped). With ``max_area = 1`` this is exactly
    the paper's rule; below 1 it stops a near-full-image mask (background, the whole scene) from
    swallowing every object.
    """
    n = len(rles)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if mode not in CONTAINMENT_MODES:
        raise ValueError(f"containment must be one of {CONTAINMENT_MODES}, got {mode!r}")
    areas = np.asarray(areas, dtype=np.float64)
    if image_area is None:
        image_area = int(np.prod(rles[0]["size"]))
    container_ok = areas <= max_area * image_area
    if not container_ok.any():
        return np.arange(n, dtype=np.int64)
    if mode == "largest":
        star = int(np.argmax(np.where(container_ok, areas, -1.0)))
        inside = containment_matrix(rles, [rles[star]])[:, 0]
        keep = (inside <= tau) | ~container_ok
        keep[star] = True
        return np.flatnonzero(keep)
    c = containment_matrix(rles)
    kept: list[int] = []
    for j in np.argsort(-areas, kind="stable"):
        containers = [k for k in kept if container_ok[k]]
        if not container_ok[j] or not containers or c[j, containers].max() <= tau:
            kept.append(int(j))
    return np.sort(np.asarray(kept, dtype=np.int64))


def box_nms_order(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """AMG's box NMS (torchvision ``nms`` at box IoU ``thresh``; >= 1 disables) as indices by decreasing
    score."""
    from torchvision.ops import nms

    if thresh < 1.0 and len(scores):
        return nms(boxes.float(), scores.float(), thresh)
    return torch.argsort(scores, descending=True, stable=True)


def box_nms(props: Proposals, thresh: float) -> Proposals:
    """Proposals kept by AMG's box NMS, in decreasing predicted IoU."""
    order = box_nms_order(torch.as_tensor(props.boxes, dtype=torch.float32),
                          torch.as_tensor(props.predicted_iou, dtype=torch.float32), thresh)
    return props.select(order.numpy())


def part_level(props: Proposals, tau: float, box_nms_thresh: float) -> Proposals:
    """Paper step for L = 2: of every pair with mask IoU > tau the lower predicted IoU goes (on the
    candidates before any NMS), then AMG's box NMS (``box_nms_thresh``, 1 disables) on the rest."""
    return box_nms(props.select(dedup_by_iou(props.rles, props.predicted_iou, tau)), box_nms_thresh)


# --- dense masks on the device (batched) ---------------------------------------------------------

def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes (x_min, y_min, x_max, y_max), max inclusive, of N x H x W bool masks -> N x 4 float;
    all zeros for an empty mask (as SAM's batched_mask_to_box, from two any() projections)."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    y0 = rows.int().argmax(dim=1)
    y1 = h - 1 - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = w - 1 - cols.flip(1).int().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return boxes * rows.any(dim=1, keepdim=True)


def mask_centroids(masks: torch.Tensor) -> torch.Tensor:
    """Centroids c_i = (mean x, mean y) of the pixels of N x H x W bool masks (paper eq. 2) -> N x 2
    float64; empty -> (0, 0). Row / column projections, so no N x H x W float copy."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 2, dtype=torch.float64, device=masks.device)
    col_counts = masks.sum(1, dtype=torch.int64).double()  # N x W
    row_counts = masks.sum(2, dtype=torch.int64).double()  # N x H
    area = col_counts.sum(1).clamp(min=1)
    xs = (col_counts * torch.arange(w, device=masks.device, dtype=torch.float64)).sum(1) / area
    ys = (row_counts * torch.arange(h, device=masks.device, dtype=torch.float64)).sum(1) / area
    return torch.stack([xs, ys], dim=1)


def centroids_of_rles(rles: list[dict]) -> np.ndarray:
    """Centroids (x, y) of RLE masks -> N x 2 float32 (decoded in chunks to bound memory)."""
    out = []
    for part in _chunks(rles, 32):
        dense = torch.from_numpy(mask_utils.decode(coco_rles(part)).transpose(2, 0, 1).astype(bool))
        out.append(mask_centroids(dense).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 2), np.float32)


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
