"""The paper preset of the demo: the paper's own method on a real chat LLM, ``dtwinseg demo --preset paper``.

    dtwinseg synth (train / val / test)          -> build-dt with the oracle perception config
    -> build-segdt: programmatic multi-step reasoning paths (semantic / reasoning / verdict per object)
    -> build-sft with SmolLM2-135M-Instruct's chat template: the sftdt format (JSON(D) with T_i in the user
       message, the path + ``Answer: [ids]`` as the assistant turn) and the select format (answer only)
    -> dtwinseg train: LoRA, bf16 weights, the weighted SFTDT loss (recipes/smollm2_lora_cpu.yaml, the
       code path of recipes/llama31_8b_1gpu.yaml), one run per trained row
    -> dtwinseg eval: batched generation with a KV cache, ids parsed from the answer; the base zero-shot
       (free generation, and constrained to ``Answer: [i]``) and the untrained baselines on the same twins
    -> summary.json (the schema of ``dtwinseg demo``'s), README.md with the table and two generated paths

Every knob is in recipes/demo_paper.yaml (:class:`PaperConfig`). Rows:

    sftdt              the reasoning path, weighted (decisions 2, answer 4, other completion tokens 1)
    sftdt-unweighted   the same path, every completion token weight 1
    answer-only        the select format's ``Answer: [ids]`` alone (no reasoning path), weighted
    zero-shot          the base itself: the better on val of its free answers in the sftdt format
                       (``zero-shot-free``) and of decoding constrained to ``Answer: [i]`` after the same
                       prompt (``constrained``), so the comparison is with a base whose answers parse
    random, largest, embedding, constrained (, lexical when eval/baselines.py has it): untrained

The headline row (``main: auto``) is the trained row with the best val gIoU; test numbers never choose.
``check_seeds`` evaluates every row again on test splits drawn with other seeds (unseen by training),
exactly as ``dtwinseg synth --seed S`` + ``build-dt`` + ``dtwinseg eval`` would (:func:`check_seed`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from dtwinseg.training.recipe import Recipe, recipe_from_dict
from dtwinseg.workflows.demo import (
    PROJECT_ROOT,
    DemoConfig,
    bootstrap_ci,
    build_twins,
    choose_main,
    demo_markdown,
    evaluate_rows,
    judge,
    project_path,
    rel,
    seeded_rows,
    torch_threads,
    train_all,
    write_row_config,
    write_scenes,
)

from dtwinseg.config import build_dataclass, convert_fields
from dtwinseg.formats.base import DEFAULT_LOSS_WEIGHTS, UNWEIGHTED_LOSS, LossWeights
from dtwinseg.io import DataError, atomic_write_json, atomic_write_text, load_yaml
from dtwinseg.spatial import PAPER_SPATIAL

PAPER_RECIPE = PROJECT_ROOT / "recipes" / "demo_paper.yaml"
UNTRAINED = ("random", "largest", "embedding", "constrained", "lexical")
SHORT_SYSTEM_PROMPT = (
    'Find the objects of a Digital Twin that a query refers to. The twin is JSON: object id -> "spatial" '
    '(box [x_min, y_min, x_max, y_max], area in % of the image, relations to other ids) and "semantic" '
    '(what it is). Narrow the objects down step by step, one line per step: "Step j: " then a JSON object '
    'giving every object still in play its "semantic", "reasoning" and "verdict" ("keep" or "drop"). End '
    'with "Answer: [ids]".'
)
"""The preset's sftdt system prompt (recipes/demo_paper.yaml ``format.system_prompt``): the default's
content in half the tokens; it names no object, word or rule of the synthetic scenes."""


@dataclass
class PaperRow:
    """One trained row: ``target`` path (the sftdt reasoning path) or answer (the select format's answer
    line alone), ``weighted`` (the SFTDT weights, or every completion token 1); ``max_steps`` and
    ``learning_rate`` override the shared values."""

    target: str
    weighted: bool
    max_steps: int | None = None
    learning_rate: float | None = None

    def __post_init__(self) -> None:
        if self.target not in ("path", "answer"):
            raise DataError(None, "target", "must be path (the sftdt reasoning path) or answer (Answer: [ids])")
        for key in ("max_steps", "learning_rate"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise DataError(None, key, "must be positive")


@dataclass
class PaperConfig:
    """Every knob of the paper preset (recipes/demo_paper.yaml; comments there).

    seed: seed of the train and val scenes; test_seed: seed of the test split (another seed: scenes drawn
        independently of everything training saw; equal to ``seed``: one draw of the three splits).
    base: the chat LLM (``base:NAME`` of dtwinseg.base_models, a folder or a Hub id).
    recipe: the LoRA training recipe each row starts from (data, output, steps, batch, weights set per row).
    format: the sftdt FormatConfig of the path rows, the zero-shot rows and the baselines;
        answer_format: the select FormatConfig of the answer-only row.
    batch_size / micro_batch: examples per optimizer step / per forward pass (accumulation = ratio).
    max_length: longest training example in tokens (longer ones lose step-1-dropped objects, build-sft).
    eval_dtype: weights of every generating row at evaluation (bfloat16: AMX on CPU, bf16 on GPU).
    max_new_tokens_cap: cap of the per-twin generation budget (the sftdt format's estimate, ``auto``).
    threads: torch threads of the whole run; jobs: trainings at once (0: in this process, in turn).
    """

    seed: int = 0
    test_seed: int = 1
    train_seeds: list = field(default_factory=lambda: [0])
    n_train: int = 400
    n_val: int = 35
    n_test: int = 140
    check_seeds: list = field(default_factory=list)
    synth: dict = field(default_factory=lambda: {"max_objects": 5})
    perception_config: str = "recipes/perception/oracle.yaml"
    base: str = "base:smollm2-135m-instruct"
    recipe: str = "recipes/smollm2_lora_cpu.yaml"
    format: dict = field(default_factory=lambda: {"system_prompt": SHORT_SYSTEM_PROMPT, "spatial": dict(PAPER_SPATIAL)})
    answer_format: dict = field(default_factory=lambda: {"base_tokens": 16, "spatial": dict(PAPER_SPATIAL)})
    rows: dict = field(default_factory=lambda: {"sftdt": {"target": "path", "weighted": True}})
    main: str = "auto"
    baselines: list = field(default_factory=lambda: ["random", "largest", "embedding", "constrained"])
    zero_shot: bool = True
    max_steps: int = 100
    batch_size: int = 8
    micro_batch: int = 2
    learning_rate: float = 1e-3
    max_length: int = 1536
    w_completion: float = DEFAULT_LOSS_WEIGHTS.completion
    w_decision: float = DEFAULT_LOSS_WEIGHTS.decision
    w_answer: float = DEFAULT_LOSS_WEIGHTS.answer
    eval_dtype: str = "bfloat16"
    eval_batch_size: int = 16
    max_new_tokens_cap: int = 1024
    device: str = "cpu"
    threads: int = 2
    jobs: int = 0
    bootstrap: int = 1000
    presets: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from dtwinseg.formats import FormatConfig, build_format

        for name, format_name in (("format", "sftdt"), ("answer_format", "select")):
            try:
                build_format(format_name, FormatConfig.from_dict(getattr(self, name), where=name))
            except DataError as e:
                raise DataError(None, e.field if (e.field or "").startswith(name) else f"{name}.{e.field}",
                                e.message) from None
        for name, spec in self.rows.items():
            if not isinstance(spec, dict):
                raise DataError(None, f"rows.{name}", "expected {target: path|answer, weighted: bool}")
            row = build_dataclass(PaperRow, spec, None, f"rows.{name}")
            self.rows[name] = {k: v for k, v in asdict(row).items() if v is not None}
        if self.main != "auto" and self.main not in self.rows:
            raise DataError(None, "main", f"{self.main!r} is not 'auto' or one of the rows ({', '.join(self.rows)})")
        unknown = sorted(set(self.baselines) - set(UNTRAINED))
        if unknown:
            raise DataError(None, "baselines", f"unknown baseline {unknown[0]!r}; known: {', '.join(UNTRAINED)}")
        if self.batch_size % self.micro_batch:
            raise DataError(None, "batch_size", f"must be a multiple of micro_batch ({self.micro_batch})")
        if self.eval_dtype not in ("float32", "bfloat16", "auto"):
            raise DataError(None, "eval_dtype", "must be float32, bfloat16 or auto")

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, preset: str | None = None) -> PaperConfig:
        """The recipe at ``path`` (default recipes/demo_paper.yaml), with a preset's fields applied on top."""
        path = Path(path) if path else PAPER_RECIPE
        data = load_yaml(path)
        if preset:
            extra = (data.get("presets") or {}).get(preset)
            if extra is None:
                raise DataError(path, f"presets.{preset}", "no such preset")
            convert_fields(cls, extra, str(path), f"presets.{preset}")
            data = {**data, **extra}
        cfg = build_dataclass(cls, data, path)
        from dtwinseg.data_builders.synthetic import SynthConfig

        build_dataclass(SynthConfig, cfg.synth, path, "synth")
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("presets")
        return d


# --- stages ----------------------------------------------------------------------------------------
def row_format(cfg: PaperConfig, target: str) -> tuple[str, dict]:
    """(format name, its options) of a row: sftdt with ``format`` for paths, select with ``answer_format``."""
    return ("sftdt", dict(cfg.format)) if target == "path" else ("select", dict(cfg.answer_format))


def build_sft(records: list, tokenizer: Any, cfg: PaperConfig, target: str, out: Path,
              rec_stats: dict) -> tuple[Path, dict]:
    """``dtwinseg build-sft --reasoning-config <row yaml>``: the records with the model's chat template, token
    kinds kept (the weighted and unweighted rows share one dataset), format.json beside."""
    from dtwinseg.data_builders.sft_dataset import SFTDatasetConfig, build_sft_dataset, save_dataset

    format_name, fmt = row_format(cfg, target)
    scfg = SFTDatasetConfig(max_length=cfg.max_length, format_name=format_name, format=fmt)
    ds, stats = build_sft_dataset(records, tokenizer, scfg)
    if not stats["examples"]:
        raise DataError(out, "records", f"no training example could be built ({stats['failed']} failed, "
                        f"{stats['dropped_too_long']} too long)")
    return save_dataset(ds, out, {"records": rec_stats, "dataset": stats}, scfg), stats


def training_recipe(cfg: PaperConfig, data: Path, out: Path, row: dict, seed: int) -> Recipe:
    """The row's typed LoRA recipe: ``cfg.recipe`` with the data, output, steps, batch, learning rate, seed
    and loss weights of this row (``use_token_kinds``: weights rebuilt from the dataset's token kinds),
    checked as ``dtwinseg train`` checks a recipe file."""
    source = project_path(cfg.recipe)
    recipe = load_yaml(source)
    w = (LossWeights.of(cfg) if row["weighted"] else UNWEIGHTED_LOSS).flat()
    steps = int(row.get("max_steps", cfg.max_steps))
    recipe["model"] = {**recipe.get("model", {}), "name_or_path": cfg.base}
    recipe["data"] = {"train": str(data), "eval": None}
    recipe["training"] = {**recipe.get("training", {}), "output_dir": str(out), "max_steps": steps,
                          "per_device_train_batch_size": cfg.micro_batch,
                          "gradient_accumulation_steps": cfg.batch_size // cfg.micro_batch,
                          "learning_rate": float(row.get("learning_rate", cfg.learning_rate)),
                          "logging_steps": max(1, steps // 10), "seed": int(seed), "use_token_kinds": True,
                          "disable_tqdm": False, **w}
    if cfg.device != "cpu":
        recipe["training"].pop("use_cpu", None)
        recipe["training"]["bf16"] = True
    recipe["merge"] = {"enabled": False}
    return recipe_from_dict(recipe, source)


def row_training_recipes(cfg: PaperConfig, out: Path,
                         sft: dict[str, Path] | None = None) -> dict[str, tuple[Recipe, dict]]:
    """{label: (training recipe, row spec)} of every trained row and training seed of the preset in ``out``:
    what ``dtwinseg demo --preset paper`` trains, and what ``dtwinseg train recipes/demo_paper.yaml
    --dry-run`` checks. ``sft`` (by target) defaults to the folders the preset writes (``out/sft-<target>``)."""
    sft = sft or {}
    runs = {}
    for label, seed, spec in seeded_rows(cfg.train_seeds, cfg.rows):
        data = sft.get(spec["target"], out / f"sft-{spec['target']}")
        runs[label] = (training_recipe(cfg, data, out / f"train-{label}", spec, seed), spec)
    return runs


def is_paper_recipe(data: Mapping[str, Any]) -> bool:
    """Whether a demo recipe's top-level keys are the paper preset's (:class:`PaperConfig`, e.g.
    recipes/demo_paper.yaml) rather than the default demo's (:class:`DemoConfig`): it names a field only
    the paper preset has and none only the demo has."""
    paper, demo = {f.name for f in fields(PaperConfig)}, {f.name for f in fields(DemoConfig)}
    keys = set(data)
    return bool(keys & (paper - demo)) and not keys & (demo - paper)


def reasoning_dict(cfg: PaperConfig, format_name: str, fmt: dict, model: str | None = None) -> dict:
    """A row's reasoning config (what ``dtwinseg eval --reasoning-config`` reads): transformers, batched
    greedy generation with a KV cache, the format's budget per twin (``auto``) under the cap."""
    return {"format": {"name": format_name, **fmt}, "backend": "transformers", "model": model or cfg.base,
            "device": cfg.device, "dtype": cfg.eval_dtype, "batch_size": cfg.eval_batch_size,
            "max_new_tokens": "auto", "max_new_tokens_cap": cfg.max_new_tokens_cap}


def paper_rows(cfg: PaperConfig, out: Path, models: dict[str, tuple[Path, dict]]) -> dict[str, dict]:
    """Every row to evaluate: {label: {checkpoint, reasoning_config, trained}} (reasoning configs written
    to ``out/reasoning``). ``zero-shot-free`` is the base generating in the sftdt format."""
    rows: dict[str, dict] = {}
    for label, (model, spec) in models.items():
        format_name, fmt = row_format(cfg, spec["target"])
        path = write_row_config(out, label, reasoning_dict(cfg, format_name, fmt))
        rows[label] = {"checkpoint": rel(model), "reasoning_config": rel(path),
                       "trained": {"target": spec["target"], "weighted": bool(spec["weighted"]),
                                   "steps": int(spec.get("max_steps", cfg.max_steps)),
                                   "batch_size": cfg.batch_size, "decoding": "generate", "format": format_name,
                                   "base": cfg.base, "lora": True}}
    base_yaml = write_row_config(out, "base", reasoning_dict(cfg, "sftdt", dict(cfg.format)))
    if cfg.zero_shot:
        rows["zero-shot-free"] = {"checkpoint": cfg.base, "reasoning_config": rel(base_yaml), "trained": None}
    for kind in cfg.baselines:
        ck = f"baseline:{kind}" + (f":{cfg.base}" if kind == "constrained" else "")
        rows[kind] = {"checkpoint": ck, "reasoning_config": rel(base_yaml), "trained": None}
    return rows


def paired_difference(a: Path, b: Path, n_boot: int, seed: int = 0) -> dict:
    """Mean IoU difference of two rows' predictions on the same samples, with a paired 95% bootstrap."""
    from dtwinseg.eval.records import load_records

    def ious(folder: Path) -> dict[str, float]:
        return {r["id"]: float(r["iou"]) for p in sorted(folder.glob("predictions*.jsonl"))
                for r in load_records(p) if r.get("kind") != "input_error"}

    x, y = ious(a), ious(b)
    common = sorted(set(x) & set(y))
    d = [x[k] - y[k] for k in common]
    return {"diff": float(np.mean(d)) if d else 0.0, "diff_ci95": bootstrap_ci(d, n_boot, seed), "n": len(d)}


def generated_examples(pred_folder: Path, k_right: int = 1, k_wrong: int = 1) -> list[dict]:
    """Generated answers of a row on test: the first right (IoU >= 0.5) and wrong (IoU < 0.5) ones whose
    answer parsed, with the query and the model's full text."""
    from dtwinseg.eval.records import load_records

    out, want = [], {"right": k_right, "wrong": k_wrong}
    for p in sorted(pred_folder.glob("predictions*.jsonl")):
        for r in load_records(p):
            if r.get("kind") != "scored" or r.get("status") == "failed":
                continue
            which = "right" if float(r["iou"]) >= 0.5 else "wrong"
            if want[which] > 0:
                want[which] -= 1
                out.append({"kind": which, "id": r["id"], "dimension": r.get("dimension"), "query": r["query"],
                            "iou": float(r["iou"]), "ids": r["ids"], "oracle_ids": r.get("oracle_ids"),
                            "text": r.get("text", "")})
    return out


# --- the whole run ---------------------------------------------------------------------------------
def run_paper(out: str | os.PathLike, cfg: PaperConfig | None = None, *, progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """Run every stage into ``out`` with ``cfg.threads`` torch threads; returns the summary (also written
    to ``out/summary.json``, the table to ``out/README.md``)."""
    cfg = cfg or PaperConfig.load()
    with torch_threads(cfg.threads):
        return _run_stages(Path(out), cfg, progress, log)


def _run_stages(out: Path, cfg: PaperConfig, progress: bool, log: Callable[[str], None]) -> dict:
    from dtwinseg.data_builders.programmatic import build_segdt
    from dtwinseg.data_builders.segdt import load_records
    from dtwinseg.data_builders.sft_dataset import load_tokenizer

    from dtwinseg.base_models import resolve_model_path

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    times: dict[str, float] = {}

    def stage(name: str, t: float) -> None:
        times[name] = round(time.time() - t, 1)
        log(f"[paper] {name}: {times[name]:.1f} s")

    t = time.time()
    data, test_data = out / "data", out / f"data-seed{cfg.test_seed}"
    if cfg.test_seed == cfg.seed:
        test_data = data
        splits = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    else:  # the test split drawn with a seed training never saw
        splits = {"train": cfg.n_train, "val": cfg.n_val}
        write_scenes(cfg, test_data, out, {"test": cfg.n_test}, cfg.test_seed, progress)  # type: ignore[arg-type]
    synth_yaml = write_scenes(cfg, data, out, splits, cfg.seed, progress)  # type: ignore[arg-type]
    stage("synthetic scenes", t)

    t = time.time()
    perception = project_path(cfg.perception_config)
    specs = {s: f"synthetic:{data if s != 'test' else test_data}:{s}" for s in ("train", "val", "test")}
    caches = {s: build_twins(spec, perception, out / "dt", progress) for s, spec in specs.items()}
    stage("oracle twins", t)

    t = time.time()
    rec_stats = build_segdt(specs["train"], caches["train"].folder, out / "segdt.jsonl", progress=progress)
    rec_stats.pop("failures", None)
    if not rec_stats["written"]:
        raise DataError(out / "segdt.jsonl", None, "no Seg-DT record could be written from the train split")
    records = list(load_records(out / "segdt.jsonl"))
    stage("Seg-DT records (build-segdt)", t)

    t = time.time()
    resolve_model_path(cfg.base)  # base:NAME: converted once into the model cache, reused afterwards
    stage("base model", t)

    t = time.time()
    tok = load_tokenizer(cfg.base)
    sft: dict[str, Path] = {}
    for target in sorted({spec["target"] for spec in cfg.rows.values()}):
        sft[target], ds_stats = build_sft(records, tok, cfg, target, out / f"sft-{target}", rec_stats)
        log(f"[paper] sft-{target}: {ds_stats['examples']} examples, {ds_stats['mean_tokens']:.0f} tokens on "
            f"average (max {ds_stats['max_tokens']}), {ds_stats['truncated_twin']} twins truncated")
    stage("SFT datasets (build-sft)", t)

    t = time.time()
    runs = row_training_recipes(cfg, out, sft)
    trained_models = train_all(out, {k: r for k, (r, _) in runs.items()}, cfg, log, progress)  # type: ignore[arg-type]
    stage(f"training ({len(runs)} LoRA runs)", t)

    rows = paper_rows(cfg, out, {label: (trained_models[label], spec) for label, (_, spec) in runs.items()})
    t = time.time()
    on_val = {k: v for k, v in rows.items() if v["trained"] or k in ("zero-shot-free", "constrained")}
    val = evaluate_rows(specs["val"], caches["val"].folder, on_val, out / "eval-val", cfg, progress, log)  # type: ignore[arg-type]
    stage("evaluation (val)", t)
    t = time.time()
    test = evaluate_rows(specs["test"], caches["test"].folder, rows, out / "eval", cfg, progress, log)  # type: ignore[arg-type]
    stage("evaluation (test)", t)

    for label, row in rows.items():
        row.update(test["rows"][label])
        if label in val["rows"]:
            row["val_giou"] = val["rows"][label]["giou"]
    rows = _with_zero_shot(rows)
    main = cfg.main if cfg.main != "auto" else choose_main(rows)
    summary: dict[str, Any] = {
        "synth_config": rel(synth_yaml), "perception_config": rel(perception), "main": main,
        "main_chosen_by": "recipe" if cfg.main != "auto" else "val_giou", "rows": rows, "oracle": test["oracle"],
        "test": {"seed": cfg.test_seed, "n": test["n"]}, "val": {"seed": cfg.seed, "n": val["n"]},
        "wall_time_s": 0.0, "stage_times_s": times, "records": {k: v for k, v in rec_stats.items() if k != "config"},
        "config": cfg.to_dict(), "training_precision": training_precision([r for r, _ in runs.values()])}
    # issue 24's question is about the SFTDT row, whichever row val chose as main
    summary["judgement"] = {"test": judge(rows, "sftdt" if "sftdt" in rows else main, test["oracle"])}
    if "sftdt" in rows and "sftdt-unweighted" in rows:
        summary["weighted_minus_unweighted"] = {
            "test": paired_difference(out / "eval" / "sftdt", out / "eval" / "sftdt-unweighted", cfg.bootstrap),
            "val": paired_difference(out / "eval-val" / "sftdt", out / "eval-val" / "sftdt-unweighted", cfg.bootstrap)}
    if rows.get(main, {}).get("trained"):
        summary["examples"] = generated_examples(out / "eval" / main)
    for seed in cfg.check_seeds:
        t = time.time()
        summary.setdefault("check_seeds", {})[str(seed)] = check_seed(summary, int(seed), out / f"check-seed{seed}",
                                                                      cfg, progress=progress, log=log)
        stage(f"check on seed {seed}", t)
    summary["wall_time_s"] = round(time.time() - t0, 1)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "README.md", paper_markdown(summary, out))
    return summary


def _with_zero_shot(rows: dict[str, dict]) -> dict[str, dict]:
    """Add the ``zero-shot`` row: of ``zero-shot-free`` and ``constrained``, the one with the better val gIoU
    (ties: constrained, whose answers always parse); the other stays in the table under its own name."""
    free, cons = rows.get("zero-shot-free"), rows.get("constrained")
    if free is None and cons is None:
        return rows
    if free is None or cons is None:
        pick = "zero-shot-free" if cons is None else "constrained"
    else:
        pick = "zero-shot-free" if (free.get("val_giou") or 0.0) > (cons.get("val_giou") or 0.0) else "constrained"
    zero = {**rows[pick], "zero_shot_variant": "free" if pick == "zero-shot-free" else "constrained",
            "chosen_by": "val_giou"}
    return {"zero-shot": zero, **rows}


def check_seed(summary: dict, seed: int, out: Path, cfg: PaperConfig, *, n_test: int | None = None,
               progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Every row of ``summary`` on a test split drawn with ``seed``, from what summary.json names only:
    synth config -> scenes, perception config -> twins, checkpoint + reasoning config -> eval."""
    from dtwinseg.data_builders.synthetic import SynthConfig, write_dataset

    n = n_test if n_test is not None else cfg.n_test
    data = out / "data"
    write_dataset(data, {"test": n}, seed=seed, cfg=SynthConfig.from_yaml(project_path(summary["synth_config"])),
                  progress=progress)
    spec = f"synthetic:{data}:test"
    cache = build_twins(spec, project_path(summary["perception_config"]), out / "dt", progress)
    rows = {k: {"checkpoint": r["checkpoint"], "reasoning_config": r["reasoning_config"]}
            for k, r in summary["rows"].items() if k != "zero-shot"}
    res = evaluate_rows(spec, cache.folder, rows, out / "eval", cfg, progress, log)  # type: ignore[arg-type]
    got = {k: {"giou": v["giou"], "ciou": v["ciou"], "giou_ci95": v["giou_ci95"], "dimensions": v["dimensions"],
               "parse": v["parse"], "truncated": v["truncated"]} for k, v in res["rows"].items()}
    zero = summary["rows"].get("zero-shot")
    if zero is not None:
        got = {"zero-shot": got["zero-shot-free" if zero["zero_shot_variant"] == "free" else "constrained"], **got}
    result: dict[str, Any] = {"n": res["n"], "rows": got}
    if "sftdt" in got and "sftdt-unweighted" in got:
        result["weighted_minus_unweighted"] = paired_difference(out / "eval" / "sftdt", out / "eval" / "sftdt-unweighted",
                                                                cfg.bootstrap)
    return result


def paper_command(out: Path, recipe: Path | None, *, quick: bool = False, long: bool = False,
                  max_steps: int | None = None, check_seed: list[int] | None = None, progress: bool = True,
                  log: Callable[[str], None] = print) -> None:
    """``dtwinseg demo --preset paper [--quick]``: the run, then the table."""
    if long:
        raise DataError(None, "--long", "the paper preset has no long variant (edit recipes/demo_paper.yaml)")
    if out == Path("runs/demo"):  # the CLI's default run folder belongs to the default demo
        out = Path("runs/demo-paper")
    cfg = PaperConfig.load(recipe, "quick" if quick else None)
    if max_steps is not None:
        cfg.max_steps = max_steps
    if check_seed:
        cfg.check_seeds = list(check_seed)
    summary = run_paper(out, cfg, progress=progress, log=log)
    log("")
    log(paper_markdown(summary, out))
    log(f"summary: {out / 'summary.json'}   report: {out / 'eval'}")


# --- the table -------------------------------------------------------------------------------------
def training_precision(recipes: list[Recipe]) -> str:
    """How the rows were trained, in words: the weights' dtype and autocast, from their recipes."""
    kinds = sorted({(str(r.model.dtype or "float32"), bool(r.training.get("bf16"))) for r in recipes})
    words = [f"{'bf16' if dtype in ('bfloat16', 'bf16') else dtype} weights"
             + (" with bf16 autocast" if bf16 and dtype not in ("bfloat16", "bf16") else "") for dtype, bf16 in kinds]
    return " / ".join(words) or "fp32"


def paper_markdown(summary: dict, out: Path) -> str:
    """The demo's table (dtwinseg.workflows.demo.demo_markdown) plus parse statistics, the weighted vs
    unweighted difference and the generated paths."""
    lines = [demo_markdown(summary, out).rstrip("\n"), "", "Parse statistics on test (ok / repaired / failed; "
             "truncated answers hit their token budget):", ""]
    for name, r in summary["rows"].items():
        p = r.get("parse") or {}
        if r.get("trained") or name == "zero-shot-free":
            lines.append(f"- {name}: {p.get('ok', 0)} / {p.get('repaired', 0)} / {p.get('failed', 0)}, "
                         f"truncated {r.get('truncated', 0)}")
    diff = summary.get("weighted_minus_unweighted")
    if diff:
        for split, d in diff.items():
            lo, hi = d["diff_ci95"]
            lines.append(f"- sftdt minus sftdt-unweighted ({split}, paired, {d['n']} scenes): "
                         f"{100 * d['diff']:+.1f} gIoU [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    for ex in summary.get("examples") or []:
        lines += ["", f"A {ex['kind']} answer of the main row ({ex['dimension']}, IoU {ex['iou']:.2f}, "
                  f"answer {ex['ids']}, best subset {ex['oracle_ids']}): {ex['query']}", "", "```", ex["text"], "```"]
    return "\n".join(lines) + "\n"
