"""ReasonSeg reader on folders the tests write in the exact on-disk format (jpg + LabelMe-like JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dtwinseg.data_builders.reasonseg import ReasonSegDataset, reasonseg_subset
from dtwinseg.data_builders.registry import open_dataset
from PIL import Image

from dtwinseg.io import DataError
from dtwinseg.twin import encode_rle

H, W = 30, 40


def rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def shape(label: str, points: list, shape_type: str = "polygon") -> dict:
    return {"label": label, "shape_type": shape_type, "points": points, "group_id": None, "flags": {}}


def write_item(folder: Path, stem: str, anno: dict | str | bytes, size: tuple[int, int] = (H, W)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), (120, 80, 40)).save(folder / f"{stem}.jpg")
    target = folder / f"{stem}.json"
    if isinstance(anno, bytes):
        target.write_bytes(anno)
    elif isinstance(anno, str):
        target.write_text(anno, encoding="utf-8")
    else:
        target.write_text(json.dumps(anno), encoding="utf-8")


def anno(shapes: list, text: list | str = "the thing", is_sentence: bool = False, **kw) -> dict:
    return {"text": [text] if isinstance(text, str) else text, "is_sentence": is_sentence, "shapes": shapes,
            "imagePath": "x.jpg", **kw}


@pytest.fixture
def val_dir(tmp_path: Path) -> Path:
    d = tmp_path / "val"
    # target with an ignore hole, and a `flag` shape covering the whole image (must be skipped)
    write_item(d, "a_ignore", anno([shape("target", rect(2, 2, 20, 15)), shape("ignore", rect(5, 5, 8, 8)),
                                    shape("flag", rect(0, 0, 39, 29))],
                                   text=["What can hold water?", "a rephrasing"], is_sentence=True,
                                   dimension="function", granularity=1))
    # overlapping: the small target listed first, a larger ignore around it; the smaller wins
    write_item(d, "b_overlap", anno([shape("target", rect(10, 10, 12, 12)), shape("Ignore_region", rect(5, 5, 30, 25))]))
    write_item(d, "c_empty", anno([]))
    # cp1252: a right single quote (0x92) is not valid UTF-8
    raw = json.dumps(anno([shape("target", rect(0, 0, 3, 3))], text=["the cook’s café"]), ensure_ascii=False)
    write_item(d, "d_cp1252", raw.encode("cp1252"))
    # partly outside the image (clipped), fully outside (draws nothing), float points (truncated)
    write_item(d, "e_outside", anno([shape("target", rect(-5, -5, 4.9, 3.99)),
                                     shape("target", rect(100, 100, 120, 120)),
                                     shape("target", [[30.7, 20.2], [35.9, 20.2], [35.9, 24.8], [30.7, 24.8]])]))
    # `text` as a plain string; a non-jpg image alongside is not read
    write_item(d, "f_strtext", {"text": "a cat", "is_sentence": False, "shapes": [shape("cat", rect(1, 1, 2, 2))]})
    Image.new("RGB", (W, H)).save(d / "g_ignored.png")
    (d / "g_ignored.json").write_text(json.dumps(anno([])))
    return tmp_path


def by_id(ds) -> dict:
    return {s.id: s for s in ds}


def test_reads_every_jpg_sorted_with_exact_masks(val_dir: Path):
    ds = ReasonSegDataset(val_dir, "val")
    assert len(ds) == 6 and [Path(f).name for f, _ in ds.skipped] == ["g_ignored.json"]  # counted, not lost
    samples = list(ds)
    assert [s.id for s in samples] == sorted(s.id for s in samples)
    s = by_id(samples)

    a = s["a_ignore"]
    want = np.zeros((H, W), np.uint8)
    want[2:16, 2:21] = 1
    want[5:9, 5:9] = 255
    assert np.array_equal(a.gt_mask, want)  # the flag shape painted nothing
    assert a.gt_mask.dtype == np.uint8 and a.gt_mask.shape == (H, W)
    assert (a.query, a.is_sentence, a.dimension, a.granularity) == ("What can hold water?", True, "function", 1)
    assert a.extra["texts"] == ["What can hold water?", "a rephrasing"]
    assert a.image_path.endswith("a_ignore.jpg") and a.split == "val" and a.instances is None

    b = s["b_overlap"].gt_mask
    assert b[11, 11] == 1 and b[10:13, 10:13].min() == 1 and b[6, 6] == 255
    assert set(np.unique(b)) == {0, 1, 255}

    assert not s["c_empty"].gt_mask.any()
    assert s["d_cp1252"].query == "the cook’s café"

    e = s["e_outside"].gt_mask
    want = np.zeros((H, W), np.uint8)
    want[0:4, 0:5] = 1  # (-5,-5)-(4.9,3.99) truncates to (-5,-5)-(4,3), clipped at 0
    want[20:25, 30:36] = 1  # (30.7,20.2)-(35.9,24.8) truncates to (30,20)-(35,24)
    assert np.array_equal(e, want)

    assert s["f_strtext"].query == "a cat" and s["f_strtext"].extra["texts"] == ["a cat"]


def test_subset_and_registry_and_nested_layout(tmp_path: Path, val_dir: Path):
    ds = open_dataset(f"reasonseg:{val_dir}:val")
    assert isinstance(ds, ReasonSegDataset)
    subsets = {s.id: reasonseg_subset(s) for s in ds}
    assert subsets["a_ignore"] == "long" and subsets["b_overlap"] == "short"
    nested = tmp_path / "nested"
    write_item(nested / "ReasonSeg" / "test", "x", anno([]))
    assert [s.id for s in ReasonSegDataset(nested, "test")] == ["x"]
    assert ds[1].id == "b_overlap"


def test_missing_split_names_the_folder(tmp_path: Path):
    with pytest.raises(DataError, match="split"):
        ReasonSegDataset(tmp_path, "train")


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        ('{"text": ["q"], "is_sentence": true, "shapes": [{"label": "t", "po', None, "invalid JSON"),
        ({"text": ["q"], "shapes": []}, "is_sentence", "missing"),
        ({"is_sentence": True, "shapes": []}, "text", "missing"),
        ({"text": [], "is_sentence": True, "shapes": []}, "text", "empty"),
        ({"text": ["q"], "is_sentence": True, "shapes": [{"label": "t", "points": [[1]]}]}, "shapes[0].points", "pairs"),
        ({"text": ["q"], "is_sentence": True, "shapes": [{"label": "t", "points": []}]}, "shapes[0].points", "non-empty"),
        ({"text": ["q"], "is_sentence": True, "shapes": [{"points": [[1, 2]]}]}, "shapes[0].label", "missing"),
        ({"text": ["q"], "is_sentence": "yes", "shapes": []}, "is_sentence", "expected"),
        ({"text": ["q"], "is_sentence": True, "shapes": [], "granularity": 5}, "granularity", "0, 1 or 2"),
        ([1, 2], None, "JSON object"),
    ],
)
def test_malformed_file_strict_and_lenient(tmp_path: Path, content, field, message):
    d = tmp_path / "train"
    write_item(d, "good", anno([shape("t", rect(1, 1, 3, 3))]))
    write_item(d, "zbad", content if isinstance(content, str) else content)
    with pytest.raises(DataError, match=message) as err:
        ReasonSegDataset(tmp_path, "train")
    assert err.value.path.endswith("zbad.json")
    assert err.value.field == field
    lenient = ReasonSegDataset(tmp_path, "train", strict=False)
    assert [s.id for s in lenient] == ["good"]
    assert len(lenient.skipped) == 1 and lenient.skipped[0][0].endswith("zbad.json")
    assert message in lenient.skipped[0][1]


def test_missing_annotation_and_broken_image(tmp_path: Path):
    d = tmp_path / "val"
    d.mkdir()
    Image.new("RGB", (W, H)).save(d / "lonely.jpg")
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    (d / "broken.json").write_text(json.dumps(anno([])))
    ds = ReasonSegDataset(tmp_path, "val", strict=False)
    assert len(ds) == 0
    reasons = " ".join(r for _, r in ds.skipped)
    assert "annotation missing" in reasons and "unreadable image" in reasons


def test_instance_sidecar(tmp_path: Path):
    d = tmp_path / "test"
    write_item(d, "s", anno([shape("t", rect(1, 1, 5, 5))], dimension="part", granularity=2))
    m = np.zeros((H, W), bool)
    m[1:6, 1:6] = True
    objects = [{"rle": encode_rle(m), "semantic": "a red square", "level": 1, "parent": None, "colour": "red"},
               {"rle": encode_rle(m), "semantic": "its corner", "level": 2, "parent": 0}]
    (d / "s.instances.json").write_text(json.dumps({"objects": objects, "targets": [1]}))
    sample = next(iter(ReasonSegDataset(tmp_path, "test")))
    assert sample.instances == objects and sample.extra["instance_targets"] == [1]
    assert sample.dimension == "part" and sample.granularity == 2

    objects[1]["rle"]["size"] = [H + 1, W]
    (d / "s.instances.json").write_text(json.dumps({"objects": objects}))
    with pytest.raises(DataError) as err:
        ReasonSegDataset(tmp_path, "test")
    assert err.value.path.endswith("s.instances.json") and err.value.field == "objects[1].rle.size"
    objects[1]["rle"]["size"] = [H, W]
    objects[1]["level"] = 3
    (d / "s.instances.json").write_text(json.dumps({"objects": objects}))
    with pytest.raises(DataError, match="objects\\[1\\].level"):
        ReasonSegDataset(tmp_path, "test")
