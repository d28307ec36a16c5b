"""Seg-DT records (schema + validation) and programmatic paths (greedy oracle union, build-segdt)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from dtwinseg.data_builders.dt_cache import DTCache
from dtwinseg.data_builders.programmatic import (
    ProgrammaticConfig,
    build_segdt,
    path_with_kind,
    programmatic_path,
)
from dtwinseg.data_builders.registry import register_reader
from dtwinseg.data_builders.sample import Sample
from dtwinseg.data_builders.segdt import iter_records, load_records, record_from_dict, write_records
from sft_helpers import rect_masks

from dtwinseg.formats.sftdt import check_path
from dtwinseg.io import DataError
from dtwinseg.metrics import best_subset
from dtwinseg.twin import DigitalTwin


def scene(seed: int = 0, n: int = 6, size: int = 32) -> tuple[DigitalTwin, np.ndarray]:
    """Random rectangles as twin objects; the target is the union of two of them plus an ignore band."""
    masks = rect_masks(np.random.default_rng(seed), n, size)
    gt = (masks[1] | masks[3]).astype(np.uint8)
    gt[:, :2] = 255
    names = ["a red cup", "a blue mug", "a lamp", "a red mug", "a table", "a green mug", "a chair", "a book"]
    twin = DigitalTwin.from_masks(f"s{seed}", masks, semantics=[names[k % len(names)] for k in range(n)])
    return twin, gt


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    valid = gt != 255
    t = (gt == 1) & valid
    p = pred & valid
    u = (p | t).sum()
    return 1.0 if u == 0 else float((p & t).sum() / u)


def test_best_subset_matches_exhaustive_search_on_small_twins():
    for seed in range(8):
        twin, gt = scene(seed, n=5)
        masks = twin.masks()
        ids, got = best_subset(masks, gt, twin.ids)
        assert got == pytest.approx(iou(twin.union(ids), gt))
        best = max(iou(masks[list(c)].any(0), gt) for r in range(1, 6) for c in itertools.combinations(range(5), r))
        assert got <= best + 1e-9
        assert got >= 0.9 * best  # greedy is near the exhaustive optimum on these scenes


def test_best_subset_ignores_255_and_handles_empty_target():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :, :2] = True
    masks[1, :, 2:] = True
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 1
    gt[:, 2:] = 255  # mask 1 lies only on ignored pixels: choosing it costs nothing, gains nothing
    assert best_subset(masks, gt) == ([0], 1.0)
    assert best_subset(masks, np.zeros((4, 4), np.uint8)) == ([], 1.0)
    with pytest.raises(ValueError):
        best_subset(masks, np.zeros((3, 4), np.uint8))


def test_generic_path_is_valid_reaches_the_oracle_and_names_a_reason_per_object():
    for seed in range(5):
        twin, gt = scene(seed)
        path, got, kind = path_with_kind(twin, gt, ProgrammaticConfig(), query="which mugs are there?")
        check_path(path, twin.ids)
        assert kind == "generic" and 1 <= len(path.steps) <= 2
        assert (path.answer, got) == best_subset(twin.masks(), gt, twin.ids)
        assert all(d.reasoning for s in path.steps for d in s.decisions.values())
        # step 1 keeps the mugs (the query's word, visible in S_i) and the answer, drops the rest with why
        mugs = {o.id for o in twin.objects if "mug" in o.semantic}
        first = path.steps[0]
        assert set(first.kept) == mugs | set(path.answer)
        for i in first.dropped:
            assert "not what the query asks for" in first.decisions[i].reasoning
        for i in mugs & set(first.kept):
            assert first.decisions[i].reasoning == 'mentions "mug", as the query does'
        if len(path.steps) == 2:  # the other mugs: what sets them apart from the answer, in words
            for i in path.steps[1].dropped:
                assert "where" in path.steps[1].decisions[i].reasoning or "area" in path.steps[1].decisions[i].reasoning


def test_paths_never_use_hidden_ground_truth_overlap():
    """Two ground truths with the same best answer but different overlap with the other objects give the
    same path: no step keeps or drops by pixels the model never sees."""
    twin, gt = scene(0)
    answer, _ = best_subset(twin.masks(), gt, twin.ids)
    other = next(i for i in twin.ids if i not in answer)
    gt2 = gt.copy()
    m = twin.get(other).mask() & (gt2 != 255)
    ys, xs = np.nonzero(m)
    gt2[ys[:2], xs[:2]] = 1  # two pixels of another object on the target: overlap changes, answer does not
    assert best_subset(twin.masks(), gt2, twin.ids)[0] == answer
    p1, _ = programmatic_path(twin, gt, query="the mugs")
    p2, _ = programmatic_path(twin, gt2, query="the mugs")
    assert p1 == p2


@pytest.fixture(scope="module")
def synthetic_twins():
    """Two samples per dimension: (sample, oracle twin) with the query program and instances."""
    from dtwinseg.data_builders.synthetic import generate_sample

    from dtwinseg.perception.builder import PerceptionConfig, TwinBuilder

    builder = TwinBuilder(PerceptionConfig(source="oracle"))
    out = []
    for i in range(14):
        s = generate_sample(5, "train", i)
        inst = s.scene.instances()
        twin = builder.build(s.scene.image, s.text, s.name, instances=inst, granularity=s.query.granularity)
        out.append((s, inst, twin))
    return out


def test_program_paths_state_visible_evidence_with_one_step_per_hop(synthetic_twins):
    import re

    for s, inst, twin in synthetic_twins:
        gt = s.target_mask().astype(np.uint8)
        path, got, kind = path_with_kind(twin, gt, query=s.text, program=s.query.program, instances=inst)
        check_path(path, twin.ids)
        prog = s.query.program
        assert kind == "program", (s.name, prog)
        assert got == 1.0 and path.answer == best_subset(twin.masks(), gt, twin.ids)[0]
        sem = {o.id: o.semantic for o in twin.objects}
        for step in path.steps:
            for i, d in step.decisions.items():
                assert d.reasoning and d.semantic.startswith(sem[i])
                # category verdicts name the object's own kind, as its semantic states it
                m = re.fullmatch(r"an? (\w+), not .*", d.reasoning)
                if m and d.verdict == "drop" and "whole" not in d.reasoning:
                    assert m.group(1) in sem[i]
        n = len(path.steps)
        if prog["kind"] == "nearest_to_extreme":
            assert n == 3  # kinds, the extreme anchor, the nearest: one step per hop
            assert any("the largest" in d.reasoning for d in path.steps[1].decisions.values())
            assert any("px from" in d.reasoning for d in path.steps[2].decisions.values())
        elif prog["kind"] in ("function", "group", "count"):
            assert n == 1
        elif prog["kind"] in ("relation", "nearest", "extreme", "part"):
            assert n <= 2
        else:
            assert 1 <= n <= 4


def test_relation_evidence_quotes_the_true_centres(synthetic_twins):
    from dtwinseg.data_builders.evidence import object_facts

    checked = 0
    for s, inst, twin in synthetic_twins:
        prog = s.query.program
        if prog["kind"] != "relation":
            continue
        path, _ = programmatic_path(twin, s.target_mask().astype(np.uint8), query=s.text, program=prog,
                                    instances=inst)
        facts = object_facts(twin)
        axis = "x" if prog["relation"] in ("left of", "right of") else "y"
        for i, d in path.steps[-1].decisions.items():
            if d.reasoning.startswith("centre"):
                v = facts[i].cx if axis == "x" else facts[i].cy
                assert d.reasoning.startswith(f"centre {axis} {v:.0f} vs ")
                assert (d.verdict == "keep") == (not d.reasoning.endswith(f"not {prog['relation']} it"))
                checked += 1
    assert checked >= 2


def test_program_that_contradicts_the_twin_falls_back_to_generic(synthetic_twins):
    s, inst, twin = synthetic_twins[0]  # recognition
    wrong = {"kind": "function", "category": "no-such-thing"}
    _, _, kind = path_with_kind(twin, s.target_mask().astype(np.uint8), query=s.text, program=wrong,
                                instances=inst)
    assert kind == "generic"


def record(twin: DigitalTwin, **over) -> dict:
    path, got = programmatic_path(twin, scene(0)[1], query="the mugs")
    d = {"id": "a", "image": "a.jpg", "query": "q", "twin": twin.to_dict(), **path.to_dict(),
         "granularity": 1, "dimension": None, "match_iou": got}
    d.update(over)
    return d


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("query"), "query"),
    (lambda d: d.update(path=[]), "path"),
    (lambda d: d.update(answer=[99]), "answer"),
    (lambda d: d["path"][0]["objects"].update({"42": {"verdict": "drop"}}), "path[0].objects"),
    (lambda d: d.update(granularity=7), "granularity"),
    (lambda d: d["twin"].pop("width"), "twin.width"),
])
def test_bad_records_name_file_line_and_field(tmp_path, mutate, field):
    twin, _ = scene(0)
    good, bad = record(twin), record(twin, id="b")
    mutate(bad)
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as e:
        load_records(p)
    assert e.value.path == str(p) and e.value.field == f"line 2: {field}"


def test_readded_object_is_rejected():
    twin, _ = scene(0)
    d = record(twin)
    dropped = d["path"][0]["kept"] and [k for k, o in d["path"][0]["objects"].items() if o["verdict"] == "drop"]
    assert dropped
    d["path"][1]["objects"][dropped[0]] = {"semantic": "", "reasoning": "", "verdict": "drop"}
    with pytest.raises(DataError) as e:
        record_from_dict(d)
    assert e.value.field == "path[1].objects" and "dropped" in e.value.message


@dataclass
class _Toy:
    root: str
    split: str
    name: str = "segdt_toy"
    skipped: list = field(default_factory=list)

    def samples(self) -> list[Sample]:
        out = []
        for seed in range(4):
            twin, gt = scene(seed)
            out.append(Sample(id=f"s{seed}", image_path=f"{seed}.png", query=f"find {seed}", is_sentence=False,
                              gt_mask=gt, split=self.split, dimension="spatial"))
        return out

    def __iter__(self):
        return iter(self.samples())

    def __len__(self) -> int:
        return 4


register_reader("segdt_toy")(lambda root, split, strict=True: _Toy(root, split))


def test_build_segdt_writes_cache_references_and_filters(tmp_path):
    cache = DTCache.create(tmp_path / "cache", {"source": "oracle"})
    for seed in range(3):  # s3 has no twin
        twin, _ = scene(seed)
        cache.put(f"s{seed}", twin)
    out = tmp_path / "out" / "records.jsonl"
    counts = build_segdt("segdt_toy:x:train", tmp_path / "cache", out, ProgrammaticConfig(min_iou=0.0),
                         progress=False)
    assert counts["written"] == 3 and counts["missing_twin"] == 1 and counts["failed"] == 0
    recs = load_records(out)
    assert [r.id for r in recs] == ["s0", "s1", "s2"]
    assert recs[0].twin_ref["dt_cache"].startswith("..") and recs[0].dimension == "spatial"
    assert all(r.match_iou == best_subset(r.twin.masks(), scene(int(r.id[1:]))[1])[1] for r in recs)
    strict = build_segdt("segdt_toy:x:train", tmp_path / "cache", out, ProgrammaticConfig(min_iou=1.01),
                         progress=False)
    assert strict["written"] == 0 and strict["below_min_iou"] == 3
    # write_records round trip with inline twins
    write_records(tmp_path / "inline.jsonl", recs, inline_twin=True)
    again = list(iter_records(tmp_path / "inline.jsonl"))
    assert again[1].twin.to_dict() == recs[1].twin.to_dict() and again[1].path == recs[1].path


def test_build_segdt_counts_a_corrupt_cached_twin_and_goes_on(tmp_path):
    cache = DTCache.create(tmp_path / "cache", {"source": "oracle"})
    for seed in range(3):
        twin, _ = scene(seed)
        cache.put(f"s{seed}", twin)
    cache.path_for("s1").write_text('{"version": 1, "objects": [', encoding="utf-8")  # torn write
    out = tmp_path / "records.jsonl"
    counts = build_segdt("segdt_toy:x:train", tmp_path / "cache", out, ProgrammaticConfig(min_iou=0.0),
                         progress=False)
    assert counts["written"] == 2 and counts["failed"] == 1
    assert counts["failures"][0]["id"] == "s1" and "s1" in counts["failures"][0]["error"]
    assert [r.id for r in load_records(out)] == ["s0", "s2"]
