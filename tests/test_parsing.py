"""The answer parsers on a table of nasty model outputs, and a property test: any text never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwinseg.formats.score import parse_scores
from dtwinseg.formats.select import parse_indices

VALID = range(6)

# (answer text, expected status, expected ids)
NASTY_IDS = [
    ("[3, 1]", "ok", [1, 3]),
    ("Answer: []", "ok", []),
    ("Some reasoning.\nAnswer: [2, 4]", "ok", [2, 4]),
    ("Final answer: [5]", "ok", [5]),
    ("Answer:\n[1, 2]", "ok", [1, 2]),
    ("reasoning...\nAnswer: [0, 0, 9]", "repaired", [0]),  # duplicate + out of range
    ("Answer: [1, \"x\", 2.0, 2.5, -1]", "repaired", [1, 2]),  # non-int, float, negative
    ("Answer: [\"3\", \"4\"]", "ok", [3, 4]),  # ids as strings are ints
    ("```json\n[1, 2]\n```", "repaired", [1, 2]),  # code fence
    ("```\n{\"ids\": [4]}\n```", "repaired", [4]),  # dict in a fence
    ('{"answer": [0, 5]}', "repaired", [0, 5]),
    ('{"ids": 3}', "repaired", [3]),
    ("The objects are [2] and [3]; so the answer is [3]", "repaired", [3]),  # last list in prose
    ("Answer: 1, 2 and 4", "repaired", [1, 2, 4]),  # bare ints after the marker
    ("Answer: none", "repaired", []),
    ("Answer: null", "repaired", []),
    ("[[1, 2], [3]]", "repaired", [1, 2, 3]),  # nested
    ("<think>maybe [5]</think>\nAnswer: [1]", "repaired", [1]),
    ("**Answer:** [2]", "repaired", [2]),
    ("Answer: [1, 2", "failed", []),  # torn list
    ("I cannot help with that.", "failed", []),
    ("", "failed", []),
    ("Answer: [1, 2]\nAnswer: [3]", "repaired", [3]),  # several answers: the last
    ("[" * 5000 + "]" * 5000, "repaired", []),  # deep nesting: no RecursionError escapes
    ("Answer: [٣]", "repaired", [3]),  # Arabic-Indic digit three
]


@pytest.mark.parametrize(("text", "status", "ids"), NASTY_IDS)
def test_parse_indices_table(text, status, ids):
    r = parse_indices(text, VALID)
    assert (r.status, r.ids) == (status, ids), r.notes
    if status == "repaired":
        assert r.notes, "every repair is explained"
    assert r.raw == text


def test_parse_indices_without_valid_ids_keeps_any_int():
    assert parse_indices("Answer: [7, 100]").ids == [7, 100]


def test_parse_indices_hostile_object():
    class Hostile:
        def __str__(self):
            raise RuntimeError("no")

    assert parse_indices(Hostile()).status == "failed"
    assert parse_scores(Hostile()).status == "failed"


NASTY_SCORES = [
    ('{"0": 7, "1": 2, "2": 0}', "ok", {0: 7.0, 1: 2.0, 2: 0.0}),
    ('{"0": 7, "1": 2}', "repaired", {0: 7.0, 1: 2.0}),  # object 2 not scored
    ('{"0": 7, "1": 12, "2": -1}', "repaired", {0: 7.0, 1: 10.0, 2: 0.0}),  # clamped
    ('{"0": 7, "1": "high", "9": 5, "2": 3}', "repaired", {0: 7.0, 2: 3.0}),
    ('```json\n{"scores": {"0": 1, "1": 2, "2": 3}}\n```', "repaired", {0: 1.0, 1: 2.0, 2: 3.0}),
    ('[{"id": 0, "score": 5}, {"id": "1", "score": "9/10"}, {"id": 2, "score": 1}]', "repaired",
     {0: 5.0, 1: 9.0, 2: 1.0}),
    ("Scores:\n0: 7\n1: 3/10\n2 - 4", "repaired", {0: 7.0, 1: 3.0, 2: 4.0}),
    ("| id | score |\n|---|---|\n| 0 | 7 |\n| 1 | 2 |\n| 2 | 8.5 |", "repaired", {0: 7.0, 1: 2.0, 2: 8.5}),
    ("Object 0 - score: 6\nObject 2 - score: 9", "repaired", {0: 6.0, 2: 9.0}),
    ("Here you go: {\"0\": 1, \"1\": 1, \"2\": 10}. Hope it helps", "repaired", {0: 1.0, 1: 1.0, 2: 10.0}),
    ('{"0": NaN, "1": 3, "2": 3}', "repaired", {1: 3.0, 2: 3.0}),
    ("no idea", "failed", {}),
    ("", "failed", {}),
]


@pytest.mark.parametrize(("text", "status", "scores"), NASTY_SCORES)
def test_parse_scores_table(text, status, scores):
    r = parse_scores(text, range(3))
    assert (r.status, r.scores) == (status, scores), r.notes
    if status == "repaired":
        assert r.notes


answers = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="[]{}0123456789,:\" -\nAnswer.scoreid|`json", max_size=300),
    st.builds(lambda a, b: f"{a}\nAnswer: {b}", st.text(max_size=50), st.text(max_size=50)),
)


@settings(max_examples=300, deadline=None)
@given(answers, st.lists(st.integers(-3, 30), max_size=8))
def test_arbitrary_text_never_raises(text, valid):
    r = parse_indices(text, valid)
    assert r.status in ("ok", "repaired", "failed")
    assert r.ids == sorted(set(r.ids)) and set(r.ids) <= set(valid)
    if r.status == "failed":
        assert r.ids == []
    s = parse_scores(text, valid)
    assert s.status in ("ok", "repaired", "failed")
    assert set(s.scores) <= set(valid) and all(0.0 <= v <= 10.0 for v in s.scores.values())
