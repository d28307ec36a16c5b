"""The SFTDT chat format: render, parse back, validate, and never raise on model output."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwinseg.formats.sftdt import (
    SYSTEM_PROMPT,
    ReasoningPath,
    check_path,
    parse_path_output,
    render_path,
    sftdt_messages,
)
from dtwinseg.io import DataError
from dtwinseg.spatial import twin_json
from dtwinseg.twin import DigitalTwin


def make_twin() -> DigitalTwin:
    m = np.zeros((4, 24, 24), bool)
    m[0, 2:8, 2:8] = 1
    m[1, 12:20, 0:24] = 1
    m[2, 3:6, 14:18] = 1
    m[3, 14:17, 3:6] = 1
    return DigitalTwin.from_masks("img", m, semantics=["mug", "table", "lamp", "book"])


def make_path(answer: list[int] | None = None) -> dict:
    return {
        "path": [
            {"kept": [0, 2, 3], "objects": {
                "0": {"semantic": "a mug", "reasoning": "holds drinks", "verdict": "keep"},
                "1": {"semantic": "a table", "reasoning": "furniture", "verdict": "drop"},
                "2": {"semantic": "a lamp", "reasoning": "maybe", "verdict": "keep"},
                "3": {"semantic": "a book", "reasoning": "maybe", "verdict": "keep"}}},
            {"kept": [0, 3], "objects": {
                "0": {"semantic": "the mug", "reasoning": "a container", "verdict": "keep"},
                "2": {"semantic": "the lamp", "reasoning": "gives light", "verdict": "drop"},
                "3": {"semantic": "the book", "reasoning": "on the table", "verdict": "keep"}}},
        ],
        "answer": [0, 3] if answer is None else answer,
    }


def test_render_spans_cover_ids_verdicts_and_answer():
    twin = make_twin()
    path = ReasoningPath.from_dict(make_path())
    r = render_path(twin, path)
    decisions = [r.text[a:b] for a, b in r.decision_spans]
    assert decisions == ["0", "keep", "1", "drop", "2", "keep", "3", "keep", "0", "keep", "2", "drop", "3", "keep"]
    assert [r.text[a:b] for a, b in r.answer_spans] == ["[0, 3]"]
    lines = r.text.splitlines()
    assert lines[-1] == "Answer: [0, 3]"
    # Each step line is valid JSON after the prefix, and the spatial text is not repeated.
    step2 = json.loads(lines[1].split(": ", 1)[1])
    assert list(step2) == ["0", "2", "3"] and "spatial" not in step2["0"]
    full = render_path(twin, path, include_spatial=True)
    assert "spatial" in json.loads(full.text.splitlines()[0].split(": ", 1)[1])["1"]


def test_round_trip_parse():
    twin = make_twin()
    path = ReasoningPath.from_dict(make_path())
    parsed = parse_path_output(render_path(twin, path).text, twin.ids)
    assert parsed.result.status == "ok" and parsed.result.ids == [0, 3]
    assert [s.kept for s in parsed.steps] == [s.kept for s in path.steps]
    assert parsed.steps[0].decisions[1].reasoning == "furniture"


def test_missing_answer_falls_back_to_last_step():
    twin = make_twin()
    text = render_path(twin, ReasoningPath.from_dict(make_path())).text
    no_answer = text[: text.index("Answer:")]
    parsed = parse_path_output(no_answer, twin.ids)
    assert parsed.result.status == "repaired" and parsed.result.ids == [0, 3]
    # A truncated last step still yields its readable verdicts.
    cut = text[: text.index('"3": {"semantic": "the book"')]
    parsed = parse_path_output(cut, twin.ids)
    assert parsed.result.status == "repaired" and parsed.result.ids == [0]


def test_answer_line_wins_and_inconsistency_is_noted():
    text = 'Step 1: {"0": {"verdict": "keep"}, "1": {"verdict": "drop"}}\nAnswer: [1]'
    parsed = parse_path_output(text, [0, 1])
    assert parsed.result.ids == [1] and parsed.result.status == "ok"
    assert any("differs" in n for n in parsed.notes)
    assert parse_path_output("Answer: [7]", [0, 1]).result.ids == []
    assert parse_path_output("no idea", [0, 1]).result.status == "failed"


def test_messages_hold_query_and_twin_json():
    twin = make_twin()
    msgs = sftdt_messages(twin, "what holds coffee?")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[0]["content"] == SYSTEM_PROMPT
    assert "what holds coffee?" in msgs[1]["content"] and twin_json(twin) in msgs[1]["content"]
    msgs = sftdt_messages(twin, "q", path=ReasoningPath.from_dict(make_path()))
    assert msgs[-1]["role"] == "assistant" and msgs[-1]["content"].endswith("Answer: [0, 3]")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(path=[]), "path"),
        (lambda d: d["path"][0]["objects"].update({"9": {"verdict": "drop"}}), "path[0].objects"),
        (lambda d: (d["path"][1]["objects"].update({"1": {"verdict": "keep"}}),
                    d["path"][1].update(kept=[0, 1, 3]), d.update(answer=[0, 1, 3])), "path[1].objects"),
        (lambda d: d.update(answer=[0]), "answer"),
        (lambda d: d["path"][1]["objects"]["0"].update(verdict="maybe"), "path[1].objects.0.verdict"),
        (lambda d: d["path"][0].update(kept=[0]), "path[0].kept"),
    ],
)
def test_invalid_paths_name_the_field(mutate, field):
    d = make_path()
    mutate(d)
    with pytest.raises(DataError) as e:
        check_path(ReasoningPath.from_dict(d), make_twin().ids)
    assert e.value.field == field


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")),
                 st.lists(st.sampled_from(['Step 1: {"', '0', '": {"verdict": "', 'keep', 'drop', '"}}',
                                           "\n", "Answer: [", "]", ",", "1", "x", "{", "["])).map("".join)),
       st.one_of(st.none(), st.lists(st.integers(-3, 20), max_size=6)))
def test_parse_never_raises(text, valid):
    parsed = parse_path_output(text, valid)
    assert parsed.result.status in ("ok", "repaired", "failed")
    if valid is not None:
        assert set(parsed.result.ids) <= set(valid)
    if parsed.result.status == "failed":
        assert parsed.result.ids == []


def test_parse_non_text():
    assert parse_path_output(None).result.status == "failed"
    assert parse_path_output(12345).result.status in ("failed", "repaired")


def test_evidence_paths_of_every_synthetic_dimension_render_and_parse_back():
    """Programmatic paths with evidence (1-3 steps, one per hop) survive the SFTDT text format: rendered,
    parsed back, the same verdicts, reasons and answer."""
    from dtwinseg.data_builders.programmatic import path_with_kind
    from dtwinseg.data_builders.synthetic import generate_sample

    from dtwinseg.perception.builder import PerceptionConfig, TwinBuilder

    builder = TwinBuilder(PerceptionConfig(source="oracle"))
    lengths = set()
    for i in range(7):  # one sample per dimension
        s = generate_sample(9, "train", i)
        inst = s.scene.instances()
        twin = builder.build(s.scene.image, s.text, s.name, instances=inst, granularity=s.query.granularity)
        path, _, kind = path_with_kind(twin, s.target_mask().astype(np.uint8), query=s.text,
                                       program=s.query.program, instances=inst)
        assert kind == "program"
        lengths.add(len(path.steps))
        parsed = parse_path_output(render_path(twin, path).text, twin.ids)
        assert parsed.result.status == "ok" and parsed.result.ids == path.answer
        assert [{i: (d.verdict, d.reasoning) for i, d in st.decisions.items()} for st in parsed.steps] == \
            [{i: (d.verdict, d.reasoning) for i, d in st.decisions.items()} for st in path.steps]
    assert 1 in lengths and len(lengths) > 1  # variable number of steps
