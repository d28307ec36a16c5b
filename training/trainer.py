"""SFTDTConfig / SFTDTTrainer: TRL's SFTTrainer with the per-token weighted loss of paper eq. 10.

    L = - sum_t w_t log P(y_t | JSON(D), x_txt, y_<t) / sum_t w_t

The sum runs over every token of the optimizer step: all gradient-accumulation micro-batches and all
ranks, so the loss (and its gradient) does not depend on how a global batch is split. With all weights 1
it is exactly TRL's own token-averaged SFT loss.

What is overridden, and why:
- the collator pads ``loss_weights`` (fp32) next to input_ids / labels (TRL's drops unknown columns);
- ``_prepare_inputs`` keeps the weights fp32 (under DeepSpeed, Trainer casts float inputs to bf16);
- ``_get_num_items_in_batch`` returns the weight sum of the step (gathered over ranks) instead of the
  label count, and ``loss_is_scaled_for_ga = True`` tells Trainer not to divide by the accumulation steps;
- ``compute_loss`` takes per-token log-probs from TRL's fused LM head (no B x S x V logits). Models whose
  output embedding is not fed directly by the backbone's last hidden state (e.g. ``BertLMHeadModel``,
  which applies a transform first) use a chunked fallback: the output embedding is bypassed for one
  forward to get its input, then TRL's chunked log-prob kernel projects it, vocabulary tile by tile.

Throughput options (training/packing.py): ``padding_free`` packs each micro-batch into one row with
per-example position ids and boundaries (attention kept per example, no compute on padding; loss and
gradients equal the padded batch's), ``max_tokens_per_batch`` forms micro-batches by a token budget.
``prefix_lm`` (padding-free rows only, dtwinseg/prefix_lm.py): each example's prompt attends both ways.

Stopping: on SIGTERM (what a cluster scheduler sends before it kills a job) or SIGINT, :class:`GracefulStop`
lets the current optimizer step finish, saves a normal Trainer checkpoint at that step (model, optimizer,
scheduler, RNG states, trainer state: the data position) even under ``save_strategy: "no"``, and stops;
``train()`` then raises :class:`TrainingStopped`, whose message says how to resume. The ranks all-reduce
the stop flag at every step end, so a signal reaching any one rank stops every rank at the same step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from dtwinseg.training.packing import (
    SEGMENT_ATTENTION,
    VARLEN_ATTENTION,
    TokenBudgetSampler,
    check_packed_attention,
    pack_examples,
    use_packed_attention,
)
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from dtwinseg.formats.base import DEFAULT_LOSS_WEIGHTS, LossWeights
from dtwinseg.prefix_lm import mark_prefix_lm, prefix_lengths


@dataclass
class SFTDTConfig(SFTConfig):
    """SFTConfig plus the SFTDT loss knobs. Defaults set what a pre-tokenised weighted dataset needs:
    ``remove_unused_columns=False`` and ``dataset_kwargs={"skip_prepare_dataset": True}``.

    DeepSpeed on several GPU-less ranks (``torchrun``, ``DS_ACCELERATOR=cpu``, no ``use_cpu``) is made to
    work by initialising accelerate's state over gloo first (training/cpu_deepspeed.py).
    """

    use_token_kinds: bool = field(default=False, metadata={"help": (
        "Rebuild loss_weights from the dataset's token_kinds column with w_completion / w_decision / "
        "w_answer below (prompt tokens always 0), e.g. for an unweighted ablation (w_decision=w_answer=1) "
        "without re-tokenising. False: use the dataset's loss_weights as build-sft wrote them.")})
    w_completion: float = field(default=DEFAULT_LOSS_WEIGHTS.completion,
                                metadata={"help": "Weight of ordinary completion tokens."})
    w_decision: float = field(default=DEFAULT_LOSS_WEIGHTS.decision,
                              metadata={"help": "Weight of decision tokens (ids, verdicts)."})
    w_answer: float = field(default=DEFAULT_LOSS_WEIGHTS.answer, metadata={"help": "Weight of the final-answer tokens."})
    fused_lm_head: bool | None = field(default=None, metadata={"help": (
        "Use TRL's fused LM head for the log-probs. None: when the output embedding is a direct child of the "
        "model (Llama, Qwen, Mistral, ...); else the chunked fallback.")})
    logprob_chunk_size: int = field(default=8192, metadata={"help": (
        "Vocabulary tile of the chunked fallback (the fused path uses TRL's own).")})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep loss_weights in the batches."})
    padding_free: bool = field(default=False, metadata={"help": (
        "Padding-free micro-batches: the examples of a micro-batch are concatenated into one row (position ids "
        "restart per example, cu_seq_lens mark the boundaries) and attention never crosses an example "
        "(training/packing.py); same loss and gradients as padding, no compute on pad tokens. Unlike TRL's "
        "padding_free it keeps the per-token weights.")})
    prefix_lm: bool = field(default=False, metadata={"help": (
        "Prefix-LM attention (dtwinseg/prefix_lm.py): each example's prompt tokens attend to each other both "
        "ways, its completion causally; for bases pretrained bidirectionally (BERT, MiniLM). Needs "
        "padding_free; the checkpoint's config records it, and verdict decoding then reads prompts "
        "bidirectionally.")})
    padding_free_attention: str = field(default="auto", metadata={"help": (
        "Attention for padding_free batches: auto (keep flash_attention_* / flex_attention, else segments), "
        "segments (causal SDPA per example, CPU and GPU), varlen (torch's varlen flash kernel on CUDA in "
        "bf16/fp16, segments elsewhere), model (the model's own; sdpa/eager then build an L x L mask).")})
    max_tokens_per_batch: int | None = field(default=None, metadata={"help": (
        "Token budget of a micro-batch (None: per_device_train_batch_size examples). Examples are grouped by "
        "length and a batch holds as many as fit: sum of lengths with padding_free, count x longest without. "
        "per_device_train_batch_size is then unused; an example longer than the budget trains alone.")})

    def __post_init__(self) -> None:
        if self.max_tokens_per_batch is not None and int(self.max_tokens_per_batch) < 1:
            raise ValueError(f"max_tokens_per_batch must be >= 1 or null, got {self.max_tokens_per_batch}")
        kwargs = dict(self.dataset_kwargs or {})
        kwargs.setdefault("skip_prepare_dataset", True)
        self.dataset_kwargs = kwargs
        from dtwinseg.training.cpu_deepspeed import configure_cpu_deepspeed_state, cpu_deepspeed_requested

        if cpu_deepspeed_requested(self.deepspeed):  # GPU-less DeepSpeed ranks: see training/cpu_deepspeed.py
            self.accelerator_config = configure_cpu_deepspeed_state(self.accelerator_config, self.use_cpu)
        super().__post_init__()

    @property
    def kind_weights(self) -> list[float]:
        """Weights of token kinds [prompt, completion, decision, answer] (prompt always 0; dtwinseg.formats.LossWeights)."""
        return LossWeights(0.0, self.w_completion, self.w_decision, self.w_answer).by_kind()


class WeightedCollator:
    """Right-pads input_ids (pad id), labels (-100), loss_weights (0.0, float32) and builds attention_mask;
    with ``padding_free`` it packs the examples into one row instead (training/packing.py).

    Examples are dicts with ``input_ids``, ``labels`` and ``loss_weights`` (or ``token_kinds`` when
    ``kind_weights`` is given). Padded tensors are B x S (S = longest, rounded up to ``pad_to_multiple_of``);
    packed ones 1 x L (L = total length, rounded up likewise) plus position_ids and cu_seq_lens.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None,
                 kind_weights: Sequence[float] | None = None, padding_free: bool = False):
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.kind_weights = None if kind_weights is None else torch.tensor(kind_weights, dtype=torch.float32)
        self.padding_free = padding_free

    def _weights(self, ex: dict) -> torch.Tensor:
        if self.kind_weights is not None:
            if "token_kinds" not in ex:
                raise KeyError("use_token_kinds needs a 'token_kinds' column (build the dataset with build-sft)")
            w = self.kind_weights[torch.as_tensor(ex["token_kinds"], dtype=torch.long)]
        else:
            w = torch.as_tensor(ex["loss_weights"], dtype=torch.float32)
        labels = torch.as_tensor(ex["labels"])
        return torch.where(labels == -100, torch.zeros_like(w), w)

    def _columns(self, examples: list[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        ids, labels, weights = [], [], []
        for k, ex in enumerate(examples):
            if len(ex["labels"]) != len(ex["input_ids"]):
                raise ValueError(f"example {ex.get('id', k)}: input_ids and labels differ in length")
            ids.append(torch.as_tensor(ex["input_ids"], dtype=torch.long))
            labels.append(torch.as_tensor(ex["labels"], dtype=torch.long))
            weights.append(self._weights(ex))
        return ids, labels, weights

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        ids, labels, weights = self._columns(examples)
        if self.padding_free:
            return pack_examples(ids, labels, weights, self.pad_token_id, self.pad_to_multiple_of)
        n = max(len(x) for x in ids)
        if self.pad_to_multiple_of:
            n = -(-n // self.pad_to_multiple_of) * self.pad_to_multiple_of
        b = len(examples)
        out_ids = torch.full((b, n), self.pad_token_id, dtype=torch.long)
        out_labels = torch.full((b, n), -100, dtype=torch.long)
        out_weights = torch.zeros((b, n), dtype=torch.float32)
        attention = torch.zeros((b, n), dtype=torch.long)
        for k, (x, y, w) in enumerate(zip(ids, labels, weights, strict=True)):
            m = len(x)
            out_ids[k, :m], out_labels[k, :m], out_weights[k, :m], attention[k, :m] = x, y, w, 1
        return {"input_ids": out_ids, "attention_mask": attention, "labels": out_labels, "loss_weights": out_weights}


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / DeepSpeed / PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def fused_head_supported(model: torch.nn.Module) -> bool:
    """True when the output embedding is a direct child of the model (so it sees the backbone's output)."""
    base = _unwrapped(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return head is not None and any(child is head for child in base.children())


def _has_unpartitioned_zero3_head(model: torch.nn.Module) -> bool:
    """True under ZeRO-3 when the output embedding was left unpartitioned (TRL's fused head then fails
    reading ``ds_status``; the chunked path reads the full weight directly)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return False
    head = _unwrapped(model).get_output_embeddings()
    return head is not None and not hasattr(head.weight, "ds_status")


def _gathered(*params: torch.nn.Parameter | None) -> Any:
    """All-gather ZeRO-3 partitioned parameters for a direct read; a no-op for ordinary parameters."""
    import contextlib

    parts = [p for p in params if p is not None and hasattr(p, "ds_status")]
    if not parts:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(parts, modifier_rank=None)


@contextlib.contextmanager
def _cpu_bf16_attention(args: Any) -> Any:
    """bf16 autocast on a CPU: scaled-dot-product attention runs the math kernel, not the CPU flash kernel,
    whose bf16 backward takes longer than the rest of a MiniLM step (measured: 0.58 s per step of 32 x 54
    tokens with the math kernel, 0.99 s with flash, 1.09 s in fp32; one thread). Elsewhere: unchanged."""
    if not (getattr(args, "bf16", False) and getattr(args, "device", None) is not None and args.device.type == "cpu"):
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(RuntimeError):
    """Training stopped on a signal after saving a resumable checkpoint. ``exit_code`` is 128 + the signal
    number (143 for SIGTERM, 130 for SIGINT), what a shell reports for a process the signal ended."""

    def __init__(self, signum: int, step: int, max_steps: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"training stopped by {name} after step {step} of {max_steps}; its checkpoint is "
                         f"{checkpoint}: run the same command again to resume from it (`dtwinseg train "
                         "--restart` starts over)")


class GracefulStop(TrainerCallback):
    """Stop at the next optimizer step boundary after SIGTERM / SIGINT, saving a checkpoint there.

    The handlers are installed for the duration of ``train()`` (main thread only) and only set a flag; at
    every step end the flag is all-reduced (max) over the ranks, so they agree on the step, and then
    ``should_save`` + ``should_training_stop`` make the Trainer save ``checkpoint-<step>`` and leave its
    loop. A second SIGINT at least ``escalate_after_s`` after the first stops at once (KeyboardInterrupt);
    repeated SIGTERMs (a scheduler signalling every process of a job, and a launcher forwarding it) do not.
    """

    def __init__(self, escalate_after_s: float = 2.0):
        self.signum: int | None = None
        self.stopped_signal: int | None = None
        self.stopped_at: int | None = None
        self.escalate_after_s = escalate_after_s
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    # --- handlers -------------------------------------------------------------------------------
    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.signum is not None:
            if signum == signal.SIGINT and now - self._first >= self.escalate_after_s:
                self.uninstall()
                raise KeyboardInterrupt
            return
        self.signum, self._first = signum, now
        if int(os.environ.get("RANK", "0") or 0) == 0:
            print(f"{signal.Signals(signum).name} received: saving a checkpoint at the end of this step, then "
                  "stopping" + (" (Ctrl-C again to stop at once, unsaved)" if signum == signal.SIGINT else ""),
                  file=sys.stderr, flush=True)

    # --- callback -------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.install()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        signum = self._agreed(self.signum or 0, args)
        if signum:
            if args.process_index == 0 and self.signum is None:  # another rank got it: say so here too
                print(f"{signal.Signals(signum).name} received by another rank: saving a checkpoint at step "
                      f"{state.global_step}, then stopping", file=sys.stderr, flush=True)
            control.should_save = True
            control.should_training_stop = True
            self.stopped_signal, self.stopped_at = signum, state.global_step

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.uninstall()

    @staticmethod
    def _agreed(signum: int, args: Any) -> int:
        """The largest signal number any rank received (0: none); this rank's own outside a process group."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return signum
        device = args.device if dist.get_backend() == "nccl" else torch.device("cpu")
        flag = torch.tensor([signum], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


class SFTDTTrainer(SFTTrainer):
    """SFTTrainer with the weighted SFTDT loss. Takes SFTTrainer's arguments; the training dataset has
    ``input_ids``, ``labels``, ``loss_weights`` (and optionally ``token_kinds``, ``id``) columns.
    """

    def __init__(self, model: Any, args: SFTDTConfig | None = None, data_collator: Any = None,
                 *pos: Any, processing_class: Any = None, **kwargs: Any):
        if args is None:
            args = SFTDTConfig(output_dir="sftdt-output")
        if not isinstance(args, SFTDTConfig):
            raise TypeError(f"SFTDTTrainer needs an SFTDTConfig, got {type(args).__name__}")
        if data_collator is None:
            tok = getattr(processing_class, "tokenizer", processing_class)
            pad = getattr(tok, "pad_token_id", None)
            if pad is None:
                pad = getattr(tok, "eos_token_id", None)
            if pad is None and not isinstance(model, str):
                pad = getattr(model.config, "pad_token_id", None)
            data_collator = WeightedCollator(pad if pad is not None else 0, args.pad_to_multiple_of,
                                             args.kind_weights if args.use_token_kinds else None,
                                             padding_free=args.padding_free)
        padding_free, args.padding_free = args.padding_free, False  # TRL refuses a custom collator with it
        try:
            super().__init__(model, args, data_collator, *pos, processing_class=processing_class, **kwargs)
        finally:
            args.padding_free = padding_free
        self.padding_free = padding_free
        self.attention_implementation = None
        if args.prefix_lm and not padding_free:
            raise ValueError("prefix_lm needs padding_free: true (the packed attention applies the prefix mask)")
        if padding_free:
            self.attention_implementation = use_packed_attention(self.model, args.padding_free_attention)
            self._check_packing(processing_class)
        if args.prefix_lm:
            if self.attention_implementation not in (SEGMENT_ATTENTION, VARLEN_ATTENTION):
                raise ValueError(f"prefix_lm needs dtwinseg's packed attention, the model uses "
                                 f"{self.attention_implementation!r} (padding_free_attention: segments)")
            mark_prefix_lm(_unwrapped(self.model))
        self.graceful_stop = GracefulStop()
        self.add_callback(self.graceful_stop)
        self.loss_is_scaled_for_ga = True  # normalised by the step's total weight already
        self.model_accepts_loss_kwargs = False
        self._use_fused = fused_head_supported(self.model) if args.fused_lm_head is None else args.fused_lm_head

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        with _cpu_bf16_attention(self.args):
            return super().training_step(*args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer.train; raises :class:`TrainingStopped` when a signal stopped it (after its checkpoint)."""
        stop = self.graceful_stop
        stop.signum = stop.stopped_at = stop.stopped_signal = None
        result = super().train(*args, **kwargs)
        if stop.stopped_at is not None and stop.stopped_signal:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{stop.stopped_at}")
            raise TrainingStopped(stop.stopped_signal, stop.stopped_at, self.state.max_steps, folder)
        return result

    def _check_packing(self, processing_class: Any) -> None:
        """Refuse padding_free for a model whose attention ignores packed boundaries (probe: check_packed_attention).
        Skipped under ZeRO-3, where parameters are partitioned until the engine wraps the model."""
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():
            return
        vocab = getattr(_unwrapped(self.model).config, "vocab_size", None) or len(processing_class)
        check_packed_attention(self.model, int(vocab))

    # --- batches ----------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Token-budget micro-batches when ``max_tokens_per_batch`` is set; TRL's / Trainer's sampler otherwise."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.max_tokens_per_batch is None or dataset is None or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        if hasattr(dataset, "column_names") and "input_ids" in dataset.column_names:
            lengths = [len(x) for x in dataset["input_ids"]]
        else:
            lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
        world = max(1, self.args.world_size)
        return TokenBudgetSampler(lengths, self.args.max_tokens_per_batch, padded=not self.args.padding_free,
                                  world_size=world, rank=self.args.process_index if world > 1 else 0,
                                  seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed)

    # --- inputs -----------------------------------------------------------------------------------
    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        weights = inputs.pop("loss_weights", None)
        inputs = super()._prepare_inputs(inputs)
        if weights is not None:  # never cast to the DeepSpeed compute dtype
            inputs["loss_weights"] = weights.to(device=self.args.device, dtype=torch.float32)
        return inputs

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Sum of the loss weights of the whole optimizer step (micro-batches, and ranks when averaging)."""
        if not batch_samples or "loss_weights" not in batch_samples[0]:
            return None
        total = sum(b["loss_weights"][:, 1:].to(torch.float32).sum() for b in batch_samples)
        total = torch.as_tensor(total, dtype=torch.float32, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    # --- loss -------------------------------------------------------------------------------------
    def _chunked_log_probs(self, model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """(log_probs, is_top1, mask), each B x (S-1), without B x S x V logits (fallback path)."""
        from trl.kernels import ChunkedLogProbFunction

        head = _unwrapped(model).get_output_embeddings()
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        head.forward = lambda hidden: hidden  # the model now returns the head's input as "logits"
        try:
            hidden = model(**model_inputs).logits
        finally:
            del head.forward
        hidden, shifted = hidden[:, :-1], labels[:, 1:]
        mask = shifted != -100
        with _gathered(head.weight, head.bias):
            log_probs, _, _, _, is_top1 = ChunkedLogProbFunction.apply(
                hidden[mask], head.weight, head.bias, shifted[mask], 1.0, self.args.logprob_chunk_size,
                None, 1.0, ("log_probs", "is_top1"))
        full = log_probs.new_zeros(mask.shape).masked_scatter(mask, log_probs)
        top1 = is_top1.new_zeros(mask.shape).masked_scatter(mask, is_top1)
        return full, top1, mask

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | None = None) -> Any:
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        weights = inputs.pop("loss_weights", None)
        if weights is None:
            raise KeyError("batch has no 'loss_weights': use the SFTDT dataset (build-sft) and its collator")
        inputs["use_cache"] = False
        if self.args.prefix_lm:
            if inputs.get("cu_seq_lens_q") is None:
                raise ValueError("prefix_lm: the batch is not a packed row (padding_free collator)")
            inputs["prefix_lens"] = prefix_lengths(inputs["labels"], inputs["cu_seq_lens_q"])
        if self._use_fused and not _has_unpartitioned_zero3_head(model):
            outputs = model(**inputs, fused_lm_head=True)
            log_probs, is_top1, mask = outputs.log_probs, outputs.is_top1, outputs.label_mask
        else:
            log_probs, is_top1, mask = self._chunked_log_probs(model, inputs)
            outputs = None
        w = weights[:, 1:].to(torch.float32) * mask
        total = w.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch)
        loss = -(log_probs.to(torch.float32) * w).sum() / total.to(torch.float32).clamp(min=1e-8)
        if (num_items_in_batch is not None and self.args.average_tokens_across_devices
                and self.args.world_size > 1):
            loss = loss * self.accelerator.num_processes  # DDP / ZeRO average the gradients over ranks
        self._log_token_metrics(mode, is_top1, mask, w, inputs)
        if return_outputs:
            return loss, outputs
        return loss

    @staticmethod
    def _packed_tokens(inputs: dict[str, Any]) -> torch.Tensor:
        """Tokens of a packed row (a pad_to_multiple_of tail included, as TRL counts padding-free rows)."""
        n = inputs["input_ids"].numel()
        return torch.as_tensor(n, device=inputs["input_ids"].device)

    def _log_token_metrics(self, mode: str, is_top1: torch.Tensor | None, mask: torch.Tensor, w: torch.Tensor,
                           inputs: dict[str, Any]) -> None:
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(mask.sum().detach().reshape(1)).sum()
        if is_top1 is not None:
            correct = gather((is_top1.detach().float() * mask).sum().reshape(1)).sum()
            self._metrics[mode]["mean_token_accuracy"].append((correct / num_valid).item() if num_valid > 0 else 0.0)
            heavy = w > 1.0  # decision and answer tokens
            n_heavy = gather(heavy.sum().reshape(1)).sum()
            c_heavy = gather((is_top1.detach().float() * heavy).sum().reshape(1)).sum()
            self._metrics[mode]["weighted_token_accuracy"].append((c_heavy / n_heavy).item() if n_heavy > 0 else 0.0)
        if mode == "train":
            real = inputs["attention_mask"].sum() if "attention_mask" in inputs else self._packed_tokens(inputs)
            self._total_train_tokens += int(gather(real.reshape(1)).sum().item())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
