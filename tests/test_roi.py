"""Run-length encoding of a mask given by its crop (dtwinseg.perception.roi), against pycocotools."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from dtwinseg.perception.roi import crop_rle_counts, linear_taps


def _encode_counts(counts: np.ndarray, h: int, w: int) -> bytes:
    return mask_utils.frPyObjects([{"size": [h, w], "counts": counts.tolist()}], h, w)[0]["counts"]


def test_crop_rle_matches_pycocotools_on_random_crops():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(1, 9, 2))
        full = np.zeros((h, w), bool)
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = int(rng.integers(y0, h + 1)), int(rng.integers(x0, w + 1))
        full[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.random()
        ref = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))["counts"]
        assert _encode_counts(crop_rle_counts(full[y0:y1, x0:x1], y0, x0, h, w), h, w) == ref, (h, w, y0, x0, full)


@pytest.mark.parametrize("fill", ["empty", "full", "corner", "last_pixel", "columns"])
def test_crop_rle_edge_masks(fill):
    h, w = 7, 5
    full = np.zeros((h, w), bool)
    if fill == "full":
        full[:] = True
    elif fill == "corner":
        full[0, 0] = True
    elif fill == "last_pixel":
        full[-1, -1] = True
    elif fill == "columns":
        full[:, 1] = full[:, 3] = True
    ref = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))["counts"]
    assert _encode_counts(crop_rle_counts(full, 0, 0, h, w), h, w) == ref
    ys, xs = np.nonzero(full)
    if len(ys):  # the tight crop too
        crop = full[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert _encode_counts(crop_rle_counts(crop, int(ys.min()), int(xs.min()), h, w), h, w) == ref


@pytest.mark.parametrize("sizes", [(768, 480), (1024, 1500), (683, 683), (10, 3)])
def test_linear_taps_reproduce_torch_bilinear(sizes):
    import torch
    import torch.nn.functional as F

    n_in, n_out = sizes
    x = torch.randn(1, 1, 1, n_in)
    ref = F.interpolate(x, (1, n_out), mode="bilinear", align_corners=False)[0, 0, 0]
    i0, i1, w0, w1 = linear_taps(n_in, n_out)
    got = x[0, 0, 0, i0] * torch.from_numpy(w0) + x[0, 0, 0, i1] * torch.from_numpy(w1)
    assert torch.allclose(got, ref, atol=1e-6)
