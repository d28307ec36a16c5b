"""Eq. 4, S_i = F_VLM(x_img, x_txt, m_i, {m_j}): the semantic request for a mask sees the other masks
(numbered outlines on the whole image, and a text list with box / area / relation), through a real
loopback chat-completions server; ``semantic_context: none`` keeps the per-mask form."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from dtwinseg.perception.builder import (
    CONTEXT_RGB,
    TARGET_RGB,
    PerceptionConfig,
    TwinBuilder,
    context_lines,
    context_views,
    label_point,
)
from dtwinseg.perception.prompts import semantic_messages
from dtwinseg.twin import encode_rle
from tests.perception_helpers import ChatServer

H, W = 60, 90


def box(y0, y1, x0, x1, s=1):
    m = np.zeros((H * s, W * s), dtype=bool)
    m[y0 * s:y1 * s, x0 * s:x1 * s] = True
    return m


def scene(s=1):
    """Three boxes: 0 on the left, 1 in the middle (touching nothing), 2 on the right, far away."""
    masks = np.stack([box(20, 40, 2, 22, s), box(20, 40, 30, 50, s), box(5, 15, 75, 88, s)])
    img = np.full((H * s, W * s, 3), 128, np.uint8)
    img[masks[0]] = (200, 30, 30)
    img[masks[1]] = (30, 200, 30)
    img[masks[2]] = (30, 30, 200)
    return Image.fromarray(img), masks


def test_context_lines_list_other_masks_nearest_first_with_relations():
    _, masks = scene()
    lines = context_lines(masks, [0, 1, 2])
    assert lines[0] == ["1: box [30, 20, 49, 39], area 7.4%, right of region 0",
                        "2: box [75, 5, 87, 14], area 2.4%, right of region 0"]
    assert lines[2][0].startswith("1: ") and lines[2][0].endswith("left of region 2")
    assert all(len(v) == 2 for v in lines)
    assert [len(v) for v in context_lines(masks, [0, 1, 2], max_listed=1)] == [1, 1, 1]
    assert context_lines(masks[:1], [7]) == [[]]


def test_context_views_outline_every_other_mask_and_the_target():
    image, masks = scene()
    views = context_views(image, masks, [0, 1, 2])
    assert len(views) == 3
    for k, (crop, whole) in enumerate(views):
        arr = np.asarray(whole)
        is_target = np.all(arr == TARGET_RGB, axis=-1)
        is_other = np.all(arr == CONTEXT_RGB, axis=-1)
        # the target's outline is red, every other mask's outline has cyan pixels, nothing is cyan
        # inside the target's outline band
        assert is_target[masks[k]].sum() > 0
        for j in range(3):
            if j != k:
                assert is_other[masks[j]].sum() > 0
        assert crop.size[0] <= W and crop.size[1] <= H


def test_label_point_lies_on_the_mask_even_for_a_ring():
    ring = box(10, 50, 10, 80) & ~box(20, 40, 20, 70)
    x, y = label_point(ring)
    assert ring[y, x]


def test_semantic_messages_forms():
    _, per_mask = semantic_messages("the cup", "system")
    assert "outlined in red" in per_mask and "region 3" not in per_mask and "other regions (" not in per_mask
    _, eq4 = semantic_messages("the cup", "system", 3, ["1: box [0, 0, 4, 4], area 1.0%, left of region 3"])
    assert "labelled 3" in eq4 and "region 3" in eq4 and "- 1: box [0, 0, 4, 4]" in eq4
    _, alone = semantic_messages("the cup", "direct", 0, [])
    assert "no other regions" in alone


def decode(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def answer(body):
    """Describe the region by the number the prompt asks about: 'Description: thing <n>'."""
    text = body["messages"][-1]["content"][0]["text"]
    m = re.search(r"Describe region (\d+)", text) or re.search(r"description of\nregion (\d+)", text)
    return f"Observation: a box.\nDescription: thing {m.group(1) if m else 'alone'}"


@pytest.mark.parametrize("context", ["others", "none"])
def test_builder_sends_the_other_masks_to_the_vlm(monkeypatch, context):
    monkeypatch.setenv("DTWINSEG_VLM_API_KEY", "sk-test")
    image, masks = scene(4)  # large enough for outlines to survive JPEG
    instances = [{"rle": encode_rle(m), "semantic": f"gt {k}", "level": 1, "parent": None}
                 for k, m in enumerate(masks)]
    with ChatServer(respond_fn=lambda body: (200, answer(body))) as srv:
        cfg = PerceptionConfig.from_dict({
            "source": "oracle", "use_granularity": False, "semantic_context": context,
            "vlm": {"backend": "openai", "model": "m", "base_url": srv.base_url, "timeout_s": 10,
                    "backoff_s": 0.01}})
        twin = TwinBuilder(cfg).build(image, "the green box", "img0", instances=instances)
    assert twin.provenance["semantic_context"] == context
    assert len(srv.requests) == 3
    if context == "others":
        assert [o.semantic for o in twin.objects] == ["thing 0", "thing 1", "thing 2"]
    else:
        assert [o.semantic for o in twin.objects] == ["thing alone"] * 3
    for body in srv.requests:
        parts = body["messages"][-1]["content"]
        text = parts[0]["text"]
        assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
        whole = decode(parts[2]["image_url"]["url"]).astype(int)
        cyanish = (whole[..., 0] < 90) & (whole[..., 1] > 170) & (whole[..., 2] > 170)
        if context == "others":
            k = int(re.search(r"labelled (\d+)", text).group(1))
            listed = re.findall(r"^- (\d+): box", text, flags=re.MULTILINE)
            assert sorted(int(i) for i in listed) == [j for j in range(3) if j != k]
            assert cyanish.sum() > 20  # the other masks are outlined on the image (JPEG: approximate)
        else:
            assert "labelled" not in text and not re.search(r"^- \d+: box", text, flags=re.MULTILINE)
            assert cyanish.sum() == 0


def test_config_rejects_unknown_context():
    from dtwinseg.io import DataError

    with pytest.raises(DataError, match="semantic_context"):
        PerceptionConfig.from_dict({"source": "oracle", "semantic_context": "neighbours"})
