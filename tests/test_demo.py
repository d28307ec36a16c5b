"""The demo pipeline: compact format, base model preparation, and a shortened end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dtwinseg.parsing import parse_indices
from dtwinseg.reasoning.compact import CompactConfig, CompactStrategy, compact_answer, compact_twin_text
from dtwinseg.twin import DigitalTwin


def small_twin() -> DigitalTwin:
    masks = np.zeros((2, 20, 30), dtype=bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:20, 20:30] = True
    return DigitalTwin.from_masks("t", masks, semantics=["a small red circle", "a large blue square"])


def test_compact_text_lists_every_object_with_position_and_area() -> None:
    text = compact_twin_text(small_twin())
    lines = text.splitlines()
    assert lines[0] == "0: a small red circle, at 5 3, area 4.0"
    assert lines[1].startswith("1: a large blue square, at 24 14, area 16.7")
    box = compact_twin_text(small_twin(), CompactConfig(position="box", areas=False))
    assert box.splitlines()[1] == "1: a large blue square, box 20 10 29 19"
    last = compact_twin_text(small_twin(), CompactConfig(id_position="last"))
    assert last.splitlines()[0] == "a small red circle, at 5 3, area 4.0, id 0"
    with pytest.raises(ValueError, match="position"):
        compact_twin_text(small_twin(), CompactConfig(position="nowhere"))
    with pytest.raises(ValueError, match="id_position"):
        compact_twin_text(small_twin(), CompactConfig(id_position="middle"))


def test_compact_answer_span_and_strategy_decode_round_trip() -> None:
    text, (a, b) = compact_answer([3, 1])
    assert text == "Answer: [1, 3]" and text[a:b] == "[1, 3]"
    strat = CompactStrategy(CompactConfig())
    twin = small_twin()
    assert strat.decode("answer : [ 1 ]", twin).parse.ids == [1]  # WordPiece-decoded spacing
    assert strat.decode("[ [ [", twin).parse.status == "failed"
    assert parse_indices(text, [1, 3]).ids == [1, 3]
    msgs = strat.messages(twin, "the red circle")
    assert msgs[-1]["content"].startswith("query: the red circle\n0: a small red circle")


def test_prepare_minilm_causal_loads_as_causal_lm(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from dtwinseg.base_models import BaseModelConfig, prepare_base_model

    out = prepare_base_model(tmp_path / "base", BaseModelConfig(init_seed=1))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.is_decoder and type(model).__name__ == "BertLMHeadModel"
    assert json.loads((out / "base_model.json").read_text())["config"]["init_seed"] == 1
    stamp = (out / "config.json").stat().st_mtime_ns
    assert prepare_base_model(tmp_path / "base", BaseModelConfig(init_seed=1)) == out  # reused
    assert (out / "config.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown base model"):
        prepare_base_model(tmp_path / "x", BaseModelConfig(name="gpt-9"))


@pytest.mark.slow
def test_quick_demo_writes_summary_and_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    for label in ("base", "trained", "unweighted"):
        assert 0.0 <= summary[label]["giou"] <= 1.0 and 0.0 <= summary[label]["ciou"] <= 1.0
        assert set(summary[label]["dimensions"]) <= {"recognition", "function", "spatial", "geometric",
                                                     "multi_step", "group", "part"}
    # oracle twins come from the ground-truth instances: the bound is (near) perfect
    assert summary["oracle"]["giou"] > 0.97
    assert summary["wall_time_s"] > 0
    assert (out / "eval" / "metrics.json").is_file()
    assert (out / "eval" / "report.md").is_file()
    assert list((out / "eval").rglob("*.png")), "report plots missing"
    assert "| trained |" in res.output and "oracle bound" in res.output
    # both trainings saved a loadable model next to their recipe
    for name in ("trained", "unweighted"):
        assert (out / f"train-{name}" / "config.json").is_file()


def test_freeze_parameters_by_name_parts_and_ranges() -> None:
    from transformers import BertConfig, BertLMHeadModel

    from dtwinseg.io import DataError
    from training.run import freeze_parameters

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, is_decoder=True)
    model = BertLMHeadModel(cfg)
    total = sum(p.numel() for p in model.parameters())
    counts = freeze_parameters(model, ["embeddings", "encoder.layer.0-2"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("bert.encoder.layer.3.", "cls.")) for n in trainable)
    assert not model.get_output_embeddings().weight.requires_grad  # tied to the word embeddings
    assert counts["frozen"] + counts["trainable"] == total and counts["frozen"] > counts["trainable"]
    with pytest.raises(DataError, match="encoder.layer.9"):
        freeze_parameters(model, ["encoder.layer.7-9"])


def test_batched_generation_equals_one_by_one_for_bert_decoder() -> None:
    """Left padding in a batch must not shift BERT's absolute positions: generate derives position_ids
    from the attention mask, so a batch of prompts of different lengths decodes like one at a time."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertLMHeadModel

    from dtwinseg.base_models import packaged_minilm_path
    from dtwinseg.reasoning.backends import TransformersBackend
    from dtwinseg.reasoning.config import ReasoningConfig

    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_path()))
    torch.manual_seed(0)
    model = BertLMHeadModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, is_decoder=True)).eval()
    convs = [[{"role": "user", "content": q}] for q in
             ("query: the red circle\n0: a small red circle, at 5 3, area 4.0",
              "hi",
              "query: something to drink from\n0: a cup\n1: a large blue star, at 100 20, area 3.0")]

    def answers(batch_size: int) -> list[str]:
        cfg = ReasoningConfig(backend="transformers", model="tiny", device="cpu", batch_size=batch_size,
                              max_new_tokens=5, chat_template="plain")
        return TransformersBackend(cfg, model=model, tokenizer=tok).generate(convs)

    one_by_one = answers(1)
    assert all(one_by_one) and len(set(one_by_one)) == 3
    assert answers(3) == one_by_one
