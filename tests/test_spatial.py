"""Spatial relations and the text T_i / JSON(D): relation words on constructed masks, pooling, caps, eq. 5."""

import json

import numpy as np
import pytest

from dtwinseg.spatial import (
    ABOVE,
    BELOW,
    INSIDE,
    LEFT,
    OVERLAPPING,
    RIGHT,
    SURROUNDING,
    SpatialConfig,
    pairwise_relations,
    spatial_texts,
    twin_json,
    twin_json_dict,
)
from dtwinseg.twin import DigitalTwin


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_relation_words_on_constructed_masks():
    h, w = 100, 100
    big = box(h, w, 10, 90, 10, 60)      # 0
    small = box(h, w, 30, 40, 20, 30)    # 1: inside 0
    right = box(h, w, 40, 60, 80, 95)    # 2: right of 0
    below = box(h, w, 91, 99, 20, 40)    # 3: below 0, next to it (gap 1 px)
    over = box(h, w, 50, 70, 50, 75)     # 4: overlaps 0 partially
    rel = pairwise_relations(np.stack([big, small, right, below, over]), SpatialConfig())
    c = rel.codes
    assert c[1, 0] == INSIDE and c[0, 1] == SURROUNDING
    assert c[0, 2] == LEFT and c[2, 0] == RIGHT
    assert c[3, 0] == BELOW and c[0, 3] == ABOVE
    assert rel.next_to[3, 0] and rel.next_to[0, 3]
    assert not rel.next_to[2, 1]
    assert c[4, 0] == OVERLAPPING and c[0, 4] == OVERLAPPING
    assert (np.diag(c) == -1).all()


def test_nesting_survives_pooling():
    h, w = 1024, 1024
    outer = box(h, w, 100, 900, 100, 900)
    inner = box(h, w, 401, 403, 401, 403)  # 4 pixels, smaller than a pooling cell
    cfg = SpatialConfig(max_pixels=64 * 64)
    rel = pairwise_relations(np.stack([outer, inner]), cfg)
    assert rel.codes[1, 0] == INSIDE and rel.codes[0, 1] == SURROUNDING


def test_template_and_json_d_format():
    h, w = 50, 80
    twin = DigitalTwin.from_masks("i", np.stack([box(h, w, 0, 10, 0, 10), box(h, w, 0, 10, 60, 80)]),
                                  semantics=["a cup", "a tree"])
    texts = spatial_texts(twin)
    assert texts[0] == "box [0, 0, 9, 9], area 2.5% of the image; left of 1"
    d = twin_json_dict(twin)
    assert list(d) == ["0", "1"]
    assert d["1"] == {"spatial": "box [60, 0, 79, 9], area 5.0% of the image; right of 0", "semantic": "a tree"}
    assert json.loads(twin_json(twin)) == d


def scattered_squares(seed: int, n: int) -> DigitalTwin:
    """A twin of n 8 x 8 squares at random places of a 100 x 100 image."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        y, x = rng.integers(0, 90, 2)
        masks.append(box(100, 100, y, y + 8, x, x + 8))
    return DigitalTwin.from_masks("i", np.stack(masks))


@pytest.mark.parametrize("k", [0, 1, 3])
def test_relation_count_is_capped(k):
    twin = scattered_squares(seed=0, n=12)
    texts = spatial_texts(twin, SpatialConfig(max_relations=k))
    for t in texts.values():
        n_rel = 0 if ";" not in t else len(t.split(";", 1)[1].split(","))
        assert n_rel == k
    all_pairs = spatial_texts(twin, SpatialConfig(max_relations=-1))
    assert all(len(t.split(";", 1)[1].split(",")) == 11 for t in all_pairs.values())


def test_nearest_relations_come_first():
    h, w = 100, 300
    masks = np.stack([box(h, w, 40, 60, 0, 20), box(h, w, 40, 60, 30, 50), box(h, w, 40, 60, 250, 270)])
    twin = DigitalTwin.from_masks("i", masks)
    t = spatial_texts(twin, SpatialConfig(max_relations=1))
    assert t[0].endswith("left of 1")
    assert t[2].endswith("right of 1")


def test_pooled_equals_max_pool2d_ceil_mode():
    import torch

    from dtwinseg.spatial import _pooled

    rng = np.random.default_rng(5)
    for h, w in ((64, 64), (61, 77), (33, 100)):
        m = torch.as_tensor(rng.random((3, h, w)) < 0.02)
        k = int(np.ceil(np.sqrt(h * w / 256)))
        want = torch.nn.functional.max_pool2d(m[:, None].float(), k, k, ceil_mode=True)[:, 0] > 0
        assert torch.equal(_pooled(m, 256), want)


def test_projections_equal_float_sums():
    import torch

    from dtwinseg.spatial import _projections

    m = torch.as_tensor(np.random.default_rng(6).random((4, 37, 300)) < 0.9)
    rows, cols = _projections(m)
    assert torch.equal(rows, m.float().sum(2)) and torch.equal(cols, m.float().sum(1))
    assert rows.dtype == torch.float32 and rows.max() > 255  # no uint8 overflow


def test_default_relates_every_pair_as_eq5():
    """Paper eq. 5: T_i = F_spatial(b_i, A_i, {R_ij}_{j != i}) -- every other object, by default."""
    twin = scattered_squares(seed=1, n=9)
    assert SpatialConfig().all_pairs
    texts = spatial_texts(twin)
    assert texts == spatial_texts(twin, SpatialConfig(max_relations="all"))
    assert texts == spatial_texts(twin, SpatialConfig(max_relations=-1))
    for i, t in texts.items():
        named = sorted(int(p.rsplit(" ", 1)[1]) for p in t.split(";", 1)[1].split(","))
        assert named == [j for j in range(9) if j != i]
    capped = spatial_texts(twin, SpatialConfig(max_relations=3))
    assert all(len(capped[i]) < len(texts[i]) for i in texts)


@pytest.mark.parametrize("value, stored", [("all", None), ("ALL", None), (None, None), (-1, None), (0, 0),
                                           (6, 6), ("4", 4)])
def test_max_relations_values(value, stored):
    assert SpatialConfig(max_relations=value).max_relations == stored


@pytest.mark.parametrize("value", ["some", -2, 2.5, True, [3]])
def test_max_relations_rejects_bad_values(value):
    from dtwinseg.io import DataError

    with pytest.raises(DataError, match="max_relations"):
        SpatialConfig(max_relations=value)


def test_reasoning_config_reads_all_from_yaml(tmp_path):
    from dtwinseg.reasoning.config import ReasoningConfig

    p = tmp_path / "r.yaml"
    p.write_text("spatial: {max_relations: all}\n")
    assert ReasoningConfig.from_yaml(p).spatial.all_pairs
    p.write_text("spatial: {max_relations: 6}\n")
    assert ReasoningConfig.from_yaml(p).spatial.max_relations == 6
