"""``dtwinseg train``: plan the run (process count, launch command), dry-run it, or run it.

The process count follows ONE rule (:func:`plan_processes`), first match wins; every number is the TOTAL
over all machines, as accelerate's ``num_processes``:

1. ``--num-processes N``;
2. the accelerate config's ``num_processes``: the config describes the hardware, so it wins over the recipe;
3. the recipe's ``launch.num_processes``;
4. otherwise 1.

How it runs (:func:`launcher_reason`): through ``accelerate launch`` whenever there is more than one
process, the accelerate config asks for any distributed type (``DEEPSPEED``, ``MULTI_GPU``, ``FSDP``,
``MULTI_CPU``, ...: whatever the process count, so a one-GPU DeepSpeed offload config really runs DeepSpeed),
or the recipe sets ``training.deepspeed`` (DeepSpeed needs a launcher's process group even for one
process); otherwise in this process (:func:`dtwinseg.training.run.train_from_recipe`). The command::

    accelerate launch --config_file <accelerate_config> --num_processes <total> [--accelerate-arg ...] \
        --module dtwinseg.training.run RECIPE.yaml [overrides...] --no-merge

(``--use_deepspeed --deepspeed_config_file <training.deepspeed>`` instead of ``--config_file`` when the recipe
alone asks for DeepSpeed; every machine runs that command with its own ``machine_rank`` in its accelerate
config) and, once every rank has finished, the optional LoRA merge runs here, in one process (merging under
DeepSpeed is unsupported). ``--dry-run`` builds everything but the weights: SFTDTConfig, LoraConfig, the
resolved DeepSpeed config and the command, and prints them with the resolved recipe.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dtwinseg.training.recipe import (
    Recipe,
    build_training_args,
    load_recipe,
    lora_config,
    project_file,
    training_kwargs,
)

from dtwinseg.config import ConfigError, load_config_yaml, redact
from dtwinseg.runtime import known_warning_filters, quiet_third_party, run_forwarding_signals


@dataclass
class ProcessPlan:
    """How many processes run where, and which rule decided it."""

    total: int
    machines: int
    source: str

    @property
    def per_machine(self) -> int:
        return self.total // self.machines

    def describe(self) -> str:
        return (f"processes: {self.total} in total = {self.machines} machine(s) x {self.per_machine} "
                f"(from {self.source})")


def plan_processes(recipe_total: int | None, accelerate_cfg: dict | None, cli_total: int | None) -> ProcessPlan:
    """The process count by the rule of the module docstring; ConfigError when it does not divide evenly."""
    acc = accelerate_cfg or {}
    machines = int(acc.get("num_machines") or 1)
    if machines < 1:
        raise ConfigError("accelerate config", "num_machines", f"must be >= 1, got {machines}")
    if cli_total:
        plan = ProcessPlan(int(cli_total), machines, "--num-processes")
    elif acc.get("num_processes"):
        plan = ProcessPlan(int(acc["num_processes"]), machines, "the accelerate config's num_processes")
    elif recipe_total:
        plan = ProcessPlan(int(recipe_total), machines, "the recipe's launch.num_processes")
    else:
        plan = ProcessPlan(1, machines, "the default")
    if plan.total < 1 or plan.total % machines:
        raise ConfigError("launch", "num_processes", f"{plan.total} processes in total cannot be split evenly "
                          f"over {machines} machines")
    return plan


def launcher_reason(r: Recipe, plan: ProcessPlan, accelerate_cfg: dict | None) -> str | None:
    """Why the run goes through ``accelerate launch`` (see the module docstring), or None: in-process."""
    if plan.total > 1:
        return f"{plan.total} processes"
    kind = str((accelerate_cfg or {}).get("distributed_type") or "NO").upper()
    if kind not in ("NO", "DISTRIBUTEDTYPE.NO"):
        return f"the accelerate config asks for distributed_type {kind}"
    if r.training.get("deepspeed"):
        return "training.deepspeed is set (DeepSpeed needs a launcher even for one process)"
    return None


def launch_command(recipe: str | os.PathLike, overrides: list[str], accelerate_config: str | os.PathLike | None,
                   num_processes: int, accelerate_args: list[str] | None = None,
                   deepspeed: Any = None) -> list[str]:
    """The argv of the accelerate launch (accelerate's CLI module run by this Python). ``deepspeed`` (the
    recipe's training.deepspeed: a file or an inline config) asks accelerate for DeepSpeed when there is no
    accelerate config."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config)]
    elif deepspeed:
        cmd += ["--use_deepspeed"] + (["--deepspeed_config_file", str(Path(deepspeed).resolve())]
                                      if isinstance(deepspeed, str | os.PathLike) else [])
    cmd += ["--num_processes", str(num_processes), *(accelerate_args or [])]
    return cmd + ["--module", "dtwinseg.training.run", str(recipe), *overrides, "--no-merge"]


def _accelerate_config(r: Recipe, cli_path: str | os.PathLike | None) -> tuple[Path | None, dict | None]:
    given = cli_path or r.launch.accelerate_config
    if not given:
        return None, None
    path = project_file(given)
    if not path.is_file():
        field = "--accelerate-config" if cli_path else "launch.accelerate_config"
        raise ConfigError(r.path, field, f"{given}: file not found")
    return path, load_config_yaml(path)


def resolved_deepspeed(args: Any, total_processes: int) -> dict | None:
    """The DeepSpeed config the run will use: the recipe's file with the "auto" values transformers fills
    from the training arguments, and the global batch for ``total_processes``. Values that depend on the
    model (bucket sizes) stay "auto" until the model is loaded."""
    hf = getattr(args, "hf_deepspeed_config", None)
    if hf is None:
        return None
    cfg = json.loads(json.dumps(hf.config, default=str))
    micro, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
    cfg["train_batch_size"] = micro * accum * total_processes
    return cfg


def _wants_gpu(r: Recipe) -> bool:
    t = r.training
    return bool(t.get("bf16") or t.get("fp16")) and not t.get("use_cpu")


def report_targets(r: Recipe) -> list[str]:
    """training.report_to as a list of integration names ("none" -> [])."""
    report = r.training.get("report_to") or []
    report = [report] if isinstance(report, str) else list(report)
    return [str(x) for x in report if str(x) != "none"]


def check_loggers(r: Recipe) -> None:
    """wandb is an optional extra: a recipe that reports to it without it installed is one line, before any
    weight loads."""
    import importlib.util

    if "wandb" in report_targets(r) and importlib.util.find_spec("wandb") is None:
        raise ConfigError(r.path, "training.report_to", "lists wandb, but wandb is not installed: pip install "
                          "'dtwinseg[wandb]' (or drop wandb from report_to)")


def child_env(r: Recipe) -> dict[str, str]:
    """The environment of the launched ranks: this one, with the same warnings filtered and without
    WANDB_MODE when the run does not report to wandb (see dtwinseg.runtime.quiet_third_party)."""
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = ",".join(x for x in [env.get("PYTHONWARNINGS", "")] + known_warning_filters() if x)
    if "wandb" not in report_targets(r):
        env.pop("WANDB_MODE", None)
    return env


def dry_run(r: Recipe, plan: ProcessPlan, command: str, echo: Callable[[str], None]) -> None:
    """Build SFTDTConfig, LoraConfig and the DeepSpeed config and print them with the resolved recipe."""
    import torch

    assume_gpu = _wants_gpu(r) and not torch.cuda.is_available()
    args = build_training_args(r, assume_gpu=assume_gpu)
    lora = lora_config(r)
    echo("# resolved recipe (secrets redacted)")
    echo(yaml.safe_dump(redact(r.to_dict()), sort_keys=False, allow_unicode=True).rstrip())
    note = " (checked as on a bf16 GPU machine: this one has no GPU)" if assume_gpu else ""
    echo(f"# SFTDTConfig: ok{note}: learning_rate {args.learning_rate}, lr_scheduler_type "
         f"{args.lr_scheduler_type.value}, warmup_steps {args.warmup_steps}, per_device_train_batch_size "
         f"{args.per_device_train_batch_size}, gradient_accumulation_steps {args.gradient_accumulation_steps}, "
         f"bf16 {args.bf16}, activation_checkpointing {args.activation_checkpointing}, max_steps "
         f"{args.max_steps}, num_train_epochs {args.num_train_epochs}")
    if lora is None:
        echo("# LoraConfig: none (full fine-tuning)")
    else:
        echo(f"# LoraConfig: r {lora.r}, lora_alpha {lora.lora_alpha}, lora_dropout {lora.lora_dropout}, "
             f"target_modules {sorted(lora.target_modules) if isinstance(lora.target_modules, set) else lora.target_modules}")
    ds = resolved_deepspeed(args, plan.total)
    if ds is not None:
        echo("# DeepSpeed config (resolved)")
        echo(json.dumps(ds, indent=2))
    for name in ("train", "eval"):
        folder = getattr(r.data, name)
        if folder and not Path(folder).is_dir():
            echo(f"# note: data.{name} {folder} does not exist yet (dtwinseg build-sft writes it)")
    echo(f"# {plan.describe()}")
    echo(command)


def ranks_failed(code: int, r: Recipe) -> RuntimeError:
    """The error of a multi-process run that exited ``code``: for a signal (SIGTERM / SIGINT: the ranks
    saved a checkpoint, see dtwinseg.training.run) a TrainingStopped saying how to resume."""
    import signal

    from dtwinseg.training.run import latest_checkpoint
    from dtwinseg.training.trainer import TrainingStopped

    signum = code - 128 if code > 128 else -code
    last = latest_checkpoint(r.output_dir)
    if signum in (signal.SIGTERM, signal.SIGINT) and last is not None:
        step = int(last.name.rsplit("-", 1)[1])
        return TrainingStopped(signum, step, int(r.training.get("max_steps") or -1), str(last))
    return RuntimeError(f"accelerate launch failed with exit code {code}")


def launch(recipe: Recipe | dict | str | os.PathLike, overrides: list[str] | None = None, *,
           accelerate_config: str | os.PathLike | None = None, num_processes: int | None = None,
           accelerate_args: list[str] | None = None, dry_run_only: bool = False,
           echo: Callable[[str], None] = print) -> Path | None:
    """Train a recipe; returns the output folder (None on a dry run). See the module docstring.
    ``accelerate_args`` are passed to ``accelerate launch`` as they are (before ``--module``)."""
    from dtwinseg.training.run import merge_adapter, train_from_recipe

    quiet_third_party()
    overrides = list(overrides or [])
    r = load_recipe(recipe, overrides)
    check_loggers(r)
    acc_path, acc_cfg = _accelerate_config(r, accelerate_config)
    plan = plan_processes(r.launch.num_processes, acc_cfg, num_processes)
    shown = r.path or recipe  # a Recipe / dict built in memory shows the file it stands for
    reason = launcher_reason(r, plan, acc_cfg)
    if reason is None and accelerate_args:
        reason = "--accelerate-arg given"
    if reason is None:
        command = f"in-process: python -m dtwinseg.training.run {shlex.join([str(shown), *overrides])}"
        cmd = None
    else:
        cmd = launch_command(shown, overrides, acc_path, plan.total, accelerate_args,
                             None if acc_path else training_kwargs(r)[0].get("deepspeed"))
        command = f"# accelerate launch: {reason}\n{shlex.join(cmd)}"
    if dry_run_only:
        dry_run(r, plan, command, echo)
        return None
    if cmd is None:
        return train_from_recipe(r)
    echo(f"{plan.describe()}\n{command}")
    code = run_forwarding_signals(cmd, env=child_env(r))  # a SIGTERM here reaches every rank
    if code != 0:
        raise ranks_failed(code, r)
    merge_adapter(r)
    return r.output_dir
