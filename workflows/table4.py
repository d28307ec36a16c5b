"""The paper's Table 4 (ablations) as configs: build, evaluate and print a set of its rows.

The manifest (``recipes/ablations/table4.yaml``) lists the rows: ``id``, ``component``, ``configuration``,
a perception config (the perception rows: SAM only, without granularity, each prompting strategy, each
VLM, eq. 4 or per-mask semantics) or a reasoning config (the SFTDT rows: chain of thought, without CoT,
without token weights), and the paper's numbers. For each selected row, :func:`run_table4`

1. builds the row's twins with ``build_dt`` into ``OUT/dt_cache`` (rows with the same perception identity
   share one folder, and a rerun resumes);
2. evaluates the row's reasoner on them with the eval harness into ``OUT/rows/<id>`` (label ``model``);
3. collects gIoU, cIoU and the oracle bound and prints the Table 4 layout
   (:func:`eval.compare.table4_markdown`), also written to ``OUT/table4.md`` and ``OUT/table4.json``.

Where this machine lacks what a row needs, overrides say so in the row's "run here with" column:
``oracle_masks`` replaces SAM by the dataset's ground-truth instances (synthetic data ships them; with
``proposals.refine: false`` every instance is kept, parts and wholes, as SAM's everything mode would),
``no_vlm`` drops the VLM (granularity from the dataset's tag, semantics from the instances), and
``oracle_only`` runs no reasoner (only the oracle bound is reported: the perception rows' share). A row whose
files are missing (a SAM checkpoint, a trained adapter) or that fails is reported as not run, with why;
the other rows still run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from dtwinseg.config import build_dataclass
from dtwinseg.io import DataError, atomic_write_json, atomic_write_text, load_yaml

DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "recipes" / "ablations" / "table4.yaml"
LABEL = "model"


class NoAnswer:
    """The reasoner of ``oracle_only`` runs: answers nothing, so a row reports only its oracle bound
    (the best union of the twin's own objects), the perception half of the table without any LLM."""

    def reason(self, items: Sequence[tuple]) -> list:
        from dtwinseg.parsing import ParseResult
        from dtwinseg.reasoning import ReasoningOutput

        return [ReasoningOutput([], ParseResult("ok", [], [], ""), "", "select") for _ in items]


@dataclass
class Table4Row:
    """One row of the manifest (paths relative to the repository root or absolute)."""

    id: str
    component: str
    configuration: str
    perception: str | None = None
    reasoning: str | None = None
    paper: list[float] | None = None
    note: str = ""


@dataclass
class Table4Manifest:
    reasoning: str
    full_perception: str
    rows: list[Table4Row] = field(default_factory=list)


def load_manifest(path: str | os.PathLike = DEFAULT_MANIFEST) -> Table4Manifest:
    """Read and check the manifest; DataError names the file and the field."""
    d = load_yaml(path)
    for name in ("reasoning", "full_perception", "rows"):
        if name not in d:
            raise DataError(path, name, "missing")
    if not isinstance(d["rows"], list) or not d["rows"]:
        raise DataError(path, "rows", "expected a non-empty list")
    for k, r in enumerate(d["rows"]):
        if not isinstance(r, dict) or not {"id", "component", "configuration"} <= set(r):
            raise DataError(path, f"rows[{k}]", "expected {id, component, configuration, ...}")
    manifest = build_dataclass(Table4Manifest, d, path)  # strict: unknown keys, typed values
    ids = [r.id for r in manifest.rows]
    if len(set(ids)) != len(ids):
        raise DataError(path, "rows", "row ids must be unique")
    return manifest


def _resolve(p: str, base: Path) -> Path:
    q = Path(p)
    return q if q.is_absolute() or q.exists() else base / q


def perception_config(path: Path, *, oracle_masks: bool, no_vlm: bool):  # noqa: ANN201 - PerceptionConfig
    """The row's PerceptionConfig with the local overrides applied."""
    from dtwinseg.perception.builder import PerceptionConfig
    from dtwinseg.perception.vlm import VLMConfig

    cfg = PerceptionConfig.from_yaml(path)
    if oracle_masks:
        cfg = replace(cfg, source="oracle", sam_checkpoint=None)
    if no_vlm:
        cfg = replace(cfg, vlm=VLMConfig())
    return cfg


def _run_note(cfg, ck_spec: str) -> str:  # noqa: ANN001 - PerceptionConfig
    masks = "ground-truth masks" if cfg.source == "oracle" else f"SAM {cfg.sam_model_type}"
    if not cfg.proposals.refine:
        masks += " (no refinement)"
    sem = f"VLM {cfg.vlm.model}" if cfg.vlm.backend != "none" else (
        "ground-truth semantics" if cfg.source == "oracle" else "no semantics")
    return f"{masks}, {sem}, reasoner {ck_spec}"


def _missing(cfg, reasoning) -> str | None:  # noqa: ANN001 - PerceptionConfig, ReasoningConfig
    """Why a row cannot run here (a missing SAM checkpoint or adapter), else None."""
    if cfg.source == "sam" and cfg.sam_checkpoint not in (None, "random") and not Path(cfg.sam_checkpoint).is_file():
        return f"not run: SAM checkpoint {cfg.sam_checkpoint} missing (or use --oracle-masks)"
    if reasoning.adapter and not Path(reasoning.adapter).exists():
        return f"not run: adapter {reasoning.adapter} missing (train it: see its reasoning config)"
    return None


def run_row(row: Table4Row, manifest: Table4Manifest, dataset_spec: str, out: Path, *, base: Path,
            checkpoint: str | None, reasoning_config: str | None, oracle_masks: bool, no_vlm: bool,
            limit: int | None, progress: bool, log: Callable[[str], None], oracle_only: bool = False) -> dict:
    """Build, evaluate and summarise one row (never raises on a row's own failure)."""
    from dtwinseg.data_builders.build_dt import build_dt
    from dtwinseg.eval.checkpoints import Checkpoint, parse_checkpoint
    from dtwinseg.eval.compare import table4_values
    from dtwinseg.eval.harness import EvalOptions, evaluate

    from dtwinseg.reasoning import ReasoningConfig

    entry = {"id": row.id, "component": row.component, "configuration": row.configuration, "paper": row.paper,
             "giou": None, "ciou": None, "oracle_giou": None, "note": row.note}
    if row.perception is None and row.reasoning is None:
        entry["note"] = row.note or "not run"
        return entry
    try:
        pcfg = perception_config(_resolve(row.perception or manifest.full_perception, base),
                                 oracle_masks=oracle_masks, no_vlm=no_vlm)
        if row.reasoning is not None:
            rcfg, ck_spec = ReasoningConfig.from_yaml(_resolve(row.reasoning, base)), None
        else:
            rcfg = ReasoningConfig.from_yaml(_resolve(reasoning_config or manifest.reasoning, base))
            ck_spec = checkpoint
        if oracle_only:
            if row.reasoning is not None:
                entry["note"] = "not run: a reasoning row needs its reasoner (drop --oracle-only)"
                return entry
            ck, shown = Checkpoint(LABEL, "oracle-only", rcfg, reasoner=NoAnswer()), "none (oracle bound only)"
        elif ck_spec:
            ck, shown = parse_checkpoint(f"{LABEL}={ck_spec}", rcfg), ck_spec
        else:
            ck = Checkpoint(LABEL, "config", rcfg)
            shown = f"{rcfg.model} + {rcfg.adapter}" if rcfg.adapter else rcfg.model
        why = _missing(pcfg, ck.cfg)
        if why is not None:
            entry["note"] = why
            return entry
        cache, _ = build_dt(dataset_spec, pcfg, out / "dt_cache", limit=limit, progress=progress)
        evaluate(dataset_spec, cache.folder, [ck], out / "rows" / row.id,
                 EvalOptions(limit=limit, progress=progress, worst_k=0), log=log)
        entry.update(table4_values(out / "rows" / row.id, LABEL))
        if oracle_only:
            entry["giou"] = entry["ciou"] = None
        entry["note"] = _run_note(pcfg, shown)
    except (DataError, ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        entry["note"] = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return entry


def run_table4(dataset_spec: str, out: str | os.PathLike, manifest_path: str | os.PathLike = DEFAULT_MANIFEST, *,
               rows: Sequence[str] | None = None, checkpoint: str | None = None,
               reasoning_config: str | None = None, oracle_masks: bool = False, no_vlm: bool = False,
               limit: int | None = None, progress: bool = True, log: Callable[[str], None] = print,
               oracle_only: bool = False) -> dict:
    """Run the selected rows (all by default) and write ``table4.md`` / ``table4.json`` under ``out``.

    ``checkpoint`` / ``reasoning_config`` replace the reasoner of the perception rows (e.g. a local model
    or ``openai:gpt-4o-mini``); the SFTDT rows keep their own configs. ``oracle_only`` runs no reasoner
    and reports only the oracle bound of the perception rows. Returns ``{"rows", "markdown"}``.
    """
    from dtwinseg.eval.compare import table4_markdown

    manifest = load_manifest(manifest_path)
    base = DEFAULT_MANIFEST.parent.parent.parent
    chosen = manifest.rows
    if rows:
        unknown = sorted(set(rows) - {r.id for r in manifest.rows})
        if unknown:
            raise DataError(manifest_path, "rows", f"no row {unknown[0]!r}; rows: {', '.join(r.id for r in manifest.rows)}")
        chosen = [r for r in manifest.rows if r.id in set(rows)]
    out = Path(out)
    entries = [run_row(r, manifest, dataset_spec, out, base=base, checkpoint=checkpoint,
                       reasoning_config=reasoning_config, oracle_masks=oracle_masks, no_vlm=no_vlm, limit=limit,
                       progress=progress, log=log, oracle_only=oracle_only) for r in chosen]
    md = table4_markdown(entries)
    head = (f"# Table 4 on {dataset_spec}\n\nPercent; oracle gIoU = best union of each twin's own objects "
            "(perception bound). Paper columns: ReasonSeg val, DTwinSeger Table 4 (SFTDT row: Table 1).\n\n")
    atomic_write_text(out / "table4.md", head + md + "\n")
    atomic_write_json(out / "table4.json", {"dataset": dataset_spec, "rows": entries,
                                            "overrides": {"oracle_masks": oracle_masks, "no_vlm": no_vlm, "oracle_only": oracle_only,
                                                          "checkpoint": checkpoint, "limit": limit}})
    return {"rows": entries, "markdown": md}
