"""The demo driver: recipes/demo.yaml run through the public pipeline on synthetic scenes, on 2 CPU cores.

    dtwinseg synth (train / val / test, <out>/synth.yaml)      -> build-dt with the oracle perception config
    -> programmatic Seg-DT records (train)                     -> compact SFT datasets (format.json beside)
    -> SFTDT training of the MiniLM base, one run per trained row and training seed
    -> dtwinseg eval of every row on val (trained rows) and test (all rows, baselines included)
    -> summary.json (how to reproduce each row with the CLI), bootstrap intervals, the markdown table

Every row is a checkpoint plus a reasoning config written to ``<out>/reasoning/<row>.yaml``: the trained
rows are model folders read in the compact format (dtwinseg.formats.compact), the baselines are
``baseline:KIND`` checkpoints (eval.baselines). ``summary.json``::

    {"synth_config": "runs/demo/synth.yaml", "perception_config": "recipes/perception/oracle.yaml",
     "main": "sftdt", "rows": {"sftdt": {"giou", "ciou", "giou_ci95": [lo, hi], "checkpoint",
     "reasoning_config", "dimensions", "val_giou", ...}, ...}, "oracle": {...}, "stage_times_s": {...}}

so ``dtwinseg synth --config <synth_config> --seed S`` + ``build-dt`` + ``dtwinseg eval -c <checkpoint>
--reasoning-config <reasoning_config>`` reproduces a row on any seed (:func:`check_seed` does exactly
that for ``check_seeds``).
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

from dtwinseg.config import build_dataclass, convert_fields
from dtwinseg.formats.base import DEFAULT_LOSS_WEIGHTS, UNWEIGHTED_LOSS, LossWeights
from dtwinseg.formats.compact import CompactOptions
from dtwinseg.io import DataError, atomic_write_json, atomic_write_text, load_yaml
from dtwinseg.reasoning.config import DECODINGS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = PROJECT_ROOT / "recipes" / "demo.yaml"
BASELINE_ROWS = ("random", "largest", "embedding", "constrained")


@dataclass
class DemoRow:
    """One trained row of the demo (``rows.<name>`` in the recipe; see DemoConfig.rows)."""

    target: str
    weighted: bool
    decoding: str = "generate"
    max_steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    format: dict | None = None
    freeze: list | None = None
    prefix_lm: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.prefix_lm, bool):
            raise DataError(None, "prefix_lm", "must be true or false")
        if self.prefix_lm and self.target != "object":
            raise DataError(None, "prefix_lm", "reads per-object prompts both ways: target: object only")
        if self.format is not None and not isinstance(self.format, dict):
            raise DataError(None, "format", "must be a mapping of compact format options")
        if self.freeze is not None and not all(isinstance(x, str) and x for x in self.freeze):
            raise DataError(None, "freeze", "must be a list of parameter name parts, e.g. [embeddings, "
                            "encoder.layer.0-1]")
        if self.format and "target" in self.format:
            raise DataError(None, "format.target", "the row's target is its own field 'target'")
        if self.target not in ("path", "answer", "object"):
            raise DataError(None, "target", "must be one of path, answer, object")
        if self.decoding not in DECODINGS:
            raise DataError(None, "decoding", f"must be one of {', '.join(DECODINGS)}")
        if self.target == "object" and self.decoding != "verdicts":
            raise DataError(None, "decoding", "target: object is read with decoding: verdicts")
        if self.target == "answer" and self.decoding == "verdicts":
            raise DataError(None, "decoding", "'verdicts' needs target: path or object")
        for key in ("max_steps", "batch_size", "learning_rate"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise DataError(None, key, "must be positive")


def _check_options(options: dict, where: str) -> None:
    """Compact options checked before anything is built; errors name ``<where>.<option>``."""
    try:
        CompactOptions.from_dict(options)
    except DataError as e:
        name = (e.field or "").removeprefix(CompactOptions.SECTION).lstrip(".")
        raise DataError(None, f"{where}.{name}" if name else where, e.message) from None


@dataclass
class DemoConfig:
    """Every knob of the demo; defaults and presets live in recipes/demo.yaml (see the comments there).

    seed: seed of the scenes. train_seeds: one training run per seed and row (rows of seeds after the
    first are named ``<row>-seed<k>``). check_seeds: extra test splits drawn with these seeds.
    rows: trained rows, ``{name: {"target": "path"|"answer"|"object", "weighted": bool,
        "decoding": "generate"|"verdicts", "max_steps", "batch_size", "learning_rate", "format"}}`` (decoding:
        how the row is evaluated, ReasoningConfig.decoding, default generate; max_steps, batch_size and
        learning_rate override the shared values for this row, and so does freeze (parameter name parts and
        layer ranges, e.g. ``[embeddings, encoder.layer.0-1]``); format: the row's own compact options over
        the shared ``format``, e.g. ``{facts: true}``; rows with the same options share one SFT dataset;
        prefix_lm: true (target: object rows) trains with prefix-LM attention, dtwinseg/prefix_lm.py: the
        prompt read both ways, as the base was pretrained).
        main: the headline row, or "auto": the trained row with the best val gIoU (the test split never
        chooses).
    format: compact format options shared by the trained rows (target set per row).
    padding_free: train on padding-free micro-batches (training/packing.py: the same loss and gradients,
        no compute on pad tokens; per-object examples vary 2-3x in length).
    threads: torch intra-op threads for the whole run (1: robust on a shared 2-core machine).
    jobs: trainings run at the same time (each ``dtwinseg train`` in its own process, ``threads`` threads;
        0: one after the other in this process).
    """

    seed: int = 0
    train_seeds: list = field(default_factory=lambda: [0])
    n_train: int = 700
    n_val: int = 70
    n_test: int = 280
    check_seeds: list = field(default_factory=list)
    synth: dict = field(default_factory=lambda: {"max_objects": 6})
    perception_config: str = "recipes/perception/oracle.yaml"
    format: dict = field(default_factory=lambda: {"id_position": "last", "echo": True})
    rows: dict = field(default_factory=lambda: {"sftdt": {"target": "path", "weighted": True}})
    main: str = "sftdt"
    baselines: list = field(default_factory=lambda: list(BASELINE_ROWS))
    max_steps: int = 140
    batch_size: int = 8
    learning_rate: float = 2e-4
    freeze: list = field(default_factory=lambda: ["embeddings"])
    dropout: float = 0.0
    bf16: bool = False
    padding_free: bool = True
    w_completion: float = DEFAULT_LOSS_WEIGHTS.completion
    w_decision: float = DEFAULT_LOSS_WEIGHTS.decision
    w_answer: float = DEFAULT_LOSS_WEIGHTS.answer
    threads: int = 1
    jobs: int = 3
    eval_batch_size: int = 16
    bootstrap: int = 1000
    presets: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.format, dict) or "target" in self.format:
            raise DataError(None, "format", "must be a mapping of compact format options without 'target' "
                            "(each row sets its own)")
        _check_options({**self.format, "target": "answer"}, "format")
        for name, spec in self.rows.items():
            if not isinstance(spec, dict) or not {"target", "weighted"} <= set(spec):
                raise DataError(None, f"rows.{name}", "expected {target: path|answer|object, weighted: bool"
                                "[, decoding: generate|verdicts, max_steps, batch_size, learning_rate, format, freeze]}")
            row = build_dataclass(DemoRow, spec, None, f"rows.{name}")  # strict: did-you-mean, typed values
            self.rows[name] = {k: v for k, v in asdict(row).items() if v is not None}
            _check_options(format_options(self, self.rows[name]), f"rows.{name}.format")
        if self.main != "auto" and self.main not in self.rows:
            raise DataError(None, "main", f"{self.main!r} is not 'auto' or one of the rows ({', '.join(self.rows)})")
        unknown = sorted(set(self.baselines) - set(BASELINE_ROWS))
        if unknown:
            raise DataError(None, "baselines", f"unknown baseline {unknown[0]!r}; known: {', '.join(BASELINE_ROWS)}")

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, preset: str | None = None) -> DemoConfig:
        """The recipe at ``path`` (default recipes/demo.yaml), with a preset's fields applied on top."""
        path = Path(path) if path else DEFAULT_RECIPE
        data = load_yaml(path)
        if preset:
            extra = (data.get("presets") or {}).get(preset)
            if extra is None:
                raise DataError(path, f"presets.{preset}", "no such preset")
            convert_fields(cls, extra, str(path), f"presets.{preset}")  # strict: did-you-mean, typed
            data = {**data, **extra}
        cfg = build_dataclass(cls, data, path)  # strict (dtwinseg.config): did-you-mean, typed values
        from dtwinseg.data_builders.synthetic import SynthConfig

        build_dataclass(SynthConfig, cfg.synth, path, "synth")  # the scene knobs too, before anything runs
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("presets")
        return d


# --- small helpers ---------------------------------------------------------------------------------
def rel(path: str | os.PathLike) -> str:
    """``path`` relative to the project root when it lies inside it (summary.json's convention)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(p)


def project_path(path: str | os.PathLike) -> Path:
    """A path from summary.json / the recipe: absolute as is, else relative to the project root."""
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (restored afterwards; n <= 0: unchanged).

    With 2 threads on a 2-core machine that another job also uses, every op waits for the descheduled
    thread (measured: best_subset 0.42 s per sample with 2 threads vs 0.02 s with 1)."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bootstrap_ci(values: list[float], n_boot: int, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the mean of ``values`` (resampling samples)."""
    if not values:
        return [0.0, 0.0]
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(max(1, n_boot), len(v)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def format_options(cfg: DemoConfig, spec: dict | str) -> dict:
    """Compact-format options of a row (``spec``: its row dict, or a bare target): the shared ``format``,
    the row's own ``format`` over it, and the row's target."""
    row = {"target": spec} if isinstance(spec, str) else spec
    return {**cfg.format, **(row.get("format") or {}), "target": row["target"]}


def data_key(spec: dict) -> str:
    """Name of a row's SFT dataset (``<out>/sft-<key>``): its target, then its own format options, so that
    rows with the same options share one dataset: ``object``, ``object-facts``, ``path-echo-false``."""
    extra = spec.get("format") or {}
    parts = [spec["target"]] + [k if v is True else f"{k}-{str(v).lower()}" for k, v in sorted(extra.items())]
    return "-".join(parts)


def reasoning_dict(model: str, options: dict, cfg: DemoConfig, decoding: str = "generate") -> dict:
    """The reasoning config of a row (what ``dtwinseg eval --reasoning-config`` reads); the generation
    budget is the format's own estimate for each twin (``max_new_tokens: auto``)."""
    return {"format": {"name": "compact", "options": options}, "backend": "transformers", "model": model,
            "device": "cpu", "dtype": "float32", "batch_size": cfg.eval_batch_size, "max_new_tokens": "auto",
            "decoding": decoding}


# --- stages ----------------------------------------------------------------------------------------
def write_scenes(cfg: DemoConfig, data: Path, out: Path, splits: dict[str, int], seed: int,
                 progress: bool) -> Path:
    """``dtwinseg synth`` into ``data``; the SynthConfig goes to ``out/synth.yaml`` (its --config)."""
    import json

    import yaml
    from dtwinseg.data_builders.synthetic import SynthConfig, write_dataset

    synth_yaml = out / "synth.yaml"
    scfg = SynthConfig.from_dict(cfg.synth)
    atomic_write_text(synth_yaml, yaml.safe_dump(scfg.to_dict(), sort_keys=False))
    made = data / "synthetic.json"
    if made.is_file():
        info = json.loads(made.read_text())
        same = info.get("seed") == seed and info.get("config") == json.loads(json.dumps(scfg.to_dict()))
        if same and {k: v["n"] for k, v in info.get("splits", {}).items()} == splits:
            return synth_yaml  # the same scenes are already there (same seed, config and sizes)
    write_dataset(data, splits, seed=seed, cfg=scfg, progress=progress, jobs=max(1, int(cfg.threads)))
    return synth_yaml


def build_twins(spec: str, perception_yaml: Path, cache_root: Path, progress: bool = True) -> Any:
    """``dtwinseg build-dt`` of one split with the perception config (oracle: ground-truth instances)."""
    from dtwinseg.data_builders.build_dt import build_dt

    from dtwinseg.perception.builder import PerceptionConfig

    cache, counts = build_dt(spec, PerceptionConfig.from_yaml(perception_yaml), cache_root, progress=progress)
    if counts.failed:
        raise RuntimeError(f"{counts.failed} twins failed for {spec}; see {cache.failures_path}")
    return cache


def build_records(spec: str, cache: Any, out: Path) -> tuple[list, dict]:
    """Programmatic Seg-DT records for every training sample (its twin from the cache)."""
    from dtwinseg.data_builders.programmatic import ProgrammaticConfig, programmatic_record
    from dtwinseg.data_builders.registry import open_dataset
    from dtwinseg.data_builders.segdt import write_records

    pcfg = ProgrammaticConfig()
    records, skipped = [], 0
    for s in open_dataset(spec):
        twin = cache.get(s.id)
        if twin is None:
            skipped += 1
            continue
        rec = programmatic_record(s.id, s.image_path, s.query, twin, s.gt_mask, cfg=pcfg,
                                  dimension=s.dimension, granularity=s.granularity)
        if rec.match_iou is not None and rec.match_iou < pcfg.min_iou:
            skipped += 1
            continue
        records.append(rec)
    write_records(out, records, inline_twin=True)
    return records, {"records": len(records), "skipped": skipped}


def compact_dataset(records: list, tokenizer: Any, options: dict, out: Path, rec_stats: dict) -> tuple[Path, dict]:
    """``dtwinseg build-sft --reasoning-config <row yaml>``: the records tokenised in the compact format
    (decision spans: the verdicts of a path; answer span: the id list), saved with its format.json.
    Token kinds are saved too, so the weighted and unweighted runs share one dataset."""
    from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig, build_sft_dataset, save_dataset

    from dtwinseg.formats import FormatConfig

    cfg = SFTDatasetConfig(max_length=512, format_name="compact", format=FormatConfig(options=options))
    ds, stats = build_sft_dataset(records, tokenizer, cfg)
    return save_dataset(ds, out, {"records": rec_stats, "dataset": stats}, cfg), stats


def training_recipe(cfg: DemoConfig, base: Path, data: Path, out: Path, weighted: bool, seed: int,
                    row: dict | None = None) -> dict:
    """The SFTDT recipe of one trained row (full fine-tuning of the small base, embeddings frozen); the
    row's own max_steps / batch_size / learning_rate / freeze win over the shared ones."""
    w = (LossWeights.of(cfg) if weighted else UNWEIGHTED_LOSS).flat()
    row = row or {}
    steps = int(row.get("max_steps", cfg.max_steps))
    return {
        "model": {"name_or_path": str(base), "dtype": "float32",
                  "kwargs": {"hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout},
                  "freeze": list(row.get("freeze", cfg.freeze))},
        "data": {"train": str(data), "eval": None},
        "lora": {"use_lora": False},
        "training": {"output_dir": str(out), "use_cpu": True, "bf16": cfg.bf16, "max_steps": steps,
                     "per_device_train_batch_size": int(row.get("batch_size", cfg.batch_size)),
                     "gradient_accumulation_steps": 1,
                     "learning_rate": float(row.get("learning_rate", cfg.learning_rate)), "lr_scheduler_type": "cosine",
                     "warmup_steps": max(1, steps // 20), "weight_decay": 0.0,
                     "gradient_checkpointing": False, "logging_steps": max(1, steps // 10),
                     "save_strategy": "no", "report_to": [], "seed": seed, "dataloader_num_workers": 0,
                     "use_token_kinds": True, **w, "padding_free": cfg.padding_free, "disable_tqdm": False,
                     **({"prefix_lm": True} if row.get("prefix_lm") else {})},
        "merge": {"enabled": False},
        "launch": {"num_processes": 1},
    }


def row_training_recipes(cfg: DemoConfig, out: Path, base: Path | None = None,
                         sft: dict[str, Path] | None = None) -> dict[str, tuple[dict, dict]]:
    """{label: (training recipe, row spec)} of every trained row and training seed of the demo in ``out``:
    what ``dtwinseg demo`` trains, and what ``dtwinseg train recipes/demo.yaml --dry-run`` checks. ``base``
    and ``sft`` default to the folders the demo writes (``out/base``, ``out/sft-<target>``)."""
    base = base or out / "base"
    sft = sft or {}
    runs = {}
    for k, seed in enumerate(cfg.train_seeds):
        for name, spec in cfg.rows.items():
            label = name if k == 0 else f"{name}-seed{seed}"
            data = sft.get(data_key(spec), out / f"sft-{data_key(spec)}")
            recipe = training_recipe(cfg, base, data, out / f"train-{label}", bool(spec["weighted"]), int(seed), spec)
            runs[label] = (recipe, spec)
    return runs


def train_all(out: Path, recipes: dict[str, dict], cfg: DemoConfig, log: Callable[[str], None],
              progress: bool = True) -> dict[str, Path]:
    """``dtwinseg train <recipe>`` for every run, ``cfg.jobs`` processes at a time; a run whose output
    folder already holds a model trained from the same recipe is reused. Returns {label: model folder}.
    ``progress: False`` hides the in-process trainer's progress bar (the saved recipe is unchanged)."""
    import subprocess
    import sys

    import yaml

    pending, running, done = [], [], {}
    for label, recipe in recipes.items():
        path = out / "recipes" / f"{label}.yaml"
        text = yaml.safe_dump(recipe, sort_keys=False)
        model = Path(recipe["training"]["output_dir"])
        if path.is_file() and path.read_text() == text and (model / "config.json").is_file():
            log(f"[demo] {label}: reusing {model}")
            done[label] = model
            continue
        atomic_write_text(path, text)
        pending.append((label, path, model))
    if cfg.jobs <= 0:  # in this process, one after the other (no process start-up: the quick preset)
        from dtwinseg.training.run import train_from_recipe

        for label, path, model in pending:
            t = time.time()
            recipe = load_yaml(path)
            if not progress:
                recipe["training"]["disable_tqdm"] = True
            train_from_recipe(recipe)
            log(f"[demo] trained {label} in {time.time() - t:.0f} s")
            done[label] = model
        return done
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cfg.threads)), "TOKENIZERS_PARALLELISM": "false"}
    while pending or running:
        while pending and len(running) < max(1, cfg.jobs):
            label, path, model = pending.pop(0)
            logf = open(out / f"train-{label}.log", "w")  # noqa: SIM115 - closed when the process ends
            proc = subprocess.Popen([sys.executable, "-m", "dtwinseg.cli", "train", str(path)], cwd=PROJECT_ROOT, env=env,
                                    stdout=logf, stderr=subprocess.STDOUT)
            running.append((label, model, proc, logf, time.time()))
            log(f"[demo] training {label} (log: {out / f'train-{label}.log'})")
        time.sleep(1.0)
        for item in list(running):
            label, model, proc, logf, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            logf.close()
            if proc.returncode != 0:
                for _, _, other, f, _ in running:
                    other.kill()
                    f.close()
                raise RuntimeError(f"training {label} failed (exit {proc.returncode}); see {out / f'train-{label}.log'}")
            log(f"[demo] trained {label} in {time.time() - start:.0f} s")
            done[label] = model
    return done


def row_checkpoint(label: str, checkpoint: str, reasoning_yaml: Path) -> Any:
    """The eval Checkpoint of a row as ``dtwinseg eval -c LABEL=CHECKPOINT --reasoning-config YAML`` run
    from the project root builds it (relative paths are taken from the project root)."""
    from dtwinseg.eval.checkpoints import parse_checkpoint

    from dtwinseg.reasoning import ReasoningConfig

    def local(path: str) -> str:  # base:NAME / package:... specs resolve themselves
        return path if path.startswith(("base:", "package:")) else str(project_path(path))

    if checkpoint.startswith("baseline:constrained:"):
        checkpoint = "baseline:constrained:" + local(checkpoint.split(":", 2)[2])
    elif not checkpoint.startswith("baseline:"):
        checkpoint = local(checkpoint)
    return parse_checkpoint(f"{label}={checkpoint}", ReasoningConfig.from_yaml(reasoning_yaml))


def write_row_config(out: Path, name: str, rdict: dict) -> Path:
    import yaml

    path = out / "reasoning" / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(rdict, sort_keys=False))
    return path


# --- the whole run ---------------------------------------------------------------------------------
def run_demo(out: str | os.PathLike, cfg: DemoConfig | None = None, *, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run every stage into ``out`` with ``cfg.threads`` torch threads; returns the summary (also
    written to ``out/summary.json``)."""
    cfg = cfg or DemoConfig.load()
    with torch_threads(cfg.threads):
        return _run_stages(Path(out), cfg, progress, log)


def _run_stages(out: Path, cfg: DemoConfig, progress: bool, log: Callable[[str], None]) -> dict:
    from dtwinseg.data_builders.sft_dataset import load_tokenizer

    from dtwinseg.base_models import prepare_base_model

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    times: dict[str, float] = {}

    def stage(name: str, t: float) -> None:
        times[name] = round(time.time() - t, 1)
        log(f"[demo] {name}: {times[name]:.1f} s")

    t = time.time()
    data = out / "data"
    synth_yaml = write_scenes(cfg, data, out, {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test},
                              cfg.seed, progress)
    stage("synthetic scenes", t)

    t = time.time()
    perception = project_path(cfg.perception_config)
    specs = {s: f"synthetic:{data}:{s}" for s in ("train", "val", "test")}
    caches = {s: build_twins(spec, perception, out / "dt", progress) for s, spec in specs.items()}
    stage("oracle twins", t)

    t = time.time()
    records, rec_stats = build_records(specs["train"], caches["train"], out / "segdt.jsonl")
    base = prepare_base_model(out / "base")
    tok = load_tokenizer(str(base))
    sft: dict[str, Path] = {}
    for key, spec in sorted({data_key(spec): spec for spec in cfg.rows.values()}.items()):
        sft[key], ds_stats = compact_dataset(records, tok, format_options(cfg, spec), out / f"sft-{key}", rec_stats)
        log(f"[demo] {key}: {ds_stats['examples']} examples, {ds_stats['mean_tokens']:.0f} tokens on average")
    stage("Seg-DT records + SFT datasets", t)

    t = time.time()
    runs = row_training_recipes(cfg, out, base, sft)
    models = train_all(out, {k: r for k, (r, _) in runs.items()}, cfg, log, progress)
    trained = {label: (models[label], spec) for label, (_, spec) in runs.items()}
    stage(f"training ({len(runs)} runs, {cfg.jobs} at a time)", t)

    rows: dict[str, dict] = {}
    for label, (model, spec) in trained.items():
        decoding = spec.get("decoding", "generate")
        rdict = reasoning_dict(rel(model), format_options(cfg, spec), cfg, decoding)
        rows[label] = {"checkpoint": rel(model), "reasoning_config": rel(write_row_config(out, label, rdict)),
                       "trained": {"target": spec["target"], "weighted": bool(spec["weighted"]),
                                   "steps": int(spec.get("max_steps", cfg.max_steps)),
                                   "batch_size": int(spec.get("batch_size", cfg.batch_size)), "decoding": decoding,
                                   "format": format_options(cfg, spec),
                                   **({"prefix_lm": True} if spec.get("prefix_lm") else {})}}
    answer_yaml = write_row_config(out, "baselines", reasoning_dict(rel(base), format_options(cfg, "answer"), cfg))
    for kind in cfg.baselines:
        ck = f"baseline:{kind}" + (f":{rel(base)}" if kind == "constrained" else "")
        rows[kind] = {"checkpoint": ck, "reasoning_config": rel(answer_yaml), "trained": None}

    t = time.time()
    val = evaluate_rows(specs["val"], caches["val"].folder, {k: v for k, v in rows.items() if k in trained},
                        out / "eval-val", cfg, progress, log)
    stage("evaluation (val)", t)
    t = time.time()
    test = evaluate_rows(specs["test"], caches["test"].folder, rows, out / "eval", cfg, progress, log)
    stage("evaluation (test)", t)

    for label, row in rows.items():
        row.update(test["rows"][label])
        if label in val["rows"]:
            row["val_giou"] = val["rows"][label]["giou"]
    main = cfg.main if cfg.main != "auto" else choose_main(rows)
    summary = {"synth_config": rel(synth_yaml), "perception_config": rel(perception), "main": main,
               "main_chosen_by": "recipe" if cfg.main != "auto" else "val_giou",
               "rows": rows, "oracle": test["oracle"], "test": {"seed": cfg.seed, "n": test["n"]},
               "val": {"seed": cfg.seed, "n": val["n"]}, "wall_time_s": 0.0, "stage_times_s": times,
               "config": cfg.to_dict()}
    for seed in cfg.check_seeds:
        t = time.time()
        summary.setdefault("check_seeds", {})[str(seed)] = check_seed(summary, int(seed), out / f"check-seed{seed}",
                                                                      progress=progress, log=log)
        stage(f"check on seed {seed}", t)
    summary["wall_time_s"] = round(time.time() - t0, 1)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "README.md", demo_markdown(summary, out))
    return summary


def choose_main(rows: dict[str, dict]) -> str:
    """The trained row with the best val gIoU (ties: the first in the recipe's order); never test numbers."""
    trained = [k for k, r in rows.items() if r.get("trained")]
    return max(trained, key=lambda k: (rows[k].get("val_giou") or 0.0, -trained.index(k)))


def evaluate_rows(spec: str, cache_folder: Path, rows: dict[str, dict], out: Path, cfg: DemoConfig,
                  progress: bool, log: Callable[[str], None]) -> dict:
    """Evaluate every row (checkpoint + reasoning config) with the harness; per row gIoU, cIoU, the
    bootstrap interval of gIoU and per-dimension gIoU, plus the oracle bound and the sample count."""
    from dtwinseg.eval.harness import EvalOptions, evaluate
    from dtwinseg.eval.records import load_records

    cks = [row_checkpoint(label, r["checkpoint"], project_path(r["reasoning_config"])) for label, r in rows.items()]
    metrics = evaluate(spec, cache_folder, cks, out, EvalOptions(progress=progress, restart=True), log=log) or {}
    result: dict[str, Any] = {"rows": {}, "oracle": None, "n": 0}
    for label in rows:
        m = metrics.get("checkpoints", {}).get(label, {})
        overall = _overall(m)
        recs = [r for p in sorted((out / label).glob("predictions*.jsonl")) for r in load_records(p)
                if r.get("kind") != "input_error"]
        result["n"] = max(result["n"], len(recs))
        result["rows"][label] = {
            "giou": overall.get("giou"), "ciou": overall.get("ciou"),
            "giou_ci95": bootstrap_ci([float(r["iou"]) for r in recs], cfg.bootstrap),
            "dimensions": {d: v.get("giou") for d, v in sorted(m.get("dimensions", {}).items())},
            "parse": m.get("parse", {}), "truncated": m.get("truncated", 0)}
        if result["oracle"] is None and "oracle_giou" in overall:
            result["oracle"] = {"giou": overall["oracle_giou"], "ciou": overall["oracle_ciou"]}
    return result


def _overall(m: dict) -> dict:
    groups = m.get("groups", {})
    for key in ("overall", "all"):
        if key in groups:
            return groups[key]
    return next(iter(groups.values())) if groups else {}


def check_seed(summary: dict, seed: int, out: Path, *, n_test: int | None = None, progress: bool = True,
               log: Callable[[str], None] = print) -> dict:
    """Reproduce every row of ``summary`` on a test split drawn with ``seed``, only from what summary.json
    names: synth config -> scenes, perception config -> twins, checkpoint + reasoning config -> eval."""
    from dtwinseg.data_builders.synthetic import SynthConfig, write_dataset

    cfg = DemoConfig(**{k: v for k, v in summary["config"].items() if k != "presets"})
    n = n_test if n_test is not None else cfg.n_test
    data = out / "data"
    write_dataset(data, {"test": n}, seed=seed, cfg=SynthConfig.from_yaml(project_path(summary["synth_config"])),
                  progress=progress)
    spec = f"synthetic:{data}:test"
    cache = build_twins(spec, project_path(summary["perception_config"]), out / "dt", progress)
    rows = {k: {"checkpoint": r["checkpoint"], "reasoning_config": r["reasoning_config"]}
            for k, r in summary["rows"].items()}
    res = evaluate_rows(spec, cache.folder, rows, out / "eval", cfg, progress, log)
    return {"n": res["n"], "rows": {k: {"giou": v["giou"], "ciou": v["ciou"], "giou_ci95": v["giou_ci95"],
                                        "dimensions": v["dimensions"]} for k, v in res["rows"].items()}}


# --- the table -------------------------------------------------------------------------------------
def demo_markdown(summary: dict, out: Path) -> str:
    """The comparison table (gIoU / cIoU x100 with the gIoU interval, per-dimension gIoU) as markdown."""
    rows = summary["rows"]
    dims = sorted({d for r in rows.values() for d in r.get("dimensions", {})})

    def f(x: Any) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    lines = ["| row | gIoU | 95% CI | cIoU | val gIoU | " + " | ".join(dims) + " | parse failed | trained |",
             "|---|---|---|---|---|" + "---|" * len(dims) + "---|---|"]
    for name, r in rows.items():
        lo, hi = r.get("giou_ci95") or (None, None)
        parse = r.get("parse") or {}
        what = r.get("trained")
        what = "untrained" if not what else (f"{what['target']}, {'weighted' if what['weighted'] else 'unweighted'}"
                                             + (", forced verdicts" if what.get("decoding") == "verdicts" else ""))
        mark = " (main)" if name == summary.get("main") else ""
        lines.append(f"| {name}{mark} | {f(r.get('giou'))} | {f(lo)}-{f(hi)} | {f(r.get('ciou'))} | "
                     f"{f(r.get('val_giou'))} | " + " | ".join(f(r.get('dimensions', {}).get(d)) for d in dims)
                     + f" | {parse.get('failed', 0)} | {what} |")
    o = summary.get("oracle") or {}
    lines.append(f"| oracle bound | {f(o.get('giou'))} | | {f(o.get('ciou'))} | |" + " |" * len(dims) + " | |")
    lines.append("")
    n = summary.get("test", {}).get("n")
    lines.append(f"Test split: {n} scenes (seed {summary.get('test', {}).get('seed')}); per-dimension columns "
                 f"are gIoU. Wall time {summary['wall_time_s']:.0f} s. Report: {out / 'eval'}")
    for seed, res in (summary.get("check_seeds") or {}).items():
        cells = ", ".join(f"{k} {f(v['giou'])}" for k, v in res["rows"].items())
        lines.append(f"Seed {seed} test split ({res['n']} scenes), gIoU: {cells}")
    return "\n".join(lines) + "\n"
