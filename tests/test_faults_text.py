"""Fault tests: text in, text out. Any Python str reaches every writer (a lone surrogate such as "\\ud83d",
undecodable command-line bytes, which Python hands over as "\\udcff") and is written escaped, so the file
reads back to the same str; readers of our own files survive any bytes; ``segment`` never leaves a mask
without its twin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dtwinseg.cli.main import app
from dtwinseg.eval.checkpoints import Checkpoint
from dtwinseg.eval.harness import EvalOptions, evaluate
from dtwinseg.eval.records import load_records
from PIL import Image
from test_harness import N, OracleReasoner, build_bench
from typer.testing import CliRunner

from dtwinseg.io import (
    DataError,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    iter_jsonl,
    load_yaml,
    read_json,
    stable_hash,
    write_jsonl,
)
from dtwinseg.reasoning import ReasoningConfig
from dtwinseg.twin import DigitalTwin
from tests.reasoning_helpers import SemanticChatServer

ROOT = Path(__file__).resolve().parent.parent
LONE = "pizza \ud83d slice"          # half of a surrogate pair: not valid Unicode, yet a Python str
ARGV_BYTES = "\udcff\udcfe query"    # what `dtwinseg segment IMG $'\xff\xfe query'` receives


def _with_query(split_dir: Path, sample: str, query: str) -> None:
    anno = split_dir / f"{sample}.json"
    data = json.loads(anno.read_text())
    data["text"] = [query]
    anno.write_text(json.dumps(data))  # ensure_ascii: the surrogate is the JSON escape \ud83d on disk


@pytest.mark.parametrize("value", [LONE, ARGV_BYTES, "plain \u00e9\u4e2d \U0001f355"])
def test_every_writer_takes_any_str_and_reads_it_back(tmp_path, value):
    record = {"query": value, value: [value]}
    atomic_write_json(tmp_path / "a.json", record)
    assert read_json(tmp_path / "a.json") == record
    write_jsonl(tmp_path / "b.jsonl", [record, record])
    append_jsonl(tmp_path / "b.jsonl", record)
    assert list(iter_jsonl(tmp_path / "b.jsonl")) == [record] * 3
    atomic_write_text(tmp_path / "c.txt", f"query: {value}\n")
    assert (tmp_path / "c.txt").read_bytes().decode("utf-8")  # valid UTF-8 on disk
    assert stable_hash(record) == stable_hash(dict(reversed(list(record.items()))))
    twin = DigitalTwin.from_masks("t", np.ones((1, 4, 4), bool), semantics=[value])
    twin.query = value
    twin.save(tmp_path / "twin.json")
    back = DigitalTwin.load(tmp_path / "twin.json")
    assert back.query == value and back.objects[0].semantic == value


def test_a_saved_recipe_with_a_lone_surrogate_reruns_to_the_same_recipe(tmp_path):
    from dtwinseg.training.recipe import load_recipe
    from dtwinseg.training.run import save_recipe

    r = load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", [f"wandb.project={LONE}"])
    save_recipe(r, tmp_path)
    assert load_yaml(tmp_path / "recipe.yaml")["wandb"]["project"] == LONE


def test_eval_with_a_lone_surrogate_query_finishes_and_resumes(tmp_path):
    spec, cache = build_bench(tmp_path)
    _with_query(tmp_path / "data" / "test", "s02", LONE)
    ck = lambda: Checkpoint("o", "o", ReasoningConfig(), reasoner=OracleReasoner(spec))  # noqa: E731
    opts = EvalOptions(batch_size=2, progress=False, worst_k=1)
    first = evaluate(spec, cache, [ck()], tmp_path / "run", opts, log=lambda s: None)
    recs = load_records(tmp_path / "run" / "o" / "predictions.jsonl")
    assert len(recs) == N and {r["id"]: r for r in recs}["s02"]["query"] == LONE
    again = evaluate(spec, cache, [ck()], tmp_path / "run", opts, log=lambda s: None)  # a rerun resumes
    assert again["checkpoints"] == first["checkpoints"]


def test_eval_cli_counts_the_escaped_surrogates(tmp_path):
    spec, cache = build_bench(tmp_path)
    _with_query(tmp_path / "data" / "test", "s01", LONE)
    res = CliRunner().invoke(app, ["eval", spec, "--dt-cache", str(cache), "-c", "big=baseline:largest", "--out",
                                   str(tmp_path / "run"), "--worst", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert "lone surrogate character(s)" in res.output and "written escaped" in res.output


def test_readers_of_our_files_survive_any_bytes(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": "\xff\xfe"}\n{"c": 3}\n')
    with pytest.raises(DataError, match="line 2"):
        list(iter_jsonl(p))
    (tmp_path / "x.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match="not UTF-8"):
        read_json(tmp_path / "x.json")
    (tmp_path / "x.yaml").write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        load_yaml(tmp_path / "x.yaml")


def test_segment_with_undecodable_query_bytes_writes_twin_and_mask(tmp_path):
    """The query arrives as raw bytes on the command line (a real subprocess, not CliRunner)."""
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:20, 5:25] = True
    masks[1, 20:35, 30:55] = True
    DigitalTwin.from_masks("img", masks, semantics=["red cup", "blue chair"]).save(tmp_path / "twin_in.json")
    Image.new("RGB", (60, 40), (30, 90, 160)).save(tmp_path / "img.jpg")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "LC_ALL": "C.UTF-8"}
    with SemanticChatServer() as server:
        (tmp_path / "p.yaml").write_text(
            f"reasoning:\n  format: select\n  backend: openai\n  model: fake\n  base_url: {server.url}\n")
        proc = subprocess.run([sys.executable, "-m", "dtwinseg.cli", "segment", str(tmp_path / "img.jpg"),
                               b"\xff\xfe find the red cup", "--config", str(tmp_path / "p.yaml"), "--twin",
                               str(tmp_path / "twin_in.json"), "--out", str(tmp_path / "out")],
                              env=env, capture_output=True, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"mask.png", "overlay.png", "twin.json", "reasoning.txt"}
    saved = DigitalTwin.load(out / "twin.json")
    assert saved.query == "\udcff\udcfe find the red cup"  # exactly what the command line carried
    assert np.array_equal(np.asarray(Image.open(out / "mask.png")) > 0, saved.union([0]))
    assert (out / "reasoning.txt").read_bytes().decode("utf-8").startswith("query: \\udcff\\udcfe find")


def test_a_damaged_predictions_file_is_one_line_naming_it(tmp_path):
    spec, cache = build_bench(tmp_path)
    args = ["eval", spec, "--dt-cache", str(cache), "-c", "big=baseline:largest", "--out", str(tmp_path / "run"),
            "--worst", "0", "--no-progress"]
    assert CliRunner().invoke(app, args).exit_code == 0
    preds = tmp_path / "run" / "big" / "predictions.jsonl"
    lines = preds.read_bytes().splitlines(keepends=True)
    preds.write_bytes(b"".join(lines[:2] + [b'{"id": "\xff\xfe"}\n'] + lines[2:]))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"error: {preds}: field 'line 3': not UTF-8 text" in res.output


def test_a_local_model_reads_a_lone_surrogate_query_as_valid_text(tmp_path):
    """Tokenizers refuse lone surrogates (the generation used to fail): the model reads U+FFFD in their place,
    the twin keeps the query."""
    from tests.reasoning_helpers import save_tiny_llama

    model = save_tiny_llama(tmp_path / "llm")
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:20, 5:25] = True
    masks[1, 20:35, 30:55] = True
    DigitalTwin.from_masks("img", masks, semantics=["red cup", "blue chair"]).save(tmp_path / "twin_in.json")
    Image.new("RGB", (60, 40)).save(tmp_path / "img.jpg")
    (tmp_path / "p.yaml").write_text(f"reasoning:\n  format: select\n  backend: transformers\n  model: {model}\n"
                                     "  device: cpu\n  max_new_tokens: 8\n")
    res = CliRunner().invoke(app, ["segment", str(tmp_path / "img.jpg"), LONE, "--config", str(tmp_path / "p.yaml"),
                                   "--twin", str(tmp_path / "twin_in.json"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert DigitalTwin.load(tmp_path / "out" / "twin.json").query == LONE
    assert "generation failed" not in (tmp_path / "out" / "reasoning.txt").read_text()  # the model answered
