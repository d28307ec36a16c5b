"""Simulated SAM (dtwinseg/perception/simulated.py): ground-truth instances turned into proposals with SAM's
errors, deterministic per scene, so that the oracle bound of a twin is below 1 and measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dtwinseg.data_builders.registry import open_dataset
from dtwinseg.data_builders.synthetic import SynthConfig, write_dataset

from dtwinseg.io import DataError
from dtwinseg.metrics import best_subset
from dtwinseg.perception.builder import PerceptionConfig, TwinBuilder
from dtwinseg.perception.simulated import SimulationConfig, jitter, simulate
from dtwinseg.twin import decode_rle, encode_rle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list:
    root = tmp_path_factory.mktemp("sim")
    write_dataset(root, {"test": 14}, seed=5, cfg=SynthConfig(profile="realistic"), progress=False)
    return list(open_dataset(f"synthetic:{root}:test"))


def test_proposals_carry_sams_errors_and_keep_the_bound_below_one(scenes: list) -> None:
    cfg = PerceptionConfig.from_yaml(ROOT / "recipes" / "perception" / "simulated_sam.yaml")
    builder = TwinBuilder(cfg)
    bounds, ratio, texts = [], [], set()
    for s in scenes:
        twin = builder.build(s.image_path, s.query, s.id, instances=s.instances, granularity=s.granularity)
        again = builder.build(s.image_path, "another query", "another-id", instances=s.instances, granularity=1)
        assert [o.rle for o in twin.objects] == [o.rle for o in again.objects]  # a scene always gets the same
        assert [o.semantic for o in twin.objects] == [o.semantic for o in again.objects]
        assert twin.provenance["source"] == "simulated" and {o.level for o in twin.objects} == {twin.granularity}
        ratio.append(len(twin.objects) / len(s.instances))
        words = {w for inst in s.instances for w in [inst["semantic"], *inst["alt_semantics"]]}
        texts |= {o.semantic for o in twin.objects if o.semantic not in words}  # spurious blobs' generic words
        bounds.append(best_subset(twin.masks(), s.gt_mask, twin.ids)[1])
    assert 0.75 < float(np.mean(bounds)) < 0.99 and min(bounds) < 0.9  # imperfect, but the targets are there
    assert 0.9 < float(np.mean(ratio)) < 1.3  # misses against duplicates, splits and spurious masks
    assert texts and texts <= {"an object", "a dark patch", "a shadow", "a small region", "something"}


def test_every_error_happens_at_its_rate() -> None:
    h = w = 96
    instances = []
    for k in range(16):
        m = np.zeros((h, w), dtype=bool)
        y, x = divmod(k, 4)
        m[y * 24 + 2:y * 24 + 22, x * 24 + 2:x * 24 + 22] = True
        instances.append({"rle": encode_rle(m), "semantic": f"thing {k}", "level": 1, "alt_semantics": [f"alt {k}"]})
    clean = simulate(instances, h, w, SimulationConfig(jitter_px=0, p_miss=0, p_split=0, p_merge=0, p_duplicate=0,
                                                       spurious=0))
    assert sorted(o.semantic for o in clean) == sorted(f"thing {k}" for k in range(16))  # shuffled, nothing lost
    assert sorted(round(o.area, 3) for o in clean) == [round(100 * 400 / (h * w), 3)] * 16
    doubled = simulate(instances, h, w, SimulationConfig(jitter_px=0, p_miss=0, p_split=0, p_merge=0, p_duplicate=1,
                                                         spurious=0))
    assert len(doubled) == 32 and sum(o.semantic.startswith("alt") for o in doubled) == 16
    split = simulate(instances, h, w, SimulationConfig(jitter_px=0, p_miss=0, p_split=1, split_min_px=100, p_merge=0,
                                                       p_duplicate=0, spurious=0))
    assert len(split) == 32 and all(o.area < 100 * 400 / (h * w) for o in split)
    missed = simulate(instances, h, w, SimulationConfig(p_miss=1, spurious=0))
    assert missed == []
    m = np.zeros((h, w), dtype=bool)
    m[20:60, 20:60] = True
    moved = jitter(m, np.random.default_rng(0), 2.0)
    iou = (moved & m).sum() / (moved | m).sum()
    assert 0.8 < iou < 1.0  # the boundary moved, the mask stayed


@pytest.mark.parametrize(("key", "value"), [("p_miss", 1.5), ("p_duplicate", -0.1), ("jitter_px", 80.0),
                                            ("spurious", float("nan")), ("small_px", -1)])
def test_simulation_config_is_strict(key: str, value: float) -> None:
    with pytest.raises(DataError, match=f"simulation.{key}"):
        SimulationConfig.from_dict({key: value})


def test_other_sources_keep_their_cache_key() -> None:
    oracle = PerceptionConfig.from_yaml(ROOT / "recipes" / "perception" / "oracle.yaml")
    assert "simulation" not in oracle.identity()
    sim = PerceptionConfig.from_yaml(ROOT / "recipes" / "perception" / "simulated_sam.yaml")
    assert sim.identity()["simulation"]["p_duplicate"] == sim.simulation.p_duplicate
    assert sim.hash() != PerceptionConfig.from_dict({**sim.to_dict(), "simulation": {"seed": 1}}).hash()
    assert decode_rle(encode_rle(np.ones((3, 4), dtype=bool))).all()
