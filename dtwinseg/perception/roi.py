"""SAM's full-size mask post-processing on each mask's own region: the CPU path of the AMG-exact filters.

SamAutomaticMaskGenerator upsamples every 256 x 256 low-res logit map to the full image (bilinear x4,
crop the padding, bilinear resize to the original size), then measures stability, the box, and the RLE
on the full-size logits. Bilinear interpolation is a convex combination of neighbouring low-res values,
so a full-size pixel can exceed a threshold t only where one of the low-res cells it reads does. Here
each mask is upsampled only over the bounding box of its low-res cells above the lowest threshold that
is counted (``mask_threshold - stability_score_offset``), with a margin of two cells; every pixel
outside is below all thresholds in both computations. Cost follows the mask's extent, not the image's.

- First stage (x4 upsampling, then the padding crop): ``F.interpolate`` on the low-res crop. The source
  coordinate of an output pixel and its weights do not depend on where the crop starts (shifts by whole
  cells are exact in float), so the pixels that matter are bit-identical to the full computation; the
  two rows / columns at each edge of the crop, which read a clamped neighbour, read only cells below
  every threshold.
- Second stage (resize to the original size, when it differs): the same bilinear taps as PyTorch's
  (``linear_taps``: half-pixel source index, clamped), gathered for the crop's rows and columns. Equal to
  ``F.interpolate`` up to float rounding (a pixel within ~1e-6 of a threshold can differ).
- The mask's COCO RLE is written from the crop (``crop_rle_counts``): the pixels outside are zero.

``ProposalConfig.roi_upsample`` ("auto": on CPU) selects this path; on a GPU the batched dense path
(one kernel per chunk of masks) is faster than a Python loop over masks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAD = 2  # low-res cells of margin around the cells above the lowest threshold


def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (align_corners=False) taps of a resize from ``in_size`` to ``out_size`` samples, as
    PyTorch computes them: scale = in / out in float32, source = scale * (dst + 0.5) - 0.5 rounded once
    to float32 (a fused multiply-add) and clamped at 0, i0 = floor, i1 = i0 + 1 (clamped to the last
    sample), weights 1 - l and l. Returns (i0, i1, w0, w1)."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, (np.float32(1.0) - w1).astype(np.float32), w1


class RoiUpsampler:
    """Full-size logits of one mask over its region, for a fixed geometry.

    Args:
        low_res: side of the low-res logits (256).
        img_size: the encoder's input side (1024).
        input_size: (h, w) of the resized image inside the encoder input.
        original_size: (H, W) of the image.
    """

    def __init__(self, low_res: int, img_size: int, input_size: tuple[int, int], original_size: tuple[int, int]):
        self.low_res = low_res
        self.scale = img_size // low_res
        if self.scale * low_res != img_size:
            raise ValueError(f"low-res side {low_res} does not divide the encoder size {img_size}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.resize = self.input_size != self.original_size
        if self.resize:
            self.taps = [linear_taps(i, o) for i, o in zip(self.input_size, self.original_size, strict=True)]

    def _first_stage(self, logits: torch.Tensor, r: tuple[int, int], c: tuple[int, int]
                     ) -> tuple[torch.Tensor, int, int]:
        """x4 upsampling of low-res rows r, columns c, limited to the image: (values, row0, col0) in
        input-size pixels."""
        s = self.scale
        up = F.interpolate(logits[None, None, r[0]:r[1], c[0]:c[1]], scale_factor=s, mode="bilinear",
                           align_corners=False, recompute_scale_factor=False)[0, 0]
        y0, x0 = r[0] * s, c[0] * s
        h, w = self.input_size
        return up[:max(0, h - y0), :max(0, w - x0)], y0, x0

    def _second_stage(self, v: torch.Tensor, y0: int, x0: int) -> tuple[torch.Tensor, int, int]:
        """Resize an input-size crop starting at (y0, x0) to original-size pixels: the output rows /
        columns all of whose taps lie inside the crop."""
        out = []
        for axis, start in ((0, y0), (1, x0)):
            i0, i1, w0, w1 = self.taps[axis]
            end = start + v.shape[axis]
            inside = np.flatnonzero((i0 >= start) & (i1 < end))
            if not len(inside):
                return v.new_zeros(0, 0), 0, 0
            lo, hi = int(inside[0]), int(inside[-1]) + 1
            out.append((lo, torch.from_numpy(i0[lo:hi] - start), torch.from_numpy(i1[lo:hi] - start),
                        torch.from_numpy(w0[lo:hi]), torch.from_numpy(w1[lo:hi])))
        (ya, r0, r1, a0, a1), (xa, c0, c1, b0, b1) = out
        # PyTorch's order: h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 + w1 * x11), columns first
        cols = v.index_select(1, c0) * b0 + v.index_select(1, c1) * b1
        return cols.index_select(0, r0) * a0[:, None] + cols.index_select(0, r1) * a1[:, None], ya, xa

    def crop(self, logits: torch.Tensor, lowest: float) -> tuple[torch.Tensor, int, int] | None:
        """One low-res logit map (low_res x low_res, CPU float32) -> (full-size values over the mask's
        region, row0, col0), or None when no pixel can exceed ``lowest``."""
        s = self.scale
        h, w = self.input_size
        rows, cols = min(self.low_res, -(-h // s) + 1), min(self.low_res, -(-w // s) + 1)
        valid = logits[:rows, :cols]
        margin = 1e-4 * (1.0 + float(valid.abs().max()))
        active = valid > lowest - margin
        ys = torch.nonzero(active.any(1))
        if not len(ys):
            return None
        xs = torch.nonzero(active.any(0))
        r = (max(int(ys[0]) - PAD, 0), min(int(ys[-1]) + PAD + 1, rows))
        c = (max(int(xs[0]) - PAD, 0), min(int(xs[-1]) + PAD + 1, cols))
        v, y0, x0 = self._first_stage(logits, r, c)
        if self.resize:
            v, y0, x0 = self._second_stage(v, y0, x0)
        return v, y0, x0


def crop_rle_counts(crop: np.ndarray, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """COCO run lengths (uint32, column-major, starting with a 0-run) of the H x W mask that is ``crop``
    (bool h x w) at (y0, x0) and zero elsewhere, without building the full mask."""
    h, w = crop.shape
    y1, x1 = y0 + h, x0 + w
    total = height * width
    if h == 0 or w == 0 or not crop.any():
        return np.array([total], dtype=np.uint32)
    c = crop.astype(np.int8)
    ext = np.zeros((h + 2, w), dtype=np.int8)
    ext[1:-1] = c
    # ext[0, k]: the pixel before (y0, x0 + k) in column-major order
    if y0 == 0 and y1 == height:
        ext[0, 1:] = c[-1, :-1]  # the last row of the previous column (inside the crop)
    if y0 == 0 and x0 == 0:
        ext[0, 0] = c[0, 0]  # no pixel before the first one
    # ext[-1, k]: the pixel after (y1 - 1, x0 + k); below the crop it is zero. At the image's bottom it is
    # the next column's first pixel: zero when the crop starts lower; else the next column's own first
    # comparison records the change. After the last pixel of the image nothing is recorded.
    if y1 == height:
        if y0 == 0:
            ext[-1, :-1] = c[-1, :-1]
        if x1 == width:
            ext[-1, -1] = c[-1, -1]
    change = ext[1:] != ext[:-1]  # (h + 1) x w: change at pixel (y0 + k, x0 + col)
    k = np.flatnonzero(change.T)  # column-major: sorted positions
    col, row = k // (h + 1), k % (h + 1)
    pos = (x0 + col) * height + y0 + row
    counts = np.diff(np.concatenate(([0], pos, [total])))
    if y0 == 0 and x0 == 0 and crop[0, 0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.uint32)
