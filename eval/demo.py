"""The end-to-end demo on synthetic scenes: the real pipeline, small enough for 2 CPU cores.

    synthetic scenes (data_builders.synthetic, ReasonSeg format + instance sidecars)
    -> oracle perception: one DigitalTwin per sample into a DT cache (data_builders.dt_cache)
    -> programmatic Seg-DT records (data_builders.programmatic) for the train split
    -> tokenised SFT dataset with per-token loss weights (compact format, data_builders.sft_dataset)
    -> SFTDT training (training.run.train_from_recipe): weighted, and the unweighted ablation
    -> evaluation of base (zero-shot), SFTDT and SFTDT-unweighted with the harness (eval.harness)
    -> comparison report (eval.report / eval.compare) and summary.json

The base is ``minilm-causal`` (dtwinseg.base_models); the twin is rendered in the compact format
(dtwinseg.reasoning.compact) because the full JSON(D) prompt does not fit a small model's budget.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dtwinseg.io import atomic_write_json, atomic_write_text

ORACLE_PERCEPTION = {"source": "oracle", "vlm": {"backend": "none"}, "use_granularity": True}
"""The perception config of the demo: recipes/perception/oracle.yaml."""


@dataclass
class DemoConfig:
    """Every knob of the demo (defaults: `make demo`, at most ~10 minutes on 2 CPU cores).

    n_train, n_test: synthetic samples per split (test is held out: other scenes, other seed stream).
    seed: seed of the scenes, the model's new head and the training order.
    max_objects: objects per scene (the generator's default is 12; 6 keeps prompts near 60 tokens).
    max_steps: optimizer steps of each training run (weighted and unweighted).
    batch_size: sequences per step. learning_rate: AdamW peak rate (cosine schedule, 5% warm-up); 2e-4
        beat 8e-4 for this full fine-tuning of a pretrained base (experiments/RESULTS.md, section 5).
    freeze: parameter groups kept fixed (recipe ``model.freeze``); the word embeddings are half of
        MiniLM's parameters and tied to the LM head, and freezing them about halves the step time.
    threads: torch intra-op threads for the whole run (1: robust on a shared 2-core machine, see
        :func:`torch_threads`; 0: torch's default).
    bf16: CPU bf16 autocast in training (TRL's default is on; measured no faster here, so off: fp32).
    w_answer, w_completion: SFTDT loss weights of answer-list tokens and other completion tokens; the
        unweighted ablation sets every weight to 1.
    eval_batch_size: prompts per generate call (left padding is safe: generate derives BERT's
        position_ids from the attention mask; batched == one-by-one is checked in tests/test_demo.py).
    max_new_tokens: generation budget of the short ``Answer: [ids]`` line.
    dropout: hidden and attention dropout of the base during fine-tuning (0: a short run learns faster).
    compact: CompactConfig fields of the twin text (default: ids after their descriptions, "last").
    """

    n_train: int = 700
    n_test: int = 70
    seed: int = 0
    max_objects: int = 6
    max_steps: int = 140
    batch_size: int = 8
    learning_rate: float = 2e-4
    freeze: list = field(default_factory=lambda: ["embeddings"])
    bf16: bool = False
    threads: int = 1
    w_answer: float = 4.0
    w_completion: float = 1.0
    eval_batch_size: int = 16
    max_new_tokens: int = 16
    dropout: float = 0.0
    compact: dict = field(default_factory=lambda: {"id_position": "last"})

    @classmethod
    def preset(cls, mode: str) -> DemoConfig:
        """"default", "long" (4x the steps on 2x the data) or "quick" (a few steps on a handful of samples: tests)."""
        if mode == "quick":
            return cls(n_train=8, n_test=7, max_steps=2, batch_size=2, max_new_tokens=6, eval_batch_size=4)
        if mode == "long":
            return cls(n_train=1400, n_test=140, max_steps=400)
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)


# --- stages ----------------------------------------------------------------------------------------
def build_oracle_cache(spec: str, cache_root: Path, progress: bool = True) -> Any:
    """Twins of every sample of ``spec`` through the real builder with the ``oracle`` source
    (recipes/perception/oracle.yaml: ground-truth instances, their semantics, level from the tag)."""
    from data_builders.build_dt import build_dt
    from dtwinseg.perception.builder import PerceptionConfig

    cfg = PerceptionConfig.from_dict(ORACLE_PERCEPTION)
    cache, counts = build_dt(spec, cfg, cache_root, progress=progress)
    if counts.failed:
        raise RuntimeError(f"{counts.failed} twins failed for {spec}; see {cache.failures_path}")
    return cache


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (restored afterwards).

    With 2 threads on a 2-core machine that another job also uses, every op waits for the descheduled
    thread (measured under such load: best_subset 0.42 s per sample with 2 threads vs 0.02 s with 1, so
    200 s vs 10 s for the Seg-DT records stage; MiniLM fwd+bwd at batch 8 3.3 s vs 1.0 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_records(spec: str, cache: Any, out: Path) -> tuple[list, dict]:
    """Programmatic Seg-DT records for every training sample (its twin from the cache)."""
    from data_builders.programmatic import ProgrammaticConfig, programmatic_record
    from data_builders.registry import open_dataset
    from data_builders.segdt import write_records

    cfg = ProgrammaticConfig()
    records, skipped = [], 0
    for s in open_dataset(spec):
        twin = cache.get(s.id)
        if twin is None:
            skipped += 1
            continue
        rec = programmatic_record(s.id, s.image_path, s.query, twin, s.gt_mask, cfg=cfg,
                                  dimension=s.dimension, granularity=s.granularity)
        if rec.match_iou is not None and rec.match_iou < cfg.min_iou:
            skipped += 1
            continue
        records.append(rec)
    write_records(out, records, inline_twin=True)
    return records, {"records": len(records), "skipped": skipped}


def compact_rows(records: list, tokenizer: Any, compact_cfg: Any) -> tuple[Any, dict]:
    """Tokenised SFT rows (input_ids, labels, loss_weights, token_kinds) of the compact format.

    Kinds: prompt 0, completion 1 ("Answer:" and the end token), answer 3 (the id list); weights come
    from kinds at training time (``use_token_kinds``), so one dataset serves both weightings.
    """
    from datasets import Dataset, Features, Sequence, Value

    from data_builders.sft_dataset import tokenize_conversation
    from dtwinseg.reasoning.compact import compact_answer, compact_messages

    rows = []
    for rec in records:
        text, span = compact_answer(rec.path.answer)
        msgs = compact_messages(rec.twin, rec.query, compact_cfg) + [{"role": "assistant", "content": text}]
        if not msgs[0]["role"] == "system":  # the plain layout expects system, user, assistant
            msgs = [{"role": "system", "content": ""}] + msgs
        ids, kinds = tokenize_conversation(tokenizer, msgs, [], [span])
        kinds = np.asarray(kinds)
        rows.append({"id": rec.id, "input_ids": ids, "labels": [t if k > 0 else -100 for t, k in zip(ids, kinds, strict=True)],
                     "loss_weights": [float(k > 0) for k in kinds], "token_kinds": kinds.tolist(),
                     "removed_objects": 0})
    features = Features({"id": Value("string"), "input_ids": Sequence(Value("int32")),
                         "labels": Sequence(Value("int32")), "loss_weights": Sequence(Value("float32")),
                         "token_kinds": Sequence(Value("int8")), "removed_objects": Value("int32")})
    lengths = [len(r["input_ids"]) for r in rows]
    return Dataset.from_list(rows, features=features), {"examples": len(rows),
                                                        "mean_tokens": float(np.mean(lengths)),
                                                        "max_tokens": int(max(lengths))}


def training_recipe(cfg: DemoConfig, base: Path, data: Path, out: Path, weighted: bool) -> dict:
    """The SFTDT recipe of one demo run (full fine-tuning of the small base)."""
    w = {"w_completion": cfg.w_completion, "w_decision": 2.0, "w_answer": cfg.w_answer} if weighted else \
        {"w_completion": 1.0, "w_decision": 1.0, "w_answer": 1.0}
    return {
        "model": {"name_or_path": str(base), "dtype": "float32",
                  "kwargs": {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout},
                  "freeze": list(cfg.freeze)},
        "data": {"train": str(data), "eval": None},
        "lora": {"use_lora": False},
        "training": {"output_dir": str(out), "use_cpu": True, "bf16": cfg.bf16, "max_steps": cfg.max_steps,
                     "per_device_train_batch_size": cfg.batch_size, "gradient_accumulation_steps": 1,
                     "learning_rate": cfg.learning_rate, "lr_scheduler_type": "cosine", "warmup_steps": max(1, cfg.max_steps // 20),
                     "weight_decay": 0.0, "gradient_checkpointing": False, "logging_steps": max(1, cfg.max_steps // 10), "save_strategy": "no",
                     "report_to": [], "seed": cfg.seed, "dataloader_num_workers": 0,
                     "use_token_kinds": True, **w, "disable_tqdm": False},
        "merge": {"enabled": False},
        "launch": {"num_processes": 1},
    }


def compact_checkpoint(label: str, model_dir: Path, cfg: DemoConfig) -> Any:
    """An eval Checkpoint whose reasoner uses the compact strategy over a transformers backend."""
    from dtwinseg.reasoning import LLMReasoner, ReasoningConfig
    from dtwinseg.reasoning.compact import CompactConfig, CompactStrategy
    from eval.checkpoints import Checkpoint

    rcfg = ReasoningConfig(strategy="select", backend="transformers", model=str(model_dir), device="cpu",
                           dtype="float32", batch_size=cfg.eval_batch_size, max_new_tokens=cfg.max_new_tokens)
    reasoner = LLMReasoner(rcfg)
    reasoner.strategy = CompactStrategy(CompactConfig(**cfg.compact))
    return Checkpoint(label, str(model_dir), rcfg, reasoner=reasoner)


# --- the whole run ---------------------------------------------------------------------------------
def run_demo(out: str | os.PathLike, cfg: DemoConfig | None = None, *, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run every stage into ``out`` with ``cfg.threads`` torch threads; returns the summary (also
    written to ``out/summary.json``)."""
    cfg = cfg or DemoConfig()
    if cfg.threads <= 0:
        return _run_stages(out, cfg, progress, log)
    with torch_threads(cfg.threads):
        return _run_stages(out, cfg, progress, log)


def _run_stages(out: str | os.PathLike, cfg: DemoConfig, progress: bool, log: Callable[[str], None]) -> dict:
    from datasets import load_from_disk  # noqa: F401 - fail early if datasets is missing

    from data_builders.sft_dataset import load_tokenizer, save_dataset
    from data_builders.synthetic import SynthConfig, write_dataset
    from dtwinseg.base_models import prepare_base_model
    from dtwinseg.reasoning.compact import CompactConfig
    from eval.harness import EvalOptions, evaluate
    from training.run import train_from_recipe

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    times: dict[str, float] = {}

    def stage(name: str, t: float) -> None:
        times[name] = round(time.time() - t, 1)
        log(f"[demo] {name}: {times[name]:.1f} s")

    t = time.time()
    data = out / "data"
    write_dataset(data, {"train": cfg.n_train, "test": cfg.n_test}, seed=cfg.seed,
                  cfg=SynthConfig(max_objects=cfg.max_objects), progress=progress)
    stage("synthetic scenes", t)

    t = time.time()
    train_spec, test_spec = f"synthetic:{data}:train", f"synthetic:{data}:test"
    cache = build_oracle_cache(train_spec, out / "dt", progress)
    build_oracle_cache(test_spec, out / "dt", progress)
    stage("oracle twins", t)

    t = time.time()
    records, rec_stats = build_records(train_spec, cache, out / "segdt.jsonl")
    base = prepare_base_model(out / "base")
    tok = load_tokenizer(str(base))
    ds, ds_stats = compact_rows(records, tok, CompactConfig(**cfg.compact))
    sft = save_dataset(ds, out / "sft", {"records": rec_stats, "dataset": ds_stats, "format": "compact"})
    stage("Seg-DT records + SFT dataset", t)
    log(f"[demo] {rec_stats['records']} records, {ds_stats['examples']} examples, "
        f"{ds_stats['mean_tokens']:.0f} tokens on average")

    trained = {}
    for name, weighted in (("trained", True), ("unweighted", False)):
        t = time.time()
        recipe = training_recipe(cfg, base, sft, out / f"train-{name}", weighted)
        trained[name] = train_from_recipe(recipe)
        stage(f"SFTDT training ({name})", t)

    t = time.time()
    cks = [compact_checkpoint("base", base, cfg), compact_checkpoint("trained", trained["trained"], cfg),
           compact_checkpoint("unweighted", trained["unweighted"], cfg)]
    metrics = evaluate(test_spec, cache.folder, cks, out / "eval", EvalOptions(progress=progress), log=log)
    stage("evaluation", t)
    summary = summarise(metrics, time.time() - t0, cfg, times)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "README.md", demo_markdown(summary, out))
    return summary


def _overall(m: dict) -> dict:
    for key in ("overall", "all"):
        if key in m.get("groups", {}):
            return m["groups"][key]
    groups = m.get("groups", {})
    return next(iter(groups.values())) if groups else {}


def summarise(metrics: dict | None, wall: float, cfg: DemoConfig, times: dict) -> dict:
    """summary.json: {"base"|"trained"|"unweighted": {giou, ciou, dimensions, parse}, oracle, wall_time_s}."""
    metrics = metrics or {}
    per_ck = metrics.get("checkpoints", metrics)
    out: dict[str, Any] = {}
    oracle = None
    for label in ("base", "trained", "unweighted"):
        m = per_ck.get(label, {})
        o = _overall(m)
        out[label] = {"giou": o.get("giou"), "ciou": o.get("ciou"),
                      "dimensions": {d: {"giou": v.get("giou"), "ciou": v.get("ciou")}
                                     for d, v in m.get("dimensions", {}).items()},
                      "parse": m.get("parse", {})}
        if oracle is None and "oracle_giou" in o:
            oracle = {"giou": o["oracle_giou"], "ciou": o["oracle_ciou"]}
    out["oracle"] = oracle
    out["wall_time_s"] = round(wall, 1)
    out["stage_times_s"] = times
    out["config"] = cfg.to_dict()
    return out


def demo_markdown(summary: dict, out: Path) -> str:
    """The comparison table (gIoU / cIoU x100, overall and per dimension) as markdown."""
    labels = ("base", "trained", "unweighted")
    dims = sorted({d for k in labels for d in summary[k]["dimensions"]})

    def f(x: Any) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    lines = ["| model | gIoU | cIoU | " + " | ".join(dims) + " | parse failures |",
             "|---|---|---|" + "---|" * len(dims) + "---|"]
    for k in labels:
        s = summary[k]
        parse = s.get("parse", {})
        fails = parse.get("failed", 0) if isinstance(parse, dict) else parse
        lines.append(f"| {k} | {f(s['giou'])} | {f(s['ciou'])} | "
                     + " | ".join(f(s["dimensions"].get(d, {}).get("giou")) for d in dims) + f" | {fails} |")
    o = summary.get("oracle") or {}
    if isinstance(o, dict):
        lines.append(f"| oracle bound | {f(o.get('giou'))} | {f(o.get('ciou'))} | " + " | ".join("" for _ in dims)
                     + " | |")
    lines.append("")
    lines.append(f"Per-dimension columns are gIoU. Wall time {summary['wall_time_s']:.0f} s. "
                 f"Full report: {out / 'eval'}")
    return "\n".join(lines) + "\n"
