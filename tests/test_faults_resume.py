"""Fault tests of resuming: a rerun checks what it resumes (checkpoint identity, --restart), a lock stops
two writers of one output and never outlives a kill -9, failed samples are retried, and twins built while
the VLM returned null content are refilled when it answers again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dtwinseg.data_builders.build_dt import build_dt
from dtwinseg.data_builders.dt_cache import vlm_fallbacks
from dtwinseg.eval.checkpoints import Checkpoint
from dtwinseg.eval.harness import EvalOptions, evaluate, evaluate_shard
from dtwinseg.eval.records import load_records
from test_harness import Interrupting, N, OracleReasoner, build_bench

from dtwinseg.io import DataError
from dtwinseg.perception.builder import PerceptionConfig
from dtwinseg.reasoning import ReasoningConfig
from dtwinseg.runtime import RunLock

QUIET = {"log": lambda s: None}
ROOT = Path(__file__).resolve().parent.parent


def opts(**kw) -> EvalOptions:
    return EvalOptions(**{"batch_size": 2, "progress": False, "worst_k": 0, **kw})


@pytest.fixture
def bench(tmp_path):
    return build_bench(tmp_path)


def ck(spec: str, model: str = "m1", format_name: str = "select", reasoner=None, **cfg) -> Checkpoint:
    rc = ReasoningConfig(model=model, format_name=format_name, **cfg)
    return Checkpoint("a", model, rc, reasoner=reasoner or OracleReasoner(spec))


def test_rerun_with_another_model_or_format_refuses_unless_restart(bench, tmp_path):
    spec, cache = bench
    run = tmp_path / "run"
    first = evaluate(spec, cache, [ck(spec)], run, opts(), **QUIET)
    # operational settings (batch size, retries) do not change the identity: a plain resume
    again = evaluate(spec, cache, [ck(spec, batch_size=5, max_retries=1)], run, opts(), **QUIET)
    assert again["checkpoints"]["a"]["groups"] == first["checkpoints"]["a"]["groups"]
    for other in (ck(spec, model="m2"), ck(spec, format_name="score"), ck(spec, max_new_tokens=7)):
        with pytest.raises(DataError, match="--restart") as err:
            evaluate(spec, cache, [other], run, opts(), **QUIET)
        assert "'a' in this run was evaluated with" in str(err.value)
    assert len(load_records(run / "a" / "predictions.jsonl")) == N  # nothing was touched
    restarted = evaluate(spec, cache, [ck(spec, model="m2")], run, opts(restart=True), **QUIET)
    assert restarted["checkpoints"]["a"]["model"] == "m2" and restarted["checkpoints"]["a"]["n"] == N
    assert len(load_records(run / "a" / "predictions.jsonl")) == N  # started over, not appended to
    with pytest.raises(DataError):  # and the new identity is now the recorded one
        evaluate(spec, cache, [ck(spec, model="m1")], run, opts(), **QUIET)


def test_resume_after_interruption_keeps_identity_and_matches_one_shot(bench, tmp_path):
    spec, cache = bench
    fresh = evaluate(spec, cache, [ck(spec)], tmp_path / "fresh", opts(), **QUIET)
    run = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        evaluate(spec, cache, [ck(spec, reasoner=Interrupting(spec))], run, opts(), **QUIET)
    assert json.loads((run / "a" / "identity.json").read_text())["model"] == "m1"
    resumed = evaluate(spec, cache, [ck(spec)], run, opts(), **QUIET)
    strip = ("time", "dataset")
    assert {k: v for k, v in resumed.items() if k not in strip} == {k: v for k, v in fresh.items() if k not in strip}


def test_merge_refuses_shards_of_different_checkpoints(bench, tmp_path):
    spec, cache = bench
    run = tmp_path / "run"
    assert evaluate(spec, cache, [ck(spec)], run, opts(shard=(0, 2)), **QUIET) is None
    with pytest.raises(DataError, match="different checkpoints"):
        evaluate(spec, cache, [ck(spec, model="m2")], run, opts(shard=(1, 2)), **QUIET)


def test_lock_stops_a_second_writer_of_the_same_out(bench, tmp_path):
    spec, cache = bench
    run = tmp_path / "run"
    with RunLock(run / ".lock"):
        with pytest.raises(DataError, match="is being written by") as err:
            evaluate(spec, cache, [ck(spec)], run, opts(), **QUIET)
        assert f"{os.getpid()}@" in str(err.value)
    assert not (run / "a" / "predictions.jsonl").exists()
    assert evaluate(spec, cache, [ck(spec)], run, opts(), **QUIET)["checkpoints"]["a"]["n"] == N
    sharded = tmp_path / "sharded"
    with RunLock(sharded / ".lock.shard-0-of-2"):
        with pytest.raises(DataError, match="shard 0/2"):
            evaluate(spec, cache, [ck(spec)], sharded, opts(shard=(0, 2)), **QUIET)
        # the other shard of the same run has its own lock and goes on
        assert evaluate(spec, cache, [ck(spec)], sharded, opts(shard=(1, 2)), **QUIET) is None
    assert evaluate(spec, cache, [ck(spec)], sharded, opts(shard=(0, 2)), **QUIET)["checkpoints"]["a"]["n"] == N


def test_stale_lock_after_kill_9_does_not_block(tmp_path):
    lock = tmp_path / "out" / ".lock"
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from dtwinseg.runtime import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock), str(ROOT)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(DataError, match=f"{proc.pid}@"):
            RunLock(lock).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert lock.exists()  # the file stays behind, the lock does not
    t0 = time.monotonic()
    with RunLock(lock):
        assert lock.read_text().startswith(f"{os.getpid()}@")
    assert time.monotonic() - t0 < 1.0


def test_failed_samples_are_retried_by_default_and_kept_with_no_retry(bench, tmp_path):
    spec, cache = bench

    class Outage(OracleReasoner):
        def reason(self, items):
            outs = super().reason(items)
            for o in outs:
                o.error, o.ids = "HTTP 503 after 5 retries", []
            return outs

    run = tmp_path / "run"
    res = evaluate_shard(spec, cache, [ck(spec, reasoner=Outage(spec))], run, opts(), **QUIET)
    assert res.states["a"]["errors"] == N - 1 and res.all_failed_labels == ["a"]
    kept = evaluate_shard(spec, cache, [ck(spec)], run, opts(retry_failed=False), **QUIET)
    assert kept.states["a"]["errors"] == N - 1
    healed = evaluate_shard(spec, cache, [ck(spec)], run, opts(), **QUIET)
    assert healed.states["a"]["errors"] == 0 and healed.all_failed_labels == []
    fresh = evaluate(spec, cache, [ck(spec)], tmp_path / "fresh", opts(), **QUIET)
    assert healed.metrics["checkpoints"]["a"]["groups"] == fresh["checkpoints"]["a"]["groups"]
    assert len(load_records(run / "a" / "predictions.jsonl")) == N  # no duplicates


def test_twins_with_vlm_fallbacks_are_refilled_when_the_vlm_answers(tmp_path, monkeypatch):
    from test_build_dt import write_reasonseg

    from tests.perception_helpers import ChatServer

    root = write_reasonseg(tmp_path / "data", 2)
    spec = f"reasonseg:{root}:val"
    monkeypatch.setenv("H2_TEST_KEY", "sk-x")
    mode = {"null": True}  # the VLM returns null content until it comes back
    # one answer both parsers read: granularity 1, description "1 red cup"
    with ChatServer(respond_fn=lambda body: (200, None if mode["null"] else "Description: 1 red cup")) as srv:
        cfg_path = tmp_path / "vlm.yaml"
        cfg_path.write_text(f"source: oracle\nvlm:\n  backend: openai\n  model: v\n  base_url: {srv.url}\n"
                            "  api_key_env: H2_TEST_KEY\n  max_retries: 0\n")
        cfg = PerceptionConfig.from_yaml(cfg_path)
        cache, counts = build_dt(spec, cfg, tmp_path / "dt", progress=False)
        assert counts.built == 2 and all(vlm_fallbacks(t) > 0 for t in cache.iter_twins())
        assert [cache.inspect(f"s0{k}")[0] for k in range(2)] == ["fallback", "fallback"]
        _, kept = build_dt(spec, cfg, tmp_path / "dt", progress=False, refill_fallbacks=False)
        assert (kept.existing, kept.built) == (2, 0)
        mode["null"] = False
        _, again = build_dt(spec, cfg, tmp_path / "dt", progress=False)
        assert (again.refilled, again.built) == (2, 2)
        assert all(vlm_fallbacks(t) == 0 and all(o.semantic == "1 red cup" for o in t.objects)
                   for t in cache.iter_twins())
        _, settled = build_dt(spec, cfg, tmp_path / "dt", progress=False)
        assert (settled.existing, settled.refilled) == (2, 0)


@pytest.mark.slow
def test_kill_9_of_an_eval_process_resumes_to_the_one_shot_result(bench, tmp_path):
    """A real `dtwinseg eval` process (API model on loopback, slowed down) is killed with SIGKILL while
    writing; the rerun is not blocked by its lock, keeps its identity and ends with the one-shot metrics."""
    from tests.perception_helpers import ChatServer

    spec, cache = bench
    with ChatServer(default=(200, "Answer: [0]"), delay_s=0.4) as srv:
        rcfg = tmp_path / "r.yaml"
        rcfg.write_text(f"base_url: {srv.url}\nmax_retries: 0\napi_key_env: NO_SUCH_KEY_VAR\nbatch_size: 1\n"
                        "concurrency: 1\n")
        args = [sys.executable, "-m", "dtwinseg.cli", "eval", spec, "--dt-cache", str(cache), "-c", "api=openai:m",
                "--reasoning-config", str(rcfg), "--worst", "0"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        run = tmp_path / "killed"
        proc = subprocess.Popen(args + ["--out", str(run)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pred = run / "api" / "predictions.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not pred.exists() or len(pred.read_text().splitlines()) < 2):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert (run / ".lock").exists() and not (run / "metrics.json").exists()
        assert 2 <= len(load_records(pred)) < N
        from dtwinseg.cli.main import app
        from typer.testing import CliRunner

        resumed = CliRunner().invoke(app, args[3:] + ["--out", str(run)])  # in-process: same command
        assert resumed.exit_code == 0 and "resuming" in resumed.output, resumed.output
        once = CliRunner().invoke(app, args[3:] + ["--out", str(tmp_path / "once")])
        assert once.exit_code == 0, once.output
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (run, tmp_path / "once"))
    assert a["checkpoints"] == b["checkpoints"]
    assert sorted(r["id"] for r in load_records(pred)) == [f"s{k:02d}" for k in range(N)]


def test_duplicate_records_from_an_unlocked_double_run_count_once(bench, tmp_path):
    spec, cache = bench
    run = tmp_path / "run"
    once = evaluate(spec, cache, [ck(spec)], run, opts(), **QUIET)
    pred = run / "a" / "predictions.jsonl"
    pred.write_text(pred.read_text() * 2)  # what two unlocked writers used to leave behind
    again = evaluate(spec, cache, [ck(spec)], run, opts(), **QUIET)
    assert again["checkpoints"]["a"] == once["checkpoints"]["a"] and len(load_records(pred)) == N


def test_resume_on_another_twin_cache_or_changed_twins_refuses_unless_restart(bench, tmp_path):
    """Predictions are answers about twins: resuming them with twins of another cache (another perception
    config) or with twins whose content changed since would mix answers about different twins."""
    import shutil

    from dtwinseg.data_builders.dt_cache import DTCache
    from test_harness import MISSING, _rect

    from dtwinseg.twin import DigitalTwin

    spec, cache = bench
    run = tmp_path / "run"
    first = evaluate(spec, cache, [ck(spec)], run, opts(), **QUIET)
    # the same twins under another perception config: another cache, refused by its config hash
    other = DTCache.create(tmp_path / "other", {"perception": "another config"})
    for p in DTCache.open(cache).twins_dir.glob("*.json"):
        shutil.copy(p, other.twins_dir / p.name)
    with pytest.raises(DataError, match="twin_cache.*--restart"):
        evaluate(spec, other.folder, [ck(spec)], run, opts(), **QUIET)
    # the same config, but the twins were rebuilt (a copy of the cache, one twin's semantics changed)
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    c2 = DTCache.open(copy)
    twin = c2.get("s01")
    twin.objects[0].semantic = "green tree"
    c2.put("s01", twin)
    with pytest.raises(DataError, match="1 of its 8 predictions were computed on twins that changed") as err:
        evaluate(spec, copy, [ck(spec)], run, opts(), **QUIET)
    assert "'s01'" in str(err.value) and "--restart" in str(err.value)
    assert len(load_records(run / "a" / "predictions.jsonl")) == N  # nothing was touched
    # an unchanged copy resumes; a twin added since (the sample that had none) is picked up
    shutil.rmtree(copy)
    shutil.copytree(cache, copy)
    c2 = DTCache.open(copy)
    c2.put(MISSING, DigitalTwin.from_masks(MISSING, np.stack([_rect(1, 2, 5, 9)]), semantics=["red cup"]))
    again = evaluate(spec, copy, [ck(spec)], run, opts(), **QUIET)
    assert again["checkpoints"]["a"]["missing_twins"] == 0
    assert first["checkpoints"]["a"]["missing_twins"] == 1
    # --restart evaluates again on the other cache
    restarted = evaluate(spec, other.folder, [ck(spec)], run, opts(restart=True), **QUIET)
    assert restarted["checkpoints"]["a"]["n"] == N
