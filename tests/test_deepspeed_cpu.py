"""DeepSpeed ZeRO-2 / ZeRO-3 smoke runs on 2 CPU ranks (gloo) through SFTDTTrainer with our
training/deepspeed/zero{2,3}.json: train a few LoRA steps, save the adapter, load it back in one process and
get the same outputs as the trained model.

Launch: ``DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 script.py`` without ``use_cpu`` /
``ACCELERATE_USE_CPU`` (see training/cpu_deepspeed.py for why and what SFTDTConfig does about it)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import os, sys, json, torch
sys.path.insert(0, sys.argv[1])
from sft_helpers import bpe_tokenizer, records, tiny_llama
from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig, build_sft_dataset
from dtwinseg.training import SFTDTConfig, SFTDTTrainer
from peft import LoraConfig
out, stage, root = sys.argv[2], sys.argv[3], sys.argv[4]
tok = bpe_tokenizer(vocab_size=1200)
ds, _ = build_sft_dataset(records(8, objects=3), tok, SFTDatasetConfig(max_length=None))
model = tiny_llama(len(tok), seed=1)
# Our config file as is ("auto" values filled by transformers); no use_cpu: SFTDTConfig sets up accelerate's
# state over gloo for GPU-less DeepSpeed ranks (training/cpu_deepspeed.py).
a = SFTDTConfig(output_dir=out, report_to=[], save_strategy="no", max_steps=3, seed=0,
                per_device_train_batch_size=2, learning_rate=5e-2, logging_steps=1, bf16=False,
                deepspeed=os.path.join(root, f"training/deepspeed/zero{stage}.json"))
t = SFTDTTrainer(model, a, train_dataset=ds, processing_class=tok,
                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
t.train()
engine = t.model_wrapped
partitioned = any(hasattr(p, "ds_id") for p in t.model.parameters())
t.save_model(out)
probe = torch.tensor([ds[0]["input_ids"][:32]])
t.model.eval()
with torch.no_grad():  # every rank takes part (ZeRO-3 gathers the partitioned weights in forward)
    logits = t.model(input_ids=probe).logits
if t.is_world_process_zero():
    json.dump({"deepspeed": t.is_deepspeed_enabled, "engine": type(engine).__name__,
               "stage": engine.zero_optimization_stage(), "partitioned": partitioned,
               "world": t.args.world_size, "dist_world": torch.distributed.get_world_size(),
               "train_batch": engine.train_batch_size(), "probe": probe.tolist(),
               "logits": logits.tolist(), "log": t.state.log_history}, open(out + "/result.json", "w"))
from dtwinseg.training.run import shutdown_distributed
shutdown_distributed()  # as dtwinseg.training.run does: no gloo thread left to abort the exit
"""


def run_stage(tmp_path: Path, stage: int) -> dict:
    script = tmp_path / "ds.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"zero{stage}"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "DS_BUILD_OPS": "0"}
    env.pop("ACCELERATE_USE_CPU", None)  # accelerate would drop DeepSpeed for plain multi-CPU DDP
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29700 + stage), str(script), str(ROOT / "tests"), str(out),
                           str(stage), str(ROOT)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, **json.loads((out / "result.json").read_text())}


def check_adapter(res: dict, stage: int) -> None:
    from peft import PeftModel
    from sft_helpers import bpe_tokenizer, tiny_llama

    assert res["deepspeed"] and res["engine"] == "DeepSpeedEngine"
    assert res["world"] == res["dist_world"] == 2  # Trainer and gloo agree
    assert res["stage"] == stage and res["partitioned"] == (stage == 3)
    assert res["train_batch"] == 2 * 2  # micro-batch 2 x 2 ranks (accumulation 1)
    losses = [row["loss"] for row in res["log"] if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    adapter = res["out"] / "adapter_model.safetensors"
    assert adapter.stat().st_size > 0
    from safetensors.torch import load_file

    weights = load_file(str(adapter))
    assert weights and all(v.numel() > 0 for v in weights.values())
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # trained, not the zero init
    base = tiny_llama(len(bpe_tokenizer(vocab_size=1200)), seed=1).eval()
    probe, trained = torch.tensor(res["probe"]), torch.tensor(res["logits"])
    with torch.no_grad():
        untouched = base(input_ids=probe).logits
        logits = PeftModel.from_pretrained(base, str(res["out"])).eval()(input_ids=probe).logits
    assert torch.allclose(logits, trained, atol=1e-5)
    assert (untouched - trained).abs().max() > 1e-3  # the adapter changes the outputs


@pytest.mark.slow
def test_zero2_two_cpu_ranks(tmp_path):
    check_adapter(run_stage(tmp_path, 2), 2)


@pytest.mark.slow
def test_zero3_two_cpu_ranks(tmp_path):
    check_adapter(run_stage(tmp_path, 3), 3)
