"""The Hub, offline: `dtwinseg publish` and `training.push_to_hub` upload the same complete folder (weights,
tokenizer, recipe, format.json, our card with a loading snippet); build-sft datasets carry a readable
`messages` column and format.json, `build-sft --push-to-hub` pushes them public or private as asked, and a
recipe trains from a Hub dataset id (a local Hugging Face cache, HF_HUB_OFFLINE=1). No test touches the
network: uploads go to a fake HfApi, downloads come from a cache folder laid out as the Hub's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dtwinseg.cli.main import app
from dtwinseg.data_builders.segdt import write_records
from dtwinseg.data_builders.sft_dataset import (
    SFTDatasetConfig,
    build_sft_dataset,
    load_tokenizer,
    save_dataset,
)
from sft_helpers import MINILM, records
from typer.testing import CliRunner

from dtwinseg.formats import load_format

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "tiny_cpu.yaml")


class FakeApi:
    """What publish / push use of huggingface_hub.HfApi; uploads are copied aside (the staging folder of a
    push is temporary)."""

    def __init__(self, token=None, store: Path | None = None):
        self.token, self.store, self.created, self.uploaded = token, store, [], {}

    def whoami(self):
        return {"name": "me"}

    def repo_exists(self, repo_id, repo_type="model"):
        return False

    def create_repo(self, repo_id, **kw):
        self.created.append((repo_id, kw))

    def upload_folder(self, folder_path, repo_id, **kw):
        dest = self.store / repo_id.replace("/", "--")
        shutil.copytree(folder_path, dest, dirs_exist_ok=True)
        self.uploaded[repo_id] = sorted(p.name for p in dest.iterdir())

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, **kw):
        self.uploaded.setdefault(repo_id, []).append(path_in_repo)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    cfg = SFTDatasetConfig(max_length=512)
    ds, _ = build_sft_dataset(records(4, objects=3), load_tokenizer(MINILM), cfg)
    return save_dataset(ds, tmp_path_factory.mktemp("sft") / "data", {"test": True}, cfg)


def test_dataset_has_readable_messages_and_its_format(sft_data):
    from datasets import load_from_disk

    ds = load_from_disk(str(sft_data))
    row = ds[0]
    roles = [m["role"] for m in row["messages"]]
    assert roles[-1] == "assistant" and "user" in roles
    assert "Answer:" in row["messages"][-1]["content"]  # the sftdt target: a path, then the answer
    assert any(records(4, objects=3)[0].query in m["content"] for m in row["messages"])
    tok = load_tokenizer(MINILM)
    decoded = tok.decode(row["input_ids"])  # the tokens encode those messages (WordPiece lower-cases)
    squeeze = lambda text: "".join(text.lower().split())  # noqa: E731
    assert squeeze(row["messages"][-1]["content"]) in squeeze(decoded)
    assert load_format(sft_data)[0] == "sftdt"


def test_build_sft_pushes_dataset_and_format_as_asked(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    recs = tmp_path / "records.jsonl"
    write_records(recs, records(3, objects=3), inline_twin=True)
    pushed = []
    monkeypatch.setattr(datasets.Dataset, "push_to_hub",
                        lambda self, repo_id, **kw: pushed.append((repo_id, kw.get("private"), self.column_names)))
    apis = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: apis.append(FakeApi(token, tmp_path)) or apis[-1])
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET_TOKEN")
    for flag, private in (("--public", False), ("--private", True), (None, True)):
        args = ["build-sft", str(recs), "--tokenizer", MINILM, "--out", str(tmp_path / "sft"), "--max-length",
                "0", "--push-to-hub", "me/segdt-sft", "--no-progress"] + ([flag] if flag else [])
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "hf_SECRET_TOKEN" not in res.output
        assert pushed[-1][:2] == ("me/segdt-sft", private) and "messages" in pushed[-1][2]
        assert apis[-1].created == [("me/segdt-sft", {"repo_type": "dataset", "private": private, "exist_ok": True})]
        assert apis[-1].uploaded["me/segdt-sft"] == ["format.json", "build.json"]


def test_build_sft_warns_when_it_drops_records(tmp_path):
    recs = tmp_path / "records.jsonl"
    write_records(recs, records(4, objects=3), inline_twin=True)
    args = ["build-sft", str(recs), "--tokenizer", MINILM, "--out", str(tmp_path / "sft"), "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "warning" not in res.output and json.loads(res.stdout)["examples"] == 4
    big = records(2, objects=7, seed=1)  # their answers do not fit MiniLM's 512-token context
    for k, r in enumerate(big):
        r.id = f"big{k}"
    write_records(recs, records(2, objects=3) + big, inline_twin=True)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert stats["examples"] == 2 and stats["answer_dropped"] == 2
    assert ("warning: 2 of 4 records lost examples (0 too long, 2 whose answer did not fit the 512-token "
            "context, 0 failed)") in " ".join(res.stderr.split())
    res = CliRunner().invoke(app, args + ["--max-length", "200"])  # below what filled prompts may take
    said = " ".join(res.stderr.split())
    assert "over --max-length 200 were dropped" in said and "format.context_tokens: 200" in said
    assert "format.spatial.fill_tokens below 200" in said


def test_publish_stages_format_json_and_a_loading_snippet(tmp_path):
    from huggingface_hub import ModelCard

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base", "r": 4}))
    (adapter / "adapter_model.safetensors").write_bytes(b"w")
    (adapter / "tokenizer.json").write_text("{}")
    (adapter / "format.json").write_text(json.dumps({"format": "score", "config": {}}))
    res = CliRunner().invoke(app, ["publish", str(adapter), "--repo-id", "me/a", "--dry-run", "--stage-dir",
                                   str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["README.md", "adapter_config.json",
                                                                 "adapter_model.safetensors", "format.json",
                                                                 "tokenizer.json"]
    card = ModelCard.load(tmp_path / "s" / "README.md")
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/a")' in card.text
    assert "`score`, recorded in `format.json`" in card.text
    assert "--checkpoint me/a --format-from me/a --out" in card.text  # inference reads the trained format back


@pytest.mark.slow
def test_push_to_hub_uploads_what_publish_stages(tmp_path, sft_data, monkeypatch):
    """One training step with training.push_to_hub: one upload, after the tokenizer, recipe and format.json
    exist, of the folder `dtwinseg publish` stages for the same model (its card, not TRL's)."""
    import huggingface_hub
    from huggingface_hub import ModelCard

    apis = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: apis.append(FakeApi(token, tmp_path)) or apis[-1])
    out = tmp_path / "tiny-run"
    res = CliRunner().invoke(app, ["train", TINY, f"data.train={sft_data}", f"training.output_dir={out}",
                                   "training.max_steps=1", "--push_to_hub", "--hub_model_id", "tiny-sftdt",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    (api,) = apis
    assert api.created == [("me/tiny-sftdt", {"repo_type": "model", "private": False, "exist_ok": True})]
    pushed = api.uploaded["me/tiny-sftdt"]
    assert {"format.json", "recipe.yaml", "README.md", "model.safetensors", "config.json",
            "tokenizer.json"} <= set(pushed)
    res = CliRunner().invoke(app, ["publish", str(out), "--repo-id", "me/tiny-sftdt", "--dry-run", "--stage-dir",
                                   str(tmp_path / "stage")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == pushed
    card = ModelCard.load(tmp_path / "me--tiny-sftdt" / "README.md")
    assert "dtwinseg" in card.data.tags and "## Reasoning format" in card.text
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-sftdt")' in card.text
    assert load_format(tmp_path / "me--tiny-sftdt") == load_format(sft_data)


def hub_cache_with(ds_folder: Path, cache: Path, repo_id: str) -> Path:
    """A Hugging Face cache holding the dataset repo ``repo_id`` as `build-sft --push-to-hub` leaves it."""
    from datasets import load_from_disk

    repo = cache / ("datasets--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    (snap / "data").mkdir(parents=True)
    load_from_disk(str(ds_folder)).to_parquet(str(snap / "data" / "train-00000-of-00001.parquet"))
    for name in ("format.json", "build.json"):
        shutil.copy2(ds_folder / name, snap / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap


def test_data_train_can_be_a_hub_dataset_id(tmp_path, sft_data, monkeypatch):
    from dtwinseg.data_builders.sft_dataset import dataset_folder, load_sft_dataset
    from huggingface_hub import constants

    from dtwinseg.io import DataError

    snap = hub_cache_with(sft_data, tmp_path / "hub", "me/segdt-sft")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert dataset_folder("me/segdt-sft") == snap
    ds = load_sft_dataset(dataset_folder("me/segdt-sft"))
    from datasets import load_from_disk

    local = load_from_disk(str(sft_data))
    assert ds.column_names == local.column_names and ds[0]["input_ids"] == local[0]["input_ids"]
    assert ds[0]["messages"] == local[0]["messages"]
    with pytest.raises(DataError, match="nor a Hub dataset id"):
        dataset_folder("me/not-cached")


@pytest.mark.slow
def test_train_from_a_hub_dataset_id(tmp_path, sft_data):
    hub_cache_with(sft_data, tmp_path / "hub", "me/segdt-sft")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "ds-cache"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dtwinseg.cli", "train", TINY, "data.train=me/segdt-sft",
                           f"training.output_dir={out}", "training.max_steps=1", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and load_format(out) == load_format(sft_data)


def test_eval_reads_the_format_back_from_a_folder_or_a_hub_repo(sft_data, tmp_path, monkeypatch):
    """The card's Use command: `--format-from ORG/NAME` reads the published format.json (here from a fake
    download); a folder or a format.json works the same; the reasoning config's other settings stay."""
    import huggingface_hub
    from dtwinseg.cli.evaluation import reasoning_base

    trained = load_format(sft_data)
    got = reasoning_base(None, str(sft_data))
    assert (got.format_name, got.format) == trained
    asked = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, **kw: asked.append((repo, name)) or str(sft_data / name))
    (tmp_path / "r.yaml").write_text("backend: transformers\nmax_new_tokens: 77\n")
    got = reasoning_base(tmp_path / "r.yaml", "me/published")
    assert asked == [("me/published", "format.json")]
    assert (got.format_name, got.format) == trained and got.max_new_tokens == 77
