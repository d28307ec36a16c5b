"""`make bench`: run every benchmark script, then write BENCHMARKS.md from benchmarks/results/*.json.

Usage: python benchmarks/run_all.py [--quick] [--only NAME ...] [--table-only]
Each benchmark module exposes ``main(quick: bool = False) -> dict`` and writes its own JSON result.
A benchmark that fails is reported and the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import RESULTS  # noqa: E402
from dtwinseg.io import atomic_write_text  # noqa: E402

BENCHMARKS = ["metric", "prompt_size", "proposals", "training_step", "training_throughput", "eval_throughput"]

# The numbers each benchmark is judged by: (result key, target text, comparison).
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "proposals": [("speedup_vs_amg", ">= 5x (CPU)"), ("mask_agreement", "1.0")],
    "training_step": [("step_time_ratio", "<= 1.05"), ("peak_memory_ratio", "<= 1.0")],
    "training_throughput": [("tokens_per_s_ratio_vs_trl", ">= 1.5 (non-padding tokens/s, SFTDT packed / TRL padded)"),
                            ("peak_memory_ratio_vs_trl", "<= 1.0"),
                            ("tokens_per_s_ratio_vs_trl_padding_free", "n/a (vs TRL padding_free)")],
    "metric": [("speedup", "n/a (ours vs per-mask reference)")],
    "eval_throughput": [("speedup", "n/a (batched vs one-by-one)")],
    "prompt_size": [("default_tokens_at_150", "<= 8000 (SmolLM2 tokens, default JSON(D), N=150)"),
                    ("default_tokens_at_300", "<= 16000 (N=300)"),
                    ("default_scenes_survived", ">= 0.95 (scenes whose compared pairs JSON(D) relates)"),
                    ("realistic_scenes_survived", ">= 0.95 (the same, realistic-profile test scenes)"),
                    ("prompt_seconds_default", "n/a (s, N=300 masks at 1024x1024)")],
}


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _per_n_rows(r: dict) -> list[tuple[str, object]]:
    """prompt_size: tokens per object for each N (BPE), default / capped / all-pairs, and survival."""
    rows = []
    for size in r.get("sizes", []):
        per = size.get("bpe", {}).get("tokens_per_object", {})
        if per:
            rows.append((f"BPE tokens per object at N={size['n']} (default / floor / capped / all-pairs)",
                         " / ".join(f"{per.get(k, 0):.1f}" for k in ("default", "floor", "capped", "all_pairs"))))
    for label, surv in r.get("survival", {}).items():
        lay = surv.get("layouts", {})
        if lay:
            rows.append((f"scenes whose compared pairs survive, {label} ({surv.get('scenes')} scenes; "
                         "default / floor / capped / all-pairs)",
                         " / ".join(f"{lay.get(k, {}).get('scenes_survived') or 0:.3f}"
                                    for k in ("default", "floor", "capped", "all_pairs"))))
    return rows


def write_table() -> Path:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (benchmarks/run_all.py) from `benchmarks/results/*.json`. Ratios are measured",
        "side by side in one process run (interleaved repetitions, medians). GPU rows appear only when a run",
        "happened on a GPU machine, with the device named.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        m = r.get("machine", {})
        where = m.get("gpu") or m.get("cpu") or m.get("device", "?")
        lines += [f"## {r.get('name', path.stem)}", "", f"Machine: {where} ({m.get('cpu_count')} CPUs, torch {m.get('torch')}), {r.get('time', '')}", ""]
        summary = r.get("summary") or {}
        rows = [(k, v) for k, v in summary.items()] if summary else []
        for key, target in HEADLINES.get(r.get("name", path.stem), []):
            if key in r and key not in summary:
                rows.insert(0, (f"{key} (target {target})", r[key]))
            gpu = r.get("gpu")
            if isinstance(gpu, dict) and key in gpu:  # measured on a GPU machine, named
                rows.append((f"GPU {gpu.get('device', '?')}: {key}", gpu[key]))
        rows += _per_n_rows(r)
        if rows:
            lines += ["| metric | value |", "| --- | --- |"]
            lines += [f"| {str(k).replace('|', '/')} | {_fmt(v).replace('|', '/')} |" for k, v in rows]
            lines.append("")
        if r.get("notes"):
            lines += [str(r["notes"]), ""]
    return atomic_write_text(HERE.parent / "BENCHMARKS.md", "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions / smaller sizes")
    ap.add_argument("--only", nargs="*", default=None, help="run only these benchmarks")
    ap.add_argument("--table-only", action="store_true", help="only rebuild BENCHMARKS.md from the JSON files")
    args = ap.parse_args()
    failed = []
    if not args.table_only:
        for name in args.only or BENCHMARKS:
            t0 = time.time()
            print(f"== {name}", flush=True)
            try:
                mod = importlib.import_module(f"benchmarks.{name}")
                mod.main(quick=args.quick)
                print(f"   done in {time.time() - t0:.0f} s", flush=True)
            except Exception:  # noqa: BLE001 - one broken benchmark must not stop the others
                traceback.print_exc()
                failed.append(name)
    print(f"wrote {write_table()}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
