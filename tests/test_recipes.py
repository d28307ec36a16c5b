"""Typed recipes, `dtwinseg train --dry-run`, the process-count rule, secrets, one-line CLI errors, and every
shipped recipe: its config builds, and each GPU recipe trains 2 steps on CPU with a tiny random Llama."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dtwinseg.cli.main import app
from dtwinseg.training.launch import plan_processes
from dtwinseg.training.recipe import load_recipe
from sft_helpers import MINILM, records
from typer.testing import CliRunner

from dtwinseg.config import ConfigError, convert, convert_text, is_secret_key, redact

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")  # training recipes: a training section
                 if "training" in (yaml.safe_load(p.read_text()) or {}))
GPU_RECIPES = ["llama31_8b_1gpu.yaml", "llama33_70b_sftdt.yaml"]
TINY_LLAMA = ("{model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
              "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 1024, "
              "tie_word_embeddings: false}")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


# --- the strict-config helper ---------------------------------------------------------------------------
def test_values_are_converted_by_field_type():
    from transformers.trainer_utils import SaveStrategy

    assert convert_text("1e-4", float) == pytest.approx(1e-4) and isinstance(convert_text("1e-4", float), float)
    assert convert_text("no", SaveStrategy | str) == "no"
    assert convert_text("no", bool) is False and convert_text("true", bool) is True
    assert convert_text("[q_proj, v_proj]", list[str]) == ["q_proj", "v_proj"]
    assert convert_text("q_proj,v_proj", list[str] | str) == ["q_proj", "v_proj"]
    assert convert_text("all-linear", list[str] | str) == "all-linear"
    assert convert_text("{use_reentrant: true}", dict | str | None) == {"use_reentrant": True}
    assert convert_text("null", int | None) is None and convert_text("8", int | None) == 8
    assert convert_text("007", str) == "007"  # a string field keeps what was typed
    with pytest.raises(ConfigError, match="expected an integer"):
        convert("8.5", int, (None, "lora.r"))
    with pytest.raises(ConfigError, match="expected true or false"):
        convert("maybe", bool, (None, "x"))


def test_recipe_yaml_reads_yaml_1_2_scalars(tmp_path):
    text = (ROOT / "recipes" / "tiny_cpu.yaml").read_text().replace('save_strategy: "no"', "save_strategy: no")
    text = text.replace("learning_rate: 1.0e-3", "learning_rate: 1e-3")
    (tmp_path / "r.yaml").write_text(text)
    r = load_recipe(tmp_path / "r.yaml")
    assert r.training["save_strategy"] == "no" and r.training["learning_rate"] == pytest.approx(1e-3)


def test_unknown_keys_and_bad_values_name_file_and_field(tmp_path):
    bad = yaml.safe_load((ROOT / "recipes" / "tiny_cpu.yaml").read_text())
    bad["lora"]["rnak"] = 8
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'lora.rnak': unknown key; did you mean 'lora.r'"):
        load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="did you mean 'training.learning_rate'"):
        load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", ["training.learnin_rate=1"])
    with pytest.raises(ConfigError, match="did you mean 'training'"):
        load_recipe(ROOT / "recipes" / "tiny_cpu.yaml", ["trainng.learning_rate=1e-4"])


# --- dry run ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in RECIPES if n != "llama33_70b_sftdt.yaml"])
def test_dry_run_builds_every_recipe(name):
    res = invoke("train", str(ROOT / "recipes" / name), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "# SFTDTConfig: ok" in res.output and "# resolved recipe" in res.output
    assert "warmup_ratio:" not in (ROOT / "recipes" / name).read_text()


def test_dry_run_of_the_demo_recipe_checks_every_trained_row():
    """recipes/demo.yaml is a demo recipe (no training section): --dry-run checks the training recipe of
    each trained row, exactly the one `dtwinseg demo` trains; without --dry-run one line says what to run."""
    from dtwinseg.training.recipe import load_recipe as load
    from dtwinseg.workflows.demo import DemoConfig, row_training_recipes

    demo = ROOT / "recipes" / "demo.yaml"
    res = invoke("train", str(demo), "--dry-run", "training.learning_rate=1e-4")
    assert res.exit_code == 0, res.output
    cfg = DemoConfig.load(demo)
    rows = row_training_recipes(cfg, Path("runs/demo"))
    assert set(rows) == {"scorer"}
    scorer = load(rows["scorer"][0]).training  # the row's own steps and batch win over the shared ones
    assert scorer["max_steps"] == cfg.rows["scorer"]["max_steps"] != cfg.max_steps
    assert scorer["per_device_train_batch_size"] == cfg.rows["scorer"]["batch_size"] != cfg.batch_size
    ablations = row_training_recipes(DemoConfig.load(demo, "ablations"), Path("runs/demo"))
    assert set(ablations) == {"scorer", "scorer-unweighted", "scorer-causal", "scorer-no-facts", "sftdt",
                              "sftdt-unweighted", "answer-only"}
    assert scorer["prefix_lm"] is True and "prefix_lm" not in load(ablations["scorer-causal"][0]).training
    assert load(rows["scorer"][0]).model.freeze == ["embeddings", "encoder.layer.0"]
    assert load(ablations["scorer-no-facts"][0]).model.freeze == ["embeddings"]
    assert ablations["scorer"][0].data.train != ablations["scorer-no-facts"][0].data.train
    assert load(ablations["sftdt"][0]).training["max_steps"] == 140
    assert res.output.count("# SFTDTConfig: ok: learning_rate 0.0001") == len(rows)
    for label, (recipe, _) in rows.items():
        assert f"in-process: python -m dtwinseg.training.run runs/demo/recipes/{label}.yaml" in res.output
        assert load(recipe).training["output_dir"] == f"runs/demo/train-{label}"
    bad = invoke("train", str(demo), "--dry-run", "training.nonexistent=1")
    assert bad.exit_code == 2 and "training.nonexistent" in bad.output
    plain = invoke("train", str(demo))
    assert plain.exit_code == 2 and "dtwinseg demo --recipe" in plain.output
    assert len([ln for ln in plain.output.splitlines() if ln.strip()]) == 1


def test_dry_run_of_the_paper_recipe_checks_every_trained_row():
    """recipes/demo_paper.yaml (the paper preset's PaperConfig, not the demo's DemoConfig) gets the same:
    --dry-run checks the LoRA recipe of each of its trained rows, as `dtwinseg demo --preset paper` trains it."""
    from dtwinseg.training.recipe import load_recipe as load
    from dtwinseg.workflows.paper import PaperConfig, is_paper_recipe, row_training_recipes

    paper = ROOT / "recipes" / "demo_paper.yaml"
    assert is_paper_recipe(yaml.safe_load(paper.read_text()))
    assert not is_paper_recipe(yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text()))
    res = invoke("train", str(paper), "--dry-run", "training.learning_rate=1e-4")
    assert res.exit_code == 0, res.output
    rows = row_training_recipes(PaperConfig.load(paper), Path("runs/demo-paper"))
    assert set(rows) == {"sftdt", "sftdt-unweighted", "answer-only"}
    assert res.output.count("# SFTDTConfig: ok: learning_rate 0.0001") == len(rows)
    assert res.output.count("# LoraConfig: r 16") == len(rows)
    for label, (recipe, _) in rows.items():
        assert f"in-process: python -m dtwinseg.training.run runs/demo-paper/recipes/{label}.yaml" in res.output
        r = load(recipe)
        assert r.training["output_dir"] == f"runs/demo-paper/train-{label}" and r.lora.use_lora
    assert load(rows["sftdt"][0]).data.train == "runs/demo-paper/sft-path"
    assert load(rows["answer-only"][0]).data.train == "runs/demo-paper/sft-answer"
    plain = invoke("train", str(paper))
    assert plain.exit_code == 2 and "dtwinseg demo --preset paper --recipe" in plain.output
    assert len([ln for ln in plain.output.splitlines() if ln.strip()]) == 1


def test_dry_run_of_the_deepspeed_recipe_as_a_user_runs_it(tmp_path):
    """In a subprocess (DeepSpeed config objects are process-global), from another working directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dtwinseg.cli", "train", str(ROOT / "recipes" / "llama33_70b_sftdt.yaml"),
                           "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert '"stage": 3' in out and '"train_batch_size": 64' in out  # 1 x 8 accumulation x 8 processes
    assert "# LoraConfig: r 16" in out and "--num_processes 8" in out and "--module dtwinseg.training.run" in out


def test_done_when_overrides():
    recipe = str(ROOT / "recipes" / "tiny_cpu.yaml")
    for bad, field in (("training.nonexistent=1", "training.nonexistent"),
                       ("training.learning_rate=abc", "training.learning_rate"), ("lora.rank=8", "lora.rank")):
        res = invoke("train", recipe, bad, "--dry-run")
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: override:") and field in lines[0], res.output
    r = load_recipe(recipe, ["training.learning_rate=1e-4", "training.save_strategy=no"])
    assert isinstance(r.training["learning_rate"], float) and r.training["learning_rate"] == pytest.approx(1e-4)
    assert r.training["save_strategy"] == "no"
    res = invoke("train", recipe, "training.learning_rate=1e-4", "training.save_strategy=no", "--dry-run")
    assert res.exit_code == 0 and "learning_rate: 0.0001" in res.output and "save_strategy: 'no'" in res.output


# --- the process-count rule -------------------------------------------------------------------------------
def test_process_count_rule(tmp_path):
    one = plan_processes(8, {"num_machines": 1, "num_processes": 8}, None)
    assert (one.total, one.per_machine) == (8, 8)
    two = plan_processes(8, {"num_machines": 2, "num_processes": 16}, None)  # the config wins: all 16 GPUs
    assert (two.total, two.machines, two.per_machine) == (16, 2, 8)
    from_recipe = plan_processes(16, {"num_machines": 2}, None)  # the recipe's count is a total too
    assert (from_recipe.total, from_recipe.per_machine) == (16, 8)
    with pytest.raises(ConfigError, match="evenly"):
        plan_processes(3, {"num_machines": 2}, None)
    explicit = plan_processes(8, {"num_machines": 2, "num_processes": 16}, 4)  # --num-processes = total
    assert (explicit.total, explicit.per_machine) == (4, 2)
    assert plan_processes(None, None, None).total == 1
    with pytest.raises(ConfigError, match="evenly"):
        plan_processes(None, {"num_machines": 2, "num_processes": 3}, None)
    acc = yaml.safe_load((ROOT / "accelerate_config.yaml").read_text())
    acc.update(num_machines=2, num_processes=16, main_process_ip="10.0.0.1")
    (tmp_path / "acc2.yaml").write_text(yaml.safe_dump(acc))
    recipe = str(ROOT / "recipes" / "tiny_cpu.yaml")
    res = invoke("train", recipe, "--accelerate-config", str(tmp_path / "acc2.yaml"), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "16 in total = 2 machine(s) x 8" in res.output and "--num_processes 16" in res.output
    res = invoke("train", recipe, "--accelerate-config", str(tmp_path / "acc2.yaml"), "--num-processes", "4",
                 "--dry-run")
    assert "4 in total = 2 machine(s) x 2" in res.output and "--num_processes 4" in res.output


# --- secrets ----------------------------------------------------------------------------------------------
def test_secret_names_are_exact():
    for key in ("api_key", "hub_token", "token", "password", "HF_TOKEN", "openai_api_key", "client_secret"):
        assert is_secret_key(key), key
    for key in ("tokenizer", "use_token_kinds", "pad_token", "eos_token", "max_new_tokens", "api_key_env",
                "average_tokens_across_devices", "secretary"):
        assert not is_secret_key(key), key
    r = redact({"model": {"tokenizer": "tok", "api_key": "sk-1"}, "training": {"use_token_kinds": False}})
    assert r == {"model": {"tokenizer": "tok", "api_key": "<redacted>"}, "training": {"use_token_kinds": False}}


def test_secrets_cannot_be_set_and_never_print(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_ENV_SECRET_123")
    recipe = str(ROOT / "recipes" / "tiny_cpu.yaml")
    res = invoke("train", recipe, "training.hub_token=hf_OVERRIDE_SECRET", "--dry-run")
    assert res.exit_code == 2 and "hf_OVERRIDE_SECRET" not in res.output
    assert "training.hub_token" in res.output and "HF_TOKEN" in res.output
    data = yaml.safe_load(Path(recipe).read_text())
    data["training"]["hub_token"] = "hf_FILE_SECRET"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    res = invoke("train", str(tmp_path / "s.yaml"), "--dry-run")
    assert res.exit_code == 2 and "hf_FILE_SECRET" not in res.output and "s.yaml" in res.output
    res = invoke("train", recipe, "--dry-run")
    assert res.exit_code == 0 and "hf_ENV_SECRET_123" not in res.output
    assert "use_token_kinds: false" in res.output and "tokenizer: package:" in res.output


# --- one-line errors --------------------------------------------------------------------------------------
def test_errors_are_one_line_unless_debug(tmp_path, monkeypatch):
    monkeypatch.delenv("DTWINSEG_DEBUG", raising=False)
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    res = invoke("train", str(tmp_path / "broken.yaml"), "--dry-run")
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "broken.yaml" in res.output, res.output
    assert "Traceback" not in res.output
    monkeypatch.setenv("DTWINSEG_DEBUG", "1")
    res = invoke("train", str(tmp_path / "broken.yaml"), "--dry-run")
    assert res.exit_code != 0 and isinstance(res.exception, ConfigError)
    monkeypatch.delenv("DTWINSEG_DEBUG")
    res = invoke("--debug", "train", str(tmp_path / "broken.yaml"), "--dry-run")
    assert isinstance(res.exception, ConfigError)
    os.environ.pop("DTWINSEG_DEBUG", None)


# --- every GPU recipe trains 2 steps on CPU ---------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    from dtwinseg.data_builders.sft_dataset import (
        SFTDatasetConfig,
        build_sft_dataset,
        load_tokenizer,
        save_dataset,
    )

    out = tmp_path_factory.mktemp("sft") / "data"
    ds, _ = build_sft_dataset(records(4, objects=3), load_tokenizer(MINILM), SFTDatasetConfig(max_length=512))
    return save_dataset(ds, out, {"test": True})


def cpu_overrides(name: str, out: Path, data: Path) -> list[str]:
    """What a GPU recipe needs on a CPU: a tiny random Llama, fp32, 2 steps; LoRA, activation checkpointing,
    its scheduler and warmup stay the recipe's."""
    over = [f"model.config={TINY_LLAMA}", f"model.tokenizer={MINILM}", "model.dtype=float32",
            "training.bf16=false", "training.use_cpu=true", "training.max_steps=2", "training.report_to=[]",
            "training.per_device_train_batch_size=1", "training.gradient_accumulation_steps=2",
            f"training.output_dir={out}", f"data.train={data}", f"merge.output_dir={out / 'merged'}"]
    if name == "llama33_70b_sftdt.yaml":
        over += ["training.deepspeed=null", "launch.accelerate_config=null", "launch.num_processes=1"]
    return over


@pytest.mark.slow
@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipe_trains_two_steps_on_cpu(name, tmp_path, sft_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    recipe = str(ROOT / "recipes" / name)
    over = cpu_overrides(name, out, sft_data)
    res = invoke("train", recipe, *over)
    assert res.exit_code == 0, res.output
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    state = yaml.safe_load((out / "recipe.yaml").read_text())
    original = load_recipe(recipe, over)
    assert original.lora.use_lora and original.training["activation_checkpointing"] is True
    assert load_recipe(out / "recipe.yaml").to_dict() == original.to_dict() == state
    if original.merge.enabled:
        assert (out / "merged" / "config.json").is_file()
    import torch

    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.hub_token is None and args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 0.03


# --- compare ----------------------------------------------------------------------------------------------
def _metrics(giou: float, n: int) -> dict:
    group = {"giou": giou, "ciou": giou / 2, "oracle_giou": 1.0, "oracle_ciou": 1.0, "n": n}
    return {"dataset": "synthetic:runs/demo/data:test",
            "checkpoints": {"base": {"strategy": "select", "groups": {"overall": group}}}}


def test_compare_rows_are_unique_with_one_unit(tmp_path):
    import json

    for run, giou, n in (("demo/eval", 0.25, 70), ("demo-long/eval", 0.5, 140)):
        (tmp_path / run).mkdir(parents=True)
        (tmp_path / run / "metrics.json").write_text(json.dumps(_metrics(giou, n)))
    res = invoke("compare", str(tmp_path / "demo" / "eval"), str(tmp_path / "demo-long" / "eval"), "--out",
                 str(tmp_path / "cmp"))
    assert res.exit_code == 0, res.output
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = table["rows"]
    assert set(rows) == {"demo/eval/base", "demo-long/eval/base"} and table["unit"].startswith("fraction")
    assert rows["demo/eval/base"]["cells"]["synthetic:test/overall"]["giou"] == 0.25  # as in metrics.json
    assert rows["demo-long/eval/base"]["n"] == 140 and rows["demo/eval/base"]["dataset"].startswith("synthetic:")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| demo/eval/base | 25.0 / 12.5 | `synthetic:runs/demo/data:test` | 70 |" in md and "percent" in md
    res = invoke("compare", str(tmp_path / "demo" / "eval"), str(tmp_path / "demo" / "eval" / "."))
    assert res.exit_code == 2 and "given twice" in res.output


# --- Hub ids ------------------------------------------------------------------------------------------------
def test_hub_ids_offline_miss_is_one_line_and_local_paths_win(tmp_path, monkeypatch):
    from dtwinseg.eval.checkpoints import parse_checkpoint

    from dtwinseg.base_models import is_hub_id
    from dtwinseg.reasoning import ReasoningConfig

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    res = invoke("eval", "synthetic:data:test", "--dt-cache", str(tmp_path), "-c", "dtwinseg-test/never-cached",
                 "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "dtwinseg-test/never-cached" in res.output and "HF_HUB_OFFLINE" in res.output
    assert "HF_HUB_OFFLINE" not in os.environ  # eval respects the user's setting, never forces it
    (tmp_path / "org" / "model").mkdir(parents=True)
    (tmp_path / "org" / "model" / "config.json").write_text("{}")
    assert is_hub_id("meta-llama/Llama-3.1-8B-Instruct") and not is_hub_id("org/model")
    ck = parse_checkpoint("org/model", ReasoningConfig())  # a local folder, no Hub call (offline would fail)
    assert ck.cfg.model == "org/model" and ck.cfg.adapter is None


def test_recipe_hub_model_offline_is_one_line(tmp_path, sft_data, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = invoke("train", str(ROOT / "recipes" / "llama31_8b_1gpu.yaml"), f"data.train={sft_data}",
                 "training.use_cpu=true", "training.bf16=false", f"training.output_dir={tmp_path / 'o'}")
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "meta-llama/Llama-3.1-8B-Instruct" in res.output and "HF_HUB_OFFLINE" in res.output
