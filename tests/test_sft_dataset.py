"""Tokenisation of Seg-DT records with per-token weights, for two different tokenizers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from dtwinseg.data_builders.sft_dataset import (
    ANSWER,
    COMPLETION,
    DECISION,
    PROMPT,
    SFTDatasetConfig,
    build_sft_dataset,
    encode_record,
)
from sft_helpers import bpe_tokenizer, minilm_tokenizer, records

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONTEXT = 4096  # MiniLM's own 512 would fit these prompts by leaving objects out (tests/test_prompt_fit.py)


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def tokenizer(request):
    return bpe_tokenizer() if request.param == "bpe" else minilm_tokenizer()


def _decode(tok, ids) -> str:
    return tok.decode(ids).replace(" ", "").lower()


def test_weighted_tokens_decode_to_the_decisions_and_answer(tokenizer):
    rec = records(1)[0]
    row = encode_record(rec, tokenizer, SFTDatasetConfig(max_length=0), context=CONTEXT)
    ids, kinds, w = np.array(row["input_ids"]), np.array(row["token_kinds"]), np.array(row["loss_weights"])
    # Answer tokens decode to exactly the final list.
    assert _decode(tokenizer, ids[kinds == ANSWER]) == json.dumps(rec.path.answer).replace(" ", "")
    # Decision tokens, in order, spell each step's ids and verdicts (possibly with a merged quote).
    expected = "".join(f"{i}{d.verdict}" for s in rec.path.steps for i, d in s.decisions.items())
    assert _decode(tokenizer, ids[kinds == DECISION]).replace('"', "") == expected
    # Weights follow the kinds: 0 prompt, 1 completion, 2 decision, 4 answer; labels -100 exactly on weight 0.
    assert np.array_equal(w, np.array([0.0, 1.0, 2.0, 4.0], np.float32)[kinds])
    assert all((lab == -100) == (wt == 0) for lab, wt in zip(row["labels"], w, strict=True))
    # The prompt holds the query and the twin; the completion starts right after it and runs to the end.
    first = int(np.argmax(kinds != PROMPT))
    assert (kinds[first:] != PROMPT).all() and (kinds[:first] == PROMPT).all()
    assert "holddrinks" in _decode(tokenizer, ids[:first])
    assert "step1" in _decode(tokenizer, ids[first:first + 8])
    assert kinds[-1] == COMPLETION  # end-of-turn / EOS is learned


def test_custom_weights_and_dataset_columns(tokenizer):
    cfg = SFTDatasetConfig(max_length=None, w_decision=3.0, w_answer=7.5)
    ds, stats = build_sft_dataset(records(3), tokenizer, cfg, context=CONTEXT)
    assert len(ds) == 3 and stats["examples"] == 3 and stats["dropped_too_long"] == 0
    assert set(ds.column_names) >= {"id", "input_ids", "labels", "loss_weights", "token_kinds"}
    w = np.concatenate([np.array(x) for x in ds["loss_weights"]])
    assert set(np.unique(w)) == {0.0, 1.0, 3.0, 7.5}


def test_overlong_examples_are_dropped_never_shortened(tokenizer):
    """An example longer than max_length is dropped and counted; its prompt is never shortened for training
    alone (the prompt is the one inference sends: tests/test_prompt_fit.py)."""
    recs = records(2, objects=8)
    full = encode_record(recs[0], tokenizer, SFTDatasetConfig(max_length=0), context=CONTEXT)
    n = len(full["input_ids"])
    assert full["removed_objects"] == 0
    assert encode_record(recs[0], tokenizer, SFTDatasetConfig(max_length=n), context=CONTEXT)["input_ids"] == \
        full["input_ids"]
    assert encode_record(recs[0], tokenizer, SFTDatasetConfig(max_length=n - 5), context=CONTEXT) is None
    assert encode_record(recs[0], tokenizer, SFTDatasetConfig(max_length=n - 5, on_overflow="truncate_twin"),
                         context=CONTEXT) is None  # the deprecated name means the same
    ds, stats = build_sft_dataset(recs, tokenizer, SFTDatasetConfig(max_length=40), context=CONTEXT)
    assert stats["dropped_too_long"] == 2 and len(ds) == 0 and stats["objects_dropped"] == 0


def test_build_sft_cli(tmp_path):
    from dtwinseg.cli.main import app
    from dtwinseg.data_builders.segdt import write_records
    from typer.testing import CliRunner

    write_records(tmp_path / "r.jsonl", records(3), inline_twin=True)
    tok = bpe_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    res = CliRunner().invoke(app, ["build-sft", str(tmp_path / "r.jsonl"), "--tokenizer", str(tmp_path / "tok"),
                                   "--out", str(tmp_path / "ds"), "--w-answer", "5"])
    assert res.exit_code == 0, res.output
    from datasets import load_from_disk

    ds = load_from_disk(str(tmp_path / "ds"))
    assert len(ds) == 3 and max(max(w) for w in ds["loss_weights"]) == 5.0
    build = json.loads((tmp_path / "ds" / "build.json").read_text())
    assert build["stats"]["examples"] == 3 and build["config"]["w_answer"] == 5.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    res = CliRunner().invoke(app, ["build-sft", str(bad), "--tokenizer", str(tmp_path / "tok"),
                                   "--out", str(tmp_path / "ds2")])
    assert res.exit_code != 0 and "bad.jsonl" in res.output and "line 1" in res.output
    # one bad line does not stop the build: it is skipped, named and counted
    good = (tmp_path / "r.jsonl").read_text().splitlines()
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes("\n".join([good[0], "not json", good[1], "[]", good[0]]).encode() + b"\n\xff\xfe\n")
    res = CliRunner().invoke(app, ["build-sft", str(mixed), "--tokenizer", str(tmp_path / "tok"),
                                   "--out", str(tmp_path / "ds3"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(load_from_disk(str(tmp_path / "ds3"))) == 2
    assert "field 'line 2': invalid JSON" in res.output and "field 'line 4': expected a JSON object" in res.output
    assert "field 'line 5: id': duplicate sample id" in res.output and "field 'line 6': not UTF-8" in res.output
    assert json.loads((tmp_path / "ds3" / "build.json").read_text())["stats"]["bad_lines"] == 4
    # nothing buildable (every example longer than the limit and dropped): exit 1, no dataset folder
    res = CliRunner().invoke(app, ["build-sft", str(tmp_path / "r.jsonl"), "--tokenizer", str(tmp_path / "tok"),
                                   "--out", str(tmp_path / "ds4"), "--max-length", "8", "--on-overflow", "drop"])
    assert res.exit_code == 1 and "no example was built" in res.output and not (tmp_path / "ds4").exists()


def test_score_format_rows_and_unusable_records_are_counted(tokenizer):
    """The score format trains on per-object score tables; a record whose object_scores the format cannot
    use is counted as failed with its field, the others are built."""
    recs = records(3, objects=4)
    recs[1].extra["object_scores"] = {"0": 99}
    cfg = SFTDatasetConfig(max_length=None, format_name="score")
    ds, stats = build_sft_dataset(recs, tokenizer, cfg, context=CONTEXT)
    assert len(ds) == 2 and stats["failed"] == 1 and stats["failures"][0]["id"] == recs[1].id
    assert "object_scores" in stats["failures"][0]["error"]
    row = ds[0]
    kinds, ids = np.array(row["token_kinds"]), np.array(row["input_ids"])
    assert not (kinds == ANSWER).any()  # the scores are the decisions; no answer list in this format
    assert _decode(tokenizer, ids[kinds == DECISION]) == "".join(str(v) for v in recs[0].extra["object_scores"].values())


def test_plain_layout_without_system_message_matches_inference():
    """A format without a system message renders the plain layout exactly as the reasoner prompts it."""
    from dtwinseg.formats import FormatConfig
    from dtwinseg.prompting import render_plain

    tok = minilm_tokenizer()
    rec = records(1)[0]
    cfg = SFTDatasetConfig(max_length=None, format=FormatConfig(system_prompt=""))
    row = encode_record(rec, tok, cfg, context=CONTEXT)
    kinds = np.array(row["token_kinds"])
    prompt_ids = np.array(row["input_ids"])[kinds == PROMPT]
    from dtwinseg.data_builders.sft_dataset import prompt_counter

    from dtwinseg.formats.base import fit_prompt

    messages = fit_prompt(cfg.reasoning_format(), rec.twin, rec.query, context=CONTEXT,
                          count=prompt_counter(tok)).messages  # as the reasoner fits it
    assert messages[0]["role"] == "user"
    expected = tok(render_plain(messages), add_special_tokens=False)["input_ids"]
    assert list(prompt_ids) == expected


def test_loss_weights_have_one_home():
    """build-sft, the trainer, the demo and the CLI take their per-kind weights from dtwinseg.formats."""
    import dataclasses

    from dtwinseg.cli.main import app
    from dtwinseg.training.trainer import SFTDTConfig
    from dtwinseg.workflows.demo import DemoConfig, training_recipe
    from typer.testing import CliRunner

    from dtwinseg.formats import DEFAULT_LOSS_WEIGHTS, UNWEIGHTED_LOSS, LossWeights

    assert DEFAULT_LOSS_WEIGHTS.by_kind() == [0.0, 1.0, 2.0, 4.0]  # method.md sec. 3
    assert SFTDatasetConfig(max_length=None).loss_weights == DEFAULT_LOSS_WEIGHTS
    assert LossWeights.of(DemoConfig()) == DEFAULT_LOSS_WEIGHTS
    trainer = {f.name: f.default for f in dataclasses.fields(SFTDTConfig)}
    assert LossWeights.of(type("T", (), trainer)) == DEFAULT_LOSS_WEIGHTS
    rows = [training_recipe(DemoConfig(), *["x"] * 3, weighted, 0).training for weighted in (True, False)]
    assert [LossWeights.of(type("R", (), r)) for r in rows] == [DEFAULT_LOSS_WEIGHTS, UNWEIGHTED_LOSS]
    help_text = " ".join(CliRunner().invoke(app, ["build-sft", "--help"], env={"COLUMNS": "200"}).output.split())
    for f in dataclasses.fields(LossWeights):  # the CLI's options are generated from the dataclass
        assert f"--w-{f.name} <float> Loss weight of {f.metadata['help']} [default: {f.default:g}," in help_text


def test_progress_bar_is_drawn_by_local_rank_zero_only(capsys, monkeypatch):
    tok = minilm_tokenizer()
    for rank, drawn in (("0", True), ("1", False)):
        monkeypatch.setenv("LOCAL_RANK", rank)
        build_sft_dataset(records(2), tok, SFTDatasetConfig(max_length=None), progress=True, total=2)
        assert ("tokenising" in capsys.readouterr().err) is drawn  # bars draw on stderr
    monkeypatch.setenv("LOCAL_RANK", "0")
    build_sft_dataset(records(2), tok, SFTDatasetConfig(max_length=None), progress=False)
    assert "tokenising" not in capsys.readouterr().err


def test_per_object_target_writes_one_verdict_example_per_object(tokenizer):
    from dtwinseg.formats import FormatConfig

    cfg = SFTDatasetConfig(max_length=None, format_name="compact", format=FormatConfig(options={"target": "object"}))
    recs = records(2)
    ds, stats = build_sft_dataset(recs, tokenizer, cfg)
    assert stats["records"] == 2 and stats["examples"] == len(ds) == sum(len(r.twin) for r in recs)
    assert ds["id"][:5] == [f"r0#{o.id}" for o in recs[0].twin.objects]
    for row, obj in zip(ds.select(range(5)), recs[0].twin.objects, strict=True):
        ids, kinds = np.array(row["input_ids"]), np.array(row["token_kinds"])
        verdict = "yes" if obj.id in recs[0].path.answer else "no"
        assert _decode(tokenizer, ids[kinds == DECISION]) == verdict  # the only decision: this object's verdict
        assert (kinds != ANSWER).all()
        prompt = _decode(tokenizer, ids[kinds == PROMPT])
        assert "holddrinks" in prompt and f"object:{obj.semantic.replace(' ', '')}" in prompt
        assert sum(o.semantic.replace(" ", "") in prompt for o in recs[0].twin.objects) == 1  # no context
    with_context = SFTDatasetConfig(max_length=None, format_name="compact",
                                    format=FormatConfig(options={"target": "object", "context": True}))
    row = build_sft_dataset(recs[:1], tokenizer, with_context)[0][0]
    prompt = _decode(tokenizer, np.array(row["input_ids"])[np.array(row["token_kinds"]) == PROMPT])
    assert all(o.semantic.replace(" ", "") in prompt for o in recs[0].twin.objects)
    short = SFTDatasetConfig(max_length=12, format_name="compact", format=FormatConfig(options={"target": "object"}))
    ds, stats = build_sft_dataset(recs, tokenizer, short)
    assert len(ds) == 0 and stats["dropped_too_long"] == 10 and stats["dropped_ids"] == ["r0", "r1"]


def test_per_object_training_prompt_is_the_prompt_the_reasoner_scores(tokenizer):
    from dtwinseg.formats import FormatConfig, build_format
    from dtwinseg.prompting import chat_prompt

    cfg = SFTDatasetConfig(max_length=None, format_name="compact", format=FormatConfig(options={"target": "object"}))
    rec = records(1)[0]
    ds, _ = build_sft_dataset([rec], tokenizer, cfg)
    fmt = build_format("compact", cfg.format)
    for row, obj in zip(ds, rec.twin.objects, strict=True):
        prompt = chat_prompt(tokenizer, fmt.object_messages(rec.twin, rec.query, obj.id))
        expected = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        n = int(np.argmax(np.array(row["token_kinds"]) != PROMPT))
        assert row["input_ids"][:len(expected)] == expected and n <= len(expected) + 1
