"""The evaluation harness: oracle bound, resume after interruption, sharded == single process, reports,
compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dtwinseg.data_builders.dt_cache import DTCache
from dtwinseg.data_builders.registry import open_dataset
from dtwinseg.eval.checkpoints import Checkpoint, parse_checkpoint
from dtwinseg.eval.harness import EvalOptions, evaluate, load_records, parse_shard
from reasoning_helpers import SemanticChatServer, save_tiny_llama, write_reasonseg

from dtwinseg.metrics import best_subset, compute_giou_ciou
from dtwinseg.parsing import ParseResult
from dtwinseg.reasoning import ReasoningConfig, ReasoningOutput
from dtwinseg.twin import DigitalTwin

ROOT = Path(__file__).resolve().parent.parent
H, W = 24, 32
N = 8
MISSING, PARTIAL, EMPTY = "s05", "s03", "s06"


def _rect(x0, y0, x1, y1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def build_bench(root: Path) -> tuple[str, Path]:
    """A ReasonSeg-format test split and a DT cache: targets are "red cup"s, distractors "blue chair"s;
    one twin misses half its target (oracle < 1), one sample has no twin, one has an empty ground truth."""
    items, cache = [], DTCache.create(root / "cache", {"perception": "test"})
    for k in range(N):
        sid = f"s{k:02d}"
        targets = [] if sid == EMPTY else [(1 + 7 * j, 2, 5 + 7 * j, 8 + k % 5) for j in range(1 + k % 2)]
        distractors = [(18, 2 + 7 * j, 28, 6 + 7 * j) for j in range(2)]
        long = k % 2 == 1
        items.append({"id": sid, "query": "Please find the red cup on the table." if long else "the red cup",
                      "is_sentence": long, "rects": targets, "size": (H, W),
                      "dimension": "spatial" if long else "recognition"})
        if sid == MISSING:
            continue
        masks = [_rect(*r) for r in targets]
        if sid == PARTIAL:
            masks[0][6:] = False  # perception error: the twin covers only the top of the target
        masks += [_rect(*r) for r in distractors]
        sem = ["red cup"] * len(targets) + ["blue chair"] * len(distractors)
        if k == 7:
            sem[0] = "green tree"  # a reasoning error for the semantic API stand-in
        cache.put(sid, DigitalTwin.from_masks(sid, np.stack(masks), semantics=sem))
    write_reasonseg(root / "data", "test", items)
    return f"reasonseg:{root / 'data'}:test", root / "cache"


class OracleReasoner:
    """Answers with the ground-truth-best subset of each twin (what perfect reasoning would do)."""

    def __init__(self, spec: str):
        self.gts = {s.id: s.gt_mask for s in open_dataset(spec)}
        self.calls = 0

    def reason(self, items):
        self.calls += 1
        outs = []
        for twin, _ in items:
            ids, _ = best_subset(twin.masks(), self.gts[twin.image_id], twin.ids)
            outs.append(ReasoningOutput(ids, ParseResult("ok", ids), f"Answer: {ids}", "oracle"))
        return outs


class Interrupting(OracleReasoner):
    def reason(self, items):
        if self.calls == 2:
            raise KeyboardInterrupt
        return super().reason(items)


@pytest.fixture
def bench(tmp_path):
    return build_bench(tmp_path)


def _strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "time"}


def test_ground_truth_best_reasoner_reaches_the_oracle_bound(bench, tmp_path):
    spec, cache = bench
    ck = Checkpoint("oracle", "oracle", ReasoningConfig(), reasoner=OracleReasoner(spec))
    m = evaluate(spec, cache, [ck], tmp_path / "run", EvalOptions(batch_size=3, progress=False, worst_k=2),
                 log=lambda s: None)
    c = m["checkpoints"]["oracle"]
    assert set(c["groups"]) == {"overall", "short", "long"} and set(c["dimensions"]) == {"recognition", "spatial"}
    for e in list(c["groups"].values()) + list(c["dimensions"].values()):
        assert e["giou"] == pytest.approx(e["oracle_giou"], abs=1e-12)
        assert e["ciou"] == pytest.approx(e["oracle_ciou"], abs=1e-12)
    assert c["groups"]["overall"]["oracle_giou"] < 0.99  # the partial twin and the missing twin cost IoU
    assert c["missing_twins"] == 1 and c["parse"] == {"ok": N - 1, "repaired": 0, "failed": 1}
    # independent recomputation with the metric on dense masks
    cache_obj = DTCache.open(cache)
    preds, gts = [], []
    for s in open_dataset(spec):
        twin = cache_obj.get(s.id)
        ids = best_subset(twin.masks(), s.gt_mask, twin.ids)[0] if twin else []
        preds.append(twin.union(ids) if twin else np.zeros((H, W), bool))
        gts.append(s.gt_mask)
    ref = compute_giou_ciou(preds, gts)
    assert c["groups"]["overall"]["giou"] == pytest.approx(ref["giou"], abs=1e-12)
    assert c["groups"]["overall"]["ciou"] == pytest.approx(ref["ciou"], abs=1e-12)
    out = tmp_path / "run"
    report = (out / "report.md").read_text()
    assert "| oracle | select |" in report and "## Per dimension" in report
    assert (out / "plots" / "overall.png").stat().st_size > 0 and len(list((out / "worst" / "oracle").glob("*.png"))) == 2
    # the worst cases are embedded with their query, ids and IoU; metrics.csv is the same numbers, tidy
    assert report.count("![oracle ") == 2 and report.count("](worst/oracle/") == 2 and "query `" in report
    import csv

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert list(rows[0]) == ["checkpoint", "split", "group", "giou", "ciou", "oracle", "n"]
    assert {r["group"] for r in rows} == {"overall", "short", "long", "dimension:recognition", "dimension:spatial"}
    for r in rows:
        e = c["groups"].get(r["group"]) or c["dimensions"][r["group"].split(":", 1)[1]]
        assert float(r["giou"]) == pytest.approx(e["giou"], abs=1e-12) and int(r["n"]) == e["n"]
        assert float(r["oracle"]) == pytest.approx(e["oracle_giou"], abs=1e-12) and r["checkpoint"] == "oracle"


def test_resume_after_interruption_gives_identical_metrics(bench, tmp_path):
    spec, cache = bench
    opts = EvalOptions(batch_size=2, progress=False, worst_k=0)
    fresh = evaluate(spec, cache, [Checkpoint("a", "a", ReasoningConfig(), reasoner=OracleReasoner(spec))],
                     tmp_path / "fresh", opts, log=lambda s: None)
    run = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        evaluate(spec, cache, [Checkpoint("a", "a", ReasoningConfig(), reasoner=Interrupting(spec))], run, opts,
                 log=lambda s: None)
    pred = run / "a" / "predictions.jsonl"
    assert len(load_records(pred)) == 4 and not (run / "metrics.json").exists()
    with open(pred, "a") as f:
        f.write('{"id": "s04", "ids": [0')  # torn line of a killed writer
    again = OracleReasoner(spec)
    resumed = evaluate(spec, cache, [Checkpoint("a", "a", ReasoningConfig(), reasoner=again)], run, opts,
                       log=lambda s: None)
    assert _strip(resumed) | {"dataset": None} == _strip(fresh) | {"dataset": None}
    recs = load_records(pred)
    assert sorted(r["id"] for r in recs) == [f"s{k:02d}" for k in range(N)]
    assert again.calls == 2  # only the 4 remaining samples (3 with twins) were reasoned, 2 per batch


def test_parse_shard_from_text_and_env():
    assert parse_shard("1/4") == (1, 4)
    assert parse_shard(None, {"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert parse_shard(None, {}) == (0, 1)
    with pytest.raises(ValueError):
        parse_shard("4/4")


def test_checkpoint_specs(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    ad = tmp_path / "sft" / "adapter"
    ad.mkdir(parents=True)
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(folder)}))
    base = ReasoningConfig(format_name="sftdt")
    c = parse_checkpoint(str(ad), base)
    assert (c.label, c.cfg.model, c.cfg.adapter, c.cfg.format_name) == ("sft-adapter", str(folder), str(ad), "sftdt")
    c = parse_checkpoint(f"base={folder}", base)
    assert (c.label, c.cfg.model, c.cfg.adapter) == ("base", str(folder), None)
    c = parse_checkpoint("openai:gpt-4o", base)
    assert (c.label, c.cfg.backend, c.cfg.model) == ("openai-gpt-4o", "openai", "gpt-4o")
    with pytest.raises(FileNotFoundError):
        parse_checkpoint(str(tmp_path / "nothing"), base)


@pytest.mark.slow
def test_two_process_sharded_run_equals_one_process(bench, tmp_path):
    """Two CLI processes (--shard 0/2, 1/2), a tiny local model and a loopback API model in one command;
    merged metrics equal a single-process run; compare adds the paper's reference rows."""
    spec, cache = bench
    model = save_tiny_llama(tmp_path / "tiny")
    with SemanticChatServer() as server:
        rcfg = tmp_path / "reasoning.yaml"
        rcfg.write_text(f"format: select\nbase_url: {server.url}\napi_key_env: DTWINSEG_TEST_KEY\n"
                        "max_new_tokens: 6\nbatch_size: 4\nmax_retries: 0\n")
        args = [spec, "--dt-cache", str(cache), "-c", "api=openai:fake-4o", "-c", f"tiny={model}",
                "--reasoning-config", str(rcfg), "--worst", "1"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "DTWINSEG_TEST_KEY": "sk-secret-xyz",
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "dtwinseg.cli", "eval"] + args + ["--out", str(tmp_path / "sharded")]
        procs = [subprocess.Popen(cmd + ["--shard", f"{i}/2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for i in range(2)]
        logs = [p.communicate(timeout=300)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), logs
        from dtwinseg.cli.main import app
        from typer.testing import CliRunner

        os.environ["DTWINSEG_TEST_KEY"] = "sk-secret-xyz"
        try:
            res = CliRunner().invoke(app, ["eval"] + args + ["--out", str(tmp_path / "single")])
        finally:
            del os.environ["DTWINSEG_TEST_KEY"]
        assert res.exit_code == 0, res.output
    sharded = json.loads((tmp_path / "sharded" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert _strip(sharded) == _strip(single)
    api = single["checkpoints"]["api"]["groups"]["overall"]
    assert 0.2 < api["giou"] < api["oracle_giou"]  # the API stand-in gets most, but not all, right
    assert sum(single["checkpoints"]["tiny"]["parse"].values()) == N
    assert len(list((tmp_path / "sharded" / "api").glob("predictions.shard-*-of-2.jsonl"))) == 2
    everything = "".join(p.read_text(errors="ignore") for p in (tmp_path / "sharded").rglob("*")
                         if p.is_file() and p.suffix in (".json", ".jsonl", ".md"))
    assert "sk-secret-xyz" not in everything + "".join(logs)

    # eval-merge recomputes the same metrics from the shard states
    (tmp_path / "sharded" / "metrics.json").unlink()
    res = CliRunner().invoke(app, ["eval-merge", str(tmp_path / "sharded"), "--worst", "0"])
    assert res.exit_code == 0, res.output
    assert _strip(json.loads((tmp_path / "sharded" / "metrics.json").read_text())) == _strip(single)
    # a damaged state or run file is one line naming it (and the field), not a traceback
    state = tmp_path / "sharded" / "api" / "state.shard-1-of-2.json"
    good_state, good_info = state.read_text(), (tmp_path / "sharded" / "run.json").read_text()
    for path, text, match in ((state, '{"shard": [1, 2], "pred": 5}', "state.shard-1-of-2.json: malformed shard"),
                              (tmp_path / "sharded" / "run.json", "{}", "run.json: field 'checkpoints': missing"),
                              (tmp_path / "sharded" / "run.json", "[]", "run.json: not a dtwinseg eval run file")):
        path.write_text(text)
        res = CliRunner().invoke(app, ["eval-merge", str(tmp_path / "sharded"), "--worst", "0"])
        assert res.exit_code == 2 and match in " ".join(res.output.split()), res.output
        state.write_text(good_state)
        (tmp_path / "sharded" / "run.json").write_text(good_info)

    res = CliRunner().invoke(app, ["compare", str(tmp_path / "sharded"), str(tmp_path / "single"),
                                   "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "sharded/api" in md and "single/tiny" in md and "*DTwinSeger (paper)* | 64.4 / 70.2" in md
    assert f"{100 * api['giou']:.1f} / {100 * api['ciou']:.1f}" in md
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
