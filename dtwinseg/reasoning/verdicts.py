"""Forced verdict decoding: the model chooses each object's verdict; the reasoner writes everything else.

A per-object reasoning path (the compact format's ``target: path``) is a fixed skeleton around a few
free words::

    a small red circle, id 0: no
    a large blue circle, id 1: yes
    Answer: [1]

The object lines come from the twin, so free generation only adds ways to fail: a small model that
copies the wrong description before a verdict judges the wrong object (experiments/RESULTS.md 6.4).
With ``ReasoningConfig.decoding: verdicts`` the reasoner writes each object's line itself and scores
the verdict words after it; the likelier word is appended and the next line follows, so every verdict
sees the model's own earlier verdicts exactly as training saw the gold ones (teacher forcing at
training time, the model's choices at inference). The per-object target (``target: object``) has one
prompt per object: its verdicts are independent and scored all at once. The answer is the objects judged
"yes" (their margin log p(yes) - log p(no) above ``ReasoningConfig.verdict_margin``, 0 by default); when none
is, the object whose "yes" is likeliest relative to "no" (an answer always names an object, like the
training targets do). Each object's score is that log-probability margin.

Scoring is tokenizer-agnostic: every candidate is tokenized as the whole text (prompt + path so far +
line + word), exactly as the training text, and its score is the summed log-probability of the tokens
after the candidates' common token prefix. Only local models (the transformers backend) expose the
probabilities this needs.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from dtwinseg.formats.base import VerdictPath
from dtwinseg.io import DataError
from dtwinseg.parsing import ParseResult
from dtwinseg.prefix_lm import bidirectional, is_prefix_lm
from dtwinseg.reasoning.backends import LLMBackend, TransformersBackend
from dtwinseg.reasoning.config import ReasoningConfig
from dtwinseg.reasoning.reasoner import (
    LLMReasoner,
    PromptFitter,
    Reasoner,
    ReasoningOutput,
    answer_empty_twins,
    check_trained_format,
    make_format,
)
from dtwinseg.reasoning.similarity import SentenceEmbedder, encoder_dtype, verdict_answer
from dtwinseg.twin import DigitalTwin

Item = tuple[DigitalTwin, str]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for k in range(n):
        if any(s[k] != seqs[0][k] for s in seqs[1:]):
            return k
    return n


def continuation_logprobs(model: Any, device: Any, pad_id: int,
                          groups: Sequence[tuple[list[int], list[list[int]]]]) -> list[list[float]]:
    """For each ``(prefix ids, [continuation ids, ...])``, the summed log-probability of every continuation
    after the prefix. A group whose continuations are one token each needs one sequence (the prefix: its
    next-token distribution scores them all). Groups with longer continuations run their shared part once
    (the prefix and the continuations' common head) and only the differing tails per continuation, on the
    shared part's KV cache (:func:`_cached_tails`); a model without a usable cache gets prefix + continuation
    per continuation instead. Right-padded batches (positions start at 0 on every row); log-softmax only where
    read."""
    import torch

    for prefix, conts in groups:
        if not prefix or not conts or any(not c for c in conts):
            raise ValueError("a continuation needs a non-empty prefix and at least one token")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max(len(p) + max(len(c) for c in conts) for p, conts in groups)
    if isinstance(limit, int) and limit > 0 and longest > limit:
        raise ValueError(f"{longest} tokens: more than the model's {limit} positions")
    multi = [g for g, (_, conts) in enumerate(groups) if any(len(c) > 1 for c in conts)]
    # a prefix-LM model reads a prompt both ways: exact for sequences that are the prefix alone
    prefix_lm = is_prefix_lm(model)
    if prefix_lm and multi:
        raise ValueError("a prefix-LM model scores single-token continuations only (its verdict words)")
    out: list[list[float] | None] = [None] * len(groups)
    if multi:
        cached = _cached_tails(model, device, pad_id, [groups[g] for g in multi])
        if cached is not None:
            for g, scores in zip(multi, cached, strict=True):
                out[g] = scores
    plan, flat = [], []  # per remaining group: index of its first sequence, one sequence for all?
    for g, (prefix, conts) in enumerate(groups):
        if out[g] is not None:
            continue
        single = all(len(c) == 1 for c in conts)
        plan.append((g, len(flat), single))
        flat.extend([prefix] if single else [prefix + c for c in conts])
    if not flat:
        return out  # type: ignore[return-value]
    ids, attn = _right_padded(flat, pad_id)
    starts, counts = [], []  # per sequence: logits are read from the prefix's last position, one per token
    for g, _, single in plan:
        prefix, conts = groups[g]
        for c in ([[0]] if single else conts):
            starts.append(len(prefix) - 1)
            counts.append(len(c))
    with torch.inference_mode(), _logits_at(model, starts, counts) as at, bidirectional(model, prefix_lm):
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
        logits = at(logits)  # row r, column k: the logits at position starts[r] + k
    for g, first, single in plan:
        prefix, conts = groups[g]
        if single:
            logp = torch.log_softmax(logits[first, 0].float(), dim=-1).cpu()
            out[g] = [float(logp[c[0]]) for c in conts]
            continue
        out[g] = [_span_logprob(logits[first + j, : len(c)], c) for j, c in enumerate(conts)]
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def _logits_at(model: Any, starts: Sequence[int], counts: Sequence[int]) -> Iterator[Any]:
    """Compute the LM head only where logits are read: row r's positions starts[r] .. starts[r] + counts[r] - 1
    (the vocabulary projection dominates a small model's forward on short prompts: MiniLM's 30k x 384 head
    costs as much as its six layers). A forward pre-hook on the output embedding gathers those hidden states
    (padded to the longest count by repeating the last), and computes them in fp32 when the model is in half
    precision; the yielded function maps the model's logits to B x K x V either way (a model that skips its
    output-embedding module gets its full logits indexed)."""
    import torch

    width = max(counts)
    index = torch.tensor([[s + min(k, c - 1) for k in range(width)] for s, c in zip(starts, counts, strict=True)])
    called = []
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None

    def pre(_module: Any, args: tuple) -> tuple:
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[0] != index.shape[0]:
            return args
        called.append(True)
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        return (hidden[rows, index.to(hidden.device)],) + tuple(args[1:])

    def select(logits: Any) -> Any:
        if called:
            return logits
        rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
        return logits[rows, index.to(logits.device)]

    def post(module: Any, args: tuple, output: Any) -> Any:
        # a half-precision model's logits are coarse (bf16: steps of 1/16 at magnitude 10, so near verdicts
        # tie); the few positions read are recomputed in fp32 from the same hidden states (cheap)
        if not called or output.dtype == torch.float32 or not isinstance(module, torch.nn.Linear):
            return output
        weight, bias = _fp32_head(module)
        return torch.nn.functional.linear(args[0].float(), weight, bias)

    handles = ([head.register_forward_pre_hook(pre), head.register_forward_hook(post)]
               if isinstance(head, torch.nn.Module) else [])
    try:
        yield select
    finally:
        for handle in handles:
            handle.remove()


_FP32_HEADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fp32_head(module: Any) -> tuple[Any, Any]:
    """fp32 copies of a half-precision head's weight and bias, made once per module and kept while its
    parameters are unchanged (same storage, same version): a vocabulary-sized cast per batch otherwise."""
    w, b = module.weight, module.bias
    stamp = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
    held = _FP32_HEADS.get(module)
    if held is None or held[0] != stamp:
        import torch

        with torch.inference_mode(False), torch.no_grad():  # plain tensors: usable in and out of inference mode
            held = (stamp, w.detach().float(), None if b is None else b.detach().float())
        _FP32_HEADS[module] = held
    return held[1], held[2]


def _span_logprob(logits: Any, tokens: Sequence[int]) -> float:
    """Summed log-probability of ``tokens`` under ``logits`` (len(tokens) x V, row k predicting token k);
    log-softmax over these rows only."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    return float(logp[torch.arange(len(tokens)), torch.tensor(list(tokens))].sum())


def _right_padded(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for r, seq in enumerate(seqs):
        ids[r, : len(seq)] = torch.tensor(list(seq))
        attn[r, : len(seq)] = 1
    return ids, attn


def _cached_tails(model: Any, device: Any, pad_id: int,
                  groups: Sequence[tuple[list[int], list[list[int]]]]) -> list[list[float]] | None:
    """Scores of multi-token continuations with one pass over each group's shared part: the prefix plus the
    continuations' common head (up to the last token before any of them ends), with use_cache; the cache
    rows are then repeated per continuation and only the tails run, at their true positions (position_ids
    continue each row's shared part; the pad gap between a short shared part and its tail is masked out).
    None when the model returns no cache that can be repeated (the caller falls back to full sequences)."""
    import torch

    shared, tails, owner = [], [], []
    for g, (prefix, conts) in enumerate(groups):
        head = min(_common_prefix(conts), min(len(c) for c in conts) - 1)  # every tail keeps >= 1 token
        shared.append(prefix + conts[0][:head])
        for c in conts:
            tails.append(c[head:])
            owner.append(g)
    ids, attn = _right_padded(shared, pad_id)
    try:
        starts = [len(prefix) - 1 for prefix, _ in groups]  # the head's tokens and each tail's first one
        counts = [len(shared[g]) - starts[g] for g in range(len(groups))]
        with torch.inference_mode(), _logits_at(model, starts, counts) as at:
            first = model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=True)
            first_logits = at(first.logits)
        with torch.inference_mode():
            cache = getattr(first, "past_key_values", None)
            if cache is None or not callable(getattr(cache, "batch_select_indices", None)):
                return None
            rows = torch.tensor(owner, device=ids.device)
            cache.batch_select_indices(rows.to(device))
            t_ids, t_attn = _right_padded(tails, pad_id)
            lengths = torch.tensor([len(s) for s in shared])[rows]
            pos = lengths[:, None] + torch.arange(t_ids.shape[1])[None, :]
            mask = torch.cat([attn[rows], t_attn], dim=1)
            second = model(input_ids=t_ids.to(device), attention_mask=mask.to(device),
                           position_ids=pos.to(device), past_key_values=cache, use_cache=True)
    except (TypeError, NotImplementedError, AttributeError):
        return None
    out: list[list[float]] = []
    r = 0  # the tails of group g are rows r .. r + len(conts) - 1 of the second pass
    for g, (prefix, conts) in enumerate(groups):
        head = shared[g][len(prefix):]
        base = _span_logprob(first_logits[g, : len(head)], head) if head else 0.0  # the same for all
        first_tok = torch.log_softmax(first_logits[g, len(head)].float(), dim=-1).cpu()  # each tail's first token
        scores = []
        for tail in tails[r: r + len(conts)]:
            score = float(first_tok[tail[0]])
            if len(tail) > 1:
                score += _span_logprob(second.logits[r + len(scores), : len(tail) - 1], tail[1:])
            scores.append(base + score)
        out.append(scores)
        r += len(conts)
    return out


class VerdictReasoner:
    """Forced verdict decoding over the transformers backend (module docstring)."""

    def __init__(self, cfg: ReasoningConfig, backend: TransformersBackend | None = None):
        if cfg.backend != "transformers":
            raise DataError(None, "decoding", f"'verdicts' needs the verdicts' probabilities: backend "
                            f"transformers, got {cfg.backend!r}")
        self.cfg = cfg
        check_trained_format(cfg)
        self.format = make_format(cfg)
        self.format.verdict_path(DigitalTwin("", 1, 1), "")  # a format without verdicts to force says so now
        self.backend = backend if backend is not None else TransformersBackend(cfg)
        self.fit = PromptFitter(self.format, self.backend)

    def _score(self, texts_per_row: list[list[str]]) -> list[list[float]]:
        """For each row, the log-probability of each candidate text's tokens after the candidates' common
        token prefix (:func:`continuation_logprobs`)."""
        model, tok = self.backend._ensure_loaded()
        groups = []
        for texts in texts_per_row:
            seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            start = _common_prefix(seqs)
            if start == 0 or any(start >= len(seq) for seq in seqs):
                raise ValueError("a verdict word adds no token after the shared prefix")
            groups.append((seqs[0][:start], [seq[start:] for seq in seqs]))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        return continuation_logprobs(model, self.backend.device, pad, groups)

    def reason(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        out, todo = answer_empty_twins(items, self.format.name)
        bs = max(1, self.cfg.batch_size)
        for start in range(0, len(todo), bs):
            chunk = todo[start:start + bs]
            for k, o in zip(chunk, self._reason_batch([items[k] for k in chunk]), strict=True):
                out[k] = o
        return out  # type: ignore[return-value]

    def _reason_batch(self, items: Sequence[Item]) -> list[ReasoningOutput]:
        # A whole-scene path's prompt is fitted to the context as build-sft fitted it (objects it leaves out
        # get no verdict); per-object prompts are each one object's own.
        fitted = [None if self.format.per_object else self.fit(twin, query) for twin, query in items]
        paths = [self.format.verdict_path(f.twin if f is not None else twin, query)
                 for f, (twin, query) in zip(fitted, items, strict=True)]
        texts = [None if p.prompts is not None or f is None else self.backend.prompt_text(f.messages)
                 for p, f in zip(paths, fitted, strict=True)]
        paths_text = [""] * len(items)
        margins: list[dict[int, float]] = [{} for _ in items]
        threshold = float(self.cfg.verdict_margin)

        def decide(r: int, step: int, sc: list[float]) -> None:
            obj, head = paths[r].steps[step]
            margins[r][obj] = sc[0] - max(sc[1:])
            choice = 0 if margins[r][obj] > threshold else 1 + max(range(len(sc) - 1), key=lambda j: (sc[j + 1], -j))
            paths_text[r] += head + paths[r].choices[choice] + paths[r].line_end

        # Independent objects (per-object prompts): every verdict of the batch at once, batch_size at a time,
        # in order of prompt length (less padding per batch; each verdict's score does not depend on its batch).
        flat = [(r, k) for r, p in enumerate(paths) if p.prompts is not None for k in range(len(p.steps))]
        prompts = {(r, k): self.backend.prompt_text(paths[r].prompts[k]) + paths[r].steps[k][1]  # type: ignore[index]
                   for r, k in flat}
        by_length = sorted(flat, key=lambda rk: len(prompts[rk]))
        scores: dict[tuple[int, int], list[float]] = {}
        bs = max(1, self.cfg.batch_size)
        for start in range(0, len(by_length), bs):
            chunk = by_length[start:start + bs]
            candidates = [[prompts[r, k] + c for c in paths[r].choices] for r, k in chunk]
            scores.update(zip(chunk, self._score(candidates), strict=True))
        for r, k in flat:  # each path's text in object order
            decide(r, k, scores[r, k])
        # A path: each verdict after the model's own earlier ones.
        sequential = [r for r, p in enumerate(paths) if p.prompts is None]
        if sequential and is_prefix_lm(self.backend._ensure_loaded()[0]):
            raise DataError(None, "format.options.target", "a prefix-LM checkpoint judges per-object prompts "
                            "(target: object); a path's earlier verdicts were trained as causal completion")
        for step in range(max((len(paths[r].steps) for r in sequential), default=0)):
            rows = [r for r in sequential if step < len(paths[r].steps)]
            candidates = [[str(texts[r]) + paths_text[r] + paths[r].steps[step][1] + c for c in paths[r].choices]
                          for r in rows]
            for r, sc in zip(rows, self._score(candidates), strict=True):
                decide(r, step, sc)
        prior = self._similarities(items, paths, margins)
        outs = []
        for r, p in enumerate(paths):
            ids, fell_back = verdict_answer(margins[r], threshold, prior[r], self.cfg.prior_temperature)
            notes = []
            if fell_back:
                notes.append("no object judged yes; " + ("the likeliest yes under the similarity prior"
                                                         if prior[r] is not None else "the likeliest yes"))
            text = paths_text[r] + p.answer(ids)
            dropped = list(fitted[r].dropped) if fitted[r] is not None else []  # type: ignore[union-attr]
            outs.append(ReasoningOutput(ids, ParseResult("ok", ids, notes, text), text, self.format.name,
                                        scores=margins[r], finish_reason="stop", dropped=dropped,
                                        similarity=prior[r]))
        return outs

    def _similarities(self, items: Sequence[Item], paths: Sequence[VerdictPath],
                      margins: list[dict[int, float]]) -> list[dict[int, float] | None]:
        """Per item, the prior encoder's cosine similarity of the query to each judged object's text (what its
        prompt shows of it: ``VerdictPath.texts``), or None without ``similarity_prior``. Every item gets them,
        also those where some object clears the margin, so that a margin search over the stored predictions
        (the demo's, on val) sees the rule as it would decide at every margin."""
        if self.cfg.similarity_prior is None:
            return [None] * len(items)
        device = str(self.backend.device)  # the scorer's device and dtype
        encoder = SentenceEmbedder.shared(self.cfg.similarity_prior, device, dtype=encoder_dtype(self.cfg.dtype, device))
        asks = [(query, {i: paths[r].texts.get(i) or "object" for i in margins[r]})
                for r, (_twin, query) in enumerate(items)]
        return encoder.similarities(asks)


def build_reasoner(cfg: ReasoningConfig, backend: LLMBackend | None = None) -> Reasoner:
    """The reasoner a config describes (backend built from the config unless given): an LLMReasoner, or
    for ``decoding: verdicts`` a :class:`VerdictReasoner`."""
    if cfg.decoding == "verdicts":
        return VerdictReasoner(cfg, backend)  # type: ignore[arg-type]
    return LLMReasoner(cfg, backend)
