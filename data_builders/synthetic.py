"""Synthetic reasoning-segmentation scenes: a seeded, fully labelled benchmark that needs no download.

Each scene is a small RGB image (default 256 x 256) with 3-12 objects drawn as polygons in painter's
order: geometric shapes, everyday icons (cup, chair, sun, umbrella) and composite objects with named
parts (house = walls + roof + door, tree = trunk + crown, car = body + wheels), in several colours, sizes
and textures, partly occluding each other. Every object's *visible* mask follows from the painter's order.

Each scene gets one query, produced by a small program over the scene and tagged with the reasoning
dimension it exercises:

    recognition   "the red circle"                           granularity 1 (object)
    function      "something to drink from"                  granularity 1
    spatial       "the star left of the blue square"         granularity 1
    geometric     "the largest circle", "the leftmost cup"   granularity 1
    multi_step    "the cup nearest to the largest star",
                  "the kind of thing there are exactly 3 of" granularity 1 / 0
    group         "all the green things"                     granularity 0 (group)
    part          "the roof of the house on the left"        granularity 2 (part)

Short phrases and long sentences both occur (``is_sentence``). The output is a ReasonSeg-format folder
(``<split>/<name>.jpg`` + ``<name>.json`` with target polygons, ``text``, ``is_sentence``, ``dimension``,
``granularity``, and the ``program`` that chose the targets) plus ``<name>.instances.json`` with every
instance mask as COCO RLE and its description, for the ``oracle`` perception source:

    {"objects": [{"rle": {...}, "semantic": "a small green circle", "level": 1, "parent": null,
                  "category": "circle", "colour": "green", ...}, ...],
     "targets": [indices into objects]}

Level-1 objects come first (indices 0..n-1), then the parts of composite objects (level 2, ``parent`` =
the object index). Target polygons are the outer contours of the visible masks, so the reference
rasteriser (cv2 outline + fill, int32 points) reproduces them exactly; scenes whose visible masks would
need holes are re-drawn.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dtwinseg.io import atomic_write_bytes, atomic_write_json
from dtwinseg.twin import encode_rles

DIMENSIONS = ("recognition", "function", "spatial", "geometric", "multi_step", "group", "part")
SPLITS = ("train", "val", "test")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 190),
    "pink": (245, 130, 190),
    "gray": (120, 120, 120),
}
TEXTURES = ("plain", "striped", "dotted")
SIZE_RADIUS = {"small": (13, 18), "medium": (21, 28), "large": (32, 42)}

SHAPES = ("circle", "square", "triangle", "star", "hexagon")
ICONS = ("cup", "chair", "sun", "umbrella")
COMPOSITES = ("house", "tree", "car")
# Parts of composite objects: (part name, colour rule). Colour rule: "main" = the object's colour,
# or a fixed colour name.
PART_COLOURS = {
    "house": (("walls", "main"), ("roof", "red"), ("door", "orange")),
    "tree": (("trunk", "orange"), ("crown", "green")),
    "car": (("body", "main"), ("wheel", "gray"), ("wheel", "gray")),
}
PART_PLURALS = {"wheel": "wheels"}
FUNCTIONS = {
    "cup": ("something to drink from", "I am thirsty and want some tea; which object here would I drink it from?"),
    "chair": ("something to sit on", "My legs are tired after a long walk. What in this picture could I sit on?"),
    "sun": ("what gives light and warmth", "Which thing in the picture gives us light and warmth during the day?"),
    "umbrella": ("something that keeps you dry in the rain",
                 "It is starting to rain and I do not want to get wet. What could I hold over my head?"),
    "house": ("a place where people live", "Where in this picture could a family live and sleep at night?"),
    "tree": ("something that gives shade", "On a hot summer day, what here could I rest under to stay in the shade?"),
    "car": ("something you can drive", "I need to get to work across town. Which object could I drive there?"),
}
PART_FUNCTIONS = {
    "roof": "the part of the house that keeps the rain out",
    "door": "the part of the house you walk in through",
    "crown": "the leafy top of the tree",
    "trunk": "the wooden stem of the tree",
    "wheel": "what the car rolls on",
    "body": "the body of the car",
    "walls": "the walls of the house",
}
_PLURAL = {"cup": "cups", "chair": "chairs", "sun": "suns", "umbrella": "umbrellas", "house": "houses",
           "tree": "trees", "car": "cars", "circle": "circles", "square": "squares", "triangle": "triangles",
           "star": "stars", "hexagon": "hexagons"}


@dataclass
class SynthConfig:
    """Knobs of the scene generator.

    size: image side in pixels (square images).
    min_objects, max_objects: objects per scene (composites count once), drawn uniformly.
    category_pool: (min, max) distinct categories per scene; a small pool makes repeated categories, so
        "largest circle" / "all the stars" have something to choose among.
    colour_pool: (min, max) distinct colours per scene.
    p_composite: probability that an object is a composite (house / tree / car).
    p_icon: probability that a non-composite object is an icon rather than a shape.
    min_visible: an object keeps at least this fraction of its pixels visible under later objects.
    p_sentence: probability that a query is a long sentence rather than a short phrase.
    margin_px: centroid offset (pixels) a spatial / extremal comparison needs to count as unambiguous.
    margin_ratio: ratio by which the chosen object must beat the runner-up in area / distance comparisons.
    jpeg_quality: quality of the written JPEG images.
    max_tries: scenes tried per sample before giving up on the requested dimension.
    """

    size: int = 256
    min_objects: int = 3
    max_objects: int = 12
    category_pool: tuple[int, int] = (3, 5)
    colour_pool: tuple[int, int] = (3, 5)
    p_composite: float = 0.2
    p_icon: float = 0.4
    min_visible: float = 0.6
    p_sentence: float = 0.5
    margin_px: float = 10.0
    margin_ratio: float = 1.25
    jpeg_quality: int = 95
    max_tries: int = 200

    def to_dict(self) -> dict:
        return asdict(self)


# --- geometry: unit polygons (centre 0, radius about 1) ------------------------------------------
def _ngon(n: int, r: float = 1.0, phase: float = -math.pi / 2, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _star() -> np.ndarray:
    t = -math.pi / 2 + math.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _shape_polys(category: str) -> list[list[np.ndarray]]:
    """Parts (each a list of polygons in unit coordinates) of one category."""
    if category == "circle":
        return [[_ngon(40)]]
    if category == "square":
        return [[_rect(-0.85, -0.85, 0.85, 0.85)]]
    if category == "triangle":
        return [[_ngon(3, 1.0)]]
    if category == "star":
        return [[_star()]]
    if category == "hexagon":
        return [[_ngon(6, 1.0, 0.0)]]
    if category == "cup":
        body = np.array([[-0.7, -0.8], [0.45, -0.8], [0.35, 0.8], [-0.6, 0.8]])
        return [[body, _rect(0.35, -0.45, 0.85, -0.25), _rect(0.65, -0.45, 0.85, 0.35), _rect(0.3, 0.15, 0.85, 0.35)]]
    if category == "chair":
        return [[_rect(-0.7, -1.0, -0.45, 1.0), _rect(-0.7, -0.05, 0.7, 0.15), _rect(0.45, 0.15, 0.7, 1.0)]]
    if category == "sun":
        rays = []
        for k in range(8):
            a = 2 * math.pi * k / 8
            tip = (math.cos(a), math.sin(a))
            left = (0.55 * math.cos(a - 0.25), 0.55 * math.sin(a - 0.25))
            right = (0.55 * math.cos(a + 0.25), 0.55 * math.sin(a + 0.25))
            rays.append(np.array([left, tip, right]))
        return [[_ngon(28, 0.6), *rays]]
    if category == "umbrella":
        t = np.linspace(math.pi, 2 * math.pi, 20)
        canopy = np.stack([np.cos(t), 0.8 * np.sin(t)], 1)
        return [[canopy, _rect(-0.07, -0.05, 0.07, 0.9), _rect(-0.3, 0.8, 0.07, 0.95)]]
    if category == "house":
        return [[_rect(-0.75, -0.1, 0.75, 1.0)], [np.array([[-0.95, -0.1], [0.0, -1.0], [0.95, -0.1]])],
                [_rect(-0.2, 0.35, 0.2, 1.0)]]
    if category == "tree":
        return [[_rect(-0.15, 0.2, 0.15, 1.0)], [_ngon(30, 0.65, cy=-0.3)]]
    if category == "car":
        body = np.array([[-1.0, 0.0], [-0.55, 0.0], [-0.35, -0.45], [0.35, -0.45], [0.55, 0.0], [1.0, 0.0],
                         [1.0, 0.45], [-1.0, 0.45]])
        return [[body], [_ngon(20, 0.27, cx=-0.55, cy=0.5)], [_ngon(20, 0.27, cx=0.55, cy=0.5)]]
    raise ValueError(f"unknown category {category!r}")


def rasterise_polygons(polys: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Bool H x W mask of polygons drawn as the ReasonSeg reference does (int32 points, outline + fill)."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    for p in polys:
        pts = np.asarray(p, dtype=np.float64).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], True, 1, 1)
        cv2.fillPoly(canvas, [pts], 1)
    return canvas.astype(bool)


def mask_polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """Outer contours of a bool mask as polygons [[x, y], ...] (pixel centres, so they rasterise back)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(float).tolist()
        if len(pts) >= 1:
            out.append(pts)
    return out


# --- scenes ---------------------------------------------------------------------------------------
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


def _choose(rng: np.random.Generator, seq: tuple | list) -> str:
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
        c = _choose(rng, kind_pool)
        if c not in pool:
            pool.append(c)
    if require == "composite" and not any(c in COMPOSITES for c in pool):
        pool[0] = _choose(rng, COMPOSITES)
    if require == "icon" and not any(c in ICONS or c in COMPOSITES for c in pool):
        pool[0] = _choose(rng, ICONS)
    colours = list(rng.permutation(list(COLOURS))[:n_col])
    specs = []
    for k in range(n):
        cat = pool[k] if k < len(pool) else _choose(rng, pool)
        kind = "composite" if cat in COMPOSITES else ("icon" if cat in ICONS else "shape")
        colour = "yellow" if cat == "sun" else _choose(rng, colours)
        texture = "plain" if kind == "composite" or rng.random() < 0.6 else _choose(rng, TEXTURES[1:])
        size = _choose(rng, ("medium", "large")) if kind == "composite" else _choose(rng, tuple(SIZE_RADIUS))
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
            parts = [[p * r + np.array([cx, cy]) for p in polys] for polys in _shape_polys(cat)]
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
        if _polygon_iou(m) < 0.98:
            return None
    return Scene(image=image, objects=objects, part_masks=part_masks, part_info=part_info)


def _visible_so_far(full_object: list[np.ndarray], new: np.ndarray) -> Iterator[np.ndarray]:
    """Visible masks of the objects drawn so far (each minus every later one), before adding ``new``."""
    for k, m in enumerate(full_object):
        vis = m.copy()
        for later in full_object[k + 1:]:
            vis &= ~later
        yield vis


def _polygon_iou(mask: np.ndarray) -> float:
    back = rasterise_polygons([np.asarray(p) for p in mask_polygons(mask)], *mask.shape)
    inter = float((back & mask).sum())
    union = float((back | mask).sum())
    return 1.0 if union == 0 else inter / union


# --- query programs -------------------------------------------------------------------------------
@dataclass
class Query:
    """A query and the instance indices (into Scene.instances()) that answer it."""

    text: str
    sentence: str
    targets: list[int]
    dimension: str
    granularity: int
    program: dict


def _count(objs: list[SceneObject], key: Callable[[SceneObject], object], value: object) -> int:
    return sum(1 for o in objs if key(o) == value)


def _reference(objs: list[SceneObject], o: SceneObject) -> str | None:
    """Shortest unique noun phrase for ``o``: "the cup", "the red cup" or "the small red cup"."""
    if _count(objs, lambda x: x.category, o.category) == 1:
        return f"the {o.category}"
    if _count(objs, lambda x: (x.colour, x.category), (o.colour, o.category)) == 1:
        return f"the {o.colour} {o.category}"
    if _count(objs, lambda x: (x.size, x.colour, x.category), (o.size, o.colour, o.category)) == 1:
        return f"the {o.size} {o.colour} {o.category}"
    return None


def _sentence(rng: np.random.Generator, phrase: str) -> str:
    templates = (
        "Please segment {p} in this image.",
        "Can you find {p} in the picture and highlight it?",
        "I am looking for {p}; show me where it is in the image.",
        "Which region of the picture contains {p}? Segment it for me.",
    )
    return _choose(rng, templates).format(p=phrase)


def _q_recognition(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    cands = [(o, r) for o in objs if (r := _reference(objs, o)) is not None and o.kind != "composite"]
    cands = [(o, r) for o, r in cands if r != f"the {o.category}" or rng.random() < 0.3] or cands
    if not cands:
        return None
    o, r = cands[int(rng.integers(len(cands)))]
    return Query(r, _sentence(rng, r), [o.index], "recognition", 1, {"kind": "reference", "object": o.index})


def _q_function(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    cands = [o for o in objs if o.category in FUNCTIONS and _count(objs, lambda x: x.category, o.category) == 1]
    if not cands:
        return None
    o = cands[int(rng.integers(len(cands)))]
    short, long = FUNCTIONS[o.category]
    return Query(short, long, [o.index], "function", 1, {"kind": "function", "category": o.category})


_RELATIONS: dict[str, Callable[[SceneObject, SceneObject], float]] = {
    # signed margin in pixels: > 0 when ``o`` stands in the relation to ``anchor``
    "left of": lambda o, a: a.cx - o.cx,
    "right of": lambda o, a: o.cx - a.cx,
    "above": lambda o, a: a.cy - o.cy,
    "below": lambda o, a: o.cy - a.cy,
}


def _q_spatial(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found = []
    for a in objs:
        ra = _reference(objs, a)
        if ra is None:
            continue
        for cat in sorted({o.category for o in objs if o is not a}):
            group = [o for o in objs if o.category == cat and o is not a]
            if len(group) < 2:
                continue
            for rel, f in _RELATIONS.items():
                v = [f(o, a) for o in group]
                if any(abs(x) < cfg.margin_px for x in v):
                    continue
                yes = [o for o, x in zip(group, v, strict=True) if x > 0]
                if len(yes) == 1:
                    found.append((yes[0], cat, rel, a, ra))
    if not found:
        return None
    o, cat, rel, a, ra = found[int(rng.integers(len(found)))]
    phrase = f"the {cat} {rel} {ra}"
    sent = _choose(rng, (f"Find the {cat} that is {rel} {ra}.",
                         f"There are several {_PLURAL[cat]}; segment the one {rel} {ra}."))
    return Query(phrase, sent, [o.index], "spatial", 1,
                 {"kind": "relation", "category": cat, "relation": rel, "anchor": a.index})


_EXTREMES: dict[str, tuple[Callable[[SceneObject], float], str]] = {
    # value to maximise, and whether the comparison is by area ("ratio") or position ("px")
    "largest": (lambda o: o.area, "ratio"),
    "smallest": (lambda o: -o.area, "ratio"),
    "leftmost": (lambda o: -o.cx, "px"),
    "rightmost": (lambda o: o.cx, "px"),
    "topmost": (lambda o: -o.cy, "px"),
    "bottommost": (lambda o: o.cy, "px"),
}


def _extreme(group: list[SceneObject], which: str, cfg: SynthConfig) -> SceneObject | None:
    """The unambiguous extreme of ``group`` (largest, leftmost, ...), or None when too close to call."""
    if len(group) < 2:
        return None
    f, mode = _EXTREMES[which]
    ranked = sorted(group, key=f, reverse=True)
    best, second = f(ranked[0]), f(ranked[1])
    if mode == "px" and best - second < cfg.margin_px:
        return None
    if mode == "ratio" and which == "largest" and best < cfg.margin_ratio * second:
        return None
    if mode == "ratio" and which == "smallest" and -second < cfg.margin_ratio * -best:
        return None
    return ranked[0]


def _nearest(group: list[SceneObject], a: SceneObject, cfg: SynthConfig) -> SceneObject | None:
    cands = sorted((math.hypot(o.cx - a.cx, o.cy - a.cy), o.index, o) for o in group if o is not a)
    if len(cands) < 2 or cands[1][0] < cfg.margin_ratio * cands[0][0]:
        return None
    return cands[0][2]


def _q_geometric(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found: list[tuple[SceneObject, str, dict]] = []
    for cat in sorted({o.category for o in objs}):
        group = [o for o in objs if o.category == cat]
        for which in _EXTREMES:
            o = _extreme(group, which, cfg)
            if o is not None:
                found.append((o, f"the {which} {cat}", {"kind": "extreme", "which": which, "category": cat}))
        for a in objs:
            ra = _reference(objs, a)
            if ra is None or a.category == cat:
                continue
            o = _nearest(group, a, cfg)
            if o is not None and len(group) >= 2:
                found.append((o, f"the {cat} nearest to {ra}",
                              {"kind": "nearest", "category": cat, "anchor": a.index}))
    for which in ("largest", "smallest"):
        o = _extreme(objs, which, cfg)
        if o is not None:
            found.append((o, f"the {which} object", {"kind": "extreme", "which": which, "category": None}))
    if not found:
        return None
    o, phrase, prog = found[int(rng.integers(len(found)))]
    return Query(phrase, _sentence(rng, phrase), [o.index], "geometric", 1, prog)


def _q_multi_step(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found: list[Query] = []
    cats = sorted({o.category for o in objs})
    for c2 in cats:  # chained: nearest <cat> to the largest <c2>
        anchor = _extreme([o for o in objs if o.category == c2], "largest", cfg)
        if anchor is None:
            continue
        for cat in cats:
            if cat == c2:
                continue
            o = _nearest([x for x in objs if x.category == cat], anchor, cfg)
            if o is not None:
                phrase = f"the {cat} nearest to the largest {c2}"
                sent = (f"First find the largest {c2}, then segment the {cat} that is closest to it.")
                found.append(Query(phrase, sent, [o.index], "multi_step", 1,
                                   {"kind": "nearest_to_extreme", "category": cat, "anchor_category": c2,
                                    "which": "largest"}))
    counts = {c: _count(objs, lambda x: x.category, c) for c in cats}
    for n_target in (2, 3, 4):
        with_n = [c for c, k in counts.items() if k == n_target]
        if len(with_n) == 1:
            cat = with_n[0]
            words = {2: "two", 3: "three", 4: "four"}[n_target]
            phrase = f"the kind of thing that appears exactly {words} times"
            sent = (f"Count the objects of each kind; segment all objects of the kind that appears exactly "
                    f"{words} times.")
            found.append(Query(phrase, sent, [o.index for o in objs if o.category == cat], "multi_step", 0,
                               {"kind": "count", "count": n_target, "category": cat}))
    if not found:
        return None
    return found[int(rng.integers(len(found)))]


def _q_group(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found = []
    for colour in sorted({o.colour for o in objs}):
        members = [o.index for o in objs if o.colour == colour]
        if len(members) >= 2:
            found.append((f"all the {colour} things", members, {"kind": "group", "colour": colour}))
    for cat in sorted({o.category for o in objs}):
        members = [o.index for o in objs if o.category == cat]
        if len(members) >= 2:
            found.append((f"all the {_PLURAL[cat]}", members, {"kind": "group", "category": cat}))
    for tex in TEXTURES[1:]:
        members = [o.index for o in objs if o.texture == tex]
        if len(members) >= 2:
            found.append((f"all the {tex} objects", members, {"kind": "group", "texture": tex}))
    if not found:
        return None
    phrase, members, prog = found[int(rng.integers(len(found)))]
    sent = _choose(rng, (f"Segment {phrase} in this picture.", f"Highlight every one of {phrase} you can see."))
    return Query(phrase, sent, members, "group", 0, prog)


def _q_part(rng: np.random.Generator, objs: list[SceneObject], cfg: SynthConfig) -> Query | None:
    found = []
    for cat in COMPOSITES:
        group = [o for o in objs if o.category == cat]
        if not group:
            continue
        owners: list[tuple[SceneObject, str]] = []
        if len(group) == 1:
            owners.append((group[0], f"the {cat}"))
        else:
            for which, word in (("leftmost", "on the left"), ("rightmost", "on the right")):
                o = _extreme(group, which, cfg)
                if o is not None and len(group) == 2:
                    owners.append((o, f"the {cat} {word}"))
            for o in group:
                r = _reference(objs, o)
                if r is not None:
                    owners.append((o, r))
        for o, owner_ref in owners:
            names = sorted({p["name"] for p in o.parts})
            for name in names:
                targets = [p["index"] for p in o.parts if p["name"] == name]
                noun = PART_PLURALS.get(name, name) if len(targets) > 1 else name
                found.append((targets, f"the {noun} of {owner_ref}", name, o.index))
    if not found:
        return None
    targets, phrase, name, owner = found[int(rng.integers(len(found)))]
    owner_obj = objs[owner]
    sent = (f"Look at {phrase.split(' of ', 1)[1]}: segment {PART_FUNCTIONS[name]}."
            if len(owner_obj.parts) and rng.random() < 0.5 else _sentence(rng, phrase))
    return Query(phrase, sent, targets, "part", 2, {"kind": "part", "part": name, "owner": owner})


PROGRAMS: dict[str, Callable[[np.random.Generator, list[SceneObject], SynthConfig], Query | None]] = {
    "recognition": _q_recognition,
    "function": _q_function,
    "spatial": _q_spatial,
    "geometric": _q_geometric,
    "multi_step": _q_multi_step,
    "group": _q_group,
    "part": _q_part,
}
_REQUIRE = {"part": "composite", "function": "icon"}


# --- samples and splits ---------------------------------------------------------------------------
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
            scene = render_scene(rng, cfg, require=_REQUIRE.get(dim))
            if scene is None:
                continue
            q = PROGRAMS[dim](rng, scene.objects, cfg)
            if q is None or not q.targets:
                continue
            return SynthSample(f"{split}_{index:05d}", scene, q, bool(rng.random() < cfg.p_sentence))
    raise RuntimeError(f"could not generate sample {split}/{index} (seed {seed}) for {order}")


def write_sample(folder: str | os.PathLike, sample: SynthSample, jpeg_quality: int = 95) -> None:
    """Write <name>.jpg, <name>.json (ReasonSeg format) and <name>.instances.json, each atomically."""
    folder = Path(folder)
    buf = io.BytesIO()
    Image.fromarray(sample.scene.image).save(buf, format="JPEG", quality=jpeg_quality)
    atomic_write_bytes(folder / f"{sample.name}.jpg", buf.getvalue())
    atomic_write_json(folder / f"{sample.name}.instances.json",
                      {"objects": sample.scene.instances(), "targets": sample.query.targets}, indent=None)
    atomic_write_json(folder / f"{sample.name}.json", sample.annotation(), indent=None)


def write_dataset(out: str | os.PathLike, sizes: dict[str, int], seed: int = 0, cfg: SynthConfig | None = None,
                  progress: bool = True) -> dict:
    """Generate ``sizes`` = {split: n} samples under ``out/<split>/``; returns counts per split and dimension.

    Also writes ``out/synthetic.json`` (config, seed, counts) so a folder says how it was made.
    """
    cfg = cfg or SynthConfig()
    out = Path(out)
    counts: dict[str, dict] = {}
    total = sum(sizes.values())
    from rich.progress import Progress

    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task("synthetic scenes", total=total)
        for split, n in sizes.items():
            per_dim: dict[str, int] = {}
            for i in range(n):
                s = generate_sample(seed, split, i, cfg)
                write_sample(out / split, s, cfg.jpeg_quality)
                per_dim[s.query.dimension] = per_dim.get(s.query.dimension, 0) + 1
                bar.advance(task)
            counts[split] = {"n": n, "dimensions": per_dim}
    atomic_write_json(out / "synthetic.json", {"seed": seed, "config": cfg.to_dict(), "splits": counts})
    return counts


def open_synthetic(root: str, split: str, strict: bool = True):  # noqa: ANN201 - a registry Dataset
    """Reader for ``synthetic:ROOT:SPLIT``: the ReasonSeg reader, which also reads the dimension tags and
    the ``<stem>.instances.json`` sidecars written here."""
    from data_builders.reasonseg import ReasonSegDataset

    return ReasonSegDataset(root, split, strict=strict)


def _register() -> None:
    from data_builders.registry import _READERS, register_reader

    if "synthetic" not in _READERS:
        register_reader("synthetic")(open_synthetic)


_register()
