"""Shared helpers for `make bench`: machine facts, side-by-side timing, result files."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dtwinseg.io import atomic_write_json  # noqa: E402


def machine_info() -> dict:
    """Where the numbers came from: CPU / GPU name, core count, library versions."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def time_fn(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA-synchronised)."""
    import torch

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Time several implementations alternately (A, B, A, B, ...) so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].extend(time_fn(fn, repeats=1, warmup=0))
    return times


def rss_kb() -> int:
    """This process's resident set size in KiB (Linux /proc): the baseline that peak-memory measurements
    subtract."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def write_result(name: str, result: dict) -> Path:
    """Write benchmarks/results/<name>.json atomically, with machine facts added."""
    result = {"name": name, "machine": machine_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}
    return atomic_write_json(RESULTS / f"{name}.json", result)
