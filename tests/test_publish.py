"""publish: the dry-run folder's card parses with huggingface_hub and carries the run's metrics;
an existing revision is not overwritten without --force; the token is never printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dtwinseg.cli.main import app
from dtwinseg.workflows.publish import PublishError, publish
from typer.testing import CliRunner

METRICS = {
    "dataset": "reasonseg:/data/ReasonSeg:test",
    "checkpoints": {
        "base": {"strategy": "select", "adapter": None, "groups": {  # as written before "format"
            "overall": {"giou": 0.1, "ciou": 0.2, "oracle_giou": 0.9, "oracle_ciou": 0.9, "n": 3}},
            "parse": {"ok": 3, "repaired": 0, "failed": 0}},
        "sft": {"format": "sftdt", "adapter": "ADAPTER", "groups": {
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
    assert "local checkpoint" in card.text and "lr: 2.0e-05" in card.text  # read as training reads it: a float
    assert "hf_SHOULD_NOT_APPEAR" not in (stage / "README.md").read_text()
    results = {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    sft = METRICS["checkpoints"]["sft"]["groups"]  # picked by adapter path among two checkpoints
    assert results == {(g, k): round(100 * e[k], 2) for g, e in sft.items() for k in ("giou", "ciou")}
    assert {r.dataset_type for r in card.data.eval_results} == {"reasonseg"}
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert card.data.model_name == "dtwinseg-sft" and card.data.library_name == "peft"
    assert "(sftdt format)" in card.text and "--checkpoint me/dtwinseg-sft --format sftdt --out" in card.text


def test_base_model_override_and_checkpoint_choice(adapter, tmp_path):
    from huggingface_hub import ModelCard

    out = publish(adapter, "me/x", dry_run=True, metrics_path=tmp_path / "metrics.json", checkpoint="base",
                  base_model="meta-llama/Llama-3.3-70B-Instruct", stage_dir=tmp_path / "s", log=lambda s: None)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "meta-llama/Llama-3.3-70B-Instruct"
    assert {r.metric_value for r in card.data.eval_results} == {10.0, 20.0}
    assert "(select format)" in card.text and "--format select" in card.text  # metrics of an earlier version


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
    assert api.uploads[0]["repo_id"] == "me/x"
    # "s" already holds the refused attempt's files: the retry stages into a fresh folder inside it
    assert Path(api.uploads[0]["folder_path"]).parent == tmp_path / "s"
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


def test_stage_dir_at_the_adapters_parent_deletes_nothing(adapter, tmp_path):
    parent = adapter.parent
    (parent / "unrelated.txt").write_text("keep me")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(app, ["publish", str(adapter), "--repo-id", "me/x", "--dry-run", "--stage-dir",
                                   str(parent)])
    assert res.exit_code == 0, res.output
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert set(before) <= set(after) and (parent / "unrelated.txt").read_text() == "keep me"
    staged = [p for p in parent.iterdir() if p.name.startswith("adapter-publish-")]
    assert len(staged) == 1 and (staged[0] / "adapter_model.safetensors").read_bytes() == b"weights"
    # twice in a row: a second fresh folder, the first intact
    res = CliRunner().invoke(app, ["publish", str(adapter), "--repo-id", "me/x", "--dry-run"])
    assert res.exit_code == 0 and (staged[0] / "README.md").is_file()
    assert len([p for p in parent.iterdir() if p.name.startswith("adapter-publish-")]) == 2


def test_staged_recipe_holds_no_secret_but_keeps_tokenizer_keys(adapter, tmp_path):
    (adapter / "recipe.yaml").write_text("model:\n  tokenizer: tok\ntraining:\n  use_token_kinds: false\n"
                                         "  hub_token: hf_SECRET_1\n  learning_rate: 2.0e-05\nwandb:\n"
                                         "  api_key: wk_SECRET_2\n")
    out = publish(adapter, "me/x", dry_run=True, stage_dir=tmp_path / "s", log=lambda s: None)
    staged = (out / "recipe.yaml").read_text()
    card = (out / "README.md").read_text()
    for text in (staged, card):
        assert "SECRET" not in text and "hub_token" not in text and "api_key" not in text
        assert "use_token_kinds: false" in text and "tokenizer: tok" in text


def test_publishes_a_full_fine_tune(tmp_path):
    from huggingface_hub import ModelCard

    model = tmp_path / "train"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"full weights")
    (model / "tokenizer.json").write_text("{}")
    (model / "recipe.yaml").write_text("model:\n  name_or_path: meta-llama/Llama-3.1-8B-Instruct\n")
    (model / "training_args.bin").write_bytes(b"not published")
    res = CliRunner().invoke(app, ["publish", str(model), "--repo-id", "me/full", "--dry-run", "--stage-dir",
                                   str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                                 "recipe.yaml", "tokenizer.json"]
    card = ModelCard.load(tmp_path / "s" / "README.md")
    assert card.data.library_name == "transformers" and card.data.base_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert "--checkpoint me/full" in card.text


def test_publish_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["publish", str(tmp_path / "empty"), "--repo-id", "me/x", "--dry-run"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "adapter_config.json" in res.output
    assert list((tmp_path).iterdir()) == [tmp_path / "empty"]  # nothing staged
    # a damaged adapter config names the file and field; nothing is staged
    (tmp_path / "empty" / "adapter_config.json").write_text('{"base_model_name_or_path": 5}')
    (tmp_path / "empty" / "adapter_model.safetensors").write_bytes(b"0")
    for text, match in (('{"base_model_name_or_path": 5}', "field 'base_model_name_or_path': expected a model path"),
                        ("[1]", "expected a JSON object")):
        (tmp_path / "empty" / "adapter_config.json").write_text(text)
        res = CliRunner().invoke(app, ["publish", str(tmp_path / "empty"), "--repo-id", "me/x", "--dry-run"])
        assert res.exit_code == 2 and "adapter_config.json" in res.output and match in res.output, res.output
        assert "Traceback" not in res.output and list(tmp_path.iterdir()) == [tmp_path / "empty"]
