"""DigitalTwin / TwinObject: RLE round trips, lossless JSON, schema errors naming file and field."""

import json

import numpy as np
import pytest

from dtwinseg.io import DataError
from dtwinseg.twin import SCHEMA_VERSION, DigitalTwin, TwinObject, decode_rle, encode_rle


def _masks(h=40, w=60):
    a = np.zeros((h, w), bool)
    a[5:15, 10:30] = True
    b = np.zeros((h, w), bool)
    b[20:38, 40:58] = True
    return np.stack([a, b])


def test_rle_round_trip_and_box_area():
    m = _masks()
    twin = DigitalTwin.from_masks("img", m, semantics=["a red cup", "a chair"], predicted_ious=[0.9, 0.95],
                                  granularity=2, query="q", provenance={"source": "oracle"})
    assert twin.objects[0].bbox == (10.0, 5.0, 29.0, 14.0)
    assert twin.objects[0].area == pytest.approx(100 * 200 / (40 * 60))
    assert twin.objects[1].predicted_iou == pytest.approx(0.95)
    np.testing.assert_array_equal(twin.masks(), m)
    np.testing.assert_array_equal(twin.union([0, 1]), m[0] | m[1])
    assert not twin.union([]).any()
    assert decode_rle(encode_rle(m[1])).sum() == m[1].sum()


def test_json_round_trip_is_lossless(tmp_path):
    twin = DigitalTwin.from_masks("img/1", _masks(), semantics=["ünïcode cup", ""], granularity=0,
                                  provenance={"config_hash": "abc", "theta": 0.88})
    p = twin.save(tmp_path / "t.json")
    back = DigitalTwin.load(p)
    assert back == twin
    assert back.to_dict() == twin.to_dict()
    assert json.loads(p.read_text())["schema_version"] == SCHEMA_VERSION
    assert not list(tmp_path.glob("*.tmp"))


def test_schema_errors_name_file_and_field(tmp_path):
    d = DigitalTwin.from_masks("x", _masks()).to_dict()
    bad = dict(d, schema_version=99)
    (tmp_path / "v.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"v\.json: field 'schema_version'"):
        DigitalTwin.load(tmp_path / "v.json")
    missing = json.loads(json.dumps(d))
    del missing["objects"][1]["semantic"]
    (tmp_path / "m.json").write_text(json.dumps(missing))
    with pytest.raises(DataError, match=r"m\.json: field 'objects\[1\]\.semantic': missing"):
        DigitalTwin.load(tmp_path / "m.json")
    no_w = {k: v for k, v in d.items() if k != "width"}
    with pytest.raises(DataError, match="'width'"):
        DigitalTwin.from_dict(no_w)
    (tmp_path / "trunc.json").write_text(json.dumps(d)[:50])
    with pytest.raises(DataError, match="trunc.json.*invalid JSON"):
        DigitalTwin.load(tmp_path / "trunc.json")
    wrong_size = json.loads(json.dumps(d))
    wrong_size["objects"][0]["rle"]["size"] = [1, 1]
    with pytest.raises(DataError, match=r"objects\[0\]\.rle\.size"):
        DigitalTwin.from_dict(wrong_size)


def test_from_mask_single_object():
    m = np.zeros((10, 10), bool)
    o = TwinObject.from_mask(7, m)
    assert o.bbox == (0.0, 0.0, 0.0, 0.0) and o.area == 0.0 and o.id == 7
