"""Teacher synthesis of Seg-DT paths through a real loopback chat-completions server: a good path is
accepted, a wrong answer and an unreadable answer are rejected and counted, the hint never reaches a
record, and `dtwinseg build-segdt --paths teacher` runs end to end."""

import json
import re

import pytest
from dtwinseg.data_builders.build_dt import build_dt
from dtwinseg.data_builders.registry import open_dataset
from dtwinseg.data_builders.segdt import load_records
from dtwinseg.data_builders.synthetic import write_dataset
from dtwinseg.data_builders.teacher import TeacherConfig, build_segdt_teacher, verify
from typer.testing import CliRunner

from dtwinseg.io import DataError
from dtwinseg.perception.builder import PerceptionConfig
from tests.perception_helpers import ChatServer

KEY = "sk-teacher-SECRET-0123456789"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    write_dataset(root / "synth", {"train": 4}, seed=11, progress=False)
    spec = f"synthetic:{root / 'synth'}:train"
    cache, _ = build_dt(spec, PerceptionConfig(source="oracle"), root / "cache", progress=False)
    queries = [s.query for s in open_dataset(spec)]
    return root, spec, cache.folder, queries


def path_text(ids, keep):
    step = {str(i): {"semantic": f"object {i}", "reasoning": f"object {i} is {'' if i in keep else 'not '}it",
                     "verdict": "keep" if i in keep else "drop"} for i in ids}
    return f"Step 1: {json.dumps(step)}\nAnswer: {json.dumps(sorted(keep))}"


def teacher(queries):
    """Good paths for queries 2 and 3, a wrong answer for query 0, prose for query 1."""

    def respond(body):
        user = body["messages"][-1]["content"]
        query = user.split("Query: ", 1)[1].split("\n", 1)[0]
        twin = json.loads(user.split("JSON(D):\n", 1)[1].split("\n\n(For you only", 1)[0])
        ids = [int(k) for k in twin]
        hint = json.loads(re.search(r"the ids (\[[\d, ]*\])", user).group(1))
        if query == queries[0]:
            return 200, path_text(ids, [i for i in ids if i not in hint][:1])
        if query == queries[1]:
            return 200, "I think it is probably the thing on the left."
        return 200, path_text(ids, hint)
    return respond


def test_teacher_paths_verified_against_ground_truth(data, monkeypatch, tmp_path):
    root, spec, cache, queries = data
    monkeypatch.setenv("DTWINSEG_TEACHER_API_KEY", KEY)
    with ChatServer(respond_fn=teacher(queries)) as srv:
        cfg = TeacherConfig(base_url=srv.base_url, model="teacher-model", timeout_s=10, backoff_s=0.01)
        out = tmp_path / "teacher.jsonl"
        counts = build_segdt_teacher(spec, cache, out, cfg, progress=False)
    assert counts["samples"] == 4 and counts["accepted"] == 2 and counts["written"] == 2
    assert counts["rejected_low_iou"] == 1 and counts["rejected_unparsed"] == 1
    assert sorted(r["reason"] for r in counts["rejected"]) == ["low_iou", "unparsed"]
    recs = load_records(out)
    assert all(r.source == "teacher" and r.match_iou >= 0.5 for r in recs)
    assert {r.query for r in recs} == set(queries[2:])
    # the teacher saw the hint and the instructions; no record, log or answer holds them or the key
    sent = srv.requests[0]["messages"]
    assert "correct answer is the ids" in sent[1]["content"] and "worked example" in sent[0]["content"]
    assert srv.auth[0] == f"Bearer {KEY}"
    text = out.read_text()
    assert "correct answer" not in text and "worked example" not in text and KEY not in text
    assert KEY not in json.dumps(counts)


def test_on_reject_programmatic_and_hint_none(data, monkeypatch, tmp_path):
    root, spec, cache, queries = data
    monkeypatch.setenv("DTWINSEG_TEACHER_API_KEY", KEY)
    with ChatServer(respond_fn=teacher(queries)) as srv:
        cfg = TeacherConfig(base_url=srv.base_url, timeout_s=10, backoff_s=0.01, on_reject="programmatic")
        counts = build_segdt_teacher(spec, cache, tmp_path / "t.jsonl", cfg, progress=False)
    assert counts["written"] == 4 and counts["fallback_programmatic"] == 2
    assert sorted(r.source for r in load_records(tmp_path / "t.jsonl")) == ["programmatic"] * 2 + ["teacher"] * 2
    with ChatServer(default=(200, "Answer: [0]")) as srv:
        cfg = TeacherConfig(base_url=srv.base_url, timeout_s=10, backoff_s=0.01, hint="none")
        counts = build_segdt_teacher(spec, cache, tmp_path / "n.jsonl", cfg, progress=False)
    assert "correct answer" not in srv.requests[0]["messages"][1]["content"]
    assert counts["rejected_unparsed"] == 4  # an answer without steps is no path


def test_failed_requests_are_counted_not_fatal(data, monkeypatch, tmp_path):
    root, spec, cache, _ = data
    with ChatServer(default=(500, "down")) as srv:
        cfg = TeacherConfig(base_url=srv.base_url, timeout_s=5, max_retries=1, backoff_s=0.01)
        counts = build_segdt_teacher(spec, cache, tmp_path / "f.jsonl", cfg, progress=False)
    assert counts["rejected_request_failed"] == 4 and counts["written"] == 0


def test_verify_rejects_invalid_paths_and_missing_reasons(data):
    import numpy as np

    from dtwinseg.twin import DigitalTwin

    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4], masks[1, 4:] = True, True
    twin = DigitalTwin.from_masks("t", masks, semantics=["top", "bottom"])
    gt = masks[0].astype(np.uint8)
    assert verify(path_text([0, 1], [0]), twin, gt, 0.5)[2] is None
    assert verify(path_text([0], [0]), twin, gt, 0.5)[2] == "invalid_path"  # object 1 never decided
    no_reason = path_text([0, 1], [0]).replace('"object 1 is not it"', '""')
    assert verify(no_reason, twin, gt, 0.5)[2] == "no_reasoning"
    assert verify(path_text([0, 1], [1]), twin, gt, 0.5)[1:] == (0.0, "low_iou")


def test_config_refuses_keys_and_bad_values(tmp_path):
    with pytest.raises(DataError, match="api_key"):
        TeacherConfig.from_dict({"api_key": "sk-x"})
    with pytest.raises(DataError, match="hint"):
        TeacherConfig.from_dict({"hint": "sometimes"})
    for bad, field in (({"temperature": -1}, "temperature"), ({"timeout_s": 0}, "timeout_s"),
                       ({"max_retries": -1}, "max_retries"), ({"max_tokens": 0}, "max_tokens"),
                       ({"chunk": 0}, "chunk")):
        with pytest.raises(DataError, match=rf"field '{field}': must be"):
            TeacherConfig.from_dict(bad)
    p = tmp_path / "t.yaml"
    p.write_text("model: m\nbogus: 1\n")
    with pytest.raises(DataError, match="bogus"):
        TeacherConfig.from_yaml(p)
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "recipes" / "segdt" / "teacher_gpt4o.yaml"
    from dtwinseg.spatial import SpatialConfig

    assert TeacherConfig.from_yaml(shipped).spatial_config() == SpatialConfig()  # the student's default JSON(D)


def test_cli_build_segdt_teacher(data, monkeypatch, tmp_path):
    from dtwinseg.cli.main import app

    root, spec, cache, queries = data
    monkeypatch.setenv("DTWINSEG_TEACHER_API_KEY", KEY)
    with ChatServer(respond_fn=teacher(queries)) as srv:
        cfg = tmp_path / "teacher.yaml"
        cfg.write_text(f"base_url: {srv.base_url}\nmodel: m\ntimeout_s: 10\nbackoff_s: 0.01\n")
        out = tmp_path / "cli.jsonl"
        res = CliRunner().invoke(app, ["build-segdt", spec, "--dt-cache", str(cache), "--out", str(out),
                                       "--paths", "teacher", "--teacher-config", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert '"accepted": 2' in res.output and "rejected" in res.output
    assert len(load_records(out)) == 2
    res = CliRunner().invoke(app, ["build-segdt", spec, "--dt-cache", str(cache), "--out", str(out),
                                   "--paths", "teacher"])
    assert res.exit_code == 1 and "--teacher-config" in res.output
    res = CliRunner().invoke(app, ["build-segdt", spec, "--dt-cache", str(cache), "--out", str(tmp_path / "p.jsonl"),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["path_kinds"] == {"program": 4}
    # nothing usable (no cached twin for any sample): exit 1, and no empty records file is written
    from dtwinseg.data_builders.synthetic import write_dataset

    write_dataset(tmp_path / "other", {"val": 2}, seed=5, progress=False)
    res = CliRunner().invoke(app, ["build-segdt", f"synthetic:{tmp_path / 'other'}:val", "--dt-cache", str(cache),
                                   "--out", str(tmp_path / "none.jsonl"), "--no-progress"])
    assert res.exit_code == 1 and "no record written from 2 samples (2 missing twin)" in res.output, res.output
    assert not (tmp_path / "none.jsonl").exists()
