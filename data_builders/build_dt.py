"""``dtwinseg build-dt``: one DigitalTwin per dataset sample, cached (data_builders/dt_cache.py).

- Resumable: a sample whose twin exists is skipped; twins are written atomically, so a killed run
  leaves no half-written file and a rerun continues where it stopped.
- ``shard=(i, n)``: this process takes the samples whose index (in the reader's stable order, after
  ``limit``) is i modulo n, so N processes / machines split a dataset with no overlap and no gap.
- A failing sample (unreadable image, VLM error after retries, bad instances) is recorded in the cache's
  failures file and the run goes on; the counts are printed and written to the manifest.
- Two passes: ``vlm.backend: none`` caches proposals only (semantics ""); ``fill_semantics=True`` then
  reads those twins and writes twins with VLM semantics to the folder of the full config (marked
  ``semantics_pass: second``, since the granularity was not the VLM's).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from data_builders.dt_cache import DTCache
from data_builders.registry import open_dataset
from dtwinseg.io import atomic_write_json
from dtwinseg.perception.builder import PerceptionConfig, TwinBuilder

T = TypeVar("T")


@dataclass
class BuildCounts:
    """What one run did. ``input_skipped``: files the reader skipped under strict=False."""

    samples: int = 0
    built: int = 0
    existing: int = 0
    failed: int = 0
    input_skipped: int = 0
    granularity_fallbacks: int = 0
    semantic_fallbacks: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_indices(n_samples: int, shard: tuple[int, int] = (0, 1), limit: int | None = None) -> list[int]:
    """Indices this shard handles: the first ``limit`` samples (all when None), those == i mod n."""
    i, n = shard
    total = n_samples if limit is None else min(limit, n_samples)
    return list(range(i, total, n))


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
) -> tuple[DTCache, BuildCounts]:
    """Build (or resume) the twins of a dataset shard into ``out``; returns the cache and the counts."""
    dataset = open_dataset(dataset_spec, strict=strict)
    cache = DTCache.create(out, cache_config(config, fill_semantics=fill_semantics))
    source = DTCache.create(out, cache_config(proposals_only(config))) if fill_semantics else None
    builder = builder or TwinBuilder(config)
    counts = BuildCounts(input_skipped=len(dataset.skipped))
    indices = shard_indices(len(dataset), shard, limit)
    for idx, sample in _progress(_shard_samples(dataset, indices), f"twins {dataset_spec}", progress,
                                 total=len(indices)):
        counts.samples += 1
        sid = f"#{idx}"
        try:
            if isinstance(sample, Exception):
                raise sample
            sid = sample.id
            if cache.has(sid):
                counts.existing += 1
                continue
            if source is not None:
                twin = source.get(sid)
                if twin is None:
                    raise FileNotFoundError(f"no proposals-only twin in {source.folder}: run build-dt with "
                                            "--vlm none first")
                twin = builder.fill_semantics(twin, sample.image_path)
            else:
                twin = builder.build(sample.image_path, sample.query, sid, instances=sample.instances,
                                     granularity=sample.granularity)
            cache.put(sid, twin)
        except Exception as e:  # noqa: BLE001 - one bad sample must not stop a long run
            cache.record_failure(sid, f"{type(e).__name__}: {e}")
            counts.failed += 1
            continue
        counts.built += 1
        counts.granularity_fallbacks += int(bool(twin.provenance.get("granularity_fallback")))
        counts.semantic_fallbacks += int(twin.provenance.get("semantic_fallbacks", 0))
    write_manifest(cache, counts, shard, dataset_spec)
    return cache, counts


def _shard_samples(dataset: Any, indices: list[int]) -> Iterator[tuple[int, Any]]:
    """(index, Sample or the exception reading it) for ``indices``: random access when the reader has
    it, else one pass over the reader."""
    if hasattr(dataset, "__getitem__"):
        for i in indices:
            try:
                yield i, dataset[i]
            except Exception as e:  # noqa: BLE001 - recorded as this sample's failure
                yield i, e
        return
    if not indices:
        return
    wanted, last = set(indices), indices[-1]
    for i, sample in enumerate(dataset):
        if i in wanted:
            yield i, sample
        if i >= last:
            return


def write_manifest(cache: DTCache, counts: BuildCounts, shard: tuple[int, int], spec: str) -> None:
    """manifest.json for a whole run; manifest.shard-i-of-n.json per shard (no two writers collide)."""
    record = {**counts.to_dict(), "dataset": spec, "shard": f"{shard[0]}/{shard[1]}"}
    if shard[1] == 1:
        cache.write_manifest(record)
    else:
        import time

        atomic_write_json(cache.folder / f"manifest.shard-{shard[0]}-of-{shard[1]}.json",
                          {"counts": record, "time": time.time()})


def _progress(items: Iterable[T], label: str, enabled: bool, total: int | None = None) -> Iterator[T]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, disable=not enabled, transient=False) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)
