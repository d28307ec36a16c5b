"""Level-specific refinement (method.md 1.3) on constructed masks, and on a planted SAM for the re-prompt."""

import numpy as np
import pytest
import torch

from dtwinseg.perception.proposals import (
    ProposalConfig,
    ProposalGenerator,
    containment_filter,
    containment_matrix,
    dedup_by_iou,
    pairwise_iou,
)
from dtwinseg.twin import encode_rles

H, W = 40, 60


def box(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def rles(*masks):
    return encode_rles(np.stack(masks))


def test_pairwise_iou_and_containment_match_numpy():
    ms = [box(0, 0, 20, 20), box(10, 10, 30, 30), box(5, 5, 10, 10)]
    iou, cont = pairwise_iou(rles(*ms)), containment_matrix(rles(*ms))
    for i, a in enumerate(ms):
        for j, b in enumerate(ms):
            inter = (a & b).sum()
            assert iou[i, j] == pytest.approx(inter / (a | b).sum())
            assert cont[i, j] == pytest.approx(inter / a.sum())


def test_part_level_dedup_keeps_higher_predicted_iou_of_duplicates():
    big = box(0, 0, 30, 30)
    dup = box(0, 0, 30, 28)          # IoU 0.93 with big
    part = box(5, 5, 12, 12)         # nested: IoU tiny, a real part
    neighbour = box(20, 0, 50, 30)   # overlaps big with IoU 0.2
    rl = rles(big, dup, part, neighbour)
    assert dedup_by_iou(rl, np.array([0.90, 0.95, 0.9, 0.9]), 0.7).tolist() == [1, 2, 3]
    assert dedup_by_iou(rl, np.array([0.96, 0.95, 0.9, 0.9]), 0.7).tolist() == [0, 2, 3]
    # tau above the duplicate's IoU keeps both
    assert dedup_by_iou(rl, np.array([0.96, 0.95, 0.9, 0.9]), 0.95).tolist() == [0, 1, 2, 3]
    assert dedup_by_iou([], np.zeros(0), 0.7).tolist() == []


def test_containment_against_the_largest_mask():
    largest = box(0, 0, 40, 40)
    inside = box(5, 5, 15, 15)                # fully inside the largest
    mostly = box(30, 0, 42, 10)               # 10/12 = 0.83 inside
    outside = box(45, 0, 60, 10)
    nested_in_outside = box(50, 2, 55, 6)     # inside `outside`, not the largest
    rl = rles(largest, inside, mostly, outside, nested_in_outside)
    areas = np.array([m.sum() for m in (largest, inside, mostly, outside, nested_in_outside)])
    assert containment_filter(rl, areas, 0.8, "largest").tolist() == [0, 3, 4]
    assert containment_filter(rl, areas, 0.9, "largest").tolist() == [0, 2, 3, 4]
    # all-larger also drops a mask nested in a smaller (but larger than it) kept mask
    assert containment_filter(rl, areas, 0.8, "all-larger").tolist() == [0, 3]
    with pytest.raises(ValueError, match="containment"):
        containment_filter(rl, areas, 0.8, "nearest")


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="containment"):
        ProposalConfig(containment="biggest")
    with pytest.raises(ValueError, match="autocast"):
        ProposalConfig(autocast="int8")
    with pytest.raises(ValueError, match="unknown proposal config"):
        ProposalConfig.from_dict({"theta": 0.5})
    assert ProposalConfig.from_dict({"pred_iou_thresh": 0.5}).pred_iou_thresh == 0.5


@pytest.fixture(scope="module")
def planted_generator():
    from segment_anything import sam_model_registry

    from dtwinseg.perception.planted import BlobScene

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"](checkpoint=None).eval()
    # input frame 1024 x 768 (image 256 x 192): a group > object > part chain and a separate blob
    scene = BlobScene(
        centers=np.array([[300.0, 300.0], [280.0, 300.0], [260.0, 300.0], [800.0, 500.0]]),
        radii=np.array([[200.0, 180.0], [110.0, 100.0], [50.0, 45.0], [120.0, 120.0]]),
        slopes=np.array([20.0, 20.0, 20.0, 20.0]),
        ious=np.array([0.97, 0.96, 0.95, 0.98]),
    )
    return sam, scene


def run_planted(sam, scene, level, **cfg):
    from dtwinseg.perception.planted import fixed_encoder, plant

    gen = ProposalGenerator(sam, ProposalConfig(points_per_side=12, **cfg))
    image = np.zeros((192, 256, 3), np.uint8)
    with fixed_encoder(sam, torch.zeros(1, 256, 64, 64)), plant(sam, scene, run_decoder=False):
        raw = gen.generate(image)
        refined = gen.refine(raw, level) if level is not None else raw
    return raw, refined


def blob_masks(scene, hw=(192, 256)):
    """The four blobs rasterised at image resolution (image px = input px / 4)."""
    ys, xs = np.mgrid[0:hw[0], 0:hw[1]] + 0.5
    c, r = scene.centers / 4, scene.radii / 4
    return np.stack([(((xs - c[k, 0]) / r[k, 0]) ** 2 + ((ys - c[k, 1]) / r[k, 1]) ** 2) < 1 for k in range(len(c))])


def best_match(masks, target):
    inter = (masks & target).reshape(len(masks), -1).sum(1)
    union = (masks | target).reshape(len(masks), -1).sum(1)
    return (inter / np.maximum(union, 1)).max()


def test_part_level_keeps_nested_parts_but_no_duplicates(planted_generator):
    sam, scene = planted_generator
    # box NMS off, so the grid's near-duplicates reach the refinement, which must drop them
    raw, part = run_planted(sam, scene, level=2, box_nms_thresh=1.0)
    assert len(raw) > 20 and len(part) == 4
    masks = part.masks()
    for blob in blob_masks(scene):
        assert best_match(masks, blob) > 0.9
    assert pairwise_iou(part.rles)[~np.eye(len(part), dtype=bool)].max() <= 0.7


def test_object_level_reprompts_to_largest_and_drops_contained(planted_generator):
    sam, scene = planted_generator
    _, obj = run_planted(sam, scene, level=1)
    masks = obj.masks()
    blobs = blob_masks(scene)
    # centroids of part/object re-prompt to the largest mask of their chain: the group; the separate
    # blob survives the containment test against the largest mask
    assert len(obj) == 2
    assert best_match(masks, blobs[0]) > 0.9 and best_match(masks, blobs[3]) > 0.9
    assert obj.timings["refined"] == 2


def test_object_level_without_dedup_keeps_repeats_only_outside_the_largest(planted_generator):
    sam, scene = planted_generator
    _, obj = run_planted(sam, scene, level=0, object_dedup=False)
    # every group-chain proposal re-prompts to the group (the largest) and is then contained in it,
    # except the largest itself; the separate blob's proposals all survive
    blobs = blob_masks(scene)
    ious_sep = [best_match(m[None], blobs[3]) for m in obj.masks()]
    assert sum(i > 0.9 for i in ious_sep) == len(obj) - 1
