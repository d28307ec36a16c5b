"""DeepSpeed ZeRO-2 / ZeRO-3 smoke runs on 2 CPU ranks (gloo): train a few LoRA steps, save the adapter,
load it back in one process and get the same outputs as the trained model."""

from __future__ import annotations

import json
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
from data_builders.sft_dataset import SFTDatasetConfig, build_sft_dataset
from training import SFTDTConfig, SFTDTTrainer
from peft import LoraConfig
out, stage, root = sys.argv[2], sys.argv[3], sys.argv[4]
tok = bpe_tokenizer(vocab_size=1200)
ds, _ = build_sft_dataset(records(8, objects=3), tok, SFTDatasetConfig(max_length=None))
model = tiny_llama(len(tok), seed=1)
# Without a GPU, TrainingArguments sees world size 1 while DeepSpeed sees 2: let DeepSpeed derive the
# global batch (micro x accumulation x its world size) instead of the "auto" value Trainer would fill in.
ds_config = json.load(open(os.path.join(root, f"training/deepspeed/zero{stage}.json")))
ds_config.pop("train_batch_size")
a = SFTDTConfig(output_dir=out, use_cpu=os.environ.get("SFTDT_USE_CPU") == "1", report_to=[], save_strategy="no", max_steps=3, seed=0,
                per_device_train_batch_size=2, learning_rate=5e-2, logging_steps=1, bf16=False,
                deepspeed=ds_config)
t = SFTDTTrainer(model, a, train_dataset=ds, processing_class=tok,
                 peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
t.train()
t.save_model(out)
if t.is_world_process_zero():
    probe = torch.tensor([ds[0]["input_ids"][:32]])
    t.model.eval()
    with torch.no_grad():
        logits = t.model(input_ids=probe).logits
    json.dump({"deepspeed": t.is_deepspeed_enabled, "world": t.args.world_size, "probe": probe.tolist(),
               "logits": logits.tolist(), "log": t.state.log_history}, open(out + "/result.json", "w"))
"""


def run_stage(tmp_path: Path, stage: int) -> dict:
    script = tmp_path / "ds.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"zero{stage}"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(29700 + stage), str(script), str(ROOT / "tests"), str(out),
                           str(stage), str(ROOT)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, **json.loads((out / "result.json").read_text())}


def check_adapter(res: dict) -> None:
    from peft import PeftModel
    from sft_helpers import bpe_tokenizer, tiny_llama

    assert res["deepspeed"] and res["world"] == 2
    adapter = res["out"] / "adapter_model.safetensors"
    assert adapter.stat().st_size > 0
    from safetensors.torch import load_file

    weights = load_file(str(adapter))
    assert weights and all(v.numel() > 0 for v in weights.values())
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # trained, not the zero init
    base = tiny_llama(len(bpe_tokenizer(vocab_size=1200)), seed=1)
    model = PeftModel.from_pretrained(base, str(res["out"])).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(res["probe"])).logits
    assert torch.allclose(logits, torch.tensor(res["logits"]), atol=1e-5)


CPU_DS_XFAIL = ("DeepSpeed on GPU-less CPU ranks: transformers sees world size 1 while DeepSpeed/gloo see 2, so "
                "accelerate's gather fails: RuntimeError: ProcessGroupGloo::allgather: invalid output tensor "
                "list at index 0 (expected length 2, got 1). Real ZeRO runs need the GPU machine.")


@pytest.mark.slow
@pytest.mark.xfail(reason=CPU_DS_XFAIL, strict=False)
def test_zero2_two_cpu_ranks(tmp_path):
    check_adapter(run_stage(tmp_path, 2))


@pytest.mark.slow
@pytest.mark.xfail(reason=CPU_DS_XFAIL, strict=False)
def test_zero3_two_cpu_ranks(tmp_path):
    check_adapter(run_stage(tmp_path, 3))
