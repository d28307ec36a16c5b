"""The sftdt format's concise path style: the paper's steps (reasoning and verdict per object still in play)
in a third of the tokens; rendered, spanned, parsed back and budgeted like the JSON style."""

from __future__ import annotations

import numpy as np
import pytest

from dtwinseg.formats import FormatConfig, build_format
from dtwinseg.formats.base import Target
from dtwinseg.formats.sftdt import ReasoningPath, parse_path_output, render_path
from dtwinseg.io import DataError
from dtwinseg.twin import DigitalTwin


def make_twin() -> DigitalTwin:
    m = np.zeros((4, 24, 24), bool)
    m[0, 2:8, 2:8] = 1
    m[1, 12:20, 0:24] = 1
    m[2, 3:6, 14:18] = 1
    m[3, 14:17, 3:6] = 1
    return DigitalTwin.from_masks("img", m, semantics=["a red mug", "a table", "a lamp", "a blue book"])


PATH = {"path": [
    {"objects": {
        "0": {"semantic": "a red mug (a container)", "reasoning": "a mug; holds drinks", "verdict": "keep"},
        "1": {"semantic": "", "reasoning": "a table, not a container", "verdict": "drop"},
        "2": {"semantic": "", "reasoning": "a lamp -> gives light", "verdict": "drop"},
        "3": {"semantic": "", "reasoning": "centre y 15 vs 5 of 0: below it", "verdict": "keep"}}},
    {"objects": {
        "0": {"semantic": "", "reasoning": "red, as the query asks", "verdict": "keep"},
        "3": {"semantic": "", "reasoning": "blue, not red", "verdict": "drop"}}}],
    "answer": [0]}


def test_concise_text_spans_and_separators():
    twin = make_twin()
    r = render_path(twin, ReasoningPath.from_dict(PATH), style="concise", semantic=False)
    assert r.text == ("Step 1: 0: a mug, holds drinks -> keep; 1: a table, not a container -> drop; "
                      "2: a lamp - gives light -> drop; 3: centre y 15 vs 5 of 0: below it -> keep; kept [0, 3]\n"
                      "Step 2: 0: red, as the query asks -> keep; 3: blue, not red -> drop; kept [0]\n"
                      "Answer: [0]")
    assert [r.text[a:b] for a, b in r.decision_spans] == ["0", "keep", "1", "drop", "2", "drop", "3", "keep",
                                                         "[0, 3]", "0", "keep", "3", "drop", "[0]"]
    bare = render_path(twin, ReasoningPath.from_dict(PATH), style="concise", kept=False).text
    assert bare.splitlines()[1] == "Step 2: 0: red, as the query asks -> keep; 3: blue, not red -> drop"
    assert [r.text[a:b] for a, b in r.answer_spans] == ["[0]"]
    with_semantic = render_path(twin, ReasoningPath.from_dict(PATH), style="concise", semantic=True).text
    assert with_semantic.startswith("Step 1: 0 (a red mug (a container)): a mug, holds drinks -> keep; 1 (a table): ")
    # The paper's JSON steps are unchanged by the concise options.
    assert render_path(twin, ReasoningPath.from_dict(PATH), kept=False).text.startswith('Step 1: {"0": {"semantic"')


def test_concise_parses_back_and_salvages_a_truncated_step():
    twin = make_twin()
    text = render_path(twin, ReasoningPath.from_dict(PATH), style="concise").text
    parsed = parse_path_output(text, twin.ids)
    assert parsed.result.status == "ok" and parsed.result.ids == [0]
    assert [s.kept for s in parsed.steps] == [[0, 3], [0]]
    assert parsed.steps[0].dropped == [1, 2]
    # Cut inside step 2 (no Answer line): the readable clause of step 2 decides, status repaired.
    cut = text[: text.index("; 3: blue")]
    assert "kept [0]" not in cut
    repaired = parse_path_output(cut, twin.ids)
    assert repaired.result.status == "repaired" and repaired.result.ids == [0]
    # An id the twin does not have is not an answer.
    assert parse_path_output("Step 1: 7: a cup -> keep; 1: no -> drop", twin.ids).result.ids == []


def test_format_option_style_reaches_targets_budget_and_checks():
    twin = make_twin()
    path = ReasoningPath.from_dict(PATH)
    concise = build_format("sftdt", FormatConfig.from_dict({"options": {"style": "concise"}}))
    paper = build_format("sftdt", FormatConfig.from_dict({}))
    short = concise.target(twin, Target(answer=[0], path=path))
    long = paper.target(twin, Target(answer=[0], path=path))
    assert short.text.startswith("Step 1: 0: a mug") and long.text.startswith('Step 1: {"0": {"semantic"')
    assert len(short.text) < len(long.text) / 2
    assert concise.parse(short.text, twin).parse.ids == [0]
    # The budget covers the rendered path (3 characters per token is generous for this text) and is
    # below the JSON style's.
    assert len(short.text) / 3 < concise.budget(twin) < paper.budget(twin)
    with pytest.raises(DataError, match="style"):
        build_format("sftdt", FormatConfig.from_dict({"options": {"style": "yaml"}}))
    with pytest.raises(DataError, match="semantic"):
        build_format("sftdt", FormatConfig.from_dict({"options": {"style": "concise", "semantic": "yes"}}))
    with pytest.raises(DataError, match="kept"):
        build_format("sftdt", FormatConfig.from_dict({"options": {"style": "concise", "kept": 1}}))


def test_concise_spans_weight_the_id_verdict_and_answer_tokens():
    from dtwinseg.data_builders.sft_dataset import ANSWER, DECISION, load_tokenizer, tokenize_completion

    from tests.sft_helpers import MINILM

    tok = load_tokenizer(MINILM)
    twin = make_twin()
    fmt = build_format("sftdt", FormatConfig.from_dict({"options": {"style": "concise", "kept": False}}))
    completion = fmt.target(twin, Target(answer=[0], path=ReasoningPath.from_dict(PATH)))
    ids, kinds = tokenize_completion(tok, fmt.messages(twin, "the red mug"), completion)
    words = tok.convert_ids_to_tokens(ids)
    decision = [w for w, k in zip(words, kinds, strict=True) if k == DECISION]
    answer = [w for w, k in zip(words, kinds, strict=True) if k == ANSWER]
    # Every object id and verdict of the two steps, in order; the digits inside the reasoning are not decisions.
    assert decision == ["0", "keep", "1", "drop", "2", "drop", "3", "keep", "0", "keep", "3", "drop"]
    assert answer == ["[", "0", "]"]


def test_concise_parser_is_linear_on_hostile_text():
    twin = make_twin()
    # Long lines with many ids, arrows and no verdicts, or no separators at all: a backtracking regex would
    # take minutes on these; the parser reads them in one pass and finds nothing to answer.
    for body in ("0: " + "-> " * 40_000, "1" * 60_000, "0: x;" * 20_000, ("0 -" * 30_000) + "> keep"):
        parsed = parse_path_output("Step 1: " + body, twin.ids)
        assert parsed.result.status in ("failed", "repaired")
    assert parse_path_output("Step 1: " + "0: x;" * 20_000 + " 2: y -> keep", twin.ids).result.ids == [2]
