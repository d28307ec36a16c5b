"""The evaluation harness: reasoning over cached twins for several checkpoints, resumable and sharded.

Layout of ``runs/NAME`` (``SFX`` is empty for one process, ``.shard-I-of-N`` under sharding)::

    run.json                         dataset spec, DT cache, checkpoints, reasoning configs (no secrets)
    .lock{SFX}                       held (flock) while a process writes this shard; free after kill -9
    <label>/identity{SFX}.json       model, adapter, backend, format, reasoning hash of these results
    <label>/predictions{SFX}.jsonl   one record per sample (appended and flushed: a rerun resumes)
    <label>/state{SFX}.json          merged-able metric accumulators + parse and failure counts
    metrics.json                     all shards merged (written when every shard's state is present)
    report.md, plots/*.png, worst/<label>/*.png

Perception is never recomputed: twins come from the DT cache. A sample without a usable twin (missing,
corrupt, or of another size than the image) is scored as the empty prediction and counted; a sample the
reader cannot load is counted and not scored; a reasoner that raises on a batch is retried one sample
at a time, and what still fails is recorded with its error. A rerun resumes, checks that each label is
still the same checkpoint (:mod:`eval.run_info`) and, with ``retry_failed`` (default), re-runs the samples
that failed with an error. Record kinds and counts: :mod:`eval.records`.

Metric groups: ``overall``, ``short`` / ``long`` (``is_sentence``; ReasonSeg test's subsets) and one per
dimension tag (``dimensions``). Every group carries the **oracle bound**: gIoU / cIoU of the greedy
best union of the twin's own objects (:func:`dtwinseg.metrics.best_subset`), so perception
error (oracle < 1) and reasoning error (model < oracle) are reported apart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtwinseg.data_builders.dt_cache import DTCache
from dtwinseg.data_builders.registry import open_dataset
from dtwinseg.data_builders.sample import Sample
from dtwinseg.eval.checkpoints import Checkpoint
from dtwinseg.eval.records import (
    STATUSES,
    failed_count,
    input_error_record,
    is_failure,
    load_records,
    merge_states,
    metrics_from_state,
    rewrite_records,
    sample_record,
    state_from_records,
    summary_line,
    twin_problem,
)
from dtwinseg.eval.report import write_report
from dtwinseg.eval.run_info import (
    check_merge_identities,
    check_twins,
    twin_cache_id,
    twin_digest,
    write_run_info,
)

from dtwinseg.io import (
    DataError,
    append_jsonl,
    atomic_write_json,
    check_label,
    read_json,
    remove_stale_temps,
    valid_text,
)
from dtwinseg.parsing import ParseResult
from dtwinseg.reasoning import ReasoningOutput, build_reasoner
from dtwinseg.runtime import ProgressBar, RunLock, iter_positions, parse_shard, shard_indices, shard_suffix
from dtwinseg.twin import DigitalTwin

__all__ = ["EvalOptions", "ShardResult", "STATUSES", "evaluate", "evaluate_shard", "load_records", "merge_run",
           "parse_shard", "run_checkpoint", "shard_indices", "shard_suffix"]


@dataclass
class EvalOptions:
    """limit: first N samples of the dataset (before sharding). shard: (i, n). batch_size: items per
    reason() call (default: the reasoning config's). worst_k: worst-case overlays per checkpoint.
    strict: malformed dataset files abort (True) or are skipped and counted (False). restart: start
    labels whose checkpoint changed over instead of refusing. retry_failed: re-run samples that failed
    with an error (API outage, missing / bad twin, bad input) when resuming."""

    limit: int | None = None
    shard: tuple[int, int] = (0, 1)
    batch_size: int | None = None
    worst_k: int = 4
    strict: bool = True
    progress: bool = True
    wandb: bool = False
    restart: bool = False
    retry_failed: bool = True


@dataclass
class ShardResult:
    """What one process did: each label's state for this shard, and the merged metrics (None while other
    shards are missing)."""

    states: dict[str, dict] = field(default_factory=dict)
    metrics: dict | None = None

    @property
    def all_failed_labels(self) -> list[str]:
        """Labels for which every sample of this shard failed with an error (a broken setup)."""
        return [lab for lab, s in self.states.items()
                if s["n"] + s.get("input_errors", 0) > 0 and failed_count(s) == s["n"] + s.get("input_errors", 0)]


# --- one checkpoint ----------------------------------------------------------------------------
def _resume(pred_path: Path, retry_failed: bool, log: Callable[[str], None], label: str) -> list[dict]:
    """Records to keep from an earlier run of this shard (failed ones dropped when retrying them)."""
    records = load_records(pred_path)
    unique = list({(r["id"], r.get("index")): r for r in records}.values())  # one record per sample
    if len(unique) != len(records):  # (written by an older version without the lock): the last one wins
        log(f"[{label}] dropped {len(records) - len(unique)} duplicate record(s)")
        records = unique
        rewrite_records(pred_path, records)
    if retry_failed:
        failed = [r for r in records if is_failure(r)]
        if failed:
            records = [r for r in records if not is_failure(r)]
            rewrite_records(pred_path, records)
            log(f"[{label}] retrying {len(failed)} sample(s) that failed with an error")
    if records:
        log(f"[{label}] resuming: {len(records)} samples already done")
    return records


def _fetch_twin(cache: DTCache, sample: Sample) -> tuple[DigitalTwin | None, str | None]:
    """(twin, None), (None, None) when there is none, or (None, why it is unusable)."""
    try:
        twin = cache.get(sample.id)
    except DataError as e:
        return None, f"corrupt twin file: {e}"
    if twin is not None and (problem := twin_problem(sample, twin)):
        return None, problem
    return twin, None


def _reason(reasoner: Any, items: list[tuple[DigitalTwin, str]], format_name: str) -> list[ReasoningOutput]:
    """``reasoner.reason(items)``; when the batch raises (not an interrupt), one item at a time, and an
    item that still raises becomes a failed output carrying the error."""
    try:
        return list(reasoner.reason(items))
    except Exception:  # noqa: BLE001 - one bad sample must not stop a long run
        if len(items) == 1:
            raise
    outs = []
    for item in items:
        try:
            outs.extend(reasoner.reason([item]))
        except Exception as e:  # noqa: BLE001
            outs.append(ReasoningOutput([], ParseResult("failed", [], ["reasoner raised"]), "", format_name,
                                        error=f"{type(e).__name__}: {e}"[:500]))
    return outs


def run_checkpoint(ck: Checkpoint, dataset: Any, cache: DTCache, out: Path, opts: EvalOptions,
                   log: Callable[[str], None] = print) -> dict:
    """Evaluate one checkpoint on this shard (resuming), write its state file; return the state."""
    ck_dir = out / ck.label
    ck_dir.mkdir(parents=True, exist_ok=True)
    sfx = shard_suffix(opts.shard)
    pred_path = ck_dir / f"predictions{sfx}.jsonl"
    check_twins(load_records(pred_path), cache, pred_path, ck.label)  # (before anything is rewritten)
    records = _resume(pred_path, opts.retry_failed, log, ck.label)
    done_ids = {r["id"] for r in records}
    done_positions = {r["index"] for r in records if r.get("kind") == "input_error"}
    indices = [k for k in shard_indices(len(dataset), opts.shard, opts.limit) if k not in done_positions]
    reasoner = None
    batch: list[tuple[int, Sample, DigitalTwin | None, str | None, str | None]] = []
    bs = opts.batch_size or ck.cfg.batch_size

    def emit(rec: dict) -> None:
        append_jsonl(pred_path, rec)
        records.append(rec)

    def flush() -> None:
        nonlocal reasoner
        with_twin = [(s, t) for _, s, t, bad, _ in batch if t is not None and bad is None]
        outs: list[ReasoningOutput] = []
        if with_twin:
            if reasoner is None:
                reasoner = ck.reasoner if ck.reasoner is not None else build_reasoner(ck.cfg)
            outs = _reason(reasoner, [(t, valid_text(s.query)) for s, t in with_twin], ck.cfg.format_name)
        it = iter(outs)
        for k, s, t, bad, sha in batch:
            out = next(it) if t is not None and bad is None else None
            emit({"index": k, **sample_record(s, t, out, twin_error=bad), **({"twin_sha": sha} if sha else {})})
        batch.clear()

    with ProgressBar(f"eval {ck.label}", len(indices), opts.progress) as bar:
        for k, sample in iter_positions(dataset, indices):
            if isinstance(sample, BaseException):
                emit(input_error_record(k, sample))
                bar.advance()
                continue
            if sample.id in done_ids:
                bar.advance()
                continue
            twin, problem = _fetch_twin(cache, sample)
            batch.append((k, sample, twin, problem, twin_digest(cache, sample.id) if twin is not None else None))
            if len(batch) >= bs:
                n = len(batch)
                flush()
                bar.advance(n)
        if batch:
            n = len(batch)
            flush()
            bar.advance(n)
    first_error = next((r["error"] for r in records if r.get("error")), None)
    if first_error:  # the cause of a broken setup in one line, not only in the predictions file
        log(f"[{ck.label}] first error: {first_error}")
    state = state_from_records(records)
    atomic_write_json(ck_dir / f"state{sfx}.json", {"shard": list(opts.shard), **state}, indent=None)
    return state


# --- a whole run -------------------------------------------------------------------------------
def evaluate_shard(dataset_spec: str, dt_cache: str | os.PathLike, checkpoints: Sequence[Checkpoint],
                   out: str | os.PathLike, opts: EvalOptions | None = None,
                   log: Callable[[str], None] = print) -> ShardResult:
    """Run every checkpoint on this shard (under the shard's lock), log one summary line per label, and
    merge and report when all shards are done."""
    opts = opts or EvalOptions()
    out = Path(out)
    for ck in checkpoints:
        check_label(ck.label, "--checkpoint label")
    if opts.limit is not None and opts.limit < 1:
        raise DataError(None, "--limit", f"must be at least 1, got {opts.limit}")
    dataset = open_dataset(dataset_spec, strict=opts.strict)
    cache = DTCache.open(dt_cache)
    result = ShardResult()
    t0 = time.time()
    i, n = opts.shard
    with RunLock(out / f".lock{shard_suffix(opts.shard)}", f"{out} (shard {i}/{n})"):
        for folder in (out, *(out / ck.label for ck in checkpoints)):
            remove_stale_temps(folder)  # left by a writer killed with -9 (only this tool's own temp files)
        write_run_info(out, dataset_spec, dt_cache, checkpoints, limit=opts.limit, shards=n,
                       n_samples=len(shard_indices(len(dataset), (0, 1), opts.limit)),
                       split=getattr(dataset, "split", None), skipped=getattr(dataset, "skipped", []),
                       restart=opts.restart, shard=opts.shard, twin_cache=twin_cache_id(cache))
        for ck in checkpoints:
            result.states[ck.label] = run_checkpoint(ck, dataset, cache, out, opts, log)
    skipped = len(getattr(dataset, "skipped", []))
    log(f"shard {i}/{n} done in {time.time() - t0:.1f} s" + (f"; {skipped} input file(s) skipped" if skipped else ""))
    for label, state in result.states.items():
        log(summary_line(label, state))
    result.metrics = merge_run(out, opts=opts, log=log)
    return result


def evaluate(dataset_spec: str, dt_cache: str | os.PathLike, checkpoints: Sequence[Checkpoint],
             out: str | os.PathLike, opts: EvalOptions | None = None,
             log: Callable[[str], None] = print) -> dict | None:
    """Run every checkpoint on this shard; merge and report when all shards are done.

    Returns the merged metrics dict, or None while other shards are still missing.
    """
    return evaluate_shard(dataset_spec, dt_cache, checkpoints, out, opts, log).metrics


def _run_info(path: Path) -> dict:
    """run.json, checked: a damaged one is one line naming the file and field, not a KeyError."""
    info = read_json(path)
    if not isinstance(info, dict):
        raise DataError(path, None, "not a dtwinseg eval run file (expected a JSON object)")
    cks = info.get("checkpoints")
    if not isinstance(cks, dict) or not all(isinstance(v, dict) for v in cks.values()):
        raise DataError(path, "checkpoints", "missing or malformed: rerun `dtwinseg eval` into this folder")
    if not isinstance(info.get("dataset"), str):
        raise DataError(path, "dataset", "missing or malformed: rerun `dtwinseg eval` into this folder")
    shards = info.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise DataError(path, "shards", f"expected a positive integer, got {shards!r}")
    return {**info, "shards": shards}


def _shard_state(path: Path) -> dict:
    """One shard's state file, checked by merging it alone (a damaged file names itself)."""
    state = read_json(path)
    try:
        merge_states([state])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(path, None, f"malformed shard state ({type(e).__name__}: {e}); rerun `dtwinseg eval` "
                                    "for this shard") from None
    return state


def merge_run(out: str | os.PathLike, opts: EvalOptions | None = None, log: Callable[[str], None] = print,
              require_all: bool = True) -> dict | None:
    """Merge the shard states of every checkpoint of a run into metrics.json and write the report.

    Returns None (and writes nothing) while some shard state is missing and ``require_all``.
    """
    out = Path(out)
    opts = opts or EvalOptions()
    info_path = out / "run.json"
    if not info_path.exists():
        raise DataError(info_path, None, "not an eval run folder (no run.json)")
    info = _run_info(info_path)
    n = info["shards"]
    per_ck: dict[str, dict] = {}
    for label, desc in info["checkpoints"].items():
        check_merge_identities(out, label, n)
        paths = [out / label / f"state{shard_suffix((i, n))}.json" for i in range(n)]
        missing = [p for p in paths if not p.exists()]
        if missing:
            if require_all:
                log(f"waiting for {len(missing)} shard(s) of {label}; run `dtwinseg eval-merge {out}` later")
                return None
            paths = [p for p in paths if p.exists()]
        state = merge_states([_shard_state(p) for p in paths])
        per_ck[label] = {**{k: v for k, v in desc.items() if k != "reasoning"}, **metrics_from_state(state)}
    metrics = {"dataset": info["dataset"], "split": info.get("split"), "dt_cache": info.get("dt_cache"),
               "n_samples": info.get("n_samples"), "checkpoints": per_ck, "time": time.time()}
    atomic_write_json(out / "metrics.json", metrics)
    write_report(out, metrics, worst_k=opts.worst_k, wandb_log=opts.wandb, log=log)
    return metrics
