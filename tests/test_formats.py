"""Reasoning formats: the registry, each format's target -> parse round trip, one FormatConfig saved by
build-sft and read back by the reasoning config (mismatches refused), generation budgets from the twin and
truncated answers counted apart, and the trainable Rea2Seg scorer (score targets from ground-truth overlap
-> build-sft -> SFTDTTrainer steps -> the reasoner parses the trained model's answers)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from dtwinseg.data_builders.sft_dataset import (
    DECISION,
    SFTDatasetConfig,
    build_sft_dataset,
    encode_record,
    save_dataset,
)
from reasoning_helpers import make_twin
from sft_helpers import bpe_tokenizer, records

from dtwinseg.formats import (
    FormatConfig,
    Target,
    available_formats,
    build_format,
    load_format,
    overlap_scores,
    register_format,
    save_format,
)
from dtwinseg.formats import base as format_base
from dtwinseg.formats.score import render_scores
from dtwinseg.formats.select import SelectFormat
from dtwinseg.io import DataError
from dtwinseg.reasoning import LLMReasoner, ReasoningConfig, Truncated
from dtwinseg.twin import DigitalTwin

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


class Scripted:
    """A backend answering from a function of (conversation, budget); records the budgets it was given."""

    name = "scripted"

    def __init__(self, answer):
        self.answer, self.budgets = answer, []

    def generate(self, conversations, max_new_tokens=None):
        self.budgets.append(list(max_new_tokens or []))
        return [self.answer(c, b) for c, b in zip(conversations, max_new_tokens, strict=True)]


def _spans_text(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[a:b] for a, b in spans]


# --- registry and config --------------------------------------------------------------------------------
def test_registry_lists_builds_and_refuses():
    assert {"select", "sftdt", "score"} <= set(available_formats())
    assert isinstance(build_format("select"), SelectFormat)
    with pytest.raises(DataError, match="not a reasoning format"):
        build_format("guess")
    with pytest.raises(ValueError, match="already registered"):
        register_format("select", lambda cfg: SelectFormat(cfg))
    with pytest.raises(DataError, match=r"format\.options\.bogus"):
        build_format("sftdt", {"options": {"bogus": 1}})
    with pytest.raises(DataError, match=r"format\.options\.select"):
        build_format("score", {"options": {"select": "all"}})
    with pytest.raises(DataError, match=r"format\.spatial\.bogus"):
        FormatConfig.from_dict({"spatial": {"bogus": 1}})


def test_a_registered_format_is_selected_by_name(monkeypatch):
    class Upper(SelectFormat):
        name = "upper"

        def messages(self, twin, query):
            return [{"role": "user", "content": query.upper()}]

    monkeypatch.setitem(format_base._REGISTRY, "upper", Upper)
    backend = Scripted(lambda c, b: "Answer: [1]" if c[-1]["content"] == "Q" else "no")
    out = LLMReasoner(ReasoningConfig(format_name="upper"), backend).reason([(make_twin(0, n=3), "q")])[0]
    assert out.ids == [1] and out.format_name == "upper" and out.finish_reason == "stop"


# --- each format: the target it trains on parses back to its answer ------------------------------------
@pytest.mark.parametrize("name", ["select", "sftdt"])
def test_target_parses_back_exactly(name):
    rec = records(1, objects=5)[0]
    fmt = build_format(name)
    completion = fmt.target(rec.twin, Target(rec.path.answer, rec.path))
    decoded = fmt.parse(completion.text, rec.twin)
    assert decoded.parse.status == "ok" and decoded.parse.ids == sorted(rec.path.answer)
    assert _spans_text(completion.text, completion.answer_spans) == [json.dumps(sorted(rec.path.answer))]
    msgs = fmt.messages(rec.twin, rec.query)
    assert msgs[-1]["role"] == "user" and rec.query in msgs[-1]["content"]


@pytest.mark.parametrize("reasoning", [False, True])
def test_score_target_parses_back_and_reranks(reasoning):
    rec = records(1, objects=5)[0]
    fmt = build_format("score", {"reasoning": reasoning, "options": {"select": "margin", "margin": 2}})
    scores = {int(k): v for k, v in rec.extra["object_scores"].items()}
    completion = fmt.target(rec.twin, Target(rec.path.answer, rec.path, rec.extra["object_scores"]))
    assert _spans_text(completion.text, completion.decision_spans)[-len(scores):] == [str(scores[i]) for i in rec.twin.ids]
    decoded = fmt.parse(completion.text, rec.twin)
    assert decoded.parse.status == "ok" and decoded.scores == {i: float(s) for i, s in scores.items()}
    best = max(scores.values())
    assert decoded.parse.ids == sorted(i for i, s in scores.items() if s >= best - 2)
    if reasoning:  # one line per object with the path's reason, before the table
        lines = completion.text.splitlines()
        assert len(lines) == len(rec.twin) + 1 and lines[-1].startswith("Scores: {")
        cut = "\n".join(lines[:-1])  # a truncated answer: the per-object lines still give the scores
        repaired = fmt.parse(cut, rec.twin)
        assert repaired.parse.status == "repaired" and repaired.scores == decoded.scores


def test_overlap_scores_on_constructed_masks():
    masks = np.zeros((4, 20, 20), bool)
    masks[0, 0:10, 0:10] = True  # exactly the target
    masks[1, 0:10, 0:5] = True  # half of the target, all on it
    masks[2, :, :] = True  # the whole image (the target lies on it)
    masks[3, 15:20, 15:20] = True  # disjoint
    gt = np.zeros((20, 20), np.uint8)
    gt[0:10, 0:10] = 1
    scores = overlap_scores(DigitalTwin.from_masks("m", masks), gt)
    assert scores == {0: 10, 1: 8, 2: 2, 3: 0}  # (p + IoU) / 2: (1 + 1), (1 + .5), (.25 + .25), 0
    gt[0:10, 5:10] = 255  # ignored pixels leave both areas: object 1 is now the whole valid target
    assert overlap_scores(DigitalTwin.from_masks("m", masks), gt)[1] == 10


def test_score_targets_fall_back_to_the_answer_and_refuse_bad_scores():
    twin = make_twin(1, n=3)
    fmt = build_format("score")
    assert fmt.target(twin, Target([1])).text == '{"0": 0, "1": 10, "2": 0}'
    with pytest.raises(DataError, match="object_scores.7"):
        fmt.target(twin, Target([1], scores={"0": 1, "1": 2, "2": 3, "7": 4}))
    with pytest.raises(DataError, match="no score for ids"):
        fmt.target(twin, Target([1], scores={"0": 1}))
    assert render_scores(twin, {0: 1, 1: 9, 2: 0}).decision_spans == [(6, 7), (14, 15), (22, 23)]


# --- one format config for build-sft and inference ------------------------------------------------------
def test_build_sft_saves_the_format_and_the_reasoning_config_reads_it_back(tmp_path):
    tok = bpe_tokenizer()
    fc = FormatConfig.from_dict({"system_prompt": "Segment.", "include_spatial": True, "spatial": {"max_relations": 2}})
    cfg = SFTDatasetConfig(max_length=None, format_name="sftdt", format=fc)
    ds, stats = build_sft_dataset(records(2), tok, cfg)
    out = save_dataset(ds, tmp_path / "sft", {"stats": stats}, cfg)
    assert load_format(out) == ("sftdt", fc)
    rcfg = ReasoningConfig(format_from=str(out))
    assert rcfg.format_name == "sftdt" and rcfg.format == fc
    twin = records(1)[0].twin
    assert LLMReasoner(rcfg, Scripted(None)).messages(twin, "q")[0]["content"] == "Segment."
    # the same settings written explicitly are accepted; a different one is refused in one line
    assert ReasoningConfig(format_from=str(out), format_name="sftdt", format=fc).format == fc
    with pytest.raises(DataError, match="format differs"):
        ReasoningConfig(format_from=str(out), format_name="select")
    with pytest.raises(DataError, match=r"spatial\.max_relations"):
        ReasoningConfig(format_from=str(out), format={**fc.to_dict(), "spatial": {"max_relations": 6}})
    # a YAML's relative format_from is read relative to the YAML
    (tmp_path / "r.yaml").write_text("format_from: sft\nbackend: openai\nmodel: m\n")
    assert ReasoningConfig.from_yaml(tmp_path / "r.yaml").format == fc


def test_a_model_folder_with_another_format_is_refused(tmp_path):
    save_format(tmp_path, "sftdt", FormatConfig(include_spatial=True))
    with pytest.raises(DataError, match="include_spatial"):
        LLMReasoner(ReasoningConfig(format_name="sftdt", model=str(tmp_path)), Scripted(None))
    same = ReasoningConfig(format_name="sftdt", model=str(tmp_path), format={"include_spatial": True})
    assert LLMReasoner(same, Scripted(None)).format.name == "sftdt"


# --- budgets and truncation -----------------------------------------------------------------------------
def test_auto_budget_grows_with_the_twin_and_is_capped():
    small, large = make_twin(0, n=2), make_twin(1, n=40, size=96)
    backend = Scripted(lambda c, b: "Answer: []")
    r = LLMReasoner(ReasoningConfig(format_name="sftdt", max_new_tokens_cap=100_000), backend)
    r.reason([(small, "q"), (large, "q")])
    b_small, b_large = backend.budgets[0]
    assert b_small < b_large and b_large > 2048  # 2048 used to truncate paths over ~45 objects
    capped = LLMReasoner(ReasoningConfig(format_name="sftdt", max_new_tokens_cap=500), backend)
    assert capped.budget(large) == 500
    assert LLMReasoner(ReasoningConfig(format_name="sftdt", max_new_tokens=77), backend).budget(large) == 77
    assert build_format("score", {"tokens_per_object": 3, "base_tokens": 10}).budget(large) == 10 + 3 * 40


def test_truncated_answers_are_reported_apart_from_repairs():
    twin = make_twin(2, n=3)
    path = 'Step 1: {"0": {"verdict": "keep"}, "1": {"verdict": "keep"}, "2": {"verdict": "drop"}}\nStep 2: {"0'
    backend = Scripted(lambda c, b: Truncated(path, b))
    out = LLMReasoner(ReasoningConfig(format_name="sftdt", max_new_tokens=40), backend).reason([(twin, "q")])[0]
    assert out.finish_reason == "length" and out.truncated and out.parse.status == "repaired"
    assert "max_new_tokens (40)" in out.parse.notes[0] and out.to_dict()["finish_reason"] == "length"
    ok = LLMReasoner(ReasoningConfig(), Scripted(lambda c, b: "Answer: [1]")).reason([(twin, "q")])[0]
    assert ok.finish_reason == "stop" and not ok.truncated


def test_transformers_backend_marks_rows_that_used_their_budget():
    from reasoning_helpers import tiny_llama, train_tokenizer

    from dtwinseg.reasoning import TransformersBackend

    tok = train_tokenizer(["Query: the red cup", "Answer: [0, 1]", '{"0": 7}'] * 5)
    model = tiny_llama(tok, seed=0)
    cfg = ReasoningConfig(batch_size=2, device="cpu", dtype="float32")
    backend = TransformersBackend(cfg, model, tok)
    convs = [[{"role": "user", "content": "Query: the red cup"}], [{"role": "user", "content": "Query: x"}]]
    batched = backend.generate(convs, max_new_tokens=[2, 5])
    singles = [backend.generate([c], max_new_tokens=[b])[0] for c, b in zip(convs, [2, 5], strict=True)]
    assert [str(a) for a in batched] == [str(s) for s in singles]
    for answer, budget in zip(batched, [2, 5], strict=True):  # a random model rarely stops within 5 tokens
        assert isinstance(answer, Truncated) and answer.budget == budget


# --- the trainable Rea2Seg scorer ------------------------------------------------------------------------
@pytest.mark.slow
def test_score_format_dataset_trains_and_its_answers_parse(tmp_path):
    """build-sft with the score format (targets from ground-truth overlap), a few SFTDTTrainer steps on a
    tiny Llama, then the reasoner reads the trained model's answers with the same format."""
    import torch
    from dtwinseg.cli.main import app
    from dtwinseg.data_builders.segdt import write_records
    from dtwinseg.training import SFTDTConfig, SFTDTTrainer
    from sft_helpers import tiny_llama
    from typer.testing import CliRunner

    tok = bpe_tokenizer(vocab_size=600)
    tok.save_pretrained(tmp_path / "tok")
    recs = records(6, objects=4)
    write_records(tmp_path / "segdt.jsonl", recs, inline_twin=True)
    (tmp_path / "score.yaml").write_text("format:\n  name: score\n  spatial: {max_relations: 2}\n  options: "
                                         "{select: margin, margin: 1}\n")
    res = CliRunner().invoke(app, ["build-sft", str(tmp_path / "segdt.jsonl"), "--tokenizer", str(tmp_path / "tok"),
                                   "--out", str(tmp_path / "sft"), "--reasoning-config", str(tmp_path / "score.yaml"),
                                   "--max-length", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    name, fc = load_format(tmp_path / "sft")
    assert name == "score" and fc.options == {"select": "margin", "margin": 1}

    from datasets import load_from_disk

    ds = load_from_disk(str(tmp_path / "sft"))
    row = encode_record(recs[0], tok, SFTDatasetConfig(max_length=None, format_name="score", format=fc))
    ids, kinds = np.array(row["input_ids"]), np.array(row["token_kinds"])
    digits = tok.decode(ids[kinds == DECISION]).replace(" ", "")
    assert digits == "".join(str(v) for v in recs[0].extra["object_scores"].values())  # decisions = the scores
    assert ds[0]["input_ids"] == row["input_ids"]

    model = tiny_llama(len(tok)).float()
    args = SFTDTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], save_strategy="no", bf16=False,
                       per_device_train_batch_size=2, max_steps=3, learning_rate=5e-3, logging_steps=1, seed=0,
                       dataloader_num_workers=0)
    trainer = SFTDTTrainer(model, args, train_dataset=ds, processing_class=tok)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    from dtwinseg.reasoning import TransformersBackend

    rcfg = ReasoningConfig(format_from=str(tmp_path / "sft"), max_new_tokens=24, device="cpu", dtype="float32")
    reasoner = LLMReasoner(rcfg, TransformersBackend(rcfg, model.eval(), tok))
    outs = reasoner.reason([(r.twin, r.query) for r in recs[:3]])
    fmt = build_format("score", fc)
    for r, out in zip(recs, outs, strict=False):
        assert out.format_name == "score" and out.finish_reason in ("stop", "length")
        assert out.parse.status == fmt.parse(out.text, r.twin).parse.status
        assert set(out.ids) <= set(r.twin.ids)
        assert set(out.scores) == (set(r.twin.ids) if out.parse.ok else set())


def test_metrics_count_truncated_answers_apart_from_repairs():
    from dtwinseg.data_builders.sample import Sample
    from dtwinseg.eval.records import (
        failed_count,
        merge_states,
        metrics_from_state,
        sample_record,
        state_from_records,
    )
    from dtwinseg.eval.report import metrics_table

    twin = make_twin(3, n=3)
    gt = twin.masks()[1].astype(np.uint8)
    sample = Sample(id="s", image_path="s.jpg", query="q", is_sentence=False, gt_mask=gt, split="val")
    cut = Truncated('Step 1: {"1": {"verdict": "keep"}, "0": {"verdict": "drop"}', 30)
    outs = LLMReasoner(ReasoningConfig(format_name="sftdt", max_new_tokens=30),
                       Scripted(lambda c, b: cut if "cut" in c[-1]["content"] else "Answer: [1]"))
    done = outs.reason([(twin, "cut here"), (twin, "whole")])
    recs = [sample_record(sample, twin, out) for out in done]
    assert [r["finish_reason"] for r in recs] == ["length", "stop"] and recs[0]["status"] == "repaired"
    state = merge_states([state_from_records(recs[:1]), state_from_records(recs[1:])])
    metrics = metrics_from_state(state)
    assert metrics["truncated"] == 1 and metrics["parse"]["repaired"] == 1 and metrics["parse"]["ok"] == 1
    assert failed_count(state) == 0  # a truncated answer is scored, not a failure
    table = metrics_table({"checkpoints": {"m": {**metrics, "strategy": "sftdt"}}})
    assert "truncated" in table.splitlines()[0] and "| 1 / 1 / 0 | 1 |" in table
