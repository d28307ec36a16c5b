"""Padding-free SFTDT batches: the packed layout, the attention that keeps its examples apart, token budgets.

A packed batch is one row: the examples of a micro-batch concatenated, no padding. ``position_ids``
restart at 0 for every example (so RoPE sees each example as it would alone) and ``cu_seq_lens_q/_k``
(int32, length n+1) mark the boundaries for varlen kernels. The first label and weight of every example
are cleared: in the shifted loss the previous example's last token would otherwise predict it. So the
weighted loss, its weight sum and its gradient equal those of the same examples right-padded.

Attention must not cross a boundary. :data:`SEGMENT_ATTENTION` (registered with transformers'
``AttentionInterface``) runs causal SDPA once per example on CPU and GPU, or torch's varlen flash kernel
(``torch.nn.attention.varlen``, CUDA, half precision) when asked for, and is plain SDPA for unpacked
inputs (evaluation, generation). Its mask hook builds no mask for packed rows, so no L x L block-diagonal
mask is ever materialised (transformers' own sdpa / eager path does build one from the position ids).
``flash_attention_*`` and ``flex_attention`` honour the same inputs and are kept when the model uses them.

:class:`TokenBudgetSampler` forms micro-batches by a token budget (lengths grouped within shuffled
windows), rank-aware like transformers' ``BatchRebalanceSampler`` so every rank gets the same count.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers.trainer_pt_utils import BatchRebalanceSampler

from dtwinseg.base_models import model_configs

SEGMENT_ATTENTION = "sftdt_segments"
VARLEN_ATTENTION = "sftdt_varlen"
KEPT_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention")
LOG = logging.getLogger(__name__)


# --- layout ---------------------------------------------------------------------------------------------
def pack_examples(input_ids: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                  pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """One 1 x L row holding every example; see the module doc. A pad tail (``pad_to_multiple_of``) is a last
    segment of its own with labels -100 and weights 0."""
    lengths = [int(x.numel()) for x in input_ids]
    total = sum(lengths)
    tail = (-total) % pad_to_multiple_of if pad_to_multiple_of else 0
    segments = lengths + ([tail] if tail else [])
    ids = torch.cat([*(x.long() for x in input_ids), torch.full((tail,), pad_token_id, dtype=torch.long)])
    lab = torch.cat([*(x.long() for x in labels), torch.full((tail,), -100, dtype=torch.long)])
    w = torch.cat([*(x.float() for x in weights), torch.zeros(tail, dtype=torch.float32)])
    seg = torch.tensor(segments, dtype=torch.int32)
    cu = torch.zeros(len(segments) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(seg, 0)
    starts = cu[:-1].long()
    lab[starts] = -100  # never predicted across a boundary (the padded layout drops them by the shift too)
    w[starts] = 0.0
    position_ids = torch.arange(total + tail) - torch.repeat_interleave(starts, seg.long())
    longest = int(seg.max()) if len(segments) else 0
    return {"input_ids": ids[None], "labels": lab[None], "loss_weights": w[None], "position_ids": position_ids[None],
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def boundaries_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """cu_seq_lens of a single packed row from its restarting position ids; None unless it starts at 0 and
    restarts at least once."""
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos == 0).flatten()
    if starts.numel() < 2 or int(starts[0]) != 0:
        return None
    return torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)


# --- attention ------------------------------------------------------------------------------------------
def _sdpa() -> Callable:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def _prefix_mask(n: int, prefix: int, device: torch.device) -> torch.Tensor:
    """n x n attention mask of a prefix-LM example: causal, and the first ``prefix`` tokens see each other."""
    mask = torch.ones(n, n, dtype=torch.bool, device=device).tril_()
    mask[:prefix, :prefix] = True
    return mask


def _segment_loop(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  cu: list[int], dropout: float, scaling: float | None,
                  prefixes: Sequence[int] | None = None) -> torch.Tensor:
    """Causal SDPA per example of a packed row: (1, H, L, D) -> (1, L, H, D). With ``prefixes`` (prefix-LM,
    dtwinseg/prefix_lm.py) the first prefixes[i] tokens of example i attend to each other both ways."""
    groups = int(getattr(module, "num_key_value_groups", 1))
    sizes = [e - s for s, e in zip(cu[:-1], cu[1:], strict=True)]
    if sum(sizes) != query.shape[2]:
        raise ValueError(f"packed boundaries cover {sum(sizes)} tokens, the row has {query.shape[2]}")
    # One split per tensor (its backward is one concatenation); slicing each example out instead costs a
    # full-row zero-fill and add per example in the backward pass (quadratic in the examples per row).
    if prefixes is not None and len(prefixes) != len(sizes):
        raise ValueError(f"{len(prefixes)} prefix lengths for {len(sizes)} packed examples")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    outs = []
    for i, (q, k, v, n) in enumerate(zip(query.split(sizes, dim=2), key.split(sizes, dim=2),
                                         value.split(sizes, dim=2), sizes, strict=True)):
        if n == 0:
            continue
        p = int(prefixes[i]) if prefixes is not None else 0
        if p > 1:
            outs.append(sdpa(q, k, v, attn_mask=_prefix_mask(n, p, q.device), dropout_p=dropout, scale=scaling,
                             enable_gqa=groups > 1))
        else:
            outs.append(sdpa(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=groups > 1))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


_VARLEN_FAILED: list[str] = []
CALLS = {"packed": 0, "plain": 0}
"""How often our attention saw a packed row / an ordinary batch (read by :func:`check_packed_attention`)."""


def _varlen(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            cu: torch.Tensor, longest: int, scaling: float | None) -> torch.Tensor | None:
    """torch's varlen flash attention on a packed row (CUDA, fp16/bf16), or None where it is unavailable."""
    if _VARLEN_FAILED or not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16):
        return None
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        _VARLEN_FAILED.append("torch.nn.attention.varlen is missing")
        return None
    params = inspect.signature(varlen_attn).parameters
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (L, H, D)
    groups = int(getattr(module, "num_key_value_groups", 1))
    kw: dict[str, Any] = {"scale": scaling}
    if groups > 1 and "enable_gqa" in params:
        kw["enable_gqa"] = True
    elif groups > 1:
        k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
    if "window_size" in params:
        kw["window_size"] = (-1, 0)
    else:
        kw["is_causal"] = True
    cu = cu.to(device=query.device, dtype=torch.int32)
    try:
        out = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, longest, longest, **kw)
    except (RuntimeError, TypeError, ValueError) as exc:  # kernel missing for this GPU / dtype / version
        _VARLEN_FAILED.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        LOG.warning("varlen attention unavailable (%s); using per-example SDPA", _VARLEN_FAILED[0])
        return None
    return out[None]  # (1, L, H, D)


def _packed_boundaries(query: torch.Tensor, key: torch.Tensor, attention_mask: Any,
                       kwargs: dict[str, Any]) -> torch.Tensor | None:
    if attention_mask is not None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return None
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None and kwargs.get("position_ids") is not None:
        cu = boundaries_from_position_ids(kwargs["position_ids"])
    return cu


def _make_attention(prefer_varlen: bool) -> Callable:
    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                  **kwargs: Any) -> tuple[torch.Tensor, None]:
        cu = _packed_boundaries(query, key, attention_mask, kwargs)
        CALLS["packed" if cu is not None else "plain"] += 1
        if cu is None:  # an ordinary (padded or single) batch
            return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        prefixes = kwargs.get("prefix_lens")
        if prefer_varlen and dropout == 0.0 and prefixes is None:
            longest = kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max())
            out = _varlen(module, query, key, value, cu, int(longest), scaling)
            if out is not None:
                return out, None
        return _segment_loop(module, query, key, value, [int(x) for x in cu.tolist()], dropout, scaling,
                             prefixes), None

    return attention


def _mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask for an unpadded row (the attention applies causality per example); SDPA's otherwise."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register_attention() -> None:
    """Register :data:`SEGMENT_ATTENTION` and :data:`VARLEN_ATTENTION` with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SEGMENT_ATTENTION, _make_attention(prefer_varlen=False))
    AttentionInterface.register(VARLEN_ATTENTION, _make_attention(prefer_varlen=True))
    AttentionMaskInterface.register(SEGMENT_ATTENTION, _mask)
    AttentionMaskInterface.register(VARLEN_ATTENTION, _mask)


def use_packed_attention(model: torch.nn.Module, mode: str = "auto") -> str:
    """Make the model's attention respect packed boundaries; returns the implementation in use.

    mode "auto": keep flash_attention_* / flex_attention (they read position_ids / cu_seq_lens), else
    :data:`SEGMENT_ATTENTION`; "segments" / "varlen": ours; "model": keep whatever the model has (sdpa and
    eager then build an L x L block-diagonal mask from the position ids: exact, slower for long rows).
    """
    if mode not in ("auto", "segments", "varlen", "model"):
        raise ValueError(f"padding_free_attention must be auto, segments, varlen or model, got {mode!r}")
    configs = model_configs(model)
    if not configs:
        raise ValueError("padding_free needs a transformers model (no config with an attention implementation)")
    current = configs[0]._attn_implementation
    if not all(getattr(type(m), "_supports_attention_backend", True) for m in model.modules()
               if hasattr(type(m), "_supports_attention_backend")):
        raise ValueError(f"padding_free: {type(model).__name__} has no pluggable attention; set padding_free: false")
    if mode == "model" or (mode == "auto" and current in KEPT_IMPLEMENTATIONS):
        return str(current)
    register_attention()
    name = VARLEN_ATTENTION if mode == "varlen" else SEGMENT_ATTENTION
    for cfg in configs:
        cfg._attn_implementation = name
    return name


def check_packed_attention(model: torch.nn.Module, vocab_size: int) -> float | None:
    """Probe that a packed row gives each example what it gets alone; raises ValueError otherwise.

    Two random sequences (24 and 4 tokens: the short one would mostly attend to the long one if boundaries
    leaked) run alone and packed, in eval mode without gradients. With our attention every attention call
    of the packed forward must have seen the boundaries; in fp32 the short one's logits must also match
    (relative difference <= 1e-4, returned; None in half precision, where rounding hides small leaks).
    """
    param = next(model.parameters())
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, max(4, vocab_size), (n,), generator=g) for n in (24, 4)]
    packed = pack_examples(seqs, seqs, [torch.ones(len(x)) for x in seqs], 0)
    inputs = {k: v.to(param.device) if torch.is_tensor(v) else v for k, v in packed.items()
              if k not in ("labels", "loss_weights")}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=seqs[1][None].to(param.device), use_cache=False).logits[0]
            before = dict(CALLS)
            both = model(**inputs, use_cache=False).logits[0, 24:]
            seen = {k: CALLS[k] - before[k] for k in CALLS}
    finally:
        model.train(was_training)
    name = type(model).__name__
    ours = model_configs(model)[0]._attn_implementation in (SEGMENT_ATTENTION, VARLEN_ATTENTION)
    if ours and (seen["plain"] or not seen["packed"]):
        raise ValueError(f"padding_free: {name} does not pass the packed boundaries to every attention layer "
                         f"({seen['plain']} of {seen['plain'] + seen['packed']} calls without): set padding_free: false")
    if param.dtype != torch.float32:
        return None
    rel = float((both - alone).norm() / alone.norm().clamp(min=1e-12))
    if not rel <= 1e-4:
        raise ValueError(f"padding_free: {name} does not keep packed examples apart (relative logit difference "
                         f"{rel:.2g} > 1e-4): set padding_free: false or padding_free_attention: segments")
    return rel


# --- token-budget batches -------------------------------------------------------------------------------
def budget_batches(lengths: Sequence[int], order: Sequence[int], max_tokens: int, padded: bool,
                   window: int = 256) -> list[list[int]]:
    """Micro-batches of ``order`` under a token budget: within windows of ``window`` examples, longest first,
    each batch is filled while ``sum(lengths)`` (packed) or ``count * longest`` (padded) stays within
    ``max_tokens``. An example longer than the budget is a batch of its own (never split)."""
    batches: list[list[int]] = []
    for w0 in range(0, len(order), window):
        chunk = sorted(order[w0:w0 + window], key=lambda i: -lengths[i])
        cur: list[int] = []
        cost = 0
        for i in chunk:  # longest first: in padded mode cur[0] sets the width
            n = int(lengths[i])
            new = (len(cur) + 1) * (lengths[cur[0]] if cur else n) if padded else cost + n
            if cur and new > max_tokens:
                batches.append(cur)
                cur, new = [], n
            cur.append(i)
            cost = new
        if cur:
            batches.append(cur)
    return batches


class TokenBudgetSampler(BatchRebalanceSampler):
    """Batch sampler of token-budget micro-batches (see :func:`budget_batches`), rank-aware.

    Every rank computes the same epoch plan from ``seed + epoch``; the batches are dealt round-robin and the
    plan is topped up by repeating its first batches so all ranks get the same count (DistributedSampler
    style). The most expensive batch comes first, so an out-of-memory shows up at step one.
    Subclassing BatchRebalanceSampler makes transformers' Trainer pass it as ``batch_sampler`` and skip
    accelerate's re-sharding.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, padded: bool, *, world_size: int = 1,
                 rank: int = 0, shuffle: bool = True, seed: int = 42, window: int = 256):
        if max_tokens < 1:
            raise ValueError(f"max_tokens_per_batch must be >= 1, got {max_tokens}")
        self.lengths = [int(x) for x in lengths]
        self.max_tokens, self.padded, self.window = int(max_tokens), padded, int(window)
        self.world_size, self.rank = max(1, int(world_size)), int(rank)
        self.shuffle, self.seed, self.epoch = shuffle, int(seed), 0
        self._plan: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self) -> list[list[int]]:
        """All ranks' micro-batches of this epoch, before dealing (cached per epoch)."""
        if self._plan is None or self._plan[0] != self.epoch:
            self._plan = (self.epoch, self._make_plan())
        return self._plan[1]

    def _make_plan(self) -> list[list[int]]:
        n = len(self.lengths)
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        batches = budget_batches(self.lengths, order, self.max_tokens, self.padded, self.window)
        if self.shuffle and len(batches) > 1:
            cost = [sum(self.lengths[i] for i in b) if not self.padded else len(b) * max(self.lengths[i] for i in b)
                    for b in batches]
            first = max(range(len(batches)), key=cost.__getitem__)
            rest = [b for k, b in enumerate(batches) if k != first]
            perm = torch.randperm(len(rest), generator=g).tolist()
            batches = [batches[first], *(rest[k] for k in perm)]
        short = (-len(batches)) % self.world_size
        return batches + [batches[k % len(batches)] for k in range(short)] if batches else batches

    def __iter__(self):  # type: ignore[override]
        yield from self.plan()[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self.plan()) // self.world_size
