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


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent generator per (seed, split, index): a sample does not depend on the split's size."""
    code = _SPLIT_CODES.get(split, sum(map(ord, split)) + 3)
    return np.random.default_rng([int(seed), code, int(index)])


def generate_sample(seed: int, split: str, index: int, cfg: SynthConfig | None = None,
                    dimension: str | None = None) -> SynthSample:
    """The ``index``-th sample of a split; dimensions cycle through DIMENSIONS unless given."""
    cfg = cfg or SynthConfig()
    rng = sample_rng(seed, split, index)
    dims = list(DIMENSIONS) if dimension is None else [dimension]
    first = DIMENSIONS[index % len(DIMENSIONS)] if dimension is None else dimension
    order = [first] + [d for d in dims if d != first]
    for dim in order:  # the cycled dimension first; fall back to others only if it is impossible
        for _ in range(cfg.max_tries):
            scene = render_scene(rng, cfg, require=REQUIRE.get(dim))
            if scene is None:
                continue
            q = PROGRAMS[dim](rng, scene.objects, cfg)
            if q is None or not q.targets:
                continue
            return SynthSample(f"{split}_{index:05d}", scene, q, bool(rng.random() < cfg.p_sentence))
    raise DataError(None, "max_tries", f"could not generate sample {split}/{index} (seed {seed}) for any of "
                                       f"{order} in {cfg.max_tries} tries each: raise max_tries, lower "
                                       "min_objects / max_objects, or enlarge size")


def write_sample(folder: str | os.PathLike, sample: SynthSample, jpeg_quality: int = 95) -> None:
    """Write <name>.jpg, <name>.json (ReasonSeg format) and <name>.instances.json, each atomically."""
    folder = Path(folder)
    buf = io.BytesIO()
    Image.fromarray(sample.scene.image).save(buf, format="JPEG", quality=jpeg_quality)
    atomic_write_bytes(folder / f"{sample.name}.jpg", buf.getvalue())
    atomic_write_json(folder / f"{sample.name}.instances.json",
                      {"objects": sample.scene.instances(), "targets": sample.query.targets}, indent=None)
    atomic_write_json(folder / f"{sample.name}.json", sample.annotation(), indent=None)


def _write_one(out: str, split: str, i: int, seed: int, cfg: SynthConfig) -> str:
    """Generate and write one sample (a worker's unit); returns its dimension."""
    s = generate_sample(seed, split, i, cfg)
    write_sample(Path(out) / split, s, cfg.jpeg_quality)
    return s.query.dimension


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

    tasks = [(split, i) for split, n in sizes.items() for i in range(n)]
    dims: dict[tuple[str, int], str] = {}
    with ProgressBar("synthetic scenes", total, progress) as bar:
        if jobs > 1 and len(tasks) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
                futures = {pool.submit(_write_one, str(out), split, i, seed, cfg): (split, i) for split, i in tasks}
                for fut in as_completed(futures):
                    dims[futures[fut]] = fut.result()
                    bar.advance()
        else:
            for split, i in tasks:
                dims[(split, i)] = _write_one(str(out), split, i, seed, cfg)
                bar.advance()
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
