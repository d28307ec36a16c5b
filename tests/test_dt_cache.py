"""The DT cache: put / get / open from a root, ambiguous roots refused, distinct and safe sample keys."""

import numpy as np
import pytest
from dtwinseg.data_builders.dt_cache import DTCache, sample_key

from dtwinseg.twin import DigitalTwin


def test_put_get_and_open_from_root(tmp_path):
    cfg = {"source": "oracle", "theta": 0.88}
    cache = DTCache.create(tmp_path, cfg)
    twin = DigitalTwin.from_masks("a/b", np.ones((1, 4, 4), bool), semantics=["x"])
    cache.put("a/b", twin)
    assert cache.has("a/b") and not cache.has("a_b")
    again = DTCache.open(tmp_path)
    assert again.get("a/b") == twin and again.get("zzz") is None
    assert again.config == cfg and len(again) == 1
    cache.record_failure("bad", "unreadable image")
    assert [f["id"] for f in again.failures()] == ["bad"]


def test_open_refuses_ambiguous_root(tmp_path):
    DTCache.create(tmp_path, {"a": 1})
    DTCache.create(tmp_path, {"a": 2})
    with pytest.raises(ValueError, match="several perception configs"):
        DTCache.open(tmp_path)
    with pytest.raises(FileNotFoundError):
        DTCache.open(tmp_path / "nope")


def test_sample_keys_are_distinct_and_safe():
    ids = ["a/b", "a__b", "a b", "a%20b", "..", "x:y"]
    keys = [sample_key(i) for i in ids]
    assert all("/" not in k for k in keys)
    assert len(set(keys)) == len(keys)
    assert sample_key("a/b") == "a%2Fb"
