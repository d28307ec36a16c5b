"""How `dtwinseg train` launches, and the command line a TRL user types.

- The launch rule: a DeepSpeed (or any distributed) accelerate config goes through `accelerate launch` even
  with one process (in-process would silently drop DeepSpeed), as does a recipe's training.deepspeed;
  --accelerate-arg passes flags through; a one-process DeepSpeed config really runs DeepSpeed (CPU, slow).
- TRL habits: `train R.yaml --learning_rate 1e-4`, `train --config R.yaml`, bool flags, `--lora.r 8`; unknown
  flags and bare `learning_rate=...` say what was meant; `--help` keeps `[q_proj,v_proj]`.
- wandb is optional: reporting to it without it installed is one line.
- The install: the wheel holds dtwinseg/training/... and the DeepSpeed JSONs under one `dtwinseg` import name
  and no test double; a user project with its own `training/` package imports and launches dtwinseg (from
  the source checkout and from the installed wheel).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from dtwinseg.cli.main import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "recipes" / "tiny_cpu.yaml")
TINY_LORA = str(ROOT / "recipes" / "tiny_lora_cpu.yaml")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def accelerate_config(tmp_path: Path, **values) -> Path:
    cfg = {"compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED", "machine_rank": 0,
           "num_machines": 1, "num_processes": 1, "use_cpu": False,
           "deepspeed_config": {"deepspeed_config_file": str(ROOT / "training" / "deepspeed" / "zero2.json"),
                                "deepspeed_multinode_launcher": "standard"}, **values}
    path = tmp_path / "acc.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- the launch rule --------------------------------------------------------------------------------------
def test_a_one_process_deepspeed_config_launches_through_accelerate(tmp_path):
    acc = accelerate_config(tmp_path)
    res = invoke("train", TINY, "--accelerate-config", str(acc), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "in-process" not in res.output
    assert "# accelerate launch: the accelerate config asks for distributed_type DEEPSPEED" in res.output
    assert f"--config_file {acc} --num_processes 1 --module dtwinseg.training.run" in res.output
    for kind in ("MULTI_GPU", "FSDP", "MULTI_CPU"):  # any distributed type, whatever the count
        res = invoke("train", TINY, "--accelerate-config", str(accelerate_config(tmp_path, distributed_type=kind)),
                     "--dry-run")
        assert res.exit_code == 0 and f"distributed_type {kind}" in res.output, res.output
    res = invoke("train", TINY, "--accelerate-config", str(accelerate_config(tmp_path, distributed_type="NO")),
                 "--dry-run")
    assert res.exit_code == 0 and "in-process: python -m dtwinseg.training.run" in res.output


def test_recipe_deepspeed_alone_asks_accelerate_for_it_and_flags_pass_through():
    zero2 = ROOT / "training" / "deepspeed" / "zero2.json"
    res = invoke("train", TINY, "training.deepspeed=training/deepspeed/zero2.json", "training.use_cpu=false",
                 "--accelerate-arg=--main_process_port=29501", "--accelerate-arg", "--mixed_precision=no",
                 "--dry-run")
    assert res.exit_code == 0, res.output
    assert "training.deepspeed is set" in res.output
    assert (f"--use_deepspeed --deepspeed_config_file {zero2} --num_processes 1 --main_process_port=29501 "
            "--mixed_precision=no --module dtwinseg.training.run") in res.output
    res = invoke("train", TINY, "--accelerate-arg=--main_process_port=29502", "--dry-run")  # implies accelerate
    assert res.exit_code == 0 and "--num_processes 1 --main_process_port=29502 --module" in res.output


def test_recipe_num_processes_is_a_total(tmp_path):
    acc = accelerate_config(tmp_path, distributed_type="MULTI_GPU", num_machines=2, num_processes=None,
                            main_process_ip="10.0.0.1")
    res = invoke("train", TINY, "launch.num_processes=4", "--accelerate-config", str(acc), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "4 in total = 2 machine(s) x 2 (from the recipe's launch.num_processes)" in res.output
    assert "--num_processes 4" in res.output


@pytest.mark.slow
def test_one_process_deepspeed_config_really_runs_deepspeed(tmp_path, sft_dataset):
    """A real CPU launch (DS_ACCELERATOR=cpu): the saved training arguments carry accelerate's DeepSpeed state."""
    import torch

    acc = accelerate_config(tmp_path, main_process_port=29613)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run([sys.executable, "-m", "dtwinseg.cli", "train", TINY_LORA, "--accelerate-config", str(acc),
                           "training.use_cpu=false", "training.max_steps=2", f"training.output_dir={out}",
                           f"data.train={sft_dataset}", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.distributed_state.distributed_type.name == "DEEPSPEED"
    assert (out / "adapter_model.safetensors").stat().st_size > 0 and (out / "format.json").is_file()


@pytest.fixture(scope="module")
def sft_dataset(tmp_path_factory):
    from dtwinseg.data_builders.sft_dataset import (
        SFTDatasetConfig,
        build_sft_dataset,
        load_tokenizer,
        save_dataset,
    )
    from sft_helpers import MINILM, records

    out = tmp_path_factory.mktemp("sft") / "data"
    cfg = SFTDatasetConfig(max_length=512)
    ds, _ = build_sft_dataset(records(4, objects=3), load_tokenizer(MINILM), cfg)
    return save_dataset(ds, out, {"test": True}, cfg)


# --- TRL habits -------------------------------------------------------------------------------------------
def test_trl_style_flags_set_training_fields():
    res = invoke("train", TINY, "--learning_rate", "1e-4", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "learning_rate: 0.0001" in res.output and "# SFTDTConfig: ok: learning_rate 0.0001" in res.output
    res = invoke("train", "--config", TINY, "lora.r=4", "--learning-rate=2e-4", "--bf16", "false",
                 "--lora.alpha", "8", "--dry-run")
    assert res.exit_code == 0, res.output
    assert ("in-process: python -m dtwinseg.training.run " + TINY +
            " lora.r=4 training.learning_rate=2e-4 training.bf16=false lora.alpha=8") in res.output
    res = invoke("train", "--config", TINY, "--learning_rate", "3e-4", "--dry-run")  # TRL's own order
    assert res.exit_code == 0 and "learning_rate: 0.0003" in res.output, res.output
    res = invoke("train", "--learning_rate", "3e-4", "--config", TINY, "--dry-run")
    assert res.exit_code == 0 and "learning_rate: 0.0003" in res.output, res.output
    res = invoke("train", "--learning_rate", "3e-4", TINY, "--dry-run")  # without --config the recipe comes first
    assert res.exit_code == 2 and "recipe YAML first" in res.output
    res = invoke("train", TINY, "--bf16", "--use_cpu", "--dry-run", "training.bf16=false")  # bool flags alone
    assert res.exit_code == 0 and "training.bf16=true training.use_cpu=true training.bf16=false" in res.output


def test_wrong_flags_and_bare_fields_say_what_was_meant():
    res = invoke("train", TINY, "learning_rate=1e-4", "--dry-run")
    assert res.exit_code == 2 and "did you mean training.learning_rate=1e-4?" in res.output, res.output
    res = invoke("train", TINY, "r=8", "--dry-run")
    assert res.exit_code == 2 and "did you mean lora.r=8?" in res.output
    res = invoke("train", TINY, "--learnin_rate", "1e-4", "--dry-run")
    assert res.exit_code == 2 and "--learnin_rate" in res.output and "did you mean --learning_rate?" in res.output
    assert res.output.count("\n") == 1
    res = invoke("train", TINY, "--dry_run")
    assert res.exit_code == 2 and "did you mean --dry-run?" in res.output
    res = invoke("train", "--dry-run")
    assert res.exit_code == 2 and "RECIPE" in res.output.upper()


def test_help_keeps_brackets():
    res = invoke("train", "--help")
    assert res.exit_code == 0 and "lora.target_modules=[q_proj,v_proj]" in res.output
    assert "--accelerate-arg" in res.output and "--learning_rate 1e-4" in res.output
    res = invoke("build-segdt", "--help")
    assert "[default: 0.5, or the teacher config's min_iou]" in " ".join(res.output.split())


def test_wandb_is_optional(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    res = invoke("train", TINY, "training.report_to=[wandb]", "--dry-run")
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "training.report_to" in res.output and "pip install 'dtwinseg[wandb]'" in res.output
    res = invoke("train", TINY, "--dry-run")  # not asked for: no word about it
    assert res.exit_code == 0 and "wandb is not installed" not in res.output
    res = invoke("eval", "synthetic:nowhere:test", "--dt-cache", "nowhere", "-c", "a=b", "--out", "nowhere", "--wandb")
    assert res.exit_code == 2 and "'--wandb'" in res.output and "dtwinseg[wandb]" in res.output, res.output


def test_dry_run_prints_no_third_party_noise(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("DS_ACCELERATOR", None)
    proc = subprocess.run([sys.executable, "-m", "dtwinseg.cli", "train", TINY_LORA, "--dry-run"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr  # no FutureWarning, no DeepSpeed accelerator line
    assert "WANDB" not in proc.stdout and "Setting accelerator" not in proc.stdout


# --- the install ------------------------------------------------------------------------------------------
USER_CHECK = """
import sys, training
assert training.WHO == "user", training.__file__
import dtwinseg.training as ours
from dtwinseg.training import SFTDTTrainer
assert ours.__file__ != training.__file__ and "userproj" not in ours.__file__, ours.__file__
print("ok", ours.__file__)
"""  # (the ok line is the last: transformers may print a line of its own on import)


def user_project(tmp_path: Path) -> Path:
    proj = tmp_path / "userproj"
    (proj / "training").mkdir(parents=True)
    (proj / "training" / "__init__.py").write_text("WHO = 'user'\n")
    (proj / "eval").mkdir()
    (proj / "eval" / "__init__.py").write_text("WHO = 'user'\n")
    return proj


def check_user_project(proj: Path, env: dict) -> str:
    """In the user's folder (its own training/ package first on sys.path): import both, dry-run a recipe,
    and start `accelerate launch --module dtwinseg.training.run` (no recipe: our module's usage line)."""
    run = {"cwd": proj, "env": env, "capture_output": True, "text": True, "timeout": 300}
    proc = subprocess.run([sys.executable, "-c", USER_CHECK], **run)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1].startswith("ok "), proc.stderr[-2000:]
    ours = proc.stdout.splitlines()[-1].split(" ", 1)[1]
    proc = subprocess.run([sys.executable, "-m", "dtwinseg.cli", "train", TINY, "--learning_rate", "1e-4",
                           "--dry-run"], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "in-process: python -m dtwinseg.training.run" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--module",
                           "dtwinseg.training.run"], **run)
    assert "usage: python -m dtwinseg.training.run RECIPE.yaml" in proc.stderr, proc.stderr[-2000:]
    return ours


def test_a_user_project_with_its_own_training_package_uses_dtwinseg(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    assert check_user_project(user_project(tmp_path), env) == str(ROOT / "training" / "__init__.py")


@pytest.mark.slow
def test_the_wheel_installs_one_namespace(tmp_path):
    """Build the wheel from a copy of the source (no build/ left in the checkout), check what it holds, install
    it with --no-deps into a target folder and run the user-project checks against that copy alone."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "runs", ".venv", "build", "*.egg-info")
    for name in ("dtwinseg", "training", "data_builders", "eval", "workflows", "cli"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    str(src), "-w", str(wheels)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("dtwinseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"dtwinseg/training/run.py", "dtwinseg/training/deepspeed/zero2.json",
            "dtwinseg/training/deepspeed/zero3.json", "dtwinseg/cli/main.py", "dtwinseg/workflows/publish.py",
            "dtwinseg/data_builders/sft_dataset.py", "dtwinseg/workflows/demo.py"} <= set(names)
    assert {n.split("/")[0] for n in names} == {"dtwinseg", wheel.name.split("-py3")[0] + ".dist-info"}
    assert not [n for n in names if "planted" in n or "/tests/" in n or n.startswith("tests/")]
    top = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("top_level.txt"))).decode().split()
    assert top == ["dtwinseg"]
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    assert check_user_project(user_project(tmp_path), env) == str(site / "dtwinseg" / "training" / "__init__.py")
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in requires]
    assert "torch>=2.13" in requires and not any(r.name == "wandb" and not r.marker for r in reqs)
    assert not [str(r) for r in reqs if any(sp.operator == "==" for sp in r.specifier)]  # pins: constraints.txt
