"""Prefix-LM attention for encoder-pretrained bases (BERT / MiniLM as a causal LM).

A causal mask hides the end of the prompt from its beginning. A base pretrained bidirectionally (BERT,
MiniLM; UniLM trained exactly this mask for generation) reads a prompt best with full attention over it:
the prompt's tokens attend to each other both ways, the completion's tokens attend causally (to the whole
prompt and the completion so far). The prediction at the prompt's last position sees the whole prompt and
nothing after it, so a verdict read there (``decoding: verdicts``) is that of a bidirectional forward of
the prompt alone.

- Training (``SFTDTConfig.prefix_lm``, padding-free rows only): the trainer passes each packed example's
  prompt length (its tokens before the first labelled one) to the packed attention
  (training/packing.py), and marks the model's config (``dtwinseg_prefix_lm: true``, saved with the
  checkpoint).
- Inference: :func:`bidirectional` runs a marked model without the causal mask for prompt-only forwards
  (single-token verdicts); :func:`is_prefix_lm` tells a loaded checkpoint apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from dtwinseg.base_models import model_configs

PREFIX_LM_ATTR = "dtwinseg_prefix_lm"


def is_prefix_lm(model: Any) -> bool:
    """True for a model trained with prefix-LM attention (its config carries ``dtwinseg_prefix_lm``)."""
    return any(bool(getattr(cfg, PREFIX_LM_ATTR, False)) for cfg in model_configs(model))


def mark_prefix_lm(model: Any) -> None:
    """Record on every config of the model that it is trained with prefix-LM attention."""
    for cfg in model_configs(model):
        setattr(cfg, PREFIX_LM_ATTR, True)


def prefix_lengths(labels: Any, cu_seq_lens: Any) -> list[int]:
    """Per packed example (boundaries ``cu_seq_lens``), its prompt length: the tokens before its first
    labelled one (labels != -100); the whole example when none is labelled."""
    import torch

    flat = labels.reshape(-1)
    bounds = [int(x) for x in cu_seq_lens.tolist()]
    labelled = torch.nonzero(flat != -100).flatten()
    out = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        inside = labelled[(labelled >= s) & (labelled < e)]
        out.append(int(inside[0]) - s if len(inside) else e - s)
    return out


@contextlib.contextmanager
def bidirectional(model: Any, enabled: bool = True) -> Iterator[None]:
    """Run ``model`` without its causal mask inside the block (no-op unless enabled)."""
    if not enabled:
        yield
        return
    configs = model_configs(model)
    causal = [m for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    saved = ([c.is_decoder for c in configs], [m.is_causal for m in causal])
    try:
        for c in configs:
            c.is_decoder = False
        for m in causal:
            m.is_causal = False
        yield
    finally:
        for c, v in zip(configs, saved[0], strict=True):
            c.is_decoder = v
        for m, v in zip(causal, saved[1], strict=True):
            m.is_causal = v
