"""``dtwinseg train``: run a recipe in this process, or build and run the ``accelerate launch`` command.

One process (``--num-processes 1``, or a recipe without an accelerate config): in-process
:func:`training.run.train_from_recipe`. Otherwise::

    accelerate launch --config_file <accelerate_config> [--num_processes N] --module training.run \
        RECIPE.yaml [overrides...] --no-merge

and, once every rank has finished, the optional LoRA merge runs here, in one process (merging under
DeepSpeed is unsupported).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from training.run import load_recipe, merge_adapter, train_from_recipe


def launch_command(recipe: str | os.PathLike, overrides: list[str], accelerate_config: str | os.PathLike,
                   num_processes: int | None = None) -> list[str]:
    """The argv of the multi-process launch (accelerate's CLI module run by this Python)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + ["--module", "training.run", str(recipe), *overrides, "--no-merge"]


def launch(recipe: str | os.PathLike, overrides: list[str] | None = None, *,
           accelerate_config: str | os.PathLike | None = None, num_processes: int | None = None,
           dry_run: bool = False, echo: Callable[[str], None] = print) -> Path | None:
    """Train a recipe; returns the output folder (None on a dry run). See the module docstring."""
    overrides = list(overrides or [])
    r = load_recipe(recipe, overrides)
    section = r.get("launch") or {}
    acc = accelerate_config or section.get("accelerate_config")
    n = num_processes or section.get("num_processes")
    if acc is None or n == 1:
        if dry_run:
            echo(f"in-process: python -m training.run {shlex.join([str(recipe), *overrides])}")
            return None
        return train_from_recipe(r)
    if not Path(acc).exists():
        raise FileNotFoundError(f"accelerate config {acc} not found")
    cmd = launch_command(recipe, overrides, acc, n)
    echo(shlex.join(cmd))
    if dry_run:
        return None
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"accelerate launch failed with exit code {proc.returncode}")
    merge_adapter(r)
    return Path(r["training"]["output_dir"])
