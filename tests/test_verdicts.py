"""Forced verdict decoding (ReasoningConfig.decoding: verdicts): the reasoner writes the compact path's
object lines, the model only picks each verdict; checked against unpadded forwards of a real tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from reasoning_helpers import make_twin, save_tiny_bert, save_tiny_llama

from dtwinseg.io import DataError
from dtwinseg.reasoning import ReasoningConfig, build_reasoner
from dtwinseg.reasoning.verdicts import VerdictReasoner

PATH_FORMAT = {"options": {"target": "path"}}


def _cfg(model: Path, **kw) -> ReasoningConfig:
    return ReasoningConfig(format_name="compact", model=str(model), device="cpu", dtype="float32",
                           decoding="verdicts", format=PATH_FORMAT, **kw)


def _seq_logp(model, tok, text: str, start: int) -> tuple[list[int], float]:
    import torch

    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return ids, float(sum(logp[k - 1, ids[k]] for k in range(start, len(ids))))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=3)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "model")


@pytest.mark.parametrize("which", ["tiny", "tiny_bert"])
def test_each_verdict_is_scored_after_the_models_own_earlier_verdicts_like_an_unpadded_forward(which, request) -> None:
    # Byte-level BPE (verdict words of several tokens: every candidate is forwarded) and WordPiece (one token
    # each: the next-token distribution scores both). Twins of different sizes: right padding, rows leaving
    # the batch early.
    reasoner = build_reasoner(_cfg(request.getfixturevalue(which), batch_size=3))
    assert isinstance(reasoner, VerdictReasoner)
    items = [(make_twin(1, n=4), "the red cup"), (make_twin(2, n=2), "all the trees"), (make_twin(5, n=5), "the sun")]
    outs = reasoner.reason(items)
    model, tok = reasoner.backend._ensure_loaded()
    fmt = reasoner.format
    for (twin, query), out in zip(items, outs, strict=True):
        text = reasoner.backend.prompt_text(fmt.messages(twin, query))
        path = ""
        for obj, head in fmt.verdict_path(twin, query).steps:
            prefix = text + path + head
            yes_ids, _ = _seq_logp(model, tok, prefix + "yes", 0)
            no_ids, _ = _seq_logp(model, tok, prefix + "no", 0)
            start = next(k for k, (a, b) in enumerate(zip(yes_ids, no_ids, strict=False)) if a != b)
            margin = _seq_logp(model, tok, prefix + "yes", start)[1] - _seq_logp(model, tok, prefix + "no", start)[1]
            assert out.scores[obj] == pytest.approx(margin, abs=1e-3)
            path += head + ("yes" if margin > 0 else "no") + "\n"
        yes = sorted(i for i, m in out.scores.items() if m > 0)
        assert out.ids == (yes or [max(out.scores, key=out.scores.get)])
        assert out.text == path + f"Answer: [{', '.join(map(str, out.ids))}]"
        assert out.parse.status == "ok" and fmt.parse(out.text, twin).parse.ids == out.ids  # the text reads back


def test_a_twin_without_objects_is_answered_empty_without_a_model_call(tiny: Path) -> None:
    from dtwinseg.twin import DigitalTwin

    empty = DigitalTwin("e", 8, 8, [])
    out = build_reasoner(_cfg(tiny)).reason([(empty, "anything")])
    assert out[0].ids == [] and out[0].finish_reason == "empty"


def test_verdict_decoding_is_refused_where_it_cannot_work(tiny: Path) -> None:
    with pytest.raises(DataError, match="decoding.*generate, verdicts"):
        ReasoningConfig(format_name="compact", model=str(tiny), decoding="beam")
    with pytest.raises(DataError, match="decoding.*backend transformers"):
        ReasoningConfig(format_name="compact", backend="openai", model="gpt-4o", decoding="verdicts",
                        base_url="http://127.0.0.1:9/v1")
    with pytest.raises(DataError, match="decoding.*target: path"):
        build_reasoner(ReasoningConfig(format_name="compact", model=str(tiny), decoding="verdicts"))
    with pytest.raises(DataError, match="decoding.*per-object verdict path"):
        build_reasoner(ReasoningConfig(format_name="select", model=str(tiny), decoding="verdicts"))


def test_per_object_target_judges_each_object_in_its_own_prompt(tiny_bert: Path) -> None:
    cfg = ReasoningConfig(format_name="compact", model=str(tiny_bert), device="cpu", dtype="float32", batch_size=4,
                          decoding="verdicts", format={"options": {"target": "object"}})
    reasoner = build_reasoner(cfg)
    items = [(make_twin(1, n=4), "the red cup"), (make_twin(2, n=3), "all the trees")]
    outs = reasoner.reason(items)  # 7 objects in batches of 4: one batch spans both scenes
    model, tok = reasoner.backend._ensure_loaded()
    fmt = reasoner.format
    for (twin, query), out in zip(items, outs, strict=True):
        for o in twin.objects:
            prompt = reasoner.backend.prompt_text(fmt.object_messages(twin, query, o.id))
            assert f"object: {o.semantic}" in prompt and prompt.count(", id ") == 1
            _, yes = _seq_logp(model, tok, prompt + "yes", len(tok(prompt, add_special_tokens=False)["input_ids"]))
            _, no = _seq_logp(model, tok, prompt + "no", len(tok(prompt, add_special_tokens=False)["input_ids"]))
            assert out.scores[o.id] == pytest.approx(yes - no, abs=1e-3)
        yes_ids = sorted(i for i, m in out.scores.items() if m > 0)
        assert out.ids == (yes_ids or [max(out.scores, key=out.scores.get)])
    with pytest.raises(DataError, match="decoding: verdicts"):
        build_reasoner(cfg.replace(decoding="generate"))


@pytest.mark.parametrize("which", ["tiny", "tiny_bert"])
def test_continuations_on_a_shared_cache_equal_unpadded_forwards(which, request) -> None:
    """Groups of different prefix lengths whose continuations share a head, differ in length, and one of
    which is the start of another: the cached tails give each continuation's unpadded log-probability."""
    import torch
    from transformers import AutoModelForCausalLM

    from dtwinseg.reasoning.verdicts import _cached_tails, continuation_logprobs

    model = AutoModelForCausalLM.from_pretrained(str(request.getfixturevalue(which))).eval()
    groups = [([5, 9, 14, 3, 8, 21], [[30, 31, 7], [30, 31, 9, 2], [30, 31]]),
              ([11, 4], [[6, 12], [6, 13], [40]]),
              ([2, 2, 2, 2, 2, 2, 2, 2, 2], [[17, 18, 19, 20], [17, 18, 19, 21]]),
              ([7, 8, 9], [[3], [4]])]  # one-token continuations: one sequence, no cache
    want = []
    for prefix, conts in groups:
        row = []
        for c in conts:
            with torch.inference_mode():
                logp = torch.log_softmax(model(input_ids=torch.tensor([prefix + c])).logits[0].float(), -1)
            row.append(float(sum(logp[len(prefix) + k - 1, t] for k, t in enumerate(c))))
        want.append(row)
    widths: list[int] = []  # positions the LM head projects per call: only those read, not the padded width
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, o: widths.append(o.shape[1]))
    got = continuation_logprobs(model, "cpu", 0, groups)
    hook.remove()
    assert widths == [4, 3, 1]  # shared parts (head + first tail token; rows are 12 wide), tails, one-token group
    assert _cached_tails(model, "cpu", 0, groups[:3]) is not None  # the cached path really ran
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)


def test_a_prefix_lm_checkpoint_reads_each_prompt_both_ways(tiny_bert: Path, tmp_path: Path) -> None:
    """A checkpoint whose config records prefix-LM training (dtwinseg.prefix_lm) is scored on its prompts
    read bidirectionally, in padded batches, as each prompt alone; the same weights unmarked score causally."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dtwinseg.prefix_lm import PREFIX_LM_ATTR, bidirectional
    from dtwinseg.reasoning.verdicts import continuation_logprobs

    model = AutoModelForCausalLM.from_pretrained(str(tiny_bert)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20.0) if p.dim() > 1 else None
    setattr(model.config, PREFIX_LM_ATTR, True)
    folder = tmp_path / "prefix"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(folder)
    marked = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert getattr(marked.config, PREFIX_LM_ATTR) is True  # survives save / load
    groups = [([5, 9, 14, 3, 8, 21], [[30], [31]]), ([11, 4], [[6], [7]])]
    got = continuation_logprobs(marked, "cpu", 0, groups)
    for (prefix, conts), scores in zip(groups, got, strict=True):
        with torch.inference_mode(), bidirectional(marked):
            logp = torch.log_softmax(marked(input_ids=torch.tensor([prefix])).logits[0, -1], -1)
        assert scores == pytest.approx([float(logp[c[0]]) for c in conts], abs=1e-4)
    assert marked.config.is_decoder  # restored after the read
    setattr(marked.config, PREFIX_LM_ATTR, False)
    causal = continuation_logprobs(marked, "cpu", 0, groups)
    assert abs(causal[0][0] - got[0][0]) > 1e-3
    setattr(marked.config, PREFIX_LM_ATTR, True)
    with pytest.raises(ValueError, match="single-token"):
        continuation_logprobs(marked, "cpu", 0, [([5, 9], [[30, 31], [30, 32]])])


def test_a_prefix_lm_checkpoint_refuses_whole_scene_paths(tiny_bert: Path, tmp_path: Path) -> None:
    """A path's earlier verdicts were trained as causal completion: a prefix-LM checkpoint says so in one
    error naming the field instead of reading them both ways."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dtwinseg.prefix_lm import mark_prefix_lm

    model = AutoModelForCausalLM.from_pretrained(str(tiny_bert))
    mark_prefix_lm(model)
    folder = tmp_path / "prefix"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(folder)
    reasoner = build_reasoner(_cfg(folder))
    with pytest.raises(DataError, match="prefix-LM") as err:
        reasoner.reason([(make_twin(1, n=3), "the red cup")])
    assert err.value.field == "format.options.target"
