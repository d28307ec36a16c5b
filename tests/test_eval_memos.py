"""What evaluation remembers between the checkpoints of one run (the oracle bound per sample, the scene facts
per twin, the fp32 copy of a half-precision LM head) gives exactly what computing afresh gives, and is never
stale: a changed twin, ground truth or weight is computed again."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dtwinseg.eval.baselines import EmbeddingPicker
from dtwinseg.eval.records import _oracle_stats, oracle_stats

from dtwinseg.formats.facts import object_facts
from dtwinseg.reasoning.verdicts import _fp32_head
from dtwinseg.twin import DigitalTwin


def rect(x0: int, y0: int, x1: int, y1: int, h: int = 64, w: int = 80) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def scene(semantics: list[str] | None = None, shift: int = 0) -> DigitalTwin:
    masks = np.stack([rect(2, 2, 30, 30), rect(40 + shift, 5, 60 + shift, 25), rect(10, 40, 70, 60),
                      rect(5, 5, 12, 12)])
    return DigitalTwin.from_masks("s", masks, semantics=semantics or ["a red mug", "a blue mug", "a wooden table",
                                                                      "the handle of the red mug"])


def test_the_oracle_is_remembered_per_twin_and_ground_truth_and_never_stale() -> None:
    twin = scene()
    gt = rect(38, 3, 62, 27).astype(np.uint8)
    first = oracle_stats(twin, gt)
    assert first == _oracle_stats(twin, gt)
    assert first["oracle_ids"] == [1]
    # a twin reloaded from its file hits the memo and gives the same answer (a copy: mutating it is harmless)
    again = oracle_stats(DigitalTwin.from_json(twin.to_json()), gt)
    assert again == first
    again["oracle_ids"].append(99)
    assert oracle_stats(twin, gt)["oracle_ids"] == [1]
    # another ground truth, or a moved mask, is computed afresh
    gt2 = rect(2, 2, 30, 30).astype(np.uint8)
    assert oracle_stats(twin, gt2) == _oracle_stats(twin, gt2)
    assert oracle_stats(twin, gt2)["oracle_ids"] == [0]
    moved = scene(shift=15)
    assert oracle_stats(moved, gt) == _oracle_stats(moved, gt)
    assert oracle_stats(moved, gt)["oracle_iou"] != first["oracle_iou"]
    # ignored pixels (255) are part of the key too
    gt3 = gt.copy()
    gt3[0:10, :] = 255
    assert oracle_stats(twin, gt3) == _oracle_stats(twin, gt3)


def test_facts_are_remembered_per_twin_content_and_never_stale() -> None:
    twin = scene()
    facts = object_facts(twin)
    assert object_facts(DigitalTwin.from_json(twin.to_json())) == facts
    facts[0].append("mutated")
    assert "mutated" not in object_facts(twin)[0]
    # other wording of one object changes its facts (here: the mugs are no longer two of a kind)
    reworded = scene(["a red mug", "a blue bowl", "a wooden table", "the handle of the red mug"])
    assert object_facts(reworded) != object_facts(twin)
    assert any("bowl" in f for f in object_facts(reworded)[1])


def test_the_fp32_head_copy_follows_the_weights() -> None:
    head = torch.nn.Linear(8, 5).to(torch.bfloat16)
    w, b = _fp32_head(head)
    assert w.dtype == torch.float32 and torch.equal(w, head.weight.float()) and torch.equal(b, head.bias.float())
    assert _fp32_head(head)[0] is w  # the same copy while nothing changed
    with torch.no_grad():
        head.weight.add_(1.0)  # an in-place update (a training step, a merged adapter)
    w2, _ = _fp32_head(head)
    assert w2 is not w and torch.equal(w2, head.weight.float())
    with torch.inference_mode():
        x = torch.randn(3, 8)
        assert torch.allclose(torch.nn.functional.linear(x, *_fp32_head(head)), x @ head.weight.float().T
                              + head.bias.float())
    y = torch.nn.functional.linear(torch.randn(2, 8, requires_grad=True), *_fp32_head(head))
    y.sum().backward()  # usable outside inference mode too


@pytest.mark.slow
def test_length_sorted_embedding_batches_give_each_text_its_own_vector() -> None:
    picker = EmbeddingPicker(batch_size=3)
    texts = ["a mug", "the large red ceramic mug on the left side of the wooden kitchen table", "table",
             "a blue bowl, small", "", "what holds the coffee? the one nearest to the window, please"]
    encoder = picker.encoder
    together = encoder._encode(texts)  # no memo: every text encoded in its batch
    alone = torch.cat([encoder._encode([t]) for t in texts])
    assert together.shape == alone.shape
    assert torch.allclose(together, alone, atol=1e-5)
    # the memo: a text is encoded once per process (the baseline and a prior read the same lines)
    calls = []
    hook = encoder._model.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        first = picker.embed(texts + ["a new text", "a mug"])
        n = len(calls)
        again = picker.embed(["a new text", *texts])
    finally:
        hook.remove()
    assert n >= 1 and len(calls) == n  # nothing encoded the second time
    assert torch.equal(again[0], first[len(texts)]) and torch.equal(again[1:], first[:len(texts)])
    assert torch.allclose(first[:len(texts)], together, atol=1e-5)


def test_a_bf16_encoder_keeps_the_vectors_and_has_its_own_memo() -> None:
    """Under a bf16 reasoning config the prior and the embedding row encode in bf16 (about 3x faster on CPU):
    the vectors stay within bf16 rounding of fp32 ones, and the two dtypes never share a memo."""
    from dtwinseg.reasoning.similarity import SentenceEmbedder, encoder_dtype

    assert encoder_dtype("bfloat16", "cpu") == "bfloat16" and encoder_dtype("auto", "cpu") == "float32"
    assert encoder_dtype("auto", "cuda:0") == "bfloat16" and encoder_dtype("float16", "cpu") == "float32"
    texts = ["a mug", "the large red ceramic mug on the left side of the table", "a blue bowl, small"]
    fp32 = EmbeddingPicker(batch_size=3).embed(texts)
    bf16_encoder = SentenceEmbedder.shared(batch_size=3, dtype="bfloat16")
    assert bf16_encoder is not EmbeddingPicker(batch_size=3).encoder
    bf16 = bf16_encoder.embed(texts)
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert (bf16 * fp32).sum(-1).min() > 0.99  # cosine of each text's two vectors
    with pytest.raises(ValueError, match="dtype"):
        SentenceEmbedder(dtype="int8")
