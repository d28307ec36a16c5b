"""DeepSpeed on GPU-less ranks (``DS_ACCELERATOR=cpu``, gloo) through the HF Trainer.

Why this exists. Launched with ``torchrun`` (or ``accelerate launch``) and a DeepSpeed config, transformers
builds accelerate's ``PartialState`` without a backend. accelerate 1.15 picks the backend from the device
(nccl for CUDA, ...); with no device it picks none, lets DeepSpeed initialise the process group itself
(gloo on its CPU accelerator: world size 2), but then, since its own backend is None, records
``num_processes = 1``. The Trainer therefore believes it runs alone while DeepSpeed and gloo see 2 ranks,
and the first cross-rank gather fails (``ProcessGroupGloo::allgather: invalid output tensor list at index 0
(expected length 2, got 1)``). ``use_cpu=True`` / ``ACCELERATE_USE_CPU`` is no way out: accelerate then
configures plain multi-CPU data parallelism and ignores the DeepSpeed plugin.

The workaround. Before TrainingArguments sets up its devices, build the ``PartialState`` ourselves with
``backend="gloo"`` and ``ACCELERATE_USE_DEEPSPEED=true``: accelerate then asks DeepSpeed to initialise gloo,
reads the world size back from ``torch.distributed`` (2) and marks the state as DeepSpeed; the device
stays ``cpu``. The TrainingArguments are told to reuse that state
(``accelerator_config.use_configured_state = True``). Nothing else changes: DeepSpeed's "auto" values are
filled by transformers with the right world size, and ZeRO-2 / ZeRO-3 run as on GPUs.

:func:`cpu_deepspeed_requested` says when this applies; :func:`configure_cpu_deepspeed_state` applies it
(``SFTDTConfig.__post_init__`` calls it, so scripts and recipes need no change). Only for smoke tests and
debugging: real ZeRO runs belong on GPUs.
"""

from __future__ import annotations

import os
from typing import Any

from transformers.trainer_pt_utils import AcceleratorConfig


def _launched_distributed() -> bool:
    """True under torchrun / accelerate launch (LOCAL_RANK set) with more than one process."""
    return int(os.environ.get("LOCAL_RANK", -1)) != -1 and int(os.environ.get("WORLD_SIZE", 1)) > 1


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def cpu_deepspeed_requested(deepspeed: Any) -> bool:
    """True when DeepSpeed (a config in the arguments, or accelerate's ``ACCELERATE_USE_DEEPSPEED``) runs
    on several launched ranks and torch sees no accelerator device (so accelerate would pick no backend)."""
    import torch

    if not (deepspeed or _flag("ACCELERATE_USE_DEEPSPEED")) or not _launched_distributed():
        return False
    return not torch.accelerator.is_available()


def configure_cpu_deepspeed_state(accelerator_config: Any, use_cpu: bool = False) -> Any:
    """Initialise accelerate's shared state for DeepSpeed over gloo; return the ``accelerator_config`` to put
    in the TrainingArguments (``use_configured_state`` set; ``None`` / dict / AcceleratorConfig accepted).

    Raises ValueError for ``use_cpu`` / ``ACCELERATE_USE_CPU`` (accelerate would then drop DeepSpeed) and
    RuntimeError when an earlier, non-DeepSpeed accelerate state exists in this process.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if use_cpu or _flag("ACCELERATE_USE_CPU"):
        raise ValueError("DeepSpeed on CPU ranks: leave use_cpu False and ACCELERATE_USE_CPU unset (set "
                         "DS_ACCELERATOR=cpu); with use_cpu accelerate ignores the DeepSpeed config")
    if not PartialState._shared_state.get("initialized"):
        previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        try:
            PartialState(backend="gloo")
        finally:
            if previous is None:
                del os.environ["ACCELERATE_USE_DEEPSPEED"]
            else:
                os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    state = PartialState()
    if state.distributed_type != DistributedType.DEEPSPEED:
        raise RuntimeError(f"accelerate state already initialised as {state.distributed_type}, not DeepSpeed")
    if accelerator_config is None:
        return {"use_configured_state": True}
    if isinstance(accelerator_config, dict):
        return {**accelerator_config, "use_configured_state": True}
    if isinstance(accelerator_config, AcceleratorConfig):
        accelerator_config.use_configured_state = True
        return accelerator_config
    config = AcceleratorConfig.from_json_file(str(accelerator_config))
    config.use_configured_state = True
    return config
