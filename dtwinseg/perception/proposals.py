"""SAM "everything mode" mask proposals and the paper's level-specific refinement (sec. 3.1, method.md 1.2-1.3).

:meth:`ProposalGenerator.generate` ``(image, level)``, in the paper's order. Names in brackets are
:class:`ProposalConfig` fields; the extra filters of SamAutomaticMaskGenerator (AMG) are marked "AMG".

1. Encoder: the image encoder runs once per image (``encoder_precision``: fp32, or bf16 / fp16 autocast).
2. Everything mode: N = ``points_per_side``^2 grid points, each one prompt, decoded in batches
   (``points_per_batch``, ``decoder_chunk``; "auto" sizes them from the device and its free memory):
   {m_1, ..., m_N} = SAM_everything(x_img); 3 masks per point (AMG, ``multimask: true``) or 1 (the paper's
   wording, ``multimask: false``).
3. theta: M_filtered = {m_i | IoU_pred(m_i) > theta} (``pred_iou_thresh``, SAM's 0.88).
4. AMG stability filter: keep stability(m_i) >= ``stability_score_thresh`` (0 disables), measured on the
   full-size logits exactly as AMG does (``exact_filters: true``, the default) or on the 256 x 256 logits
   (``exact_filters: false``: faster, approximate; ``benchmarks/proposals.py`` prints its agreement).
5. No refinement (``refine: false``, or ``level`` None): AMG box NMS (``box_nms_thresh``, 1 disables)
   -> SamAutomaticMaskGenerator's masks.
6. Part level (L = 2): for every pair with IoU(m_i, m_j) = |m_i ∩ m_j| / |m_i ∪ m_j| > tau
   (``part_iou_tau``), drop the one with the lower predicted IoU — on M_filtered, before any NMS; then the
   AMG box NMS on what is left.
7. Object / group level (L = 1, 0), on the AMG proposals of step 5:
   a. centroid c_i = (1/|m_i| sum x, 1/|m_i| sum y) of each mask (eq. 2; computed on the device from
      the full-size mask before RLE encoding);
   b. c_i re-prompts SAM in multimask mode (batched like step 2);
   c. theta on the re-prompted masks (every mask SAM returns passes theta); the largest passing mask
      (area on the 256 x 256 logits) replaces m_i; when none passes, m_i stays (a twin never loses an
      object here). The AMG extras (stability, box NMS) are not applied to re-prompted masks;
   d. project extra (``object_dedup``): of re-prompted masks with IoU > tau the higher predicted IoU stays
      (different centroids often return the same object; the paper is silent);
   e. m* = argmax_i A(m_i); drop m_j when R(m_j) = |m_j ∩ m*| / |m_j| > tau' (eq. 3, ``containment_tau``;
      ``containment: all-larger`` tests against every larger kept mask instead). m* is always kept, and
      masks covering more than ``containment_max_area`` of the image are never m* (they are kept; m* is
      the largest mask at or below that fraction): a background / whole-scene mask would otherwise
      swallow every object and leave a one-object twin. ``containment_max_area: 1.0`` is the paper's
      rule unchanged.

Where the time goes: masks are upsampled once per theta survivor (SAM's ``postprocess_masks``), then
stability, boxes, centroids and the COCO RLE come from the same full-size logits. On a GPU this is
batched on the device (chunks of ``upsample_chunk`` masks; ``dtwinseg.perception.rle``: only run-length
change positions cross to the host). On a CPU (``roi_upsample``) each mask is upsampled over its own
region only (``dtwinseg.perception.roi``: the same masks, cost by the mask's extent, not the image's).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dtwinseg.perception.fast_decoder import fast_decoder_for
from dtwinseg.perception.mask_ops import (
    CONTAINMENT_MODES,
    Proposals,
    box_nms_order,
    containment_filter,
    dedup_by_iou,
    mask_centroids,
    masks_to_boxes,
    part_level,
)
from dtwinseg.perception.rle import encode_rles_torch, rles_from_runs
from dtwinseg.perception.roi import RoiUpsampler, crop_rle_counts
from dtwinseg.twin import Granularity

__all__ = ["ProposalConfig", "ProposalGenerator", "Proposals", "resolve_batching"]

PRECISIONS = ("fp32", "bf16", "fp16")
AUTO = "auto"
# decoder working memory per prompt (float32 image tokens, attention, upscaling), measured on vit_h
DECODER_BYTES_PER_PROMPT = 50 * 2**20
CPU_BATCHING = {"points_per_batch": 256, "decoder_chunk": 16, "upsample_chunk": 32}


@dataclass
class ProposalConfig:
    """Every knob of the proposal stage; defaults are SAM's / the paper's (module docstring: the steps).

    Attributes:
        points_per_side: grid side; the decoder is prompted with points_per_side**2 points (paper: 32).
        multimask: AMG: 3 masks per grid point (true) | the paper's "a single mask" per point (false).
        pred_iou_thresh: theta, keep masks with predicted IoU > theta (paper / SAM: 0.88), every mask SAM
            returns, re-prompted ones included; 0 disables (as in SAM).
        stability_score_thresh: AMG filter: keep masks with stability >= this (SAM: 0.95); 0 disables.
        stability_score_offset: logit offset of the stability score (SAM: 1.0).
        box_nms_thresh: AMG filter: box IoU above which the lower-scoring mask is dropped (SAM: 0.7);
            1 disables. At part level it runs after tau.
        exact_filters: true (default): stability and boxes on the full-size logits, i.e.
            SamAutomaticMaskGenerator's masks; false: on the 256 x 256 logits (faster, approximate: a mask
            whose stability sits within a hair of the threshold can be decided differently).
        refine: apply the level-specific refinement (false: SAM everything mode only, the paper's
            "SAM only" ablation, recipes/perception/ablations/sam_only.yaml).
        part_iou_tau: tau, pairwise mask IoU above which part-level duplicates are dropped (0.7).
        containment_tau: tau', |m_j ∩ m*| / |m_j| above which m_j is dropped at object/group level (0.8).
        containment: "largest" (the paper: test against the single largest mask) | "all-larger".
        containment_max_area: masks covering more than this fraction of the image are never m* (so a
            background mask cannot empty the twin); 1.0 = the paper's rule unchanged.
        object_dedup: at object/group level, drop re-prompted masks that duplicate another (IoU >
            part_iou_tau). Project default; the paper is silent.
        points_per_batch: grid points per decoder call; "auto": from the device (CPU 256, GPU all).
        decoder_chunk: prompts per FastMaskDecoder step (~50 MB each in float32); "auto": CPU 16, GPU
            from its free memory (up to 1,024).
        upsample_chunk: masks upsampled to full size per step (chunk x H x W floats); "auto": CPU 32,
            GPU from its free memory.
        roi_upsample: full-size post-processing of each mask over its own region only (same masks,
            ``dtwinseg.perception.roi``) instead of whole images in batches; "auto": on CPU (a per-mask
            loop), batched on a GPU.
        fast_decoder: run SAM's mask decoder through FastMaskDecoder (same weights and mathematics,
            shared image-token work done once; outputs equal up to float rounding).
        skip_rejected: with the fast decoder, prompts whose masks all have predicted IoU <= theta skip
            the output upscaling (exact: theta drops those masks anyway).
        encoder_precision: "fp32" (default until bf16 masks are shown to agree on real weights) | "bf16" |
            "fp16" (autocast of the image encoder; its features are cast back to float32).
        decoder_precision: "fp32" (default) | "bf16" | "fp16" (autocast of prompt encoder + decoder).
    """

    points_per_side: int = 32
    multimask: bool = True
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    exact_filters: bool = True
    refine: bool = True
    part_iou_tau: float = 0.7
    containment_tau: float = 0.8
    containment: str = "largest"
    containment_max_area: float = 0.8
    object_dedup: bool = True
    points_per_batch: int | str = AUTO
    decoder_chunk: int | str = AUTO
    upsample_chunk: int | str = AUTO
    roi_upsample: bool | str = AUTO
    fast_decoder: bool = True
    skip_rejected: bool = True
    encoder_precision: str = "fp32"
    decoder_precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.containment not in CONTAINMENT_MODES:
            raise ValueError(f"containment must be one of {CONTAINMENT_MODES}, got {self.containment!r}")
        for name in ("encoder_precision", "decoder_precision"):
            if getattr(self, name) not in PRECISIONS:
                raise ValueError(f"{name} must be one of {PRECISIONS}, got {getattr(self, name)!r}")
        for name in ("points_per_batch", "decoder_chunk", "upsample_chunk"):
            v = getattr(self, name)
            if v != AUTO and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be 'auto' or an integer >= 1, got {v!r}")
        if self.roi_upsample != AUTO and not isinstance(self.roi_upsample, bool):
            raise ValueError(f"roi_upsample must be 'auto', true or false, got {self.roi_upsample!r}")
        if self.points_per_side < 1:
            raise ValueError("points_per_side must be >= 1")
        if not 0.0 < self.containment_max_area <= 1.0:
            raise ValueError(f"containment_max_area must be in (0, 1], got {self.containment_max_area}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "part_iou_tau", "containment_tau"):
            if not 0.0 <= getattr(self, name) <= 1.0:  # NaN too
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.stability_score_offset >= 0.0:
            raise ValueError(f"stability_score_offset must be >= 0, got {self.stability_score_offset}")

    @classmethod
    def from_dict(cls, d: dict | None) -> ProposalConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown proposal config fields: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_batching(config: ProposalConfig, device: torch.device | str, n_prompts: int = 1024) -> dict:
    """points_per_batch / decoder_chunk / upsample_chunk for ``device``: the config's integers as given,
    "auto" from the device: CPU-friendly constants on a CPU; on a GPU, from its free memory (half of it
    for the decoder at ~50 MB per prompt, capped at ``n_prompts``; an eighth for full-size upsampling)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        decoder = int(min(max(free // 2 // DECODER_BYTES_PER_PROMPT, 16), max(n_prompts, 16)))
        upsample = int(min(max(free // 8 // (3 * 4 * 1024 * 1024), 32), 512))
        auto = {"points_per_batch": max(n_prompts, 64), "decoder_chunk": decoder, "upsample_chunk": upsample}
    else:
        auto = dict(CPU_BATCHING)
    out = {k: auto[k] if getattr(config, k) == AUTO else int(getattr(config, k)) for k in auto}
    out["roi_upsample"] = device.type == "cpu" if config.roi_upsample == AUTO else bool(config.roi_upsample)
    return out


@dataclass
class _Candidates:
    """Everything-mode masks that passed theta and stability (steps 2-4), sorted by nothing in particular.

    Exact mode holds them encoded (``proposals``); low-res mode holds their 256 x 256 logits (encoded
    only when selected) and approximate boxes."""

    scores: torch.Tensor
    points: torch.Tensor
    boxes: torch.Tensor
    stability: torch.Tensor
    logits: torch.Tensor | None = None
    proposals: Proposals | None = None


class ProposalGenerator:
    """Everything-mode proposals + refinement on one segment-anything ``Sam`` model.

    Usage::

        gen = ProposalGenerator.from_checkpoint("vit_h", "sam_vit_h_4b8939.pth", device="cuda")
        props = gen.generate(image)            # H x W x 3 uint8 RGB -> SamAutomaticMaskGenerator's masks
        props = gen.generate(image, level=1)   # + the paper's object-level refinement
    """

    def __init__(self, model: Any, config: ProposalConfig | None = None):
        from segment_anything import SamPredictor

        self.config = config or ProposalConfig()
        self.model = model
        self.predictor = SamPredictor(model)
        self.batching = resolve_batching(self.config, self.device, self.config.points_per_side ** 2)

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

    def _autocast(self, precision: str) -> contextlib.AbstractContextManager:
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # --- step 1: encoder ----------------------------------------------------------------------
    @torch.no_grad()
    def set_image(self, image: np.ndarray) -> None:
        """Run the image encoder once on an H x W x 3 uint8 RGB image."""
        with self._autocast(self.config.encoder_precision):
            self.predictor.set_image(np.ascontiguousarray(image), "RGB")
        if self.predictor.features.dtype != torch.float32:
            self.predictor.features = self.predictor.features.float()

    def grid_points(self) -> np.ndarray:
        """The everything-mode prompts: P x 2 (x, y) pixel coordinates, in SAM's own grid order."""
        from segment_anything.utils.amg import build_all_layer_point_grids

        h, w = self.predictor.original_size
        return build_all_layer_point_grids(self.config.points_per_side, 0, 1)[0] * np.array([[w, h]])

    # --- step 2: decoder ----------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, points_xy: np.ndarray, skip_rejected: bool = False, multimask: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt the decoder with one point each: P x 2 pixel (x, y) -> low-res logits P x M x 256 x 256
        and predicted IoUs P x M (M = 3 multimask, else 1; float32, on the model's device).

        ``skip_rejected`` (fast decoder only): prompts none of whose masks has predicted IoU above
        ``pred_iou_thresh`` skip the upscaling and get -1e4 logits (theta drops them anyway)."""
        coords = self.predictor.transform.apply_coords(np.asarray(points_xy), self.predictor.original_size)
        pts = torch.as_tensor(coords, device=self.device)[:, None, :]  # float64 as in SAM's AMG
        labels = torch.ones(pts.shape[0], 1, dtype=torch.int, device=self.device)
        if self.config.fast_decoder:
            decoder = fast_decoder_for(self.model, self.batching["decoder_chunk"])
            use_skip = skip_rejected and self.config.skip_rejected and self.config.pred_iou_thresh > 0
            decoder.skip_iou_below = self.config.pred_iou_thresh if use_skip else None
        else:
            decoder = self.model.mask_decoder
        with self._autocast(self.config.decoder_precision):
            sparse, dense = self.model.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
            low_res, iou = decoder(
                image_embeddings=self.predictor.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        return low_res.float(), iou.float()

    def _valid_low_res(self) -> tuple[int, int, float, float]:
        """Rows / columns of the 256 x 256 logits that cover the image (not padding), and the scale
        from low-res pixels to original pixels (y, x)."""
        in_h, in_w = self.predictor.input_size
        h, w = self.predictor.original_size
        lh, lw = -(-in_h // 4), -(-in_w // 4)
        return lh, lw, h * 4.0 / in_h, w * 4.0 / in_w

    def upsample(self, logits: torch.Tensor) -> torch.Tensor:
        """K x 256 x 256 low-res logits -> K x H x W full-size logits, bit-identical to SAM's
        ``postprocess_masks`` (upsample x4, crop the padding, resize to the original size) but without
        computing the padded rows / columns, and without the identity resize when the image's long
        side is already the encoder's size."""
        img = self.model.image_encoder.img_size
        in_h, in_w = self.predictor.input_size
        size = tuple(self.predictor.original_size)
        scale = img / logits.shape[-1]
        # rows / columns of the x4 output that lie in the image, and the low-res ones they read (+1)
        rh, rw = min(logits.shape[-2], -(-in_h // int(scale)) + 1), min(logits.shape[-1], -(-in_w // int(scale)) + 1)
        x = logits[:, None, :rh, :rw]
        if scale.is_integer() and x.shape[-2] * scale >= in_h and x.shape[-1] * scale >= in_w:
            up = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                               recompute_scale_factor=False)[..., :in_h, :in_w]
        else:  # pragma: no cover - SAM's low-res side always divides the encoder size
            up = F.interpolate(logits[:, None], (img, img), mode="bilinear", align_corners=False)[..., :in_h, :in_w]
        if (in_h, in_w) != size:
            up = F.interpolate(up, size, mode="bilinear", align_corners=False)
        return up[:, 0]

    def _full_size_pass(self, logits: torch.Tensor, stability_filter: bool
                        ) -> tuple[torch.Tensor, Proposals | None, torch.Tensor]:
        """Upsample K low-res logits once (chunked) and derive everything from the full-size logits:
        stability (SAM's formula), and for the masks kept (stability filter when asked) boxes,
        centroids and RLEs. Returns (keep mask K, their Proposals without scores / points, stability K)."""
        from segment_anything.utils.amg import calculate_stability_score

        if self.batching["roi_upsample"] and logits.device.type == "cpu":
            return self._full_size_pass_roi(logits, stability_filter)
        cfg, thr = self.config, self.model.mask_threshold
        chunk = self.batching["upsample_chunk"]
        keeps, stabs, rles, boxes, cents = [], [], [], [], []
        for start in range(0, len(logits), chunk):
            full = self.upsample(logits[start:start + chunk])
            stab = calculate_stability_score(full, thr, cfg.stability_score_offset)
            keep = stab >= cfg.stability_score_thresh if stability_filter and cfg.stability_score_thresh > 0 \
                else torch.ones_like(stab, dtype=torch.bool)
            masks = full[keep] > thr
            del full
            keeps.append(keep)
            stabs.append(stab)
            boxes.append(masks_to_boxes(masks))
            cents.append(mask_centroids(masks))
            rles.extend(encode_rles_torch(masks))
        h, w = self.predictor.original_size
        if not keeps:
            empty = torch.zeros(0, dtype=torch.bool, device=logits.device)
            return empty, Proposals.empty(h, w), empty.float()
        n = len(rles)
        props = Proposals(rles=rles, boxes=torch.cat(boxes).cpu().numpy(), predicted_iou=np.zeros(n, np.float32),
                          stability=np.zeros(n, np.float32), points=np.zeros((n, 2), np.float32), height=h,
                          width=w, centroids=torch.cat(cents).float().cpu().numpy())
        return torch.cat(keeps), props, torch.cat(stabs)

    def _full_size_pass_roi(self, logits: torch.Tensor, stability_filter: bool
                            ) -> tuple[torch.Tensor, Proposals | None, torch.Tensor]:
        """``_full_size_pass`` with each mask upsampled over its own region (``roi.RoiUpsampler``): the same
        stability, boxes, centroids and RLEs without full-size tensors."""
        cfg, thr, off = self.config, self.model.mask_threshold, self.config.stability_score_offset
        h, w = self.predictor.original_size
        roi = RoiUpsampler(logits.shape[-1], self.model.image_encoder.img_size, self.predictor.input_size, (h, w))
        lowest = min(thr - off, thr + off, thr)
        filtering = stability_filter and cfg.stability_score_thresh > 0
        keeps, stabs, counts, boxes, cents = [], [], [], [], []
        for k in range(len(logits)):
            got = roi.crop(logits[k], lowest)
            if got is None:
                v, y0, x0 = logits.new_zeros(0, 0), 0, 0
            else:
                v, y0, x0 = got
            inter, union = int((v > thr + off).sum()), int((v > thr - off).sum())
            # float32 division as SAM's (int / int tensors); 0 / 0 -> nan, which the filter never keeps
            stab = float(np.float32(inter) / np.float32(union)) if union else float("nan")
            keep = stab >= cfg.stability_score_thresh if filtering else True
            keeps.append(keep)
            stabs.append(stab)
            if not keep:
                continue
            m = v > thr
            if m.any():  # the crop's box and centroid, shifted to image pixels
                boxes.append(masks_to_boxes(m[None])[0] + torch.tensor([x0, y0, x0, y0]))
                cents.append(mask_centroids(m[None])[0] + torch.tensor([x0, y0], dtype=torch.float64))
            else:  # an empty mask: zero box and centroid, as the dense path gives
                boxes.append(torch.zeros(4))
                cents.append(torch.zeros(2, dtype=torch.float64))
            counts.append(crop_rle_counts(m.numpy(), y0, x0, h, w))
        keep_t = torch.tensor(keeps, dtype=torch.bool)
        stab_t = torch.tensor(stabs, dtype=torch.float32)
        if not counts:
            return keep_t, Proposals.empty(h, w), stab_t
        n = len(counts)
        props = Proposals(rles=rles_from_runs(counts, h, w), boxes=torch.stack(boxes).numpy().astype(np.float32),
                          predicted_iou=np.zeros(n, np.float32), stability=np.zeros(n, np.float32),
                          points=np.zeros((n, 2), np.float32), height=h, width=w,
                          centroids=torch.stack(cents).float().numpy())
        return keep_t, props, stab_t

    def _candidates(self, grid: np.ndarray) -> _Candidates:
        """Steps 2-4 over the whole grid: decode in batches, theta, stability; no NMS."""
        from segment_anything.utils.amg import calculate_stability_score

        cfg, thr = self.config, self.model.mask_threshold
        lh, lw, sy, sx = self._valid_low_res()
        parts: list[dict] = []
        for start in range(0, len(grid), self.batching["points_per_batch"]):
            batch = grid[start:start + self.batching["points_per_batch"]]
            low_res, iou = self.decode(batch, skip_rejected=True, multimask=cfg.multimask)
            pts = torch.as_tensor(batch, dtype=torch.float32, device=low_res.device)
            logits, scores = low_res.flatten(0, 1), iou.flatten(0, 1)
            pts = pts.repeat_interleave(low_res.shape[1], dim=0)
            keep = self._passes_theta(scores)                                     # step 3: theta
            logits, scores, pts = logits[keep], scores[keep], pts[keep]
            del low_res, iou
            if cfg.exact_filters:                                                 # step 4 on full size
                keep, props, stab = self._full_size_pass(logits, stability_filter=True)
                parts.append({"scores": scores[keep], "points": pts[keep], "stability": stab[keep],
                              "proposals": props})
                continue
            valid = logits[:, :lh, :lw]                                           # step 4 on low res
            stab = calculate_stability_score(valid, thr, cfg.stability_score_offset)
            if cfg.stability_score_thresh > 0:
                keep = stab >= cfg.stability_score_thresh
                logits, scores, pts, stab, valid = logits[keep], scores[keep], pts[keep], stab[keep], valid[keep]
            # low-res pixel j covers original pixels [j*s, (j+1)*s): inclusive max like SAM's full-res boxes
            boxes = masks_to_boxes(valid > thr) * torch.tensor([sx, sy, sx, sy], device=logits.device)
            boxes = boxes + torch.tensor([0.0, 0.0, sx - 1, sy - 1], device=logits.device) * (boxes.sum(1, keepdim=True) > 0)
            parts.append({"scores": scores, "points": pts, "stability": stab, "logits": logits, "boxes": boxes})
        return self._merge(parts)

    def _passes_theta(self, ious: torch.Tensor) -> torch.Tensor:
        """IoU_pred > theta (theta = 0 disables the filter, as in SamAutomaticMaskGenerator)."""
        theta = self.config.pred_iou_thresh
        return ious > theta if theta > 0 else torch.ones_like(ious, dtype=torch.bool)

    def _merge(self, parts: list[dict]) -> _Candidates:
        cat = {k: torch.cat([p[k] for p in parts]) for k in ("scores", "points", "stability")}
        if self.config.exact_filters:
            props = _concat([p["proposals"] for p in parts], *self.predictor.original_size)
            boxes = torch.as_tensor(props.boxes, device=cat["scores"].device)
            return _Candidates(boxes=boxes, proposals=props, **cat)
        return _Candidates(logits=torch.cat([p["logits"] for p in parts]),
                           boxes=torch.cat([p["boxes"] for p in parts]), **cat)

    def _materialise(self, cands: _Candidates, order: torch.Tensor) -> Proposals:
        """The candidates at ``order`` as Proposals (upsampled and encoded now in low-res mode)."""
        idx = order.cpu().numpy()
        if cands.proposals is not None:
            props = cands.proposals.select(idx)
        else:
            assert cands.logits is not None
            _, props, _ = self._full_size_pass(cands.logits[order], stability_filter=False)
        props.predicted_iou = cands.scores[order].cpu().numpy()
        props.stability = cands.stability[order].float().cpu().numpy()
        props.points = cands.points[order].cpu().numpy()
        return props

    # --- public API ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, image: np.ndarray, level: int | None = None) -> Proposals:
        """Proposals for an H x W x 3 uint8 RGB image (module docstring: the steps).

        ``level`` None (or ``config.refine`` false): SamAutomaticMaskGenerator's masks, sorted by
        predicted IoU. A Granularity level with ``refine`` on: the paper's refinement for that level.
        """
        t0 = time.perf_counter()
        self.set_image(image)
        t1 = time.perf_counter()
        grid = self.grid_points()
        cands = self._candidates(grid)
        refine = level is not None and self.config.refine
        t2 = time.perf_counter()
        if refine and int(level) == Granularity.PART:
            props = self._materialise(cands, torch.argsort(cands.scores, descending=True, stable=True))
        else:
            props = self._materialise(cands, self._nms_order(cands.boxes, cands.scores))
        t3 = time.perf_counter()
        n_masks = 3 if self.config.multimask else 1
        props.timings = {"encoder_s": t1 - t0, "decoder_filter_s": t2 - t1, "upsample_rle_s": t3 - t2,
                         "candidates": int(len(grid) * n_masks), "survivors": len(props)}
        if refine:
            props = self.refine(props, int(level))  # type: ignore[arg-type]
        return props

    def _nms_order(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return box_nms_order(boxes, scores, self.config.box_nms_thresh)

    @torch.no_grad()
    def refine(self, props: Proposals, level: int) -> Proposals:
        """Level-specific refinement (steps 6-7) of proposals of the image last passed to generate().

        Part level expects M_filtered (no NMS yet); object / group level the AMG proposals."""
        t0 = time.perf_counter()
        level = int(level)
        if level == Granularity.PART:
            out = part_level(props, self.config.part_iou_tau, self.config.box_nms_thresh)
        elif level in (Granularity.OBJECT, Granularity.GROUP):
            out = self._refine_object_level(props)
        else:
            raise ValueError(f"granularity level must be 0, 1 or 2, got {level}")
        out.timings = {**props.timings, "refine_s": time.perf_counter() - t0, "refined": len(out)}
        return out

    def _refine_object_level(self, props: Proposals) -> Proposals:
        if len(props) == 0:
            return props
        cfg = self.config
        assert props.centroids is not None
        prompted = self.reprompt_largest(props.centroids, fallback=props)          # 7a-c
        if cfg.object_dedup:                                                      # 7d
            prompted = prompted.select(dedup_by_iou(prompted.rles, prompted.predicted_iou, cfg.part_iou_tau))
        keep = containment_filter(prompted.rles, prompted.areas(), cfg.containment_tau, cfg.containment,  # 7e
                                  cfg.containment_max_area, prompted.height * prompted.width)
        return prompted.select(keep)

    @torch.no_grad()
    def reprompt_largest(self, points_xy: np.ndarray, fallback: Proposals | None = None) -> Proposals:
        """Prompt SAM with each point alone in multimask mode, apply theta to the returned masks and keep
        the largest passing one (area on the low-res logits over the image region). A point none of whose
        masks passes theta returns ``fallback``'s mask of the same index (when given) or is dropped."""
        thr = self.model.mask_threshold
        lh, lw, _, _ = self._valid_low_res()
        logits_out, iou_out, ok_out = [], [], []
        for start in range(0, len(points_xy), self.batching["points_per_batch"]):
            low_res, iou = self.decode(points_xy[start:start + self.batching["points_per_batch"]],
                                       skip_rejected=True)
            passes = self._passes_theta(iou)                                      # theta on re-prompts
            area = (low_res[:, :, :lh, :lw] > thr).flatten(2).sum(-1)             # P x 3
            pick = torch.where(passes, area, -1).argmax(dim=1)
            idx = torch.arange(len(pick), device=pick.device)
            logits_out.append(low_res[idx, pick])
            iou_out.append(iou[idx, pick])
            ok_out.append(passes.any(dim=1))
            del low_res
        ok = torch.cat(ok_out)
        logits, ious = torch.cat(logits_out)[ok], torch.cat(iou_out)[ok]
        _, props, stab = self._full_size_pass(logits, stability_filter=False)
        props.predicted_iou = ious.cpu().numpy()
        props.stability = stab.float().cpu().numpy()
        ok_np = ok.cpu().numpy()
        props.points = np.asarray(points_xy, dtype=np.float32)[ok_np]
        if fallback is None or ok_np.all():
            return props
        # merge back in the original order: re-prompted masks where theta passed, the original elsewhere
        merged = _concat([props, fallback.select(np.flatnonzero(~ok_np))], props.height, props.width)
        order = np.argsort(np.concatenate([np.flatnonzero(ok_np), np.flatnonzero(~ok_np)]), kind="stable")
        return merged.select(order)


def _concat(parts: list[Proposals], height: int, width: int) -> Proposals:
    """Proposals of several parts of one image, in order."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Proposals.empty(height, width)
    return Proposals(
        rles=[r for p in parts for r in p.rles],
        boxes=np.concatenate([p.boxes for p in parts]).astype(np.float32),
        predicted_iou=np.concatenate([p.predicted_iou for p in parts]),
        stability=np.concatenate([p.stability for p in parts]),
        points=np.concatenate([p.points for p in parts]),
        height=height,
        width=width,
        centroids=np.concatenate([p.centroids for p in parts if p.centroids is not None]),
    )
