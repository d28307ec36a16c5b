"""Image + query -> DigitalTwin: granularity, mask proposals (SAM or oracle), refinement, semantics.

``TwinBuilder(config).build(image, query, image_id, instances=None, granularity=None)``:

1. granularity L: from the VLM when one is configured (unparseable answer -> 1, counted), else from the
   ``granularity`` argument (a dataset's tag) when given, else 1. ``use_granularity: false`` always uses
   level 1 (the paper's "SAM only" ablation).
2. proposals: ``source: sam`` runs :class:`ProposalGenerator` (everything mode + refinement for L);
   ``source: oracle`` takes ground-truth instances (``{"rle", "semantic", "level", "parent"}``): all of
   them at part level, only the level-1 (object) instances at object / group level, and all of them at
   every level with ``proposals.refine: false`` (everything mode keeps parts and wholes).
   ``source: simulated`` turns every instance into SAM-like proposals with SAM's errors (boundary jitter,
   misses, splits, merges, near-duplicates, spurious masks; ``simulation:``, dtwinseg/perception/simulated.py).
3. semantics S_i = F_VLM(x_img, x_txt, m_i, {m_j}) (paper eq. 4): from the VLM when configured, with
   strategy ``direct`` / ``in_context`` / ``system``; else the instance ``semantic`` (oracle) or "" (filled
   by a later pass). The VLM sees a crop of m_i and the whole image. ``semantic_context: others`` (the
   default, eq. 4) draws every other mask m_j on that whole image as a numbered cyan outline (m_i in red,
   numbered too) and lists the nearest ``context_max_listed`` of them in the text with box, area and
   relation to m_i; ``semantic_context: none`` shows m_i alone (the per-mask form).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dtwinseg.config import StrictConfig
from dtwinseg.io import DataError, stable_hash
from dtwinseg.perception.prompts import CONTEXTS, STRATEGIES
from dtwinseg.perception.proposals import ProposalConfig, ProposalGenerator, Proposals
from dtwinseg.perception.simulated import SimulationConfig, simulate
from dtwinseg.perception.vlm import VLM, VLMConfig, assign_semantics, decide_granularity, make_vlm
from dtwinseg.spatial import pairwise_relations, relation_phrase
from dtwinseg.twin import DigitalTwin, Granularity, TwinObject, decode_rle, mask_bbox

SOURCES = ("sam", "oracle", "simulated")
# config fields that change how fast twins are built, never what they contain
_NEUTRAL = {
    "": ("device",),
    "proposals": ("points_per_batch", "upsample_chunk", "decoder_chunk", "roi_upsample"),
    "vlm": ("max_concurrency", "max_retries", "timeout_s", "backoff_s", "backoff_max_s", "batch_size", "device"),
}
RANDOM_CHECKPOINT = "random"


@dataclass
class PerceptionConfig(StrictConfig):
    """How twins are built. Loads from YAML (``PerceptionConfig.from_yaml``); holds no secrets.

    Attributes:
        source: "sam" (SAM everything mode) | "oracle" (ground-truth instance masks of the sample) |
            "simulated" (the sample's instances through simulated SAM errors, ``simulation``).
        sam_model_type: segment-anything model type: vit_h (the paper) | vit_l | vit_b.
        sam_checkpoint: path of the SAM checkpoint (e.g. sam_vit_h_4b8939.pth); "random" builds random
            weights (tests and benchmarks only).
        device: torch device for SAM: "auto" (cuda if available, else cpu), "cpu", "cuda:0", ...
        proposals: ProposalConfig (grid, theta, stability, NMS, refinement taus, autocast).
        vlm: VLMConfig (backend none | openai | transformers).
        semantic_strategy: "direct" | "in_context" | "system" (the paper's best).
        use_granularity: False -> always level 1 (the "SAM only" ablation of Table 4).
        crop_padding: context around a mask's box in its crop, as a fraction of the box size.
        semantic_context: "others" (eq. 4: the other masks {m_j} outlined and numbered on the whole image
            and listed in the text) | "none" (each mask alone).
        context_max_listed: how many other masks (nearest first) the text lists with their box, area and
            relation; null lists all. The image always outlines all of them. Default 12: the text of a
            150-mask twin would otherwise cost ~150 lines per request, 150 requests per image.
    """

    source: str = "sam"
    sam_model_type: str = "vit_h"
    sam_checkpoint: str | None = None
    device: str = "auto"
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)
    semantic_strategy: str = "system"
    use_granularity: bool = True
    crop_padding: float = 0.1
    semantic_context: str = "others"
    context_max_listed: int | None = 12
    simulation: SimulationConfig = field(default_factory=SimulationConfig)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.semantic_strategy not in STRATEGIES:
            raise ValueError(f"semantic_strategy must be one of {STRATEGIES}, got {self.semantic_strategy!r}")
        if self.semantic_context not in CONTEXTS:
            raise ValueError(f"semantic_context must be one of {CONTEXTS}, got {self.semantic_context!r}")
        if self.context_max_listed is not None and int(self.context_max_listed) < 0:
            raise ValueError(f"context_max_listed must be >= 0 or null, got {self.context_max_listed!r}")

    def identity(self) -> dict:
        """The fields that decide the twins (what a cache is keyed by): ``to_dict`` without the
        operational ones (devices, batch sizes, concurrency, retries, timeouts), so e.g. N shards on
        N GPUs, or a rerun with another batch size, share one cache folder."""
        d = self.to_dict()
        for k in _NEUTRAL[""]:
            d.pop(k, None)
        if self.source != "simulated":  # caches of the other sources keep their keys
            d.pop("simulation", None)
        for section in ("proposals", "vlm"):
            for k in _NEUTRAL[section]:
                d[section].pop(k, None)
        return d

    def hash(self) -> str:
        return stable_hash(self.identity())


def load_rgb(image: Image.Image | str | os.PathLike | np.ndarray) -> Image.Image:
    """An RGB PIL image from a PIL image, an H x W x 3 uint8 array or a path (fully decoded: a truncated
    file fails here, not later)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    with Image.open(image) as im:
        im.load()
        return im.convert("RGB")


CONTEXT_RGB = (0, 255, 255)  # the other masks' outlines (cyan)
TARGET_RGB = (255, 0, 0)  # the described mask's outline (red)


def _edge(mask: np.ndarray, thick: int) -> np.ndarray:
    """The inner boundary band of a bool mask, ``thick`` pixels wide."""
    import cv2

    m8 = mask.astype(np.uint8)
    return (m8 - cv2.erode(m8, np.ones((3, 3), np.uint8), iterations=thick)).astype(bool)


def _crop(arr: np.ndarray, mask: np.ndarray, padding: float) -> Image.Image:
    h, w = mask.shape
    x0, y0, x1, y1 = mask_bbox(mask)
    px, py = padding * (x1 - x0 + 1), padding * (y1 - y0 + 1)
    xa, ya = int(max(0, x0 - px)), int(max(0, y0 - py))
    xb, yb = int(min(w, x1 + 1 + px)), int(min(h, y1 + 1 + py))
    dimmed = np.where(mask[..., None], arr, (arr * 0.35).astype(np.uint8))
    return Image.fromarray(dimmed[ya:max(yb, ya + 1), xa:max(xb, xa + 1)])


def _thickness(h: int, w: int) -> int:
    return max(1, round(min(h, w) / 200))


def mask_views(image: Image.Image, mask: np.ndarray, padding: float = 0.1) -> tuple[Image.Image, Image.Image]:
    """The two images the VLM sees for one mask alone: (crop of the padded box with the outside dimmed,
    whole image with the mask outlined in red)."""
    arr = np.asarray(image, dtype=np.uint8)
    h, w = mask.shape
    outlined = arr.copy()
    outlined[_edge(mask, _thickness(h, w))] = TARGET_RGB
    return _crop(arr, mask, padding), Image.fromarray(outlined)


def label_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel nearest to its centroid (the centroid of a ring lies outside it)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0, 0
    k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    return int(xs[k]), int(ys[k])


def _put_label(arr: np.ndarray, text: str, at: tuple[int, int], rgb: tuple[int, int, int]) -> None:
    import cv2

    h, w = arr.shape[:2]
    scale = max(0.35, min(h, w) / 700)
    thick = max(1, round(scale * 2))
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x = int(min(max(at[0] - tw // 2, 0), max(w - tw, 0)))
    y = int(min(max(at[1] + th // 2, th), h - 1))
    cv2.putText(arr, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(arr, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, rgb, thick, cv2.LINE_AA)


def context_views(image: Image.Image, masks: np.ndarray, ids: list[int],
                  padding: float = 0.1) -> list[tuple[Image.Image, Image.Image]]:
    """Eq. 4 views of every mask: (its crop, the whole image with every mask outlined and numbered by its
    id, cyan for the others {m_j} and red for this one). The shared outlines are drawn once."""
    arr = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    n, h, w = masks.shape
    thin = max(2, _thickness(h, w) // 2)
    edges = [_edge(m, thin) for m in masks]
    points = [label_point(m) for m in masks]
    base = arr.copy()
    for e in edges:
        base[e] = CONTEXT_RGB
    for i, p in zip(ids, points, strict=True):
        _put_label(base, str(i), p, CONTEXT_RGB)
    views = []
    for k in range(n):
        whole = base.copy()
        whole[_edge(masks[k], _thickness(h, w))] = TARGET_RGB
        _put_label(whole, str(ids[k]), points[k], TARGET_RGB)
        views.append((_crop(arr, masks[k], padding), Image.fromarray(whole)))
    return views


def context_lines(masks: np.ndarray, ids: list[int], max_listed: int | None = None) -> list[list[str]]:
    """For every mask i, one line per other mask j (nearest first, at most ``max_listed``): its id, box,
    area and where it is relative to i, e.g. ``"3: box [10, 4, 52, 40], area 2.1%, left of region 0"``."""
    n, h, w = masks.shape
    if n < 2:
        return [[] for _ in range(n)]
    rel = pairwise_relations(masks)
    boxes = [mask_bbox(m) for m in masks]
    areas = masks.reshape(n, -1).sum(1) * (100.0 / (h * w))
    out = []
    for i in range(n):
        order = [int(j) for j in np.argsort(rel.distance[i], kind="stable") if j != i]
        if max_listed is not None:
            order = order[:max_listed]
        out.append([f"{ids[j]}: box [{', '.join(str(int(v)) for v in boxes[j])}], area {areas[j]:.1f}%, "
                    f"{relation_phrase(rel.codes[j, i], rel.next_to[j, i])} region {ids[i]}" for j in order])
    return out


class TwinBuilder:
    """Builds DigitalTwins with one perception config. SAM and the VLM are created on first use (or
    injected: ``generator=`` / ``vlm=``) and reused for every image."""

    def __init__(self, config: PerceptionConfig, *, generator: ProposalGenerator | None = None,
                 vlm: VLM | None = None):
        self.config = config
        self._generator = generator
        self._vlm = vlm
        self._vlm_made = vlm is not None
        self.config_hash = config.hash()

    @property
    def vlm(self) -> VLM | None:
        if not self._vlm_made:
            self._vlm = make_vlm(self.config.vlm)
            self._vlm_made = True
        return self._vlm

    @property
    def generator(self) -> ProposalGenerator:
        if self._generator is None:
            cfg = self.config
            if not cfg.sam_checkpoint:
                raise ValueError("perception config: sam_checkpoint is required for source 'sam' "
                                 "(a path to e.g. sam_vit_h_4b8939.pth, or 'random' for random weights)")
            ckpt = None if cfg.sam_checkpoint == RANDOM_CHECKPOINT else cfg.sam_checkpoint
            if ckpt is not None and not Path(ckpt).is_file():
                raise FileNotFoundError(f"SAM checkpoint not found: {ckpt}")
            self._generator = ProposalGenerator.from_checkpoint(cfg.sam_model_type, ckpt, device=_device(cfg.device),
                                                                config=cfg.proposals)
        return self._generator

    # --- steps ----------------------------------------------------------------------------------
    def decide_level(self, image: Image.Image, query: str, granularity: int | None) -> tuple[int, str, bool]:
        """(level, where it came from: fixed | vlm | sample | default, whether the VLM answer fell back)."""
        if not self.config.use_granularity:
            return int(Granularity.OBJECT), "fixed", False
        if self.vlm is not None:
            level, fell_back = decide_granularity(self.vlm, image, query)
            return level, "vlm", fell_back
        if granularity is not None:
            return int(granularity), "sample", False
        return int(Granularity.OBJECT), "default", False

    def sam_objects(self, image: Image.Image, level: int) -> tuple[list[TwinObject], dict]:
        """SAM proposals refined for ``level`` as twin objects (semantics empty), and the timings."""
        # the paper's filter order per level; proposals.refine false = SAM everything mode only ("SAM only")
        props = self.generator.generate(np.asarray(image), level)
        return objects_from_proposals(props, level), dict(props.timings)

    @staticmethod
    def oracle_objects(instances: list[dict] | None, level: int, height: int, width: int,
                       all_levels: bool = False) -> list[TwinObject]:
        """Ground-truth instances for ``level``: all at part level, only objects (level 1) otherwise.
        ``all_levels`` keeps every instance, parts and wholes together: the oracle stand-in for SAM's
        everything mode without refinement (``proposals.refine: false``, Table 4's "SAM only")."""
        if instances is None:
            raise ValueError("source 'oracle' needs the sample's ground-truth instances (none given)")
        chosen = [d for d in instances if all_levels or level == Granularity.PART
                  or int(d.get("level", 1)) == Granularity.OBJECT]
        objects = []
        for k, inst in enumerate(chosen):
            mask = decode_rle(inst["rle"])
            if mask.shape != (height, width):
                raise DataError(None, f"instances[{k}].rle.size", f"{list(mask.shape)} is not the image size "
                                f"{[height, width]}")
            objects.append(TwinObject.from_mask(k, mask, semantic=str(inst.get("semantic", "")),
                                                level=int(inst.get("level", 1))))
        return objects

    def fill_semantics(self, twin: DigitalTwin, image: Image.Image | str | os.PathLike) -> DigitalTwin:
        """Assign S_i with the configured VLM to every object of ``twin`` (second pass after --vlm none)."""
        if self.vlm is None:
            raise ValueError("fill_semantics needs a VLM (vlm.backend openai or transformers)")
        img = load_rgb(image)
        t0 = time.perf_counter()
        texts, fallbacks = self._semantics(img, twin.query, twin.masks(), twin.ids)
        for obj, text in zip(twin.objects, texts, strict=True):
            obj.semantic = text
        prov = dict(twin.provenance)
        prov.update(semantic_source="vlm", semantic_fallbacks=fallbacks, vlm=self._vlm_provenance(),
                    semantics_filled_by=self.config_hash)
        prov.setdefault("timings", {})["semantics_s"] = time.perf_counter() - t0
        twin.provenance = prov
        return twin

    def _semantics(self, image: Image.Image, query: str, masks: np.ndarray,
                   ids: list[int]) -> tuple[list[str], int]:
        cfg = self.config
        if cfg.semantic_context == "none":
            views = [mask_views(image, m, cfg.crop_padding) for m in masks]
            return assign_semantics(self.vlm, views, query, cfg.semantic_strategy)
        views = context_views(image, masks, ids, cfg.crop_padding)
        lines = context_lines(masks, ids, cfg.context_max_listed)
        return assign_semantics(self.vlm, views, query, cfg.semantic_strategy,
                                contexts=list(zip(ids, lines, strict=True)))

    def _vlm_provenance(self) -> dict:
        v = self.config.vlm
        return {"backend": v.backend, "model": v.model} if self.vlm is not None else {"backend": "none"}

    # --- the whole thing --------------------------------------------------------------------------
    def build(self, image: Image.Image | str | os.PathLike | np.ndarray, query: str, image_id: str,
              instances: list[dict] | None = None, granularity: int | None = None) -> DigitalTwin:
        """The twin of one image for one query (see the module docstring for each step)."""
        t0 = time.perf_counter()
        img = load_rgb(image)
        w, h = img.size
        level, level_source, level_fallback = self.decide_level(img, query, granularity)
        t1 = time.perf_counter()
        timings: dict[str, Any] = {"granularity_s": t1 - t0}
        if self.config.source == "sam":
            objects, prop_timings = self.sam_objects(img, level)
            timings.update(prop_timings)
        elif self.config.source == "simulated":
            if instances is None:
                raise ValueError("source 'simulated' needs the sample's ground-truth instances (none given)")
            objects = simulate(instances, h, w, self.config.simulation, level=level)
        else:
            objects = self.oracle_objects(instances, level, h, w, all_levels=not self.config.proposals.refine)
        t2 = time.perf_counter()
        timings["proposals_s"] = t2 - t1
        semantic_source, fallbacks = ({"oracle": "oracle", "simulated": "simulated"}.get(self.config.source, "none"), 0)
        if self.vlm is not None and objects:
            masks = np.stack([o.mask() for o in objects])
            texts, fallbacks = self._semantics(img, query, masks, [o.id for o in objects])
            for obj, text in zip(objects, texts, strict=True):
                obj.semantic = text
            semantic_source = "vlm"
        timings["semantics_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0
        provenance = {
            "config_hash": self.config_hash,
            "source": self.config.source,
            "sam": ({"model_type": self.config.sam_model_type,
                     "checkpoint": Path(self.config.sam_checkpoint or "").name or None}
                    if self.config.source == "sam" else None),
            "vlm": self._vlm_provenance(),
            "semantic_strategy": self.config.semantic_strategy,
            "semantic_context": self.config.semantic_context,
            "semantic_source": semantic_source,
            "semantic_fallbacks": fallbacks,
            "granularity_source": level_source,
            "granularity_fallback": level_fallback,
            "timings": timings,
        }
        return DigitalTwin(image_id=image_id, height=h, width=w, granularity=level, objects=objects,
                           query=query, provenance=provenance)


def objects_from_proposals(props: Proposals, level: int) -> list[TwinObject]:
    """Twin objects from proposals (RLEs kept as they are, no re-encoding)."""
    areas = props.areas() * (100.0 / (props.height * props.width))
    return [TwinObject(id=i, rle=props.rles[i], bbox=tuple(float(v) for v in props.boxes[i]),  # type: ignore[arg-type]
                       area=float(areas[i]), predicted_iou=float(props.predicted_iou[i]),
                       stability=float(props.stability[i]), semantic="", level=int(level))
            for i in range(len(props))]


def _device(name: str) -> str:
    from dtwinseg.runtime import resolve_device  # "auto" -> cuda:LOCAL_RANK (co-located shards), else cpu

    return resolve_device(name)
