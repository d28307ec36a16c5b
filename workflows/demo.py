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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from dtwinseg.training.recipe import Recipe, recipe_from_dict

from dtwinseg.config import build_dataclass, convert_fields
from dtwinseg.formats.base import DEFAULT_LOSS_WEIGHTS, UNWEIGHTED_LOSS, LossWeights
from dtwinseg.formats.compact import CompactOptions
from dtwinseg.io import DataError, atomic_write_json, atomic_write_text, load_yaml
from dtwinseg.reasoning.config import DECODINGS
from dtwinseg.reasoning.similarity import DEFAULT_EMBEDDING_MODEL
from dtwinseg.runtime import torch_threads

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = PROJECT_ROOT / "recipes" / "demo.yaml"
BASELINE_ROWS = ("random", "largest", "lexical", "embedding", "constrained")
LABELS = ("best_subset", "inside", "inside_parts")


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
    negatives: int | None = None
    verdict_margin: Any = None
    similarity_prior: Any = None

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
        vm = self.verdict_margin
        if vm is not None and not (vm == "auto" or (isinstance(vm, int | float) and not isinstance(vm, bool)
                                                    and -50 <= vm <= 50)):
            raise DataError(None, "verdict_margin", f"'auto' or a number in [-50, 50], got {vm!r}")
        if vm is not None and self.decoding != "verdicts":
            raise DataError(None, "verdict_margin", "applies to decoding: verdicts")
        sp = self.similarity_prior
        if sp is not None and not (sp is True or (isinstance(sp, str) and sp.strip())):
            raise DataError(None, "similarity_prior", f"true (the shipped MiniLM), retriever (the demo's trained "
                            f"retriever) or a sentence encoder's folder / Hub id, got {sp!r}")
        if sp is not None and self.decoding != "verdicts":
            raise DataError(None, "similarity_prior", "applies to decoding: verdicts")
        if self.negatives is not None and (self.target != "object" or self.negatives < 0):
            raise DataError(None, "negatives", "a number >= 0 of 'no' objects kept per record, target: object only")
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
    n_test_seen: size of the seen-phrasing test split (``test_seen``, realistic profile): the test scenes,
        masks and targets worded and phrased as in training, beside the unseen-phrasing ``test`` (0: none).
    labels: what a per-object row learns to call "yes": "best_subset" (the objects of the Seg-DT record's
        answer, the union that best matches the ground truth) or "inside" (the objects lying 80% inside the
        ground truth but not inside another such object: the target whole, its pieces and near-duplicates,
        not its parts; used when that union is within 0.05 IoU of the best subset; :func:`inside_ids`) or
        "inside_parts" (the same with the target's parts).
    rows: trained rows, ``{name: {"target": "path"|"answer"|"object", "weighted": bool,
        "decoding": "generate"|"verdicts", "max_steps", "batch_size", "learning_rate", "format"}}`` (decoding:
        how the row is evaluated, ReasoningConfig.decoding, default generate; max_steps, batch_size and
        learning_rate override the shared values for this row, and so does freeze (parameter name parts and
        layer ranges, e.g. ``[embeddings, encoder.layer.0-1]``); format: the row's own compact options over
        the shared ``format``, e.g. ``{facts: true}``; rows with the same options share one SFT dataset;
        prefix_lm: true (target: object rows) trains with prefix-LM attention, dtwinseg/prefix_lm.py: the
        prompt read both ways, as the base was pretrained; negatives (target: object rows): keep each record's
        "yes" objects and at most this many "no" ones, half the most confusable, :func:`chosen_negatives`;
        verdict_margin (decoding: verdicts): the margin log p(yes) - log p(no) above which an object is
        judged yes, a number or "auto": chosen on val among MARGINS after the val evaluation,
        :func:`choose_margin`); similarity_prior (decoding: verdicts): true (the shipped MiniLM, untrained),
        ``retriever`` (the demo's trained retriever, below) or a sentence encoder: its query-line similarity
        decides among the objects when none clears the margin (ReasoningConfig.similarity_prior; with
        verdict_margin: auto its temperature is chosen on val too).
    retriever: train a retriever (dtwinseg.training.retriever, ``dtwinseg train-retriever``) on the Seg-DT
        records: the fields of RetrieverConfig other than records / output_dir / labels / device (labels
        follow ``labels``); its lines are those of the first row whose similarity_prior is ``retriever`` (else
        the first row) unless it sets ``format`` (one of the rows' options). It is a row of the table
        (``retriever``: the objects within a similarity window of the best, as baseline:embedding reads an
        encoder, the window chosen on val, :func:`choose_window`) and the prior of the rows that name it.
        main: the headline row, or "auto": the trained row with the best val gIoU (the test split never
        chooses).
    format: compact format options shared by the trained rows (target set per row).
    padding_free: train on padding-free micro-batches (training/packing.py: the same loss and gradients,
        no compute on pad tokens; per-object examples vary 2-3x in length).
    threads: torch intra-op threads for the whole run (1: robust on a shared 2-core machine).
    jobs: trainings run at the same time (each ``dtwinseg train`` in its own process, ``threads`` threads;
        0: one after the other in this process).
    eval_dtype: weights of the trained rows (and the zero-shot base) at evaluation: float32 or bfloat16
        (bf16 matrix units make CPU evaluation about twice as fast; the demo's table says which was used).
    """

    seed: int = 0
    train_seeds: list = field(default_factory=lambda: [0])
    n_train: int = 700
    n_val: int = 70
    n_test: int = 280
    n_test_seen: int = 0
    labels: str = "best_subset"
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
    eval_dtype: str = "float32"
    bootstrap: int = 1000
    retriever: dict | None = None
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
        if self.eval_dtype not in ("float32", "bfloat16"):
            raise DataError(None, "eval_dtype", f"must be float32 or bfloat16, got {self.eval_dtype!r}")
        if self.labels not in LABELS:
            raise DataError(None, "labels", f"must be one of {', '.join(LABELS)}, got {self.labels!r}")
        if self.n_test_seen < 0:
            raise DataError(None, "n_test_seen", f"must be >= 0, got {self.n_test_seen}")
        if self.n_test_seen and self.synth.get("profile", "basic") != "realistic":
            raise DataError(None, "n_test_seen", "the seen-phrasing test split needs synth.profile: realistic "
                            "(the basic profile words every split alike)")
        if self.retriever is not None:
            fixed = sorted(set(self.retriever) & {"records", "output_dir", "labels", "device"})
            if fixed:
                raise DataError(None, f"retriever.{fixed[0]}", "set by the demo (its records, folder, labels, device)")
            lines = self.retriever_config(Path("runs/demo")).format  # typed and checked now, before anything runs
            if not any(_same_lines(lines, format_options(self, r)) for r in self.rows.values()):
                raise DataError(None, "retriever.format", "no trained row reads these lines: give one row's format "
                                "options (or leave it out: the lines of the row that uses the retriever)")
        wants = [k for k, r in self.rows.items() if r.get("similarity_prior") == "retriever"]
        if wants and self.retriever is None:
            raise DataError(None, f"rows.{wants[0]}.similarity_prior", "'retriever' needs a retriever section "
                            "(the demo's trained retriever)")
        if "retriever" in self.rows and self.retriever is not None:
            raise DataError(None, "rows.retriever", "the name of the trained retriever's row; call this row otherwise")
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

    def retriever_config(self, out: Path) -> Any:
        """The RetrieverConfig of the demo's retriever (``retriever`` section) writing ``out/retriever``."""
        from dtwinseg.training.retriever import RetrieverConfig

        spec = dict(self.retriever or {})
        if "format" not in spec and self.rows:
            user = next((r for r in self.rows.values() if r.get("similarity_prior") == "retriever"),
                        next(iter(self.rows.values())))
            spec["format"] = format_options(self, user)
        spec.setdefault("threads", self.threads)
        return build_dataclass(RetrieverConfig, {
            **spec, "records": str(out / "segdt.jsonl"), "output_dir": str(out / "retriever"),
            "labels": "answer" if self.labels == "best_subset" else "inside"}, None, "retriever")


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


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (all threads): what a stage costs
    whatever else the machine runs (its wall time on a shared machine is not the demo's)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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
    if spec.get("negatives") is not None:
        parts.append(f"negatives-{spec['negatives']}")
    return "-".join(parts)


def reasoning_dict(model: str, options: dict, cfg: DemoConfig, decoding: str = "generate") -> dict:
    """The reasoning config of a row (what ``dtwinseg eval --reasoning-config`` reads); the generation
    budget is the format's own estimate for each twin (``max_new_tokens: auto``)."""
    return {"format": {"name": "compact", "options": options}, "backend": "transformers", "model": model,
            "device": "cpu", "dtype": cfg.eval_dtype, "batch_size": cfg.eval_batch_size, "max_new_tokens": "auto",
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


def _build_shard(spec: str, perception_yaml: str, cache_root: str, shard: tuple[int, int],
                 records: bool, paths: bool = True, labels: str = "inside") -> tuple[int, list, int]:
    """One worker's ``dtwinseg build-dt --shard``, then (``records``) the Seg-DT records of the same
    samples: (failed twins, [(dataset position, record)], samples without a record)."""
    from dtwinseg.data_builders.build_dt import build_dt

    from dtwinseg.perception.builder import PerceptionConfig
    from dtwinseg.runtime import shard_indices

    cache, counts = build_dt(spec, PerceptionConfig.from_yaml(perception_yaml), cache_root, shard=shard,
                             progress=False)
    if not records:
        return counts.failed, [], 0
    from dtwinseg.data_builders.registry import open_dataset

    positions = shard_indices(len(open_dataset(spec)), shard)
    got, skipped = records_at(spec, cache, positions, paths, labels)
    return counts.failed, got, skipped


def build_all_twins(specs: dict[str, str], perception_yaml: Path, cache_root: Path, jobs: int,
                    progress: bool = True, records_of: str | None = None,
                    paths: bool = True, labels: str = "inside") -> tuple[dict[str, Any], list, int]:
    """The twins of every split, and the programmatic Seg-DT records of split ``records_of``: ``jobs`` worker
    processes, each building shards as ``dtwinseg build-dt --shard k/jobs`` does (a twin depends only on its
    sample and the config, so the cache is the same as one process's; records come back in dataset order);
    in this process when ``jobs`` <= 1. Returns (caches by split, records, samples without a record)."""
    from dtwinseg.data_builders.dt_cache import DTCache

    if jobs <= 1:
        caches = {s: build_twins(spec, perception_yaml, cache_root, progress) for s, spec in specs.items()}
        if records_of is None:
            return caches, [], 0
        from dtwinseg.data_builders.registry import open_dataset

        got, skipped = records_at(specs[records_of], caches[records_of],
                                  list(range(len(open_dataset(specs[records_of])))), paths, labels)
        return caches, [r for _, r in got], skipped
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    tasks = [(spec, (k, jobs), name == records_of) for name, spec in specs.items() for k in range(jobs)]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_build_shard, *zip(*[(spec, str(perception_yaml), str(cache_root), shard, rec, paths,
                                                    labels) for spec, shard, rec in tasks], strict=True)))
    failed = sum(d[0] for d in done)
    if failed:
        raise RuntimeError(f"{failed} twins failed; see the failures.jsonl of the cache under {cache_root}")
    records = [r for _, r in sorted((pr for d in done for pr in d[1]), key=lambda pr: pr[0])]
    from dtwinseg.data_builders.build_dt import cache_config

    from dtwinseg.perception.builder import PerceptionConfig

    cache = DTCache.create(cache_root, cache_config(PerceptionConfig.from_yaml(perception_yaml)))
    return {s: cache for s in specs}, records, sum(d[2] for d in done)  # one folder holds every split's twins


def build_twins(spec: str, perception_yaml: Path, cache_root: Path, progress: bool = True) -> Any:
    """``dtwinseg build-dt`` of one split with the perception config (oracle: ground-truth instances)."""
    from dtwinseg.data_builders.build_dt import build_dt

    from dtwinseg.perception.builder import PerceptionConfig

    cache, counts = build_dt(spec, PerceptionConfig.from_yaml(perception_yaml), cache_root, progress=progress)
    if counts.failed:
        raise RuntimeError(f"{counts.failed} twins failed for {spec}; see {cache.failures_path}")
    return cache


def build_records(spec: str, cache: Any, out: Path) -> tuple[list, dict]:
    """Programmatic Seg-DT records for every training sample (its twin from the cache), written to ``out``."""
    from dtwinseg.data_builders.registry import open_dataset
    from dtwinseg.data_builders.segdt import write_records

    got, skipped = records_at(spec, cache, list(range(len(open_dataset(spec)))))
    records = [r for _, r in got]
    write_records(out, records, inline_twin=True)
    return records, {"records": len(records), "skipped": skipped}


def records_at(spec: str, cache: Any, positions: list[int], paths: bool = True,
               labels: str = "inside") -> tuple[list[tuple[int, Any]], int]:
    """``dtwinseg build-segdt`` for the samples at ``positions`` of a split: [(position, record)] and how many
    had no twin or a best union under ``min_iou``. Each record also holds its ``inside`` objects (and their
    union's IoU, ``inside_iou``): :func:`inside_ids`. ``paths: False`` (every trained row judges one object
    at a time and reads only the answer): a one-step path to the best union instead of the programmatic
    reasoning path, which costs most of the time here."""
    from dtwinseg.data_builders.programmatic import ProgrammaticConfig, programmatic_record
    from dtwinseg.data_builders.registry import open_dataset

    pcfg = ProgrammaticConfig()
    dataset = open_dataset(spec)
    records, skipped = [], 0
    for k in positions:
        s = dataset[k]
        twin = cache.get(s.id)
        if twin is None:
            skipped += 1
            continue
        if paths:
            rec = programmatic_record(s.id, s.image_path, s.query, twin, s.gt_mask, cfg=pcfg,
                                      dimension=s.dimension, granularity=s.granularity)
        else:
            rec = answer_record(s, twin)
        if rec.match_iou is not None and rec.match_iou < pcfg.min_iou:
            skipped += 1
            continue
        rec.extra["inside"], rec.extra["inside_iou"] = inside_ids(twin, s.gt_mask, parts=labels == "inside_parts")
        records.append((k, rec))
    return records, skipped


def answer_record(sample: Any, twin: Any) -> Any:
    """A Seg-DT record whose path is one step keeping the best union of twin objects (``path_kind: answer``)."""
    from dtwinseg.data_builders.segdt import SegDTRecord

    from dtwinseg.metrics import best_subset

    ids, iou = best_subset(twin.masks(), sample.gt_mask, twin.ids)
    return SegDTRecord(id=sample.id, image=sample.image_path, query=sample.query, twin=twin, path=one_step_path(twin, ids),
                       granularity=int(twin.granularity if sample.granularity is None else sample.granularity),
                       dimension=sample.dimension, match_iou=iou, source="programmatic", extra={"path_kind": "answer"})


def one_step_path(twin: Any, keep_ids: list[int], why: str = "the best union") -> Any:
    """A one-step reasoning path that keeps ``keep_ids`` and drops every other object."""
    from dtwinseg.formats.sftdt import Decision, PathStep, ReasoningPath

    keep = set(keep_ids)
    step = PathStep({o.id: Decision("keep" if o.id in keep else "drop", o.semantic,
                                    f"in {why}" if o.id in keep else f"not in {why}") for o in twin.objects})
    return ReasoningPath([step], sorted(keep))


def inside_ids(twin: Any, gt_mask: np.ndarray, share: float = 0.8, parts: bool = False) -> tuple[list[int], float]:
    """The twin objects a per-object verdict should call "yes": those lying (``share`` of their valid pixels)
    inside the ground truth - the target, its pieces and near-duplicates, a blob on it - except the ones lying
    inside another of them at least 10% larger (a part of the target whole: the whole answers for it, and
    telling whose part a part is costs a model far more than telling what a whole is); and the IoU of their
    union with the ground truth (``parts``: the parts of the target too). The best subset, a union chosen for
    its IoU, calls a part "yes" in one scene and "no" in the next."""
    valid = gt_mask != 255
    target = (gt_mask == 1) & valid
    inside: list[tuple[int, np.ndarray, int]] = []
    for o in twin.objects:
        m = o.mask() & valid
        n = int(np.count_nonzero(m))
        if n and np.count_nonzero(m & target) >= share * n:
            inside.append((o.id, m, n))
    keep, union = [], np.zeros_like(target)
    for i, m, n in inside:
        if not parts and any(n2 >= 1.1 * n and np.count_nonzero(m & m2) >= share * n for j, m2, n2 in inside if j != i):
            continue
        keep.append(i)
        union |= m
    total = np.count_nonzero(union | target)
    return keep, round(float(np.count_nonzero(union & target) / total), 6) if total else 1.0


def relabelled(records: list) -> list:
    """The records with each answer replaced by its ``inside`` objects (a one-step path that keeps them),
    where that union matches the ground truth nearly as well as the best subset (within 0.05 IoU); used for
    per-object targets (``labels: inside``), whose examples read only the answer."""
    from dataclasses import replace

    from dtwinseg.data_builders.segdt import inside_answer

    out = []
    for rec in records:
        inside = inside_answer(rec)
        if inside != sorted(rec.path.answer):
            rec = replace(rec, path=one_step_path(rec.twin, inside, "the target"))
        out.append(rec)
    return out


def compact_dataset(records: list, tokenizer: Any, options: dict, out: Path, rec_stats: dict,
                    negatives: int | None = None, seed: int = 0) -> tuple[Path, dict]:
    """``dtwinseg build-sft --reasoning-config <row yaml>``: the records tokenised in the compact format
    (decision spans: the verdicts of a path; answer span: the id list), saved with its format.json.
    Token kinds are saved too, so the weighted and unweighted runs share one dataset. ``negatives`` (the
    per-object target): keep each record's "yes" objects and at most that many "no" objects
    (:func:`chosen_negatives`)."""
    from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig, build_sft_dataset, save_dataset

    from dtwinseg.formats import FormatConfig

    cfg = SFTDatasetConfig(max_length=512, format_name="compact", format=FormatConfig(options=options))
    ds, stats = build_sft_dataset(records, tokenizer, cfg)
    if negatives is not None and options.get("target") == "object":
        keep = set()
        for rec in records:
            chosen = set(rec.path.answer) | set(chosen_negatives(rec, negatives, seed))
            keep |= {f"{rec.id}#{i}" for i in chosen}
        ds = ds.select([k for k, row_id in enumerate(ds["id"]) if row_id in keep])
        stats = {**stats, "examples": len(ds), "negatives_per_record": negatives}
    return save_dataset(ds, out, {"records": rec_stats, "dataset": stats}, cfg), stats


def chosen_negatives(rec: Any, k: int, seed: int = 0) -> list[int]:
    """Up to ``k`` "no" objects of a record: half of them the ones whose description shares the most words
    with the query (the confusable ones: same kind, same colour), the rest drawn at random (seeded by the
    record id)."""
    import hashlib
    import re

    answer = set(rec.path.answer)
    words = set(re.findall(r"[a-z]+", rec.query.lower()))
    no = [o for o in rec.twin.objects if o.id not in answer]
    if len(no) <= k:
        return [o.id for o in no]
    overlap = sorted(no, key=lambda o: (-len(words & set(re.findall(r"[a-z]+", o.semantic.lower()))), o.id))
    hard = [o.id for o in overlap[: k // 2]]
    rest = [o.id for o in no if o.id not in hard]
    h = hashlib.sha256(f"{seed}\0{rec.id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(h[:8], "big"))
    return hard + [rest[int(i)] for i in rng.choice(len(rest), size=k - len(hard), replace=False)]


def training_recipe(cfg: DemoConfig, base: Path, data: Path, out: Path, weighted: bool, seed: int,
                    row: dict | None = None) -> Recipe:
    """The typed SFTDT recipe of one trained row (full fine-tuning of the small base, embeddings frozen),
    checked as ``dtwinseg train`` checks a recipe file; the row's own max_steps / batch_size /
    learning_rate / freeze win over the shared ones."""
    w = (LossWeights.of(cfg) if weighted else UNWEIGHTED_LOSS).flat()
    row = row or {}
    steps = int(row.get("max_steps", cfg.max_steps))
    return recipe_from_dict({
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
    })


def row_training_recipes(cfg: DemoConfig, out: Path, base: Path | None = None,
                         sft: dict[str, Path] | None = None) -> dict[str, tuple[Recipe, dict]]:
    """{label: (training recipe, row spec)} of every trained row and training seed of the demo in ``out``:
    what ``dtwinseg demo`` trains, and what ``dtwinseg train recipes/demo.yaml --dry-run`` checks. ``base``
    and ``sft`` default to the folders the demo writes (``out/base``, ``out/sft-<target>``)."""
    base = base or out / "base"
    sft = sft or {}
    runs = {}
    for label, seed, spec in seeded_rows(cfg.train_seeds, cfg.rows):
        data = sft.get(data_key(spec), out / f"sft-{data_key(spec)}")
        recipe = training_recipe(cfg, base, data, out / f"train-{label}", bool(spec["weighted"]), int(seed), spec)
        runs[label] = (recipe, spec)
    return runs


def seeded_rows(train_seeds: list[int], rows: dict[str, dict]) -> Iterator[tuple[str, int, dict]]:
    """(label, training seed, row spec) of every trained row and seed: the first seed keeps the row's name,
    the others are ``<row>-seed<S>`` (the demo's and the paper preset's run labels)."""
    for k, seed in enumerate(train_seeds):
        for name, spec in rows.items():
            yield (name if k == 0 else f"{name}-seed{seed}"), int(seed), spec


def train_all(out: Path, recipes: dict[str, Recipe], cfg: DemoConfig, log: Callable[[str], None],
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
        text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
        model = recipe.output_dir
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
    from dtwinseg.data_builders.segdt import write_records
    from dtwinseg.data_builders.sft_dataset import load_tokenizer

    from dtwinseg.base_models import prepare_base_model

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    last_cpu = [cpu_seconds()]

    def stage(name: str, t: float) -> None:
        times[name] = round(time.time() - t, 1)
        now = cpu_seconds()
        cpu[name], last_cpu[0] = round(now - last_cpu[0], 1), now
        log(f"[demo] {name}: {times[name]:.1f} s ({cpu[name]:.1f} s of CPU)")

    t = time.time()
    data = out / "data"
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    if cfg.n_test_seen:
        sizes["test_seen"] = cfg.n_test_seen
    synth_yaml = write_scenes(cfg, data, out, sizes, cfg.seed, progress)
    stage("synthetic scenes", t)

    t = time.time()
    perception = project_path(cfg.perception_config)
    specs = {s: f"synthetic:{data}:{s}" for s in sizes}
    paths = any(spec["target"] == "path" for spec in cfg.rows.values())  # only path rows read the reasoning path
    caches, records, skipped = build_all_twins(specs, perception, out / "dt", max(1, int(cfg.threads)), progress,
                                               records_of="train", paths=paths, labels=cfg.labels)
    write_records(out / "segdt.jsonl", records, inline_twin=True)
    rec_stats = {"records": len(records), "skipped": skipped}
    stage("twins + Seg-DT records", t)

    t = time.time()
    base = prepare_base_model(out / "base")
    tok = load_tokenizer(str(base))
    sft: dict[str, Path] = {}
    for key, spec in sorted({data_key(spec): spec for spec in cfg.rows.values()}.items()):
        recs = relabelled(records) if cfg.labels != "best_subset" and spec["target"] == "object" else records
        sft[key], ds_stats = compact_dataset(recs, tok, format_options(cfg, spec), out / f"sft-{key}", rec_stats,
                                             spec.get("negatives"))
        log(f"[demo] {key}: {ds_stats['examples']} examples, {ds_stats['mean_tokens']:.0f} tokens on average")
    stage("SFT datasets", t)

    retriever = None
    if cfg.retriever is not None:
        from dtwinseg.training.retriever import train_retriever

        t = time.time()
        rcfg = cfg.retriever_config(out)
        retriever = train_retriever(rcfg, progress=progress, log=log)
        stage("retriever", t)

    t = time.time()
    runs = row_training_recipes(cfg, out, base, sft)
    models = train_all(out, {k: r for k, (r, _) in runs.items()}, cfg, log, progress)
    trained = {label: (models[label], spec) for label, (_, spec) in runs.items()}
    stage(f"training ({len(runs)} runs, {cfg.jobs} at a time)", t)

    rows: dict[str, dict] = {}
    for label, (model, spec) in trained.items():
        decoding = spec.get("decoding", "generate")
        rdict = reasoning_dict(rel(model), format_options(cfg, spec), cfg, decoding)
        if isinstance(spec.get("verdict_margin"), int | float):
            rdict["verdict_margin"] = float(spec["verdict_margin"])
        prior = spec.get("similarity_prior")
        prior = DEFAULT_EMBEDDING_MODEL if prior is True else None if prior is None else \
            rel(retriever) if prior == "retriever" and retriever is not None else str(prior)
        if prior is not None:
            rdict["similarity_prior"] = prior
        rows[label] = {"checkpoint": rel(model), "reasoning_config": rel(write_row_config(out, label, rdict)),
                       "trained": {"target": spec["target"], "weighted": bool(spec["weighted"]),
                                   "steps": int(spec.get("max_steps", cfg.max_steps)),
                                   "batch_size": int(spec.get("batch_size", cfg.batch_size)), "decoding": decoding,
                                   "format": format_options(cfg, spec),
                                   **({"prefix_lm": True} if spec.get("prefix_lm") else {}),
                                   **({"similarity_prior": prior} if prior is not None else {})}}
    if retriever is not None:
        rows["retriever"] = retriever_row(rows, rcfg, out)
    rows.update(baseline_rows(cfg, rows, out, base))

    t = time.time()
    on_val = {k: v for k, v in rows.items() if v.get("trained") or v["checkpoint"].startswith("baseline:embedding")}
    val = evaluate_rows(specs["val"], caches["val"].folder, on_val,
                        out / "eval-val", cfg, progress, log)
    for label, (_, spec) in trained.items():
        if spec.get("verdict_margin") == "auto":
            margin, temperature, val_giou = choose_margin(out / "eval-val" / label, caches["val"], specs["val"])
            path = project_path(rows[label]["reasoning_config"])
            chosen = {"verdict_margin": margin, **({"prior_temperature": temperature} if temperature else {})}
            atomic_write_text(path, yaml_dump({**load_yaml(path), **chosen}))
            rows[label]["trained"].update(chosen)
            val["rows"][label]["giou_margin0"], val["rows"][label]["giou"] = val["rows"][label]["giou"], val_giou
            log(f"[demo] {label}: verdict margin {margin:+.1f}"
                + (f", prior temperature {temperature}" if temperature else "")
                + f" chosen on val (val gIoU {100 * val_giou:.1f})")
    for label, row in rows.items():  # picks by similarity (trained retriever or not): their window on val
        if row["checkpoint"].startswith("baseline:embedding"):
            window, val_giou = choose_window(out / "eval-val" / label, caches["val"], specs["val"])
            path = project_path(row["reasoning_config"])
            atomic_write_text(path, yaml_dump({**load_yaml(path), "similarity_window": window}))
            (row["trained"] if row.get("trained") else row)["similarity_window"] = window
            val["rows"][label]["giou_window0"], val["rows"][label]["giou"] = val["rows"][label]["giou"], val_giou
            log(f"[demo] {label}: similarity window {window} chosen on val (val gIoU {100 * val_giou:.1f})")
    stage("evaluation (val)", t)
    t = time.time()
    test = evaluate_rows(specs["test"], caches["test"].folder, rows, out / "eval", cfg, progress, log)
    stage("evaluation (test)", t)
    seen = None
    if "test_seen" in specs:
        t = time.time()
        seen = evaluate_rows(specs["test_seen"], caches["test_seen"].folder, rows, out / "eval-seen", cfg, progress, log)
        stage("evaluation (seen-phrasing test)", t)

    for label, row in rows.items():
        row.update(test["rows"][label])
        if label in val["rows"]:
            row["val_giou"] = val["rows"][label]["giou"]
        if seen is not None:
            row["seen"] = {k: seen["rows"][label][k] for k in ("giou", "ciou", "giou_ci95", "dimensions")}
    main = cfg.main if cfg.main != "auto" else choose_main(rows)
    summary = {"synth_config": rel(synth_yaml), "perception_config": rel(perception), "main": main,
               "main_chosen_by": "recipe" if cfg.main != "auto" else "val_giou",
               "rows": rows, "oracle": test["oracle"], "test": {"seed": cfg.seed, "n": test["n"]},
               "val": {"seed": cfg.seed, "n": val["n"]}, "wall_time_s": 0.0, "stage_times_s": times,
               "stage_cpu_s": cpu,
               "config": cfg.to_dict()}
    if seen is not None:
        summary["test_seen"] = {"seed": cfg.seed, "n": seen["n"], "oracle": seen["oracle"]}
    summary["judgement"] = {"test": judge(rows, main, test["oracle"])}
    if seen is not None:
        summary["judgement"]["test_seen"] = judge({k: {**r, **r["seen"]} for k, r in rows.items()}, main, seen["oracle"])
    for seed in cfg.check_seeds:
        t = time.time()
        summary.setdefault("check_seeds", {})[str(seed)] = check_seed(summary, int(seed), out / f"check-seed{seed}",
                                                                      progress=progress, log=log)
        stage(f"check on seed {seed}", t)
    summary["wall_time_s"] = round(time.time() - t0, 1)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "README.md", demo_markdown(summary, out))
    return summary


MARGINS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
PRIOR_TEMPERATURES = (0.03, 0.05, 0.1)


def choose_margin(eval_dir: Path, cache: Any, spec: str, margins: tuple[float, ...] = MARGINS,
                  temperatures: tuple[float, ...] = PRIOR_TEMPERATURES) -> tuple[float, float | None, float]:
    """(margin, prior temperature, mean gIoU) of the verdict margin (and, for a row with a similarity prior,
    the prior's temperature) with the best mean gIoU on a split (ties: the margin nearest 0, then the
    temperature listed first), from the per-object margins and similarities an evaluation stored
    (``predictions.jsonl``) - the answer rule of forced verdict decoding
    (:func:`dtwinseg.reasoning.similarity.verdict_answer`), no model run. The temperature is None for a row
    without a prior."""
    from dtwinseg.reasoning.similarity import verdict_answer

    per = stored_predictions(eval_dir, cache, spec)
    if not per:
        return 0.0, None, 0.0

    def giou(margin: float, temperature: float | None) -> float:
        return _mean_iou([(verdict_answer(scores, margin, sim, temperature)[0], masks, target)
                          for scores, sim, masks, target in per])

    temps: tuple[float | None, ...] = temperatures if any(sim is not None for _, sim, _, _ in per) else (None,)
    scored = {(m, t): giou(m, t) for m in margins for t in temps}
    best = max(scored, key=lambda mt: (round(scored[mt], 9), -abs(mt[0]), -temps.index(mt[1])))
    return best[0], best[1], scored[best]


WINDOWS = (0.0, 0.01, 0.02, 0.04, 0.08)


def choose_window(eval_dir: Path, cache: Any, spec: str, windows: tuple[float, ...] = WINDOWS) -> tuple[float, float]:
    """(similarity window, mean gIoU) of a pick by similarity (``baseline:embedding``, trained encoder or
    not) with the best mean gIoU on a split (ties: the smaller window), replayed from the similarities its
    evaluation stored (:func:`dtwinseg.reasoning.similarity.window_answer`), no model run."""
    from dtwinseg.reasoning.similarity import window_answer

    per = stored_predictions(eval_dir, cache, spec)
    if not per:
        return 0.0, 0.0
    scored = {w: _mean_iou([(window_answer(scores, w), masks, target) for scores, _, masks, target in per])
              for w in windows}
    best = max(windows, key=lambda w: (round(scored[w], 9), -w))
    return best, scored[best]


def stored_predictions(eval_dir: Path, cache: Any, spec: str) -> list[tuple[dict, dict | None, dict, np.ndarray]]:
    """Per scored prediction an evaluation stored (``predictions*.jsonl``): its per-object scores, its
    similarities (a prior's, or None), the twin's masks and the ground truth (ignore pixels excluded)."""
    import json

    from dtwinseg.data_builders.registry import open_dataset

    gts = {s.id: s.gt_mask for s in open_dataset(spec)}
    per: list[tuple[dict[int, float], dict[int, float] | None, dict[int, np.ndarray], np.ndarray]] = []
    for path in sorted(eval_dir.glob("predictions*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            twin = cache.get(r.get("id"))
            if r.get("kind") == "input_error" or not r.get("scores") or twin is None:
                continue
            gt = gts[r["id"]]
            valid = gt != 255
            sim = {int(k): float(v) for k, v in r["similarity"].items()} if r.get("similarity") else None
            per.append(({int(k): float(v) for k, v in r["scores"].items()}, sim,
                        {o.id: o.mask() & valid for o in twin.objects}, (gt == 1) & valid))
    return per


def _mean_iou(answers: list[tuple[list[int], dict[int, np.ndarray], np.ndarray]]) -> float:
    total = 0.0
    for ids, masks, target in answers:
        pred = np.logical_or.reduce([masks[i] for i in ids])
        union = np.count_nonzero(pred | target)
        total += np.count_nonzero(pred & target) / union if union else 1.0
    return total / len(answers)


def yaml_dump(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def baseline_rows(cfg: DemoConfig, trained: dict[str, dict], out: Path, base: Path) -> dict[str, dict]:
    """The untrained rows, each reading what the trained rows read where it can:

    - ``lexical``: word / word-pair overlap with exactly the text of the first trained row (its reasoning
      config: the compact lines, scene facts included); one more per other trained format
      (``lexical-<row>``);
    - ``constrained``: the untrained base itself; with a per-object trained row it reads that row's
      prompts and chooses each verdict (forced yes / no) with the row's answer rule (margin 0, its similarity
      prior included: what the rule gives with an untrained scorer); otherwise (answer / path rows)
      the whole twin, decoding constrained to one-object answers (eval.baselines);
    - ``embedding``: the base's untrained sentence similarity between the query and the same text as
      ``lexical`` (the first trained row's; the descriptions in a format without object lines);
    - ``random``, ``largest``."""
    answer_yaml = None
    rows: dict[str, dict] = {}
    by_format: dict[str, str] = {}
    for label, row in trained.items():
        by_format.setdefault(json_key(row["trained"]["format"]), label)
    object_row = next((r for r in trained.values() if r["trained"]["target"] == "object"), None)
    for kind in cfg.baselines:
        if kind == "lexical" and by_format:
            for k, (_, label) in enumerate(by_format.items()):
                name = "lexical" if k == 0 else f"lexical-{label}"
                rows[name] = {"checkpoint": "baseline:lexical", "reasoning_config": trained[label]["reasoning_config"],
                              "trained": None}
            continue
        if kind == "embedding" and by_format:  # the untrained similarity over exactly the first trained row's text
            first = next(iter(by_format.values()))
            rows[kind] = {"checkpoint": "baseline:embedding", "trained": None, "reasoning_config":
                          rel(picker_config(out, kind, trained[first]["reasoning_config"]))}
            continue
        if kind == "constrained" and object_row is not None:
            rdict = {**load_yaml(project_path(object_row["reasoning_config"])), "model": rel(base), "verdict_margin": 0.0}
            if rdict.get("similarity_prior") and rdict["similarity_prior"] != DEFAULT_EMBEDDING_MODEL:
                rdict["similarity_prior"] = DEFAULT_EMBEDDING_MODEL  # untrained: the shipped encoder's prior
            rows[kind] = {"checkpoint": rel(base), "reasoning_config": rel(write_row_config(out, kind, rdict)),
                          "trained": None}
            continue
        if answer_yaml is None:
            answer_yaml = write_row_config(out, "baselines", reasoning_dict(rel(base), format_options(cfg, "answer"), cfg))
        ck = f"baseline:{kind}" + (f":{rel(base)}" if kind == "constrained" else "")
        rows[kind] = {"checkpoint": ck, "reasoning_config": rel(answer_yaml), "trained": None}
    return rows


def retriever_row(trained: dict[str, dict], rcfg: Any, out: Path) -> dict:
    """The table row of the demo's retriever (``rcfg``, its RetrieverConfig): the objects its similarity
    picks over the lines it was trained on (``baseline:embedding:FOLDER``, with the lines of the first
    trained row reading them, which DemoConfig checked at load; its similarity window chosen on val)."""
    reader = next(r for r in trained.values() if _same_lines(r["trained"]["format"], rcfg.format))
    return {"checkpoint": f"baseline:embedding:{rel(rcfg.output_dir)}",
            "reasoning_config": rel(picker_config(out, "retriever", reader["reasoning_config"])),
            "trained": {"target": "retrieval", "weighted": False, "steps": rcfg.max_steps,
                        "batch_size": rcfg.scenes_per_step, "decoding": "similarity", "format": rcfg.format}}


def _same_lines(a: dict, b: dict) -> bool:
    """Whether two compact format options write the same object lines (the target aside)."""
    from dtwinseg.formats.compact import CompactOptions

    def norm(o: dict) -> dict:
        return {k: v for k, v in CompactOptions.from_dict(o).to_dict().items() if k != "target"}
    return norm(a) == norm(b)


def picker_config(out: Path, label: str, reader_yaml: str) -> Path:
    """The reasoning config of a pick by similarity (``baseline:embedding``): a trained row's (its lines,
    dtype and device) without the verdict rule's fields, with ``similarity_window`` 0 until val chooses it."""
    rdict = {k: v for k, v in load_yaml(project_path(reader_yaml)).items()
             if k not in ("similarity_prior", "prior_temperature", "verdict_margin")}
    return write_row_config(out, label, {**rdict, "similarity_window": 0.0})


def json_key(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def judge(rows: dict[str, dict], main: str, oracle: dict | None) -> dict:
    """The main row against the best untrained row on one split, and against the oracle bound (overall and
    per dimension): ``{"main", "giou", "best_baseline", "baseline_giou", "margin", "oracle_giou",
    "of_oracle", "dimensions_of_oracle": {d: ratio}}``."""
    untrained = {k: r for k, r in rows.items() if not r.get("trained") and r.get("giou") is not None}
    best = max(untrained, key=lambda k: untrained[k]["giou"]) if untrained else None
    m = rows.get(main) or {}
    out: dict[str, Any] = {"main": main, "giou": m.get("giou"), "best_baseline": best,
                           "baseline_giou": untrained[best]["giou"] if best else None}
    if out["giou"] is not None and best:
        out["margin"] = out["giou"] - out["baseline_giou"]
    if oracle and oracle.get("giou") and out["giou"] is not None:
        out["oracle_giou"] = oracle["giou"]
        out["of_oracle"] = out["giou"] / oracle["giou"]
        dims = oracle.get("dimensions") or {}
        out["dimensions_of_oracle"] = {d: (m.get("dimensions", {}).get(d) or 0.0) / v
                                       for d, v in dims.items() if v}
    return out


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
            result["oracle"] = {"giou": overall["oracle_giou"], "ciou": overall["oracle_ciou"],
                                "dimensions": {d: v.get("oracle_giou") for d, v in sorted(m.get("dimensions", {}).items())}}
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
    out_rows = {k: {"giou": v["giou"], "ciou": v["ciou"], "giou_ci95": v["giou_ci95"], "dimensions": v["dimensions"]}
                for k, v in res["rows"].items()}
    trained = {k: {**v, "trained": summary["rows"][k].get("trained")} for k, v in out_rows.items()}
    return {"n": res["n"], "rows": out_rows, "oracle": res["oracle"],
            "judgement": judge(trained, summary["main"], res["oracle"])}


# --- the table -------------------------------------------------------------------------------------
def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _split_table(rows: dict[str, dict], oracle: dict | None, main: str, dims: list[str], with_val: bool) -> list[str]:
    """One split's table: gIoU / cIoU x100, the gIoU interval, per-dimension gIoU, the oracle bound row."""
    lines = ["| row | gIoU | 95% CI | cIoU | " + ("val gIoU | " if with_val else "") + " | ".join(dims)
             + " | parse failed | trained |",
             "|---|---|---|---|" + ("---|" if with_val else "") + "---|" * len(dims) + "---|---|"]
    for name, r in rows.items():
        lo, hi = r.get("giou_ci95") or (None, None)
        parse = r.get("parse") or {}
        what = r.get("trained")
        window = (what or r).get("similarity_window")
        window = f", similarity window {window:g}" if window is not None else ""
        what = f"untrained{window}" if not what else f"contrastive retriever, {what['steps']} steps{window}" \
            if what["target"] == "retrieval" else (f"{what['target']}, {'weighted' if what['weighted'] else 'unweighted'}"
                                             + (", forced verdicts" if what.get("decoding") == "verdicts" else "")
                                             + (", similarity prior" if what.get("similarity_prior") else ""))
        mark = " (main)" if name == main else ""
        lines.append(f"| {name}{mark} | {_pct(r.get('giou'))} | {_pct(lo)}-{_pct(hi)} | {_pct(r.get('ciou'))} | "
                     + (f"{_pct(r.get('val_giou'))} | " if with_val else "")
                     + " | ".join(_pct(r.get("dimensions", {}).get(d)) for d in dims)
                     + f" | {parse.get('failed', 0)} | {what} |")
    o = oracle or {}
    od = o.get("dimensions") or {}
    lines.append(f"| oracle bound | {_pct(o.get('giou'))} | | {_pct(o.get('ciou'))} | " + ("| " if with_val else "")
                 + " | ".join(_pct(od.get(d)) for d in dims) + " | | |")
    return lines


def judgement_line(j: dict) -> str:
    """One line: the main row, the best untrained row, the margin, the fraction of the oracle bound (overall
    and the weakest dimension)."""
    if not j or j.get("giou") is None:
        return ""
    text = f"{j['main']} {_pct(j['giou'])}"
    if j.get("best_baseline"):
        text += f" vs best untrained {j['best_baseline']} {_pct(j['baseline_giou'])} ({100 * j['margin']:+.1f})"
    if j.get("of_oracle") is not None:
        text += f"; {j['of_oracle']:.2f} x oracle bound {_pct(j['oracle_giou'])}"
        dims = j.get("dimensions_of_oracle") or {}
        if dims:
            worst = min(dims, key=dims.get)
            text += f"; weakest dimension {worst} {dims[worst]:.2f} x its bound"
    return text


def demo_markdown(summary: dict, out: Path) -> str:
    """The comparison tables (unseen-phrasing test split, and the seen-phrasing one when there is one):
    gIoU / cIoU x100 with the gIoU interval, per-dimension gIoU, the oracle bound overall and per dimension,
    and each split's judgement of the main row against the best untrained row and the bound."""
    rows = summary["rows"]
    dims = sorted({d for r in rows.values() for d in r.get("dimensions", {})})
    main = summary.get("main", "")
    test = summary.get("test", {})
    seen = summary.get("test_seen")
    title = "unseen-phrasing test split" if seen else "test split"
    lines = [f"**{title[:1].upper() + title[1:]}** ({test.get('n')} scenes, seed {test.get('seed')}; per-dimension "
             "columns are gIoU)", ""] if seen else []  # one split: the table first (make demo-paper's README)
    lines += _split_table(rows, summary.get("oracle"), main, dims, True)
    judged = summary.get("judgement") or {}
    verdict = judgement_line(judged.get("test", {}))
    if verdict:
        lines += ["", f"Judgement ({title}): {verdict}"]
    if seen:
        seen_rows = {k: {**r.get("seen", {}), "trained": r.get("trained"), "parse": {},
                         "similarity_window": r.get("similarity_window")} for k, r in rows.items()}
        lines += ["", f"**Seen-phrasing test split** (the same {seen.get('n')} scenes, masks and targets, worded and "
                  "phrased as in training)", ""]
        lines += _split_table(seen_rows, seen.get("oracle"), main, dims, False)
        lines += ["", f"Judgement (seen-phrasing test split): {judgement_line(judged.get('test_seen', {}))}"]
    lines.append("")
    conf = summary.get("config") or {}
    cpu = summary.get("stage_cpu_s")
    training = summary.get("training_precision") or ("bf16 autocast" if conf.get("bf16") else "fp32")
    lines.append(f"Wall time {summary['wall_time_s']:.0f} s" + (f" ({sum(cpu.values()):.0f} s of CPU)" if cpu else "")
                 + f". Models evaluated in {conf.get('eval_dtype', 'float32')}; training in {training}. "
                 f"Report: {out / 'eval'}")
    for seed, res in (summary.get("check_seeds") or {}).items():
        cells = ", ".join(f"{k} {_pct(v['giou'])}" for k, v in res["rows"].items())
        oracle = (res.get("oracle") or {}).get("giou")
        lines.append(f"Seed {seed} test split ({res['n']} scenes), gIoU: {cells}; oracle bound {_pct(oracle)}. "
                     f"Judgement: {judgement_line(res.get('judgement') or {})}")
    return "\n".join(lines) + "\n"
