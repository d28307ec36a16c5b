"""Scene facts (dtwinseg.formats.facts): computed from the twin alone, and enough to decide the synthetic
generator's relational, comparative and counting queries from one object's line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dtwinseg.data_builders.synthetic import SynthConfig
from dtwinseg.data_builders.synthetic.config import PLURALS
from dtwinseg.data_builders.synthetic.writer import write_dataset

from dtwinseg.formats import FormatConfig, build_format
from dtwinseg.formats.compact import CompactOptions, object_lines
from dtwinseg.formats.facts import NUMBER_WORDS, kind_of, object_facts, plural, references
from dtwinseg.io import DataError
from dtwinseg.twin import DigitalTwin, decode_rle


def square(h: int, w: int, x: int, y: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y:y + side, x:x + side] = True
    return m


def test_kind_and_plural() -> None:
    assert kind_of("a large blue house with a red roof") == "house"
    assert kind_of("the red roof of a house") == "roof"
    assert kind_of("a medium pink striped umbrella") == "umbrella"
    assert kind_of("") == kind_of("   ") == "object"
    assert [plural(w) for w in ("cup", "box", "butterfly", "day", "bus")] == ["cups", "boxes", "butterflies",
                                                                             "days", "buses"]


def test_facts_of_a_known_scene() -> None:
    # two cups (small at left-top, big at right-bottom) and one circle between them
    h = w = 100
    masks = [square(h, w, 5, 5, 10), square(h, w, 70, 70, 25), square(h, w, 25, 25, 15)]
    twin = DigitalTwin.from_masks("s", np.stack(masks), semantics=["a small red cup", "a big blue cup",
                                                                   "a green circle"])
    facts = object_facts(twin)
    assert facts[0] == ["one of two cups", "the smallest cup", "the leftmost cup", "the topmost cup",
                        "the smallest object", "nearest to, left of and above the circle"]
    assert facts[1] == ["one of two cups", "the largest cup", "the rightmost cup", "the bottommost cup",
                        "the largest object", "right of and below the circle"]
    assert facts[2] == ["the only circle"]  # alone of its kind: no relation singles it out
    # facts never depend on the query
    twin.query = "anything at all"
    assert object_facts(twin) == facts


def test_references_are_the_shortest_unique_name() -> None:
    """Kind, then colour, then size, then every other modifier; words in the description's order."""
    masks = np.stack([square(60, 60, 5 * k, 5 * k, 4) for k in range(7)])
    semantics = ["a small red cup", "a large red cup", "a small blue dotted cup", "a tree with a green crown",
                 "a large green striped box", "a large green dotted box", "The box, on the left"]
    twin = DigitalTwin.from_masks("r", masks, semantics=semantics)
    assert references(twin) == ["the small red cup", "the large red cup", "the blue cup", "the tree",
                                "the large green striped box", "the large green dotted box", "the box"]
    # the last box has no modifiers, so every modifier of the others still fits it: never unique, full name
    twin = DigitalTwin.from_masks("r", masks[:2], semantics=["a cup", "a cup"])
    assert references(twin) == ["the cup", "the cup"]


def test_ties_write_no_superlative_and_empty_twins_work() -> None:
    masks = np.stack([square(50, 50, 5, 5, 10), square(50, 50, 30, 5, 10)])
    facts = object_facts(DigitalTwin.from_masks("t", masks, semantics=["a cup", "a cup"]))
    assert not any("largest" in f or "smallest" in f or "topmost" in f for fs in facts.values() for f in fs)
    assert facts == {0: ["one of two cups", "the leftmost cup"], 1: ["one of two cups", "the rightmost cup"]}
    assert object_facts(DigitalTwin("e", 10, 10)) == {}


def test_compact_option_is_checked_and_off_by_default() -> None:
    with pytest.raises(DataError, match="facts"):
        CompactOptions(facts="yes")  # type: ignore[arg-type]
    twin = DigitalTwin.from_masks("t", np.stack([square(50, 50, 5, 5, 10), square(50, 50, 30, 5, 10)]),
                                  semantics=["a cup", "a bowl"])
    assert ";" not in object_lines(twin, CompactOptions())[0]
    line = object_lines(twin, CompactOptions(facts=True, position="none", areas=False))[0]
    assert line == "a cup, id 0; the only cup"
    fmt = build_format("compact", FormatConfig(options={"target": "object", "facts": True}))
    prompts = fmt.verdict_path(twin, "the cup left of the bowl").prompts
    assert prompts[1][-1]["content"].endswith("object: a bowl, at 34 9, area 4.0, id 1; the only bowl")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, list[dict]]]:
    root = tmp_path_factory.mktemp("facts")
    write_dataset(root, {"test": 140}, seed=23, cfg=SynthConfig(max_objects=8), progress=False)
    out = []
    for p in sorted((root / "test").glob("*.jpg")):
        ann = json.loads(p.with_suffix(".json").read_text())
        inst = json.loads(p.with_name(p.stem + ".instances.json").read_text())["objects"]
        out.append((ann, inst))
    return out


def _twin(inst: list[dict]) -> tuple[DigitalTwin, list[dict]]:
    objs = [o for o in inst if o["level"] == 1]  # objects come first: twin id == instance index
    masks = np.stack([decode_rle(o["rle"]).astype(bool) for o in objs])
    return DigitalTwin.from_masks("s", masks, semantics=[o["semantic"] for o in objs]), objs


def test_facts_decide_the_generators_queries(scenes: list[tuple[dict, list[dict]]]) -> None:
    """For every relational, extreme, nearest and counting program the target's facts say what the query
    asks, and (relations, extremes) no other object of the category says it too."""
    checked = {"relation": 0, "extreme": 0, "nearest": 0, "nearest_to_extreme": 0, "count": 0}
    for ann, inst in scenes:
        prog, targets = ann["program"], ann["targets"]
        if prog["kind"] not in checked or any(t >= sum(o["level"] == 1 for o in inst) for t in targets):
            continue
        twin, objs = _twin(inst)
        facts = object_facts(twin)
        same = [k for k, o in enumerate(objs) if o["category"] == prog.get("category")]
        names = references(twin)
        if prog["kind"] == "relation":
            a, rel = prog["anchor"], prog["relation"]
            name = names[a]
            assert f"{rel} {name}" in ann["text"][0], (ann["text"], name)  # the name the generator's query uses
            says = [k for k in same if k != a and any(rel in f.split(name)[0] and f.split(", the ")[0].endswith(name)
                                                      for f in facts[k])]
            assert says == targets, (ann["text"], facts)
        elif prog["kind"] == "extreme":
            phrase = f"the {prog['which']} {prog['category'] or 'object'}"
            assert [k for k in range(len(objs)) if phrase in facts[k]] == targets, (ann["text"], facts)
        elif prog["kind"] in ("nearest", "nearest_to_extreme"):
            anchor = prog.get("anchor")
            if anchor is None:  # nearest to the largest of the anchor category
                anchor = next(k for k in range(len(objs)) if f"the largest {prog['anchor_category']}" in facts[k])
            name = names[anchor]
            if prog["kind"] == "nearest":
                assert f"nearest to {name}" in ann["text"][0], (ann["text"], name)
            hits = [k for k in same if any(f.startswith("nearest to") and f.split(", the ")[0].endswith(name)
                                           for f in facts[k])]
            assert hits == targets, (ann["text"], facts)
        else:
            phrase = f"one of {NUMBER_WORDS[prog['count']]} {PLURALS[prog['category']]}"
            assert all(phrase in facts[k] for k in targets), (ann["text"], facts)
        checked[prog["kind"]] += 1
    assert all(n >= 2 for n in checked.values()), checked
