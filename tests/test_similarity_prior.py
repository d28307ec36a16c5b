"""The similarity prior of forced verdicts (ReasoningConfig.similarity_prior): the untrained encoder's
query-line similarity decides among the objects only when the trained scorer judges none of them "yes";
checked on the shipped MiniLM and a tiny scorer, and the demo's choice of margin and temperature on stored
predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from reasoning_helpers import save_tiny_bert

from dtwinseg.io import DataError
from dtwinseg.reasoning import ReasoningConfig, build_reasoner
from dtwinseg.reasoning.similarity import (
    DEFAULT_EMBEDDING_MODEL,
    SentenceEmbedder,
    prior_fallback,
    verdict_answer,
)
from dtwinseg.twin import DigitalTwin


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


def _twin(semantics: list[str], size: int = 24) -> DigitalTwin:
    masks = np.zeros((len(semantics), size, size), dtype=bool)
    for k in range(len(semantics)):
        masks[k, 2 * k: 2 * k + 2, :] = True  # disjoint stripes
    return DigitalTwin.from_masks("img", masks, semantics=semantics)


def test_the_prior_decides_only_when_no_object_clears_the_margin() -> None:
    margins = {0: -1.0, 1: -1.2, 2: 3.0}
    sims = {0: 0.1, 1: 0.9, 2: 0.0}
    assert verdict_answer(margins, 2.0, sims, 0.05) == ([2], False)  # a "yes" is never overruled
    assert verdict_answer(margins, 5.0) == ([2], True)  # no prior: the likeliest yes
    # object 2's margin is far above the others', so its verdict outweighs a sharp prior against it only
    # while the prior is not too sharp
    assert verdict_answer(margins, 5.0, sims, 1.0) == ([2], True)
    assert verdict_answer(margins, 5.0, sims, 0.01) == ([1], True)
    # the rule's score by hand: log sigmoid(margin) + log softmax(sim / T)
    t = 0.2
    z = sum(math.exp(s / t) for s in sims.values())
    by_hand = {i: -math.log1p(math.exp(-margins[i])) + sims[i] / t - math.log(z) for i in margins}
    assert prior_fallback(margins, sims, t) == max(by_hand, key=by_hand.get)
    # equal scores: the lowest id, as without a prior
    assert prior_fallback({3: 0.0, 1: 0.0}, {3: 0.5, 1: 0.5}, 0.05) == 1


def test_the_shipped_encoder_ranks_a_synonym_above_other_objects() -> None:
    enc = SentenceEmbedder.shared(DEFAULT_EMBEDDING_MODEL)
    assert SentenceEmbedder.shared(DEFAULT_EMBEDDING_MODEL) is enc  # loaded once per process
    (sims,) = enc.similarities([("the hound", {0: "a brown dog on the rug", 1: "a red car", 2: "a wooden chair"})])
    assert max(sims, key=sims.get) == 0
    assert all(-1.0 <= v <= 1.0 for v in sims.values())


def test_verdicts_with_a_prior_store_it_and_answer_by_it_when_nothing_is_judged_yes(tiny_bert: Path) -> None:
    twin = _twin(["a red apple", "a blue car", "a wooden table", "a green lamp"])
    base = dict(format_name="compact", model=str(tiny_bert), device="cpu", dtype="float32", batch_size=4,
                decoding="verdicts", format={"options": {"target": "object"}})
    plain = build_reasoner(ReasoningConfig(**base, verdict_margin=50.0)).reason([(twin, "the red apple")])[0]
    assert plain.similarity is None
    cfg = ReasoningConfig(**base, verdict_margin=50.0, similarity_prior=DEFAULT_EMBEDDING_MODEL,
                          prior_temperature=0.001)
    out = build_reasoner(cfg).reason([(twin, "the red apple")])[0]
    assert out.scores == pytest.approx(plain.scores)  # the scorer's margins do not change
    assert set(out.similarity) == set(twin.ids)
    # a very sharp prior: the object whose line is the query's words, whatever the random scorer says
    assert out.ids == [0]
    assert "similarity prior" in " ".join(out.parse.notes)
    assert out.ids == [prior_fallback(out.scores, out.similarity, 0.001)]
    # the prior reads the line the scorer reads (facts included when the format writes them)
    facts = build_reasoner(cfg.replace(format={"options": {"target": "object", "facts": True}}))
    path = facts.format.verdict_path(twin, "q")
    assert path.texts[0].startswith("a red apple") and path.texts == facts.format.verdict_path(twin, "q").texts
    # an object clears the margin: it is the answer, prior or not
    low = build_reasoner(cfg.replace(verdict_margin=-50.0)).reason([(twin, "the red apple")])[0]
    assert low.ids == sorted(twin.ids)


def test_a_prior_is_checked_before_any_model_loads() -> None:
    with pytest.raises(DataError, match="similarity_prior.*decoding: verdicts"):
        ReasoningConfig(format_name="compact", model="m", similarity_prior=DEFAULT_EMBEDDING_MODEL)
    with pytest.raises(DataError, match="prior_temperature"):
        ReasoningConfig(format_name="compact", model="m", decoding="verdicts", prior_temperature=0.0)
    with pytest.raises(DataError, match="similarity_prior.*empty"):
        ReasoningConfig(format_name="compact", model="m", decoding="verdicts", similarity_prior=" ")
    from dtwinseg.workflows.demo import DemoRow

    with pytest.raises(DataError, match="similarity_prior"):
        DemoRow(target="answer", weighted=True, similarity_prior=True)
    with pytest.raises(DataError, match="similarity_prior"):
        DemoRow(target="object", weighted=True, decoding="verdicts", similarity_prior=3)


def test_the_demo_chooses_margin_and_temperature_on_stored_predictions(tmp_path: Path, monkeypatch) -> None:
    """choose_margin replays the answer rule on what an evaluation stored, with and without similarities."""
    from dtwinseg.workflows.demo import choose_margin

    twin = _twin(["a", "b", "c"])

    class Cache:
        def get(self, sid: str) -> DigitalTwin | None:
            return twin

    class Sample:
        def __init__(self, sid: str, target: int):
            self.id, self.gt_mask = sid, twin.objects[target].mask().astype(np.uint8)

    # sample s0 means object 1, s1 object 2; the scorer judges nothing above 1.0 and prefers object 0
    samples = [Sample("s0", 1), Sample("s1", 2)]
    rows = [{"id": "s0", "kind": "scored", "scores": {"0": 0.5, "1": 0.4, "2": -3.0},
             "similarity": {"0": 0.1, "1": 0.6, "2": 0.2}},
            {"id": "s1", "kind": "scored", "scores": {"0": 0.5, "1": -3.0, "2": 0.45},
             "similarity": {"0": 0.1, "1": 0.2, "2": 0.5}}]
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import dtwinseg.data_builders.registry as registry

    monkeypatch.setattr(registry, "open_dataset", lambda spec: samples)
    margin, temperature, giou = choose_margin(folder, Cache(), "spec", margins=(0.0, 1.0), temperatures=(0.05, 5.0))
    assert (margin, temperature) == (1.0, 0.05) and giou == pytest.approx(1.0)  # only the prior gets both
    for r in rows:
        del r["similarity"]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    margin, temperature, giou = choose_margin(folder, Cache(), "spec", margins=(0.0, 1.0), temperatures=(0.05,))
    assert temperature is None and margin == 0.0 and giou == pytest.approx(0.5)  # half right at best
