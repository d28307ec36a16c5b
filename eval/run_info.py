"""What an eval run folder evaluates, checked on every rerun so that a resume never mixes results.

``run.json`` names the dataset, DT cache, limit, sharding and every checkpoint (no secrets: only the key
variable's name). Each label's folder also holds ``identity{SFX}.json`` per shard: the model, adapter,
backend, format (its name), a hash of the reasoning settings that change answers and the twin cache (the config
hash of the DT cache folder the twins came from). The content of the twins is part of it too: every
prediction records the digest of the twin file it was computed on (``twin_sha``, the run's content
manifest), and a resume whose twins changed or disappeared since refuses (:func:`check_twins`). A rerun whose checkpoint
differs from the one that wrote the existing predictions refuses with a clear message, unless
``restart`` says to start that label's shard over (its predictions and state are then removed). The merge
refuses shards written by different identities. Identity files written before the reasoning format had one
name (``strategy`` where ``format`` is now) are read as the same identity, and the reasoning hash is taken
over the settings laid out as then (:func:`hashed_settings`), so those runs resume.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dtwinseg.eval.checkpoints import Checkpoint, recorded_format

from dtwinseg.io import DataError, atomic_write_json, read_json, stable_hash
from dtwinseg.runtime import shard_suffix

# Reasoning fields that do not change what a model answers (throughput, transport, placement).
OPERATIONAL = frozenset({"batch_size", "concurrency", "max_retries", "backoff_s", "timeout_s", "device",
                         "api_key_env", "base_url", "vllm_kwargs"})
# Reasoning fields added after results were first saved (dotted paths into the hashed settings), hashed only
# away from the value that gives the earlier behaviour, so results saved before they existed keep their hash
# and resume.
ADDED_LATER = {"verdict_margin": 0.0, "format.spatial.fill_tokens": None, "similarity_prior": None,
               "prior_temperature": 0.05, "similarity_window": 0.0}
_EMBEDDING_SPEC = re.compile(r"(?:^|=)baseline:embedding(?::|$)")
IDENTITY_FIELDS = ("backend", "model", "adapter", "format", "reasoning_hash", "twin_cache")


def hashed_settings(ck: Checkpoint) -> dict:
    """The reasoning settings that change answers, laid out as every version has hashed them: the format's
    name as ``strategy`` beside its options ``format`` (the config's own to_dict nests the name since)."""
    cfg = ck.cfg.to_dict()
    options = dict(cfg.pop("format") or {})
    cfg.update(strategy=options.pop("name", ck.cfg.format_name), format=options)
    if _EMBEDDING_SPEC.search(ck.spec):
        # baseline:embedding reads the reasoning config's object lines (scene facts included) since it became
        # the peer of the rows reading them; it read the descriptions before: results saved then must not
        # resume under the same identity
        cfg["texts"] = "object_texts"
    return _without_earlier_behaviour({k: v for k, v in cfg.items() if k not in OPERATIONAL})


def _without_earlier_behaviour(settings: dict, prefix: str = "") -> dict:
    """``settings`` without the ADDED_LATER fields (at any depth) that hold their earlier behaviour's value."""
    out = {}
    for k, v in settings.items():
        path = prefix + k
        if path in ADDED_LATER and v == ADDED_LATER[path]:
            continue
        out[k] = _without_earlier_behaviour(v, path + ".") if isinstance(v, dict) else v
    return out


def identity(ck: Checkpoint, twin_cache: str | None = None) -> dict:
    """The identity of a checkpoint's results: backend, model, adapter, format (its name), reasoning-config
    hash, and the config hash of the twin cache they read (:func:`twin_cache_id`; left out when None)."""
    ident = {"backend": ck.cfg.backend, "model": ck.cfg.model, "adapter": ck.cfg.adapter,
             "format": ck.cfg.format_name, "reasoning_hash": stable_hash(hashed_settings(ck), length=16)}
    if twin_cache is not None:
        ident["twin_cache"] = twin_cache
    return ident


def read_identity(path: Path) -> dict | None:
    """An identity file as written now (one written with ``strategy`` gets it as ``format``)."""
    data = read_json(path)
    if not isinstance(data, dict):
        return None
    return _current(data)


def _current(ident: dict) -> dict:
    if "strategy" in ident and "format" not in ident:
        ident = {("format" if k == "strategy" else k): v for k, v in ident.items()}
    return ident


def twin_cache_id(cache: Any) -> str:
    """The config hash of a DT cache folder (its config.json's ``config_hash``, else the folder's name)."""
    path = cache.folder / "config.json"
    info = read_json(path) if path.is_file() else None
    return str(info.get("config_hash")) if isinstance(info, dict) and info.get("config_hash") else cache.folder.name


def twin_digest(cache: Any, sample_id: str) -> str | None:
    """Digest of the twin file of a sample in ``cache`` (None when it has none): what a prediction records."""
    try:
        data = cache.path_for(sample_id).read_bytes()
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest()[:16]


def check_twins(records: Sequence[dict], cache: Any, pred_path: Path, label: str) -> None:
    """Refuse (DataError) to resume predictions computed on twins that changed or disappeared since: each
    record's ``twin_sha`` against the twin file now in ``cache``. Twins added since (samples that had none)
    are fine: those samples failed and are retried."""
    changed = [r["id"] for r in records if r.get("twin_sha") and twin_digest(cache, r["id"]) != r["twin_sha"]]
    if changed:
        raise DataError(pred_path, "twin_sha", f"'{label}': {len(changed)} of its {len(records)} predictions "
                        f"were computed on twins that changed or are gone from {cache.folder} since (first: "
                        f"{changed[0]!r}). Pass --restart to evaluate it again on these twins, or use the DT "
                        "cache it was evaluated on, or another --out")


def _describe(ident: dict) -> str:
    return ", ".join(f"{k} {ident.get(k)!r}" for k in IDENTITY_FIELDS if ident.get(k) is not None)


def label_files(ck_dir: Path, shard: tuple[int, int]) -> list[Path]:
    """This shard's result files of one label (predictions, state, identity)."""
    sfx = shard_suffix(shard)
    return [ck_dir / f"predictions{sfx}.jsonl", ck_dir / f"state{sfx}.json", ck_dir / f"identity{sfx}.json"]


def check_identity(ck: Checkpoint, out: Path, shard: tuple[int, int], old_run: dict | None,
                   restart: bool, twin_cache: str | None = None) -> None:
    """Refuse (DataError) to resume a label's shard written by another checkpoint identity (or on another
    twin cache); with ``restart``, remove that shard's results instead. Then record the current identity."""
    ck_dir = out / ck.label
    preds, state, ident_path = label_files(ck_dir, shard)
    new = identity(ck, twin_cache)
    if preds.exists() or state.exists():
        old = read_identity(ident_path) if ident_path.exists() else _legacy_identity(old_run, ck.label)
        diff = [k for k in IDENTITY_FIELDS if old is not None and k in old and old[k] != new[k]]
        if diff and not restart:
            raise DataError(ident_path, ", ".join(diff),
                            f"'{ck.label}' in this run was evaluated with {_describe(old)}; now "
                            f"{_describe(new)}. Pass --restart to evaluate it again from scratch, or use "
                            "another label (NAME=SPEC) or --out")
        if diff or restart:
            for p in (preds, state):
                p.unlink(missing_ok=True)
    ck_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ident_path, new)


def _legacy_identity(old_run: dict | None, label: str) -> dict | None:
    """Identity fields a run.json written before identity files recorded for ``label``."""
    desc = ((old_run or {}).get("checkpoints") or {}).get(label)
    if not isinstance(desc, dict):
        return None
    old = {k: desc[k] for k in ("backend", "model", "adapter") if k in desc}
    name = recorded_format(desc)
    return {**old, "format": name} if name is not None else old


def check_merge_identities(out: Path, label: str, n_shards: int) -> None:
    """All shards of a label were written by one identity (else the merged numbers would mix models)."""
    seen = {}
    for i in range(n_shards):
        p = out / label / f"identity{shard_suffix((i, n_shards))}.json"
        if p.exists():
            seen[p] = read_identity(p)
    distinct = {stable_hash(v) for v in seen.values()}
    if len(distinct) > 1:
        names = ", ".join(p.name for p in seen)
        raise DataError(out / label, "identity", f"shards of '{label}' were evaluated by different checkpoints "
                                                 f"({names}); rerun the odd shards with --restart")


def write_run_info(out: Path, dataset_spec: str, dt_cache: str | os.PathLike, checkpoints: Sequence[Checkpoint],
                   *, limit: int | None, shards: int, n_samples: int, split: Any, skipped: Sequence,
                   restart: bool, shard: tuple[int, int], twin_cache: str | None = None) -> None:
    """run.json: what this run evaluates. A rerun must name the same dataset, limit and sharding; each
    label's identity (``twin_cache`` included: :func:`twin_cache_id`) is checked per shard
    (:func:`check_identity`)."""
    info_path = out / "run.json"
    info = {"dataset": str(dataset_spec), "split": split, "dt_cache": str(dt_cache), "limit": limit,
            "shards": shards, "n_samples": n_samples, "skipped_files": [list(x) for x in skipped],
            "checkpoints": {ck.label: {**ck.describe(), **identity(ck, twin_cache), "reasoning": ck.cfg.to_dict()}
                            for ck in checkpoints}}
    old = read_json(info_path) if info_path.exists() else None
    if old is not None:
        if not isinstance(old, dict):
            raise DataError(info_path, None, "expected a JSON object; remove it or use another --out")
        if old.get("dataset") != info["dataset"] or old.get("limit") != info["limit"]:
            raise DataError(info_path, "dataset", f"this run evaluated {old.get('dataset')} (limit "
                                                  f"{old.get('limit')}); use another --out for {dataset_spec}")
        if old.get("shards") != info["shards"]:
            raise DataError(info_path, "shards", f"this run was sharded {old.get('shards')} ways, not "
                                                 f"{info['shards']}")
    for ck in checkpoints:
        check_identity(ck, out, shard, old, restart, twin_cache)
    if old is not None:
        old_cks = dict(old.get("checkpoints") or {})
        old_cks.update(info["checkpoints"])
        info["checkpoints"] = old_cks
    atomic_write_json(info_path, info)
