"""LLM-Seg40K reader on split files, RLE masks and PNG masks the tests write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dtwinseg.data_builders.llmseg import LLMSegDataset
from dtwinseg.data_builders.registry import open_dataset
from PIL import Image

from dtwinseg.io import DataError
from dtwinseg.twin import encode_rle

H, W = 24, 32


def blob(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "images" / "coco").mkdir(parents=True)
    (tmp_path / "images" / "ego_objects").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (W, H)).save(tmp_path / "images" / "coco" / "000000000001.jpg")
    Image.new("RGB", (W, H)).save(tmp_path / "images" / "ego_objects" / "ego1.jpg")
    # PNG mask with 0/255 values (> 0 is foreground), referenced relative to root
    Image.fromarray(blob(2, 10, 3, 9).astype(np.uint8) * 255).save(tmp_path / "masks" / "ego1_0.png")
    data = {
        "000000000001.jpg": {"from_dataset": "coco", "qa_pairs": [
            {"question": "Which object could keep you dry?", "answer": "the umbrella",
             "rle_seg": encode_rle(blob(5, 12, 4, 20)), "segmentation_path": "/nowhere/a.png"},
            {"question": "What is empty here?", "answer": "nothing", "rle_seg": encode_rle(blob(0, 0, 0, 0))},
        ]},
        "ego1.jpg": {"from_dataset": "ego_objects", "qa_pairs": [
            # absolute path from another machine: found under <root>/masks/ by file name
            {"question": "What do you drink from?", "answer": "the mug",
             "segmentation_path": "/cluster/data/llmseg/masks/ego1_0.png"},
        ]},
    }
    (tmp_path / "validation.json").write_text(json.dumps(data))
    return tmp_path


def test_reads_rle_and_png_masks(root: Path):
    ds = LLMSegDataset(root, "val")
    assert len(ds) == 3 and ds.skipped == []
    s = {x.id: x for x in ds}
    assert set(s) == {"000000000001.jpg#0", "000000000001.jpg#1", "ego1.jpg#0"}
    a = s["000000000001.jpg#0"]
    assert np.array_equal(a.gt_mask, blob(5, 12, 4, 20).astype(np.uint8)) and a.gt_mask.dtype == np.uint8
    assert a.is_sentence and a.query == "Which object could keep you dry?" and a.split == "val"
    assert a.extra == {"answer": "the umbrella", "from_dataset": "coco"}
    assert a.image_path.endswith("images/coco/000000000001.jpg")
    assert not s["000000000001.jpg#1"].gt_mask.any()
    assert np.array_equal(s["ego1.jpg#0"].gt_mask, blob(2, 10, 3, 9).astype(np.uint8))
    assert s["ego1.jpg#0"].is_sentence
    assert [x.id for x in open_dataset(f"llmseg40k:{root}:validation")] == [x.id for x in ds]


def test_unknown_split_and_missing_file(root: Path):
    with pytest.raises(DataError, match="unknown LLM-Seg40K split"):
        LLMSegDataset(root, "dev")
    with pytest.raises(DataError, match="split file not found"):
        LLMSegDataset(root, "test")


def test_truncated_split_file(root: Path):
    (root / "train.json").write_text((root / "validation.json").read_text()[:150])
    with pytest.raises(DataError, match="invalid JSON") as err:
        LLMSegDataset(root, "train")
    assert err.value.path.endswith("train.json")
    lenient = LLMSegDataset(root, "train", strict=False)
    assert len(lenient) == 0 and lenient.skipped[0][0].endswith("train.json")


def test_malformed_entries_strict_and_lenient(root: Path):
    data = json.loads((root / "validation.json").read_text())
    data["000000000001.jpg"]["qa_pairs"].append({"answer": "no question", "rle_seg": encode_rle(blob(0, 1, 0, 1))})
    data["ego1.jpg"]["qa_pairs"].append({"question": "mask?"})
    data["missing.jpg"] = {"from_dataset": "coco", "qa_pairs": []}
    (root / "test.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        LLMSegDataset(root, "test")
    assert err.value.field == "000000000001.jpg.qa_pairs[2].question" and err.value.path.endswith("test.json")
    lenient = LLMSegDataset(root, "test", strict=False)
    assert len(lenient) == 3 and len(list(lenient)) == 3
    reasons = [r for _, r in lenient.skipped]
    assert len(reasons) == 3
    assert any("rle_seg' or 'segmentation_path" in r for r in reasons)
    assert any("missing.jpg" in r and "image not found" in r for r in reasons)


def test_mask_errors_found_when_read(root: Path):
    data = json.loads((root / "validation.json").read_text())
    bad = blob(0, 2, 0, 2)
    data["000000000001.jpg"]["qa_pairs"][0]["rle_seg"] = encode_rle(np.pad(bad, ((0, 2), (0, 0))))  # (H + 2) x W
    data["ego1.jpg"]["qa_pairs"][0]["segmentation_path"] = "masks/absent.png"
    (root / "train.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="does not match image size"):
        list(LLMSegDataset(root, "train"))
    lenient = LLMSegDataset(root, "train", strict=False)
    assert [s.id for s in lenient] == ["000000000001.jpg#1"]
    assert len(lenient.skipped) == 2 and any("mask file not found" in r for _, r in lenient.skipped)
