"""Simulated SAM: ground-truth instances turned into proposals with the errors SAM everything mode makes.

``source: simulated`` (recipes/perception/simulated_sam.yaml) stands between the oracle (perfect instance
masks) and real SAM: every instance of the sample (wholes and parts alike, as everything mode returns
them) becomes a proposal whose mask went through

- **boundary jitter**: the mask blurred, shifted by a smooth random field and re-thresholded, so edges
  move by about ``jitter_px`` pixels and thin parts may break;
- **misses** (``p_miss``; twice as often for instances under ``small_px`` pixels): no proposal;
- **splits** (``p_split``, instances over ``split_min_px``): two pieces cut along a random line through the
  centroid instead of the whole;
- **merges** (``p_merge``): the union with a touching instance instead of the instance alone;
- **near-duplicates** (``p_duplicate``): a second, differently jittered copy;
- **spurious masks** (Poisson with mean ``spurious``): blobs over whatever lies under them.

Each proposal's text is what a VLM would say about it: the instance's ``semantic``, or one of its
``alt_semantics`` (other wordings of the same thing) for duplicates, pieces and spurious blobs, so a
near-duplicate is not worded identically. A merged mask is worded as its larger instance. The random draws
depend only on ``seed`` and the instance masks, so the same scene always gets the same proposals,
whatever its query, file name or position in a dataset. The order is shuffled (SAM's order says nothing
about the query), and every proposal has the twin's level, like SAM's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from dtwinseg.config import StrictConfig
from dtwinseg.io import DataError
from dtwinseg.twin import TwinObject, decode_rle

SPURIOUS_WORDS = ("an object", "a dark patch", "a shadow", "a small region", "something")


@dataclass
class SimulationConfig(StrictConfig):
    """Error rates of the simulated SAM (``simulation:`` in a perception config with ``source: simulated``)."""

    seed: int = 0
    jitter_px: float = 1.2
    p_miss: float = 0.05
    small_px: int = 150
    p_split: float = 0.05
    split_min_px: int = 400
    p_merge: float = 0.04
    p_duplicate: float = 0.15
    spurious: float = 1.5
    p_generic_spurious: float = 0.3

    SECTION = "simulation"

    def __post_init__(self) -> None:
        for name in ("p_miss", "p_split", "p_merge", "p_duplicate", "p_generic_spurious"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:  # NaN fails too
                raise DataError(None, f"simulation.{name}", f"a probability in [0, 1], got {v}")
        for name in ("jitter_px", "spurious"):
            v = getattr(self, name)
            if not 0.0 <= v <= 50.0:
                raise DataError(None, f"simulation.{name}", f"must be in [0, 50], got {v}")
        for name in ("small_px", "split_min_px"):
            if getattr(self, name) < 0:
                raise DataError(None, f"simulation.{name}", f"must be >= 0, got {getattr(self, name)}")


def _scene_rng(seed: int, instances: list[dict]) -> np.random.Generator:
    h = hashlib.sha256(str(int(seed)).encode())
    for inst in instances:
        counts = inst["rle"]["counts"]
        h.update(counts.encode() if isinstance(counts, str) else bytes(str(counts), "utf-8"))
        h.update(b"\0")
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "big"))


def jitter(mask: np.ndarray, rng: np.random.Generator, px: float) -> np.ndarray:
    """``mask`` with its boundary moved by about ``px`` pixels (a smooth random field, so neighbouring
    boundary pixels move together), less on small masks (a third of it under ~100 pixels: SAM's edges are
    finer than a fixed blur on small things); the original when the result would be empty."""
    import cv2

    if px <= 0 or not mask.any():
        return mask.copy()
    h, w = mask.shape
    ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    px = px * float(np.clip(np.sqrt(np.count_nonzero(mask)) / 25.0, 0.35, 1.0))
    pad = int(np.ceil(3 * px)) + 2
    y0, y1 = max(0, ys[0] - pad), min(h, ys[-1] + pad + 1)
    x0, x1 = max(0, xs[0] - pad), min(w, xs[-1] + pad + 1)
    crop = mask[y0:y1, x0:x1].astype(np.float32)
    soft = cv2.GaussianBlur(crop, (0, 0), sigmaX=max(0.4, px))
    ch, cw = crop.shape
    coarse = rng.normal(0.0, 1.0, (max(2, ch // 8 + 1), max(2, cw // 8 + 1))).astype(np.float32)
    field = cv2.resize(coarse, (cw, ch), interpolation=cv2.INTER_CUBIC)
    bias = float(rng.normal(0.0, 0.06))  # the whole mask a little larger or smaller
    out_crop = soft + 0.22 * field + bias > 0.5
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = out_crop
    return out if out.any() else mask.copy()


def split(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Two pieces of ``mask`` on either side of a random line through its centroid (None when one piece
    would hold under a fifth of it)."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 10:
        return None
    angle = float(rng.uniform(0.0, np.pi))
    side = (xs - xs.mean()) * np.cos(angle) + (ys - ys.mean()) * np.sin(angle) > 0
    if min(side.sum(), (~side).sum()) < 0.2 * len(xs):
        return None
    a, b = np.zeros_like(mask), np.zeros_like(mask)
    a[ys[side], xs[side]] = True
    b[ys[~side], xs[~side]] = True
    return a, b


def _touching(masks: list[np.ndarray], k: int, candidates: list[int]) -> list[int]:
    import cv2

    grown = cv2.dilate(masks[k].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return [j for j in candidates if j != k and (grown & masks[j]).any()]


def _words(inst: dict, rng: np.random.Generator) -> str:
    alts = [a for a in inst.get("alt_semantics") or [] if isinstance(a, str) and a]
    return alts[int(rng.integers(len(alts)))] if alts else str(inst.get("semantic", ""))


def simulate(instances: list[dict], height: int, width: int, cfg: SimulationConfig,
             level: int = 1) -> list[TwinObject]:
    """SAM-like proposals (twin objects, ids 0..N-1 in a shuffled order) from ground-truth ``instances``
    (``{"rle", "semantic", "level", ["alt_semantics"]}``); see the module docstring."""
    import cv2

    rng = _scene_rng(cfg.seed, instances)
    masks = []
    for k, inst in enumerate(instances):
        m = decode_rle(inst["rle"]).astype(bool)
        if m.shape != (height, width):
            raise DataError(None, f"instances[{k}].rle.size", f"{list(m.shape)} is not the image size {[height, width]}")
        masks.append(m)
    areas = [int(m.sum()) for m in masks]
    wholes = [k for k, inst in enumerate(instances) if int(inst.get("level", 1)) == 1 and areas[k] > 0]
    out: list[tuple[np.ndarray, str, float]] = []  # (mask, text, predicted iou)
    for k, inst in enumerate(instances):
        m, area = masks[k], areas[k]
        if area == 0:
            continue
        u = rng.random(5)
        if u[0] < cfg.p_miss * (2.0 if area < cfg.small_px else 1.0):
            continue
        if area >= cfg.split_min_px and u[1] < cfg.p_split:
            pieces = split(m, rng)
            if pieces is not None:
                out += [(jitter(p, rng, cfg.jitter_px), _words(inst, rng), float(rng.uniform(0.78, 0.92)))
                        for p in pieces]
                continue
        text = str(inst.get("semantic", ""))
        if k in wholes and u[2] < cfg.p_merge:
            near = _touching(masks, k, [j for j in wholes if areas[j] < 0.2 * height * width])
            if near:
                j = near[int(rng.integers(len(near)))]
                m = m | masks[j]
                text = text if area >= areas[j] else str(instances[j].get("semantic", ""))
        out.append((jitter(m, rng, cfg.jitter_px), text, float(rng.uniform(0.86, 0.99))))
        if u[3] < cfg.p_duplicate:
            out.append((jitter(masks[k], rng, 1.6 * cfg.jitter_px + 0.5), _words(inst, rng),
                        float(rng.uniform(0.8, 0.95))))
    for _ in range(int(rng.poisson(cfg.spurious))):
        blob = np.zeros((height, width), dtype=np.uint8)
        rx, ry = rng.uniform(0.03, 0.12, 2) * (width, height)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        cv2.ellipse(blob, (int(cx), int(cy)), (max(2, int(rx)), max(2, int(ry))), float(rng.uniform(0, 180)),
                    0, 360, 1, -1)
        blob = jitter(blob.astype(bool), rng, 2.0 * cfg.jitter_px + 1.0)
        under = [int((blob & masks[k]).sum()) for k in range(len(masks))]
        owner = int(np.argmax(under)) if under and max(under) > 0 else None
        generic = owner is None or rng.random() < cfg.p_generic_spurious
        text = SPURIOUS_WORDS[int(rng.integers(len(SPURIOUS_WORDS)))] if generic else _words(instances[owner], rng)
        out.append((blob, text, float(rng.uniform(0.7, 0.88))))
    order = rng.permutation(len(out))
    objs = []
    for new_id, k in enumerate(order):
        m, text, piou = out[int(k)]
        objs.append(TwinObject.from_mask(new_id, m, semantic=text, predicted_iou=round(piou, 4),
                                         stability=round(min(1.0, piou + 0.03), 4), level=int(level)))
    return objs
