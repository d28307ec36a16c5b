"""Fault tests: secrets in every form. A key with a newline is refused by name and never shown (raw,
escaped, whitespace-collapsed); a server that echoes the key in a 200 answer does not put it into
predictions or twins; publish refuses to stage a file holding a live secret. One helper finds every form
(dtwinseg.redaction) and every writer of dtwinseg.io runs it."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest
from dtwinseg.cli.main import app
from dtwinseg.data_builders.build_dt import build_dt
from test_build_dt import write_reasonseg
from test_harness import N, build_bench
from typer.testing import CliRunner

from dtwinseg.io import append_jsonl, atomic_write_json
from dtwinseg.perception.builder import PerceptionConfig
from dtwinseg.redaction import redact_text, secret_forms
from tests.perception_helpers import ChatServer

NEWLINE_KEY = "sk-live-0123456789\nABCDEFGHIJ"
ODD_KEY = "sk-live/ABC+def=0123456789\"q'"


def forms_of(key: str) -> list[str]:
    """What a leak looks like: the raw key, its escapes, its whitespace collapsed, its long pieces."""
    out = {key, json.dumps(key)[1:-1], repr(key)[1:-1], " ".join(key.split()), urllib.parse.quote(key, safe="")}
    out |= {p for p in key.replace("\n", " ").split() if len(p) >= 8}
    return sorted(out)


def assert_no_key(text: str, key: str) -> None:
    for form in forms_of(key):
        assert form not in text, f"{form!r} leaked"


@pytest.mark.parametrize("key", [NEWLINE_KEY, ODD_KEY, "hf_" + "x1y2z3" * 6])
def test_redaction_replaces_every_form_of_a_secret(key):
    text = " | ".join([key, json.dumps({"k": key}), repr(key), repr(key.encode()), urllib.parse.quote(key),
                       urllib.parse.quote_plus(key), " ".join(key.split()), f"Bearer {key}"])
    out = redact_text(text, [key], live=False)
    assert_no_key(out, key)
    assert out.count("***") >= 8 and "Bearer ***" in out
    assert secret_forms(key)[0] == max(secret_forms(key), key=len)  # longest first: no half-replaced escape


def test_every_writer_redacts_live_secrets_in_every_form(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ODD_KEY)
    atomic_write_json(tmp_path / "a.json", {"note": f"token {ODD_KEY}", "url": urllib.parse.quote(ODD_KEY)})
    append_jsonl(tmp_path / "b.jsonl", {"answer": f"Authorization: Bearer {ODD_KEY}"})
    for p in (tmp_path / "a.json", tmp_path / "b.jsonl"):
        text = p.read_text()
        assert_no_key(text, ODD_KEY)
        assert "***" in text
        json.loads(text.splitlines()[0] if p.suffix == ".jsonl" else text)  # still valid JSON


def _reasoning_yaml(tmp_path: Path, url: str, env: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(f"base_url: {url}\nmax_retries: 0\napi_key_env: {env}\n")
    return p


def test_a_key_with_a_newline_is_refused_by_name_and_never_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_LLM_CREDS", NEWLINE_KEY)  # a name no pattern knows: named by the config
    spec, cache = build_bench(tmp_path)
    with ChatServer(default=(200, "Answer: [0]")) as srv:
        rcfg = _reasoning_yaml(tmp_path, srv.url, "MY_LLM_CREDS")
        res = CliRunner().invoke(app, ["eval", spec, "--dt-cache", str(cache), "-c", "api=openai:m",
                                       "--reasoning-config", str(rcfg), "--out", str(tmp_path / "run"),
                                       "--worst", "0", "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "$MY_LLM_CREDS contains a newline" in res.output and not srv.requests
    assert_no_key(res.output, NEWLINE_KEY)
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".md"):
            assert_no_key(f.read_text(), NEWLINE_KEY)


def test_a_server_echoing_the_key_in_its_answer_never_reaches_predictions(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_LLM_CREDS", ODD_KEY)
    spec, cache = build_bench(tmp_path)
    echo = (f"Answer: [0]\nAuthorization: Bearer {ODD_KEY}\nas JSON {json.dumps(ODD_KEY)}\n"
            f"in a URL ?key={urllib.parse.quote(ODD_KEY, safe='')}")
    with ChatServer(default=(200, echo)) as srv:
        rcfg = _reasoning_yaml(tmp_path, srv.url, "MY_LLM_CREDS")
        res = CliRunner().invoke(app, ["eval", spec, "--dt-cache", str(cache), "-c", "api=openai:m",
                                       "--reasoning-config", str(rcfg), "--out", str(tmp_path / "run"),
                                       "--worst", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert srv.auth and all(a == f"Bearer {ODD_KEY}" for a in srv.auth)  # the key itself was sent
    preds = (tmp_path / "run" / "api" / "predictions.jsonl").read_text()
    assert preds.count("Bearer ***") == N - 1  # every answered sample (one has no twin)
    assert_no_key(preds + res.output, ODD_KEY)


def _vlm_config(tmp_path: Path, url: str) -> PerceptionConfig:
    p = tmp_path / "vlm.yaml"
    p.write_text(f"""source: oracle
vlm: {{backend: openai, model: gpt-4o, base_url: "{url}", api_key_env: MY_VLM_CREDS, backoff_s: 0.01,
      backoff_max_s: 0.02, max_retries: 0}}
semantic_strategy: system
""")
    return PerceptionConfig.from_yaml(p)


def test_vlm_echo_and_a_newline_key_stay_out_of_twins_and_failures(tmp_path, monkeypatch):
    root = write_reasonseg(tmp_path / "data", 2)
    spec = f"reasonseg:{root}:val"

    def answer(body):
        text = body["messages"][-1]["content"][0]["text"]
        if "granularity" in text or "single digit" in text:
            return "1"
        return f"Observation: red.\nDescription: red cup (Bearer {ODD_KEY})"

    monkeypatch.setenv("MY_VLM_CREDS", ODD_KEY)
    with ChatServer(answer_fn=answer) as srv:
        cache, counts = build_dt(spec, _vlm_config(tmp_path, srv.url), tmp_path / "dt", progress=False)
    assert counts.built == 2
    semantics = [o.semantic for t in cache.iter_twins() for o in t.objects]
    assert semantics and all("red cup" in s for s in semantics)
    for f in cache.folder.rglob("*.json*"):
        assert_no_key(f.read_text(), ODD_KEY)
    monkeypatch.setenv("MY_VLM_CREDS", NEWLINE_KEY)
    with ChatServer(answer_fn=answer) as srv:
        cache, counts = build_dt(spec, _vlm_config(tmp_path, srv.url), tmp_path / "dt2", progress=False)
    assert counts.failed == 2 and not srv.requests
    failures = cache.failures_path.read_text()
    assert "$MY_VLM_CREDS contains a newline" in failures
    assert_no_key(failures, NEWLINE_KEY)


def test_publish_refuses_to_stage_a_file_holding_a_live_secret(tmp_path, monkeypatch):
    import torch
    from dtwinseg.workflows.publish import PublishError, publish
    from safetensors.torch import save_file

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    save_file({"w": torch.zeros(2)}, str(model / "model.safetensors"))
    monkeypatch.setenv("OPENAI_API_KEY", ODD_KEY)
    (model / "recipe.yaml").write_text(f"model: {{name_or_path: x}}\nnote: 'tried with key {ODD_KEY}'\n")
    stage = tmp_path / "stage"
    with pytest.raises(PublishError, match=r"\$OPENAI_API_KEY") as err:
        publish(model, "me/x", dry_run=True, stage_dir=stage, log=lambda s: None)
    assert_no_key(str(err.value), ODD_KEY)
    assert not any(p.is_file() for p in stage.rglob("*"))  # nothing was staged
    (model / "recipe.yaml").write_text("model: {name_or_path: x}\nnote: fine\n")
    (model / "tokenizer_config.json").write_text(json.dumps({"note": ODD_KEY}))  # JSON-escaped form
    with pytest.raises(PublishError, match="tokenizer_config.json"):
        publish(model, "me/x", dry_run=True, stage_dir=tmp_path / "stage2", log=lambda s: None)
    (model / "tokenizer_config.json").unlink()
    save_file({"w": torch.zeros(2)}, str(model / "model.safetensors"), metadata={"note": ODD_KEY})  # its header
    with pytest.raises(PublishError, match="model.safetensors"):
        publish(model, "me/x", dry_run=True, stage_dir=tmp_path / "stage3", log=lambda s: None)
    save_file({"w": torch.zeros(2)}, str(model / "model.safetensors"))
    out = publish(model, "me/x", dry_run=True, stage_dir=tmp_path / "stage4", log=lambda s: None)
    assert (out / "model.safetensors").is_file()
