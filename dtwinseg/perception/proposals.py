"""SAM "everything mode" mask proposals with the paper's level-specific refinement (method.md sec. 1.2-1.3).

Pipeline of :meth:`ProposalGenerator.generate` (refinement off = SamAutomaticMaskGenerator's result):

1. the image encoder runs once (``SamPredictor.set_image``);
2. the mask decoder runs on a ``points_per_side`` x ``points_per_side`` grid in batches of
   ``points_per_batch`` points, 3 masks per point (multimask), through FastMaskDecoder (same weights and
   mathematics, shared image-token work done once; prompts whose 3 predicted IoUs are all <= theta skip
   the output upscaling, as their masks are dropped anyway);
3. on the LOW-RES logits (256 x 256, cropped to the image's valid region), on the model's device and in
   batched tensor ops: predicted-IoU filter (``> pred_iou_thresh``), stability filter (``>= thresh``),
   boxes, box NMS;
4. only the survivors are upsampled to full size (exactly SAM's ``postprocess_masks``), thresholded,
   boxed, and RLE-encoded in one pycocotools call per chunk.

SamAutomaticMaskGenerator instead upsamples every candidate (3 x points) to full size in float32 before
any filter and encodes RLE in a Python loop; the masks that survive are the same, because the survivors
are upsampled by the same operations. The only difference: stability and NMS boxes are measured on
low-res logits, so a mask whose stability sits within a hair of the threshold can be decided differently
(``benchmarks/proposals.py`` reports the agreement).

Refinement (:meth:`ProposalGenerator.refine`): part level (2) drops the lower-predicted-IoU mask of every
pair with mask IoU > ``part_iou_tau``; object / group level (0, 1) re-prompts SAM with each mask's centroid
in multimask mode, keeps the largest returned mask, then drops masks contained (> ``containment_tau`` of
their area) in the largest mask (``containment: largest``, the paper) or in any larger kept mask
(``containment: all-larger``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from dtwinseg.perception.fast_decoder import fast_decoder_for
from dtwinseg.twin import Granularity, encode_rles

CONTAINMENT_MODES = ("largest", "all-larger")
AUTOCAST_MODES = ("none", "bf16", "fp16")


@dataclass
class ProposalConfig:
    """Every knob of the proposal stage; defaults are SAM's / the paper's.

    Attributes:
        points_per_side: grid side; the decoder is prompted with points_per_side**2 points (paper: 32).
        points_per_batch: points per decoder call (memory vs speed; AMG uses 64).
        pred_iou_thresh: theta, keep masks with predicted IoU > theta (paper / SAM: 0.88).
        stability_score_thresh: keep masks with stability >= this (SAM: 0.95); 0 disables the filter.
        stability_score_offset: logit offset of the stability score (SAM: 1.0).
        box_nms_thresh: box IoU above which the lower-scoring mask is dropped (SAM: 0.7); 1 disables.
        upsample_chunk: survivors upsampled to full size per step (bounds memory: chunk x H x W floats).
        autocast: "none" | "bf16" | "fp16": mixed precision for encoder + decoder (meant for GPUs).
        refine: apply the level-specific refinement after the proposals.
        part_iou_tau: tau, pairwise mask IoU above which part-level duplicates are dropped (0.7).
        containment_tau: tau', |m_j ∩ m*| / |m_j| above which m_j is dropped at object/group level (0.8).
        containment: "largest" (the paper: test against the single largest mask) | "all-larger".
        fast_decoder: run SAM's mask decoder through FastMaskDecoder (same weights and mathematics,
            shared image-token work done once; outputs equal up to float rounding).
        skip_rejected: with the fast decoder, prompts whose 3 masks all have predicted IoU <= theta skip
            the output upscaling (exact: the IoU filter drops those masks anyway).
        decoder_chunk: prompts per FastMaskDecoder step (bounds memory, ~50 MB per prompt in float32).
        exact_filters: measure stability and NMS boxes on the full-size logits of the IoU-filter
            survivors instead of on the low-res logits: bit-for-bit SamAutomaticMaskGenerator decisions
            at the cost of upsampling every IoU survivor (still skips the IoU rejects that AMG upsamples).
        object_dedup: at object/group level, also drop re-prompted masks that duplicate another
            (IoU > part_iou_tau): different centroids often return the same object. Project default, the
            paper is silent.
    """

    points_per_side: int = 32
    points_per_batch: int = 256
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    upsample_chunk: int = 32
    fast_decoder: bool = True
    decoder_chunk: int = 16
    skip_rejected: bool = True
    exact_filters: bool = False
    autocast: str = "none"
    refine: bool = True
    part_iou_tau: float = 0.7
    containment_tau: float = 0.8
    containment: str = "largest"
    object_dedup: bool = True

    def __post_init__(self) -> None:
        if self.containment not in CONTAINMENT_MODES:
            raise ValueError(f"containment must be one of {CONTAINMENT_MODES}, got {self.containment!r}")
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(f"autocast must be one of {AUTOCAST_MODES}, got {self.autocast!r}")
        if min(self.points_per_side, self.points_per_batch, self.upsample_chunk, self.decoder_chunk) < 1:
            raise ValueError("points_per_side, points_per_batch, upsample_chunk and decoder_chunk must be >= 1")

    @classmethod
    def from_dict(cls, d: dict | None) -> ProposalConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown proposal config fields: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Proposals:
    """N mask proposals for one H x W image (all arrays on the CPU).

    Attributes:
        rles: N COCO RLEs (``counts`` as str).
        boxes: N x 4 float, (x_min, y_min, x_max, y_max) in pixels, max inclusive (as SAM's AMG).
        predicted_iou: N SAM predicted IoUs.
        stability: N stability scores, as the filter measured them (low-res logits; full-size logits
            with ``exact_filters``).
        points: N x 2 prompt points (x, y) in pixels that produced each mask.
        height, width: image size in pixels.
        timings: seconds per stage.
    """

    rles: list[dict]
    boxes: np.ndarray
    predicted_iou: np.ndarray
    stability: np.ndarray
    points: np.ndarray
    height: int
    width: int
    timings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rles)

    def areas(self) -> np.ndarray:
        """Mask areas in pixels (N,)."""
        return mask_utils.area(_coco_rles(self.rles)).astype(np.int64) if self.rles else np.zeros(0, np.int64)

    def masks(self) -> np.ndarray:
        """Decode to a bool N x H x W array."""
        if not self.rles:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return mask_utils.decode(_coco_rles(self.rles)).transpose(2, 0, 1).astype(bool)

    def select(self, keep: np.ndarray | list[int]) -> Proposals:
        """The proposals at indices ``keep`` (in that order)."""
        keep = np.asarray(keep, dtype=np.int64)
        return Proposals(
            rles=[self.rles[i] for i in keep],
            boxes=self.boxes[keep],
            predicted_iou=self.predicted_iou[keep],
            stability=self.stability[keep],
            points=self.points[keep],
            height=self.height,
            width=self.width,
            timings=dict(self.timings),
        )

    @classmethod
    def empty(cls, height: int, width: int) -> Proposals:
        return cls([], np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                   np.zeros((0, 2), np.float32), height, width)

    @classmethod
    def concat(cls, parts: list[Proposals], height: int, width: int) -> Proposals:
        if not parts:
            return cls.empty(height, width)
        return cls(
            rles=[r for p in parts for r in p.rles],
            boxes=np.concatenate([p.boxes for p in parts]),
            predicted_iou=np.concatenate([p.predicted_iou for p in parts]),
            stability=np.concatenate([p.stability for p in parts]),
            points=np.concatenate([p.points for p in parts]),
            height=height,
            width=width,
        )


def _coco_rles(rles: list[dict]) -> list[dict]:
    """RLEs with ``counts`` as bytes, as pycocotools' C functions want them."""
    return [{"size": r["size"], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str)
             else r["counts"]} for r in rles]


# --- refinement on RLEs (pure functions, testable on constructed masks) ----------------------------

def pairwise_iou(rles: list[dict]) -> np.ndarray:
    """N x N mask IoU matrix (pycocotools, on RLE)."""
    if not rles:
        return np.zeros((0, 0))
    c = _coco_rles(rles)
    return np.asarray(mask_utils.iou(c, c, [0] * len(c)), dtype=np.float64).reshape(len(c), len(c))


def containment_matrix(rles: list[dict], targets: list[dict] | None = None) -> np.ndarray:
    """C[j, k] = |m_j ∩ t_k| / |m_j| (N x K; 0 for empty m_j). ``targets`` defaults to ``rles``."""
    targets = rles if targets is None else targets
    if not rles or not targets:
        return np.zeros((len(rles), len(targets)))
    c, t = _coco_rles(rles), _coco_rles(targets)
    # pycocotools' crowd IoU is |dt ∩ gt| / |dt|: exactly containment of dt in gt.
    m = np.asarray(mask_utils.iou(c, t, [1] * len(t)), dtype=np.float64).reshape(len(c), len(t))
    return np.nan_to_num(m, nan=0.0)


def dedup_by_iou(rles: list[dict], scores: np.ndarray, tau: float) -> np.ndarray:
    """Greedy de-duplication: visit masks by decreasing score, drop one whose IoU with a kept mask > tau.

    Returns the kept indices in ascending order.
    """
    n = len(rles)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    iou = pairwise_iou(rles)
    kept: list[int] = []
    for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        if not kept or iou[i, kept].max() <= tau:
            kept.append(int(i))
    return np.sort(np.asarray(kept, dtype=np.int64))


def containment_filter(rles: list[dict], areas: np.ndarray, tau: float, mode: str = "largest") -> np.ndarray:
    """Drop masks lying inside a larger mask; returns the kept indices in ascending order.

    ``largest``: with m* the largest mask, drop m_j (j != *) when |m_j ∩ m*| / |m_j| > tau (the paper).
    ``all-larger``: visit masks from the largest down; drop m_j when it is contained (> tau) in any
    larger mask that was kept.
    """
    n = len(rles)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if mode not in CONTAINMENT_MODES:
        raise ValueError(f"containment must be one of {CONTAINMENT_MODES}, got {mode!r}")
    areas = np.asarray(areas, dtype=np.float64)
    if mode == "largest":
        star = int(np.argmax(areas))
        inside = containment_matrix(rles, [rles[star]])[:, 0]
        keep = inside <= tau
        keep[star] = True
        return np.flatnonzero(keep)
    c = containment_matrix(rles)
    kept: list[int] = []
    for j in np.argsort(-areas, kind="stable"):
        if not kept or c[j, kept].max() <= tau:
            kept.append(int(j))
    return np.sort(np.asarray(kept, dtype=np.int64))


# --- the generator ------------------------------------------------------------------------------------

class ProposalGenerator:
    """Everything-mode proposals + refinement on one segment-anything ``Sam`` model.

    Usage::

        gen = ProposalGenerator.from_checkpoint("vit_h", "sam_vit_h_4b8939.pth", device="cuda")
        props = gen.generate(image)            # H x W x 3 uint8 RGB -> Proposals (unrefined)
        props = gen.refine(props, level=1)     # uses the embedding of the last generate()
    """

    def __init__(self, model: Any, config: ProposalConfig | None = None):
        from segment_anything import SamPredictor

        self.config = config or ProposalConfig()
        self.model = model
        self.predictor = SamPredictor(model)

    @classmethod
    def from_checkpoint(cls, model_type: str, checkpoint: str | None, *, device: str = "cpu",
                        config: ProposalConfig | None = None) -> ProposalGenerator:
        """Build SAM ``model_type`` (vit_h / vit_l / vit_b) from ``checkpoint`` (None: random weights)."""
        from segment_anything import sam_model_registry

        if model_type not in sam_model_registry:
            raise ValueError(f"unknown SAM model_type {model_type!r}; known: {sorted(sam_model_registry)}")
        model = sam_model_registry[model_type](checkpoint=checkpoint).to(device).eval()
        return cls(model, config)

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.autocast == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.autocast == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # --- stage 1: encoder ---------------------------------------------------------------------
    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """Run the image encoder once on an H x W x 3 uint8 RGB image."""
        with self._autocast():
            self.predictor.set_image(np.ascontiguousarray(image), "RGB")
        if self.predictor.features.dtype != torch.float32:
            self.predictor.features = self.predictor.features.float()

    def grid_points(self) -> np.ndarray:
        """The everything-mode prompts: P x 2 (x, y) pixel coordinates, in SAM's own grid order."""
        from segment_anything.utils.amg import build_all_layer_point_grids

        h, w = self.predictor.original_size
        return build_all_layer_point_grids(self.config.points_per_side, 0, 1)[0] * np.array([[w, h]])

    # --- stage 2: decoder ---------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, points_xy: np.ndarray, skip_rejected: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt the decoder with one point each: P x 2 pixel (x, y) -> low-res logits P x 3 x 256 x 256
        and predicted IoUs P x 3 (float32, on the model's device).

        ``skip_rejected`` (fast decoder only): prompts none of whose 3 masks has predicted IoU above
        ``pred_iou_thresh`` skip the upscaling and get -1e4 logits (the IoU filter drops them anyway)."""
        coords = self.predictor.transform.apply_coords(np.asarray(points_xy), self.predictor.original_size)
        pts = torch.as_tensor(coords, device=self.device)[:, None, :]  # float64 as in SAM's AMG
        labels = torch.ones(pts.shape[0], 1, dtype=torch.int, device=self.device)
        if self.config.fast_decoder:
            decoder = fast_decoder_for(self.model, self.config.decoder_chunk)
            use_skip = skip_rejected and self.config.skip_rejected and self.config.pred_iou_thresh > 0
            decoder.skip_iou_below = self.config.pred_iou_thresh if use_skip else None
        else:
            decoder = self.model.mask_decoder
        with self._autocast():
            sparse, dense = self.model.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
            low_res, iou = decoder(
                image_embeddings=self.predictor.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        return low_res.float(), iou.float()

    def _valid_low_res(self) -> tuple[int, int, float, float]:
        """Rows / columns of the 256 x 256 logits that cover the image (not padding), and the scale
        from low-res pixels to original pixels (y, x)."""
        in_h, in_w = self.predictor.input_size
        h, w = self.predictor.original_size
        lh, lw = -(-in_h // 4), -(-in_w // 4)
        return lh, lw, h * 4.0 / in_h, w * 4.0 / in_w

    def _filter_low_res(self, low_res: torch.Tensor, iou: torch.Tensor, points: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """IoU + stability filters on flattened low-res candidates; returns the survivors' logits
        (K x 256 x 256), IoUs, stabilities, points and boxes in original pixels (K x 4)."""
        from segment_anything.utils.amg import calculate_stability_score

        cfg = self.config
        thr = self.model.mask_threshold
        logits = low_res.flatten(0, 1)
        scores = iou.flatten(0, 1)
        pts = points.repeat_interleave(low_res.shape[1], dim=0)
        keep = scores > cfg.pred_iou_thresh if cfg.pred_iou_thresh > 0 else torch.ones_like(scores, dtype=torch.bool)
        logits, scores, pts = logits[keep], scores[keep], pts[keep]
        if cfg.exact_filters:
            return self._filter_full_res(logits, scores, pts)
        lh, lw, sy, sx = self._valid_low_res()
        valid = logits[:, :lh, :lw]
        stab = calculate_stability_score(valid, thr, cfg.stability_score_offset)
        if cfg.stability_score_thresh > 0:
            keep = stab >= cfg.stability_score_thresh
            logits, scores, pts, stab, valid = logits[keep], scores[keep], pts[keep], stab[keep], valid[keep]
        boxes = masks_to_boxes(valid > thr)
        # low-res pixel j covers original pixels [j*s, (j+1)*s): inclusive max like SAM's full-res boxes
        scale = torch.tensor([sx, sy, sx, sy], device=boxes.device)
        boxes = boxes * scale + torch.tensor([0.0, 0.0, sx - 1, sy - 1], device=boxes.device)
        return logits, scores, stab, pts, boxes

    def _filter_full_res(self, logits: torch.Tensor, scores: torch.Tensor, pts: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stability filter and boxes on full-size logits (chunked, nothing full-size is kept)."""
        from segment_anything.utils.amg import calculate_stability_score

        thr, cfg = self.model.mask_threshold, self.config
        stabs, boxes = [], []
        for start in range(0, len(logits), cfg.upsample_chunk):
            full = self.model.postprocess_masks(logits[start:start + cfg.upsample_chunk, None],
                                                self.predictor.input_size, self.predictor.original_size)[:, 0]
            stabs.append(calculate_stability_score(full, thr, cfg.stability_score_offset))
            boxes.append(masks_to_boxes(full > thr))
        stab = torch.cat(stabs) if stabs else torch.zeros(0, device=logits.device)
        box = torch.cat(boxes) if boxes else torch.zeros(0, 4, device=logits.device)
        keep = stab >= cfg.stability_score_thresh if cfg.stability_score_thresh > 0 else torch.ones_like(
            stab, dtype=torch.bool)
        return logits[keep], scores[keep], stab[keep], pts[keep], box[keep]

    def _upsample_and_encode(self, logits: torch.Tensor) -> tuple[list[dict], np.ndarray]:
        """Full-size masks of K low-res logits (chunked, exactly SAM's postprocess_masks): RLEs, boxes K x 4."""
        thr = self.model.mask_threshold
        rles: list[dict] = []
        boxes = []
        for start in range(0, len(logits), self.config.upsample_chunk):
            chunk = logits[start:start + self.config.upsample_chunk, None]
            masks = self.model.postprocess_masks(chunk, self.predictor.input_size,
                                                 self.predictor.original_size)[:, 0] > thr
            boxes.append(masks_to_boxes(masks))
            rles.extend(encode_rles(masks.to(torch.uint8).cpu().numpy()))
        if not rles:
            return [], np.zeros((0, 4), np.float32)
        return rles, torch.cat(boxes).cpu().numpy()

    # --- public API ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, image: np.ndarray, level: int | None = None) -> Proposals:
        """Everything-mode proposals for an H x W x 3 uint8 RGB image.

        ``level`` (a Granularity) applies the refinement for that level when ``config.refine`` is on;
        None returns the unrefined proposals (what SamAutomaticMaskGenerator returns).
        """
        from torchvision.ops import nms

        t0 = time.perf_counter()
        self.set_image(image)
        t1 = time.perf_counter()
        grid = self.grid_points()
        kept: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, len(grid), self.config.points_per_batch):
            batch = grid[start:start + self.config.points_per_batch]
            low_res, iou = self.decode(batch, skip_rejected=True)
            pts = torch.as_tensor(batch, dtype=torch.float32, device=low_res.device)
            kept.append(self._filter_low_res(low_res, iou, pts))
            del low_res, iou
        logits, scores, stab, pts, boxes = (torch.cat(x) for x in zip(*kept, strict=True))
        if self.config.box_nms_thresh < 1.0 and len(scores):
            order = nms(boxes, scores, self.config.box_nms_thresh)
        else:
            order = torch.argsort(scores, descending=True, stable=True)
        logits, scores, pts = logits[order], scores[order], pts[order]
        t2 = time.perf_counter()
        rles, full_boxes = self._upsample_and_encode(logits)
        h, w = self.predictor.original_size
        props = Proposals(rles=rles, boxes=full_boxes, predicted_iou=scores.cpu().numpy(),
                          stability=stab[order].float().cpu().numpy(), points=pts.cpu().numpy(), height=h, width=w)
        t3 = time.perf_counter()
        props.timings = {"encoder_s": t1 - t0, "decoder_filter_s": t2 - t1, "upsample_rle_s": t3 - t2,
                         "candidates": int(len(grid) * 3), "survivors": len(rles)}
        if level is not None and self.config.refine:
            props = self.refine(props, level)
        return props

    @torch.no_grad()
    def refine(self, props: Proposals, level: int) -> Proposals:
        """Level-specific refinement (method.md 1.3) of proposals of the image last passed to generate()."""
        t0 = time.perf_counter()
        level = int(level)
        if level == Granularity.PART:
            out = props.select(dedup_by_iou(props.rles, props.predicted_iou, self.config.part_iou_tau))
        elif level in (Granularity.OBJECT, Granularity.GROUP):
            out = self._refine_object_level(props)
        else:
            raise ValueError(f"granularity level must be 0, 1 or 2, got {level}")
        out.timings = {**props.timings, "refine_s": time.perf_counter() - t0, "refined": len(out)}
        return out

    def _refine_object_level(self, props: Proposals) -> Proposals:
        if len(props) == 0:
            return props
        cents = centroids_of_rles(props.rles)
        prompted = self.reprompt_largest(cents)
        cfg = self.config
        if cfg.object_dedup:
            prompted = prompted.select(dedup_by_iou(prompted.rles, prompted.predicted_iou, cfg.part_iou_tau))
        keep = containment_filter(prompted.rles, prompted.areas(), cfg.containment_tau, cfg.containment)
        return prompted.select(keep)

    @torch.no_grad()
    def reprompt_largest(self, points_xy: np.ndarray) -> Proposals:
        """Prompt SAM with each point alone in multimask mode and keep the largest of its 3 masks
        (largest by low-res area over the image region); full-size survivors as Proposals."""
        from segment_anything.utils.amg import calculate_stability_score

        lh, lw, _, _ = self._valid_low_res()
        thr = self.model.mask_threshold
        logits_out, iou_out, stab_out = [], [], []
        for start in range(0, len(points_xy), self.config.points_per_batch):
            low_res, iou = self.decode(points_xy[start:start + self.config.points_per_batch])
            area = (low_res[:, :, :lh, :lw] > thr).flatten(2).sum(-1)  # P x 3
            pick = area.argmax(dim=1)
            idx = torch.arange(len(pick), device=pick.device)
            logits_out.append(low_res[idx, pick])
            iou_out.append(iou[idx, pick])
            stab_out.append(calculate_stability_score(logits_out[-1][:, :lh, :lw], thr,
                                                      self.config.stability_score_offset))
        logits = torch.cat(logits_out)
        stab = torch.cat(stab_out).float().cpu().numpy()
        rles, boxes = self._upsample_and_encode(logits)
        h, w = self.predictor.original_size
        return Proposals(rles=rles, boxes=boxes, predicted_iou=torch.cat(iou_out).cpu().numpy(),
                         stability=stab, points=np.asarray(points_xy, dtype=np.float32), height=h, width=w)


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
    """Centroids (mean x, mean y of the pixels) of N x H x W bool masks -> N x 2 float; empty -> (0, 0)."""
    n, h, w = masks.shape
    m = masks.float()
    area = m.flatten(1).sum(1).clamp(min=1)
    xs = (m.sum(1) * torch.arange(w, device=m.device, dtype=m.dtype)).sum(1) / area
    ys = (m.sum(2) * torch.arange(h, device=m.device, dtype=m.dtype)).sum(1) / area
    return torch.stack([xs, ys], dim=1)


def centroids_of_rles(rles: list[dict]) -> np.ndarray:
    """Centroids (x, y) of RLE masks -> N x 2 float32 (decoded in chunks to bound memory)."""
    out = []
    for part in _chunks(rles, 32):
        dense = torch.from_numpy(mask_utils.decode(_coco_rles(part)).transpose(2, 0, 1).astype(bool))
        out.append(mask_centroids(dense).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 2), np.float32)


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
