"""parse_indices on the everyday answers: an exact list, an Answer: line, garbage (never raises)."""

from dtwinseg.formats.select import parse_indices


def test_exact_list_is_ok():
    r = parse_indices("[3, 1]", valid_ids=range(5))
    assert r.status == "ok" and r.ids == [1, 3]


def test_answer_line_and_empty_answer():
    assert parse_indices("Answer: []", valid_ids=[0]).status == "ok"
    r = parse_indices("reasoning...\nAnswer: [0, 0, 9]", valid_ids=[0, 1])
    assert r.status == "repaired" and r.ids == [0]


def test_garbage_fails_without_raising():
    r = parse_indices("I cannot help with that")
    assert r.status == "failed" and r.ids == []
    assert parse_indices(None).status == "failed"
