"""Contrastive fine-tuning of a sentence encoder over twins: ``dtwinseg train-retriever``.

The retriever is a bi-encoder (mean-pooled, L2-normalised last hidden states, as
:class:`dtwinseg.reasoning.similarity.SentenceEmbedder` reads it) trained so that a query lies closer to the
lines of the objects it means than to the other lines of the same scene. Each Seg-DT record gives one
example: the query, its twin's object lines (the compact format's lines under ``format``, scene facts
included when it says so: exactly the text the reasoning rows and the prior read) and the answer objects as
positives. One step takes ``scenes_per_step`` records; in each, up to ``positives`` answer lines and
``negatives`` other lines drawn at random; the loss is the multi-positive InfoNCE of the scene,
``logsumexp(s / T) - logsumexp(s_pos / T)`` over its cosine similarities ``s`` (in-scene negatives only:
another scene's lines are no evidence about this query).

The saved folder is a plain transformers model + tokenizer (+ ``retriever.json``: the config and what the
run measured), so every reader of sentence encoders takes it as it is:

- ``ReasoningConfig.similarity_prior: FOLDER``: the prior of forced verdicts when the scorer judges no
  object "yes" (dtwinseg/reasoning/verdicts.py);
- ``dtwinseg eval -c retriever=baseline:embedding:FOLDER``: the top-1 object by the trained similarity.

Nothing in it knows the synthetic world: it reads records, lines and answers.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dtwinseg.config import ConfigError, StrictConfig, load_config_yaml, parse_scalar, set_dotted
from dtwinseg.io import DataError, atomic_write_json, replace_folder
from dtwinseg.reasoning.similarity import DEFAULT_EMBEDDING_MODEL, mean_pooled

INFO_FILE = "retriever.json"
ENCODE_CHUNK = 24  # texts per forward pass in training (sorted by length)


@dataclass
class RetrieverConfig(StrictConfig):
    """A retriever run (``dtwinseg train-retriever CONFIG.yaml [field=value ...]``).

    records: Seg-DT JSONL (``dtwinseg build-segdt``). output_dir: the folder written (replaced only when it
    holds an earlier retriever run). model: the encoder to start from (folder, Hub id or ``package:...``;
    default the shipped all-MiniLM-L6-v2). format: the compact format options whose object lines are read
    (dtwinseg.formats.compact.CompactOptions; use the reasoning rows' options so the prior reads what it
    was trained on). labels: ``answer`` (the record's answer) or ``inside`` (its ``inside`` objects, where the
    record has them and their union matches the ground truth within 0.05 IoU of the answer; see
    :func:`dtwinseg.data_builders.segdt.inside_answer`). max_steps: optimiser steps (cosine decay to 0).
    scenes_per_step: records per step. positives / negatives: lines per record per step (drawn at random).
    temperature: of the in-scene softmax over cosine similarities. max_length: tokens per text. freeze:
    parameter name parts kept fixed (as ``model.freeze`` of a training recipe). bf16: autocast to bfloat16
    (CPU matrix units or GPU). device: auto | cpu | cuda[:N]. threads: torch threads (None: torch's
    default). seed: of the draws and the order."""

    records: str = ""
    output_dir: str = ""
    model: str = DEFAULT_EMBEDDING_MODEL
    format: dict = field(default_factory=lambda: {"facts": True, "position": "none", "areas": False})
    labels: Literal["answer", "inside"] = "answer"
    max_steps: int = 200
    scenes_per_step: int = 8
    positives: int = 4
    negatives: int = 11
    learning_rate: float = 5e-5
    temperature: float = 0.05
    max_length: int = 96
    freeze: list[str] = field(default_factory=list)
    bf16: bool = False
    device: str = "auto"
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        from dtwinseg.formats.compact import CompactOptions

        for name in ("max_steps", "scenes_per_step", "positives", "max_length"):
            if getattr(self, name) < 1:
                raise DataError(None, name, f"must be >= 1, got {getattr(self, name)}")
        if self.negatives < 1:
            raise DataError(None, "negatives", f"must be >= 1 (the loss contrasts answers with other objects), "
                            f"got {self.negatives}")
        if not 0 < self.learning_rate < 1:
            raise DataError(None, "learning_rate", f"must be in (0, 1), got {self.learning_rate}")
        if not 0 < self.temperature <= 10:
            raise DataError(None, "temperature", f"must be in (0, 10], got {self.temperature}")
        if self.threads is not None and self.threads < 1:
            raise DataError(None, "threads", f"must be >= 1, got {self.threads}")
        if not str(self.model).strip():
            raise DataError(None, "model", "empty: name a sentence encoder (folder, Hub id or package:...)")
        try:
            CompactOptions.from_dict(self.format)
        except DataError as e:  # its own section name is format.options; here the field is format
            raise DataError(None, (e.field or "").replace("format.options", "format"), e.message) from None

    def options(self) -> Any:
        from dtwinseg.formats.compact import CompactOptions

        return CompactOptions.from_dict(self.format)

    @classmethod
    def load(cls, path: str | os.PathLike | None, overrides: list[str] = ()) -> RetrieverConfig:
        """The config file (or only defaults when None) with ``field=value`` overrides applied, typed and
        checked (errors name the file or ``override`` and the field) before any weights load."""
        data = load_config_yaml(path) if path is not None else {}
        for word in overrides:
            key, eq, text = word.partition("=")
            if not eq or not key:
                raise ConfigError("override", word, "expected field=value")
            set_dotted(data, key.strip(), parse_scalar(text, key.strip()))
        cfg = cls.from_dict(data, path=path)
        for name in ("records", "output_dir"):
            if not getattr(cfg, name):
                raise ConfigError(str(path) if path else "override", name, "required (in the file or as an "
                                  f"override {name}=...)")
        return cfg


# --- examples ------------------------------------------------------------------------------------
@dataclass
class Example:
    """One record as the loss reads it: the query, its scene's lines, the indices of the answer lines."""

    query: str
    lines: list[str]
    positives: list[int]


def examples(records: list, cfg: RetrieverConfig) -> tuple[list[Example], dict]:
    """The records as :class:`Example` s and counts: ``{"records", "examples", "no_answer", "no_negative"}``
    (a record whose answer holds no object, or every object, teaches the contrast nothing)."""
    from dtwinseg.data_builders.segdt import inside_answer

    from dtwinseg.formats.compact import object_lines

    opts = cfg.options()
    out: list[Example] = []
    counts = {"records": len(records), "examples": 0, "no_answer": 0, "no_negative": 0}
    for rec in records:
        answer = set(inside_answer(rec) if cfg.labels == "inside" else rec.path.answer)
        lines = object_lines(rec.twin, opts)
        ids = sorted(lines)
        pos = [k for k, i in enumerate(ids) if i in answer]
        if not pos:
            counts["no_answer"] += 1
        elif len(pos) == len(ids):
            counts["no_negative"] += 1
        else:
            out.append(Example(rec.query, [lines[i] for i in ids], pos))
    counts["examples"] = len(out)
    return out, counts


def scene_batches(data: list[Example], cfg: RetrieverConfig, rng: random.Random) -> Iterator[list[Example]]:
    """Endless batches of ``scenes_per_step`` examples, each cut to at most ``positives`` answer lines and
    ``negatives`` other lines (positives first); every example once per pass, in a new order each pass."""
    order: list[int] = []
    while True:
        batch = []
        for _ in range(min(cfg.scenes_per_step, len(data))):
            if not order:
                order = list(range(len(data)))
                rng.shuffle(order)
            ex = data[order.pop()]
            pos = rng.sample(ex.positives, min(cfg.positives, len(ex.positives)))
            neg_all = [k for k in range(len(ex.lines)) if k not in set(ex.positives)]
            neg = rng.sample(neg_all, min(cfg.negatives, len(neg_all)))
            batch.append(Example(ex.query, [ex.lines[k] for k in pos + neg], list(range(len(pos)))))
        yield batch


def scene_loss(query_vecs: Any, line_vecs: Any, batch: list[Example], temperature: float) -> Any:
    """Mean over the batch of the multi-positive InfoNCE of each scene (``line_vecs``: every example's lines,
    concatenated in order)."""
    import torch

    total, k = query_vecs.new_zeros(()), 0
    for j, ex in enumerate(batch):
        logits = line_vecs[k:k + len(ex.lines)] @ query_vecs[j] / temperature
        k += len(ex.lines)
        total = total + torch.logsumexp(logits, 0) - torch.logsumexp(logits[ex.positives], 0)
    return total / len(batch)


# --- training ------------------------------------------------------------------------------------
def _check_output_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / INFO_FILE).is_file())):
        raise DataError(str(out), "output_dir", f"holds files that no retriever run wrote (no {INFO_FILE}); "
                        "choose another folder")


def train_retriever(cfg: RetrieverConfig, *, progress: bool = True,
                    log: Callable[[str], None] = print) -> Path:
    """Train and save the retriever (model, tokenizer, ``retriever.json``) under ``cfg.output_dir``, written
    to a temporary sibling and renamed into place; returns the folder. A records file without a usable
    example is a DataError naming it."""
    import torch
    from dtwinseg.data_builders.segdt import load_records
    from dtwinseg.training.run import freeze_parameters
    from transformers import AutoModel, AutoTokenizer

    from dtwinseg.base_models import resolve_model_path
    from dtwinseg.runtime import ProgressBar, resolve_device, torch_threads

    out = Path(cfg.output_dir)
    _check_output_dir(out)
    errors: list[dict] = []
    records = load_records(cfg.records, errors)
    data, counts = examples(records, cfg)
    counts["unreadable"] = len(errors)
    for e in errors[:3]:
        log(f"[retriever] skipped {cfg.records} line {e.get('line')}: {e.get('error')}")
    if not data:
        raise DataError(cfg.records, "records", f"no record with an answer object and another object to contrast "
                        f"it with ({counts})")
    log(f"[retriever] {counts['examples']} examples from {counts['records']} records ({counts['no_answer']} "
        f"without an answer object, {counts['no_negative']} whose answer is every object, {len(errors)} unreadable)")
    device = resolve_device(cfg.device)
    t0 = time.time()
    with torch_threads(cfg.threads or 0):
        torch.manual_seed(cfg.seed)
        path = resolve_model_path(cfg.model)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).to(device)
        params = freeze_parameters(model, cfg.freeze) if cfg.freeze else {
            "frozen": 0, "trainable": sum(p.numel() for p in model.parameters())}
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.max_steps) / cfg.max_steps)))
        autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.bf16)

        def encode(texts: list[str]) -> Any:
            # in chunks of similar length (lines vary 3x in length: padding them all to the longest would
            # cost about twice the compute); a text's vector does not depend on its chunk
            ids = tok(texts, truncation=True, max_length=cfg.max_length)
            order = sorted(range(len(texts)), key=lambda k: len(ids["input_ids"][k]))
            parts = []
            for start in range(0, len(order), ENCODE_CHUNK):
                chunk = order[start:start + ENCODE_CHUNK]
                enc = tok.pad({name: [ids[name][k] for k in chunk] for name in ids.keys()}, padding=True,
                              return_tensors="pt").to(device)
                with autocast:
                    hidden = model(**enc).last_hidden_state
                parts.append(mean_pooled(hidden.float(), enc["attention_mask"]))
            inverse = torch.empty(len(order), dtype=torch.long)
            inverse[torch.tensor(order)] = torch.arange(len(order))
            return torch.cat(parts)[inverse.to(device)]

        rng = random.Random(cfg.seed)
        batches = scene_batches(data, cfg, rng)
        losses: list[float] = []
        model.train()
        with ProgressBar("retriever", cfg.max_steps, progress) as bar:
            for step in range(cfg.max_steps):
                batch = next(batches)
                loss = scene_loss(encode([ex.query for ex in batch]),
                                  encode([line for ex in batch for line in ex.lines]), batch, cfg.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                bar.advance()
                if (step + 1) % max(1, cfg.max_steps // 10) == 0 or step + 1 == cfg.max_steps:
                    window = losses[-max(1, cfg.max_steps // 10):]
                    log(f"[retriever] step {step + 1}/{cfg.max_steps}: loss {sum(window) / len(window):.3f}")
        model.eval()
        info = {"config": cfg.to_dict(), "base_model": cfg.model, "counts": counts, "parameters": params,
                "loss_first": losses[0], "loss_last": sum(losses[-10:]) / len(losses[-10:]),
                "loss_every_step": [round(x, 4) for x in losses], "seconds": round(time.time() - t0, 1),
                "device": device, "pooling": "mean", "normalized": True}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            atomic_write_json(tmp / INFO_FILE, info)
            _check_output_dir(out)  # still ours (or absent) before it is replaced
            replace_folder(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"[retriever] saved {out} ({info['seconds']:.0f} s; loss {info['loss_first']:.3f} -> {info['loss_last']:.3f})")
    return out
