"""Mask -> COCO RLE in torch (dtwinseg.perception.rle): bit-exact with pycocotools' encode."""

import numpy as np
import pytest
import torch

from dtwinseg.perception.rle import encode_rles_torch, rle_runs
from dtwinseg.twin import decode_rle, encode_rles


def edge_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    one_pixel = np.zeros((4, 7, 5), bool)
    one_pixel[0, 0, 0] = True      # first pixel
    one_pixel[1, -1, -1] = True    # last pixel
    one_pixel[2, 3, 2] = True      # a single inner pixel
    one_pixel[3, -1, 0] = True     # end of the first column
    column = np.zeros((2, 6, 4), bool)
    column[0, :, 1] = True         # a full column: runs cross column boundaries
    column[1, :, -1] = True
    return [
        np.zeros((2, 5, 7), bool), np.ones((2, 5, 7), bool),              # empty, full
        np.zeros((1, 1, 1), bool), np.ones((1, 1, 1), bool),              # 1 x 1
        one_pixel, column,
        rng.random((3, 1, 9)) > 0.5, rng.random((3, 9, 1)) > 0.5,          # single row / column
        rng.random((5, 17, 13)) > 0.5, rng.random((4, 33, 31)) > 0.9,      # odd sizes, random
        rng.random((3, 64, 48)) > 0.1,
    ]


@pytest.mark.parametrize("host_nonzero", [True, False])
def test_torch_rle_is_bit_exact_with_pycocotools(host_nonzero):
    for masks in edge_cases():
        ours = encode_rles_torch(torch.from_numpy(masks), host_nonzero=host_nonzero)
        assert ours == encode_rles(masks), masks.shape
        for rle, m in zip(ours, masks, strict=True):
            assert np.array_equal(decode_rle(rle), m)


def test_runs_sum_to_the_pixel_count_and_alternate():
    masks = np.zeros((1, 4, 3), bool)
    masks[0, 1:3, 1] = True        # column-major: 5 zeros, 2 ones, 5 zeros
    assert rle_runs(torch.from_numpy(masks))[0].tolist() == [5, 2, 5]
    full = rle_runs(torch.ones(1, 2, 2, dtype=torch.bool))[0]
    assert full.tolist() == [0, 4]
    assert encode_rles_torch(torch.zeros(0, 3, 3, dtype=torch.bool)) == []


def test_blob_masks_at_image_size():
    ys, xs = np.mgrid[0:120, 0:160]
    rng = np.random.default_rng(1)
    masks = np.stack([((xs - rng.uniform(0, 160)) / rng.uniform(5, 60)) ** 2
                      + ((ys - rng.uniform(0, 120)) / rng.uniform(5, 60)) ** 2 < 1 for _ in range(12)])
    assert encode_rles_torch(torch.from_numpy(masks)) == encode_rles(masks)
    assert encode_rles_torch(torch.from_numpy(masks).to(torch.uint8)) == encode_rles(masks)
