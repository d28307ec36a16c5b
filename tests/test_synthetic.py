"""The synthetic benchmark: seeded, ReasonSeg-format, and every query justified by its program."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from dtwinseg.data_builders.synthetic import DIMENSIONS, SynthConfig, generate_sample, write_dataset

from dtwinseg.twin import decode_rle

N_PER_SPLIT = 3 * len(DIMENSIONS)  # dimensions cycle, so this holds every dimension three times


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, {"train": N_PER_SPLIT, "test": 7}, seed=3, progress=False)
    return root


def reference_rasterise(annotation: dict, h: int, w: int) -> np.ndarray:
    """The ReasonSeg reference rule: skip 'flag', draw polygons largest first, int32 points, ignore=255."""
    polys = []
    for s in annotation["shapes"]:
        if s["label"].lower() == "flag":
            continue
        pts = np.array(s["points"], dtype=np.int32)
        tmp = np.zeros((h, w), dtype=np.uint8)
        cv2.polylines(tmp, [pts], True, 1, 1)
        cv2.fillPoly(tmp, [pts], 1)
        polys.append((int(tmp.sum()), pts, 255 if "ignore" in s["label"].lower() else 1))
    mask = np.zeros((h, w), dtype=np.uint8)
    for _, pts, value in sorted(polys, key=lambda t: -t[0]):
        cv2.polylines(mask, [pts], True, value, 1)
        cv2.fillPoly(mask, [pts], value)
    return mask


def load(root: Path, split: str) -> list[tuple[dict, list[dict]]]:
    out = []
    for p in sorted((root / split).glob("*.jpg")):
        ann = json.loads(p.with_suffix(".json").read_text())
        inst = json.loads(p.with_name(p.stem + ".instances.json").read_text())
        out.append((ann, inst["objects"]))
    return out


def test_same_seed_same_sample_other_seed_differs() -> None:
    a, b = generate_sample(5, "train", 4), generate_sample(5, "train", 4)
    assert np.array_equal(a.scene.image, b.scene.image)
    assert a.annotation() == b.annotation()
    c = generate_sample(6, "train", 4)
    assert not np.array_equal(a.scene.image, c.scene.image)


@pytest.mark.parametrize("profile", ["basic", "realistic"])
def test_written_folder_is_deterministic_for_any_number_of_workers(tmp_path: Path, profile: str) -> None:
    sizes = {"val": 3, "test": 2} | ({"test_seen": 2} if profile == "realistic" else {})
    for name, jobs in (("a", 1), ("b", 1), ("c", 2)):
        write_dataset(tmp_path / name, sizes, seed=11, cfg=SynthConfig(profile=profile), progress=False, jobs=jobs)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 1 + sum(sizes.values()) * 3  # synthetic.json, and per sample the image, annotation, instances
    for other in ("b", "c"):
        assert sorted(p.relative_to(tmp_path / other) for p in (tmp_path / other).rglob("*") if p.is_file()) == files
        for f in files:
            assert (tmp_path / "a" / f).read_bytes() == (tmp_path / other / f).read_bytes(), (other, f)


def test_all_dimensions_and_granularities_present(synth_root: Path) -> None:
    anns = [a for a, _ in load(synth_root, "train")]
    assert {a["dimension"] for a in anns} == set(DIMENSIONS)
    assert {a["granularity"] for a in anns} == {0, 1, 2}
    assert {a["is_sentence"] for a in anns} == {True, False}


def test_polygons_rasterise_back_to_instance_masks(synth_root: Path) -> None:
    for split in ("train", "test"):
        for ann, objects in load(synth_root, split):
            h, w = ann["imageHeight"], ann["imageWidth"]
            gt = reference_rasterise(ann, h, w) == 1
            union = np.zeros((h, w), dtype=bool)
            for t in ann["targets"]:
                union |= decode_rle(objects[t]["rle"])
            assert union.sum() > 0, ann["text"]
            iou = (gt & union).sum() / (gt | union).sum()
            assert iou >= 0.98, (ann["imagePath"], iou)


def test_instance_levels_and_parents(synth_root: Path) -> None:
    for _, objects in load(synth_root, "train"):
        n_obj = sum(1 for o in objects if o["level"] == 1)
        assert 3 <= n_obj <= 12
        assert all(o["level"] == 1 for o in objects[:n_obj])  # objects first, then parts
        for o in objects[n_obj:]:
            assert o["level"] == 2 and 0 <= o["parent"] < n_obj
            assert objects[o["parent"]]["category"] in ("house", "tree", "car")
            assert o["semantic"].endswith(objects[o["parent"]]["category"])
        # visible masks of level-1 objects are disjoint (painter's order)
        masks = np.stack([decode_rle(o["rle"]) for o in objects[:n_obj]])
        assert masks.sum(0).max() == 1


def _extreme_value(o: dict, which: str) -> float:
    cx, cy = o["centroid"]
    return {"largest": o["area_px"], "smallest": -o["area_px"], "leftmost": -cx, "rightmost": cx,
            "topmost": -cy, "bottommost": cy}[which]


def _nearest_to(objs: list[dict], cat: str, anchor: dict) -> int:
    ax, ay = anchor["centroid"]
    cands = [(math.hypot(o["centroid"][0] - ax, o["centroid"][1] - ay), k) for k, o in enumerate(objs)
             if o["category"] == cat and o is not anchor]
    return min(cands)[1]


def check_program(ann: dict, objects: list[dict]) -> None:
    """Recompute the targets from the written instance attributes and compare."""
    objs = [o for o in objects if o["level"] == 1]
    prog, targets = ann["program"], sorted(ann["targets"])
    kind = prog["kind"]
    text = ann["text"][0]
    if kind == "reference":
        o = objs[prog["object"]]
        assert o["category"] in text
        words = set(re.findall(r"[a-z]+", text.lower()))
        same = [k for k, x in enumerate(objs) if x["category"] == o["category"]
                and (o["colour"] not in words or x["colour"] == o["colour"])
                and (o["size"] not in words or x["size"] == o["size"])]
        assert same == targets
    elif kind == "function":
        assert [k for k, o in enumerate(objs) if o["category"] == prog["category"]] == targets
    elif kind == "extreme":
        group = [k for k, o in enumerate(objs) if prog["category"] in (None, o["category"])]
        best = max(group, key=lambda k: _extreme_value(objs[k], prog["which"]))
        assert [best] == targets and prog["which"] in text
    elif kind == "nearest":
        assert [_nearest_to(objs, prog["category"], objs[prog["anchor"]])] == targets
    elif kind == "nearest_to_extreme":
        group = [o for o in objs if o["category"] == prog["anchor_category"]]
        anchor = max(group, key=lambda o: o["area_px"])
        assert [_nearest_to(objs, prog["category"], anchor)] == targets
    elif kind == "relation":
        a = objs[prog["anchor"]]
        sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[prog["relation"]]
        ok = [k for k, o in enumerate(objs) if o["category"] == prog["category"] and k != prog["anchor"]
              and sign[1] * (o["centroid"][sign[0]] - a["centroid"][sign[0]]) > 0]
        assert ok == targets
    elif kind == "group":
        key = next(k for k in ("colour", "category", "texture") if k in prog)
        assert [k for k, o in enumerate(objs) if o.get(key) == prog[key]] == targets
        assert len(targets) >= 2
    elif kind == "count":
        per_cat = {c: sum(o["category"] == c for o in objs) for c in {o["category"] for o in objs}}
        assert [c for c, n in per_cat.items() if n == prog["count"]] == [prog["category"]]
        assert [k for k, o in enumerate(objs) if o["category"] == prog["category"]] == targets
    elif kind == "part":
        parts = [k for k, o in enumerate(objects) if o["level"] == 2 and o["parent"] == prog["owner"]
                 and o["category"] == prog["part"]]
        assert parts == targets
        assert all(objects[t]["level"] == 2 for t in targets)
    else:
        raise AssertionError(f"unknown program {kind}")


def test_every_query_is_justified_by_its_program(synth_root: Path) -> None:
    for split in ("train", "test"):
        for ann, objects in load(synth_root, split):
            assert ann["targets"], ann["text"]
            check_program(ann, objects)
            level = {0: 1, 1: 1, 2: 2}[ann["granularity"]]
            assert all(objects[t]["level"] == level for t in ann["targets"])


def test_largest_is_really_largest_with_margin() -> None:
    cfg = SynthConfig()
    seen = 0
    for i in range(40):
        s = generate_sample(1, "train", i, cfg, dimension="geometric")
        if s.query.program.get("which") != "largest":
            continue
        seen += 1
        cat = s.query.program["category"]
        group = [o for o in s.scene.objects if cat in (None, o.category)]
        areas = sorted((int(o.mask.sum()) for o in group), reverse=True)
        (t,) = s.query.targets
        assert int(s.scene.objects[t].mask.sum()) == areas[0]
        assert areas[0] >= cfg.margin_ratio * areas[1]
    assert seen > 0


def test_synth_cli_writes_reasonseg_folder(tmp_path: Path) -> None:
    from dtwinseg.cli.main import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--n-train", "2", "--n-val", "1",
                                   "--n-test", "1", "--seed", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        assert len(list((tmp_path / split).glob("*.jpg"))) == n
        assert len(list((tmp_path / split).glob("*.instances.json"))) == n
    assert json.loads((tmp_path / "synthetic.json").read_text())["seed"] == 2


@pytest.mark.parametrize(("yaml_text", "match"), [
    ("n_objects: 3\n", r"s\.yaml: field 'n_objects': unknown key; did you mean"),
    ("size: big\n", r"s\.yaml: field 'size': expected an integer"),
    ("size: 40\n", r"s\.yaml: field 'size': must be >= 96"),
    ("min_objects: 5\nmax_objects: 2\n", r"field 'max_objects': must be >= min_objects"),
    ("category_pool: [4, 2]\n", r"field 'category_pool': expected \[min, max\]"),
    ("p_sentence: 1.5\n", r"field 'p_sentence': a probability in \[0, 1\]"),
    # settings no scene can satisfy: one line naming the file, in a worker process too, nothing written
    ("size: 96\nmin_objects: 30\nmax_objects: 40\nmax_tries: 2\n", r"s\.yaml: field 'max_tries': could not generate"),
])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_synth_cli_refuses_bad_settings_in_one_line(tmp_path: Path, yaml_text: str, match: str, jobs: str) -> None:
    import re

    from dtwinseg.cli.main import app
    from typer.testing import CliRunner

    (tmp_path / "s.yaml").write_text(yaml_text)
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "out"), "--config", str(tmp_path / "s.yaml"),
                                   "--n-train", "0", "--n-val", "0", "--n-test", "3", "--jobs", jobs, "--no-progress"])
    assert res.exit_code == 2 and re.search(match, " ".join(res.output.split())), res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_data_error_survives_pickling() -> None:
    """Errors raised in worker processes come back whole (file, field, message), subclasses included."""
    import pickle

    from dtwinseg.config import ConfigError
    from dtwinseg.io import DataError

    for cls in (DataError, ConfigError):
        e = pickle.loads(pickle.dumps(cls("f.yaml", "size", "must be >= 96")))
        assert type(e) is cls and (e.path, e.field, e.message) == ("f.yaml", "size", "must be >= 96")
        assert str(e) == "f.yaml: field 'size': must be >= 96"


# --- the realistic profile ------------------------------------------------------------------------------------
REALISTIC = SynthConfig(profile="realistic")


@pytest.fixture(scope="module")
def realistic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("realistic")
    write_dataset(root, {"train": 7, "val": 7, "test": 7, "test_seen": 7}, seed=3, cfg=REALISTIC, progress=False,
                  jobs=2)
    return root


def test_realistic_scenes_hold_regions_things_groups_and_parts(realistic_root: Path) -> None:
    roles: set[str] = set()
    for split in ("train", "val", "test", "test_seen"):
        for ann, objects in load(realistic_root, split):
            r = REALISTIC.realistic
            assert r.min_masks <= len(objects) <= r.max_masks
            n1 = sum(o["level"] == 1 for o in objects)
            assert all(o["level"] == 1 for o in objects[:n1]) and all(o["level"] == 2 for o in objects[n1:])
            for o in objects[n1:]:  # parts lie inside their owner's visible mask... mostly: the owner is their union
                assert objects[o["parent"]]["role"] == "object"
                owner = decode_rle(objects[o["parent"]]["rle"])
                assert (decode_rle(o["rle"]) & ~owner).sum() == 0
            for g in (o for o in objects if o["role"] == "group"):
                union = np.logical_or.reduce([decode_rle(objects[m]["rle"]) for m in g["members"]])
                assert np.array_equal(union, decode_rle(g["rle"])) and len(g["members"]) >= 2
            roles |= {o["role"] for o in objects}
            assert all(o["semantic"] and len(o["alt_semantics"]) == 2 for o in objects)
            h, w = ann["imageHeight"], ann["imageWidth"]  # targets: polygons that rasterise back exactly
            gt = reference_rasterise(ann, h, w) == 1
            union = np.logical_or.reduce([decode_rle(objects[t]["rle"]) for t in ann["targets"]])
            assert (gt & union).sum() / (gt | union).sum() >= 0.98, ann["text"]
    assert roles == {"background", "object", "group", "part"}


def _realistic_targets(ann: dict, objects: list[dict]) -> list[int]:
    """The targets of a realistic program, recomputed from the written canonical attributes."""
    prog = ann["program"]
    things = [k for k, o in enumerate(objects) if o["role"] == "object" and o["area_px"] >= 40]
    cat = prog.get("category")
    same = [k for k in things if objects[k]["category"] == cat]

    def value(k: int, which: str) -> float:
        return _extreme_value(objects[k], which)

    def side(k: int, a: int, rel: str) -> float:
        (x, y), (ax, ay) = objects[k]["centroid"], objects[a]["centroid"]
        return {"left of": ax - x, "right of": x - ax, "above": ay - y, "below": y - ay}[rel]

    def nearest(group: list[int], a: int) -> int:
        ax, ay = objects[a]["centroid"]
        return min(group, key=lambda k: math.hypot(objects[k]["centroid"][0] - ax, objects[k]["centroid"][1] - ay))

    kind = prog["kind"]
    if kind == "reference":
        o = objects[prog["object"]]
        keys = prog["attributes"]
        return [k for k in things if objects[k]["category"] == o["category"]
                and all(objects[k].get(a) == o.get(a) for a in keys)]
    if kind == "function":
        return same
    if kind == "relation":
        return [k for k in same if k != prog["anchor"] and side(k, prog["anchor"], prog["relation"]) > 0]
    if kind == "extreme":
        return [max(same, key=lambda k: value(k, prog["which"]))]
    if kind == "nearest":
        return [nearest([k for k in same if k != prog["anchor"]], prog["anchor"])]
    if kind in ("nearest_to_extreme", "relation_to_extreme"):
        group2 = [k for k in things if objects[k]["category"] == prog["anchor_category"]]
        anchor = max(group2, key=lambda k: value(k, prog["which"]))
        if kind == "nearest_to_extreme":
            return [nearest(same, anchor)]
        return [k for k in same if side(k, anchor, prog["relation"]) > 0]
    if kind == "count":
        counts = {c: sum(objects[k]["category"] == c for k in things) for c in {objects[k]["category"] for k in things}}
        assert [c for c, n in counts.items() if n == prog["count"]] == [cat]
        return same
    if kind == "group":
        key = "colour" if "colour" in prog else "category"
        return [k for k in things if objects[k][key] == prog[key]]
    if kind == "part":
        return [k for k, o in enumerate(objects) if o["role"] == "part" and o["parent"] == prog["owner"]
                and o["category"] == prog["part"] and o["area_px"] >= 12]
    raise AssertionError(f"unknown program {kind}")


def test_realistic_queries_are_justified_and_test_seen_holds_the_test_scenes(realistic_root: Path) -> None:
    dims = set()
    for split in ("train", "val", "test", "test_seen"):
        for ann, objects in load(realistic_root, split):
            assert sorted(ann["targets"]) == sorted(_realistic_targets(ann, objects)), (ann["text"], ann["program"])
            dims.add(ann["dimension"])
    assert dims == set(DIMENSIONS)
    for (a, oa), (b, ob) in zip(load(realistic_root, "test"), load(realistic_root, "test_seen"), strict=True):
        assert (a["targets"], a["program"], a["dimension"]) == (b["targets"], b["program"], b["dimension"])
        assert [o["rle"] for o in oa] == [o["rle"] for o in ob]
    texts = [a["text"][0] for a, _ in load(realistic_root, "test")]
    assert texts != [b["text"][0] for b, _ in load(realistic_root, "test_seen")]


def _role_words() -> dict[str, set[str]]:
    """Per role, the words of the lexicon and the query templates that no other role uses."""
    from dtwinseg.data_builders.synthetic.realistic import lexicon, queries

    tables = [lexicon.NOUNS, lexicon.PART_NOUNS, lexicon.COLOURS, lexicon.SIZES, lexicon.MATERIALS, lexicon.STATES,
              lexicon.RELATIONS, lexicon.EXTREMES, {"nearest": lexicon.NEAREST, "context": lexicon.CONTEXT}]
    words: dict[str, set[str]] = {r: set() for r in ("shared", "train", "val", "test")}
    for table in tables:
        for entry in table.values():
            for role in words:
                words[role] |= set(getattr(entry, role))
    everyone = set().union(*words.values())
    return {r: {w for w in words[r] if all(w not in words[o] for o in words if o != r)
                and not any(w != v and re.search(rf"\b{re.escape(w)}\b", v) for v in everyone)}
            for r in ("train", "val", "test")} | {"_templates": set(queries.SHORT)}


def test_realistic_roles_word_and_phrase_apart(realistic_root: Path) -> None:
    """Test twins and queries use no word only train uses, and train none only test uses (partly disjoint
    vocabularies); the seen-phrasing test split is worded in train's words."""
    own = _role_words()
    assert len(own["train"]) > 40 and len(own["test"]) > 40

    def texts(split: str) -> list[str]:
        out = []
        for ann, objects in load(realistic_root, split):
            out += [ann["text"][0]] + [o["semantic"] for o in objects] + [a for o in objects for a in o["alt_semantics"]]
        return [t.lower() for t in out]

    def uses(split: str, role: str) -> set[str]:
        return {w for t in texts(split) for w in own[role] if re.search(rf"\b{re.escape(w)}\b", t)}

    assert not uses("test", "train") and not uses("train", "test") and not uses("val", "test")
    assert not uses("test_seen", "test") and not uses("val", "train")
    assert uses("test", "test") and uses("train", "train") and uses("test_seen", "train")


def test_realistic_config_is_strict(tmp_path: Path) -> None:
    from dtwinseg.cli.main import app
    from typer.testing import CliRunner

    from dtwinseg.io import DataError

    with pytest.raises(DataError, match="profile"):
        SynthConfig(profile="fancy")
    with pytest.raises(DataError, match="max_masks"):
        SynthConfig.from_dict({"profile": "realistic", "realistic": {"min_masks": 30, "max_masks": 20}})
    with pytest.raises(DataError, match="realistic.min_maks"):
        SynthConfig.from_dict({"realistic": {"min_maks": 3}})
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--n-train", "1", "--n-test-seen", "1",
                                   "--no-progress"])
    assert res.exit_code == 2 and "--profile realistic" in res.output
