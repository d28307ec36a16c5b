"""Scene facts (dtwinseg.formats.facts): computed from the twin alone, from free-form wording as a VLM writes
it, and knowing nothing of the synthetic generator."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from dtwinseg.formats import FormatConfig, build_format
from dtwinseg.formats.compact import CompactOptions, object_lines
from dtwinseg.formats.facts import kind_of, noun_phrase, object_facts, plural, references
from dtwinseg.io import DataError
from dtwinseg.twin import DigitalTwin

ROOT = Path(__file__).resolve().parents[1]


def square(h: int, w: int, x: int, y: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y:y + side, x:x + side] = True
    return m


def rect(x0: int, y0: int, x1: int, y1: int, h: int = 160, w: int = 200) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize(("text", "kind"), [
    ("a black office chair next to the table", "chair"),
    ("a tabby cat sleeping on the chair", "cat"),
    ("the handle of a mug", "handle"),
    ("fridge handle, lower one", "handle"),
    ("mug, red", "mug"),
    ("a chair that is red", "chair"),
    ("kitchen chair's seat", "seat"),
    ("a tail (dog)", "tail"),
    ("the cat curled up by the heater", "cat"),
    ("a large blue house with a red roof", "house"),
    ("A large painting of a ship.", "painting"),
    ("a woman holding an umbrella", "woman"),
    ("a cup filled with coffee", "cup"),
    ("two apples", "apples"),
    ("", "object"),
    ("   ", "object"),
])
def test_kind_is_the_head_noun_of_free_form_wording(text: str, kind: str) -> None:
    assert kind_of(text) == kind


def test_modifiers_and_plurals() -> None:
    assert noun_phrase("a small red ceramic mug on the shelf") == (["small", "red", "ceramic"], "mug")
    assert noun_phrase("the kitchen chair's seat") == (["kitchen", "chair's"], "seat")
    assert [plural(w) for w in ("cup", "box", "butterfly", "day", "bus", "legs", "glass")] == [
        "cups", "boxes", "butterflies", "days", "buses", "legs", "glasses"]


def kitchen() -> DigitalTwin:
    """A hand-written kitchen twin as SAM + a VLM would give it: regions, furniture, a cat on a chair (the
    chair's mask has a hole where the cat lies), mugs and their handles, the fridge's two handles inside
    the fridge, and a near-duplicate of the fridge worded differently."""
    wall, floor = rect(0, 0, 200, 70), rect(0, 70, 200, 160)
    fridge, fridge_dup = rect(10, 30, 50, 140), rect(10, 31, 51, 140)
    handle_hi, handle_lo = rect(42, 45, 46, 60), rect(42, 90, 46, 115)
    table = rect(90, 92, 170, 140)
    cat = rect(62, 98, 84, 110)
    chair = rect(60, 95, 86, 150) & ~cat
    plant = rect(174, 40, 196, 98)
    red_chair = rect(172, 100, 196, 150) & ~plant
    blue_mug, mug_handle = rect(100, 78, 113, 92), rect(110, 81, 113, 88)
    red_mug = rect(140, 84, 147, 92)
    window = rect(120, 10, 160, 50)
    for m in (fridge, table, chair, cat, red_chair, blue_mug, red_mug, plant, window):
        wall &= ~m
        floor &= ~m
    masks = [wall, floor, fridge, handle_hi, handle_lo, table, chair, red_chair, cat, blue_mug, red_mug, mug_handle,
             plant, window, fridge_dup]
    semantics = ["the white wall", "a wooden floor", "a tall white fridge with two doors",
                 "the upper handle of the fridge", "fridge handle, lower one", "a wooden dining table",
                 "a black office chair next to the table", "a red chair on the right",
                 "a tabby cat sleeping on the chair", "a blue mug", "a red mug, small", "the handle of the blue mug",
                 "a potted plant by the window", "a window with white frames", "a white fridge"]
    return DigitalTwin.from_masks("kitchen", np.stack(masks), semantics=semantics)


def test_a_hand_written_kitchen_twin_gets_correct_and_informative_lines() -> None:
    twin = kitchen()
    facts = object_facts(twin)
    # regions and things alone of their kind: the count only (the near-duplicate fridge counts once)
    assert facts[0] == ["the only wall"] and facts[1] == ["the only floor"]
    assert facts[2] == ["the only fridge"] and facts[14] == ["the only fridge"]
    assert facts[8] == ["the only cat"] and facts[5] == ["the only table"]
    # the fridge's handles: parts of it, told apart by position, no relations of their own
    assert facts[3] == ["part of the tall white fridge", "one of three handles", "the topmost handle"]
    assert facts[4] == ["part of the tall white fridge", "one of three handles", "the largest handle",
                        "the bottommost handle"]
    assert facts[11][:2] == ["part of the blue mug, the largest and leftmost mug", "one of three handles"]
    # the two chairs: each singled out by superlatives and by relations to the things near it
    black, red = facts[6], facts[7]
    assert black[:2] == ["one of two chairs", "the leftmost chair"] and red[:2] == ["one of two chairs", "the rightmost chair"]
    assert "left of the table" in black and "right of the table" in red
    assert "nearest to the cat" in black and "nearest to the plant" in red
    # the mugs: compared by size and position; the other chair is named by its own words
    blue, small = facts[9], facts[10]
    assert blue[:3] == ["one of two mugs", "the largest mug", "the leftmost mug"]
    assert small[:3] == ["one of two mugs", "the smallest mug", "the rightmost mug"]
    assert "nearest to the black chair, the leftmost chair" in blue
    # never more than a handful of facts per line, and none repeats
    assert all(len(f) <= 8 and len(set(f)) == len(f) for f in facts.values())
    # facts never depend on the query
    twin.query = "the chair left of the table"
    assert object_facts(twin) == facts
    line = object_lines(twin, CompactOptions(facts=True, position="none", areas=False))[6]
    assert line.startswith("a black office chair next to the table, id 6; one of two chairs; the leftmost chair")


def test_references_are_the_shortest_name_in_the_twins_own_words() -> None:
    masks = np.stack([square(60, 60, 6 * k, 6 * k, 4) for k in range(6)])
    semantics = ["a small red cup", "a large red cup", "the office chair", "kitchen chair, wooden",
                 "a tree with a green crown", "mug"]
    assert references(DigitalTwin.from_masks("r", masks, semantics=semantics)) == [
        "the small cup", "the large cup", "the office chair", "the kitchen chair", "the tree", "the mug"]
    twin = DigitalTwin.from_masks("r", masks[:2], semantics=["a cup", "a cup"])
    assert references(twin) == ["the cup", "the cup"]  # nothing tells them apart: the full name


def test_ties_write_no_superlative_and_empty_twins_work() -> None:
    masks = np.stack([square(50, 50, 5, 5, 10), square(50, 50, 30, 5, 10)])
    facts = object_facts(DigitalTwin.from_masks("t", masks, semantics=["a cup", "a cup"]))
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


PROMPT_CODE = [*sorted((ROOT / "dtwinseg" / "formats").glob("*.py")), ROOT / "dtwinseg" / "spatial.py",
               ROOT / "dtwinseg" / "prompting.py"]


def _code_strings(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings (what the code can put into a prompt)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


def test_prompt_code_holds_no_generator_vocabulary() -> None:
    """No noun, colour, size, material or state of either synthetic profile appears in a string the prompt
    code can write (docstrings may show examples), and prompt code imports nothing of the generator."""
    from dtwinseg.data_builders.synthetic import config as basic
    from dtwinseg.data_builders.synthetic.realistic import lexicon

    vocab: set[str] = set()
    for table in (lexicon.NOUNS, lexicon.PART_NOUNS, lexicon.COLOURS, lexicon.SIZES, lexicon.MATERIALS,
                  lexicon.STATES):
        for key, words in table.items():
            vocab |= {key, *words.shared, *words.train, *words.val, *words.test}
    vocab |= set(basic.COLOURS) | set(basic.SHAPES) | set(basic.ICONS) | set(basic.COMPOSITES) | set(basic.PLURALS.values())
    vocab |= {name for parts in basic.PART_COLOURS.values() for name, _ in parts}
    vocab -= {"keys", "top", "base", "body", "head", "frame", "stand", "support", "surface", "bottom", "panel",
              "display", "foot", "stem", "back"}  # everyday words a prompt may use in their other sense
    for path in PROMPT_CODE:
        text = path.read_text()
        assert "synthetic" not in re.sub(r'""".*?"""', "", text, flags=re.S), path  # no import, no reference
        for s in _code_strings(path):
            s = re.sub(r"Table \d+", "", s)  # the paper's tables
            found = sorted(w for w in vocab if re.search(rf"\b{re.escape(w)}\b", s.lower()))
            assert not found, (path.name, s[:80], found)


def test_a_participle_is_told_from_a_noun_by_the_twins_other_descriptions() -> None:
    masks = np.stack([square(60, 60, 5, 5, 10), square(60, 60, 30, 5, 10), square(60, 60, 5, 30, 10)])
    twin = DigitalTwin.from_masks("p", masks, semantics=["an ivory wooden painting next to the bottle",
                                                         "the frame of a painting", "a tabby cat sleeping on it"])
    alone = "an ivory wooden painting next to the bottle"
    assert noun_phrase(alone) == (["ivory"], "wooden")  # alone, "painting next to" reads like "sleeping on"
    assert noun_phrase(alone, {"painting"}) == (["ivory", "wooden"], "painting")
    facts = object_facts(twin)
    assert facts[0][0] == "the only painting" and facts[2] == ["the only cat"]
