"""Padding-free SFTDT batches and token budgets: packed == padded (loss and gradients, fp32), exact sampling."""

from __future__ import annotations

import os

import pytest
import torch
from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig, build_sft_dataset
from dtwinseg.training import SFTDTConfig, SFTDTTrainer
from dtwinseg.training.packing import (
    SEGMENT_ATTENTION,
    TokenBudgetSampler,
    boundaries_from_position_ids,
    budget_batches,
    pack_examples,
)
from sft_helpers import bpe_tokenizer, records, tiny_bert_lm, tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer(vocab_size=1200)


@pytest.fixture(scope="module")
def ds(tok):
    """8 examples of two clearly different lengths (3- and 6-object twins), so padding is substantial."""
    data, _ = build_sft_dataset(records(5, objects=3) + records(3, objects=6, seed=3), tok,
                                SFTDatasetConfig(max_length=None))
    return data


def args(tmp_path, **kw) -> SFTDTConfig:
    base = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], save_strategy="no", bf16=False,
                per_device_train_batch_size=8, max_steps=1, logging_steps=1, seed=0, dataloader_num_workers=0)
    base.update(kw)
    return SFTDTConfig(**base)


def test_pack_layout():
    ids = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    w = [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([4.0, 4.0])]
    out = pack_examples(ids, [x.clone() for x in ids], w, pad_token_id=0, pad_to_multiple_of=4)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert out["cu_seq_lens_q"].tolist() == [0, 3, 5, 8] and out["cu_seq_lens_q"].dtype == torch.int32
    assert out["max_length_q"] == 3
    # each example's first token is never a target (the previous example's last token would predict it)
    assert out["labels"].tolist() == [[-100, 6, 7, -100, 9, -100, -100, -100]]
    assert out["loss_weights"].tolist() == [[0.0, 1.0, 2.0, 0.0, 4.0, 0.0, 0.0, 0.0]]
    assert boundaries_from_position_ids(out["position_ids"]).tolist() == [0, 3, 5, 8]
    assert boundaries_from_position_ids(torch.arange(6)[None]) is None


def _loss_and_grads(trainer, model, batch) -> tuple[float, float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    n = trainer._get_num_items_in_batch([batch], torch.device("cpu"))
    loss = trainer.compute_loss(model, trainer._prepare_inputs(dict(batch)), num_items_in_batch=n)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.item(), n.item(), grads


def _lora(model):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            lora_dropout=0.0))


@pytest.mark.parametrize("case", ["llama", "llama-lora", "llama-lora-checkpointing", "llama-model-sdpa", "bert"])
def test_packed_equals_padded(tmp_path, tok, ds, case):
    """Loss, weight sum and every gradient of a packed batch equal the same 8 examples right-padded (fp32);
    with LoRA, and with reentrant activation checkpointing (the boundaries travel as layer kwargs)."""
    make = tiny_bert_lm if case == "bert" else tiny_llama
    mode = "model" if case == "llama-model-sdpa" else "auto"
    exs = [ds[i] for i in range(8)]
    got = {}
    for pf in (False, True):
        model = make(len(tok), seed=2)
        if case.startswith("llama-lora"):
            model = _lora(model)
        model.eval()  # no dropout: both layouts must see the same function
        if case.endswith("checkpointing"):
            model.enable_input_require_grads()
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            model.train()  # checkpointing only acts in training mode (Llama has no dropout)
        trainer = SFTDTTrainer(model, args(tmp_path / str(pf), padding_free=pf, padding_free_attention=mode),
                               train_dataset=ds, processing_class=tok)
        batch = trainer.data_collator(exs)
        if case.endswith("checkpointing"):
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        if pf:
            assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
            assert batch["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in exs)  # no padding at all
            assert trainer.attention_implementation == ("sdpa" if mode == "model" else SEGMENT_ATTENTION)
        got[pf] = _loss_and_grads(trainer, model, batch)
    (loss_a, n_a, g_a), (loss_b, n_b, g_b) = got[False], got[True]
    assert n_b == n_a > 0
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert g_a.norm() > 0 and ((g_b - g_a).norm() / g_a.norm()).item() <= 1e-5


def test_model_attention_that_ignores_boundaries_is_refused(tmp_path, tok, ds):
    """BERT's own mask is built without position ids: packing through it would leak across examples."""
    with pytest.raises(ValueError, match="does not keep packed examples apart"):
        SFTDTTrainer(tiny_bert_lm(len(tok)), args(tmp_path, padding_free=True, padding_free_attention="model"),
                     train_dataset=ds, processing_class=tok)


def _one_step(tmp_path, tok, ds, name, **kw) -> tuple[float, torch.Tensor, SFTDTTrainer]:
    model = tiny_llama(len(tok), seed=1)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = SFTDTTrainer(model, args(tmp_path / name, optim="sgd", learning_rate=1.0, max_grad_norm=0.0,
                                       weight_decay=0.0, lr_scheduler_type="constant", **kw),
                           train_dataset=ds, processing_class=tok)
    trainer.train()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return trainer.state.log_history[0]["loss"], before - after, trainer


@pytest.mark.parametrize("padding_free", [False, True])
def test_token_budget_with_accumulation_equals_one_batch(tmp_path, tok, ds, padding_free):
    """Token-budget micro-batches + gradient accumulation over the 8 examples == one batch of 8 (fp32)."""
    lengths = [len(x) for x in ds["input_ids"]]
    budget = 3 * max(lengths)  # a few examples per micro-batch
    sampler = TokenBudgetSampler(lengths, budget, padded=not padding_free, seed=0)
    plan = sampler.plan()
    assert len(plan) > 1 and sorted(i for b in plan for i in b) == list(range(8))
    loss_a, upd_a, _ = _one_step(tmp_path, tok, ds, "a", per_device_train_batch_size=8)
    loss_b, upd_b, trainer = _one_step(tmp_path, tok, ds, "b", padding_free=padding_free, max_tokens_per_batch=budget,
                                       gradient_accumulation_steps=len(plan))
    assert isinstance(trainer._get_train_sampler(), TokenBudgetSampler)
    assert trainer.state.global_step == 1
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert ((upd_b - upd_a).norm() / upd_a.norm()).item() <= 1e-5


def test_budget_batches_respect_the_budget():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 1000, (300,), generator=g).tolist() + [5000]  # one longer than the budget
    order = torch.randperm(len(lengths), generator=g).tolist()
    for padded in (False, True):
        batches = budget_batches(lengths, order, 4000, padded=padded, window=64)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each example exactly once
        for b in batches:
            cost = len(b) * max(lengths[i] for i in b) if padded else sum(lengths[i] for i in b)
            assert cost <= 4000 or len(b) == 1
        assert [len(b) for b in batches if 5000 in (lengths[i] for i in b)] == [1]
    # packed batches fill the budget far better than padded ones of the same examples
    packed = budget_batches(lengths, order, 4000, padded=False, window=64)
    assert len(packed) < len(budget_batches(lengths, list(range(len(lengths))), 4000, padded=True, window=1))


def test_token_budget_sampler_ranks_and_epochs():
    lengths = [10 * (1 + i % 7) for i in range(41)]
    ranks = [TokenBudgetSampler(lengths, 100, padded=False, world_size=3, rank=r, seed=5) for r in range(3)]
    shards = [list(s) for s in ranks]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(ranks[0])  # same count on every rank
    seen = sorted(i for s in shards for b in s for i in b)
    assert set(seen) == set(range(41))  # every example, a few repeated to even the ranks out
    plan = ranks[0].plan()
    cost = [sum(lengths[i] for i in b) for b in plan]
    assert cost[0] == max(cost)  # the most expensive micro-batch first
    again = TokenBudgetSampler(lengths, 100, padded=False, world_size=3, rank=0, seed=5)
    assert list(again) == shards[0]  # deterministic per (seed, epoch)
    again.set_epoch(1)
    assert list(again) != shards[0]


def test_prefix_lm_reads_each_prompt_both_ways(tmp_path, tok, ds):
    """prefix_lm: in a packed batch each example's first completion token is predicted from its prompt read
    bidirectionally (as the prompt alone through dtwinseg.prefix_lm.bidirectional), never from its own
    completion; the model's config records it; without padding_free it is refused."""
    from dtwinseg.prefix_lm import bidirectional, is_prefix_lm, prefix_lengths

    model = tiny_bert_lm(len(tok), seed=3)
    with torch.no_grad():  # large enough weights that causal and bidirectional reads differ clearly
        for p in model.parameters():
            p.mul_(20.0) if p.dim() > 1 else None
    model.eval()
    trainer = SFTDTTrainer(model, args(tmp_path, padding_free=True, prefix_lm=True), train_dataset=ds,
                           processing_class=tok)
    assert is_prefix_lm(model) and model.config.is_decoder  # marked; the causal default is unchanged
    exs = [ds[i] for i in range(3)]
    batch = trainer._prepare_inputs(dict(trainer.data_collator(exs)))
    prefixes = prefix_lengths(batch["labels"], batch["cu_seq_lens_q"])
    assert prefixes == [next(k for k, v in enumerate(e["labels"]) if v != -100) for e in exs]
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weights")}
        packed = model(**inputs, prefix_lens=prefixes, use_cache=False).logits[0]
        plain = model(**inputs, use_cache=False).logits[0]
        start = 0
        for e, p in zip(exs, prefixes, strict=True):
            prompt = torch.tensor(e["input_ids"][:p])[None]
            with bidirectional(model):
                alone = model(input_ids=prompt).logits[0, -1]
            causal = model(input_ids=prompt).logits[0, -1]
            assert torch.allclose(packed[start + p - 1], alone, atol=1e-4)
            assert not torch.allclose(alone, causal, atol=1e-2)  # the prefix read is not the causal one
            assert torch.allclose(plain[start + p - 1], causal, atol=1e-4)  # no prefix_lens: causal as before
            start += len(e["input_ids"])
    loss = trainer.compute_loss(model, dict(batch))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="padding_free"):
        SFTDTTrainer(tiny_bert_lm(len(tok)), args(tmp_path / "b", prefix_lm=True), train_dataset=ds,
                     processing_class=tok)
