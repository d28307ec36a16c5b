"""``dtwinseg build-dt``: one DigitalTwin per dataset sample, cached (data_builders/dt_cache.py).

- Resumable: a sample whose twin exists is skipped; twins are written atomically, so a killed run
  leaves no half-written file and a rerun continues where it stopped. A cached twin that does not parse
  or fails the schema, or whose size is no longer the image's, is rebuilt (``rebuilt_corrupt``); one
  built while the VLM gave no usable answer (null content: ``vlm_fallbacks`` in its provenance) is built
  again (``refilled``) unless ``refill_fallbacks=False``. A lock file per shard stops two processes
  building the same shard.
- ``shard=(i, n)`` (:mod:`dtwinseg.runtime`): this process takes the samples whose index (in the reader's
  stable order, after ``limit``) is i modulo n, so N processes / machines split a dataset with no overlap
  and no gap.
- A failing sample (unreadable image, VLM error after retries, bad instances) is recorded in the cache's
  failures file and the run goes on; the counts are printed and written to the manifest. The failures
  file lists what is failing now: a sample that succeeds on a rerun leaves it, one that fails again keeps
  only its latest line. A full disk, a read-only file system or too many open files is not a sample's
  failure: the run stops with one line naming the path (``dtwinseg.io.OutputError``).
- Two passes: ``vlm.backend: none`` caches proposals only (semantics ""); ``fill_semantics=True`` then
  reads those twins and writes twins with VLM semantics to the folder of the full config (marked
  ``semantics_pass: second``, since the granularity was not the VLM's).
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dtwinseg.data_builders.dt_cache import DTCache
from dtwinseg.data_builders.registry import open_dataset, parse_spec

from dtwinseg.io import (
    DataError,
    append_jsonl,
    atomic_write_json,
    is_fatal_os_error,
    iter_jsonl,
    remove_stale_temps,
    write_jsonl,
)
from dtwinseg.perception.builder import PerceptionConfig, TwinBuilder
from dtwinseg.perception.prefetch import decode_rgb, prefetch
from dtwinseg.runtime import FileLock, RunLock, iter_positions, parse_shard, shard_indices, shard_suffix
from dtwinseg.runtime import progress as show_progress

__all__ = ["BuildCounts", "build_dt", "cache_config", "parse_shard", "proposals_only", "shard_indices"]


@dataclass
class BuildCounts:
    """What one run did. ``input_skipped``: files the reader skipped (malformed under strict=False, and
    annotations without an image). ``rebuilt_corrupt`` / ``refilled``: cached twins built again because
    they were corrupt or stale (another size than the image) / had VLM fallbacks (also counted in
    ``built`` or ``failed``)."""

    samples: int = 0
    built: int = 0
    existing: int = 0
    failed: int = 0
    input_skipped: int = 0
    rebuilt_corrupt: int = 0
    refilled: int = 0
    granularity_fallbacks: int = 0
    semantic_fallbacks: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def all_failed(self) -> bool:
        """Every sample of this shard failed (a broken setup rather than bad luck)."""
        return self.samples > 0 and self.failed == self.samples

    def summary(self) -> str:
        """One line: what happened to the samples of this run."""
        return (f"build-dt: {self.samples} samples: {self.built} built, {self.existing} existing, "
                f"{self.failed} failed, {self.input_skipped} input files skipped, {self.rebuilt_corrupt} "
                f"corrupt twins rebuilt, {self.refilled} refilled after VLM fallbacks")


def cache_config(config: PerceptionConfig, *, fill_semantics: bool = False) -> dict:
    """The dict a cache folder is keyed by: the config's identity (no operational fields, no secrets: the
    VLM config holds an env variable name)."""
    d = config.identity()
    if fill_semantics:
        d["semantics_pass"] = "second"
    return d


def proposals_only(config: PerceptionConfig) -> PerceptionConfig:
    """The same config with no VLM: what the first pass of a two-pass build used."""
    c = copy.deepcopy(config)
    c.vlm.backend = "none"
    return c


def build_dt(
    dataset_spec: str,
    config: PerceptionConfig,
    out: str | os.PathLike,
    *,
    shard: tuple[int, int] = (0, 1),
    limit: int | None = None,
    strict: bool = True,
    fill_semantics: bool = False,
    builder: TwinBuilder | None = None,
    progress: bool = True,
    refill_fallbacks: bool = True,
    prefetch_depth: int = 4,
) -> tuple[DTCache, BuildCounts]:
    """Build (or resume) the twins of a dataset shard into ``out``; returns the cache and the counts.

    ``prefetch_depth`` images are read and decoded ahead in threads (dtwinseg.perception.prefetch) while
    the current one is in SAM / the VLM; a sample whose twin is cached is not decoded."""
    dataset = open_dataset(dataset_spec, strict=strict)
    cache = DTCache.create(out, cache_config(config, fill_semantics=fill_semantics))
    source = DTCache.create(out, cache_config(proposals_only(config))) if fill_semantics else None
    counts = BuildCounts(input_skipped=len(dataset.skipped))
    indices = shard_indices(len(dataset), shard, limit)
    # one lock per dataset and shard: a cache folder is shared by every dataset built with one config, and
    # shard 0 of the train split must not block shard 0 of the val split (their twins are distinct files)
    tag = dataset_tag(dataset_spec)
    with RunLock(cache.folder / f".lock.{tag}{shard_suffix(shard)}",
                 f"{cache.folder} ({dataset_spec}, shard {shard[0]}/{shard[1]})"):
        for folder in (cache.folder, cache.twins_dir):
            remove_stale_temps(folder)  # left by a writer killed with -9 (only this tool's own temp files)
        failures = FailureLog(cache)
        builder = builder or TwinBuilder(config)

        def prepare(item: tuple[int, Any]) -> tuple[str, Any, Any]:
            """Runs ahead in a worker thread: the cache state of a sample and, when its twin will be
            (re)built from the image, the decoded image, so JPEG decoding overlaps SAM / the VLM."""
            sample = item[1]
            if isinstance(sample, Exception):
                return "error", None, None
            state, cached, _ = cache.inspect(sample.id)
            if cached is not None and (cached.height, cached.width) != tuple(sample.gt_mask.shape):
                state = "corrupt"  # the image changed size since the twin was built: it is stale
            rebuild = state != "ok" and not (state == "fallback" and not refill_fallbacks)
            image = decode_rgb(sample.image_path) if rebuild and source is None else None
            return state, cached, image

        samples = prefetch(iter_positions(dataset, indices), prepare, depth=prefetch_depth)
        for (idx, sample), prepared in show_progress(samples, f"twins {dataset_spec}", progress,
                                                     total=len(indices)):
            counts.samples += 1
            sid = f"#{idx}"
            failures.seen(sid)
            try:
                if isinstance(sample, Exception):
                    raise sample
                sid = sample.id
                failures.seen(sid)
                if isinstance(prepared, Exception):  # the image could not be read or decoded
                    raise prepared
                state, _, image = prepared
                if state == "ok" or (state == "fallback" and not refill_fallbacks):
                    counts.existing += 1
                    continue
                counts.rebuilt_corrupt += state == "corrupt"
                counts.refilled += state == "fallback"
                twin = _build_one(builder, sample, sid, source, image)
                cache.put(sid, twin)
            except Exception as e:  # noqa: BLE001 - one bad sample must not stop a long run
                if is_fatal_os_error(e):  # disk full, read-only, too many open files: every sample would fail
                    raise
                failures.record(sid, f"{type(e).__name__}: {e}")
                counts.failed += 1
                continue
            counts.built += 1
            counts.granularity_fallbacks += int(bool(twin.provenance.get("granularity_fallback")))
            counts.semantic_fallbacks += int(twin.provenance.get("semantic_fallbacks", 0))
        failures.prune()
        write_manifest(cache, counts, shard, dataset_spec)
    return cache, counts


class FailureLog:
    """The cache's failures file as this run maintains it: each failure appended at once (a killed run
    keeps it), and at the end the lines of the samples this run handled replaced by this run's outcome
    (gone when the sample now has its twin, the latest line when it failed again). Shards share the file
    under a lock (``.failures.lock``)."""

    def __init__(self, cache: DTCache):
        self.cache = cache
        self.lock = cache.folder / ".failures.lock"
        self._seen: set[str] = set()
        self._mine: set[tuple[str, float]] = set()

    def seen(self, sample_id: str) -> None:
        self._seen.add(sample_id)

    def record(self, sample_id: str, error: str) -> None:
        """Append one failure ({"id", "error", "time"}: the record DTCache.failures() reads)."""
        rec = {"id": sample_id, "error": error, "time": time.time()}
        with FileLock(self.lock):
            append_jsonl(self.cache.failures_path, rec)
        self._mine.add((sample_id, rec["time"]))

    def prune(self) -> None:
        """Drop the stale lines of the samples this run handled (the ones it did not write itself)."""
        path = self.cache.failures_path
        with FileLock(self.lock):
            if not path.exists():
                return
            lines = list(iter_jsonl(path))
            keep = [r for r in lines if r.get("id") not in self._seen or (r.get("id"), r.get("time")) in self._mine]
            if len(keep) != len(lines):
                write_jsonl(path, keep)


def _build_one(builder: TwinBuilder, sample: Any, sid: str, source: DTCache | None, image: Any = None) -> Any:
    """The twin of one sample: built from the image (already decoded by the prefetcher, else read here), or
    (second pass) the cached proposals-only twin with VLM semantics filled in."""
    if source is None:
        return builder.build(image if image is not None else sample.image_path, sample.query, sid,
                             instances=sample.instances, granularity=sample.granularity)
    twin = source.get(sid)
    if twin is None:
        raise FileNotFoundError(f"no proposals-only twin in {source.folder}: run build-dt with --vlm none first")
    return builder.fill_semantics(twin, sample.image_path)


def dataset_tag(spec: str) -> str:
    """A short name of a dataset for the files it owns in a cache that several datasets share (its lock,
    its shard manifests): a digest of NAME:ROOT:SPLIT with a local root made absolute, so two spellings
    of one folder name the same dataset."""
    try:
        parsed = parse_spec(spec)
    except DataError:
        return hashlib.blake2b(spec.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    root = parsed.root
    if root and os.path.exists(root):
        root = str(Path(root).resolve())
    key = f"{parsed.name}:{root}:{parsed.split}"
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def write_manifest(cache: DTCache, counts: BuildCounts, shard: tuple[int, int], spec: str) -> None:
    """manifest.json for a whole run; manifest.<dataset tag>.shard-i-of-n.json per dataset and shard (no
    two writers collide, also when several datasets' shards are built into one cache at once)."""
    record = {**counts.to_dict(), "dataset": spec, "shard": f"{shard[0]}/{shard[1]}"}
    if shard[1] == 1:
        cache.write_manifest(record)
    else:
        atomic_write_json(cache.folder / f"manifest.{dataset_tag(spec)}.shard-{shard[0]}-of-{shard[1]}.json",
                          {"counts": record, "time": time.time()})
