"""The paper's proposal filters and level refinement (proposals.py docstring, steps 3-7), each step on
constructed masks, and the SAM re-prompt on a planted random-weight SAM."""

import numpy as np
import pytest
import torch

from dtwinseg.perception.mask_ops import (
    Proposals,
    containment_filter,
    containment_matrix,
    dedup_by_iou,
    mask_centroids,
    pairwise_iou,
    part_level,
)
from dtwinseg.perception.proposals import ProposalConfig, ProposalGenerator
from dtwinseg.twin import encode_rles, mask_bbox

H, W = 40, 60


def box(x0, y0, x1, y1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def rles(*masks):
    return encode_rles(np.stack(masks))


def proposals(masks, scores):
    masks = np.stack(masks)
    return Proposals(rles=encode_rles(masks), boxes=np.array([mask_bbox(m) for m in masks], np.float32),
                     predicted_iou=np.asarray(scores, np.float32), stability=np.ones(len(masks), np.float32),
                     points=np.zeros((len(masks), 2), np.float32), height=masks.shape[1], width=masks.shape[2])


def test_pairwise_iou_and_containment_match_numpy():
    ms = [box(0, 0, 20, 20), box(10, 10, 30, 30), box(5, 5, 10, 10)]
    iou, cont = pairwise_iou(rles(*ms)), containment_matrix(rles(*ms))
    for i, a in enumerate(ms):
        for j, b in enumerate(ms):
            inter = (a & b).sum()
            assert iou[i, j] == pytest.approx(inter / (a | b).sum())
            assert cont[i, j] == pytest.approx(inter / a.sum())


def test_step2_centroids_are_mean_pixel_coordinates():
    """Eq. 2 on constructed masks, an L shape included (its centroid lies outside the mask)."""
    ell = box(0, 0, 10, 30) | box(0, 20, 40, 30)
    masks = np.stack([box(10, 4, 20, 8), ell, np.zeros((H, W), bool)])
    got = mask_centroids(torch.from_numpy(masks)).numpy()
    for m, c in zip(masks[:2], got[:2], strict=True):
        ys, xs = np.nonzero(m)
        assert np.allclose(c, (xs.mean(), ys.mean()))
    assert np.allclose(got[0], (14.5, 5.5)) and not ell[int(got[1, 1]), int(got[1, 0])]
    assert got[2].tolist() == [0.0, 0.0]


def test_step6_part_level_dedup_keeps_higher_predicted_iou_of_duplicates():
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


def test_step6_tau_decides_on_mask_iou_before_any_box_nms():
    """A frame and the filled square it surrounds have the same box (box IoU 1) but mask IoU 0.64: tau
    keeps both parts; only the optional AMG box NMS, which runs after tau, may merge them."""
    filled = box(10, 10, 30, 30)
    frame = filled & ~box(14, 14, 26, 26)
    dup = box(10, 10, 30, 29)        # a duplicate of `filled` (IoU 0.95), lower score
    props = proposals([filled, frame, dup], [0.95, 0.93, 0.90])
    kept = part_level(props, tau=0.7, box_nms_thresh=1.0)
    assert kept.rles == [props.rles[0], props.rles[1]]
    # with the AMG box NMS on (after tau) the frame goes too: boxes identical
    assert part_level(props, tau=0.7, box_nms_thresh=0.7).rles == [props.rles[0]]


def test_step7e_containment_against_the_largest_mask():
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


def test_step7e_near_full_image_mask_cannot_empty_the_twin():
    """A background mask covering 95% of the image contains every object: the paper's rule as written
    (max_area 1) keeps only it; the default cap keeps it AND the objects, and applies the rule to the
    largest mask below the cap instead."""
    background = ~box(0, 0, 3, 40)            # 95% of the image
    table = box(5, 5, 50, 35)                 # the largest real object
    cup = box(10, 10, 20, 20)                 # on the table: contained in it
    lamp = box(52, 2, 58, 30)                 # outside the table
    masks = (background, table, cup, lamp)
    rl, areas = rles(*masks), np.array([m.sum() for m in masks])
    assert containment_filter(rl, areas, 0.8, "largest", max_area=1.0).tolist() == [0]
    kept = containment_filter(rl, areas, 0.8, "largest", max_area=0.8)
    assert kept.tolist() == [0, 1, 3]         # background kept, table is m*, the cup inside it goes
    assert containment_filter(rl, areas, 0.8, "all-larger", max_area=0.8).tolist() == [0, 1, 3]
    # every mask above the cap: nothing is dropped; m* is always kept
    assert containment_filter(rl[:1], areas[:1], 0.8, "largest", max_area=0.5).tolist() == [0]
    assert ProposalConfig().containment_max_area == 0.8


def test_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="containment"):
        ProposalConfig(containment="biggest")
    with pytest.raises(ValueError, match="containment_max_area"):
        ProposalConfig(containment_max_area=0.0)
    with pytest.raises(ValueError, match="unknown proposal config"):
        ProposalConfig.from_dict({"theta": 0.5})
    assert ProposalConfig.from_dict({"pred_iou_thresh": 0.5}).pred_iou_thresh == 0.5


def test_sam_only_ablation_config_means_no_refinement():
    from dtwinseg.perception.builder import PerceptionConfig

    sam_only = PerceptionConfig.from_yaml("recipes/perception/ablations/sam_only.yaml")
    assert not sam_only.use_granularity and not sam_only.proposals.refine
    no_gran = PerceptionConfig.from_yaml("recipes/perception/ablations/no_granularity.yaml")
    assert not no_gran.use_granularity and no_gran.proposals.refine


# --- on a planted SAM -------------------------------------------------------------------------------

def chain_scene(group_iou=0.97):
    from tests.planted_sam import BlobScene

    # input frame 1024 x 768 (image 256 x 192): a group > object > part chain and a separate blob
    return BlobScene(
        centers=np.array([[300.0, 300.0], [280.0, 300.0], [260.0, 300.0], [800.0, 500.0]]),
        radii=np.array([[200.0, 180.0], [110.0, 100.0], [50.0, 45.0], [120.0, 120.0]]),
        slopes=np.array([20.0, 20.0, 20.0, 20.0]),
        ious=np.array([group_iou, 0.96, 0.95, 0.98]),
    )


@pytest.fixture(scope="module")
def sam():
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    return sam_model_registry["vit_b"](checkpoint=None).eval()


def run_planted(sam, scene, level, **cfg):
    from tests.planted_sam import fixed_encoder, plant

    gen = ProposalGenerator(sam, ProposalConfig(points_per_side=12, **cfg))
    image = np.zeros((192, 256, 3), np.uint8)
    with fixed_encoder(sam, torch.zeros(1, 256, 64, 64)), plant(sam, scene, run_decoder=False):
        raw = gen.generate(image)
        refined = gen.generate(image, level) if level is not None else raw
    return raw, refined


def blob_masks(scene, hw=(192, 256)):
    """The blobs rasterised at image resolution (image px = input px / 4)."""
    ys, xs = np.mgrid[0:hw[0], 0:hw[1]] + 0.5
    c, r = scene.centers / 4, scene.radii / 4
    return np.stack([(((xs - c[k, 0]) / r[k, 0]) ** 2 + ((ys - c[k, 1]) / r[k, 1]) ** 2) < 1 for k in range(len(c))])


def best_match(masks, target):
    inter = (masks & target).reshape(len(masks), -1).sum(1)
    union = (masks | target).reshape(len(masks), -1).sum(1)
    return (inter / np.maximum(union, 1)).max()


def test_part_level_keeps_nested_parts_but_no_duplicates(sam):
    scene = chain_scene()
    # box NMS off, so the grid's near-duplicates reach tau, which must drop them
    raw, part = run_planted(sam, scene, level=2, box_nms_thresh=1.0)
    assert len(raw) > 20 and len(part) == 4
    masks = part.masks()
    for blob in blob_masks(scene):
        assert best_match(masks, blob) > 0.9
    assert pairwise_iou(part.rles)[~np.eye(len(part), dtype=bool)].max() <= 0.7


def test_refine_off_is_sam_everything_mode(sam):
    raw, same = run_planted(sam, chain_scene(), level=1, refine=False)
    assert same.rles == raw.rles and "refine_s" not in same.timings


def test_object_level_reprompts_to_largest_and_drops_contained(sam):
    scene = chain_scene()
    _, obj = run_planted(sam, scene, level=1)
    masks = obj.masks()
    blobs = blob_masks(scene)
    # centroids of part/object re-prompt to the largest mask of their chain: the group; the separate
    # blob survives the containment test against the largest mask
    assert len(obj) == 2
    assert best_match(masks, blobs[0]) > 0.9 and best_match(masks, blobs[3]) > 0.9
    assert obj.timings["refined"] == 2


def test_theta_applies_to_reprompted_masks(sam):
    """The group's predicted IoU (0.85) is below theta: re-prompting must pick the largest mask that
    passes theta (the object), never the group."""
    scene = chain_scene(group_iou=0.85)
    _, obj = run_planted(sam, scene, level=1)
    blobs = blob_masks(scene)
    assert (obj.predicted_iou > 0.88).all()
    assert best_match(obj.masks(), blobs[0]) < 0.7 and best_match(obj.masks(), blobs[1]) > 0.9


def test_reprompt_without_a_passing_mask_keeps_the_original(sam):
    from tests.planted_sam import fixed_encoder, plant

    scene = chain_scene()
    gen = ProposalGenerator(sam, ProposalConfig(points_per_side=12))
    image = np.zeros((192, 256, 3), np.uint8)
    with fixed_encoder(sam, torch.zeros(1, 256, 64, 64)), plant(sam, scene, run_decoder=False):
        props = gen.generate(image)
        # (5, 5) px lies in no blob: all its masks have predicted IoU 0.2; the first is the fallback's
        points = np.array([[5.0, 5.0], [props.centroids[0, 0], props.centroids[0, 1]]], np.float32)
        out = gen.reprompt_largest(points, fallback=props.select([0, 1]))
    assert len(out) == 2
    assert out.rles[0] == props.rles[0] and out.predicted_iou[1] > 0.88


def test_object_level_without_dedup_keeps_repeats_only_outside_the_largest(sam):
    scene = chain_scene()
    _, obj = run_planted(sam, scene, level=0, object_dedup=False)
    # every group-chain proposal re-prompts to the group (the largest) and is then contained in it,
    # except the largest itself; the separate blob's proposals all survive
    blobs = blob_masks(scene)
    ious_sep = [best_match(m[None], blobs[3]) for m in obj.masks()]
    assert sum(i > 0.9 for i in ious_sep) == len(obj) - 1
