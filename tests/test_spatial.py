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
    PAPER_SPATIAL,
    RIGHT,
    SURROUNDING,
    SpatialConfig,
    degradation_ladder,
    pairwise_relations,
    query_landmarks,
    related_ids,
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


PAPER = SpatialConfig(**PAPER_SPATIAL)


def test_template_and_json_d_format():
    h, w = 50, 80
    twin = DigitalTwin.from_masks("i", np.stack([box(h, w, 0, 10, 0, 10), box(h, w, 0, 10, 60, 80)]),
                                  semantics=["a cup", "a tree"])
    texts = spatial_texts(twin, PAPER)
    assert texts[0] == "box [0, 0, 9, 9], area 2.5% of the image; left of 1"
    d = twin_json_dict(twin, PAPER)
    assert list(d) == ["0", "1"]
    assert d["1"] == {"spatial": "box [60, 0, 79, 9], area 5.0% of the image; right of 0", "semantic": "a tree"}
    assert json.loads(twin_json(twin, PAPER)) == d


def test_compact_layout_one_line_per_object():
    """The default: "<S_i>; box x0 y0 x1 y1 (% of width / height); area (% with fewer decimals); relations
    grouped by word", one object per line, valid JSON."""
    h, w = 50, 80
    twin = DigitalTwin.from_masks("i", np.stack([box(h, w, 0, 10, 0, 10), box(h, w, 0, 10, 60, 80),
                                                 box(h, w, 2, 5, 2, 5)]), semantics=["a cup", "a tree", ""])
    text = twin_json(twin)
    assert text.count("\n") == 2 and json.loads(text) == twin_json_dict(twin)
    d = json.loads(text)
    assert d["0"] == "a cup; box 0 0 11 18; area 2; surrounding 2; left of 1"  # 2.5%: whole percent (half to even)
    assert d["1"] == "a tree; box 76 0 100 18; area 5; right of 0 2"
    assert d["2"] == "box 3 4 5 8; area 0.2; inside 0; left of 1"  # the container first; no semantic: no prefix
    assert SpatialConfig().number_format == "percent" and PAPER.number_format == "pixels"


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
    texts = spatial_texts(twin, SpatialConfig(layout="paper", max_relations=k, landmarks=0))
    for t in texts.values():
        n_rel = 0 if ";" not in t else len(t.split(";", 1)[1].split(","))
        assert n_rel == k
    assert all(len(v) == k for v in related_ids(twin, SpatialConfig(max_relations=k, landmarks=0)).values())
    all_pairs = spatial_texts(twin, SpatialConfig(layout="paper", max_relations=-1))
    assert all(len(t.split(";", 1)[1].split(",")) == 11 for t in all_pairs.values())


def test_nearest_relations_come_first():
    h, w = 100, 300
    masks = np.stack([box(h, w, 40, 60, 0, 20), box(h, w, 40, 60, 30, 50), box(h, w, 40, 60, 250, 270)])
    twin = DigitalTwin.from_masks("i", masks)
    t = spatial_texts(twin, SpatialConfig(layout="paper", max_relations=1))
    assert t[0].endswith("left of 1")
    assert t[2].endswith("right of 1")
    assert spatial_texts(twin, SpatialConfig(max_relations=1))[2].endswith("right of 1")


def test_query_landmarks_are_related_from_every_object():
    """The objects whose description shares the most words with the query (the largest of each word set)
    are related to every object, however far: what a relational query compares against."""
    twin = scattered_squares(seed=3, n=20)
    for k, o in enumerate(twin.objects):
        o.semantic = ["a blue square", "a red star", "a small red star", "a green circle"][k % 4]
    query = "the star left of the blue square"
    marks = query_landmarks(twin, query, 2)
    blue = [k for k, o in enumerate(twin.objects) if o.semantic == "a blue square"]
    stars = [k for k, o in enumerate(twin.objects) if "star" in o.semantic]
    largest = lambda group: max(group, key=lambda k: (twin.objects[k].area, -k))  # noqa: E731
    # {blue, square} shares two words: first; then the smaller of the one-word groups ({star}: 10 objects)
    assert marks == [largest(blue), largest(stars)]
    named = related_ids(twin, SpatialConfig(max_relations=1), query)
    nearest = related_ids(twin, SpatialConfig(max_relations=1, landmarks=0), query)
    for i, js in named.items():
        assert js[0] == nearest[i][0] and set(js) == set(nearest[i]) | {twin.ids[m] for m in marks} - {i}
    assert related_ids(twin, SpatialConfig(max_relations=1), "something to drink from") == \
        related_ids(twin, SpatialConfig(max_relations=1, landmarks=0), query)
    assert query_landmarks(twin, query, 0) == [] and query_landmarks(twin, None, 2) == []


def test_degradation_ladder_shrinks_in_the_stated_order():
    """Relations first (the farthest first: max_relations halves, then landmarks, then the last relation),
    then numbers (pixels -> percent -> centre); each rung renders no longer than the one before."""
    rungs = degradation_ladder(SpatialConfig())
    assert [(r.max_relations, r.landmarks, r.number_format) for r in rungs] == [
        (2, 2, "percent"), (1, 2, "percent"), (1, 1, "percent"), (1, 0, "percent"), (0, 0, "percent"),
        (0, 0, "centre")]
    paper = degradation_ladder(PAPER)
    assert paper[0] == PAPER and paper[1].max_relations == 16 and paper[-2].number_format == "percent"
    assert paper[-1].number_format == "centre"
    twin = scattered_squares(seed=4, n=40)
    for k, o in enumerate(twin.objects):
        o.semantic = f"a {['red', 'blue'][k % 2]} square"
    for ladder in (rungs, paper):
        lengths = [len(twin_json(twin, r, query="the red square")) for r in ladder]
        assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]


def test_relations_of_a_subset_of_objects_come_from_the_cache():
    """A twin made of some of a cached twin's objects reads its relations from the cache, equal to a fresh
    computation (a pair's relation depends only on its two masks)."""
    from dtwinseg import spatial
    from dtwinseg.spatial import twin_relations

    twin = scattered_squares(seed=5, n=15)
    full = twin_relations(twin)
    sub = DigitalTwin(twin.image_id, twin.height, twin.width, twin.granularity, twin.objects[3:11])
    got = twin_relations(sub)
    spatial._cache.clear()
    fresh = twin_relations(sub)
    assert np.array_equal(got.codes, fresh.codes) and np.array_equal(got.next_to, fresh.next_to)
    assert np.allclose(got.distance, fresh.distance)
    assert np.array_equal(full.codes[3:11, 3:11], got.codes)


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


def test_paper_option_relates_every_pair_as_eq5():
    """Paper eq. 5: T_i = F_spatial(b_i, A_i, {R_ij}_{j != i}) -- every other object, with the paper option."""
    twin = scattered_squares(seed=1, n=9)
    assert PAPER.all_pairs and not SpatialConfig().all_pairs
    texts = spatial_texts(twin, PAPER)
    assert texts == spatial_texts(twin, SpatialConfig(layout="paper", max_relations="all"))
    assert texts == spatial_texts(twin, SpatialConfig(layout="paper", max_relations=-1))
    for i, t in texts.items():
        named = sorted(int(p.rsplit(" ", 1)[1]) for p in t.split(";", 1)[1].split(","))
        assert named == [j for j in range(9) if j != i]
    capped = spatial_texts(twin, SpatialConfig(layout="paper", max_relations=3))
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
