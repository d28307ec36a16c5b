"""publish: the dry-run folder's card parses with huggingface_hub and carries the run's metrics;
an existing revision is not overwritten without --force; the token is never printed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from eval.publish import PublishError, publish

METRICS = {
    "dataset": "reasonseg:/data/ReasonSeg:test",
    "checkpoints": {
        "base": {"strategy": "select", "adapter": None, "groups": {
            "overall": {"giou": 0.1, "ciou": 0.2, "oracle_giou": 0.9, "oracle_ciou": 0.9, "n": 3}},
            "parse": {"ok": 3, "repaired": 0, "failed": 0}},
        "sft": {"strategy": "sftdt", "adapter": "ADAPTER", "groups": {
            "overall": {"giou": 0.70512, "ciou": 0.706, "oracle_giou": 0.9, "oracle_ciou": 0.91, "n": 5},
            "short": {"giou": 0.6971, "ciou": 0.703, "oracle_giou": 0.9, "oracle_ciou": 0.9, "n": 2},
            "long": {"giou": 0.716, "ciou": 0.709, "oracle_giou": 0.9, "oracle_ciou": 0.92, "n": 3}},
            "parse": {"ok": 4, "repaired": 1, "failed": 0}},
    },
}


@pytest.fixture
def adapter(tmp_path):
    d = tmp_path / "sft" / "adapter"
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": str(tmp_path), "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"}))
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    (d / "optimizer.pt").write_bytes(b"not published")
    (d / "README.md").write_text("---\nbase_model: /local/path\n---\npeft's own card")
    (d / "recipe.yaml").write_text("lr: 2e-5\nepochs: 5\nhub_token: hf_SHOULD_NOT_APPEAR\n")
    m = json.loads(json.dumps(METRICS).replace("ADAPTER", str(d)))
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    return d


def test_dry_run_card_parses_and_matches_metrics(adapter, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    monkeypatch.setenv("HF_TOKEN", "hf_TOKEN_SECRET")
    stage = tmp_path / "stage"
    res = CliRunner().invoke(app, ["publish", str(adapter), "--repo-id", "me/dtwinseg-sft", "--dry-run",
                                   "--metrics", str(tmp_path / "metrics.json"), "--stage-dir", str(stage)])
    assert res.exit_code == 0, res.output
    assert "hf_TOKEN_SECRET" not in res.output
    assert sorted(p.name for p in stage.iterdir()) == ["README.md", "adapter_config.json",
                                                      "adapter_model.safetensors", "recipe.yaml"]
    card = ModelCard.load(stage / "README.md")
    assert card.data.base_model is None  # a local path is not a valid Hub id
    assert "local checkpoint" in card.text and "lr: 2e-5" in card.text
    assert "hf_SHOULD_NOT_APPEAR" not in (stage / "README.md").read_text()
    results = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    sft = METRICS["checkpoints"]["sft"]["groups"]  # picked by adapter path among two checkpoints
    assert results == {(g, k): round(100 * e[k], 2) for g, e in sft.items() for k in ("giou", "ciou")}
    assert {r.dataset_type for r in card.data.eval_results} == {"reasonseg"}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert card.data.model_name == "dtwinseg-sft" and card.data.library_name == "peft"


def test_base_model_override_and_checkpoint_choice(adapter, tmp_path):
    from huggingface_hub import ModelCard

    out = publish(adapter, "me/x", dry_run=True, metrics_path=tmp_path / "metrics.json", checkpoint="base",
                  base_model="meta-llama/Llama-3.3-70B-Instruct", stage_dir=tmp_path / "s", log=lambda s: None)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "meta-llama/Llama-3.3-70B-Instruct"
    assert {r.metric_value for r in card.data.eval_results} == {10.0, 20.0}


class FakeApi:
    def __init__(self, files):
        self.files = files
        self.uploads = []

    def repo_exists(self, repo_id, repo_type="model"):
        return self.files is not None

    def list_repo_files(self, repo_id, repo_type="model", revision="main"):
        return self.files

    def create_repo(self, repo_id, **kw):
        self.created = (repo_id, kw)

    def upload_folder(self, **kw):
        self.uploads.append(kw)


def test_refuses_to_overwrite_without_force(adapter, tmp_path):
    api = FakeApi([".gitattributes", "README.md", "adapter_model.safetensors"])
    with pytest.raises(PublishError, match="--force"):
        publish(adapter, "me/x", api=api, stage_dir=tmp_path / "s", log=lambda s: None)
    assert api.uploads == []
    publish(adapter, "me/x", api=api, force=True, stage_dir=tmp_path / "s", log=lambda s: None)
    assert api.uploads[0]["repo_id"] == "me/x" and api.uploads[0]["folder_path"] == str(tmp_path / "s")
    fresh = FakeApi(None)
    publish(adapter, "me/y", api=fresh, private=True, stage_dir=tmp_path / "s2", log=lambda s: None)
    assert fresh.created == ("me/y", {"repo_type": "model", "private": True, "exist_ok": True})
    assert len(fresh.uploads) == 1


def test_missing_weights_and_bad_repo_id(tmp_path, adapter):
    with pytest.raises(PublishError, match="ORG/NAME"):
        publish(adapter, "not a repo", dry_run=True, log=lambda s: None)
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(PublishError, match="adapter_model"):
        publish(adapter, "me/x", dry_run=True, stage_dir=tmp_path / "s", log=lambda s: None)
