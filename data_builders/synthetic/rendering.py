"""Rendering one scene: objects drawn as polygons in painter's order, their visible masks, parts and the
instance list (COCO RLE) of the oracle perception source."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from dtwinseg.data_builders.synthetic.config import (
    COLOURS,
    COMPOSITES,
    ICONS,
    PART_COLOURS,
    SHAPES,
    SIZE_RADIUS,
    TEXTURES,
    SynthConfig,
)
from dtwinseg.data_builders.synthetic.geometry import (
    polygon_roundtrip_iou,
    rasterise_polygons,
    shape_polygons,
)

from dtwinseg.twin import encode_rles


@dataclass
class SceneObject:
    """One level-1 object; ``parts`` are its parts (one part for shapes and icons)."""

    index: int
    category: str
    colour: str
    texture: str
    size: str
    kind: str  # "shape" | "icon" | "composite"
    parts: list[dict] = field(default_factory=list)  # {"name", "colour", "index" (instance), "mask"}
    mask: np.ndarray | None = None  # visible mask, bool H x W
    area: int = 0  # visible pixels
    cx: float = 0.0
    cy: float = 0.0

    @property
    def semantic(self) -> str:
        tex = "" if self.texture == "plain" else f"{self.texture} "
        if self.kind == "composite":
            extra = {"house": "with a red roof", "tree": "with a green crown", "car": "with two wheels"}[self.category]
            return f"a {self.size} {self.colour} {tex}{self.category} {extra}"
        return f"a {self.size} {self.colour} {tex}{self.category}"


@dataclass
class Scene:
    """A rendered scene: image, its objects (visible masks) and the instance list."""

    image: np.ndarray  # H x W x 3 uint8
    objects: list[SceneObject]
    part_masks: list[np.ndarray]  # visible masks of the parts of composite objects, instance order
    part_info: list[dict]  # {"name", "colour", "parent"}

    def instances(self) -> list[dict]:
        """Instance records (objects first, then parts) with RLE masks and semantics."""
        masks = [o.mask for o in self.objects] + list(self.part_masks)
        rles = encode_rles(np.stack(masks)) if masks else []
        out = []
        for o, rle in zip(self.objects, rles[: len(self.objects)], strict=True):
            out.append({"rle": rle, "semantic": o.semantic, "level": 1, "parent": None, "category": o.category,
                        "colour": o.colour, "texture": o.texture, "size": o.size, "area_px": o.area,
                        "centroid": [round(o.cx, 2), round(o.cy, 2)]})
        for info, rle, m in zip(self.part_info, rles[len(self.objects):], self.part_masks, strict=True):
            parent = self.objects[info["parent"]]
            out.append({"rle": rle, "semantic": f"the {info['colour']} {info['name']} of a {parent.category}",
                        "level": 2, "parent": info["parent"], "category": info["name"], "colour": info["colour"],
                        "area_px": int(m.sum())})
        return out

    def instance_mask(self, index: int) -> np.ndarray:
        n = len(self.objects)
        return self.objects[index].mask if index < n else self.part_masks[index - n]


def choose(rng: np.random.Generator, seq: tuple | list) -> str:
    """One element of ``seq`` drawn with ``rng``."""
    return seq[int(rng.integers(len(seq)))]


def _sample_object_specs(rng: np.random.Generator, cfg: SynthConfig, n: int,
                         require: str | None) -> list[tuple[str, str, str, str, str]]:
    """(category, kind, colour, texture, size) per object, from small per-scene pools."""
    n_cat = int(rng.integers(cfg.category_pool[0], cfg.category_pool[1] + 1))
    n_col = int(rng.integers(cfg.colour_pool[0], cfg.colour_pool[1] + 1))
    pool: list[str] = []
    while len(pool) < n_cat:
        u = rng.random()
        kind_pool = COMPOSITES if u < cfg.p_composite else (ICONS if rng.random() < cfg.p_icon else SHAPES)
        c = choose(rng, kind_pool)
        if c not in pool:
            pool.append(c)
    if require == "composite" and not any(c in COMPOSITES for c in pool):
        pool[0] = choose(rng, COMPOSITES)
    if require == "icon" and not any(c in ICONS or c in COMPOSITES for c in pool):
        pool[0] = choose(rng, ICONS)
    colours = list(rng.permutation(list(COLOURS))[:n_col])
    specs = []
    for k in range(n):
        cat = pool[k] if k < len(pool) else choose(rng, pool)
        kind = "composite" if cat in COMPOSITES else ("icon" if cat in ICONS else "shape")
        colour = "yellow" if cat == "sun" else choose(rng, colours)
        texture = "plain" if kind == "composite" or rng.random() < 0.6 else choose(rng, TEXTURES[1:])
        size = choose(rng, ("medium", "large")) if kind == "composite" else choose(rng, tuple(SIZE_RADIUS))
        specs.append((cat, kind, colour, texture, size))
    order = rng.permutation(n)
    return [specs[i] for i in order]


def _texture_pattern(texture: str, h: int, w: int, phase: int) -> np.ndarray | None:
    if texture == "striped":
        yy, xx = np.mgrid[0:h, 0:w]
        return ((xx + yy + phase) // 4) % 2 == 0
    if texture == "dotted":
        yy, xx = np.mgrid[0:h, 0:w]
        return ((xx + phase) % 7 < 3) & ((yy + phase) % 7 < 3)
    return None


def _colour_rgb(rng: np.random.Generator, name: str) -> np.ndarray:
    base = np.array(COLOURS[name], dtype=float)
    return np.clip(base + rng.normal(0, 8, 3), 0, 255)


def render_scene(rng: np.random.Generator, cfg: SynthConfig, require: str | None = None) -> Scene | None:
    """Draw one scene; None when placement failed or a visible mask would need a hole (caller retries)."""
    h = w = cfg.size
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    specs = _sample_object_specs(rng, cfg, n, require)
    bg = np.clip(np.array([235, 232, 222]) + rng.normal(0, 10, 3), 0, 255)
    image = np.empty((h, w, 3), dtype=float)
    image[:] = bg
    label = np.full((h, w), -1, dtype=np.int32)  # index of the part drawn last at each pixel
    drawn: list[tuple[int, int, str, str, np.ndarray]] = []  # (object k, part slot, name, colour, full mask)
    full_object: list[np.ndarray] = []
    for k, (cat, _kind, colour, texture, size) in enumerate(specs):
        lo, hi = SIZE_RADIUS[size]
        placed = None
        for _ in range(30):
            r = float(rng.uniform(lo, hi))
            cx, cy = float(rng.uniform(r + 2, w - r - 2)), float(rng.uniform(r + 2, h - r - 2))
            parts = [[p * r + np.array([cx, cy]) for p in polys] for polys in shape_polygons(cat)]
            pmasks = [rasterise_polygons(polys, h, w) for polys in parts]
            om = np.logical_or.reduce(pmasks)
            # Keep every earlier object mostly visible and this one mostly unoccluded by nothing later.
            ok = all(((prev & ~om).sum() >= cfg.min_visible * prev.sum()) for prev in _visible_so_far(full_object, om))
            if ok:
                placed = (parts, pmasks, om)
                break
        if placed is None:
            if k >= cfg.min_objects:
                specs = specs[:k]
                break
            return None
        parts, pmasks, om = placed
        names = PART_COLOURS.get(cat, ((cat, "main"),))
        phase = int(rng.integers(8))
        for slot, ((pname, prule), pm) in enumerate(zip(names, pmasks, strict=True)):
            pcol = colour if prule == "main" else prule
            rgb = _colour_rgb(rng, pcol)
            image[pm] = rgb
            pat = _texture_pattern(texture, h, w, phase)
            if pat is not None:
                image[pm & pat] = rgb * 0.55
            label[pm] = len(drawn)
            drawn.append((k, slot, pname, pcol, pm))
        full_object.append(om)
    image += rng.normal(0, 3, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)

    objects: list[SceneObject] = []
    part_masks: list[np.ndarray] = []
    part_info: list[dict] = []
    for k, (cat, kind, colour, texture, size) in enumerate(specs):
        objects.append(SceneObject(index=k, category=cat, colour=colour, texture=texture, size=size, kind=kind))
    for d, (k, _slot, pname, pcol, _pm) in enumerate(drawn):
        vis = label == d
        o = objects[k]
        o.mask = vis if o.mask is None else (o.mask | vis)
        if o.kind == "composite":
            if vis.sum() < 12:
                return None
            o.parts.append({"name": pname, "colour": pcol, "index": len(objects) + len(part_masks)})
            part_masks.append(vis)
            part_info.append({"name": pname, "colour": pcol, "parent": k})
    for o in objects:
        if o.mask is None or o.mask.sum() < 20:
            return None
        o.area = int(o.mask.sum())
        ys, xs = np.nonzero(o.mask)
        o.cx, o.cy = float(xs.mean()), float(ys.mean())
    # Every visible mask must be expressible as outer polygons (no holes): the target format has none.
    for m in [o.mask for o in objects] + part_masks:
        if polygon_roundtrip_iou(m) < 0.98:
            return None
    return Scene(image=image, objects=objects, part_masks=part_masks, part_info=part_info)


def _visible_so_far(full_object: list[np.ndarray], new: np.ndarray) -> Iterator[np.ndarray]:
    """Visible masks of the objects drawn so far (each minus every later one), before adding ``new``."""
    for k, m in enumerate(full_object):
        vis = m.copy()
        for later in full_object[k + 1:]:
            vis &= ~later
        yield vis

