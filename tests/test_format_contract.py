"""The reasoning-format contract and its one name.

Every registered format (and each per-object variant of the compact one) is a ReasoningFormat: it has every
member its callers use, and each member does its job on a tiny twin. A config names its format with
``format:`` (a name, or a mapping with ``name:``); ``strategy:`` / ``--strategy`` are still read with one
deprecation note, and files written before the rename (identity.json with ``strategy`` and the reasoning
hash of that version, metrics with ``strategy``) still load and resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dtwinseg.cli.options import rewrite_deprecated
from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig
from dtwinseg.eval.checkpoints import Checkpoint, recorded_format
from dtwinseg.eval.harness import EvalOptions, evaluate
from dtwinseg.eval.report import metrics_table
from sft_helpers import records
from test_harness import OracleReasoner, build_bench

from dtwinseg.config import ConfigError
from dtwinseg.formats import (
    Completion,
    Decoded,
    FormatBase,
    FormatConfig,
    ReasoningFormat,
    Target,
    VerdictPath,
    available_formats,
    build_format,
)
from dtwinseg.formats import base as format_base
from dtwinseg.io import DataError
from dtwinseg.reasoning import ReasoningConfig
from dtwinseg.spatial import SpatialConfig

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = [(name, {}) for name in available_formats()] + [
    ("compact", {"options": {"target": "path"}}), ("compact", {"options": {"target": "object", "facts": True}})]


@pytest.mark.parametrize(("name", "config"), VARIANTS, ids=lambda v: v if isinstance(v, str) else
                         (v.get("options", {}).get("target") or "default"))
def test_every_format_is_a_reasoning_format_and_each_member_works(name, config):
    rec = records(1, objects=4)[0]
    twin, query = rec.twin, rec.query
    target = Target(sorted(rec.path.answer), rec.path, query=query)
    fmt = build_format(name, config)
    assert isinstance(fmt, ReasoningFormat)
    assert fmt.name == name and isinstance(fmt.config, FormatConfig) and isinstance(fmt.per_object, bool)
    assert isinstance(fmt.reads_spatial, bool) and fmt.reads_spatial == (name != "compact")
    assert isinstance(fmt.budget(twin), int) and fmt.budget(twin) >= 1
    if fmt.per_object:  # one prompt and one verdict per object
        examples = fmt.object_examples(twin, query, target)
        assert [obj for obj, _, _ in examples] == twin.ids
        for obj, messages, completion in examples:
            assert messages[-1]["role"] == "user" and query in messages[-1]["content"]
            assert isinstance(completion, Completion) and completion.text == ("yes" if obj in target.answer else "no")
        with pytest.raises(DataError, match="decoding"):
            fmt.messages(twin, query)
        with pytest.raises(DataError):
            fmt.target(twin, target)
    else:  # one prompt and one answer per scene
        messages = fmt.messages(twin, query)
        assert messages[-1]["role"] == "user" and query in messages[-1]["content"]
        completion = fmt.target(twin, target)
        decoded = fmt.parse(completion.text, twin)
        assert isinstance(decoded, Decoded) and decoded.parse.status == "ok"
        assert decoded.parse.ids and set(decoded.parse.ids) <= set(target.answer)  # score keeps the best only
        with pytest.raises(DataError, match="format.options.target"):
            fmt.object_examples(twin, query, target)
    garbage = fmt.parse("I cannot tell.", twin)  # total: a failed parse, never an exception
    assert isinstance(garbage, Decoded) and garbage.parse.status == "failed" and garbage.parse.ids == []
    if name == "compact" and config:
        path = fmt.verdict_path(twin, query)
        assert isinstance(path, VerdictPath) and [obj for obj, _ in path.steps] == twin.ids
        assert (path.prompts is not None) == fmt.per_object and path.answer([2, 0]) == "Answer: [0, 2]"
    else:
        with pytest.raises(DataError, match="decoding"):
            fmt.verdict_path(twin, query)


def test_a_format_missing_a_member_is_no_reasoning_format():
    class NoParse(FormatBase):
        name = "noparse"

        def __init__(self, config=None):
            self.config = config or FormatConfig()

        def messages(self, twin, query):
            return [{"role": "user", "content": query}]

        def target(self, twin, target):
            return Completion("")

        def budget(self, twin):
            return 1

    assert not isinstance(NoParse(), ReasoningFormat)
    assert isinstance(build_format("select"), ReasoningFormat)


def test_no_caller_probes_a_format_with_getattr():
    pattern = re.compile(r"getattr\(.*(strategy|fmt|\.format\b)")
    hits = [f"{p.relative_to(ROOT)}:{k}" for folder in ("dtwinseg", "data_builders", "training", "eval",
                                                         "workflows", "cli")
            for p in sorted((ROOT / folder).rglob("*.py"))
            for k, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert hits == []


# --- one name: format ----------------------------------------------------------------------------------------
def test_a_config_names_its_format_with_format(tmp_path):
    short = ReasoningConfig.from_dict({"format": "sftdt"})
    assert short.format_name == "sftdt" and short.format == FormatConfig()
    full = ReasoningConfig.from_dict({"format": {"name": "score", "options": {"select": "margin"}}})
    assert full.format_name == "score" and full.format.options == {"select": "margin"}
    assert ReasoningConfig(format="sftdt") == short and ReasoningConfig().format_name == "select"
    written = full.to_dict()
    assert written["format"]["name"] == "score" and "format_name" not in written and "strategy" not in written
    assert ReasoningConfig.from_dict(written) == full  # what is written reads back
    p = tmp_path / "r.yaml"
    p.write_text("format:\n  name: compact\n  options: {target: path}\ndecoding: verdicts\n")
    assert ReasoningConfig.from_yaml(p).format_name == "compact"
    with pytest.raises(DataError, match=r"r\.yaml: field 'format': 'nope' is not a reasoning format"):
        ReasoningConfig.from_dict({"format": "nope"}, path="r.yaml")
    with pytest.raises(ConfigError, match=r"field 'format\.name': names the format 'sftdt', but strategy names"):
        ReasoningConfig.from_dict({"strategy": "select", "format": {"name": "sftdt"}}, path="r.yaml")
    sft = SFTDatasetConfig.from_dict({"format": {"name": "score", "reasoning": True}, "max_length": 0})
    assert sft.format_name == "score" and sft.format.reasoning and SFTDatasetConfig.from_dict(sft.to_dict()) == sft


def test_strategy_is_a_deprecated_alias_with_one_note(monkeypatch, capsys):
    monkeypatch.setattr(format_base, "_NOTED", set())
    old = ReasoningConfig.from_dict({"strategy": "score", "format": {"options": {"select": "margin"}}})
    assert old == ReasoningConfig.from_dict({"format": {"name": "score", "options": {"select": "margin"}}})
    assert SFTDatasetConfig.from_dict({"strategy": "select"}).format_name == "select"
    notes = [line for line in capsys.readouterr().err.splitlines() if line]
    assert notes == [format_base.DEPRECATED_STRATEGY]  # one line, once per process
    for shipped in sorted((ROOT / "recipes" / "reasoning").rglob("*.yaml")):
        assert not re.search(r"(?m)^strategy:", shipped.read_text()), shipped  # the shipped files use format:
    assert rewrite_deprecated(["eval", "--strategy", "sftdt", "--strategy=score", "--", "--strategy"]) == \
        ["eval", "--format", "sftdt", "--format=score", "--", "--strategy"]


def test_segment_and_eval_take_format_and_hide_strategy():
    from dtwinseg.cli.main import app
    from typer.testing import CliRunner

    for command in ("segment", "eval", "build-sft"):
        out = CliRunner().invoke(app, [command, "--help"], terminal_width=200).output
        assert "--format " in out and "--strategy" not in out, command


def test_files_written_before_the_rename_still_load_and_resume(tmp_path):
    spec, cache = build_bench(tmp_path)
    run = tmp_path / "run"
    opts = EvalOptions(batch_size=2, progress=False, worst_k=0)

    def ck(name: str = "select") -> Checkpoint:  # unfilled prompts: that version's (spatial.fill_tokens came later)
        fmt = FormatConfig(spatial=SpatialConfig(fill_tokens=None))
        return Checkpoint("a", "m1", ReasoningConfig(model="m1", format_name=name, format=fmt),
                          reasoner=OracleReasoner(spec))

    first = evaluate(spec, cache, [ck()], run, opts, log=lambda s: None)
    # identity.json and run.json as the previous version wrote them (that version's reasoning hash of
    # ReasoningConfig(model="m1", strategy="select"), computed by it)
    (run / "a" / "identity.json").write_text(json.dumps({
        "backend": "transformers", "model": "m1", "adapter": None, "strategy": "select",
        "reasoning_hash": "679fafbf24176389", "twin_cache": json.loads((run / "a" / "identity.json").read_text())
        ["twin_cache"]}))
    info = json.loads((run / "run.json").read_text())
    for desc in info["checkpoints"].values():
        desc["strategy"] = desc.pop("format")
    (run / "run.json").write_text(json.dumps(info))
    again = evaluate(spec, cache, [ck()], run, opts, log=lambda s: None)  # resumes: the same identity
    assert again["checkpoints"]["a"]["groups"] == first["checkpoints"]["a"]["groups"]
    with pytest.raises(DataError, match="--restart"):
        evaluate(spec, cache, [ck("score")], run, opts, log=lambda s: None)
    with pytest.raises(DataError, match="--restart"):  # today's default fills the prompts: other answers
        evaluate(spec, cache, [Checkpoint("a", "m1", ReasoningConfig(model="m1", format_name="select"),
                                          reasoner=OracleReasoner(spec))], run, opts, log=lambda s: None)
    old_metrics = {"checkpoints": {"m": {**again["checkpoints"]["a"], "strategy": "sftdt"}}}
    del old_metrics["checkpoints"]["m"]["format"]
    assert recorded_format(old_metrics["checkpoints"]["m"]) == "sftdt"
    assert "| m | sftdt |" in metrics_table(old_metrics)
