"""The DT cache: one twin file per sample, under a folder keyed by a hash of the perception config.

Layout::

    CACHE/
      <config_hash>/
        config.json          perception config that built these twins (no secrets), and its hash
        twins/<key>.json     one DigitalTwin per sample; <key> = sample id, percent-encoded (cut and
                             suffixed with a hash of the id when longer than 200 bytes)
        failures.jsonl       one record per failed sample: {"id", "error", "time"}
        manifest.json        counts of the last run (built, skipped, failed), written at its end
        manifest.<tag>.shard-I-of-N.json   the same per dataset and shard of a sharded build
        .lock.<tag>[.shard-I-of-N]          held (flock) while a build-dt process writes that dataset's
                             shard; <tag> is a digest of the dataset spec, so every dataset built with
                             one config (train, val, test) shares the folder and builds at the same time

Twins are written atomically, so a killed run leaves no half-written twin and a rerun skips every
finished sample. A twin file that does not parse or fails the schema (truncated by a full disk, edited by
hand, resized image) is reported by :meth:`DTCache.inspect` as corrupt: build-dt rebuilds it, eval counts it. Evaluation and the Seg-DT builder only read this folder: perception is never recomputed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from dtwinseg.io import (
    DataError,
    append_jsonl,
    atomic_write_json,
    bounded_name,
    iter_jsonl,
    read_json,
    stable_hash,
    utf8_bytes,
)
from dtwinseg.twin import DigitalTwin

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def sample_key(sample_id: str) -> str:
    """File-safe, collision-free name for a sample id: unsafe characters percent-encoded ("a/b" -> "a%2Fb"),
    and a long key cut to 200 bytes with a hash of the whole id (a 40-character CJK id encodes to 360)."""
    key = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in utf8_bytes(m.group(0))), sample_id)
    return bounded_name(key if key not in ("", ".", "..") else f"%{key}")


def config_hash(config: dict) -> str:
    return stable_hash(config, length=12)


def vlm_fallbacks(twin: DigitalTwin) -> int:
    """How many of a twin's VLM answers fell back to a default (null or unreadable content): semantics
    per object plus the granularity decision. 0 for twins whose semantics did not come from a VLM."""
    prov = twin.provenance or {}
    n = int(prov.get("semantic_fallbacks") or 0) if prov.get("semantic_source") == "vlm" else 0
    return n + int(bool(prov.get("granularity_fallback")))


class DTCache:
    """One config's folder of twins (``CACHE/<config_hash>``)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.twins_dir = self.folder / "twins"
        self.failures_path = self.folder / "failures.jsonl"

    # --- opening --------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, config: dict) -> DTCache:
        """Folder for ``config`` under ``root`` (created, with config.json, if new)."""
        h = config_hash(config)
        cache = cls(Path(root) / h)
        cache.twins_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = cache.folder / "config.json"
        if not cfg_path.exists():
            atomic_write_json(cfg_path, {"config_hash": h, "config": config})
        return cache

    @classmethod
    def open(cls, path: str | os.PathLike) -> DTCache:
        """Open a config folder, or a cache root holding exactly one config folder."""
        p = Path(path)
        if (p / "twins").is_dir():
            return cls(p)
        subs = sorted(d for d in p.glob("*/twins") if d.is_dir()) if p.is_dir() else []
        if len(subs) == 1:
            return cls(subs[0].parent)
        if not subs:
            raise FileNotFoundError(f"{p}: no DT cache here (expected {p}/<config_hash>/twins/)")
        names = ", ".join(s.parent.name for s in subs)
        raise DataError(p, None, f"holds twins of several perception configs ({names}); pass one of them")

    @property
    def config(self) -> dict:
        path = self.folder / "config.json"
        return read_json(path)["config"] if path.exists() else {}

    # --- twins ----------------------------------------------------------------------------------
    def path_for(self, sample_id: str) -> Path:
        return self.twins_dir / f"{sample_key(sample_id)}.json"

    def has(self, sample_id: str) -> bool:
        return self.path_for(sample_id).exists()

    def get(self, sample_id: str) -> DigitalTwin | None:
        """The cached twin, None when there is none; a corrupt twin file is a DataError naming it."""
        p = self.path_for(sample_id)
        if not p.exists():
            return None
        try:
            return DigitalTwin.load(p)
        except UnicodeDecodeError as e:
            raise DataError(p, None, f"not UTF-8 text ({e.reason})") from None
        except OSError as e:
            raise DataError(p, None, f"cannot read: {e.strerror or e}") from None

    def inspect(self, sample_id: str) -> tuple[str, DigitalTwin | None, str]:
        """(state, twin, reason): "missing", "corrupt" (does not parse or fails the schema; reason says
        why), "fallback" (built while the VLM gave no usable answer for some objects or the granularity:
        worth asking again) or "ok"."""
        try:
            twin = self.get(sample_id)
        except DataError as e:
            return "corrupt", None, str(e)
        if twin is None:
            return "missing", None, ""
        if vlm_fallbacks(twin):
            return "fallback", twin, f"{vlm_fallbacks(twin)} VLM fallback(s)"
        return "ok", twin, ""

    def put(self, sample_id: str, twin: DigitalTwin) -> Path:
        return twin.save(self.path_for(sample_id))

    def __len__(self) -> int:
        return sum(1 for _ in self.twins_dir.glob("*.json"))

    def iter_twins(self) -> Iterator[DigitalTwin]:
        for p in sorted(self.twins_dir.glob("*.json")):
            yield DigitalTwin.load(p)

    # --- failures and manifest ------------------------------------------------------------------
    def record_failure(self, sample_id: str, error: str) -> None:
        append_jsonl(self.failures_path, {"id": sample_id, "error": error, "time": time.time()})

    def failures(self) -> list[dict]:
        return list(iter_jsonl(self.failures_path))

    def write_manifest(self, counts: dict) -> None:
        atomic_write_json(self.folder / "manifest.json", {"counts": counts, "time": time.time()})
