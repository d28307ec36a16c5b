"""COCO run-length encoding of N x H x W masks on the masks' own device (torch), bit-exact with
pycocotools' ``encode``.

COCO RLE runs over the pixels in column-major order (x outer, y inner), alternating 0-runs and 1-runs,
starting with a (possibly empty) 0-run. On the device: transpose to column-major, compare each pixel with
the previous one, and take the positions where the value changes (``nonzero``). Only those change
positions and the first pixel of every mask go to the host, where they become run lengths and
pycocotools compresses them to its string form (C). A dense mask never crosses to the host, so on a GPU
the transfer is a few kilobytes per mask instead of H x W bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils


def change_positions(masks: torch.Tensor, host_nonzero: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where the column-major pixel sequence of each of N x H x W bool masks changes value.

    Returns (keys, first): keys = n * H * W + p, sorted, for every position p (1 <= p < H * W, column-major)
    whose pixel differs from pixel p - 1 of mask n; first = the N first pixels (bool). Computed on the
    masks' device without a transposed copy: changes inside a column are vertical neighbour differences
    (contiguous), changes between columns compare a column's last row with the next column's first row.
    ``host_nonzero`` (default: on CPU tensors) finds the changes with numpy instead of torch.
    """
    if host_nonzero is None:
        host_nonzero = masks.device.type == "cpu"
    n, h, w = masks.shape
    total = h * w
    first = masks[:, 0, 0].cpu().numpy().astype(bool)
    inside = masks[:, 1:, :] != masks[:, :-1, :]                 # N x (H-1) x W: change at (y+1, x)
    across = masks[:, 0, 1:] != masks[:, h - 1, :-1]               # N x (W-1): change at (0, x+1)
    if host_nonzero:  # numpy's flatnonzero is several times faster than torch's on CPU
        idx_in, idx_ac = np.flatnonzero(inside.cpu().numpy()), np.flatnonzero(across.cpu().numpy())
    else:
        idx_in, idx_ac = torch.nonzero(inside.flatten())[:, 0], torch.nonzero(across.flatten())[:, 0]
    k, rem = idx_in // ((h - 1) * w), idx_in % ((h - 1) * w)
    keys_in = k * total + (rem % w) * h + rem // w + 1          # (y+1, x) -> x * H + y + 1
    per_mask = max(w - 1, 1)
    keys_ac = (idx_ac // per_mask) * total + (idx_ac % per_mask + 1) * h
    if host_nonzero:
        keys = np.sort(np.concatenate((keys_in, keys_ac)))
    else:
        keys = torch.sort(torch.cat((keys_in, keys_ac))).values.cpu().numpy()
    return np.asarray(keys, dtype=np.int64), first


def rle_runs(masks: torch.Tensor, host_nonzero: bool | None = None) -> list[np.ndarray]:
    """Run lengths (uint32, COCO order: first a 0-run, possibly of length 0) of N x H x W masks.

    Computed on ``masks.device``; only the change positions are copied to the host.
    """
    if masks.ndim != 3:
        raise ValueError(f"expected N x H x W masks, got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    total = h * w
    if n == 0:
        return []
    keys, first = change_positions(masks.bool(), host_nonzero)
    which, pos = keys // total, keys % total
    starts = np.searchsorted(which, np.arange(n), side="left")
    ends = np.searchsorted(which, np.arange(n), side="right")
    runs = []
    for i in range(n):
        counts = np.diff(np.concatenate(([0], pos[starts[i]:ends[i]], [total])))
        if first[i]:
            counts = np.concatenate(([0], counts))
        runs.append(counts.astype(np.uint32))
    return runs


def encode_rles_torch(masks: torch.Tensor, host_nonzero: bool | None = None) -> list[dict]:
    """N x H x W masks (any device, bool / 0-1) -> N COCO RLEs with ``counts`` as str, identical to
    ``pycocotools.mask.encode`` of the same masks (as ``dtwinseg.twin.encode_rles`` returns them)."""
    n, h, w = masks.shape if masks.ndim == 3 else (0, 0, 0)
    return rles_from_runs(rle_runs(masks, host_nonzero), h, w)


def rles_from_runs(runs: list[np.ndarray], height: int, width: int) -> list[dict]:
    """COCO run lengths of H x W masks -> RLEs with ``counts`` as str (pycocotools' compressed form)."""
    if not runs:
        return []
    compressed = mask_utils.frPyObjects([{"size": [height, width], "counts": r.tolist()} for r in runs],
                                        height, width)
    return [{"size": [height, width], "counts": r["counts"].decode("ascii")} for r in compressed]
