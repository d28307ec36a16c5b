"""Seg-DT records (schema + validation) and programmatic paths (greedy oracle union, build-segdt)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from data_builders.dt_cache import DTCache
from data_builders.programmatic import ProgrammaticConfig, best_subset, build_segdt, programmatic_path
from data_builders.registry import register_reader
from data_builders.sample import Sample
from data_builders.segdt import iter_records, load_records, record_from_dict, write_records
from dtwinseg.io import DataError
from dtwinseg.paths import check_path
from dtwinseg.twin import DigitalTwin


def scene(seed: int = 0, n: int = 6, size: int = 32) -> tuple[DigitalTwin, np.ndarray]:
    """Random rectangles as twin objects; the target is the union of two of them plus an ignore band."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for k in range(n):
        y0, x0 = rng.integers(0, size - 8, 2)
        h, w = rng.integers(4, 12, 2)
        masks[k, y0:y0 + h, x0:x0 + w] = True
    gt = (masks[1] | masks[3]).astype(np.uint8)
    gt[:, :2] = 255
    twin = DigitalTwin.from_masks(f"s{seed}", masks, semantics=[f"thing {k}" for k in range(n)])
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


def test_programmatic_path_is_valid_and_reaches_the_oracle():
    for seed in range(5):
        twin, gt = scene(seed)
        path, got = programmatic_path(twin, gt, ProgrammaticConfig())
        check_path(path, twin.ids)
        assert len(path.steps) == 2
        assert (path.answer, got) == best_subset(twin.masks(), gt, twin.ids)
        # Step 1 drops only objects that do not touch the target.
        for i in path.steps[0].dropped:
            assert not (twin.get(i).mask() & (gt == 1)).any() or i not in path.answer
        assert all(d.reasoning for s in path.steps for d in s.decisions.values())


def record(twin: DigitalTwin, **over) -> dict:
    path, got = programmatic_path(twin, scene(0)[1])
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
