"""Each format end to end on a tiny random-weight Llama (plumbing, batching, failure accounting) and
the formats' decoding on scripted answers."""

from __future__ import annotations

import json

import pytest
from reasoning_helpers import make_twin, save_tiny_llama, tiny_llama, train_tokenizer

from dtwinseg.formats import available_formats
from dtwinseg.formats.score import parse_score_answer
from dtwinseg.formats.select import parse_indices
from dtwinseg.formats.sftdt import parse_path_output, render_path
from dtwinseg.io import DataError
from dtwinseg.reasoning import (
    GenerationFailure,
    LLMReasoner,
    ReasoningConfig,
    TransformersBackend,
    make_backend,
)
from dtwinseg.twin import DigitalTwin

QUERIES = ["the red cup", "something to sit on", "all green things left of the house", "x"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model folder, model, tokenizer): a tiny Llama saved to disk and the same objects in memory."""
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return folder, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def items():
    return [(make_twin(s), q) for s, q in enumerate(QUERIES)]


class Scripted:
    """A backend that answers from a function of the conversation."""

    name = "scripted"

    def __init__(self, answer):
        self.answer = answer
        self.calls = 0

    def generate(self, conversations):
        self.calls += 1
        return [self.answer(c) for c in conversations]


@pytest.mark.parametrize("format_name", ["select", "sftdt", "score"])
def test_format_end_to_end_batched_equals_one_by_one(tiny, format_name):
    folder, model, tok = tiny
    cfg = ReasoningConfig(format_name=format_name, model=str(folder), max_new_tokens=12, batch_size=4)
    batched = LLMReasoner(cfg).reason(items())  # loads from the folder (real loading path)
    one = cfg.replace(batch_size=1)
    single = LLMReasoner(one, TransformersBackend(one, model, tok)).reason(items())
    assert [o.text for o in batched] == [o.text for o in single]
    for (twin, _), out in zip(items(), batched, strict=True):
        assert out.format_name == format_name
        assert set(out.ids) <= set(twin.ids)
        # failure accounting: the status is exactly what the format's parser says about the text
        if format_name == "select":
            expected = parse_indices(out.text, twin.ids)
        elif format_name == "sftdt":
            expected = parse_path_output(out.text, twin.ids).result
        else:
            expected = parse_score_answer(out.text, twin.ids)
        assert out.parse.status == expected.status
        if out.parse.status == "failed":
            assert out.ids == []


def test_prompt_uses_chat_template_and_json_twin(tiny):
    _, model, tok = tiny
    cfg = ReasoningConfig(max_new_tokens=4)
    backend = TransformersBackend(cfg, model, tok)
    twin = make_twin(3)
    text = backend.prompt_text(LLMReasoner(cfg, backend).messages(twin, "the red cup"))
    assert text.startswith("<s><|system|>") and text.endswith("<|assistant|>")
    assert f'"{twin.objects[0].semantic}; box' in text and "Query: the red cup" in text
    plain = TransformersBackend(cfg.replace(chat_template="plain"), model, tok)
    ptext = plain.prompt_text(LLMReasoner(cfg, plain).messages(twin, "the red cup"))
    assert ptext.startswith("### System:\n") and ptext.endswith("\n\n### Assistant:\n")


def test_plain_prompt_matches_the_sft_training_format():
    """Inference must see exactly the prompt the SFTDT data was tokenised with (no chat template)."""
    from dtwinseg.formats.select import select_messages
    from dtwinseg.prompting import PLAIN_TEMPLATE, render_plain

    msgs = select_messages(make_twin(1), "the cup")
    expected = PLAIN_TEMPLATE.format(system=msgs[0]["content"], user=msgs[1]["content"], assistant="")
    assert render_plain(msgs) == expected


def test_lora_adapter_folder_loads_on_its_base(tiny, tmp_path):
    """model + adapter in the config give the same answers as the PeftModel built in memory."""
    import torch
    from peft import LoraConfig, get_peft_model

    folder, model, tok = tiny
    torch.manual_seed(1)
    peft_model = get_peft_model(tiny_llama(tok), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                            init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = ReasoningConfig(model=str(folder), adapter=str(tmp_path / "adapter"), max_new_tokens=8)
    from_disk = LLMReasoner(cfg).reason(items()[:2])
    in_memory = LLMReasoner(cfg, TransformersBackend(cfg, peft_model.eval(), tok)).reason(items()[:2])
    base = LLMReasoner(cfg, TransformersBackend(cfg, model, tok)).reason(items()[:2])
    assert [o.text for o in from_disk] == [o.text for o in in_memory]
    assert [o.text for o in from_disk] != [o.text for o in base]


def test_broken_checkpoint_is_loaded_once_and_named(tiny, tmp_path, monkeypatch):
    """A checkpoint folder with truncated weights: one error naming the folder, and later batches fail at
    once with the same error instead of loading the model again for every sample."""
    import shutil

    from dtwinseg.reasoning import backends

    folder, _, _ = tiny
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    calls = []
    real = backends.load_causal_lm
    monkeypatch.setattr(backends, "load_causal_lm", lambda *a, **k: calls.append(a) or real(*a, **k))
    backend = TransformersBackend(ReasoningConfig(model=str(broken), max_new_tokens=4))
    for _ in range(3):
        with pytest.raises(DataError, match=r"broken: cannot load the model: \w+"):
            backend.generate([[{"role": "user", "content": "hi"}]])
    assert len(calls) == 1


def test_failing_sample_is_isolated_and_counted(tiny, monkeypatch):
    _, model, tok = tiny
    cfg = ReasoningConfig(max_new_tokens=4, batch_size=4)
    backend = TransformersBackend(cfg, model, tok)
    real = backend._generate_batch

    def flaky(texts, budgets):
        if any("poison" in t for t in texts):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(texts, budgets)

    monkeypatch.setattr(backend, "_generate_batch", flaky)
    its = items()
    its[1] = (its[1][0], "poison query")
    outs = LLMReasoner(cfg, backend).reason(its)
    assert [o.parse.status == "failed" and o.error is not None for o in outs] == [False, True, False, False]
    assert "out of memory" in outs[1].error and outs[1].ids == []
    assert isinstance(backend.generate([[{"role": "user", "content": "poison"}]])[0], GenerationFailure)


def test_empty_twin_needs_no_generation():
    backend = Scripted(lambda c: "Answer: [0]")
    empty = DigitalTwin("e", 8, 8)
    outs = LLMReasoner(ReasoningConfig(), backend).reason([(empty, "q")])
    assert outs[0].ids == [] and outs[0].parse.status == "ok" and backend.calls == 0


def test_select_decodes_and_accounts():
    answers = iter(["Answer: [1]", "Answer: [1, 1, 99]", "no idea"])
    r = LLMReasoner(ReasoningConfig(), Scripted(lambda c: next(answers)))
    outs = r.reason([(make_twin(s, n=3), "q") for s in range(3)])
    assert [(o.parse.status, o.ids) for o in outs] == [("ok", [1]), ("repaired", [1]), ("failed", [])]


@pytest.mark.parametrize(("select", "margin", "minimum", "expected"), [
    ("best", 1.0, 0.0, [1]),  # single best
    ("margin", 1.5, 0.0, [1, 2]),  # within 1.5 of 9
    ("margin", 10.0, 0.0, [0, 1, 2, 3]),
    ("best", 1.0, 9.5, []),  # best below the minimum: empty answer
])
def test_score_rerank(select, margin, minimum, expected):
    cfg = ReasoningConfig(format_name="score", format={"options": {"select": select, "margin": margin, "min": minimum}})
    r = LLMReasoner(cfg, Scripted(lambda c: '{"0": 2, "1": 9, "2": 8, "3": 0}'))
    out = r.reason([(make_twin(0, n=4), "q")])[0]
    assert out.ids == expected and out.scores == {0: 2.0, 1: 9.0, 2: 8.0, 3: 0.0}
    assert out.parse.status == "ok"


def test_score_ties_and_missing_objects():
    cfg = ReasoningConfig(format_name="score")
    out = LLMReasoner(cfg, Scripted(lambda c: '{"2": 7, "3": 7}')).reason([(make_twin(0, n=4), "q")])[0]
    assert out.ids == [2] and out.scores[0] == 0.0 and out.parse.status == "repaired"


def test_sftdt_reads_the_rendered_path():
    import numpy as np
    from dtwinseg.data_builders.programmatic import programmatic_path

    twin = make_twin(5, n=4)
    gt = twin.masks()[[1, 3]].any(0).astype(np.uint8)
    path, _ = programmatic_path(twin, gt)
    cfg = ReasoningConfig(format_name="sftdt")
    out = LLMReasoner(cfg, Scripted(lambda c: render_path(twin, path).text)).reason([(twin, "q")])[0]
    assert out.ids == sorted(path.answer) == [1, 3] and out.parse.status == "ok"


def test_config_yaml_round_trip_and_errors(tmp_path):
    import yaml

    cfg = ReasoningConfig(format_name="score", backend="openai", model="gpt-4o", format={"options": {"select": "margin"}})
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"reasoning": cfg.to_dict()}))
    assert ReasoningConfig.from_yaml(p) == cfg
    p.write_text("strategy: score\nscore_select: margin\nspatial: {max_relations: 3}\n")  # pre-format keys
    old = ReasoningConfig.from_yaml(p)
    assert old.format.options == {"select": "margin"} and old.spatial.max_relations == 3
    p.write_text("strategy: guess\n")
    with pytest.raises(DataError, match="strategy"):
        ReasoningConfig.from_yaml(p)
    p.write_text("spatial: {max_relations: 2, bogus: 1}\n")
    with pytest.raises(DataError, match="spatial.bogus"):
        ReasoningConfig.from_yaml(p)
    assert "OPENAI_API_KEY" in json.dumps(cfg.to_dict())  # only the variable's name


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted(Path(__file__).resolve().parent.parent.glob("recipes/reasoning/*.yaml"))
    assert recipes
    for p in recipes:
        cfg = ReasoningConfig.from_yaml(p)
        assert make_backend.__name__ and cfg.format_name in available_formats()


def test_bert_as_decoder_generates_batched_like_single(tmp_path):
    """BERT-style encoders load with is_decoder=True; left padding keeps batched == one by one."""
    import torch
    from transformers import BertConfig, BertLMHeadModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789[]{}:,\".-")
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=4096, initializer_range=0.2)
    BertLMHeadModel(cfg).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    rcfg = ReasoningConfig(model=str(tmp_path / "bert"), max_new_tokens=6, batch_size=4)
    backend = make_backend(rcfg)
    outs = LLMReasoner(rcfg, backend).reason(items())
    assert backend._model.config.is_decoder
    one = rcfg.replace(batch_size=1)
    single = LLMReasoner(one, TransformersBackend(one, backend._model, backend._tokenizer)).reason(items())
    assert [o.text for o in outs] == [o.text for o in single]


def test_generation_stops_at_the_models_position_limit_and_counts_truncated(tmp_path):
    """A BERT-style model with 512 (here 48) absolute positions: prompt + budget past the limit used to
    fail with 'index out of bounds'; now the budget shrinks to the room left and the answer is truncated."""
    import torch
    from transformers import BertConfig, BertLMHeadModel, BertTokenizerFast

    from dtwinseg.reasoning.backends import Truncated

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789[]{}:,\".-")
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=48, initializer_range=0.2, is_decoder=True)
    model = BertLMHeadModel(cfg).eval()
    rcfg = ReasoningConfig(model="unused", max_new_tokens=40, batch_size=2, chat_template="plain")
    backend = TransformersBackend(rcfg, model, tok)
    prompt = "a b c d e f g h i j k l m n o p q r s t"  # 20 tokens
    out = backend._generate_batch([prompt, prompt[:10]], [40, 40])
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    for answer in out:
        assert isinstance(answer, Truncated) and answer.budget == 48 - n_prompt
    with pytest.raises(ValueError, match="at most 48 positions"):
        backend._generate_batch([" ".join(["a"] * 60)], [4])


def test_tiny_llama_in_memory_builder_is_deterministic():
    tok = train_tokenizer(["Answer: [1]"] * 3)
    a, b = tiny_llama(tok, seed=3), tiny_llama(tok, seed=3)
    import torch

    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
