"""gIoU / cIoU against hand-computed values and a plain per-mask reference implementation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dtwinseg.metrics import (
    GroupedIoU,
    IoUAccumulator,
    compute_giou_ciou,
    iou_stats,
    per_mask_iou,
)


def reference_stats(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """The reference's steps, written out plainly: ignore -> 255, then count class 1."""
    out = pred.astype(np.int64).copy()
    out[out != 0] = 1
    out[gt == 255] = 255
    inter = int(np.sum((out == 1) & (gt == 1)))
    union = int(np.sum(out == 1) + np.sum(gt == 1) - inter)
    return inter, union


def reference_metric(preds, gts) -> dict:
    ious, inters, unions = [], [], []
    for p, g in zip(preds, gts, strict=True):
        i, u = reference_stats(p, g)
        iou = i / (u + 1e-5)
        if u == 0:
            iou += 1.0
        ious.append(iou)
        inters.append(i)
        unions.append(u)
    return {"giou": sum(ious) / (len(ious) + 1e-5), "ciou": sum(inters) / (sum(unions) + 1e-10)}


def m(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


def test_simple_overlap_by_hand():
    i, u, iou = per_mask_iou(m([[1, 1], [0, 0]]), m([[1, 0], [1, 0]]))
    assert (i, u) == (1, 3)
    assert iou == pytest.approx(1 / (3 + 1e-5), rel=1e-12)


def test_ignore_pixels_leave_both_areas():
    # pred covers an ignored pixel: it counts neither in the prediction nor in the union
    i, u, iou = per_mask_iou(m([[1, 1], [0, 1]]), m([[1, 255], [0, 255]]))
    assert (i, u) == (1, 1)
    assert iou == pytest.approx(1 / (1 + 1e-5), rel=1e-12)


def test_both_empty_scores_one_and_adds_nothing_to_ciou():
    pred = np.zeros((3, 4), bool)
    gt = np.zeros((3, 4), np.uint8)
    assert per_mask_iou(pred, gt) == (0, 0, 1.0)
    r = compute_giou_ciou([pred], [gt])
    assert r["giou"] == pytest.approx(1.0 / (1 + 1e-5), rel=1e-12)
    assert r["ciou"] == 0.0


def test_all_ignored_ground_truth_counts_as_empty():
    assert per_mask_iou(np.ones((2, 2), bool), np.full((2, 2), 255, np.uint8)) == (0, 0, 1.0)


def test_empty_prediction_on_nonempty_gt_scores_zero():
    i, u, iou = per_mask_iou(np.zeros((2, 2), bool), m([[0, 1], [1, 1]]))
    assert (i, u, iou) == (0, 3, 0.0)


def test_epsilons_in_aggregation():
    preds = [m([[1, 1], [0, 0]]), np.zeros((2, 2), np.uint8), m([[1, 1], [1, 1]])]
    gts = [m([[1, 0], [1, 0]]), np.zeros((2, 2), np.uint8), m([[1, 1], [1, 1]])]
    r = compute_giou_ciou(preds, gts)
    assert r["giou"] == pytest.approx((1 / (3 + 1e-5) + 1.0 + 4 / (4 + 1e-5)) / (3 + 1e-5), rel=1e-15)
    assert r["ciou"] == pytest.approx(5 / (7 + 1e-10), rel=1e-15)
    assert set(r) == {"giou", "ciou"}
    assert all(type(v) is float for v in r.values())


def test_no_masks():
    assert compute_giou_ciou([], []) == {"giou": 0.0, "ciou": 0.0}


def test_prediction_dtypes_nonzero_is_foreground():
    gt = m([[1, 0, 255]])
    for pred in (np.array([[True, True, True]]), m([[1, 1, 1]]), m([[255, 7, 1]]), np.ones((1, 3), np.float32)):
        assert per_mask_iou(pred, gt)[:2] == (1, 2)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        per_mask_iou(np.zeros((2, 3), bool), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="pair 1"):
        compute_giou_ciou([np.zeros((2, 2))] * 2, [np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8)])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        compute_giou_ciou([np.zeros((2, 2))] * 2, [np.zeros((2, 2), np.uint8)])
    with pytest.raises(ValueError, match="ground truth values must be 0"):
        per_mask_iou(np.zeros((2, 2)), m([[0, 2], [255, 1]]))
    with pytest.raises(ValueError, match="ground truth values must be 0"):
        per_mask_iou(np.zeros((2, 2)), np.array([[0, -1], [1, 1]]))
    with pytest.raises(ValueError, match="H x W"):
        per_mask_iou(np.zeros(4), np.zeros(4, np.uint8))


def random_pairs(rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    preds, gts = [], []
    for _ in range(n):
        h, w = rng.integers(1, 40, size=2)
        gt = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1 * rng.random()] = 255
        pred = rng.random((h, w)) < rng.random()
        if rng.random() < 0.15:
            pred[:] = False
        if rng.random() < 0.15:
            gt[gt == 1] = 0
        preds.append(pred)
        gts.append(gt)
    return preds, gts


def test_matches_reference_on_random_masks():
    rng = np.random.default_rng(7)
    preds, gts = random_pairs(rng, 200)
    inter, union = iou_stats(preds, gts)
    assert [(int(i), int(u)) for i, u in zip(inter, union, strict=True)] == [reference_stats(p, g) for p, g in zip(preds, gts, strict=True)]
    ours, ref = compute_giou_ciou(preds, gts), reference_metric(preds, gts)
    assert ours["giou"] == pytest.approx(ref["giou"], rel=1e-12)
    assert ours["ciou"] == pytest.approx(ref["ciou"], rel=1e-12)


def test_stacked_arrays_equal_sequences():
    rng = np.random.default_rng(3)
    preds = rng.random((6, 32, 48)) < 0.4
    gts = np.where(rng.random((6, 32, 48)) < 0.05, 255, rng.random((6, 32, 48)) < 0.3).astype(np.uint8)
    a, b = iou_stats(preds, gts), iou_stats(list(preds), list(gts))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].sum() > 0


def test_merge_equals_one_pass_and_state_round_trip():
    rng = np.random.default_rng(11)
    preds, gts = random_pairs(rng, 60)
    whole = IoUAccumulator()
    whole.add_batch(preds, gts)
    first, second = IoUAccumulator(), IoUAccumulator()
    for p, g in zip(preds[:25], gts[:25], strict=True):
        first.add(p, g)
    second.add_batch(preds[25:], gts[25:])
    # shards travel as JSON between processes
    second = IoUAccumulator.from_state_dict(json.loads(json.dumps(second.state_dict())))
    merged = IoUAccumulator().merge(second).merge(first)  # order must not matter
    assert merged.result() == whole.result()
    assert whole.result()["n"] == 60
    restored = IoUAccumulator.from_state_dict(json.loads(json.dumps(whole.state_dict())))
    assert restored.result() == whole.result()


def test_bad_state_dict():
    with pytest.raises(ValueError, match="unions"):
        IoUAccumulator.from_state_dict({"intersections": [1]})
    with pytest.raises(ValueError, match="intersection <= union"):
        IoUAccumulator.from_state_dict({"intersections": [3], "unions": [2]})


def test_grouped_results_per_split_and_tag():
    grouped = GroupedIoU()
    gt = m([[1, 1], [0, 0]])
    grouped.add(m([[1, 1], [0, 0]]), gt, "test", "long")
    grouped.add(m([[0, 0], [1, 1]]), gt, "test", "short")
    other = GroupedIoU.from_state_dict(json.loads(json.dumps(grouped.state_dict())))
    res = grouped.merge(other).results()
    assert list(res) == ["long", "short", "test"]
    assert res["long"]["giou"] == pytest.approx(2 * (2 / (2 + 1e-5)) / (2 + 1e-5))
    assert res["short"]["giou"] == 0.0
    assert res["test"]["n"] == 4
    assert res["test"]["ciou"] == pytest.approx(4 / (12 + 1e-10))
