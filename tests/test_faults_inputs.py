"""Fault tests: bad input files for eval and build-dt, constructed on disk. Every case is one line (exit 2)
or a counted skip / failure; a run always ends with a summary line; none prints a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dtwinseg.cli.main import app
from dtwinseg.data_builders.build_dt import build_dt
from dtwinseg.data_builders.dt_cache import DTCache
from dtwinseg.data_builders.registry import open_dataset
from dtwinseg.eval.checkpoints import Checkpoint
from dtwinseg.eval.harness import EvalOptions, evaluate, evaluate_shard
from PIL import Image
from test_harness import N, OracleReasoner, build_bench
from typer.testing import CliRunner

from dtwinseg.io import DataError
from dtwinseg.perception.builder import PerceptionConfig
from dtwinseg.reasoning import ReasoningConfig
from tests.perception_helpers import ChatServer

QUIET = {"log": lambda s: None}


def opts(**kw) -> EvalOptions:
    return EvalOptions(**{"batch_size": 3, "progress": False, "worst_k": 2, **kw})


def oracle(spec: str, label: str = "o") -> Checkpoint:
    return Checkpoint(label, label, ReasoningConfig(), reasoner=OracleReasoner(spec))


@pytest.fixture
def bench(tmp_path):
    spec, cache = build_bench(tmp_path)
    return spec, cache, tmp_path / "data" / "test"


def _run_cli(args: list[str], env: dict | None = None):
    return CliRunner().invoke(app, args, env=env)


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


# --- reader-level faults: one line naming file and field, or a counted skip --------------------
BAD_ANNOTATIONS = {
    "truncated": (lambda d: (d / "s02.json").write_text('{"text": ["the red cup"], "is_sen'), "s02.json", None),
    "not_an_object": (lambda d: (d / "s02.json").write_text("[1, 2, 3]"), "s02.json", None),
    "nan_points": (lambda d: (d / "s02.json").write_text(
        '{"text": ["q"], "is_sentence": false, "shapes": [{"label": "t", "points": [[NaN, 1], [2, 3]]}]}'),
        "s02.json", "shapes[0].points"),
    "zero_byte_jpeg": (lambda d: (d / "s02.jpg").write_bytes(b""), "s02.jpg", None),
    "wrong_type": (lambda d: (d / "s02.json").write_text('{"text": 5, "is_sentence": false, "shapes": []}'),
                   "s02.json", "text"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_sample_is_one_line_strict_and_a_counted_skip_lenient(bench, tmp_path, case):
    spec, cache, split_dir = bench
    damage, file_name, field = BAD_ANNOTATIONS[case]
    ck = oracle(spec)  # reads the ground truth before the damage
    damage(split_dir)
    with pytest.raises(DataError) as err:
        evaluate(spec, cache, [ck], tmp_path / "strict", opts(), **QUIET)
    assert err.value.path.endswith(file_name) and (field is None or err.value.field == field)
    res = _run_cli(["eval", spec, "--dt-cache", str(cache), "-c", "x=openai:m", "--out", str(tmp_path / "cli")])
    assert file_name in _one_line_error(res)
    lines: list[str] = []
    m = evaluate(spec, cache, [ck], tmp_path / "lenient", opts(strict=False), log=lines.append)
    c = m["checkpoints"]["o"]
    assert c["n"] == N - 1  # the bad sample is not scored ...
    info = json.loads((tmp_path / "lenient" / "run.json").read_text())
    assert [Path(f).name for f, _ in info["skipped_files"]] == [file_name]  # ... and is counted
    assert any("1 input file(s) skipped" in ln for ln in lines)


def test_bom_is_read_and_header_only_jpeg_does_not_stop_eval(bench, tmp_path):
    spec, cache, split_dir = bench
    ck = oracle(spec)
    raw = (split_dir / "s01.json").read_bytes()
    (split_dir / "s01.json").write_bytes(b"\xef\xbb\xbf" + raw)  # UTF-8 BOM (Windows editors)
    jpeg = (split_dir / "s04.jpg").read_bytes()
    (split_dir / "s04.jpg").write_bytes(jpeg[:jpeg.index(b"\xff\xda") + 14])  # header only: no pixel data
    m = evaluate(spec, cache, [ck], tmp_path / "run", opts(worst_k=N), **QUIET)
    c = m["checkpoints"]["o"]
    assert c["n"] == N and c["input_errors"] == 0 and c["bad_twins"] == 0
    assert (tmp_path / "run" / "report.md").exists()  # the unreadable pixels cost one overlay at most


def test_limit_zero_is_an_error_not_an_empty_success(bench, tmp_path):
    spec, cache, _ = bench
    with pytest.raises(DataError, match="--limit"):
        evaluate(spec, cache, [oracle(spec)], tmp_path / "run", opts(limit=0), **QUIET)


def test_annotation_without_image_is_a_counted_skip(bench):
    spec, _, split_dir = bench
    (split_dir / "s03.jpg").unlink()
    ds = open_dataset(spec)
    assert len(ds) == N - 1 and [Path(f).name for f, _ in ds.skipped] == ["s03.json"]


@pytest.mark.parametrize("case", ["missing_root", "bad_spec", "empty_split", "unknown_reader"])
def test_dataset_spec_errors_are_one_line(tmp_path, case):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    (tmp_path / "cache" / "h" / "twins").mkdir(parents=True)
    spec = {"missing_root": f"reasonseg:{tmp_path / 'nowhere'}:test", "bad_spec": "reasonseg-only",
            "empty_split": f"reasonseg:{tmp_path / 'empty'}:test", "unknown_reader": f"nope:{tmp_path}:test"}[case]
    line = _one_line_error(_run_cli(["eval", spec, "--dt-cache", str(tmp_path / "cache"), "-c", "x=openai:m",
                                     "--out", str(tmp_path / "out")]))
    assert {"missing_root": "not found", "bad_spec": "DATASET_SPEC", "empty_split": "no samples",
            "unknown_reader": "unknown dataset"}[case] in line
    cfg = tmp_path / "oracle.yaml"
    cfg.write_text("source: oracle\nvlm:\n  backend: none\n")
    _one_line_error(_run_cli(["build-dt", spec, "-c", str(cfg), "-o", str(tmp_path / "dt"), "--no-progress"]))


# --- twin faults: counted in eval, rebuilt by build-dt -----------------------------------------
def test_corrupt_and_resized_twins_are_counted_failures_not_aborts(bench, tmp_path):
    spec, cache, split_dir = bench
    ck = oracle(spec)
    folder = DTCache.open(cache)
    twin_path = folder.path_for("s01")
    twin_path.write_text(twin_path.read_text()[:40])  # truncated by a full disk
    Image.new("RGB", (40, 30)).save(split_dir / "s02.jpg")  # the image was resized after caching
    for attempt in range(2):  # the run finishes, and a rerun (retrying the failures) finishes again
        m = evaluate(spec, cache, [ck], tmp_path / "run", opts(), **QUIET)
        c = m["checkpoints"]["o"]
        assert c["n"] == N and c["bad_twins"] == 2 and c["missing_twins"] == 1, attempt
    recs = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "o" / "predictions.jsonl").open())}
    assert "corrupt twin file" in recs["s01"]["error"] and str(twin_path) in recs["s01"]["error"]
    assert "twin size 24x32 != image size 30x40" in recs["s02"]["error"]
    assert recs["s01"]["iou"] == 0.0 and recs["s01"]["status"] == "failed"


def test_build_dt_rebuilds_a_corrupt_twin(tmp_path):
    from test_build_dt import oracle_config, twin_dicts, write_reasonseg

    root = write_reasonseg(tmp_path / "data", 3)
    spec = f"reasonseg:{root}:val"
    cfg = PerceptionConfig.from_yaml(oracle_config(tmp_path))
    cache, counts = build_dt(spec, cfg, tmp_path / "dt", progress=False)
    assert counts.built == 3
    before = twin_dicts(cache)
    victim = sorted(cache.twins_dir.glob("*.json"))[1]
    victim.write_bytes(victim.read_bytes()[:25])
    _, again = build_dt(spec, cfg, tmp_path / "dt", progress=False)
    assert (again.rebuilt_corrupt, again.built, again.existing) == (1, 1, 2)
    assert twin_dicts(cache) == before
    assert "1 corrupt twins rebuilt" in again.summary()
    image = root / "val" / "s02.jpg"
    Image.open(image).resize((40, 30)).save(image)  # the image was resized after its twin was cached
    (root / "val" / "s02.instances.json").unlink()  # (its oracle instances no longer fit it either)
    _, resized = build_dt(spec, cfg, tmp_path / "dt", progress=False)
    assert resized.rebuilt_corrupt == 1 and resized.built + resized.failed == 1


def test_eval_exits_non_zero_when_every_sample_failed_and_always_summarises(bench, tmp_path):
    spec, cache, _ = bench
    rcfg = tmp_path / "r.yaml"
    with ChatServer(default=(500, "down")) as srv:
        rcfg.write_text(f"base_url: {srv.url}\nmax_retries: 0\napi_key_env: NO_SUCH_KEY_VAR\n")
        res = _run_cli(["eval", spec, "--dt-cache", str(cache), "-c", "api=openai:m", "--reasoning-config",
                        str(rcfg), "--out", str(tmp_path / "down"), "--worst", "0"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"[api] {N} samples: 0 answered, {N - 1} errors, 1 missing twins" in res.output
    assert "every sample failed for api" in res.output
    assert "[api] first error: " in res.output and "500" in res.output
    with ChatServer(default=(200, "Answer: [0]")) as srv:
        rcfg.write_text(f"base_url: {srv.url}\nmax_retries: 0\napi_key_env: NO_SUCH_KEY_VAR\n")
        res = _run_cli(["eval", spec, "--dt-cache", str(cache), "-c", "api=openai:m", "--reasoning-config",
                        str(rcfg), "--out", str(tmp_path / "down"), "--worst", "0"])
    assert res.exit_code == 0, res.output
    # the failed samples were retried (default --retry-failed), the missing twin stays a counted failure
    assert f"retrying {N} sample(s)" in res.output and f"[api] {N} samples: {N - 1} answered" in res.output


def test_a_reasoner_raising_on_one_sample_costs_that_sample_only(bench, tmp_path):
    spec, cache, _ = bench

    class Flaky(OracleReasoner):
        def reason(self, items):
            if any(t.image_id == "s02" for t, _ in items):
                raise RuntimeError("CUDA error: device-side assert")
            return super().reason(items)

    res = evaluate_shard(spec, cache, [Checkpoint("f", "f", ReasoningConfig(), reasoner=Flaky(spec))],
                         tmp_path / "run", opts(), **QUIET)
    s = res.states["f"]
    assert s["errors"] == 1 and s["parse"]["ok"] == N - 2 and res.all_failed_labels == []


def test_empty_ground_truth_twin_union_shapes_are_checked():
    # sanity of the size check used above, independent of files
    from dtwinseg.eval.records import twin_problem

    from tests.reasoning_helpers import make_twin

    twin = make_twin(0, size=32)
    sample = type("S", (), {"gt_mask": np.zeros((32, 32), np.uint8), "height": 32, "width": 32})()
    assert twin_problem(sample, twin) is None
    sample.gt_mask = np.zeros((16, 32), np.uint8)
    sample.height = 16
    assert "!=" in twin_problem(sample, twin)


def test_build_dt_exits_non_zero_when_every_sample_failed_and_always_summarises(tmp_path):
    from test_build_dt import oracle_config, write_reasonseg

    root = write_reasonseg(tmp_path / "data", 2, bad={0, 1})  # headers readable, pixels not
    args = ["build-dt", f"reasonseg:{root}:val", "-c", str(oracle_config(tmp_path)), "-o", str(tmp_path / "dt"),
            "--no-progress"]
    res = _run_cli(args)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "build-dt: 2 samples: 0 built, 0 existing, 2 failed" in res.output
    good = write_reasonseg(tmp_path / "good", 2)
    res = _run_cli(["build-dt", f"reasonseg:{good}:val"] + args[2:])
    assert res.exit_code == 0 and "build-dt: 2 samples: 2 built" in res.output, res.output


def test_build_dt_malformed_annotation_names_the_lenient_flag_which_skips_it(tmp_path):
    from test_build_dt import oracle_config, write_reasonseg

    root = write_reasonseg(tmp_path / "data", 3)
    annotation = sorted((root / "val").glob("*.json"))[1]
    annotation.write_text('{"text": 5, "shapes": []}')
    args = ["build-dt", f"reasonseg:{root}:val", "-c", str(oracle_config(tmp_path)), "-o", str(tmp_path / "dt"),
            "--no-progress"]
    line = _one_line_error(_run_cli(args))
    assert annotation.name in line and "field 'text'" in line and "use --lenient" in line
    res = _run_cli(args + ["--lenient"])
    assert res.exit_code == 0 and "2 built" in res.output and "1 input files skipped" in res.output, res.output


# --- round two: BOM annotations, build-dt's messages and failures file, build-segdt's streams ----------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A few synthetic scenes (annotations carry their query program) and their oracle twins."""
    root = tmp_path_factory.mktemp("synth")
    runner = CliRunner()
    res = runner.invoke(app, ["synth", "--out", str(root / "data"), "--n-train", "6", "--n-val", "0", "--n-test", "0",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    (root / "oracle.yaml").write_text("source: oracle\nvlm: {backend: none}\n")
    res = runner.invoke(app, ["build-dt", f"synthetic:{root / 'data'}:train", "-c", str(root / "oracle.yaml"), "-o",
                              str(root / "dt"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return root


def test_bom_annotations_keep_their_query_programs(synthetic, tmp_path):
    from dtwinseg.data_builders.programmatic import build_segdt

    spec = f"synthetic:{synthetic / 'data'}:train"
    plain = build_segdt(spec, synthetic / "dt", tmp_path / "plain.jsonl", progress=False)
    assert plain["path_kinds"].get("program", 0) == plain["written"] > 0
    bom = tmp_path / "bom"
    shutil.copytree(synthetic / "data", bom)
    for p in (bom / "train").glob("*.json"):
        if not p.name.endswith(".instances.json"):
            p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())  # what some Windows editors save
    with_bom = build_segdt(f"synthetic:{bom}:train", synthetic / "dt", tmp_path / "bom.jsonl", progress=False)
    assert with_bom["path_kinds"] == plain["path_kinds"] and with_bom["failed"] == 0
    assert (tmp_path / "bom.jsonl").read_text() == (tmp_path / "plain.jsonl").read_text().replace(
        str(synthetic / "data"), str(bom))


def test_build_segdt_progress_goes_to_stderr_and_stdout_is_json(synthetic, tmp_path):
    res = CliRunner().invoke(app, ["build-segdt", f"synthetic:{synthetic / 'data'}:train", "--dt-cache",
                                   str(synthetic / "dt"), "--out", str(tmp_path / "r.jsonl")])  # bar on
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"] == 6  # nothing but the counts on stdout
    assert "programmatic paths" in res.stderr


def test_build_dt_partial_failures_name_the_failures_file_whole(tmp_path):
    from test_build_dt import oracle_config, write_reasonseg

    root = write_reasonseg(tmp_path / "data", 3, bad={1})
    res = _run_cli(["build-dt", f"reasonseg:{root}:val", "-c", str(oracle_config(tmp_path)), "-o",
                    str(tmp_path / "dt"), "--no-progress"])
    assert res.exit_code == 0, res.output
    failures = next((tmp_path / "dt").glob("*/failures.jsonl"))
    assert "1 of 3 sample(s) failed" in res.stderr
    assert str(failures) in res.stderr  # on one line, never wrapped: it can be copied as it is


def test_build_dt_failures_file_keeps_no_stale_lines(tmp_path):
    from test_build_dt import oracle_config, write_reasonseg

    root = write_reasonseg(tmp_path / "data", 3, bad={1})
    args = ["build-dt", f"reasonseg:{root}:val", "-c", str(oracle_config(tmp_path)), "-o", str(tmp_path / "dt"),
            "--no-progress"]
    assert _run_cli(args).exit_code == 0
    failures = next((tmp_path / "dt").glob("*/failures.jsonl"))
    assert _run_cli(args).exit_code == 0  # it fails again: one line for it, not two
    assert [f["id"] for f in map(json.loads, failures.read_text().splitlines())] == ["s01"]
    good = write_reasonseg(tmp_path / "good", 3)
    (root / "val" / "s01.jpg").write_bytes((good / "val" / "s01.jpg").read_bytes())  # the image is fixed
    res = _run_cli(args)
    assert res.exit_code == 0 and "1 built, 2 existing, 0 failed" in res.output, res.output
    assert failures.read_text().strip() == ""  # no stale line of a sample that now has its twin


def test_build_dt_lock_error_does_not_suggest_lenient(tmp_path):
    from dtwinseg.data_builders.build_dt import dataset_tag
    from test_build_dt import oracle_config, write_reasonseg

    from dtwinseg.runtime import RunLock

    root = write_reasonseg(tmp_path / "data", 2)
    args = ["build-dt", f"reasonseg:{root}:val", "-c", str(oracle_config(tmp_path)), "-o", str(tmp_path / "dt"),
            "--no-progress"]
    assert _run_cli(args).exit_code == 0
    folder = next((tmp_path / "dt").glob("*/twins")).parent
    with RunLock(folder / f".lock.{dataset_tag(f'reasonseg:{root}:val')}"):
        line = _one_line_error(_run_cli(args))
    assert "is being written by" in line and "--lenient" not in line
