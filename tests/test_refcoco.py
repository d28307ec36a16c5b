"""RefCOCO-family reader on a refs pickle + instances.json the tests write."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from dtwinseg.data_builders.refcoco import RefCOCODataset
from dtwinseg.data_builders.registry import open_dataset
from PIL import Image

from dtwinseg.io import DataError
from dtwinseg.twin import decode_rle, encode_rle

H, W = 20, 30


def poly_rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_refer(root: Path, dataset: str = "refcoco", split_by: str = "unc", refs: list | None = None,
                anns: list | None = None) -> Path:
    d = root / dataset
    d.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    for iid in (1, 2):
        Image.new("RGB", (W, H)).save(root / "images" / f"COCO_train2014_{iid:012d}.jpg")
    crowd = np.zeros((H, W), bool)
    crowd[15:18, 20:29] = True
    anns = anns if anns is not None else [
        # two overlapping polygons in one annotation: the overlap sums to 2 in the reference
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": [poly_rect(2, 2, 10, 8), poly_rect(8, 2, 14, 8)]},
        {"id": 11, "image_id": 1, "category_id": 2, "iscrowd": 0,
         "segmentation": [poly_rect(-5, 12, 4, 30)]},  # partly outside: clipped
        {"id": 12, "image_id": 1, "category_id": 2, "iscrowd": 1, "segmentation": encode_rle(crowd)},
        {"id": 20, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": []},  # empty ground truth
    ]
    inst = {"images": [{"id": 1, "height": H, "width": W, "file_name": "COCO_train2014_000000000001.jpg"},
                       {"id": 2, "height": H, "width": W}],  # no file_name: the COCO pattern is used
            "annotations": anns,
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]}
    (d / "instances.json").write_text(json.dumps(inst))
    refs = refs if refs is not None else [
        {"ref_id": 100, "ann_id": 10, "image_id": 1, "category_id": 1, "split": "val",
         "sentences": [{"sent_id": 1000, "sent": "  The Man on the LEFT ", "tokens": []},
                       {"sent_id": 1001, "sent": "guy in red", "tokens": []}]},
        {"ref_id": 101, "ann_id": 11, "image_id": 1, "category_id": 2, "split": "testA",
         "sentences": [{"sent_id": 1002, "sent": "dog", "tokens": []}]},
        {"ref_id": 102, "ann_id": 12, "image_id": 1, "category_id": 2, "split": "val",
         "sentences": [{"sent_id": 1003, "sent": "crowd", "tokens": []}]},
        {"ref_id": 103, "ann_id": 20, "image_id": 2, "category_id": 1, "split": "val",
         "sentences": [{"sent_id": 1004, "sent": "nobody", "tokens": []}]},
    ]
    with open(d / f"refs({split_by}).p", "wb") as f:
        pickle.dump(refs, f)
    return root


def test_samples_per_sentence_with_reference_masks(tmp_path: Path):
    ds = RefCOCODataset(write_refer(tmp_path), "val")
    assert len(ds) == 4 and ds.skipped == []
    s = {x.id: x for x in ds}
    assert set(s) == {"100_1000", "100_1001", "102_1003", "103_1004"}
    man = s["100_1000"]
    assert man.query == "the man on the left" and not man.is_sentence and man.split == "val"
    assert man.extra["sentence"] == "  The Man on the LEFT " and man.extra["ref_id"] == 100
    assert man.image_path.endswith("images/COCO_train2014_000000000001.jpg")
    # union of both rectangles, minus the strip both cover (summed to 2 by the reference)
    both = np.zeros((H, W), np.int64)
    for x0, x1 in ((2, 10), (8, 14)):
        one = np.zeros((H, W), np.uint8)
        one[2:8, x0:x1] = 1  # pycocotools rasterises [x0, x1) x [y0, y1) for integer rectangles
        both += one
    assert np.array_equal(man.gt_mask, (both == 1).astype(np.uint8))
    assert man.gt_mask[4, 9] == 0 and man.gt_mask[4, 3] == 1 and man.gt_mask[4, 12] == 1
    crowd = s["102_1003"].gt_mask
    assert crowd[15:18, 20:29].all() and crowd.sum() == 27
    assert not s["103_1004"].gt_mask.any()
    assert s["103_1004"].image_path.endswith("COCO_train2014_000000000002.jpg")


def test_instances_are_all_annotations_of_the_image(tmp_path: Path):
    ds = RefCOCODataset(write_refer(tmp_path), "val")
    man = next(x for x in ds if x.id == "100_1000")
    assert [(o["semantic"], o["level"], o["parent"], o["ann_id"]) for o in man.instances] == [
        ("person", 1, None, 10), ("dog", 1, None, 11), ("dog", 1, None, 12)]
    merged = decode_rle(man.instances[0]["rle"])
    assert merged[4, 9] and merged[2:8, 2:14].all()  # union here, not the reference's sum
    clipped = decode_rle(man.instances[1]["rle"])
    assert clipped.shape == (H, W) and clipped[12:20, 0:4].all() and clipped.sum() == 32
    json.dumps(man.instances)  # JSON-safe


def test_registry_names_and_splits(tmp_path: Path):
    write_refer(tmp_path)
    write_refer(tmp_path, "refcocog", "umd")
    write_refer(tmp_path, "refcoco+", "unc")
    assert len(open_dataset(f"refcoco:{tmp_path}:testA")) == 1
    assert open_dataset(f"refcocog:{tmp_path}:val").name == "refcocog"
    assert len(open_dataset(f"refcoco+:{tmp_path}:val")) == 4
    with pytest.raises(DataError, match="available: \\['testA', 'val'\\]"):
        open_dataset(f"refcoco:{tmp_path}:testB")
    with pytest.raises(DataError, match="refs file not found"):
        write_refer(tmp_path / "g", "refcocog", "unc")
        RefCOCODataset(tmp_path / "g", "val", dataset="refcocog")


def test_truncated_pickle_and_instances(tmp_path: Path):
    root = write_refer(tmp_path)
    p = root / "refcoco" / "refs(unc).p"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(DataError, match="unreadable pickle") as err:
        RefCOCODataset(root, "val")
    assert err.value.path.endswith("refs(unc).p")
    write_refer(root)
    inst = root / "refcoco" / "instances.json"
    inst.write_text(inst.read_text()[:-30])
    with pytest.raises(DataError, match="invalid JSON") as err:
        RefCOCODataset(root, "val")
    assert err.value.path.endswith("instances.json")


def test_malformed_refs_and_polygons_strict_and_lenient(tmp_path: Path):
    refs = [
        {"ref_id": 1, "ann_id": 10, "image_id": 1, "split": "val", "sentences": [{"sent_id": 5, "sent": "ok"}]},
        {"ref_id": 2, "ann_id": 11, "image_id": 1, "split": "val", "sentences": [{"sent_id": 6, "sent": "bad poly"}]},
        {"ref_id": 3, "ann_id": 99, "image_id": 1, "split": "val", "sentences": [{"sent_id": 7, "sent": "no ann"}]},
        {"ref_id": 4, "ann_id": 10, "image_id": 1, "split": "val"},
    ]
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "segmentation": [poly_rect(1, 1, 5, 5)]},
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, 3]]}]
    root = write_refer(tmp_path, refs=refs, anns=anns)
    with pytest.raises(DataError, match="bad polygon") as err:
        RefCOCODataset(root, "val")
    assert err.value.path.endswith("instances.json") and err.value.field == "annotations[id=11].segmentation[0]"
    lenient = RefCOCODataset(root, "val", strict=False)
    assert len(lenient) == 1
    reasons = [r for _, r in lenient.skipped]
    assert len(reasons) == 3
    assert any("no annotation with id 99" in r for r in reasons)
    assert any("refs[3].sentences" in r for r in reasons)
    # the bad polygon of another annotation on the same image also spoils the instance list
    assert list(lenient) == [] and "bad polygon" in lenient.skipped[-1][1]


def test_missing_image_is_skipped_when_lenient(tmp_path: Path):
    root = write_refer(tmp_path)
    (root / "images" / "COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(DataError, match="image file not found"):
        list(RefCOCODataset(root, "val"))
    assert len(list(RefCOCODataset(root, "val", strict=False))) == 3
