"""Samples and splits: the seeded sample generator and the ReasonSeg-format writer (images, annotations,
instance sidecars, synthetic.json), and the ``synthetic:ROOT:SPLIT`` reader registration."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dtwinseg.data_builders.synthetic.config import DIMENSIONS, SynthConfig
from dtwinseg.data_builders.synthetic.geometry import mask_polygons
from dtwinseg.data_builders.synthetic.queries import PROGRAMS, REQUIRE, Query
from dtwinseg.data_builders.synthetic.rendering import Scene, render_scene
from PIL import Image

from dtwinseg.io import DataError, atomic_write_bytes, atomic_write_json


@dataclass
class SynthSample:
    """One generated sample: the scene and its query."""

    name: str
    scene: Scene
    query: Query
    is_sentence: bool

    @property
    def text(self) -> str:
        return self.query.sentence if self.is_sentence else self.query.text

    def target_mask(self) -> np.ndarray:
        out = np.zeros(self.scene.image.shape[:2], dtype=bool)
        for t in self.query.targets:
            out |= self.scene.instance_mask(t)
        return out

    def annotation(self) -> dict:
        """The ReasonSeg-format JSON (target polygons per target instance) plus the extra tags."""
        shapes = []
        for t in self.query.targets:
            for poly in mask_polygons(self.scene.instance_mask(t)):
                shapes.append({"label": "target", "shape_type": "polygon", "points": poly,
                               "group_id": None, "flags": {}})
        h, w = self.scene.image.shape[:2]
        return {"text": [self.text], "is_sentence": self.is_sentence, "shapes": shapes,
                "dimension": self.query.dimension, "granularity": self.query.granularity,
                "program": self.query.program, "targets": self.query.targets,
                "imageHeight": h, "imageWidth": w, "imagePath": f"{self.name}.jpg"}


_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def _split_code(split: str) -> int:
    return _SPLIT_CODES.get(split, sum(map(ord, split)) + 3)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent generator per (seed, split, index): a sample does not depend on the split's size."""
    return np.random.default_rng([int(seed), _split_code(split), int(index)])


def generate_sample(seed: int, split: str, index: int, cfg: SynthConfig | None = None,
                    dimension: str | None = None) -> SynthSample:
    """The ``index``-th sample of a split; dimensions cycle through DIMENSIONS unless given. The realistic
    profile's ``test_seen`` split holds the scenes and targets of ``test``, worded and phrased as train."""
    return generate_samples(seed, [split], index, cfg, dimension)[0]


def scene_split(split: str, cfg: SynthConfig) -> str:
    """The split whose scenes ``split`` holds (itself, but test for the realistic profile's test_seen)."""
    if cfg.profile == "realistic":
        from dtwinseg.data_builders.synthetic.realistic.sample import split_role

        return split_role(split)[0]
    return split


def generate_samples(seed: int, splits: list[str], index: int, cfg: SynthConfig | None = None,
                     dimension: str | None = None) -> list[SynthSample]:
    """The ``index``-th sample of each of ``splits``, which must hold the same scenes (:func:`scene_split`):
    the scene is drawn once and worded for each split."""
    cfg = cfg or SynthConfig()
    dims = list(DIMENSIONS) if dimension is None else [dimension]
    first = DIMENSIONS[index % len(DIMENSIONS)] if dimension is None else dimension
    order = [first] + [d for d in dims if d != first]
    if cfg.profile == "realistic":
        from dtwinseg.data_builders.synthetic.realistic.sample import realistic_samples, split_role

        scenes = {split_role(s)[0] for s in splits}
        if len(scenes) != 1:
            raise ValueError(f"splits {splits} do not hold the same scenes")
        (shared,) = scenes
        got = realistic_samples(sample_rng(seed, shared, index), seed, _split_code(shared), index,
                                [split_role(s)[1] for s in splits], cfg, order)
        if got is None:
            _cannot(seed, splits[0], index, order, cfg)
        return [SynthSample(f"{split}_{index:05d}", scene, query, is_sentence)  # type: ignore[arg-type]
                for split, (scene, query, is_sentence) in zip(splits, got, strict=True)]
    if len(splits) != 1:
        raise ValueError("the basic profile draws one split's sample at a time")
    split = splits[0]
    rng = sample_rng(seed, split, index)
    for dim in order:  # the cycled dimension first; fall back to others only if it is impossible
        for _ in range(cfg.max_tries):
            scene = render_scene(rng, cfg, require=REQUIRE.get(dim))
            if scene is None:
                continue
            q = PROGRAMS[dim](rng, scene.objects, cfg)
            if q is None or not q.targets:
                continue
            return [SynthSample(f"{split}_{index:05d}", scene, q, bool(rng.random() < cfg.p_sentence))]
    _cannot(seed, split, index, order, cfg)
    raise AssertionError("unreachable")


def _cannot(seed: int, split: str, index: int, order: list[str], cfg: SynthConfig) -> None:
    what = ("lower realistic.min_masks or raise realistic.max_masks" if cfg.profile == "realistic"
            else "lower min_objects / max_objects")
    raise DataError(None, "max_tries", f"could not generate sample {split}/{index} (seed {seed}) for any of "
                                       f"{order} in {cfg.max_tries} tries each: raise max_tries, {what}, or "
                                       "enlarge size")


def write_sample(folder: str | os.PathLike, sample: SynthSample, jpeg_quality: int = 95) -> None:
    """Write <name>.jpg, <name>.json (ReasonSeg format) and <name>.instances.json, each atomically."""
    folder = Path(folder)
    buf = io.BytesIO()
    Image.fromarray(sample.scene.image).save(buf, format="JPEG", quality=jpeg_quality)
    atomic_write_bytes(folder / f"{sample.name}.jpg", buf.getvalue())
    atomic_write_json(folder / f"{sample.name}.instances.json",
                      {"objects": sample.scene.instances(), "targets": sample.query.targets}, indent=None)
    atomic_write_json(folder / f"{sample.name}.json", sample.annotation(), indent=None)


def _write_one(out: str, splits: list[str], i: int, seed: int, cfg: SynthConfig) -> list[str]:
    """Generate and write the ``i``-th sample of splits that share scenes (a worker's unit); their dimensions."""
    samples = generate_samples(seed, splits, i, cfg)
    for split, s in zip(splits, samples, strict=True):
        write_sample(Path(out) / split, s, cfg.jpeg_quality)
    return [s.query.dimension for s in samples]


def write_dataset(out: str | os.PathLike, sizes: dict[str, int], seed: int = 0, cfg: SynthConfig | None = None,
                  progress: bool = True, jobs: int = 1) -> dict:
    """Generate ``sizes`` = {split: n} samples under ``out/<split>/``; returns counts per split and dimension.

    Also writes ``out/synthetic.json`` (config, seed, counts) so a folder says how it was made. ``jobs`` > 1
    generates in that many worker processes (spawned, so nothing of the caller's threads is inherited); every
    sample depends only on (seed, split, index, config), so the files are byte-identical to ``jobs: 1``.
    """
    cfg = cfg or SynthConfig()
    out = Path(out)
    counts: dict[str, dict] = {}
    total = sum(sizes.values())
    from dtwinseg.runtime import ProgressBar

    # splits holding the same scenes (the realistic test and test_seen) draw each scene once
    groups: dict[tuple[str, int], list[str]] = {}
    for split, n in sizes.items():
        for i in range(n):
            groups.setdefault((scene_split(split, cfg), i), []).append(split)
    tasks = [(splits, i) for (_, i), splits in groups.items()]
    dims: dict[tuple[str, int], str] = {}
    with ProgressBar("synthetic scenes", total, progress) as bar:
        if jobs > 1 and len(tasks) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
                futures = {pool.submit(_write_one, str(out), splits, i, seed, cfg): (splits, i) for splits, i in tasks}
                for fut in as_completed(futures):
                    splits, i = futures[fut]
                    for split, dim in zip(splits, fut.result(), strict=True):
                        dims[(split, i)] = dim
                    bar.advance(len(splits))
        else:
            for splits, i in tasks:
                for split, dim in zip(splits, _write_one(str(out), splits, i, seed, cfg), strict=True):
                    dims[(split, i)] = dim
                bar.advance(len(splits))
    for split, n in sizes.items():
        per_dim: dict[str, int] = {}
        for i in range(n):
            per_dim[dims[(split, i)]] = per_dim.get(dims[(split, i)], 0) + 1
        counts[split] = {"n": n, "dimensions": per_dim}
    atomic_write_json(out / "synthetic.json", {"seed": seed, "config": cfg.to_dict(), "splits": counts})
    return counts


def open_synthetic(root: str, split: str, strict: bool = True):  # noqa: ANN201 - a registry Dataset
    """Reader for ``synthetic:ROOT:SPLIT``: the ReasonSeg reader, which also reads the dimension tags and
    the ``<stem>.instances.json`` sidecars written here."""
    from dtwinseg.data_builders.reasonseg import ReasonSegDataset

    return ReasonSegDataset(root, split, strict=strict)


def _register() -> None:
    from dtwinseg.data_builders.registry import _READERS, register_reader

    if "synthetic" not in _READERS:
        register_reader("synthetic")(open_synthetic)


_register()
