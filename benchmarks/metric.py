"""gIoU / cIoU over 1,000 masks of 1024 x 1024: dtwinseg.metrics vs a per-mask torch implementation
in the reference's style (LISA ``intersectionAndUnionGPU``: ignore -> 255, ``torch.histc`` per class,
then the ``validate`` aggregation), timed side by side in one process.

Run: ``python benchmarks/metric.py [--quick]``; writes benchmarks/results/metric.json.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import interleaved, median, write_result  # noqa: E402
from dtwinseg.metrics import compute_giou_ciou  # noqa: E402


def make_masks(n: int, size: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """n distinct (prediction bool, ground truth uint8 0/1/255) pairs of ellipse-like blobs.

    Every pair is its own array (no shared memory), so the timing reads n fresh masks as in an eval.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    preds, gts = [], []
    for _ in range(n):
        cy, cx, ry, rx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)
        gt_fg = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        gt = gt_fg.astype(np.uint8)
        if rng.random() < 0.3:  # an ignore band on some masks, as in ReasonSeg
            y0 = int(rng.uniform(0, 0.9) * size)
            gt[y0 : y0 + size // 20] = 255
        shift = rng.integers(-size // 20, size // 20 + 1, size=2)
        pred = np.roll(gt_fg, tuple(shift), axis=(0, 1))
        preds.append(pred)
        gts.append(gt)
    return preds, gts


def reference_style(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    """Per-mask torch, as the reference evaluates: clone, mark ignore, three histc calls per mask.

    CPU ``torch.histc`` needs floating point, so the int masks of the reference become float here.
    """
    import torch

    k = 2
    inter_sum = torch.zeros(k)
    union_sum = torch.zeros(k)
    iou_sum = torch.zeros(k)
    for p, g in zip(preds, gts, strict=True):
        output = torch.from_numpy(p).float().reshape(-1).clone()
        target = torch.from_numpy(g).float().reshape(-1)
        output[target == 255] = 255
        intersection = output[output == target]
        area_i = torch.histc(intersection, bins=k, min=0, max=k - 1)
        area_o = torch.histc(output, bins=k, min=0, max=k - 1)
        area_t = torch.histc(target, bins=k, min=0, max=k - 1)
        area_u = area_o + area_t - area_i
        inter_sum += area_i
        union_sum += area_u
        iou = area_i / (area_u + 1e-5)
        iou[area_u == 0] += 1.0
        iou_sum += iou
    n = len(preds)
    return {
        "giou": float(iou_sum[1] / (n + 1e-5)),
        "ciou": float(inter_sum[1] / (union_sum[1] + 1e-10)),
    }


def main(quick: bool = False) -> dict:
    """Ours on all ``n`` masks vs the per-mask reference on the first ``ref_n`` of them.

    The reference costs the same for every mask (~0.1-0.2 s each here), so it is timed on a subset and
    both are reported per 1,000 masks; timing it on all 1,000 would alone take most of `make bench`.
    """
    n, size = (100, 1024) if quick else (1000, 1024)
    ref_n = 20 if quick else 100
    repeats = 2 if quick else 3
    preds, gts = make_masks(n, size)
    sub_p, sub_g = preds[:ref_n], gts[:ref_n]
    ours_sub = compute_giou_ciou(sub_p, sub_g)  # these first passes are also the warm-up
    ref = reference_style(sub_p, sub_g)
    ours = compute_giou_ciou(preds, gts)
    # float32 sums in the reference vs exact sums here: agreement to ~1e-6
    agree = abs(ours_sub["giou"] - ref["giou"]) < 1e-5 and abs(ours_sub["ciou"] - ref["ciou"]) < 1e-5
    times = interleaved(
        {"dtwinseg": lambda: compute_giou_ciou(preds, gts), "reference_style": lambda: reference_style(sub_p, sub_g)},
        repeats=repeats,
        warmup=0,
    )
    med = {k: median(v) for k, v in times.items()}
    per_1000 = {"dtwinseg": med["dtwinseg"] * 1000 / n, "reference_style": med["reference_style"] * 1000 / ref_n}
    result = {
        "load_average_1_5_15min": list(os.getloadavg()),  # other jobs on the machine inflate the seconds
        "settings": {"masks": n, "reference_masks": ref_n, "height": size, "width": size, "repeats": repeats,
                     "warmup": "one pass each (the values)", "quick": quick},
        "raw_seconds": times,
        "median_seconds": med,
        "seconds_per_1000_masks": per_1000,
        "speedup": per_1000["reference_style"] / per_1000["dtwinseg"],  # per-mask reference time / ours
        "values": {"dtwinseg_subset": ours_sub, "dtwinseg_all": ours, "reference_style_subset": ref,
                   "agree_1e-5": agree},
    }
    write_result("metric", result)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(quick="--quick" in sys.argv), indent=2))
