"""Fault tests of hostile names and sizes: labels that would escape --out, 40-character CJK sample ids,
a 5 MB model answer, and file modes under the process umask."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from dtwinseg.data_builders.dt_cache import DTCache, sample_key
from dtwinseg.eval.checkpoints import Checkpoint, parse_checkpoint
from dtwinseg.eval.harness import EvalOptions, evaluate
from dtwinseg.eval.records import MAX_STORED_TEXT, load_records
from test_harness import N, OracleReasoner, build_bench

from dtwinseg.io import DataError, atomic_write_json, bounded_name, check_label, clip_middle
from dtwinseg.parsing import ParseResult
from dtwinseg.reasoning import ReasoningConfig, ReasoningOutput
from dtwinseg.twin import DigitalTwin

QUIET = {"log": lambda s: None}


@pytest.mark.parametrize("label", ["..", ".", "a/b", "../x", "a\\b", "", "x" * 101, "a b", "名前"])
def test_unsafe_labels_are_refused_before_anything_is_written(tmp_path, label):
    spec, cache = build_bench(tmp_path)
    with pytest.raises(DataError, match="not a usable name"):
        evaluate(spec, cache, [Checkpoint(label, "x", ReasoningConfig(), reasoner=OracleReasoner(spec))],
                 tmp_path / "out", EvalOptions(progress=False), **QUIET)
    assert not (tmp_path / "out").exists() and not (tmp_path / "predictions.jsonl").exists()


def test_default_label_of_hf_dotdot_is_refused_and_good_labels_pass():
    with pytest.raises(DataError):  # refused by the spec parser or, at the latest, by the label check
        check_label(parse_checkpoint("hf:org/..", ReasoningConfig()).label)
    for good in ("sftdt", "base-8B", "gpt4o_mini", "v1.2", "a+b"):
        assert check_label(good) == good


def test_long_cjk_sample_ids_get_bounded_distinct_cache_keys(tmp_path):
    ids = ["图像" * 20, "图像" * 20 + "b", "图像" * 19 + "图"]
    keys = [sample_key(i) for i in ids]
    assert len(set(keys)) == 3 and all(len(k.encode()) <= 200 for k in keys)
    cache = DTCache.create(tmp_path, {"p": 1})
    twin = DigitalTwin.from_masks(ids[0], np.ones((1, 4, 4), bool), semantics=["x"])
    cache.put(ids[0], twin)  # a 360-byte percent-encoded name would fail with ENAMETOOLONG
    assert cache.get(ids[0]).image_id == ids[0] and cache.get(ids[1]) is None
    assert sample_key("short_id") == "short_id"  # short keys are unchanged (existing caches stay valid)
    assert bounded_name("a" * 300) != bounded_name("a" * 299 + "b")


def test_a_5mb_answer_is_stored_with_its_head_and_tail(tmp_path):
    spec, cache = build_bench(tmp_path)
    answer = "Answer: [0]" + "x" * 5_000_000 + "THE END"

    class Verbose(OracleReasoner):
        def reason(self, items):
            return [ReasoningOutput([0], ParseResult("ok", [0]), answer, "select") for _ in items]

    evaluate(spec, cache, [Checkpoint("v", "v", ReasoningConfig(), reasoner=Verbose(spec))], tmp_path / "run",
             EvalOptions(progress=False, worst_k=0), **QUIET)
    recs = [r for r in load_records(tmp_path / "run" / "v" / "predictions.jsonl") if r["text"]]
    assert len(recs) == N - 1
    text = recs[0]["text"]
    assert text.startswith("Answer: [0]") and text.endswith("THE END") and len(text) < MAX_STORED_TEXT + 100
    assert any("stored as its head and tail" in n for n in recs[0]["notes"])
    assert clip_middle("short", 10) == ("short", False)


def test_atomic_writes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_json(tmp_path / "a.json", {"x": 1})
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        os.umask(0o077)
        q = atomic_write_json(tmp_path / "b.json", {"x": 1})
        assert stat.S_IMODE(q.stat().st_mode) == 0o600
    finally:
        os.umask(old)
