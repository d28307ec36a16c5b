"""dtwinseg train-retriever: contrastive fine-tuning of a sentence encoder over twins. It learns a mapping the
untrained encoder cannot know (checked on held-out scenes against the untrained similarity), its config is
typed and checked before any weights load, its folder is what the prior and the embedding picker read, and
it replaces only folders it wrote."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dtwinseg.data_builders.segdt import SegDTRecord, inside_answer, write_records
from dtwinseg.training.retriever import RetrieverConfig, examples, scene_batches, train_retriever

from dtwinseg.config import ConfigError
from dtwinseg.formats.sftdt import Decision, PathStep, ReasoningPath
from dtwinseg.io import DataError
from dtwinseg.reasoning.similarity import SentenceEmbedder
from dtwinseg.twin import DigitalTwin

ROOT = Path(__file__).resolve().parents[1]
# the query says one word, the object's line another: a pairing only training can teach (a random encoder
# sees two unrelated tokens)
PAIRS = [("alpha", "kettle"), ("bravo", "ladder"), ("charlie", "mirror"), ("delta", "pillow"),
         ("echo", "rocket"), ("foxtrot", "violin"), ("golf", "wallet"), ("hotel", "anchor")]


def path(twin: DigitalTwin, answer: list[int]) -> ReasoningPath:
    return ReasoningPath([PathStep({o.id: Decision("keep" if o.id in answer else "drop") for o in twin.objects})],
                         answer)


def scenes(n: int, seed: int, objects: int = 5) -> list[SegDTRecord]:
    rng = random.Random(seed)
    out = []
    for r in range(n):
        chosen = rng.sample(PAIRS, objects)
        masks = np.zeros((objects, 16, 16), dtype=bool)
        for k in range(objects):
            masks[k, 3 * k: 3 * k + 2, :] = True
        twin = DigitalTwin.from_masks(f"s{seed}-{r}", masks, semantics=[f"a {obj}" for _, obj in chosen])
        target = rng.randrange(objects)
        out.append(SegDTRecord(id=f"s{seed}-{r}", image=f"{r}.png", query=f"find the {chosen[target][0]}",
                               twin=twin, path=path(twin, [target]), granularity=1))
    return out


def top1(model: str, records: list[SegDTRecord], cfg: RetrieverConfig) -> float:
    from dtwinseg.formats.compact import object_lines

    enc = SentenceEmbedder(model)
    sims = enc.similarities([(r.query, object_lines(r.twin, cfg.options())) for r in records])
    return float(np.mean([max(s, key=s.get) in r.path.answer for s, r in zip(sims, records, strict=True)]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny random bidirectional BERT with MiniLM's WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from dtwinseg.base_models import packaged_minilm_path

    folder = tmp_path_factory.mktemp("bert") / "model"
    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_path()))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_it_learns_a_pairing_the_untrained_encoder_does_not_know(tiny, tmp_path):
    write_records(tmp_path / "train.jsonl", scenes(64, seed=0), inline_twin=True)
    held_out = scenes(60, seed=1)
    cfg = RetrieverConfig.load(None, [f"records={tmp_path / 'train.jsonl'}", f"output_dir={tmp_path / 'ret'}",
                                      f"model={tiny}", "max_steps=80", "learning_rate=3e-3", "negatives=4",
                                      "temperature=0.1", "threads=1"])
    logs: list[str] = []
    out = train_retriever(cfg, progress=False, log=logs.append)
    info = json.loads((out / "retriever.json").read_text())
    assert info["counts"] == {"records": 64, "examples": 64, "no_answer": 0, "no_negative": 0, "unreadable": 0}
    assert info["loss_last"] < 0.5 * info["loss_first"]
    before, after = top1(str(tiny), held_out, cfg), top1(str(out), held_out, cfg)
    assert before < 0.45 and after > 0.8, (before, after)  # chance is 0.2
    assert any("saved" in m for m in logs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ret")]  # no temporary folder left


def test_the_prior_of_a_reasoning_config_reads_the_saved_folder(tiny, tmp_path):
    """The folder is a plain encoder: forced verdicts take it as their prior (a scorer that judges nothing
    "yes" answers by it) and baseline:embedding:FOLDER picks by it."""
    from dtwinseg.eval.baselines import parse_baseline
    from reasoning_helpers import save_tiny_bert

    from dtwinseg.reasoning import ReasoningConfig, build_reasoner

    write_records(tmp_path / "train.jsonl", scenes(8, seed=0), inline_twin=True)
    out = train_retriever(RetrieverConfig(records=str(tmp_path / "train.jsonl"), output_dir=str(tmp_path / "r"),
                                          model=str(tiny), max_steps=2), progress=False, log=lambda m: None)
    scorer = save_tiny_bert(tmp_path / "scorer")
    rcfg = ReasoningConfig(format_name="compact", model=str(scorer), device="cpu", dtype="float32", batch_size=4,
                           decoding="verdicts", format={"options": {"target": "object"}}, verdict_margin=50.0,
                           similarity_prior=str(out), prior_temperature=0.001)
    items = [(r.twin, r.query) for r in scenes(3, seed=2)]
    got = build_reasoner(rcfg).reason(items)
    _, picker = parse_baseline(f"baseline:embedding:{out}", rcfg)
    picked = picker.reason(items)
    for a, b in zip(got, picked, strict=True):
        assert a.similarity is not None and a.ids == b.ids  # a sharp prior answers as the picker does


def test_config_errors_name_the_field_before_weights_load(tmp_path):
    with pytest.raises(DataError, match="negatives"):
        RetrieverConfig.load(None, ["records=x", "output_dir=y", "negatives=0"])
    with pytest.raises(DataError, match="format.position"):
        RetrieverConfig.load(None, ["records=x", "output_dir=y", "format.position=middle"])
    with pytest.raises(ConfigError, match="max_steps"):  # did you mean
        RetrieverConfig.load(None, ["records=x", "output_dir=y", "max_step=3"])
    with pytest.raises(ConfigError, match="records"):
        RetrieverConfig.load(None, ["output_dir=y"])
    bad = tmp_path / "r.yaml"
    bad.write_text("records: a\noutput_dir: b\nlearning_rate: fast\n")
    with pytest.raises(ConfigError, match=r"r\.yaml.*learning_rate|learning_rate.*r\.yaml"):
        RetrieverConfig.load(bad)


def test_it_never_replaces_a_folder_it_did_not_write(tiny, tmp_path):
    write_records(tmp_path / "train.jsonl", scenes(4, seed=0), inline_twin=True)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    cfg = RetrieverConfig(records=str(tmp_path / "train.jsonl"), output_dir=str(theirs), model=str(tiny), max_steps=1)
    with pytest.raises(DataError, match="no retriever run wrote"):
        train_retriever(cfg, progress=False, log=lambda m: None)
    assert (theirs / "notes.txt").read_text() == "keep me"
    ours = tmp_path / "ours"  # a rerun replaces its own earlier folder
    for _ in range(2):
        train_retriever(RetrieverConfig(records=cfg.records, output_dir=str(ours), model=str(tiny), max_steps=1),
                        progress=False, log=lambda m: None)
    assert (ours / "retriever.json").is_file()


def test_examples_and_batches_follow_the_labels():
    recs = scenes(3, seed=0)
    recs[0].extra.update(inside=[0, 1], inside_iou=0.9)
    recs[0].match_iou = 0.8
    recs[1].path = path(recs[1].twin, [])                     # no answer: nothing to learn
    recs[2].path = path(recs[2].twin, list(range(5)))         # every object: nothing to contrast
    cfg = RetrieverConfig(records="x", output_dir="y", labels="inside", negatives=2, positives=1)
    data, counts = examples(recs, cfg)
    assert counts == {"records": 3, "examples": 1, "no_answer": 1, "no_negative": 1}
    assert inside_answer(recs[0]) == [0, 1] and data[0].positives == [0, 1]
    batch = next(scene_batches(data, cfg, random.Random(0)))
    assert len(batch[0].lines) == 3 and batch[0].positives == [0]
    assert batch[0].lines[0] in {data[0].lines[0], data[0].lines[1]}


def test_recipe_runs_as_shipped_through_the_cli(tiny, tmp_path):
    """recipes/retriever.yaml exactly as shipped, through `dtwinseg train-retriever`, with its documented
    overrides (records, output_dir) and a short run on the tiny encoder."""
    write_records(tmp_path / "segdt.jsonl", scenes(6, seed=0), inline_twin=True)
    cmd = [sys.executable, "-m", "dtwinseg.cli.main", "train-retriever", str(ROOT / "recipes" / "retriever.yaml"),
           f"records={tmp_path / 'segdt.jsonl'}", f"output_dir={tmp_path / 'ret'}", f"model={tiny}", "max_steps=2",
           "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"output: {tmp_path / 'ret'}" in res.stdout
    assert json.loads((tmp_path / "ret" / "retriever.json").read_text())["config"]["labels"] == "inside"
    bad = subprocess.run(cmd[:5] + ["records=/nonexistent.jsonl", f"output_dir={tmp_path / 'x'}"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "nonexistent.jsonl" in bad.stderr and "Traceback" not in bad.stderr


def test_a_similarity_window_answers_every_object_near_the_best():
    """similarity_window (reasoning config) widens a pick by similarity from the best object to every object
    within the window: a whole with its parts, a group's members; 0 keeps the top-1 (lowest id on ties)."""
    from dtwinseg.reasoning import ReasoningConfig
    from dtwinseg.reasoning.similarity import window_answer

    sims = {0: 0.50, 1: 0.80, 2: 0.79, 3: 0.70, 4: 0.80}
    assert window_answer(sims) == [1] and window_answer(sims, 0.0) == [1]
    assert window_answer(sims, 0.02) == [1, 2, 4] and window_answer(sims, 0.5) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="similarity_window"):
        ReasoningConfig(similarity_window=-0.1)
    with pytest.raises(DataError, match="similarity_window"):
        ReasoningConfig(similarity_window=float("nan"))


def test_the_embedding_picker_applies_the_window_of_its_config(tmp_path):
    from dtwinseg.eval.baselines import parse_baseline

    from dtwinseg.reasoning import ReasoningConfig

    twin = DigitalTwin.from_masks("w", np.stack([np.eye(8, dtype=bool)] * 3),
                                  semantics=["a red mug", "a red mug handle", "a green bicycle"])
    narrow, wide = (parse_baseline("baseline:embedding", ReasoningConfig(format_name="compact", similarity_window=w))[1]
                    for w in (0.0, 0.5))
    (a,), (b,) = narrow.reason([(twin, "the red mug")]), wide.reason([(twin, "the red mug")])
    assert a.ids == [0] and b.ids[:2] == [0, 1] and a.scores == b.scores


def test_train_dry_run_checks_a_retriever_recipe():
    """`dtwinseg train recipes/retriever.yaml --dry-run` (a user's first command): the config resolved and
    checked, no weights loaded; without --dry-run one line names the command that trains it."""
    from dtwinseg.cli.main import app
    from typer.testing import CliRunner

    recipe = str(ROOT / "recipes" / "retriever.yaml")
    res = CliRunner().invoke(app, ["train", recipe, "--dry-run", "max_steps=7"])
    assert res.exit_code == 0, res.output
    assert "# RetrieverConfig: ok" in res.output and "max_steps: 7" in res.output
    res = CliRunner().invoke(app, ["train", recipe, "--dry-run", "negatives=0"])
    assert res.exit_code == 2 and "negatives" in res.output
    res = CliRunner().invoke(app, ["train", recipe])
    assert res.exit_code == 2 and "dtwinseg train-retriever" in res.output
